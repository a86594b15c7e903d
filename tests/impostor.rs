//! Impostors: servers on the agent's path to the primary that are not the primary, or that
//! misbehave. For each one and every command that talks to the primary (`check --online`,
//! `provision`, `install`, `await-trust`): the API key (or server token) never reaches it, the
//! failure has its own code and fix line, nothing hangs past its deadline, and what the agent
//! reads is bounded.

use gateway_test_support::impostor::{
    Answer, Cert, Impostor, Kind, Spec, Validity, ca, issued_by, self_signed,
};
use gateway_test_support::{Run, Tree, appliance_tree, wait_exit};
use std::time::{Duration, Instant};

/// The full API key the impostors must never see.
const KEY: &str = "gwk_full_TheImpostorMustNeverSeeThis2026";
/// Every run ends within this, or the test fails (the agent's own deadline is 10 s).
const RUN_DEADLINE: Duration = Duration::from_secs(40);

/// How the agent is told to trust the primary.
#[derive(Clone, Copy, Debug)]
enum Trust {
    /// `primary-ca-sha256` of the customer's CA.
    PinCa,
    /// `primary-ca` with the customer's CA (plus the system's CAs).
    CaFile,
}

/// The customer's CA, and an appliance tree that trusts it one way.
struct Setup {
    customer: Cert,
    tree: Tree,
}

impl Setup {
    fn new(trust: Trust, port: u16) -> Setup {
        let customer = ca("Customer Private CA");
        let mut tree = appliance_tree("gwk_default_ImageDefaultKey2026", &customer.pem());
        let trust_line = match trust {
            Trust::PinCa => format!("primary-ca-sha256 = \"{}\"", customer.sha256()),
            Trust::CaFile => "primary-ca = \"/etc/gateway/primary-ca.pem\"".to_string(),
        };
        tree.file(
            "/etc/gateway/seed.toml",
            format!(
                "primary = \"127.0.0.1:{port}\"\naccount = \"acme.example\"\napi-key = \"{KEY}\"\n\
                 {trust_line}\nhostname = \"gw01.acme.test\"\ndns-check = \"off\"\n\
                 deadline = \"10s\"\nconnect-timeout = \"2s\"\nrequest-timeout = \"3s\"\n"
            ),
        );
        tree.file("/root/key", format!("{KEY}\n"));
        Setup { customer, tree }
    }
}

/// A finished command: its output, how long it took, and the agent's peak memory.
struct Outcome {
    run: Run,
    took: Duration,
}

/// Runs one command to its end within [`RUN_DEADLINE`].
fn run_bounded(tree: &Tree, args: &[&str]) -> Outcome {
    let started = Instant::now();
    let mut child = tree
        .command(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let readers = (
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
            s
        }),
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut err, &mut s);
            s
        }),
    );
    let code = wait_exit(&mut child, RUN_DEADLINE);
    let run = Run {
        code: code.unwrap_or(-1),
        stdout: readers.0.join().unwrap(),
        stderr: readers.1.join().unwrap(),
    };
    assert!(
        code.is_some(),
        "{args:?} still running after {RUN_DEADLINE:?}: {}",
        run.all()
    );
    Outcome {
        run,
        took: started.elapsed(),
    }
}

/// The commands that send the key, as a user runs them.
fn commands(port: u16, key_file: &std::path::Path) -> Vec<Vec<String>> {
    let primary = format!("127.0.0.1:{port}");
    vec![
        vec!["check".into(), "--online".into()],
        vec!["provision".into()],
        vec![
            "install".into(),
            "--primary".into(),
            primary,
            "--account".into(),
            "acme.example".into(),
            "--api-key-file".into(),
            key_file.display().to_string(),
        ],
    ]
}

/// Peak resident memory of any finished child of this test process, in KiB.
fn children_max_rss_kib() -> i64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN)
        .unwrap()
        .max_rss()
}

/// The agent never reads more than this of an answer (256 KiB) plus what the kernel's socket
/// buffers take in before it stops; an agent that read a whole 1 GiB body would be far over.
const MAX_ACCEPTED: u64 = 16 * 1024 * 1024;
/// An agent's peak RSS (KiB): the budget is 8 MiB; this catches a body read into memory.
const MAX_RSS_KIB: i64 = 24 * 1024;

