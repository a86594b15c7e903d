//! `install`, the console installer, driven through a real pseudo-terminal (rexpect) against
//! gateway-primary-sim over TLS: typos corrected in place, an unreachable primary, a wrong
//! account domain, a rejected key, then success; the key is never echoed. Also: the unit's
//! waiting `provision --wait-for-seed`, and scripted use without a terminal.

use gateway_test_support::sim::Sim;
use gateway_test_support::{Tree, acme_appliance, appliance_tree, wait_exit};
use rexpect::session::{PtySession, spawn_command};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Every expectation's deadline (the primary answers in milliseconds).
const EXPECT_MS: u64 = 30_000;

/// Site settings in /etc/gateway/seed.toml that the installer must keep: the simulator's CA,
/// no DNS self-check, short timeouts. No primary or account: nothing to provision from yet.
const SITE: &str = "# site settings, kept by the installer\nprimary-ca = \"/etc/gateway/primary-ca.pem\"\n\
                    dns-check = \"off\"\nconnect-timeout = \"2s\"\nrequest-timeout = \"3s\"\ndeadline = \"10s\"\n";

fn appliance(sim: &Sim) -> Tree {
    let mut tree = acme_appliance(sim);
    tree.file("/etc/gateway/seed.toml", SITE);
    tree
}

/// The installer on a fresh pseudo-terminal; everything it prints is kept.
struct Pty {
    session: PtySession,
    transcript: String,
}

impl Pty {
    fn start(tree: &Tree, args: &[&str]) -> Pty {
        let mut cmd = tree.command(&[&["install"], args].concat());
        // These tests follow the dialogue, not the console's width (tests/console_width.rs):
        // the pty's window size is 0x0, as on a serial console, so COLUMNS gives the width,
        // wide enough that no message is wrapped.
        cmd.stdin(Stdio::inherit())
            .env("TERM", "vt100")
            .env("COLUMNS", "1000");
        Pty {
            session: spawn_command(cmd, Some(EXPECT_MS)).expect("spawning on a pty"),
            transcript: String::new(),
        }
    }

    fn expect(&mut self, text: &str) {
        match self.session.exp_string(text) {
            Ok(before) => {
                self.transcript.push_str(&before);
                self.transcript.push_str(text);
            }
            Err(e) => panic!(
                "waiting for {text:?}: {e}\n--- transcript so far\n{}",
                self.transcript
            ),
        }
    }

    fn send(&mut self, keys: &str) {
        self.session.send(keys).expect("typing");
        self.session.flush().expect("typing");
    }

    /// The rest of the output and the exit status.
    fn finish(mut self) -> (String, i32) {
        let rest = self.session.exp_eof().unwrap_or_default();
        self.transcript.push_str(&rest);
        let status = self.session.process().wait().expect("exit status");
        let code = match status {
            nix::sys::wait::WaitStatus::Exited(_, code) => code,
            other => panic!("installer did not exit: {other:?}\n{}", self.transcript),
        };
        (self.transcript, code)
    }
}

const LEFT: &str = "\x1b[D";
const HOME: &str = "\x1b[H";
const DELETE: &str = "\x1b[3~";
const BACKSPACE: &str = "\x7f";
const CTRL_U: &str = "\x15";

