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

/// Registers `machine` in acme.example with the default key: (server id, token, key pair).
async fn register_one(c: &Client, sim: &Sim, machine: &str) -> (String, String, rcgen::KeyPair) {
    let (key, csr_pem) = csr();
    let (status, reg, _) = call(
        c.post(sim.url("/api/v1/accounts/acme.example/servers"))
            .bearer_auth(&sim.default_key)
            .json(&registration(machine, &csr_pem)),
    )
    .await;
    assert!(status.is_success(), "{reg}");
    let id = reg["server_id"].as_str().unwrap().to_string();
    let token = reg["server_token"].as_str().unwrap().to_string();
    (id, token, key)
}

#[tokio::test]
async fn an_administrator_removes_a_server_with_a_full_key() {
    let (mut sim, full, restricted) = setup();
    let other = sim.ok(&["key", "add", "other.example", "--kind", "full"]);
    let c = client(&sim);
    let (id, token, _) = register_one(&c, &sim, "m-1").await;
    let url = sim.url(&format!("/api/v1/accounts/acme.example/servers/{id}"));

    assert_error(&call(c.delete(&url)).await, 401, "unauthenticated");
    for key in [&restricted, &sim.default_key] {
        assert_error(
            &call(c.delete(&url).bearer_auth(key)).await,
            403,
            "key-restricted",
        );
    }
    assert_error(
        &call(c.delete(&url).bearer_auth(&other)).await,
        403,
        "key-account-mismatch",
    );
    // Another account's path does not reach this server, even with that account's full key.
    let elsewhere = sim.url(&format!("/api/v1/accounts/other.example/servers/{id}"));
    assert_error(
        &call(c.delete(&elsewhere).bearer_auth(&other)).await,
        404,
        "server-unknown",
    );
    assert_eq!(sim.all_servers().len(), 1, "nothing removed yet");

    let resp = c.delete(&url).bearer_auth(&full).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(resp.bytes().await.unwrap().is_empty(), "204 has no body");
    assert!(sim.all_servers().is_empty());
    // A second DELETE: the record is gone.
    assert_error(
        &call(c.delete(&url).bearer_auth(&full)).await,
        404,
        "server-unknown",
    );
    // The token went with the record.
    assert_error(
        &call(
            c.get(sim.url(&format!("/api/v1/servers/{id}")))
                .bearer_auth(&token),
        )
        .await,
        404,
        "server-unknown",
    );
    // The same machine registering again is a new server.
    let (again, _, _) = register_one(&c, &sim, "m-1").await;
    assert_ne!(again, id);
    sim.restart();
    let servers = sim.all_servers();
    assert_eq!(servers.len(), 1, "the removal persisted: {servers:?}");
    assert_eq!(servers[0]["server_id"], again.as_str());
}