/// Starts `kind` on a free port with a tree trusting the customer's CA via `trust`, runs
/// every command, and checks what every impostor test checks. `make` builds the impostor
/// from the customer's CA.
fn refused(trust: Trust, make: impl Fn(&Cert) -> Kind, code: &str, fix: &str) -> Impostor {
    // The tree needs the port, the impostor needs the CA: reserve the port first.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = Setup::new(trust, port);
    let imp = Impostor::start_on(&format!("127.0.0.1:{port}"), make(&setup.customer));
    for args in commands(port, &setup.tree.path("/root/key")) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run_bounded(&setup.tree, &args);
        let all = o.run.all();
        assert_ne!(
            o.run.code, 0,
            "{trust:?} {args:?}: accepted an impostor\n{all}"
        );
        assert!(
            all.contains(&format!("[{code}]")),
            "{trust:?} {args:?}: expected [{code}] ({:?})\n{all}",
            o.took
        );
        assert!(
            all.contains(&format!("fix: {fix}")),
            "{trust:?} {args:?}: expected the fix line {fix:?}\n{all}"
        );
        assert!(!all.contains(KEY), "{args:?}: the key is in the output");
        assert!(
            !imp.heard(KEY),
            "{trust:?} {args:?}: the impostor received the API key"
        );
        assert!(
            !imp.heard("authorization"),
            "{trust:?} {args:?}: the impostor received an Authorization header"
        );
    }
    assert!(
        imp.connections() > 0,
        "the agent never reached the impostor: the test proves nothing"
    );
    assert!(
        imp.sent() < MAX_ACCEPTED,
        "the agent took in {} bytes",
        imp.sent()
    );
    assert!(
        children_max_rss_kib() < MAX_RSS_KIB,
        "an agent peaked at {} KiB",
        children_max_rss_kib()
    );
    assert!(
        !setup.tree.path("/var/lib/gateway-firstboot/done").exists(),
        "provisioning was marked done against an impostor"
    );
    imp
}

const PIN_FIX: &str = "this is not the primary";
const TRUST_FIX: &str = "set primary-ca to the primary's CA certificate";

#[test]
fn pinned_ca_sent_as_an_intermediate_under_a_foreign_leaf() {
    refused(
        Trust::PinCa,
        |customer| {
            let leaf = self_signed(Spec::default());
            Kind::tls(&leaf, &[customer], Answer::Primary)
        },
        "tls-pin-not-issuer",
        PIN_FIX,
    );
}

#[test]
fn pinned_ca_sent_under_a_leaf_of_another_ca_for_the_right_name() {
    refused(
        Trust::PinCa,
        |customer| {
            let attacker = ca("Attacker CA");
            let leaf = issued_by(&attacker, Spec::default());
            Kind::tls(&leaf, &[&attacker, customer], Answer::Primary)
        },
        "tls-pin-not-issuer",
        PIN_FIX,
    );
}

#[test]
fn a_self_signed_leaf_for_the_right_name() {
    for trust in [Trust::PinCa, Trust::CaFile] {
        let code = match trust {
            Trust::PinCa => "tls-pin-mismatch",
            Trust::CaFile => "tls-unknown-issuer",
        };
        let fix = match trust {
            Trust::PinCa => "check the pin against",
            Trust::CaFile => TRUST_FIX,
        };
        refused(
            trust,
            |_| Kind::tls(&self_signed(Spec::default()), &[], Answer::Primary),
            code,
            fix,
        );
    }
}

/// A leaf issued by the customer's own CA, wrong in one way (`spec`), sent with that CA:
/// refused with `code` under both the CA pin and `primary-ca`.
fn customer_leaf_refused(spec: fn() -> Spec<'static>, code: &str, fix: &str) {
    for trust in [Trust::PinCa, Trust::CaFile] {
        refused(
            trust,
            |customer| Kind::tls(&issued_by(customer, spec()), &[customer], Answer::Primary),
            code,
            fix,
        );
    }
}

#[test]
fn a_leaf_from_the_right_ca_for_another_name() {
    customer_leaf_refused(
        || Spec {
            names: &["printers.acme.example", "127.0.0.2"],
            ..Spec::default()
        },
        "tls-wrong-name",
        "use an address the primary's certificate names",
    );
}

#[test]
fn an_expired_leaf_from_the_right_ca() {
    customer_leaf_refused(
        || Spec {
            validity: Validity::Expired,
            ..Spec::default()
        },
        "tls-expired",
        "renew the primary's certificate",
    );
}

#[test]
fn a_leaf_from_the_right_ca_not_valid_yet() {
    customer_leaf_refused(
        || Spec {
            validity: Validity::NotYet,
            ..Spec::default()
        },
        "tls-not-yet-valid",
        "check the primary's certificate dates",
    );
}