#[test]
fn installer_recovers_from_every_wrong_answer_then_provisions() {
    let sim = Sim::start();
    let tree = appliance(&sim);
    let key = sim.ok(&["key", "add", "acme.example", "--kind", "restricted"]);
    let wrong_key = "NotTheKey-NotTheKey-0000";
    // A port nobody listens on: the primary is unreachable there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    // The unit, waiting for a seed as it does at boot with none given.
    let mut unit = tree
        .command(&["provision", "--wait-for-seed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let issue = tree.path("/etc/issue.d/gateway-firstboot.issue");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&issue).is_ok_and(|t| t.contains("gateway-firstboot install")) {
        assert!(
            Instant::now() < deadline,
            "no console hint while waiting for a seed"
        );
        assert!(
            unit.try_wait().unwrap().is_none(),
            "the unit stopped instead of waiting"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut pty = Pty::start(&tree, &[]);
    pty.expect("Primary server address: ");
    // A typo in the port, corrected in place: the answer comes back as editable text.
    pty.send("127.0.0.1:99999\r");
    pty.expect("port \"99999\" is not a number from 1 to 65535");
    pty.expect("Primary server address: 127.0.0.1:99999");
    pty.send(&format!("{}{closed}\r", BACKSPACE.repeat(5)));
    pty.expect("Account domain name: ");
    pty.send("nosuch..example\r");
    pty.expect("is not a DNS name: empty label");
    pty.expect("Account domain name: nosuch..example");
    pty.send(&format!("{}{BACKSPACE}\r", LEFT.repeat(7)));
    pty.expect("API key (Enter for the default restricted key): ");
    pty.send(&format!("{wrong_key}\r"));

    // Unreachable: the primary is asked again, as typed.
    pty.expect("[primary-refused]");
    pty.expect(&format!("Primary server address: 127.0.0.1:{closed}"));
    pty.send(&format!("{CTRL_U}127.0.0.1:{}\r", sim.port));
    // Reached, but the key is unknown: only the key is asked again.
    pty.expect("[key-rejected]");
    pty.expect("API key (Enter for the default restricted key): ");
    pty.send(&format!("{key}\r"));
    // The key is good, but there is no such account: the account is asked again, as typed.
    pty.expect("[account-unknown]");
    pty.expect("Account domain name: nosuch.example");
    pty.send(&format!("{HOME}{}acme\r", DELETE.repeat(6)));
    pty.expect("account acme.example exists; API key accepted (restricted)");
    pty.expect("Settings saved in /etc/gateway/seed.toml.");
    pty.expect("Done: this server is registered as ");
    pty.expect("NOT TRUSTED");
    pty.expect("clicks Authorize");
    let (transcript, code) = pty.finish();
    assert_eq!(code, 0, "{transcript}");

    // The key was shown as stars only, never as itself, the wrong one neither.
    for secret in [key.as_str(), wrong_key] {
        assert!(!transcript.contains(secret), "key echoed:\n{transcript}");
        assert!(
            !transcript.contains(&secret[..8]),
            "key echoed:\n{transcript}"
        );
    }
    assert!(transcript.contains(&"*".repeat(key.len())), "{transcript}");

    // One server, registered with the typed key (restricted: not trusted).
    let servers = sim.all_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["state"], "untrusted", "{servers:?}");

    // The seed: 0600, the answers, the site settings kept; the key scrubbed after handoff.
    let seed_path = tree.path("/etc/gateway/seed.toml");
    let seed = std::fs::read_to_string(&seed_path).unwrap();
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&seed_path).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert!(
        seed.contains(&format!("primary = \"127.0.0.1:{}\"", sim.port)),
        "{seed}"
    );
    assert!(seed.contains("account = \"acme.example\""), "{seed}");
    assert!(
        seed.contains("# site settings, kept by the installer"),
        "{seed}"
    );
    assert!(seed.contains("dns-check = \"off\""), "{seed}");
    assert!(!seed.contains(&key), "key left in the seed:\n{seed}");

    // The waiting unit saw the seed, waited for the installer's run and found it done.
    let code = wait_exit(&mut unit, Duration::from_secs(30));
    let out = String::from_utf8_lossy(&unit.wait_with_output().unwrap().stdout).into_owned();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("already provisioned"), "{out}");
    for secret in [key.as_str(), wrong_key] {
        assert!(!out.contains(secret));
    }
}

