//! The network settings (docs/network.md): every validation problem with its origin and fix,
//! `apply-network` writing systemd-networkd's files under `--root`, and the handoff keeping
//! them under /etc. The real binary; the files are read back as networkd would find them.

use gateway_test_support::sim::Sim;
use gateway_test_support::{Tree, acme_appliance, problem_codes};

const GOOD: &str = "primary = \"primary.example.com\"\naccount = \"acme.example\"\napi-key = \"gwk_0123456789abcdef\"\n";
const RUN_NET: &str = "/run/systemd/network/10-gateway-firstboot.network";
const ETC_NET: &str = "/etc/systemd/network/10-gateway-firstboot.network";

fn seeded(extra: &str) -> Tree {
    let mut tree = Tree::new();
    tree.file("/etc/gateway/seed.toml", format!("{GOOD}{extra}"));
    tree
}

/// One problem: the seed lines (or kernel command line) that cause it, its code, and text the
/// report must contain (origin, what is wrong, the fix).
struct Case {
    seed: &'static str,
    cmdline: &'static str,
    code: &'static str,
    says: &'static str,
}

const CASES: &[Case] = &[
    Case {
        seed: "address = \"192.0.2.10\"\n",
        cmdline: "",
        code: "invalid-address",
        says: "error: address from /etc/gateway/seed.toml line 4: \"192.0.2.10\" is not an address with a prefix: the prefix length is missing (192.0.2.10/24)\n  fix: give this server's address with its prefix length",
    },
    Case {
        seed: "",
        cmdline: "gateway.address=192.0.2.255/24",
        code: "invalid-address",
        says: "error: gateway.address from /proc/cmdline: \"192.0.2.255/24\": 192.0.2.255 is the broadcast address of 192.0.2.0/24",
    },
    Case {
        seed: "address = [\"192.0.2.10/33\"]\n",
        cmdline: "",
        code: "invalid-address",
        says: "prefix length \"33\" is not a number from 1 to 32",
    },
    Case {
        seed: "address = \"192.0.2.10/24\"\ngateway = \"198.51.100.1\"\ndns-servers = \"192.0.2.53\"\n",
        cmdline: "",
        code: "invalid-gateway",
        says: "error: gateway from /etc/gateway/seed.toml line 5: 198.51.100.1 is not in this server's subnet (192.0.2.0/24)\n  fix: give the router's address on this server's subnet, or correct the prefix length of address",
    },
    Case {
        seed: "gateway = \"192.0.2.1\"\n",
        cmdline: "",
        code: "invalid-gateway",
        says: "192.0.2.1 is given without a static address\n  fix: give address (192.0.2.10/24) too, or leave gateway out to take it from DHCP",
    },
    Case {
        seed: "gateway = \"router\"\n",
        cmdline: "",
        code: "invalid-gateway",
        says: "\"router\" is not an IP address",
    },
    Case {
        seed: "vlan = 4095\n",
        cmdline: "",
        code: "invalid-vlan",
        says: "error: vlan from /etc/gateway/seed.toml line 4: 4095 is not a VLAN id from 1 to 4094\n  fix: give the VLAN id",
    },
    Case {
        seed: "",
        cmdline: "gateway.vlan=0",
        code: "invalid-vlan",
        says: "error: gateway.vlan from /proc/cmdline: 0 is not a VLAN id from 1 to 4094",
    },
    Case {
        seed: "vlan = \"ten\"\n",
        cmdline: "",
        code: "invalid-vlan",
        says: "\"ten\" is not a number",
    },
    Case {
        seed: "dns-servers = [\"192.0.2.53\", \"dns.acme.lan\"]\n",
        cmdline: "",
        code: "invalid-dns-server",
        says: "error: dns-servers from /etc/gateway/seed.toml line 4: \"dns.acme.lan\" is not an IP address\n  fix: list the DNS servers' IP addresses",
    },
    Case {
        seed: "search-domains = \"acme..lan\"\n",
        cmdline: "",
        code: "invalid-search-domain",
        says: "\"acme..lan\" is not a domain name: empty label",
    },
    Case {
        seed: "interface = \"eth0/1\"\n",
        cmdline: "",
        code: "invalid-interface",
        says: "\"eth0/1\" is neither a link name (at most 15 letters, digits, - _ .) nor a MAC address",
    },
    Case {
        seed: "address = \"192.0.2.10/24\"\ndns-servers = \"192.0.2.53\"\n",
        cmdline: "",
        code: "network-incomplete",
        says: "warning: address from /etc/gateway/seed.toml line 4: has no gateway: only hosts on this subnet can be reached",
    },
    Case {
        seed: "address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\n",
        cmdline: "",
        code: "network-incomplete",
        says: "warning: address from /etc/gateway/seed.toml line 4: has no DNS servers: names will not resolve",
    },
];