#[test]
fn a_ca_certificate_used_as_the_leaf() {
    customer_leaf_refused(
        || Spec {
            ca: true,
            ..Spec::default()
        },
        "tls-not-server-certificate",
        "the primary must present a TLS server certificate",
    );
}

#[test]
fn a_leaf_without_server_auth() {
    customer_leaf_refused(
        || Spec {
            server_auth: false,
            ..Spec::default()
        },
        "tls-not-server-certificate",
        "the primary must present a TLS server certificate",
    );
}

#[test]
fn a_server_that_speaks_only_tls_1_0() {
    refused(
        Trust::PinCa,
        |_| Kind::Tls10Only,
        "tls-version",
        "enable TLS 1.2 or 1.3 on the primary",
    );
}

/// The right server (its certificate is from the right CA, for the right name), misbehaving.
fn right_server(customer: &Cert, answer: Answer) -> Kind {
    let leaf = issued_by(customer, Spec::default());
    Kind::tls(&leaf, &[customer], answer)
}

#[test]
fn the_right_server_redirecting_to_http_or_another_host() {
    let plain = Impostor::start(Kind::Plain);
    let elsewhere = Impostor::start_on("127.0.0.2:0", Kind::Plain);
    let targets = [
        format!("http://127.0.0.1:{}/api/v1/health", plain.port()),
        format!("https://127.0.0.2:{}/api/v1/health", elsewhere.port()),
    ];
    for to in targets {
        let imp = refused(
            Trust::PinCa,
            |customer| right_server(customer, Answer::Redirect(to.clone())),
            "primary-redirect",
            "set primary to the address the primary itself answers on",
        );
        assert!(imp.connections() > 0);
    }
    assert_eq!(
        plain.connections(),
        0,
        "the agent followed a redirect to http://"
    );
    assert_eq!(
        elsewhere.connections(),
        0,
        "the agent followed a redirect to another host"
    );
}

#[test]
fn a_response_body_of_1_gib() {
    let imp = refused(
        Trust::PinCa,
        |customer| right_server(customer, Answer::HugeBody(1 << 30)),
        "primary-response-too-large",
        "check that the primary address points at the primary server",
    );
    assert!(imp.sent() < MAX_ACCEPTED, "{}", imp.sent());
}

#[test]
fn headers_that_never_end() {
    let imp = refused(
        Trust::PinCa,
        |customer| right_server(customer, Answer::EndlessHeaders),
        "primary-response-too-large",
        "check that the primary address points at the primary server",
    );
    assert!(imp.sent() < MAX_ACCEPTED, "{}", imp.sent());
}

#[test]
fn a_body_that_drips_one_byte_a_second() {
    // Transient (a slow network looks the same): retried until the 10 s deadline, per command.
    refused(
        Trust::PinCa,
        |customer| right_server(customer, Answer::Drip),
        "primary-timeout",
        "check the primary address, this server's network",
    );
}

#[test]
fn malformed_and_deeply_nested_json() {
    let nested = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for body in [
        b"{\"status\": \"ok\", \"version\": ".to_vec(),
        nested.into_bytes(),
        b"\xff\xfe not even text".to_vec(),
    ] {
        refused(
            Trust::PinCa,
            |customer| right_server(customer, Answer::Json(body.clone())),
            "not-a-primary",
            "check that the primary address points at the primary server",
        );
    }
}

/// 1 GiB of zeros as 1024 gzip members of 1 MiB each (about 1 MiB on the wire).
fn gzip_bomb() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let zeros = dir.path().join("zeros");
    std::fs::write(&zeros, vec![0u8; 1 << 20]).unwrap();
    let out = std::process::Command::new("gzip")
        .args(["-9", "-c"])
        .arg(&zeros)
        .output()
        .expect("gzip");
    assert!(out.status.success());
    out.stdout.repeat(1024)
}

#[test]
fn a_gzip_bomb_is_never_inflated() {
    let bomb = gzip_bomb();
    let imp = refused(
        Trust::PinCa,
        |customer| right_server(customer, Answer::Gzip(bomb.clone())),
        "primary-response-too-large",
        "check that the primary address points at the primary server",
    );
    let asked = String::from_utf8_lossy(&imp.received()).to_ascii_lowercase();
    assert!(
        !asked.contains("accept-encoding"),
        "the agent offers compressed answers:\n{asked}"
    );
}

