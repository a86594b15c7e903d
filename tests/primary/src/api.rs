//! The `/api/v1` endpoints. See docs/protocol.md; the types are `gateway_protocol`.

use crate::db::{ApiKey, Db, Server, now, random_token, rfc3339};
use crate::{AppState, ConnInfo, pki};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gateway_protocol::secret::Secret;
use gateway_protocol::{
    AccountInfo, CertificateBundle, CsrRequest, ErrorBody, ErrorCode, Health, KeyKind,
    RegisterResponse, Registration, SecureHello, ServerRecord, TrustState,
};
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        eprintln!("gateway-primary-sim: internal error: {e:#}");
        ApiError::new(ErrorCode::Internal, "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            code: self.code,
            message: self.message,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = self.retry_after
            && let Ok(v) = secs.to_string().parse()
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}

type ApiResult<T> = Result<T, ApiError>;

fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "an Authorization: Bearer header is required",
        )
    })?;
    let text = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthenticated,
                "the Authorization header must be \"Bearer <key>\"",
            )
        })?;
    Ok(text)
}

/// The API key of the request, checked for existence, expiry and client address.
fn api_key(db: &Db, headers: &HeaderMap, client: IpAddr) -> ApiResult<ApiKey> {
    let presented = bearer(headers)?;
    let key = db.key(presented)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::KeyInvalid,
            "the API key is not known to this primary",
        )
    })?;
    if key.expires_at.is_some_and(|t| t <= now()) {
        return Err(ApiError::new(
            ErrorCode::KeyExpired,
            format!(
                "the API key expired at {}",
                rfc3339(key.expires_at.unwrap_or(0))
            ),
        ));
    }
    if let Some(cidr) = &key.allow_ip {
        let allowed = cidr
            .split(',')
            .filter_map(|c| c.trim().parse::<ipnet::IpNet>().ok())
            .any(|net| net.contains(&client));
        if !allowed {
            return Err(ApiError::new(
                ErrorCode::KeyIpNotAllowed,
                format!("the API key may not be used from {client}"),
            ));
        }
    }
    Ok(key)
}

/// The account `domain`, if `key` may act in it.
fn account_for_key(db: &Db, key: &ApiKey, domain: &str) -> ApiResult<crate::db::Account> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    let account = db.account(&domain)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::AccountUnknown,
            format!("no account has the domain name {domain}"),
        )
    })?;
    if key.account_id.is_some_and(|id| id != account.id) {
        return Err(ApiError::new(
            ErrorCode::KeyAccountMismatch,
            format!("the API key belongs to another account, not {domain}"),
        ));
    }
    Ok(account)
}

fn require_full(key: &ApiKey) -> ApiResult<()> {
    if key.kind != KeyKind::Full {
        return Err(ApiError::new(
            ErrorCode::KeyRestricted,
            "a restricted API key cannot do this; use a full key",
        ));
    }
    Ok(())
}

pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    })
}

pub async fn account(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> ApiResult<Json<AccountInfo>> {
    let db = st.db();
    let key = api_key(&db, &headers, conn.peer.ip())?;
    let account = account_for_key(&db, &key, &domain)?;
    Ok(Json(AccountInfo {
        account: account.domain,
        key_kind: key.kind,
        auto_trust: key.auto_trust,
    }))
}

pub async fn list_servers(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> ApiResult<Json<Vec<ServerRecord>>> {
    let db = st.db();
    let key = api_key(&db, &headers, conn.peer.ip())?;
    let account = account_for_key(&db, &key, &domain)?;
    require_full(&key)?;
    Ok(Json(
        db.servers(Some(account.id))?
            .into_iter()
            .map(|s| s.record)
            .collect(),
    ))
}

fn check_registration(r: &Registration) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::new(ErrorCode::InvalidRequest, m));
    let id_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    };
    if !id_ok(&r.machine_id) {
        return bad("machine_id must be 1 to 128 letters, digits, '.', '_' or '-'".into());
    }
    if r.hardware_id.as_deref().is_some_and(|h| !id_ok(h)) {
        return bad("hardware_id must be 1 to 128 letters, digits, '.', '_' or '-'".into());
    }
    if r.hostname.is_empty() || r.hostname.len() > 253 || r.hostname.chars().any(char::is_control) {
        return bad("hostname must be 1 to 253 printable characters".into());
    }
    if r.fqdn
        .as_ref()
        .is_some_and(|f| f.len() > 253 || f.chars().any(char::is_control))
    {
        return bad("fqdn must be at most 253 printable characters".into());
    }
    if r.agent_version.len() > 64
        || r.serial.as_ref().is_some_and(|s| s.len() > 128)
        || r.addresses.len() > 64
    {
        return bad("agent_version (64), serial (128) or addresses (64) is too long".into());
    }
    Ok(())
}