#[test]
fn every_network_problem_is_reported_with_origin_and_fix() {
    for case in CASES {
        let mut tree = seeded(case.seed);
        if !case.cmdline.is_empty() {
            tree.cmdline(case.cmdline);
        }
        let run = tree.run(&["check"]);
        let name = format!("{:?} {:?}", case.seed, case.cmdline);
        assert!(
            run.stdout.contains(case.says),
            "{name}: report lacks {:?}:\n{}",
            case.says,
            run.all()
        );
        let json = tree.run(&["check", "--json"]).json();
        let codes: Vec<&str> = problem_codes(&json);
        assert!(codes.contains(&case.code), "{name}: codes {codes:?}");
        let warning = case.says.starts_with("warning:");
        assert_eq!(run.code, if warning { 0 } else { 65 }, "{name}");
        // apply-network reads the same settings: an error writes nothing, a warning applies.
        let apply = tree.run(&["apply-network"]);
        assert_eq!(
            apply.code,
            if warning { 0 } else { 65 },
            "{name}: {}",
            apply.all()
        );
        assert_eq!(tree.path(RUN_NET).exists(), warning, "{name}");
    }
}

#[test]
fn all_network_problems_at_once() {
    let tree = seeded(
        "address = \"192.0.2.10\"\ngateway = \"x\"\nvlan = 5000\ndns-servers = \"y\"\ninterface = \"\"\n",
    );
    let json = tree.run(&["check", "--json"]).json();
    let mut codes: Vec<&str> = problem_codes(&json);
    codes.sort();
    assert_eq!(
        codes,
        [
            "invalid-address",
            "invalid-dns-server",
            "invalid-gateway",
            "invalid-interface",
            "invalid-vlan"
        ]
    );
}