/// The trust step, after a real registration: the primary's address now answers with an
/// impostor. The server token (a secret like the key) must not reach it.
#[test]
fn await_trust_refuses_an_impostor_at_the_primary_address() {
    let mut sim = gateway_test_support::sim::Sim::start();
    sim.ok(&["account", "add", "acme.example"]);
    let port = sim.port;
    let mut tree = appliance_tree(&sim.default_key, &sim.ca_pem());
    let pin = gateway_test_support::pin_of(&sim.ca_pem());
    tree.file(
        "/etc/gateway/seed.toml",
        format!(
            "primary = \"127.0.0.1:{port}\"\naccount = \"acme.example\"\nprimary-ca-sha256 = \"{pin}\"\n\
             hostname = \"gw01.acme.test\"\ndns-check = \"off\"\ndeadline = \"10s\"\n\
             connect-timeout = \"2s\"\nrequest-timeout = \"3s\"\n"
        ),
    );
    let provisioned = run_bounded(&tree, &["provision"]);
    assert_eq!(provisioned.run.code, 0, "{}", provisioned.run.all());
    let token =
        std::fs::read_to_string(tree.path("/var/lib/gateway-firstboot/server-token")).unwrap();
    let token = token.trim();
    assert!(token.len() >= 16, "no server token after provisioning");
    sim.stop();
    // The attacker's own CA and a certificate for the right address, with the real
    // primary's (public) CA certificate sent along as an intermediate.
    let real_ca = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(sim.ca_pem().as_bytes()).unwrap()
    };
    let leaf = self_signed(Spec::default());
    let imp = Impostor::start_on(
        &format!("127.0.0.1:{port}"),
        Kind::tls_with(&leaf, vec![real_ca], Answer::Primary),
    );
    let o = run_bounded(&tree, &["await-trust"]);
    let all = o.run.all();
    assert_ne!(o.run.code, 0, "{all}");
    assert!(all.contains("[tls-pin-not-issuer]"), "{all}");
    assert!(imp.connections() > 0, "the impostor was never reached");
    assert!(
        !imp.heard("authorization"),
        "the trust step sent a bearer token"
    );
    assert!(!imp.heard(token), "the impostor received the server token");
}

/// Runs `check --online` against a server made from the customer's CA, trusted via `trust`.
fn check_against(trust: Trust, make: impl Fn(&Cert) -> Kind) -> (Outcome, Impostor) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let setup = Setup::new(trust, port);
    let server = Impostor::start_on(&format!("127.0.0.1:{port}"), make(&setup.customer));
    (run_bounded(&setup.tree, &["check", "--online"]), server)
}

/// The controls: the same test server, set up as the real primary would be, is accepted and
/// does get the key, so the refusals above are the certificates' doing, not the server's.
#[test]
fn the_real_primary_is_accepted_by_ca_pin_and_by_ca_file() {
    for trust in [Trust::PinCa, Trust::CaFile] {
        let (o, server) = check_against(trust, |customer| right_server(customer, Answer::Primary));
        assert_eq!(o.run.code, 0, "{trust:?}: {}", o.run.all());
        assert!(
            server.heard(KEY),
            "{trust:?}: the primary never got the key"
        );
    }
}

/// A pinned end-entity is exactly that certificate (the handshake proves the server holds its
/// key): accepted, with a warning naming what is wrong with its name or dates.
#[test]
fn a_pinned_self_signed_primary_is_trusted_and_its_flaws_reported() {
    for (spec, says) in [
        (Spec::default(), None),
        (
            Spec {
                names: &["primary.acme.internal"],
                ..Spec::default()
            },
            Some("is not issued for that name"),
        ),
        (
            Spec {
                validity: Validity::Expired,
                ..Spec::default()
            },
            Some("has expired"),
        ),
    ] {
        let leaf = self_signed(spec);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let setup = Setup::new(Trust::PinCa, port);
        let seed = std::fs::read_to_string(setup.tree.path("/etc/gateway/seed.toml")).unwrap();
        let seed = seed.replace(&setup.customer.sha256(), &leaf.sha256());
        let mut tree = setup.tree;
        tree.file("/etc/gateway/seed.toml", seed);
        let server = Impostor::start_on(
            &format!("127.0.0.1:{port}"),
            Kind::tls(&leaf, &[], Answer::Primary),
        );
        let o = run_bounded(&tree, &["check", "--online"]);
        let all = o.run.all();
        assert_eq!(o.run.code, 0, "{all}");
        assert!(server.heard(KEY), "the pinned primary never got the key");
        match says {
            Some(flaw) => assert!(
                all.contains(&format!(
                    "warning: the pinned certificate of 127.0.0.1 {flaw}"
                )) && all.contains("accepted because it is exactly the pinned certificate"),
                "{all}"
            ),
            None => assert!(!all.contains("warning"), "{all}"),
        }
    }
}
