//! `renew`: the real binary with `--root`, against gateway-primary-sim over TLS on loopback,
//! with short certificate lifetimes (`serve --cert-lifetime`). Not due: nothing happens;
//! due: a new certificate over mutual TLS, proved, installed, the gateway told; expired: the
//! server re-enrols, waits for Authorize, and `await-trust` takes it back to trusted; a primary
//! that cannot be reached is a warning while the certificate is valid; a refusal is a clear
//! failure; no secret in any output.

use gateway_test_support::sim::Sim;
use gateway_test_support::{Appliance, Run, assert_code};
use std::time::{Duration, Instant};

const CERT: &str = "/var/lib/gateway/identity/cert.pem";
const TRUSTED: &str = "/var/lib/gateway-firstboot/trusted";
const TOKEN: &str = "/var/lib/gateway-firstboot/server-token";

gateway_test_support::appliance_env!(
    /// The appliance, with what these tests ask of it.
    Env
);

impl Env {
    /// A simulator signing certificates valid for `lifetime` (its `--cert-lifetime`), and a
    /// box provisioned, authorized and trusted by it.
    fn trusted(lifetime: &str) -> (Env, String) {
        let mut appliance = Appliance::new(Sim::start_with(&["--cert-lifetime", lifetime]));
        appliance.seed("127.0.0.1", "");
        let env = Env(appliance);
        let id = env.provision();
        env.trust(&id);
        assert!(env.exists(TRUSTED));
        (env, id)
    }

    fn record(&self) -> serde_json::Value {
        let all = self.sim.all_servers();
        assert_eq!(all.len(), 1, "one server on the primary: {all:?}");
        all[0].clone()
    }

    /// `status --json`: its exit status and document.
    fn status(&self) -> (i32, serde_json::Value) {
        let run = self.run(&["status", "--json"]);
        (run.code, run.json())
    }

    /// Runs `renew` with `args`, the gateway "told" by touching a file; returns the run and
    /// whether the gateway was told.
    fn renew(&self, args: &[&str]) -> (Run, bool) {
        let told = self.tree.path("/run/told-the-gateway");
        let _ = std::fs::remove_file(&told);
        let notify = format!("touch {}", told.display());
        let mut all = vec!["renew", "--poll-max", "1s", "--notify-command", &notify];
        all.extend_from_slice(args);
        let run = self.run(&all);
        (run, told.exists())
    }