#[test]
fn a_blank_key_means_the_default_key_and_ctrl_c_changes_nothing() {
    let sim = Sim::start();
    let mut tree = appliance(&sim);
    tree.cmdline("quiet gateway.account=acme.example");
    let primary = format!("127.0.0.1:{}", sim.port);

    // Cancelled at the second question, which offers the kernel command line's account:
    // nothing written, exit 130.
    let mut pty = Pty::start(&tree, &[]);
    pty.expect("Primary server address: ");
    pty.send(&format!("{primary}\r"));
    pty.expect("Account domain name: acme.example");
    pty.send(&format!("{BACKSPACE}\x03"));
    let (transcript, code) = pty.finish();
    assert_eq!(code, 130, "{transcript}");
    assert!(
        transcript.contains("Cancelled: nothing was changed."),
        "{transcript}"
    );
    let seed = std::fs::read_to_string(tree.path("/etc/gateway/seed.toml")).unwrap();
    assert_eq!(seed, SITE);

    // Answers given as flags are not asked; a blank key is the image's default key.
    let mut pty = Pty::start(&tree, &["--primary", &primary, "--account", "acme.example"]);
    pty.expect("API key (Enter for the default restricted key): ");
    pty.send("\r");
    // The kernel command line comes before the seed: said, as later runs would use it.
    pty.expect("warning: /proc/cmdline also sets account");
    pty.expect("Done: this server is registered as ");
    let (transcript, code) = pty.finish();
    assert_eq!(code, 0, "{transcript}");
    assert!(
        !transcript.contains("Primary server address:"),
        "{transcript}"
    );
    assert!(!transcript.contains(&sim.default_key), "{transcript}");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tree.path("/var/lib/gateway-firstboot/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["api_key_is_default"], true, "{state}");

    // Provisioned: the installer has nothing more to do.
    let run = tree.run(&["install"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("provisioned already"), "{}", run.stdout);
}

#[test]
fn without_a_terminal_flags_answer_or_it_refuses() {
    let sim = Sim::start();
    let mut tree = appliance(&sim);
    let run = tree.run(&["install"]);
    assert_eq!(run.code, 64, "{}", run.all());
    assert!(
        run.stdout.contains("asks its questions on a terminal"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("--primary, --account"),
        "{}",
        run.stdout
    );

    // Scripted: a wrong account is an error with its exit status, and nothing is written.
    let key = sim.ok(&["key", "add", "acme.example", "--kind", "restricted"]);
    tree.file("/root/key", format!("{key}\n"));
    let key_file = tree.path("/root/key");
    let primary = format!("127.0.0.1:{}", sim.port);
    let scripted = |account: &str| {
        tree.run(&[
            "install",
            "--primary",
            &primary,
            "--account",
            account,
            "--api-key-file",
            key_file.to_str().unwrap(),
        ])
    };
    let run = scripted("nosuch.example");
    assert_eq!(run.code, 78, "{}", run.all());
    assert!(run.stdout.contains("[account-unknown]"), "{}", run.stdout);
    assert_eq!(
        std::fs::read_to_string(tree.path("/etc/gateway/seed.toml")).unwrap(),
        SITE
    );
    let run = scripted("acme.example");
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("Done: this server is registered as "),
        "{}",
        run.stdout
    );
    assert!(!run.all().contains(&key));
    assert_eq!(sim.all_servers().len(), 1);
}

#[test]
fn a_flag_that_fails_the_checks_is_asked_again_on_a_terminal() {
    let sim = Sim::start();
    let tree = appliance(&sim);
    let mut pty = Pty::start(
        &tree,
        &["--primary", "127.0.0.1:99999", "--account", "acme.example"],
    );
    pty.expect("API key (Enter for the default restricted key): ");
    pty.send("\r");
    pty.expect("--primary flag: \"127.0.0.1:99999\" is not a primary server address");
    pty.expect("Primary server address: 127.0.0.1:99999");
    pty.send(&format!("{}{}\r", BACKSPACE.repeat(5), sim.port));
    pty.expect("Done: this server is registered as ");
    let (transcript, code) = pty.finish();
    assert_eq!(code, 0, "{transcript}");
    assert!(!transcript.contains("Account domain name:"), "{transcript}");
}

#[test]
fn the_console_setup_gives_way_to_provisioning_from_elsewhere_and_to_ctrl_c() {
    let sim = Sim::start();
    let mut tree = appliance(&sim);
    // Provisioning starts elsewhere while the question waits: a run holding the lock (the
    // unit, from a stick plugged in meanwhile), then the box provisioned.
    let mut pty = Pty::start(&tree, &["--console"]);
    pty.expect("no login needed");
    pty.expect("Primary server address: ");
    let lock = tree.path("/run/gateway-firstboot/lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let file = std::fs::File::create(&lock).unwrap();
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map(|held| {
            pty.expect("Provisioning started from elsewhere");
            let (out, code) = pty.finish();
            assert_eq!(code, 0, "the terminal goes back to its login prompt\n{out}");
            drop(held);
        })
        .expect("taking the lock as the unit would");
    assert!(
        sim.all_servers().is_empty(),
        "nothing registered by the setup"
    );

    // Ctrl-C: the login prompt comes back, successfully (not a failed unit).
    let mut pty = Pty::start(&tree, &["--console"]);
    pty.expect("Primary server address: ");
    pty.send("\x03");
    pty.expect("The login prompt follows");
    let (out, code) = pty.finish();
    assert_eq!(code, 0, "{out}");

    // Provisioned already, or a seed present: nothing asked.
    tree.file("/var/lib/gateway-firstboot/done", "srv_x\n");
    let (out, code) = Pty::start(&tree, &["--console"]).finish();
    assert_eq!(code, 0);
    assert!(!out.contains("Primary server address"), "{out}");
}

/// /proc/net/route with only a link route: this server has no default route (no DHCP).
const NO_DEFAULT_ROUTE: &str = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                                enp1s0\t000010AC\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";

#[test]
fn without_a_route_the_installer_asks_for_a_static_address_checked_as_typed() {
    let sim = Sim::start();
    let mut tree = appliance(&sim);
    tree.file("/proc/net/route", NO_DEFAULT_ROUTE)
        .file("/proc/net/ipv6_route", "");
    let primary = format!("127.0.0.1:{}", sim.port);
    let mut pty = Pty::start(&tree, &[]);
    pty.expect("Network (Enter for DHCP, or static): ");
    pty.send("manual\r");
    pty.expect("\"manual\" is neither dhcp nor static");
    pty.expect("Network (Enter for DHCP, or static): ");
    pty.send("static\r");
    pty.expect("IP address with prefix length (192.0.2.10/24): ");
    pty.send("192.0.2.10\r");
    pty.expect("the prefix length is missing");
    pty.send("/24\r");
    pty.expect("Gateway (router) address (Enter for none): ");
    pty.send("198.51.100.1\r");
    pty.expect("198.51.100.1 is not in this server's subnet (192.0.2.0/24)");
    pty.send(&format!("{CTRL_U}192.0.2.1\r"));
    pty.expect("DNS servers, comma-separated (192.0.2.53): ");
    pty.send("192.0.2.53, 192.0.2.54\r");
    pty.expect("Search domain (Enter for none): ");
    pty.send("acme.lan\r");
    pty.expect("VLAN id (Enter for none, an untagged port): ");
    pty.send("5000\r");
    pty.expect("5000 is not a VLAN id from 1 to 4094");
    pty.send(&format!("{CTRL_U}\r"));
    pty.expect("Network: static 192.0.2.10/24 via 192.0.2.1, DNS 192.0.2.53 192.0.2.54, search acme.lan, on every Ethernet link.");
    pty.expect("Primary server address: ");
    pty.send(&format!("{primary}\r"));
    pty.expect("Account domain name: ");
    pty.send("acme.example\r");
    pty.expect("API key (Enter for the default restricted key): ");
    pty.send("\r");
    pty.expect("Done: this server is registered as ");
    let (transcript, code) = pty.finish();
    assert_eq!(code, 0, "{transcript}");
    let run_file =
        std::fs::read_to_string(tree.path("/run/systemd/network/10-gateway-firstboot.network"))
            .unwrap();
    assert!(run_file.contains("Address=192.0.2.10/24\n"), "{run_file}");
    let seed = std::fs::read_to_string(tree.path("/etc/gateway/seed.toml")).unwrap();
    for line in [
        "address = [\"192.0.2.10/24\"]",
        "gateway = \"192.0.2.1\"",
        "search-domains = [\"acme.lan\"]",
    ] {
        assert!(seed.contains(line), "{line} not saved:\n{seed}");
    }
    assert!(!seed.contains("vlan"), "a blank VLAN is not saved:\n{seed}");
    let kept = tree.path("/etc/systemd/network/10-gateway-firstboot.network");
    assert!(kept.exists(), "not kept at handoff");

    // With a default route, nothing about the network is asked.
    let mut tree = appliance_tree(&sim.default_key, &sim.ca_pem());
    tree.file("/etc/gateway/seed.toml", SITE);
    tree.file(
        "/proc/net/route",
        format!("{NO_DEFAULT_ROUTE}enp1s0\t00000000\t010010AC\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"),
    );
    let mut pty = Pty::start(&tree, &[]);
    pty.expect("Primary server address: ");
    pty.send("\x03");
    let (transcript, _) = pty.finish();
    assert!(!transcript.contains("Network ("), "{transcript}");
}
