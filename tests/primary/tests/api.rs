//! The simulator over real TLS on loopback: every endpoint and error code, idempotent
//! re-registration, persistence across restarts, and each fault-injection mode.

use gateway_test_support::sim::Sim;
use reqwest::{Certificate, Client, Identity, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

fn client_with(sim: &Sim, identity: Option<Identity>) -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = Client::builder()
        .tls_certs_only([Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap()])
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20));
    if let Some(id) = identity {
        b = b.identity(id);
    }
    b.build().unwrap()
}

fn client(sim: &Sim) -> Client {
    client_with(sim, None)
}

/// A key pair and a CSR for it, as the agent makes them.
fn csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["gw01.acme.example".to_string()]).unwrap();
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

fn registration(machine: &str, csr: &str) -> Value {
    json!({
        "machine_id": machine,
        "hostname": "gw01",
        "fqdn": "gw01.acme.example",
        "addresses": ["192.0.2.10", "2001:db8::10"],
        "dns": {"status": "ok", "fqdn": "gw01.acme.example", "resolved": ["192.0.2.10"], "reverse": []},
        "serial": "SN-1234",
        "agent_version": "0.1.0",
        "csr": csr,
    })
}

async fn call(req: reqwest::RequestBuilder) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let resp = req.send().await.expect("request");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.json::<Value>().await.unwrap_or(Value::Null);
    (status, body, headers)
}