#[test]
fn apply_network_writes_networkd_files_from_the_kernel_command_line() {
    let mut tree = Tree::new();
    tree.cmdline(
        "quiet gateway.address=10.77.0.50/24 gateway.gateway=10.77.0.1 gateway.dns_servers=10.77.0.1,10.77.0.2 gateway.search_domains=acme.test",
    );
    let run = tree.run(&["apply-network"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains(
            "network: static 10.77.0.50/24 via 10.77.0.1, DNS 10.77.0.1 10.77.0.2, search acme.test, on every Ethernet link"
        ),
        "{}",
        run.all()
    );
    let text = std::fs::read_to_string(tree.path(RUN_NET)).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for want in [
        "[Match]",
        "Type=ether",
        "[Network]",
        "DHCP=no",
        "Address=10.77.0.50/24",
        "Gateway=10.77.0.1",
        "DNS=10.77.0.1",
        "DNS=10.77.0.2",
        "Domains=acme.test",
    ] {
        assert!(lines.contains(&want), "{want} missing:\n{text}");
    }
    // The settings gone (a stick taken out before provisioning): back to the image's DHCP.
    tree.cmdline("quiet");
    let run = tree.run(&["apply-network"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(!tree.path(RUN_NET).exists());
    assert!(
        tree.path("/run/systemd/network").is_dir(),
        "the directory stays, for the installer"
    );
}

#[test]
fn a_vlan_gets_a_netdev_and_the_addresses_go_on_the_tagged_link() {
    let tree = seeded(
        "address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\ndns-servers = [\"192.0.2.53\"]\nvlan = 42\ninterface = \"52:54:00:AB:cd:01\"\n",
    );
    let run = tree.run(&["apply-network"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let read = |name: &str| {
        std::fs::read_to_string(tree.path(&format!("/run/systemd/network/{name}"))).unwrap()
    };
    let parent = read("10-gateway-firstboot.network");
    assert!(parent.contains("MACAddress=52:54:00:ab:cd:01\n") && parent.contains("VLAN=vlan42\n"));
    let netdev = read("10-gateway-firstboot-vlan.netdev");
    assert!(
        netdev.contains("Kind=vlan\n") && netdev.contains("Id=42\n"),
        "{netdev}"
    );
    let tagged = read("09-gateway-firstboot-vlan.network");
    assert!(tagged.contains("Name=vlan42\n") && tagged.contains("Address=192.0.2.10/24\n"));
    // show-config names each setting's origin.
    let (value, origin) = tree.effective("vlan", &[]);
    assert_eq!(value, 42);
    assert_eq!(origin, "seed:/etc/gateway/seed.toml");
}

#[test]
fn the_handoff_keeps_the_network_under_etc_for_the_next_boots() {
    let sim = Sim::start();
    let mut tree = acme_appliance(&sim);
    tree.file(
        "/etc/gateway/seed.toml",
        format!(
            "primary = \"127.0.0.1:{}\"\naccount = \"acme.example\"\nprimary-ca = \"/etc/gateway/primary-ca.pem\"\n\
             hostname = \"gw01.acme.test\"\ndns-check = \"off\"\ndeadline = \"10s\"\n\
             address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\ndns-servers = \"192.0.2.53\"\n",
            sim.port
        ),
    );
    let run = tree.run(&["provision"]);
    assert_eq!(run.code, 0, "{}", run.all());
    // Provisioning applies what it validated (nothing had: no early unit ran here) ...
    assert!(
        run.stdout
            .contains("network: static 192.0.2.10/24 via 192.0.2.1"),
        "{}",
        run.stdout
    );
    let applied = std::fs::read_to_string(tree.path(RUN_NET)).expect("applied under /run");
    // ... and the handoff keeps the same.
    let kept = std::fs::read_to_string(tree.path(ETC_NET)).expect("kept under /etc");
    assert_eq!(kept, applied);
    assert!(kept.contains("Address=192.0.2.10/24\n"), "{kept}");
    // Once provisioned, apply-network (by hand) changes the kept files, not /run's.
    let mut tree = tree;
    tree.file(
        "/etc/gateway/seed.toml",
        "address = \"192.0.2.11/24\"\ngateway = \"192.0.2.1\"\ndns-servers = \"192.0.2.53\"\n",
    );
    let run = tree.run(&["apply-network"]);
    assert_eq!(run.code, 0, "{}", run.all());
    let kept = std::fs::read_to_string(tree.path(ETC_NET)).unwrap();
    assert!(kept.contains("Address=192.0.2.11/24\n"), "{kept}");
    assert_eq!(
        std::fs::read_to_string(tree.path(RUN_NET)).unwrap(),
        applied
    );
}

#[test]
fn two_ethernet_ports_without_interface_are_warned_about() {
    let mut tree = seeded(
        "address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\ndns-servers = \"192.0.2.53\"\n",
    );
    for port in ["enp1s0", "enp2s0"] {
        tree.file(&format!("/sys/class/net/{port}/type"), "1\n")
            .file(&format!("/sys/class/net/{port}/device/vendor"), "0x8086\n");
    }
    // Loopback and a VLAN: not ports.
    tree.file("/sys/class/net/lo/type", "772\n")
        .file("/sys/class/net/vlan5/type", "1\n");
    let run = tree.run(&["apply-network"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("this server has 2 Ethernet ports (enp1s0, enp2s0): the network settings go on every one; give interface"),
        "{}",
        run.all()
    );
    let tree = {
        let mut t = tree;
        t.file(
            "/etc/gateway/seed.toml",
            format!("{GOOD}address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\ndns-servers = \"192.0.2.53\"\ninterface = \"enp2s0\"\n"),
        );
        t
    };
    let run = tree.run(&["apply-network"]);
    assert!(!run.stdout.contains("Ethernet ports"), "{}", run.all());
    let text = std::fs::read_to_string(tree.path(RUN_NET)).unwrap();
    assert!(text.contains("Name=enp2s0\n"), "{text}");
}

#[test]
fn a_plain_http_primary_through_a_proxy_is_refused() {
    let mut tree = Tree::new();
    tree.file(
        "/etc/gateway/seed.toml",
        "primary = \"http://primary.lab\"\naccount = \"acme.example\"\napi-key = \"gwk_0123456789abcdef\"\n\
         insecure-http = true\nproxy = \"http://proxy.lab:3128\"\n",
    );
    let run = tree.run(&["check"]);
    assert_eq!(run.code, 65, "{}", run.all());
    assert!(
        run.stdout.contains("error: proxy from /etc/gateway/seed.toml line 5: a plain http:// primary through a proxy would show the proxy the API key\n  fix: use an https:// primary"),
        "{}",
        run.all()
    );
}