pub async fn register(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    body: Result<Json<Registration>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<RegisterResponse>)> {
    let db = st.db();
    let key = api_key(&db, &headers, conn.peer.ip())?;
    let account = account_for_key(&db, &key, &domain)?;
    let Json(reg) = body.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))?;
    check_registration(&reg)?;
    let machine_id = reg.machine_id.clone();
    let fingerprint = pki::csr_fingerprint(&reg.csr)
        .map_err(|e| ApiError::new(ErrorCode::InvalidCsr, e.to_string()))?;
    let ca = pki::Ca {
        cert: account.ca_cert.clone(),
        key: account.ca_key.clone(),
    };

    let existing = db.server_by_machine(account.id, &reg.machine_id)?;
    let status = match existing {
        Some(mut server) => {
            let same_key = server.record.key_fingerprint == fingerprint;
            if !same_key && server.record.state == TrustState::Trusted {
                return Err(ApiError::new(
                    ErrorCode::IdentityConflict,
                    format!(
                        "this machine is registered as {} and trusted with another key pair; an administrator must remove it first",
                        server.record.server_id
                    ),
                ));
            }
            let r = &mut server.record;
            r.hostname = reg.hostname;
            r.fqdn = reg.fqdn;
            r.addresses = reg.addresses;
            r.dns = reg.dns.status;
            r.serial = reg.serial;
            r.agent_version = reg.agent_version;
            r.key_fingerprint = fingerprint;
            server.csr = reg.csr;
            server.hardware_id = reg.hardware_id;
            db.update_registration(&server)?;
            if key.auto_trust && server.record.state == TrustState::Untrusted {
                let cert = pki::sign_csr(
                    &ca,
                    &server.csr,
                    &server.record.server_id,
                    &account.domain,
                    st.cert_lifetime,
                )?;
                db.set_trust(&server.record.server_id, TrustState::Trusted, Some(&cert))?;
                retire_replaced(&db, &server)?;
            }
            StatusCode::OK
        }
        None => {
            let id = random_token("srv_", 12).to_ascii_lowercase();
            // A new machine ID on hardware the account knows: the box was re-imaged (or its
            // disk swapped). The new record says which one it replaces; Authorize retires it.
            let replaces = db
                .same_hardware(
                    account.id,
                    reg.hardware_id.as_deref(),
                    reg.serial.as_deref(),
                    &id,
                )?
                .into_iter()
                .next()
                .map(|old| old.record.server_id);
            let mut server = Server {
                record: ServerRecord {
                    server_id: id.clone(),
                    account: account.domain.clone(),
                    state: TrustState::Untrusted,
                    hostname: reg.hostname,
                    fqdn: reg.fqdn,
                    addresses: reg.addresses,
                    dns: reg.dns.status,
                    serial: reg.serial,
                    agent_version: reg.agent_version,
                    key_fingerprint: fingerprint,
                    registered_at: String::new(),
                    authorized_at: None,
                    last_secure_contact: None,
                    replaces,
                    certificate_expires: None,
                    renewals: 0,
                },
                hardware_id: reg.hardware_id,
                account_id: account.id,
                machine_id: reg.machine_id,
                csr: reg.csr,
                token: random_token("gwt_", 40),
                certificate: None,
                secure_contacts: 0,
                registrations: 1,
            };
            if key.auto_trust {
                let cert = pki::sign_csr(&ca, &server.csr, &id, &account.domain, st.cert_lifetime)?;
                server.record.certificate_expires = Some(rfc3339(pki::pem_not_after(&cert)?));
                server.certificate = Some(cert);
                server.record.state = TrustState::Trusted;
                server.record.authorized_at = Some(String::new());
            }
            db.insert_server(&server)?;
            if server.record.state == TrustState::Trusted {
                retire_replaced(&db, &server)?;
            }
            StatusCode::CREATED
        }
    };
    let server = db
        .server_by_machine(account.id, &machine_id)?
        .ok_or_else(|| anyhow::anyhow!("the server vanished"))?;
    Ok((
        status,
        Json(RegisterResponse {
            server: server.record,
            server_token: Secret::new(server.token),
        }),
    ))
}