/// Asserts an error response: status and stable code.
fn assert_error(got: &(StatusCode, Value, reqwest::header::HeaderMap), status: u16, code: &str) {
    assert_eq!(got.0.as_u16(), status, "{}", got.1);
    assert_eq!(got.1["code"], code, "{}", got.1);
    assert!(
        got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

fn setup() -> (Sim, String, String) {
    let sim = Sim::start();
    sim.ok(&["account", "add", "acme.example"]);
    sim.ok(&["account", "add", "other.example"]);
    let full = sim.ok(&["key", "add", "acme.example", "--kind", "full"]);
    let restricted = sim.ok(&["key", "add", "acme.example", "--kind", "restricted"]);
    (sim, full, restricted)
}

#[tokio::test]
async fn health_and_the_web_page() {
    let sim = Sim::start();
    let c = client(&sim);
    let (status, body, headers) = call(c.get(sim.url("/api/v1/health"))).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert!(
        headers.contains_key("date"),
        "the agent checks its clock against Date"
    );
    let page = c.get(sim.url("/ui")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<h2>Accounts</h2>"));
    assert_error(
        &call(c.get(sim.url("/api/v1/nothing"))).await,
        404,
        "not-found",
    );
}

#[tokio::test]
async fn account_validation_tells_every_failure_apart() {
    let (sim, full, restricted) = setup();
    let expired = sim.ok(&[
        "key",
        "add",
        "acme.example",
        "--kind",
        "full",
        "--expires",
        "2001-01-01T00:00:00Z",
    ]);
    let elsewhere = sim.ok(&[
        "key",
        "add",
        "acme.example",
        "--kind",
        "full",
        "--allow-ip",
        "10.0.0.0/8",
    ]);
    let here = sim.ok(&[
        "key",
        "add",
        "acme.example",
        "--kind",
        "full",
        "--allow-ip",
        "10.0.0.0/8,127.0.0.0/8",
    ]);
    let other = sim.ok(&["key", "add", "other.example", "--kind", "full"]);
    let c = client(&sim);
    let url = sim.url("/api/v1/accounts/acme.example");

    for (key, kind) in [
        (&sim.default_key, "restricted"),
        (&restricted, "restricted"),
        (&full, "full"),
        (&here, "full"),
    ] {
        let (status, body, _) = call(c.get(&url).bearer_auth(key)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            json!({"account": "acme.example", "key_kind": kind, "auto_trust": false})
        );
    }
    let (status, _, _) = call(
        c.get(sim.url("/api/v1/accounts/ACME.example."))
            .bearer_auth(&full),
    )
    .await;
    assert_eq!(
        status, 200,
        "domain names compare without case and trailing dot"
    );

    assert_error(&call(c.get(&url)).await, 401, "unauthenticated");
    assert_error(
        &call(c.get(&url).header("authorization", "Basic eDp5")).await,
        401,
        "unauthenticated",
    );
    assert_error(
        &call(c.get(&url).bearer_auth("gwk_nosuchkey0000000000")).await,
        401,
        "key-invalid",
    );
    assert_error(
        &call(c.get(&url).bearer_auth(&expired)).await,
        401,
        "key-expired",
    );
    assert_error(
        &call(c.get(&url).bearer_auth(&elsewhere)).await,
        403,
        "key-ip-not-allowed",
    );
    assert_error(
        &call(c.get(&url).bearer_auth(&other)).await,
        403,
        "key-account-mismatch",
    );
    let unknown = call(
        c.get(sim.url("/api/v1/accounts/acme.wrong"))
            .bearer_auth(&sim.default_key),
    )
    .await;
    assert_error(&unknown, 404, "account-unknown");
}

#[tokio::test]
async fn registering_again_returns_the_same_server() {
    let (sim, full, restricted) = setup();
    let c = client(&sim);
    let url = sim.url("/api/v1/accounts/acme.example/servers");
    let (_, csr1) = csr();

    let (status, first, _) = call(
        c.post(&url)
            .bearer_auth(&sim.default_key)
            .json(&registration("m-1", &csr1)),
    )
    .await;
    assert_eq!(status, 201, "{first}");
    assert_eq!(first["state"], "untrusted");
    assert_eq!(first["account"], "acme.example");
    assert!(
        first["key_fingerprint"]
            .as_str()
            .unwrap()
            .starts_with("SHA256:")
    );
    assert!(first["server_token"].as_str().unwrap().starts_with("gwt_"));

    let (status, again, _) = call(
        c.post(&url)
            .bearer_auth(&restricted)
            .json(&registration("m-1", &csr1)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["server_id"], first["server_id"]);
    assert_eq!(again["server_token"], first["server_token"]);

    // A new key pair while not yet trusted replaces the old one: still the same server.
    let (_, csr2) = csr();
    let (status, rekeyed, _) = call(
        c.post(&url)
            .bearer_auth(&restricted)
            .json(&registration("m-1", &csr2)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(rekeyed["server_id"], first["server_id"]);
    assert_ne!(rekeyed["key_fingerprint"], first["key_fingerprint"]);

    let servers = sim.all_servers();
    assert_eq!(servers.len(), 1, "never a duplicate: {servers:?}");
    assert_eq!(servers[0]["registrations"], 3);

    // Another machine is another server.
    let (status, second, _) = call(
        c.post(&url)
            .bearer_auth(&sim.default_key)
            .json(&registration("m-2", &csr1)),
    )
    .await;
    assert_eq!(status, 201);
    assert_ne!(second["server_id"], first["server_id"]);

    // The tree: full keys only.
    assert_error(
        &call(c.get(&url).bearer_auth(&restricted)).await,
        403,
        "key-restricted",
    );
    let (status, tree, _) = call(c.get(&url).bearer_auth(&full)).await;
    assert_eq!(status, 200);
    assert_eq!(tree.as_array().unwrap().len(), 2);
    assert!(
        tree[0].get("server_token").is_none(),
        "the tree never shows tokens"
    );
}

#[tokio::test]
async fn malformed_registrations_are_refused() {
    let (sim, _, _) = setup();
    let c = client(&sim);
    let url = sim.url("/api/v1/accounts/acme.example/servers");
    let key = &sim.default_key;
    let (_, good) = csr();
    assert_error(
        &call(
            c.post(&url)
                .bearer_auth(key)
                .body("{not json")
                .header("content-type", "application/json"),
        )
        .await,
        400,
        "invalid-request",
    );
    assert_error(
        &call(
            c.post(&url)
                .bearer_auth(key)
                .json(&json!({"machine_id": "x"})),
        )
        .await,
        400,
        "invalid-request",
    );
    assert_error(
        &call(
            c.post(&url)
                .bearer_auth(key)
                .json(&registration("bad id!", &good)),
        )
        .await,
        400,
        "invalid-request",
    );
    let broken = good.replace("MI", "XX");
    assert_error(
        &call(
            c.post(&url)
                .bearer_auth(key)
                .json(&registration("m-1", &broken)),
        )
        .await,
        422,
        "invalid-csr",
    );
    assert_error(
        &call(
            c.post(&url)
                .bearer_auth(key)
                .json(&registration("m-1", "not a csr")),
        )
        .await,
        422,
        "invalid-csr",
    );
    assert_eq!(sim.all_servers().len(), 0);
    // Authentication comes before the body.
    assert_error(
        &call(c.post(&url).json(&registration("m-1", &good))).await,
        401,
        "unauthenticated",
    );
}

#[tokio::test]
async fn authorize_then_certificate_then_mutual_tls() {
    let (sim, full, restricted) = setup();
    let c = client(&sim);
    let (key, csr_pem) = csr();
    let (_, reg, _) = call(
        c.post(sim.url("/api/v1/accounts/acme.example/servers"))
            .bearer_auth(&sim.default_key)
            .json(&registration("m-1", &csr_pem)),
    )
    .await;
    let id = reg["server_id"].as_str().unwrap().to_string();
    let token = reg["server_token"].as_str().unwrap().to_string();
    let server_url = sim.url(&format!("/api/v1/servers/{id}"));
    let cert_url = format!("{server_url}/certificate");

    let (status, state, _) = call(c.get(&server_url).bearer_auth(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(state["state"], "untrusted");
    assert_error(
        &call(c.get(&server_url).bearer_auth("gwt_wrongwrongwrong")).await,
        401,
        "token-invalid",
    );
    assert_error(
        &call(
            c.get(sim.url("/api/v1/servers/srv_nothere"))
                .bearer_auth(&token),
        )
        .await,
        404,
        "server-unknown",
    );
    assert_error(
        &call(c.get(&cert_url).bearer_auth(&token)).await,
        409,
        "not-trusted",
    );
    let hello_url = sim.url("/api/v1/secure/hello");
    assert_error(
        &call(c.get(&hello_url)).await,
        401,
        "client-certificate-required",
    );

    assert_error(
        &call(
            c.post(format!("{server_url}/authorize"))
                .bearer_auth(&restricted),
        )
        .await,
        403,
        "key-restricted",
    );
    let (status, authorized, _) =
        call(c.post(format!("{server_url}/authorize")).bearer_auth(&full)).await;
    assert_eq!(status, 200, "{authorized}");
    assert_eq!(authorized["state"], "trusted");
    assert!(authorized["authorized_at"].is_string());

    let (status, bundle, _) = call(c.get(&cert_url).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{bundle}");
    let identity = Identity::from_pem(
        format!(
            "{}{}",
            bundle["certificate"].as_str().unwrap(),
            key.serialize_pem()
        )
        .as_bytes(),
    )
    .unwrap();
    let mtls = client_with(&sim, Some(identity));
    let (status, hello, _) = call(mtls.get(&hello_url)).await;
    assert_eq!(status, 200, "{hello}");
    assert_eq!(hello["server_id"], id.as_str());
    assert_eq!(hello["state"], "trusted");
    let servers = sim.all_servers();
    assert_eq!(servers[0]["secure_contacts"], 1);
    assert!(servers[0]["last_secure_contact"].is_string());

    // A trusted machine cannot swap its key by registering again.
    let (_, other_csr) = csr();
    let conflict = call(
        c.post(sim.url("/api/v1/accounts/acme.example/servers"))
            .bearer_auth(&sim.default_key)
            .json(&registration("m-1", &other_csr)),
    )
    .await;
    assert_error(&conflict, 409, "identity-conflict");

    // Rejected: no certificate, no secure connection.
    let (status, _, _) = call(c.post(format!("{server_url}/reject")).bearer_auth(&full)).await;
    assert_eq!(status, 200);
    assert_error(
        &call(c.get(&cert_url).bearer_auth(&token)).await,
        403,
        "server-rejected",
    );
    assert_error(&call(mtls.get(&hello_url)).await, 403, "server-rejected");
}

#[tokio::test]
async fn an_auto_trust_key_registers_trusted_servers() {
    let (sim, _, _) = setup();
    let auto = sim.ok(&[
        "key",
        "add",
        "acme.example",
        "--kind",
        "restricted",
        "--auto-trust",
    ]);
    let c = client(&sim);
    let (_, body, _) = call(
        c.get(sim.url("/api/v1/accounts/acme.example"))
            .bearer_auth(&auto),
    )
    .await;
    assert_eq!(body["auto_trust"], true);
    let (_, csr_pem) = csr();
    let (status, reg, _) = call(
        c.post(sim.url("/api/v1/accounts/acme.example/servers"))
            .bearer_auth(&auto)
            .json(&registration("m-9", &csr_pem)),
    )
    .await;
    assert_eq!(status, 201);
    assert_eq!(reg["state"], "trusted");
    let cert_url = sim.url(&format!(
        "/api/v1/servers/{}/certificate",
        reg["server_id"].as_str().unwrap()
    ));
    let (status, _, _) = call(
        c.get(&cert_url)
            .bearer_auth(reg["server_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn the_web_page_and_the_cli_authorize() {
    let (sim, _, _) = setup();
    let c = client(&sim);
    let url = sim.url("/api/v1/accounts/acme.example/servers");
    let (_, csr1) = csr();
    let (_, a, _) = call(
        c.post(&url)
            .bearer_auth(&sim.default_key)
            .json(&registration("m-1", &csr1)),
    )
    .await;
    let id = a["server_id"].as_str().unwrap();
    let page = c
        .get(sim.url(&format!("/ui?server={id}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let short = gateway_protocol::short_fingerprint(a["key_fingerprint"].as_str().unwrap());
    assert!(
        page.contains(&short),
        "the page shows the short fingerprint"
    );
    assert!(page.contains("not trusted") && page.contains(">Authorize</button>"));

    let no_redirect = Client::builder()
        .tls_certs_only([Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let clicked = no_redirect
        .post(sim.url(&format!("/ui/servers/{id}/authorize")))
        .send()
        .await
        .unwrap();
    assert_eq!(clicked.status(), 303);
    assert_eq!(sim.all_servers()[0]["state"], "trusted");

    // The CLI finds a server by host name too.
    sim.ok(&["reject", "gw01.acme.example"]);
    assert_eq!(sim.all_servers()[0]["state"], "rejected");
    assert_ne!(sim.cli(&["authorize", "no-such-host"]).code, 0);
}

#[tokio::test]
async fn state_survives_a_restart() {
    let (mut sim, full, _) = setup();
    let ca_before = sim.ca_pem();
    let default_before = sim.default_key.clone();
    let c = client(&sim);
    let (_, csr_pem) = csr();
    let (_, reg, _) = call(
        c.post(sim.url("/api/v1/accounts/acme.example/servers"))
            .bearer_auth(&sim.default_key)
            .json(&registration("m-1", &csr_pem)),
    )
    .await;

    sim.restart();
    assert_eq!(sim.ca_pem(), ca_before);
    assert_eq!(
        sim.ok(&["key", "list"]).split_whitespace().next().unwrap(),
        default_before
    );
    let c = client(&sim);
    let server_url = sim.url(&format!(
        "/api/v1/servers/{}",
        reg["server_id"].as_str().unwrap()
    ));
    let (status, state, _) = call(
        c.get(&server_url)
            .bearer_auth(reg["server_token"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(state["server_id"], reg["server_id"]);
    let (status, _, _) = call(
        c.get(sim.url("/api/v1/accounts/acme.example"))
            .bearer_auth(&full),
    )
    .await;
    assert_eq!(status, 200);
    let (status, again, _) = call(
        c.post(sim.url("/api/v1/accounts/acme.example/servers"))
            .bearer_auth(&sim.default_key)
            .json(&registration("m-1", &csr_pem)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(again["server_id"], reg["server_id"]);
}

#[tokio::test]
async fn the_default_key_can_be_set() {
    let sim = Sim::start_with(&["--default-key", "gwk_imagebakedDefaultKey01"]);
    assert_eq!(sim.default_key, "gwk_imagebakedDefaultKey01");
    sim.ok(&["account", "add", "acme.example"]);
    let c = client(&sim);
    let (status, _, _) = call(
        c.get(sim.url("/api/v1/accounts/acme.example"))
            .bearer_auth("gwk_imagebakedDefaultKey01"),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn fault_latency_and_errors() {
    let sim = Sim::start_with(&["--error-percent", "100"]);
    let c = client(&sim);
    let got = call(c.get(sim.url("/api/v1/health"))).await;
    assert_error(&got, 503, "unavailable");
    assert_eq!(got.2["retry-after"], "1");
    assert_eq!(
        c.get(sim.url("/ui")).send().await.unwrap().status(),
        200,
        "faults touch the API only"
    );

    sim.ok(&["faults", "set", "--latency", "400ms"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let start = Instant::now();
    let (status, _, _) = call(c.get(sim.url("/api/v1/health"))).await;
    assert_eq!(status, 200);
    assert!(
        start.elapsed() >= Duration::from_millis(400),
        "latency was injected"
    );

    sim.ok(&["faults", "clear"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let start = Instant::now();
    call(c.get(sim.url("/api/v1/health"))).await;
    assert!(start.elapsed() < Duration::from_millis(400), "and cleared");
}

#[tokio::test]
async fn fault_rate_limit_says_when_to_retry() {
    let sim = Sim::start_with(&["--rate-limit", "2", "--retry-after", "3"]);
    let c = client(&sim);
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let got = call(c.get(sim.url("/api/v1/health"))).await;
        if got.0 == 429 {
            assert_eq!(got.1["code"], "rate-limited");
            retry_after = got.2.get("retry-after").cloned();
        }
        codes.push(got.0.as_u16());
    }
    assert!(codes.contains(&200) && codes.contains(&429), "{codes:?}");
    assert_eq!(retry_after.unwrap(), "3");
}

#[tokio::test]
async fn fault_down_refuses_connections_until_the_time() {
    let sim = Sim::start();
    sim.ok(&["faults", "set", "--down-for", "3s"]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c = client(&sim);
    let err = c.get(sim.url("/api/v1/health")).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(resp) = c.get(sim.url("/api/v1/health")).send().await {
            assert_eq!(resp.status(), 200);
            break;
        }
        assert!(Instant::now() < deadline, "the simulator did not come back");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn fault_hang_starts_a_response_and_never_ends_it() {
    let sim = Sim::start_with(&["--hang-percent", "100"]);
    let c = client(&sim);
    let resp = c
        .get(sim.url("/api/v1/health"))
        .send()
        .await
        .expect("headers arrive");
    assert_eq!(resp.status(), 200);
    let body = tokio::time::timeout(Duration::from_millis(1500), resp.bytes()).await;
    assert!(body.is_err(), "the body must never end");
}

#[tokio::test]
async fn fault_commit_delay_records_the_registration_before_the_answer_goes_out() {
    let (sim, _, _) = setup();
    sim.ok(&["faults", "set", "--commit-delay", "3s"]);
    tokio::time::sleep(Duration::from_millis(600)).await;
    let c = client(&sim);
    let (_, csr1) = csr();
    let started = Instant::now();
    let request = c
        .post(sim.url("/api/v1/accounts/acme.example/servers"))
        .bearer_auth(&sim.default_key)
        .json(&registration("m-1", &csr1))
        .timeout(Duration::from_millis(1500))
        .send();
    // The client gives up before the answer: the registration is on the primary regardless.
    let lost = request.await;
    assert!(lost.as_ref().is_err_and(|e| e.is_timeout()), "{lost:?}");
    let servers = sim.all_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["registrations"], 1);
    // The log has the answer as committed, while it is still held.
    let log = sim.ok(&["requests"]);
    assert!(log.contains("\"status\":201"), "{log}");
    // GETs are not held.
    let (status, _, _) = call(c.get(sim.url("/api/v1/health"))).await;
    assert_eq!(status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_request_log_has_every_api_request_with_its_status_and_time() {
    let sim = Sim::start_with(&["--rate-limit", "1", "--retry-after", "2"]);
    let c = client(&sim);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(call(c.get(sim.url("/api/v1/health"))).await.0.as_u16());
    }
    c.get(sim.url("/ui")).send().await.unwrap();
    let log = sim.ok(&["requests"]);
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // The web page is not the API; the 429s of the rate limit are logged.
    assert_eq!(lines.len(), 3, "{log}");
    for (line, status) in lines.iter().zip(&statuses) {
        assert_eq!(line["method"], "GET");
        assert_eq!(line["path"], "/api/v1/health");
        assert_eq!(line["status"], *status);
        assert!(line["at"].as_f64().unwrap() >= before - 1.0, "{line}");
    }
    assert!(statuses.contains(&429), "{statuses:?}");
}