    /// The `certificate_expires` of `status --json`.
    fn expires(&self) -> String {
        let (_, st) = self.status();
        st["certificate_expires"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Sleeps until `status --json` says renewal is due (its `certificate_renewal_due`), read as
/// the agent reads it: the status's own RFC 3339 times, compared as text after the wait.
fn wait_past(env: &Env, field: &str, within: Duration) {
    let (_, st) = env.status();
    let when = st[field].as_str().unwrap_or_default().to_string();
    assert!(!when.is_empty(), "status --json has no {field}: {st}");
    let start = Instant::now();
    while gateway_now() <= when {
        assert!(start.elapsed() < within, "{field} {when} did not come");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Now, as the agent writes times (UTC, seconds, `Z`).
fn gateway_now() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn nothing_happens_before_two_thirds_of_the_lifetime() {
    let (env, _) = Env::trusted("365d");
    let before = env.read(CERT);
    let (run, told) = env.renew(&[]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains("renewal is due at") && run.stdout.contains("nothing to do"),
        "{}",
        run.stdout
    );
    assert!(!told, "the gateway was told of nothing");
    assert_eq!(env.read(CERT), before);
    assert_eq!(env.record()["renewals"], 0);
    let (code, st) = env.status();
    assert_eq!((code, st["status"].as_str()), (0, Some("trusted")));
}

#[test]
fn renewal_when_due_installs_a_later_certificate_and_tells_the_gateway() {
    let (env, id) = Env::trusted("12s");
    let (before, first_end) = (env.read(CERT), env.expires());
    // Not yet: two thirds of 12 s (with the simulator's 1.2 s back-dating) is about 7 s.
    let (run, told) = env.renew(&[]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains("nothing to do") && !told,
        "{}",
        run.stdout
    );
    wait_past(&env, "certificate_renewal_due", Duration::from_secs(15));
    let (run, told) = env.renew(&[]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains(&format!(
            "renewed: the certificate of server {id} is valid until"
        )),
        "{}",
        run.stdout
    );
    assert!(told, "the gateway was told");
    assert_ne!(env.read(CERT), before, "a new certificate in {CERT}");
    assert!(
        env.expires() > first_end,
        "{} after {first_end}",
        env.expires()
    );
    assert_eq!(env.record()["renewals"], 1);
    assert_eq!(env.record()["state"], "trusted");
    let (code, st) = env.status();
    assert_eq!((code, &st["last_error"]), (0, &serde_json::Value::Null));
    assert!(!run.all().contains(env.read(TOKEN).trim()), "{}", run.all());
}

#[test]
fn force_renews_now_and_keeps_the_key() {
    let (env, _) = Env::trusted("365d");
    let key = env.read("/var/lib/gateway/identity/key.pem");
    let fingerprint = env.record()["key_fingerprint"].clone();
    let before = env.read(CERT);
    let (run, told) = env.renew(&["--force"]);
    assert_code(&run, 0);
    assert!(told);
    assert_ne!(env.read(CERT), before);
    assert_eq!(env.read("/var/lib/gateway/identity/key.pem"), key);
    assert_eq!(env.record()["key_fingerprint"], fingerprint);
    assert_eq!(env.record()["renewals"], 1);
}

#[test]
fn an_expired_certificate_re_enrols_and_waits_for_authorize_again() {
    let (env, id) = Env::trusted("4s");
    wait_past(&env, "certificate_expires", Duration::from_secs(10));
    let trust = env.tree.path("/run/trust-started");
    let trust_command = format!("touch {}", trust.display());
    let (run, told) = env.renew(&["--trust-command", &trust_command]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains(&format!(
            "the certificate of server {id} has expired: re-enrolled"
        )),
        "{}",
        run.stdout
    );
    assert!(!told, "no new certificate for the gateway yet");
    assert!(trust.exists(), "the trust unit was started");
    assert!(!env.exists(CERT) && !env.exists(TRUSTED));
    assert_eq!(env.record()["state"], "untrusted");
    let (code, st) = env.status();
    assert_eq!(
        (code, st["status"].as_str()),
        (3, Some("waiting-for-authorization"))
    );
    let issue = env.read("/etc/issue.d/gateway-firstboot.issue");
    assert!(issue.contains("click Authorize again"), "{issue}");
    // As at the first boot: Authorize, then the trust step fetches and proves the certificate.
    env.sim.ok(&["authorize", &id]);
    assert_code(
        &env.run(&["await-trust", "--poll-max", "1s", "--timeout", "30s"]),
        0,
    );
    assert!(env.exists(CERT) && env.exists(TRUSTED));
    let (code, st) = env.status();
    assert_eq!((code, st["status"].as_str()), (0, Some("trusted")));
    assert_eq!(env.sim.all_servers().len(), 1, "still one server");
}

#[test]
fn a_primary_out_of_reach_is_a_warning_while_the_certificate_is_valid() {
    let (mut env, _) = Env::trusted("365d");
    let before = env.read(CERT);
    env.sim.stop();
    let (run, told) = env.renew(&["--force", "--timeout", "3s"]);
    assert_code(&run, 75);
    assert!(
        run.stdout.contains("could not renew the certificate")
            && run.stdout.contains("the timer tries again"),
        "{}",
        run.stdout
    );
    assert!(!told);
    assert_eq!(env.read(CERT), before, "the certificate stays");
    let (code, st) = env.status();
    assert_eq!((code, &st["last_error"]), (0, &serde_json::Value::Null));
}

#[test]
fn a_rejected_server_cannot_renew_and_says_so() {
    let (env, id) = Env::trusted("365d");
    env.sim.ok(&["reject", &id]);
    let before = env.read(CERT);
    let (run, told) = env.renew(&["--force"]);
    assert_code(&run, 77);
    assert!(run.all().contains("[server-rejected]"), "{}", run.all());
    assert!(!told);
    assert_eq!(env.read(CERT), before);
    let (code, st) = env.status();
    assert_eq!((code, st["status"].as_str()), (1, Some("failed")));
}

#[test]
fn a_box_not_trusted_yet_has_nothing_to_renew() {
    let mut appliance = Appliance::new(Sim::start());
    appliance.seed("127.0.0.1", "");
    appliance.provision();
    let tree = &appliance.tree;
    let run = tree.run(&["renew"]);
    assert_code(&run, 0);
    assert!(run.stdout.contains("is not trusted yet"), "{}", run.stdout);
}

#[test]
fn a_lost_certificate_re_enrols_instead_of_failing() {
    let (env, id) = Env::trusted("365d");
    std::fs::remove_file(env.tree.path(CERT)).unwrap();
    let (run, _) = env.renew(&["--trust-command", "none"]);
    assert_code(&run, 0);
    assert!(
        run.all().contains(&format!("server {id}")) && run.all().contains("re-enrolled"),
        "{}",
        run.all()
    );
    assert_eq!(env.record()["state"], "untrusted");
    assert!(!env.exists(TRUSTED));
}