/// The server `id`, for a caller holding its token or a full key of its account.
fn server_for_caller(db: &Db, headers: &HeaderMap, client: IpAddr, id: &str) -> ApiResult<Server> {
    let presented = bearer(headers)?;
    let server = db
        .server(id)?
        .ok_or_else(|| ApiError::new(ErrorCode::ServerUnknown, format!("no server {id}")))?;
    if presented == server.token {
        return Ok(server);
    }
    if presented.starts_with("gwt_") {
        return Err(ApiError::new(
            ErrorCode::TokenInvalid,
            "the server token is wrong",
        ));
    }
    let key = api_key(db, headers, client)?;
    require_full(&key)?;
    account_for_key(db, &key, &server.record.account)?;
    Ok(server)
}

pub async fn server(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<ServerRecord>> {
    let db = st.db();
    Ok(Json(
        server_for_caller(&db, &headers, conn.peer.ip(), &id)?.record,
    ))
}

pub async fn certificate(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<CertificateBundle>> {
    let db = st.db();
    let server = server_for_caller(&db, &headers, conn.peer.ip(), &id)?;
    match (server.record.state, server.certificate) {
        (TrustState::Trusted, Some(certificate)) => {
            let ca = db.account_by_id(server.account_id)?.ca_cert;
            Ok(Json(CertificateBundle { certificate, ca }))
        }
        (TrustState::Rejected, _) => Err(rejected(&id)),
        _ => Err(ApiError::new(
            ErrorCode::NotTrusted,
            format!("server {id} is not trusted yet: an administrator must click Authorize"),
        )),
    }
}

fn rejected(id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::ServerRejected,
        format!("an administrator rejected server {id}"),
    )
}

/// Authorizes (`trusted`) or rejects a server; shared by the API, the web page and the CLI.
/// Authorizing signs the server's CSR: a certificate valid for `lifetime_secs`.
pub fn set_trust(
    db: &Db,
    id: &str,
    state: TrustState,
    lifetime_secs: i64,
) -> anyhow::Result<Server> {
    let server = db.find_server(id)?;
    let id = server.record.server_id.clone();
    match state {
        TrustState::Trusted if server.record.state == TrustState::Trusted => {}
        TrustState::Trusted => {
            let account = db.account_by_id(server.account_id)?;
            let ca = pki::Ca {
                cert: account.ca_cert,
                key: account.ca_key,
            };
            let cert = pki::sign_csr(&ca, &server.csr, &id, &account.domain, lifetime_secs)?;
            db.set_trust(&id, TrustState::Trusted, Some(&cert))?;
            retire_replaced(db, &server)?;
        }
        other => db.set_trust(&id, other, None)?,
    }
    db.server(&id)?
        .ok_or_else(|| anyhow::anyhow!("server {id} vanished"))
}

/// Once `server` is trusted: the account's other records of the same hardware (the box before
/// it was re-imaged) are retired, their tokens and certificates with them. One box, one server.
fn retire_replaced(db: &Db, server: &Server) -> anyhow::Result<()> {
    let r = &server.record;
    let old = db.same_hardware(
        server.account_id,
        server.hardware_id.as_deref(),
        r.serial.as_deref(),
        &r.server_id,
    )?;
    for retired in old {
        db.remove_server(&retired.record.server_id)?;
        eprintln!(
            "gateway-primary-sim: server {} retired: replaced by {} (the same hardware)",
            retired.record.server_id, r.server_id
        );
    }
    Ok(())
}

async fn admin_trust(
    st: Arc<AppState>,
    conn: ConnInfo,
    headers: HeaderMap,
    id: String,
    state: TrustState,
) -> ApiResult<Json<ServerRecord>> {
    let db = st.db();
    let key = api_key(&db, &headers, conn.peer.ip())?;
    let server = db
        .server(&id)?
        .ok_or_else(|| ApiError::new(ErrorCode::ServerUnknown, format!("no server {id}")))?;
    account_for_key(&db, &key, &server.record.account)?;
    require_full(&key)?;
    Ok(Json(set_trust(&db, &id, state, st.cert_lifetime)?.record))
}

pub async fn authorize(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<ServerRecord>> {
    admin_trust(st, conn, headers, id, TrustState::Trusted).await
}

pub async fn reject(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<ServerRecord>> {
    admin_trust(st, conn, headers, id, TrustState::Rejected).await
}

/// Removes a server; shared by the API, the web page's Remove button and the CLI. After it,
/// the server's token and certificate no longer work, and the same machine registering again
/// gets a new server id.
pub fn remove(db: &Db, name: &str) -> anyhow::Result<Server> {
    let server = db.find_server(name)?;
    db.remove_server(&server.record.server_id)?;
    Ok(server)
}

fn server_unknown(id: &str) -> ApiError {
    ApiError::new(ErrorCode::ServerUnknown, format!("no server {id}"))
}

/// `DELETE /accounts/{domain}/servers/{id}`: an administrator removes a server (full key of
/// the account). 204; 404 `server-unknown` when the account has no such server (also on a
/// second DELETE: the record is gone).
pub async fn remove_server(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path((domain, id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let db = st.db();
    let key = api_key(&db, &headers, conn.peer.ip())?;
    let account = account_for_key(&db, &key, &domain)?;
    require_full(&key)?;
    match db.server(&id)? {
        Some(server) if server.account_id == account.id => {
            db.remove_server(&id)?;
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(server_unknown(&id)),
    }
}

/// `DELETE /servers/{id}`: the server deregisters itself, with its server token (or a full
/// key of its account), or over mutual TLS with its client certificate and no Authorization
/// header. 204; 404 `server-unknown` once removed.
pub async fn deregister(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let db = st.db();
    let server = match (
        &conn.client_cert,
        headers.contains_key(header::AUTHORIZATION),
    ) {
        (Some(cert), false) => {
            let (cert_id, fingerprint) = pki::client_identity(cert)
                .map_err(|e| ApiError::new(ErrorCode::ClientCertificateRequired, e.to_string()))?;
            let server = db.server(&id)?.ok_or_else(|| server_unknown(&id))?;
            if cert_id != id || server.record.key_fingerprint != fingerprint {
                return Err(ApiError::new(
                    ErrorCode::ClientCertificateRequired,
                    format!("the client certificate is not server {id}'s current one"),
                ));
            }
            check_not_expired(cert)?;
            server
        }
        _ => server_for_caller(&db, &headers, conn.peer.ip(), &id)?,
    };
    db.remove_server(&server.record.server_id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Over mutual TLS: proves the server holds the key its certificate was issued for.
pub async fn secure_hello(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
) -> ApiResult<Json<SecureHello>> {
    let cert = conn.client_cert.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ClientCertificateRequired,
            "connect with the client certificate issued when the server was authorized",
        )
    })?;
    let (id, fingerprint) = pki::client_identity(cert)
        .map_err(|e| ApiError::new(ErrorCode::ClientCertificateRequired, e.to_string()))?;
    let db = st.db();
    let server = db
        .server(&id)?
        .ok_or_else(|| ApiError::new(ErrorCode::ServerUnknown, format!("no server {id}")))?;
    if server.record.state == TrustState::Rejected {
        return Err(rejected(&id));
    }
    if server.record.state != TrustState::Trusted || server.record.key_fingerprint != fingerprint {
        return Err(ApiError::new(
            ErrorCode::ClientCertificateRequired,
            "the certificate does not match the server's current trusted key",
        ));
    }
    check_not_expired(cert)?;
    let at = db.record_secure_contact(&id)?;
    Ok(Json(SecureHello {
        server_id: id,
        account: server.record.account,
        state: TrustState::Trusted,
        at: rfc3339(at),
    }))
}

/// 401 `certificate-expired` once the client certificate's notAfter has passed (the TLS
/// verifier lets such a certificate through; see verifier.rs).
fn check_not_expired(cert_der: &[u8]) -> ApiResult<()> {
    let not_after = pki::not_after(cert_der)
        .map_err(|e| ApiError::new(ErrorCode::ClientCertificateRequired, e.to_string()))?;
    if not_after < now() {
        return Err(ApiError::new(
            ErrorCode::CertificateExpired,
            format!(
                "the client certificate expired at {}: it cannot renew itself; re-enrol with \
                 POST /api/v1/servers/{{id}}/enrolment and the server token",
                rfc3339(not_after)
            ),
        ));
    }
    Ok(())
}

fn csr_body(body: Result<Json<CsrRequest>, JsonRejection>) -> ApiResult<CsrRequest> {
    body.map(|Json(b)| b)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
}

/// `POST /servers/{id}/certificate`: renewal, over mutual TLS with the server's current
/// client certificate and no Authorization header, with a CSR for the same key. 200 with the
/// new certificate; the old one keeps working until its own notAfter.
pub async fn renew(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<CsrRequest>, JsonRejection>,
) -> ApiResult<Json<CertificateBundle>> {
    if headers.contains_key(header::AUTHORIZATION) {
        return Err(ApiError::new(
            ErrorCode::ClientCertificateRequired,
            "renewal is over mutual TLS only: connect with the server's current client \
             certificate and send no Authorization header",
        ));
    }
    let cert = conn.client_cert.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::ClientCertificateRequired,
            "renewal is over mutual TLS: connect with the server's current client certificate",
        )
    })?;
    let (cert_id, fingerprint) = pki::client_identity(cert)
        .map_err(|e| ApiError::new(ErrorCode::ClientCertificateRequired, e.to_string()))?;
    let not_current = || {
        ApiError::new(
            ErrorCode::ClientCertificateRequired,
            format!("the client certificate is not server {id}'s current certificate"),
        )
    };
    if cert_id != id {
        return Err(not_current());
    }
    let db = st.db();
    let server = db.server(&id)?.ok_or_else(|| server_unknown(&id))?;
    if server.record.key_fingerprint != fingerprint {
        return Err(not_current());
    }
    match server.record.state {
        TrustState::Rejected => return Err(rejected(&id)),
        TrustState::Untrusted => {
            return Err(ApiError::new(
                ErrorCode::NotTrusted,
                format!("server {id} is not trusted: an administrator must click Authorize"),
            ));
        }
        TrustState::Trusted => {}
    }
    check_not_expired(cert)?;
    let request = csr_body(body)?;
    let csr_key = pki::csr_fingerprint(&request.csr)
        .map_err(|e| ApiError::new(ErrorCode::InvalidCsr, e.to_string()))?;
    if csr_key != server.record.key_fingerprint {
        return Err(ApiError::new(
            ErrorCode::InvalidCsr,
            "the CSR is for another key: renewal keeps the server's key pair (a new key pair \
             is a new registration)",
        ));
    }
    let account = db.account_by_id(server.account_id)?;
    let ca = pki::Ca {
        cert: account.ca_cert,
        key: account.ca_key,
    };
    let certificate = pki::sign_csr(&ca, &request.csr, &id, &account.domain, st.cert_lifetime)?;
    let expires = db.renew_certificate(&id, &certificate)?;
    eprintln!(
        "gateway-primary-sim: server {id} renewed its certificate (valid until {})",
        rfc3339(expires)
    );
    Ok(Json(CertificateBundle {
        certificate,
        ca: ca.cert,
    }))
}

/// `POST /servers/{id}/enrolment`: re-enrolment once the certificate has expired, with the
/// server token (or a full key of the account) and a CSR for the same or a new key. The server
/// goes back to `untrusted` without a certificate until an administrator authorizes it again.
/// 202 with the record; the same CSR again changes nothing.
pub async fn enrol(
    State(st): State<Arc<AppState>>,
    Extension(conn): Extension<ConnInfo>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<CsrRequest>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<ServerRecord>)> {
    let db = st.db();
    let server = server_for_caller(&db, &headers, conn.peer.ip(), &id)?;
    if server.record.state == TrustState::Rejected {
        return Err(rejected(&id));
    }
    let request = csr_body(body)?;
    let fingerprint = pki::csr_fingerprint(&request.csr)
        .map_err(|e| ApiError::new(ErrorCode::InvalidCsr, e.to_string()))?;
    let unchanged = server.record.state == TrustState::Untrusted
        && server.certificate.is_none()
        && server.csr == request.csr;
    if !unchanged {
        db.re_enrol(&id, &request.csr, &fingerprint)?;
        let expired = server
            .certificate
            .as_deref()
            .map(|c| pki::pem_not_after(c).map(|t| t < now()))
            .transpose()?
            .unwrap_or(true);
        if expired {
            eprintln!(
                "gateway-primary-sim: server {id} re-enrols (its certificate expired): waiting for Authorize"
            );
        } else {
            eprintln!(
                "gateway-primary-sim: server {id} re-enrols (its certificate had not expired yet): waiting for Authorize"
            );
        }
    }
    let server = db.server(&id)?.ok_or_else(|| server_unknown(&id))?;
    Ok((StatusCode::ACCEPTED, Json(server.record)))
}

pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}