#[tokio::test]
async fn a_server_deregisters_itself_with_its_token_or_its_certificate() {
    let (sim, full, _) = setup();
    let c = client(&sim);
    let (id, token, _) = register_one(&c, &sim, "m-1").await;
    let url = sim.url(&format!("/api/v1/servers/{id}"));
    assert_error(
        &call(c.delete(&url).bearer_auth("gwt_wrongwrongwrong")).await,
        401,
        "token-invalid",
    );
    assert_error(&call(c.delete(&url)).await, 401, "unauthenticated");
    let resp = c.delete(&url).bearer_auth(&token).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    assert!(sim.all_servers().is_empty());
    assert_error(
        &call(c.delete(&url).bearer_auth(&token)).await,
        404,
        "server-unknown",
    );

    // Over mutual TLS: the certificate, no Authorization header.
    let (id, token, key) = register_one(&c, &sim, "m-2").await;
    let url = sim.url(&format!("/api/v1/servers/{id}"));
    let (status, _, _) = call(c.post(format!("{url}/authorize")).bearer_auth(&full)).await;
    assert_eq!(status, 200);
    let (_, bundle, _) = call(c.get(format!("{url}/certificate")).bearer_auth(&token)).await;
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
    // Its certificate removes only itself.
    let (other, _, _) = register_one(&c, &sim, "m-3").await;
    assert_error(
        &call(mtls.delete(sim.url(&format!("/api/v1/servers/{other}")))).await,
        401,
        "client-certificate-required",
    );
    let resp = mtls.delete(&url).send().await.unwrap();
    assert_eq!(resp.status(), 204);
    let left: Vec<_> = sim
        .all_servers()
        .iter()
        .map(|s| s["server_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, [other]);
    assert_error(
        &call(mtls.get(sim.url("/api/v1/secure/hello"))).await,
        404,
        "server-unknown",
    );
}

#[tokio::test]
async fn the_web_page_and_the_cli_remove() {
    let (sim, _, _) = setup();
    let c = client(&sim);
    let (id, _, _) = register_one(&c, &sim, "m-1").await;
    let page = c
        .get(sim.url(&format!("/ui?server={id}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("action=\"/ui/servers/{id}/remove\""))
            && page.contains(">Remove</button>"),
        "{page}"
    );
    let no_redirect = Client::builder()
        .tls_certs_only([Certificate::from_pem(sim.ca_pem().as_bytes()).unwrap()])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let clicked = no_redirect
        .post(sim.url(&format!("/ui/servers/{id}/remove")))
        .send()
        .await
        .unwrap();
    assert_eq!(clicked.status(), 303);
    assert!(sim.all_servers().is_empty());

    let (id, _, _) = register_one(&c, &sim, "m-1").await;
    assert_eq!(sim.ok(&["servers", "remove", &id]), format!("{id} removed"));
    assert!(sim.all_servers().is_empty());
    let again = sim.cli(&["servers", "remove", &id]);
    assert_ne!(again.code, 0);
    assert!(
        again.stderr.contains(&format!("no server {id}")),
        "{}",
        again.stderr
    );
}

/// Registers `machine` on hardware `hardware` (with `serial`), with `key`: the response.
async fn register_on(
    c: &Client,
    sim: &Sim,
    key: &str,
    machine: &str,
    hardware: Option<&str>,
    serial: Option<&str>,
) -> Value {
    let (_, csr_pem) = csr();
    let mut body = registration(machine, &csr_pem);
    body["serial"] = serial.into();
    if let Some(hardware) = hardware {
        body["hardware_id"] = hardware.into();
    }
    let (status, reg, _) = call(
        c.post(sim.url("/api/v1/accounts/acme.example/servers"))
            .bearer_auth(key)
            .json(&body),
    )
    .await;
    assert!(status.is_success(), "{reg}");
    reg
}

#[tokio::test]
async fn a_new_machine_on_known_hardware_is_a_replacement_and_authorize_retires_the_old() {
    let (sim, full, restricted) = setup();
    let c = client(&sim);
    const BOARD: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let old = register_on(&c, &sim, &restricted, "m-old", Some(BOARD), Some("SN-1")).await;
    let old_id = old["server_id"].as_str().unwrap().to_string();
    assert!(
        old.get("replaces").is_none(),
        "a first registration replaces nothing: {old}"
    );
    sim.ok(&["authorize", &old_id]);

    // Not replacements: another board; the same board with another serial; no hardware ID.
    for (machine, hardware, serial) in [
        (
            "m-a",
            Some("ffeeddccbbaa99887766554433221100"),
            Some("SN-1"),
        ),
        ("m-b", Some(BOARD), Some("SN-2")),
        ("m-c", None, Some("SN-1")),
    ] {
        let reg = register_on(&c, &sim, &restricted, machine, hardware, serial).await;
        assert!(reg.get("replaces").is_none(), "{machine}: {reg}");
        sim.ok(&["servers", "remove", reg["server_id"].as_str().unwrap()]);
    }

    // The box re-imaged: a new machine ID on the same board (a serial missing on one side
    // does not tell them apart).
    let new = register_on(&c, &sim, &restricted, "m-new", Some(BOARD), None).await;
    let new_id = new["server_id"].as_str().unwrap().to_string();
    assert_eq!(new["replaces"], old_id.as_str(), "{new}");
    assert_eq!(new["state"], "untrusted");
    // Registering again (the agent's retry) changes nothing of that.
    let again = register_on(&c, &sim, &restricted, "m-new", Some(BOARD), None).await;
    assert_eq!(
        (&again["server_id"], &again["replaces"]),
        (&new["server_id"], &new["replaces"])
    );
    let ids: Vec<_> = sim
        .all_servers()
        .iter()
        .map(|s| s["server_id"].clone())
        .collect();
    assert_eq!(ids.len(), 2, "the old one stays until Authorize: {ids:?}");
    // The web page says so.
    let page = c
        .get(sim.url(&format!("/ui?server={new_id}")))
        .send()
        .await
        .unwrap();
    let page = page.text().await.unwrap();
    assert!(page.contains(&format!("replaces {old_id}")), "{page}");

    // Authorize (the admin API, a full key): the old record goes, its token with it.
    let (status, _, _) = call(
        c.post(sim.url(&format!("/api/v1/servers/{new_id}/authorize")))
            .bearer_auth(&full),
    )
    .await;
    assert_eq!(status, 200);
    let servers = sim.all_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["server_id"], new_id.as_str());
    assert_eq!(servers[0]["replaces"], old_id.as_str());
    assert_error(
        &call(
            c.get(sim.url(&format!("/api/v1/servers/{old_id}")))
                .bearer_auth(old["server_token"].as_str().unwrap()),
        )
        .await,
        404,
        "server-unknown",
    );
}

#[tokio::test]
async fn with_an_auto_trust_key_the_replacement_retires_the_old_record_at_once() {
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
    const BOARD: &str = "00112233445566778899aabbccddeeff";
    let old = register_on(&c, &sim, &auto, "m-old", Some(BOARD), Some("SN-9")).await;
    let new = register_on(&c, &sim, &auto, "m-new", Some(BOARD), Some("SN-9")).await;
    assert_eq!(new["state"], "trusted");
    assert_eq!(new["replaces"], old["server_id"]);
    let servers = sim.all_servers();
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert_eq!(servers[0]["server_id"], new["server_id"]);
}

/// A CSR for an existing key pair (a renewal keeps the key).
fn csr_for(key: &rcgen::KeyPair) -> String {
    let params = rcgen::CertificateParams::new(vec!["gw01.acme.example".to_string()]).unwrap();
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn identity(cert_pem: &str, key: &rcgen::KeyPair) -> Identity {
    Identity::from_pem(format!("{cert_pem}{}", key.serialize_pem()).as_bytes()).unwrap()
}

/// (notBefore, notAfter, serial, key fingerprint) of a PEM certificate.
fn cert_facts(pem: &str) -> (i64, i64, Vec<u8>, String) {
    use x509_parser::prelude::FromDer;
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .unwrap()
        .1
        .contents;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
        cert.raw_serial().to_vec(),
        gateway_protocol::key_fingerprint(cert.tbs_certificate.subject_pki.raw),
    )
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Registers `machine`, authorizes it with `full` and fetches its certificate:
/// (server id, token, key pair, certificate PEM).
async fn trusted_one(
    c: &Client,
    sim: &Sim,
    full: &str,
    machine: &str,
) -> (String, String, rcgen::KeyPair, String) {
    let (id, token, key) = register_one(c, sim, machine).await;
    let url = sim.url(&format!("/api/v1/servers/{id}"));
    let (status, body, _) = call(c.post(format!("{url}/authorize")).bearer_auth(full)).await;
    assert_eq!(status, 200, "{body}");
    let (status, bundle, _) = call(c.get(format!("{url}/certificate")).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{bundle}");
    let cert = bundle["certificate"].as_str().unwrap().to_string();
    (id, token, key, cert)
}

fn server_json(sim: &Sim, id: &str) -> Value {
    sim.all_servers()
        .into_iter()
        .find(|s| s["server_id"] == id)
        .unwrap_or_else(|| panic!("no server {id} in servers --json"))
}

#[tokio::test]
async fn renewal_over_mutual_tls_gives_a_later_certificate_and_the_old_one_keeps_working() {
    let (sim, full, _) = setup();
    let c = client(&sim);
    let (id, token, key, old_pem) = trusted_one(&c, &sim, &full, "m-1").await;
    let (old_from, old_until, old_serial, fp) = cert_facts(&old_pem);
    // The default lifetime: a year, from an hour before the signing.
    assert_eq!(old_until - old_from, 365 * 86400 + 3600);
    let before = server_json(&sim, &id);
    assert_eq!(before["renewals"], 0);
    assert_eq!(
        before["certificate_expires"],
        time_rfc3339(old_until),
        "{before}"
    );
    // notAfter has whole seconds: let one pass so the new one is later.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let old = client_with(&sim, Some(identity(&old_pem, &key)));
    let renew_url = sim.url(&format!("/api/v1/servers/{id}/certificate"));
    let (status, bundle, _) = call(old.post(&renew_url).json(&json!({"csr": csr_for(&key)}))).await;
    assert_eq!(status, 200, "{bundle}");
    assert_eq!(bundle["ca"].as_str().unwrap(), {
        let (_, b, _) = call(c.get(&renew_url).bearer_auth(&token)).await;
        b["ca"].as_str().unwrap().to_string()
    });
    let new_pem = bundle["certificate"].as_str().unwrap().to_string();
    let (new_from, new_until, new_serial, new_fp) = cert_facts(&new_pem);
    assert!(new_until > old_until, "{new_until} <= {old_until}");
    assert!(new_from > old_from);
    assert_ne!(new_serial, old_serial, "a new serial number");
    assert_eq!(new_fp, fp, "the same key");

    // GET /certificate now gives the new one.
    let (status, got, _) = call(c.get(&renew_url).bearer_auth(&token)).await;
    assert_eq!(status, 200);
    assert_eq!(got["certificate"].as_str().unwrap(), new_pem);

    let hello = sim.url("/api/v1/secure/hello");
    let new = client_with(&sim, Some(identity(&new_pem, &key)));
    let (status, body, _) = call(new.get(&hello)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["server_id"], id.as_str());
    let (status, body, _) = call(old.get(&hello)).await;
    assert_eq!(
        status, 200,
        "the old certificate works until it expires: {body}"
    );

    let after = server_json(&sim, &id);
    assert_eq!(after["renewals"], 1);
    assert_eq!(after["certificate_expires"], time_rfc3339(new_until));
    assert_eq!(after["secure_contacts"], 2);
    // The record the API shows has them too.
    let (_, record, _) = call(
        c.get(sim.url(&format!("/api/v1/servers/{id}")))
            .bearer_auth(&token),
    )
    .await;
    assert_eq!(record["renewals"], 1);
    assert_eq!(record["certificate_expires"], time_rfc3339(new_until));

    // Renewing with the new certificate works too, and counts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, again, _) = call(new.post(&renew_url).json(&json!({"csr": csr_for(&key)}))).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(server_json(&sim, &id)["renewals"], 2);
    let log = std::fs::read_to_string(sim.dir.path().join("serve.stderr")).unwrap();
    assert!(
        log.contains(&format!(
            "gateway-primary-sim: server {id} renewed its certificate (valid until "
        )),
        "{log}"
    );
}

fn time_rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

#[tokio::test]
async fn renewal_refusals_tell_every_reason_apart() {
    let (sim, full, _) = setup();
    let c = client(&sim);
    let (id, token, key, pem) = trusted_one(&c, &sim, &full, "m-1").await;
    let (other_id, _, other_key, other_pem) = trusted_one(&c, &sim, &full, "m-2").await;
    let url = sim.url(&format!("/api/v1/servers/{id}/certificate"));
    let mtls = client_with(&sim, Some(identity(&pem, &key)));
    let body = json!({"csr": csr_for(&key)});

    let no_cert = call(c.post(&url).json(&body)).await;
    assert_error(&no_cert, 401, "client-certificate-required");
    let with_token = call(mtls.post(&url).bearer_auth(&token).json(&body)).await;
    assert_error(&with_token, 401, "client-certificate-required");
    assert!(
        with_token.1["message"]
            .as_str()
            .unwrap()
            .contains("mutual TLS only"),
        "{}",
        with_token.1
    );
    // Another server's certificate, for this server's path.
    let other = client_with(&sim, Some(identity(&other_pem, &other_key)));
    let wrong = call(other.post(&url).json(&json!({"csr": csr_for(&other_key)}))).await;
    assert_error(&wrong, 401, "client-certificate-required");
    assert!(
        wrong.1["message"]
            .as_str()
            .unwrap()
            .contains(&format!("not server {id}'s current certificate")),
        "{}",
        wrong.1
    );
    // A CSR for another key: renewal keeps the key.
    let (_, new_csr) = csr();
    let new_key = call(mtls.post(&url).json(&json!({"csr": new_csr}))).await;
    assert_error(&new_key, 422, "invalid-csr");
    assert!(
        new_key.1["message"]
            .as_str()
            .unwrap()
            .contains("another key"),
        "{}",
        new_key.1
    );
    assert_error(
        &call(mtls.post(&url).json(&json!({"csr": "not a CSR"}))).await,
        422,
        "invalid-csr",
    );
    assert_error(
        &call(mtls.post(&url).json(&json!({"certificate": "x"}))).await,
        400,
        "invalid-request",
    );
    assert_eq!(server_json(&sim, &id)["renewals"], 0, "no refusal renewed");

    // Re-enrolled with the same key: not trusted until Authorize, so no renewal.
    let (status, record, _) = call(
        c.post(sim.url(&format!("/api/v1/servers/{id}/enrolment")))
            .bearer_auth(&token)
            .json(&json!({"csr": csr_for(&key)})),
    )
    .await;
    assert_eq!(status, 202, "{record}");
    assert_error(&call(mtls.post(&url).json(&body)).await, 409, "not-trusted");

    // Rejected.
    let (status, _, _) = call(
        c.post(sim.url(&format!("/api/v1/servers/{other_id}/reject")))
            .bearer_auth(&full),
    )
    .await;
    assert_eq!(status, 200);
    let other_url = sim.url(&format!("/api/v1/servers/{other_id}/certificate"));
    assert_error(
        &call(
            other
                .post(&other_url)
                .json(&json!({"csr": csr_for(&other_key)})),
        )
        .await,
        403,
        "server-rejected",
    );

    // Removed: no such server.
    sim.ok(&["servers", "remove", &id]);
    assert_error(
        &call(mtls.post(&url).json(&body)).await,
        404,
        "server-unknown",
    );
}

#[tokio::test]
async fn an_expired_certificate_completes_the_handshake_and_is_told_certificate_expired() {
    let sim = Sim::start_with(&["--cert-lifetime", "3s"]);
    sim.ok(&["account", "add", "acme.example"]);
    let c = client(&sim);
    let (id, token, key) = register_one(&c, &sim, "m-1").await;
    // The CLI, another process, signs with the serving process's lifetime.
    sim.ok(&["authorize", &id]);
    let url = sim.url(&format!("/api/v1/servers/{id}"));
    let (status, bundle, _) = call(c.get(format!("{url}/certificate")).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{bundle}");
    let pem = bundle["certificate"].as_str().unwrap().to_string();
    let (from, until, _, _) = cert_facts(&pem);
    assert_eq!(until - from, 3, "3s, and a tenth of it (0s) before");
    assert!(
        (until - unix_now()).abs() <= 4,
        "valid until about now + 3s"
    );

    let mtls = client_with(&sim, Some(identity(&pem, &key)));
    let hello = sim.url("/api/v1/secure/hello");
    let (status, body, _) = call(mtls.get(&hello)).await;
    assert_eq!(status, 200, "valid for now: {body}");

    while unix_now() <= until {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // A fresh connection: the handshake completes, the handler answers.
    let mtls = client_with(&sim, Some(identity(&pem, &key)));
    let expired = call(mtls.get(&hello)).await;
    assert_error(&expired, 401, "certificate-expired");
    let renewal = call(
        mtls.post(format!("{url}/certificate"))
            .json(&json!({"csr": csr_for(&key)})),
    )
    .await;
    assert_error(&renewal, 401, "certificate-expired");
    assert_error(&call(mtls.delete(&url)).await, 401, "certificate-expired");
    assert_eq!(server_json(&sim, &id)["renewals"], 0);
    assert_eq!(server_json(&sim, &id)["secure_contacts"], 1);

    // Only expiry is forgiven: an expired certificate of an unknown CA still fails the handshake.
    let foreign_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "Account CA acme.example");
    ca_params.distinguished_name = dn;
    let foreign_ca = ca_params.self_signed(&foreign_ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &foreign_ca_key);
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, id.as_str());
    leaf.distinguished_name = dn;
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    leaf.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(2);
    leaf.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let forged = leaf.signed_by(&key, &issuer).unwrap();
    drop(foreign_ca);
    let impostor = client_with(&sim, Some(identity(&forged.pem(), &key)));
    assert!(
        impostor.get(&hello).send().await.is_err(),
        "an unknown issuer fails the TLS handshake"
    );
}

#[tokio::test]
async fn a_zero_certificate_lifetime_is_refused() {
    let sim = Sim::start();
    let tls = sim.tls_dir();
    let run = sim.cli(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls-dir",
        tls.to_str().unwrap(),
        "--cert-lifetime",
        "0s",
    ]);
    assert_ne!(run.code, 0, "{}", run.all());
    assert!(
        run.stderr.contains("--cert-lifetime 0s is too short"),
        "{}",
        run.all()
    );
}

#[tokio::test]
async fn re_enrolment_with_the_token_waits_for_authorize_and_then_certifies_the_new_key() {
    let (sim, full, restricted) = setup();
    let c = client(&sim);
    let (id, token, old_key, old_pem) = trusted_one(&c, &sim, &full, "m-1").await;
    let url = sim.url(&format!("/api/v1/servers/{id}"));
    let enrol_url = format!("{url}/enrolment");
    let (new_key, new_csr) = csr();
    let body = json!({"csr": new_csr});

    assert_error(
        &call(c.post(&enrol_url).json(&body)).await,
        401,
        "unauthenticated",
    );
    assert_error(
        &call(
            c.post(&enrol_url)
                .bearer_auth("gwt_wrongwrongwrong")
                .json(&body),
        )
        .await,
        401,
        "token-invalid",
    );
    assert_error(
        &call(c.post(&enrol_url).bearer_auth(&restricted).json(&body)).await,
        403,
        "key-restricted",
    );
    assert_error(
        &call(
            c.post(&enrol_url)
                .bearer_auth(&token)
                .json(&json!({"csr": "junk"})),
        )
        .await,
        422,
        "invalid-csr",
    );
    assert_error(
        &call(
            c.post(sim.url("/api/v1/servers/srv_nothere/enrolment"))
                .bearer_auth(&token)
                .json(&body),
        )
        .await,
        404,
        "server-unknown",
    );
    assert_eq!(
        server_json(&sim, &id)["state"],
        "trusted",
        "nothing changed yet"
    );

    let (status, record, _) = call(c.post(&enrol_url).bearer_auth(&token).json(&body)).await;
    assert_eq!(status, 202, "{record}");
    assert_eq!(record["state"], "untrusted");
    assert_eq!(record["server_id"], id.as_str());
    assert_eq!(record["authorized_at"], Value::Null);
    assert!(record.get("certificate_expires").is_none(), "{record}");
    let new_fp = {
        use rcgen::PublicKeyData;
        gateway_protocol::key_fingerprint(&new_key.subject_public_key_info())
    };
    assert_eq!(record["key_fingerprint"], new_fp.as_str());
    // The same CSR again: the same record.
    let (status, again, _) = call(c.post(&enrol_url).bearer_auth(&token).json(&body)).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again, record);
    let log = std::fs::read_to_string(sim.dir.path().join("serve.stderr")).unwrap();
    assert_eq!(
        log.matches(&format!("gateway-primary-sim: server {id} re-enrols"))
            .count(),
        1,
        "{log}"
    );

    assert_error(
        &call(c.get(format!("{url}/certificate")).bearer_auth(&token)).await,
        409,
        "not-trusted",
    );
    // The old certificate is not the server's current key any more.
    let old = client_with(&sim, Some(identity(&old_pem, &old_key)));
    assert_error(
        &call(old.get(sim.url("/api/v1/secure/hello"))).await,
        401,
        "client-certificate-required",
    );

    let (status, authorized, _) = call(c.post(format!("{url}/authorize")).bearer_auth(&full)).await;
    assert_eq!(status, 200, "{authorized}");
    assert_eq!(authorized["state"], "trusted");
    let (status, bundle, _) = call(c.get(format!("{url}/certificate")).bearer_auth(&token)).await;
    assert_eq!(status, 200, "{bundle}");
    let pem = bundle["certificate"].as_str().unwrap();
    assert_eq!(
        cert_facts(pem).3,
        new_fp,
        "the certificate is for the new key"
    );
    let new = client_with(&sim, Some(identity(pem, &new_key)));
    let (status, hello, _) = call(new.get(sim.url("/api/v1/secure/hello"))).await;
    assert_eq!(status, 200, "{hello}");

    // A full key of the account may re-enrol it too; a rejected server may not.
    let (status, _, _) = call(
        c.post(&enrol_url)
            .bearer_auth(&full)
            .json(&json!({"csr": csr_for(&new_key)})),
    )
    .await;
    assert_eq!(status, 202);
    let (status, _, _) = call(c.post(format!("{url}/reject")).bearer_auth(&full)).await;
    assert_eq!(status, 200);
    assert_error(
        &call(c.post(&enrol_url).bearer_auth(&token).json(&body)).await,
        403,
        "server-rejected",
    );
}
