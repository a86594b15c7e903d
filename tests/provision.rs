//! `provision`, `await-trust`, `status`, `check --online`: the real binary with `--root`,
//! against gateway-primary-sim over TLS on loopback and a real dnsmasq for DNS.

use gateway_test_support::dnsmasq::Dnsmasq;
use gateway_test_support::sim::Sim;
use gateway_test_support::{Run, Tree, acme_appliance, assert_code, wait_exit};
use serde_json::Value;
use std::net::IpAddr;
use std::time::Duration;

const FQDN: &str = "gw01.acme.test";

struct Env {
    sim: Sim,
    tree: Tree,
    dns: Option<Dnsmasq>,
}

impl Env {
    /// A simulator with account acme.example and an appliance tree (machine ID, the image's
    /// default key, the simulator's CA), DNS checking off.
    fn new() -> Env {
        Env::with_sim(Sim::start())
    }

    fn with_sim(sim: Sim) -> Env {
        let tree = acme_appliance(&sim);
        let mut env = Env {
            sim,
            tree,
            dns: None,
        };
        env.seed("");
        env
    }

    /// Adds a dnsmasq with these records; the seed then points the agent at it.
    fn with_dns(mut self, records: &[(&str, IpAddr)]) -> Env {
        self.dns = Some(Dnsmasq::start(records));
        self
    }

    fn base_seed(&self) -> String {
        let dns = match &self.dns {
            Some(d) => format!("nameservers = [\"{}\"]\n", d.addr()),
            None => "dns-check = \"off\"\n".to_string(),
        };
        format!(
            "primary = \"127.0.0.1:{}\"\naccount = \"acme.example\"\nprimary-ca = \"/etc/gateway/primary-ca.pem\"\n\
             hostname = \"{FQDN}\"\ndeadline = \"10s\"\nconnect-timeout = \"2s\"\nrequest-timeout = \"3s\"\n{dns}",
            self.sim.port
        )
    }

    /// Writes /etc/gateway/seed.toml: the base settings plus `extra` (later keys win by
    /// replacing earlier lines of the same key).
    fn seed(&mut self, extra: &str) {
        let mut lines: Vec<String> = self.base_seed().lines().map(String::from).collect();
        for line in extra.lines().filter(|l| !l.trim().is_empty()) {
            let key = line.split('=').next().unwrap_or("").trim().to_string();
            lines.retain(|l| l.split('=').next().unwrap_or("").trim() != key);
            lines.push(line.to_string());
        }
        self.tree
            .file("/etc/gateway/seed.toml", lines.join("\n") + "\n");
    }

    fn reseed(&mut self, extra: &str) -> &mut Self {
        self.seed(extra);
        self
    }

    fn run(&self, args: &[&str]) -> Run {
        self.tree.run(args)
    }

    fn status(&self) -> (i32, Value) {
        let run = self.run(&["status", "--json"]);
        (run.code, run.json())
    }

    fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.tree.path(path)).unwrap_or_default()
    }

    /// The login console's lines: each fits 80 columns (but a DNS record or another single
    /// token, never split, which may be wider);
    /// returned with line breaks made spaces, as a person reads the wrapped text.
    fn issue(&self) -> String {
        let text = self.read("/etc/issue.d/gateway-firstboot.issue");
        for line in text.lines() {
            assert!(
                line.chars().count() <= 80
                    || !line.trim().contains(' ')
                    || line.trim().split(' ').nth(1) == Some("IN"),
                "a console line wider than 80 columns: {line:?}"
            );
        }
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// This host's first address others could reach (what the agent compares DNS answers with).
fn host_address() -> IpAddr {
    let own = gateway_firstboot::own_addresses();
    own.iter()
        .copied()
        .find(IpAddr::is_ipv4)
        .or_else(|| own.first().copied())
        .expect("this machine has no non-loopback address; the DNS tests need one")
}

#[test]
fn happy_path_to_trusted_then_idempotent() {
    let env = Env::new().with_dns(&[(FQDN, host_address())]);
    let mut env = env;
    let full = env
        .sim
        .ok(&["key", "add", "acme.example", "--kind", "full"]);
    env.reseed(&format!("api-key = \"{full}\""));

    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains(&format!(
            "DNS: {FQDN} resolves to this server ({})",
            host_address()
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("account acme.example exists, API key accepted (full)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("not trusted until an administrator clicks Authorize"),
        "{}",
        run.stdout
    );

    let servers = env.sim.all_servers();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["state"], "untrusted");
    assert_eq!(servers[0]["fqdn"], FQDN);
    assert_eq!(servers[0]["dns"], "ok");
    let id = servers[0]["server_id"].as_str().unwrap().to_string();

    let (code, status) = env.status();
    assert_eq!(code, 3, "waiting for authorization");
    assert_eq!(status["server_id"], id.as_str());
    assert_eq!(status["key_fingerprint"], servers[0]["key_fingerprint"]);
    let short = status["short_fingerprint"].as_str().unwrap().to_string();
    assert!(env.issue().contains(&format!(
        "NOT TRUSTED yet: an administrator must click Authorize for key {short}"
    )));
    assert!(env.tree.path("/var/lib/gateway-firstboot/done").exists());
    let config: toml::Table = env.read("/etc/gateway/gateway.toml").parse().unwrap();
    assert_eq!(config["server-id"].as_str(), Some(id.as_str()));
    assert_eq!(config["account"].as_str(), Some("acme.example"));
    let seed = env.read("/etc/gateway/seed.toml");
    assert!(
        !seed.contains("api-key") && seed.contains("account = \"acme.example\""),
        "key scrubbed, rest kept:\n{seed}"
    );

    // An administrator clicks Authorize; the trust step completes with mutual TLS.
    env.sim.ok(&["authorize", &id]);
    let run = env.run(&["await-trust", "--poll-max", "1s", "--timeout", "60s"]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains(&format!(
            "trusted: secure connection to https://127.0.0.1:{}/ established as {id}",
            env.sim.port
        )),
        "{}",
        run.stdout
    );
    assert!(
        env.read("/var/lib/gateway/identity/cert.pem")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    assert!(
        env.read("/var/lib/gateway/identity/account-ca.pem")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
    let servers = env.sim.all_servers();
    assert_eq!(servers[0]["state"], "trusted");
    assert!(
        servers[0]["secure_contacts"].as_i64().unwrap() >= 1,
        "the primary saw the mutual-TLS connection"
    );
    assert_eq!(env.status().0, 0, "trusted");

    // Again: nothing new on the primary.
    let again = env.run(&["provision"]);
    assert_code(&again, 0);
    assert!(
        again
            .stdout
            .contains(&format!("already provisioned: server {id}"))
    );
    let servers = env.sim.all_servers();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0]["registrations"], 1);
}

#[test]
fn a_missing_dns_record_warns_and_names_the_record_to_create() {
    let env = Env::new().with_dns(&[]);
    let mut env = env;
    env.reseed("");
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    let record = format!("{FQDN}. IN A {}", host_address());
    assert!(
        run.stdout
            .contains(&format!("create this DNS record: {record}")),
        "{}",
        run.stdout
    );
    let (code, status) = env.status();
    assert_eq!(code, 3);
    assert_eq!(status["dns"]["status"], "missing");
    assert_eq!(status["dns_records_missing"][0], record.as_str());
    assert!(
        env.issue()
            .contains(&format!("DNS record missing (create it): {record}"))
    );
    assert_eq!(
        env.sim.all_servers()[0]["dns"],
        "missing",
        "the result travels with the registration"
    );
}

#[test]
fn a_dns_record_pointing_elsewhere_is_a_mismatch() {
    let elsewhere: IpAddr = "198.51.100.7".parse().unwrap();
    let env = Env::new().with_dns(&[(FQDN, elsewhere)]);
    let mut env = env;
    env.reseed("");
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains(&format!(
            "DNS has {FQDN} pointing at 198.51.100.7, not at this server"
        )),
        "{}",
        run.stdout
    );
    assert_eq!(env.status().1["dns"]["status"], "mismatch");
}

#[test]
fn a_name_that_also_leads_to_another_machine_names_the_record_to_delete() {
    // A stale round-robin entry: some print clients would reach the other box.
    let stale: IpAddr = "198.51.100.7".parse().unwrap();
    let env = Env::new().with_dns(&[(FQDN, host_address()), (FQDN, stale)]);
    let mut env = env;
    env.reseed("");
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    let delete = format!("{FQDN}. IN A {stale}");
    assert!(
        run.stdout.contains(&format!(
            "pointing at this server ({}) and also at {stale}, which is not this server",
            host_address()
        )) && run
            .stdout
            .contains(&format!("delete this DNS record: {delete}")),
        "{}",
        run.stdout
    );
    let (_, status) = env.status();
    assert_eq!(status["dns"]["status"], "mismatch");
    assert_eq!(status["dns_records_to_delete"][0], delete.as_str());
    assert_eq!(status["dns_records_missing"].as_array().unwrap().len(), 0);
    assert!(
        env.issue().contains(&format!("(delete it): {delete}")),
        "{}",
        env.issue()
    );
    assert_eq!(env.sim.all_servers()[0]["dns"], "mismatch");
}

#[test]
fn a_missing_reverse_record_is_suggested() {
    let env = Env::new();
    let mut env = env;
    env.dns = Some(Dnsmasq::start_forward_only(&[(FQDN, host_address())]));
    env.reseed("");
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    let ip = host_address().to_string();
    let octets: Vec<&str> = ip.split('.').rev().collect();
    let ptr = format!("{}.in-addr.arpa. IN PTR {FQDN}.", octets.join("."));
    assert!(
        run.stdout
            .contains(&format!("suggested reverse DNS record: {ptr}")),
        "{}",
        run.stdout
    );
    let (_, status) = env.status();
    assert_eq!(
        status["dns"]["status"], "ok",
        "a reverse record is not required"
    );
    assert_eq!(status["dns_reverse_missing"][0], ptr.as_str());
}

#[test]
fn the_missing_record_stays_on_the_console_through_trust_until_dns_has_it() {
    let env = Env::new().with_dns(&[]);
    let mut env = env;
    env.reseed("");
    assert_code(&env.run(&["provision"]), 0);
    let record = format!("{FQDN}. IN A {}", host_address());
    let line = format!("DNS record missing (create it): {record}");
    let id = env.sim.all_servers()[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.sim.ok(&["authorize", &id]);
    let trust = ["await-trust", "--poll-max", "1s", "--timeout", "60s"];
    assert_code(&env.run(&trust), 0);
    let issue = env.issue();
    assert!(
        issue.contains("is trusted by") && issue.contains(&line),
        "the trust line adds to the DNS advice, it does not replace it:\n{issue}"
    );
    let marker = env.tree.path("/var/lib/gateway-firstboot/dns-todo");
    assert!(
        marker.exists(),
        "the trust unit's condition for running at the next boot"
    );
    // The administrator creates the record; at the next boot the trust step checks again.
    env.dns
        .as_mut()
        .unwrap()
        .replace_records(&[(FQDN, host_address())]);
    assert_code(&env.run(&trust), 0);
    let issue = env.issue();
    assert!(
        issue.contains("is trusted by") && !issue.contains("DNS record"),
        "the advice goes once DNS is right:\n{issue}"
    );
    assert!(!marker.exists(), "no reason left to run at boot");
    let (code, status) = env.status();
    assert_eq!(status["dns"]["status"], "ok");
    assert_eq!(code, 0, "trusted, no DNS warning left");
}

#[test]
fn dns_require_waits_for_the_record_to_appear() {
    let env = Env::new().with_dns(&[]);
    let mut env = env;
    env.reseed("dns-check = \"require\"\ndeadline = \"60s\"");
    let child = env.tree.spawn(&["provision"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        env.sim.all_servers().is_empty(),
        "nothing registered while the record is missing"
    );
    env.dns
        .as_mut()
        .unwrap()
        .replace_records(&[(FQDN, host_address())]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("waiting for DNS (dns-check = require)")
            && stdout.contains("[dns-missing]"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("DNS: {FQDN} resolves to this server")),
        "{stdout}"
    );
}

#[test]
fn dns_require_gives_up_at_the_deadline_with_the_record_to_create() {
    let env = Env::new().with_dns(&[]);
    let mut env = env;
    env.reseed("dns-check = \"require\"");
    let run = env.run(&["provision"]);
    assert_code(&run, 75);
    assert!(run.stdout.contains("gave up after"), "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!(
            "fix: create the record: {FQDN}. IN A {}",
            host_address()
        )),
        "{}",
        run.stdout
    );
    assert!(env.sim.all_servers().is_empty());
    let (code, status) = env.status();
    assert_eq!(code, 1);
    assert_eq!(status["last_error"]["code"], "deadline");
}

/// A permanent failure: code, message, fix, exit status; nothing registered.
struct Permanent {
    name: &'static str,
    setup: fn(&mut Env),
    code: &'static str,
    says: &'static str,
    exit: i32,
}

const PERMANENT: &[Permanent] = &[
    Permanent {
        name: "unknown key",
        setup: |e| e.seed("api-key = \"gwk_nosuchkey00000000000000\""),
        code: "key-rejected",
        says: "the primary rejected the API key [key-rejected]\n  fix: copy the API key again",
        exit: 77,
    },
    Permanent {
        name: "expired key",
        setup: |e| {
            let k = e.sim.ok(&[
                "key",
                "add",
                "acme.example",
                "--kind",
                "full",
                "--expires",
                "2001-01-01T00:00:00Z",
            ]);
            e.seed(&format!("api-key = \"{k}\""));
        },
        code: "key-expired",
        says: "the API key has expired",
        exit: 77,
    },
    Permanent {
        name: "key limited to other addresses",
        setup: |e| {
            let k = e.sim.ok(&[
                "key",
                "add",
                "acme.example",
                "--kind",
                "full",
                "--allow-ip",
                "10.0.0.0/8",
            ]);
            e.seed(&format!("api-key = \"{k}\""));
        },
        code: "key-ip-not-allowed",
        says: "the API key may not be used from this server's address",
        exit: 77,
    },
    Permanent {
        name: "key of another account",
        setup: |e| {
            e.sim.ok(&["account", "add", "other.example"]);
            let k = e.sim.ok(&["key", "add", "other.example", "--kind", "full"]);
            e.seed(&format!("api-key = \"{k}\""));
        },
        code: "key-account-mismatch",
        says: "the API key belongs to another account, not acme.example",
        exit: 77,
    },
    Permanent {
        name: "wrong account domain",
        setup: |e| e.seed("account = \"acme.wrong\""),
        code: "account-unknown",
        says: "the primary has no account with the domain name acme.wrong [account-unknown]\n  fix: check the account domain name",
        exit: 78,
    },
    Permanent {
        name: "untrusted certificate",
        setup: |e| {
            let seed = e
                .base_seed()
                .replace("primary-ca = \"/etc/gateway/primary-ca.pem\"\n", "");
            e.tree.file("/etc/gateway/seed.toml", seed);
        },
        code: "tls-unknown-issuer",
        says: "the certificate of 127.0.0.1 is not signed by a trusted CA",
        exit: 78,
    },
    Permanent {
        name: "pin that does not match",
        setup: |e| e.seed(&format!("primary-ca-sha256 = \"{}\"", "ab".repeat(32))),
        code: "tls-pin-mismatch",
        says: "no certificate 127.0.0.1 presented matches primary-ca-sha256",
        exit: 78,
    },
    Permanent {
        name: "an address that is not a primary",
        setup: |e| {
            e.seed(&format!(
                "primary = \"https://127.0.0.1:{}/elsewhere/\"",
                e.sim.port
            ))
        },
        code: "not-a-primary",
        says: "has no registration protocol at",
        exit: 76,
    },
    Permanent {
        name: "invalid settings",
        setup: |e| e.seed("account = \"acme..example\""),
        code: "settings-invalid",
        says: "error: account from /etc/gateway/seed.toml line",
        exit: 65,
    },
];

#[test]
fn permanent_failures_stop_at_once_with_code_message_and_fix() {
    for case in PERMANENT {
        let mut env = Env::new();
        (case.setup)(&mut env);
        let run = env.run(&["provision"]);
        assert_eq!(run.code, case.exit, "{}: exit\n{}", case.name, run.all());
        assert!(
            run.stdout.contains(case.says),
            "{}: output lacks {:?}:\n{}",
            case.name,
            case.says,
            run.stdout
        );
        assert!(
            run.stdout.contains(&format!("[{}]", case.code)) || case.code == "settings-invalid",
            "{}: code\n{}",
            case.name,
            run.stdout
        );
        assert!(
            !run.stdout.contains("retrying"),
            "{}: a permanent failure must not be retried\n{}",
            case.name,
            run.stdout
        );
        let (status_code, status) = env.status();
        assert_eq!(status_code, 1, "{}", case.name);
        assert_eq!(status["last_error"]["code"], case.code, "{}", case.name);
        assert!(
            env.sim.all_servers().is_empty(),
            "{}: nothing registered",
            case.name
        );
        assert!(
            !env.tree.path("/var/lib/gateway-firstboot/done").exists(),
            "{}",
            case.name
        );
        let issue = env.issue();
        assert!(
            issue.starts_with("Gateway provisioning failed: ") && issue.contains("Fix: "),
            "{}: {issue}",
            case.name
        );
    }
}

#[test]
fn no_settings_at_all_exits_66() {
    let mut env = Env::new();
    std::fs::remove_file(env.tree.path("/etc/gateway/seed.toml")).unwrap();
    let run = env.run(&["provision"]);
    assert_code(&run, 66);
    assert!(
        run.stdout
            .contains("no provisioning settings found [no-settings]"),
        "{}",
        run.stdout
    );
    env.tree.cmdline("quiet");
    assert_eq!(env.run(&["provision"]).code, 66);
}

/// At boot with no seed the unit waits, ready, with the hint on the login prompt; a GWSEED
/// stick plugged in later is provisioned from without a restart.
#[test]
fn waits_for_a_seed_then_provisions_from_a_stick_plugged_in_later() {
    use std::os::unix::net::UnixDatagram;
    let mut env = Env::new();
    let seed = std::fs::read_to_string(env.tree.path("/etc/gateway/seed.toml")).unwrap();
    std::fs::remove_file(env.tree.path("/etc/gateway/seed.toml")).unwrap();
    let socket_path = env.tree.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = env
        .tree
        .command(&["provision", "--wait-for-seed"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // READY=1 while waiting, so that the boot completes.
    let mut heard = String::new();
    let mut buf = [0u8; 4096];
    while !heard.contains("READY=1") {
        let n = socket
            .recv(&mut buf)
            .expect("no READY=1 while waiting for a seed");
        heard.push_str(&String::from_utf8_lossy(&buf[..n]));
        heard.push('\n');
    }
    assert!(
        heard.contains("STATUS=no provisioning settings yet: waiting for a seed"),
        "{heard}"
    );
    let issue = env.issue();
    assert!(
        issue.contains("Set it up on the console (tty1 or the serial console), or log in and run: gateway-firstboot install"),
        "{issue}"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "stopped instead of waiting"
    );
    assert!(env.sim.all_servers().is_empty());

    // The seed's CA path is an appliance path; the stick holds the same seed.
    env.tree.gwseed(&[("seed.toml", seed.as_bytes())]);
    let code = wait_exit(&mut child, Duration::from_secs(30));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        code,
        Some(0),
        "not provisioned within 30 s of the stick appearing: {stdout}"
    );
    assert!(stdout.contains("settings found: provisioning"), "{stdout}");
    assert_eq!(env.sim.all_servers().len(), 1);
    let issue = env.issue();
    assert!(issue.contains("NOT TRUSTED yet"), "{issue}");
}

/// A transient failure is retried, then ends at the deadline with a clear message.
fn assert_gives_up(env: &Env, code: &str, says: &str) {
    let run = env.run(&["provision"]);
    assert_code(&run, 75);
    assert!(
        run.stdout
            .contains(&format!("[{code}]; attempt 1 failed, retrying in")),
        "{code}: no retry\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("gave up after") && run.stdout.contains(says),
        "{code}: {says:?}\n{}",
        run.stdout
    );
    assert_eq!(env.status().1["last_error"]["code"], "deadline");
    assert!(env.sim.all_servers().is_empty());
}

#[test]
fn refused_connections_are_retried_until_the_deadline() {
    let mut env = Env::new();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.seed(&format!("primary = \"127.0.0.1:{closed}\""));
    assert_gives_up(
        &env,
        "primary-refused",
        "127.0.0.1 refused the connection [primary-refused]",
    );
}

#[test]
fn an_unresolvable_primary_is_retried_until_the_deadline() {
    let mut env = Env::new().with_dns(&[]);
    env.seed("primary = \"primary.acme.test\"\ndns-check = \"off\"");
    assert_gives_up(
        &env,
        "primary-dns",
        "cannot resolve the primary's name primary.acme.test: no such name in DNS",
    );
}

#[test]
fn a_response_that_never_ends_times_out_and_is_retried() {
    let env = Env::with_sim(Sim::start_with(&["--hang-percent", "100"]));
    assert_gives_up(&env, "primary-timeout", "did not answer in time");
}

#[test]
fn a_wrong_clock_is_named_as_such() {
    let env = Env::with_sim(Sim::start_with(&["--clock-skew", "3d"]));
    let run = env.run(&["provision"]);
    assert_code(&run, 75);
    assert!(
        run.stdout.contains("this server's clock") && run.stdout.contains("[clock-wrong]"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("set the clock (timedatectl set-time, or fix NTP)"),
        "{}",
        run.stdout
    );
}

#[test]
fn a_clock_off_waits_until_it_is_right_even_when_the_certificate_passes() {
    // The primary's Date an hour away, its certificate valid on both clocks: nothing is
    // registered while the clocks disagree; the retries name the clock; once they agree (the
    // primary restarted without the skew stands in for NTP setting this server's clock) it
    // provisions by itself, in the same run.
    let mut env = Env::with_sim(Sim::start_with(&["--clock-skew", "1h", "--cert-skew", "0"]));
    env.reseed("deadline = \"60s\"");
    let child = env.tree.spawn(&["provision"]);
    // Two health checks on the primary's log: the first attempt failed and was retried.
    let retried = (0..150).any(|_| {
        std::thread::sleep(Duration::from_millis(200));
        env.sim.ok(&["requests"]).matches("/health").count() >= 2
    });
    assert!(retried, "not retried: {}", env.sim.ok(&["requests"]));
    assert!(
        env.sim.all_servers().is_empty(),
        "registered with a wrong clock"
    );
    env.sim.restart_with(&[]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("waiting for NTP to set it [clock-wrong]; attempt 1 failed, retrying in"),
        "{stdout}"
    );
    assert_eq!(env.sim.all_servers().len(), 1);
}

#[test]
fn with_the_clock_synchronized_by_ntp_a_primary_whose_clock_is_off_is_only_warned_about() {
    let mut env = Env::with_sim(Sim::start_with(&["--clock-skew", "1h", "--cert-skew", "0"]));
    env.tree.file("/run/systemd/timesync/synchronized", "");
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    assert!(
        run.stderr.contains("the primary's clock is 3600s away from this server's, which NTP has synchronized: going on")
            || run.stderr.contains("the primary's clock is 3599s away"),
        "{}",
        run.all()
    );
}

#[test]
fn an_expired_certificate_with_a_right_clock_is_the_certificate() {
    let env = Env::with_sim(Sim::start_with(&["--cert-skew", "-900d"]));
    let run = env.run(&["provision"]);
    assert_code(&run, 78);
    assert!(
        run.stdout
            .contains("the certificate of 127.0.0.1 has expired [tls-expired]"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("clock-wrong") && !run.stdout.contains("retrying"),
        "{}",
        run.stdout
    );
}

/// Starts provisioning with the primary failing, clears the fault after a while, and expects
/// success after retries that name the failure.
fn recovers_from(faults: &[&str], code: &str) -> Env {
    let mut env = Env::new();
    env.reseed("deadline = \"60s\"");
    env.sim.ok(&[&["faults", "set"][..], faults].concat());
    std::thread::sleep(Duration::from_millis(400));
    let child = env.tree.spawn(&["provision"]);
    std::thread::sleep(Duration::from_secs(3));
    env.sim.ok(&["faults", "clear"]);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains(&format!("[{code}]; attempt 1 failed, retrying in")),
        "{code}:\n{stdout}"
    );
    assert_eq!(env.sim.all_servers().len(), 1);
    env
}

#[test]
fn retries_through_server_errors() {
    recovers_from(&["--error-percent", "100"], "primary-error");
}

#[test]
fn retries_through_rate_limiting_honouring_retry_after() {
    let env = recovers_from(&["--rate-limit", "0", "--retry-after", "2"], "rate-limited");
    // The primary's own log says when the agent came back after each 429: never before the
    // Retry-After it asked (2 s), and not much later than twice that: the agent spreads a herd
    // told the same over as long again (tests/bench/fleet), plus a request's way here, which
    // on a loaded 2-core CI machine (boots beside it) has taken over half a second.
    let log = env.sim.ok(&["requests"]);
    let requests: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("a request log line"))
        .collect();
    let secs = |r: &serde_json::Value, field: &str| r[field].as_f64().expect(field);
    let waits: Vec<f64> = requests
        .windows(2)
        .filter(|pair| pair[0]["status"] == 429)
        .map(|pair| secs(&pair[1], "at") - (secs(&pair[0], "at") + secs(&pair[0], "ms") / 1000.0))
        .collect();
    assert!(!waits.is_empty(), "no request after a 429:\n{log}");
    for wait in &waits {
        assert!(
            (2.0..=5.5).contains(wait),
            "came back {wait:.2} s after a 429 with Retry-After: 2 (all: {waits:.2?})\n{log}"
        );
    }
}

#[test]
fn retries_until_the_primary_comes_back() {
    recovers_from(&["--down-for", "3s"], "primary-refused");
}

#[test]
fn a_rejected_server_stops_the_trust_step() {
    let env = Env::new();
    assert_code(&env.run(&["provision"]), 0);
    let id = env.sim.all_servers()[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.sim.ok(&["reject", &id]);
    let run = env.run(&["await-trust", "--poll-max", "1s", "--timeout", "30s"]);
    assert_code(&run, 77);
    assert!(
        run.stdout
            .contains(&format!("an administrator rejected server {id}")),
        "{}",
        run.stdout
    );
    assert_eq!(env.status().0, 1);
}

#[test]
fn an_auto_trust_key_needs_nobody_to_click() {
    let mut env = Env::new();
    let auto = env.sim.ok(&[
        "key",
        "add",
        "acme.example",
        "--kind",
        "restricted",
        "--auto-trust",
    ]);
    env.reseed(&format!("api-key = \"{auto}\""));
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains("trusted automatically"),
        "{}",
        run.stdout
    );
    let run = env.run(&[
        "await-trust",
        "--poll-max",
        "1s",
        "--timeout",
        "30s",
        "--notify-command",
        &format!("touch {}", env.tree.path("/notified").display()),
    ]);
    assert_code(&run, 0);
    assert!(
        env.tree.path("/notified").exists(),
        "the notify command ran"
    );
}

#[test]
fn a_new_key_pair_for_a_trusted_machine_is_a_conflict() {
    let env = Env::new();
    assert_code(&env.run(&["provision"]), 0);
    let id = env.sim.all_servers()[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.sim.ok(&["authorize", &id]);
    // The appliance is reinstalled with the same machine ID but loses its key and state.
    std::fs::remove_dir_all(env.tree.path("/var/lib")).unwrap();
    let mut env = env;
    env.reseed("");
    let run = env.run(&["provision"]);
    assert_code(&run, 78);
    assert!(run.stdout.contains("[identity-conflict]"), "{}", run.stdout);
    assert_eq!(env.sim.all_servers().len(), 1);
}

#[test]
fn check_online_validates_without_registering() {
    let mut env = Env::new();
    let run = env.run(&["check", "--online"]);
    assert_code(&run, 0);
    assert!(
        run.stdout
            .contains("online: connected to https://127.0.0.1:"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("account acme.example exists; API key accepted (restricted)"),
        "{}",
        run.stdout
    );
    env.reseed("account = \"acme.wrong\"");
    let run = env.run(&["check", "--online", "--json"]);
    assert_code(&run, 78);
    assert_eq!(run.json()["online"]["code"], "account-unknown");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    env.reseed(&format!(
        "account = \"acme.example\"\nprimary = \"127.0.0.1:{closed}\""
    ));
    let run = env.run(&["check", "--online"]);
    assert_code(&run, 69);
    assert!(
        run.stdout
            .contains("refused the connection [primary-refused]"),
        "{}",
        run.stdout
    );
    assert!(env.sim.all_servers().is_empty());
}

#[test]
fn status_waits_while_in_progress() {
    let env = Env::new();
    let start = std::time::Instant::now();
    let run = env.run(&["status", "--wait", "--timeout", "1s"]);
    assert_code(&run, 4);
    assert!(start.elapsed() >= Duration::from_secs(1));
    assert_code(&env.run(&["provision"]), 0);
    assert_code(&env.run(&["status", "--wait", "--timeout", "30"]), 3);
}

/// systemd's notification protocol, received on a socket of our own.
#[test]
fn systemd_hears_status_extensions_while_retrying_and_ready() {
    use std::os::unix::net::UnixDatagram;
    let mut env = Env::new();
    env.reseed("deadline = \"60s\"");
    let socket_path = env.tree.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    env.sim.ok(&["faults", "set", "--down-for", "3s"]);
    std::thread::sleep(Duration::from_millis(400));
    let child = env
        .tree
        .command(&["provision"])
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = text.contains("READY=1");
        messages.push(text);
        if done {
            break;
        }
    }
    let status = child.wait_with_output().unwrap().status;
    assert_eq!(status.code(), Some(0));
    let all = messages.join("\n");
    assert!(all.contains("STATUS=provisioning this gateway"), "{all}");
    assert!(
        all.contains("EXTEND_TIMEOUT_USEC="),
        "retries extend the start timeout: {all}"
    );
    assert!(all.contains("[primary-refused]; attempt 1 failed"), "{all}");
    assert!(messages.last().unwrap().contains("READY=1"), "{all}");
}

/// Every byte the agent writes or prints, searched for the key.
#[test]
fn the_api_key_never_reaches_output_state_status_or_the_seeds() {
    let mut env = Env::new();
    let key = env
        .sim
        .ok(&["key", "add", "acme.example", "--kind", "full"]);
    env.reseed("");
    let seed_without_key = env.base_seed();
    // The key in three writable seeds and a credential; GWSEED on a FAT partition.
    env.tree.file(
        "/etc/gateway/seed.toml",
        format!("{seed_without_key}api-key = \"{key}\"\n"),
    );
    env.tree.file(
        "/boot/gateway-seed.toml",
        format!("# boot seed\napi-key = \"{key}\"\naccount = \"acme.example\"\n"),
    );
    env.tree
        .gwseed(&[("seed.toml", format!("api-key = \"{key}\"\n").as_bytes())]);
    let mut outputs = Vec::new();
    for args in [
        &["check"][..],
        &["check", "--online"],
        &["show-config", "--json"],
        &["-vv", "provision"],
        &["status", "--json"],
        &["status"],
    ] {
        outputs.push(env.run(args).all());
    }
    let id = env.sim.all_servers()[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.sim.ok(&["authorize", &id]);
    outputs.push(
        env.run(&["-vv", "await-trust", "--poll-max", "1s", "--timeout", "30s"])
            .all(),
    );
    for out in &outputs {
        assert!(!out.contains(&key), "output shows the key:\n{out}");
    }
    // Every file under the root, including the raw GWSEED partition.
    let mut stack = vec![env.tree.dir.path().to_path_buf()];
    let mut checked = 0;
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_symlink() {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap();
            let hit = bytes.windows(key.len()).any(|w| w == key.as_bytes());
            assert!(!hit, "{} still holds the key", path.display());
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} files checked");
    assert!(
        env.read("/boot/gateway-seed.toml")
            .contains("# boot seed\naccount = \"acme.example\""),
        "the rest of the seed is kept"
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn killed_at_every_step_the_next_run_resumes_without_duplicates() {
    let points = [
        "after-validate",
        "after-dns",
        "after-connect",
        "after-key",
        "before-register",
        "after-register",
        "after-register-saved",
        "after-gateway-config",
        "after-scrub-overwrite",
        "after-scrub",
        "after-done",
    ];
    for point in points {
        let mut env = Env::new().with_dns(&[(FQDN, host_address())]);
        let key = env
            .sim
            .ok(&["key", "add", "acme.example", "--kind", "full"]);
        env.reseed(&format!("api-key = \"{key}\""));
        env.tree.kill_at(&["provision"], point);
        if point == "after-scrub-overwrite" {
            // Cut between the overwrite in place and the rewrite: the seed holds filler where
            // the key was, and is still a seed.
            let seed = env.read("/etc/gateway/seed.toml");
            assert!(!seed.contains(&key), "{point}: key overwritten in place");
            let table: toml::Table = seed.parse().expect("the seed stays valid TOML");
            assert!(
                table["api-key"]
                    .as_str()
                    .unwrap()
                    .bytes()
                    .all(|b| b == b'x')
            );
        }
        let run = env.run(&["provision"]);
        assert_code(&run, 0);
        let servers = env.sim.all_servers();
        assert_eq!(
            servers.len(),
            1,
            "{point}: exactly one server on the primary"
        );
        let (code, status) = env.status();
        assert_eq!(code, 3, "{point}: handed off and waiting");
        assert_eq!(
            status["server_id"], servers[0]["server_id"],
            "{point}: the state names the primary's server"
        );
        assert_eq!(
            status["key_fingerprint"], servers[0]["key_fingerprint"],
            "{point}: one identity"
        );
        assert!(
            env.tree.path("/var/lib/gateway-firstboot/done").exists(),
            "{point}"
        );
        assert!(
            !env.read("/etc/gateway/seed.toml").contains(&key),
            "{point}: key scrubbed"
        );
    }
    // And during the trust step.
    let env = Env::new();
    assert_code(&env.run(&["provision"]), 0);
    let id = env.sim.all_servers()[0]["server_id"]
        .as_str()
        .unwrap()
        .to_string();
    env.sim.ok(&["authorize", &id]);
    env.tree
        .kill_at(&["await-trust", "--poll-max", "1s"], "after-certificate");
    assert_code(
        &env.run(&["await-trust", "--poll-max", "1s", "--timeout", "30s"]),
        0,
    );
    assert_eq!(env.status().0, 0);
}

#[test]
fn a_pinned_primary_is_handed_to_the_gateway_as_its_ca() {
    let mut env = Env::new();
    let pin = gateway_test_support::pin_of(&env.sim.ca_pem());
    let seed = env
        .base_seed()
        .replace("primary-ca = \"/etc/gateway/primary-ca.pem\"\n", "");
    env.tree.file(
        "/etc/gateway/seed.toml",
        format!("{seed}primary-ca-sha256 = \"{pin}\"\n"),
    );
    assert_code(&env.run(&["provision"]), 0);
    let exported = env.read("/var/lib/gateway/identity/primary-ca.pem");
    assert_eq!(
        exported.trim(),
        env.sim.ca_pem().trim(),
        "the gateway trusts the certificate the pin matched"
    );
    let config: toml::Table = env.read("/etc/gateway/gateway.toml").parse().unwrap();
    assert_eq!(
        config["primary-ca"].as_str(),
        Some("/var/lib/gateway/identity/primary-ca.pem")
    );
    assert_eq!(config["primary-ca-sha256"].as_str(), Some(pin.as_str()));
}

/// A first boot cut short: systemd has not committed /etc/machine-id, so the next boot
/// brings another one. The primary must still see the same machine.
#[cfg(feature = "failpoints")]
#[test]
fn a_new_machine_id_after_a_cut_first_boot_is_still_the_same_machine() {
    for point in ["before-register", "after-register"] {
        let env = Env::new();
        env.tree.kill_at(&["provision"], point);
        let mut env = env;
        env.tree
            .file("/etc/machine-id", "fedcba9876543210fedcba9876543210\n");
        assert_code(&env.run(&["provision"]), 0);
        assert_eq!(env.sim.all_servers().len(), 1, "{point}: one server");
    }
}
