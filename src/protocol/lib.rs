//! The registration protocol between the agent and the primary, `/api/v1`, as Rust types.
//! Both sides use these types (the agent and `gateway-primary-sim`), so they cannot drift;
//! `docs/protocol.md` describes them and `docs/openapi.yaml` is the same contract for tools.

pub mod hex;
pub mod secret;

use secret::{Secret, serialize_exposed};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::IpAddr;

/// Path prefix of every protocol endpoint.
pub const API_PREFIX: &str = "/api/v1";

/// Stable, machine-readable error codes; the body of every error response carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// No `Authorization: Bearer …` header, or a malformed one (401).
    Unauthenticated,
    /// The API key is not known to the primary (401).
    KeyInvalid,
    /// The API key has expired (401).
    KeyExpired,
    /// The API key may not be used from this client's address (403).
    KeyIpNotAllowed,
    /// A restricted key was used for something only a full key may do (403).
    KeyRestricted,
    /// The key belongs to another account (403).
    KeyAccountMismatch,
    /// No account has this domain name (404).
    AccountUnknown,
    /// No such server (404): never registered, or removed (`DELETE /accounts/{domain}/servers/{id}`
    /// or `DELETE /servers/{id}`). A client repeating a `DELETE` takes it as done.
    ServerUnknown,
    /// The per-server token is wrong (401).
    TokenInvalid,
    /// The server is not trusted yet: an administrator has not clicked Authorize (409).
    NotTrusted,
    /// An administrator rejected the server (403).
    ServerRejected,
    /// This machine is registered and trusted with a different key pair (409).
    IdentityConflict,
    /// The request body or parameters are malformed (400).
    InvalidRequest,
    /// The certificate signing request cannot be used (422).
    InvalidCsr,
    /// Too many requests; retry after `Retry-After` seconds (429).
    RateLimited,
    /// The primary cannot serve the request now; retry (503).
    Unavailable,
    /// The primary failed (500).
    Internal,
    /// The endpoint needs a client certificate issued by the account's CA (401).
    ClientCertificateRequired,
    /// The client certificate presented has expired (401): it cannot renew itself; the server
    /// re-enrols (`POST /servers/{id}/enrolment`) and waits for Authorize again.
    CertificateExpired,
    /// No such endpoint (404).
    NotFound,
    /// A code this agent does not know (a newer primary).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::KeyInvalid => "key-invalid",
            ErrorCode::KeyExpired => "key-expired",
            ErrorCode::KeyIpNotAllowed => "key-ip-not-allowed",
            ErrorCode::KeyRestricted => "key-restricted",
            ErrorCode::KeyAccountMismatch => "key-account-mismatch",
            ErrorCode::AccountUnknown => "account-unknown",
            ErrorCode::ServerUnknown => "server-unknown",
            ErrorCode::TokenInvalid => "token-invalid",
            ErrorCode::NotTrusted => "not-trusted",
            ErrorCode::ServerRejected => "server-rejected",
            ErrorCode::IdentityConflict => "identity-conflict",
            ErrorCode::InvalidRequest => "invalid-request",
            ErrorCode::InvalidCsr => "invalid-csr",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::ClientCertificateRequired => "client-certificate-required",
            ErrorCode::CertificateExpired => "certificate-expired",
            ErrorCode::NotFound => "not-found",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::Unauthenticated
            | ErrorCode::KeyInvalid
            | ErrorCode::KeyExpired
            | ErrorCode::TokenInvalid
            | ErrorCode::ClientCertificateRequired
            | ErrorCode::CertificateExpired => 401,
            ErrorCode::KeyIpNotAllowed
            | ErrorCode::KeyRestricted
            | ErrorCode::KeyAccountMismatch
            | ErrorCode::ServerRejected => 403,
            ErrorCode::AccountUnknown | ErrorCode::ServerUnknown | ErrorCode::NotFound => 404,
            ErrorCode::NotTrusted | ErrorCode::IdentityConflict => 409,
            ErrorCode::InvalidRequest => 400,
            ErrorCode::InvalidCsr => 422,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

/// The body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// For people; never contains a key or token.
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    /// May validate an account and register servers, which start not trusted.
    Restricted,
    /// May also read the account's servers and authorize or reject them.
    Full,
}

/// `GET /api/v1/health`: unauthenticated; also the agent's TLS and clock check (`Date`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// `GET /api/v1/accounts/{domain}`: the account exists and the key may register servers in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountInfo {
    pub account: String,
    pub key_kind: KeyKind,
    /// Servers registered with this key are trusted at once.
    pub auto_trust: bool,
}

/// Result of the agent's DNS self-check, sent with the registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsStatus {
    /// The FQDN resolves to one of this server's addresses.
    Ok,
    /// The FQDN does not resolve.
    Missing,
    /// The FQDN resolves, but not to this server.
    Mismatch,
    /// The check was turned off.
    Skipped,
    /// The resolver failed.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsReport {
    pub status: DnsStatus,
    pub fqdn: String,
    /// Addresses the FQDN resolved to.
    #[serde(default)]
    pub resolved: Vec<IpAddr>,
    /// Names the server's addresses resolve back to.
    #[serde(default)]
    pub reverse: Vec<String>,
}

/// `POST /api/v1/accounts/{domain}/servers`: the server's facts and its CSR.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Registration {
    /// Application-specific ID derived from /etc/machine-id (never the raw ID); the key
    /// that makes registration idempotent.
    pub machine_id: String,
    pub hostname: String,
    pub fqdn: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub dns: DnsReport,
    /// DMI product serial, where the hardware has one.
    pub serial: Option<String>,
    /// Application-specific ID derived from the DMI product UUID (never the raw UUID), where
    /// the firmware has a real one: the primary matches a re-imaged box to its old record by
    /// it (docs/protocol.md, "Replacements").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_id: Option<String>,
    pub agent_version: String,
    /// PKCS#10 certificate signing request, PEM.
    pub csr: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrustState {
    /// Registered; waits for an administrator to click Authorize.
    Untrusted,
    /// Authorized: its certificate is signed and it may connect with mutual TLS.
    Trusted,
    /// An administrator rejected it.
    Rejected,
}

/// A server as the primary records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerRecord {
    pub server_id: String,
    pub account: String,
    pub state: TrustState,
    pub hostname: String,
    pub fqdn: Option<String>,
    pub addresses: Vec<IpAddr>,
    pub dns: DnsStatus,
    pub serial: Option<String>,
    pub agent_version: String,
    /// `SHA256:` and the hex SHA-256 of the server's public key (SubjectPublicKeyInfo DER).
    pub key_fingerprint: String,
    /// RFC 3339 times.
    pub registered_at: String,
    pub authorized_at: Option<String>,
    pub last_secure_contact: Option<String>,
    /// The server this one replaces: an earlier record of the same hardware (the same
    /// hardware ID and serial) in the account, from another machine ID (the box was
    /// re-imaged). Authorizing this one retires that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
    /// RFC 3339 time the server's current client certificate expires (its notAfter); absent
    /// while it has none (not trusted yet, rejected, or re-enrolling).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<String>,
    /// How many times the server renewed its certificate (`POST /servers/{id}/certificate`);
    /// absent while none.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub renewals: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Response to a registration: the server, and its token for the calls that follow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterResponse {
    #[serde(flatten)]
    pub server: ServerRecord,
    /// Bearer token for `GET /servers/{id}` and `/certificate`; the same on every
    /// re-registration of the same machine.
    #[serde(serialize_with = "serialize_exposed")]
    pub server_token: Secret,
}

/// `GET /api/v1/servers/{id}/certificate` once trusted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateBundle {
    /// The server's client certificate, PEM.
    pub certificate: String,
    /// The account's CA certificate, PEM.
    pub ca: String,
}

/// The body of `POST /api/v1/servers/{id}/certificate` (renewal, over mutual TLS with the
/// current certificate) and `POST /api/v1/servers/{id}/enrolment` (re-enrolment once the
/// certificate has expired, with the server token): a new certificate signing request for
/// the server's key pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CsrRequest {
    /// PKCS#10, PEM.
    pub csr: String,
}

/// `GET /api/v1/secure/hello` over mutual TLS.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecureHello {
    pub server_id: String,
    pub account: String,
    pub state: TrustState,
    /// RFC 3339 time the primary recorded this contact.
    pub at: String,
}

/// `SHA256:<hex>` of a SubjectPublicKeyInfo (DER), as both sides show it.
pub fn key_fingerprint(spki_der: &[u8]) -> String {
    let digest = Sha256::digest(spki_der);
    format!("SHA256:{}", hex::encode(&digest))
}

/// The short form shown on the console and in the primary's web page, so an administrator
/// can check at a glance that they authorize the right box: `3F7A-91C2-0B4E`.
pub fn short_fingerprint(fingerprint: &str) -> String {
    let hex = fingerprint
        .strip_prefix("SHA256:")
        .unwrap_or(fingerprint)
        .to_ascii_uppercase();
    let head: Vec<String> = hex
        .as_bytes()
        .chunks(4)
        .take(3)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    head.join("-")
}

/// Checks a DNS name (RFC 1123 host name rules). Returns it lowercase without a trailing dot.
pub fn check_dns_name(name: &str) -> Result<String, String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() {
        return Err("empty name".into());
    }
    if let Some(c) = trimmed.chars().find(|c| !c.is_ascii()) {
        return Err(format!(
            "contains the non-ASCII character {c:?}; write the name in its xn-- (punycode) form"
        ));
    }
    if trimmed.len() > 253 {
        return Err(format!(
            "{} characters long, the limit is 253",
            trimmed.len()
        ));
    }
    for label in trimmed.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if label.len() > 63 {
            return Err(format!(
                "label {label:?} is {} characters long, the limit is 63",
                label.len()
            ));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(format!(
                "label {label:?} contains {c:?}; only letters, digits and hyphens are allowed"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with a hyphen"));
        }
    }
    if trimmed
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("the last label is all digits, so it reads as an IP address".into());
    }
    Ok(trimmed.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialise_as_their_names() {
        for code in [
            ErrorCode::KeyIpNotAllowed,
            ErrorCode::NotTrusted,
            ErrorCode::ClientCertificateRequired,
        ] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
        let unknown: ErrorCode = serde_json::from_str("\"from-the-future\"").unwrap();
        assert_eq!(unknown, ErrorCode::Unknown);
    }

    #[test]
    fn the_token_travels_but_never_prints() {
        let json = r#"{"server_id":"srv_1","account":"a.example","state":"untrusted","hostname":"gw01",
            "fqdn":null,"addresses":[],"dns":"ok","serial":null,"agent_version":"0.1.0",
            "key_fingerprint":"SHA256:00","registered_at":"2026-01-01T00:00:00Z","authorized_at":null,
            "last_secure_contact":null,"server_token":"tok_secret_value"}"#;
        let r: RegisterResponse = serde_json::from_str(json).unwrap();
        assert_eq!(r.server_token.expose(), "tok_secret_value");
        assert!(!format!("{r:?}").contains("tok_secret_value"));
        assert!(
            serde_json::to_string(&r)
                .unwrap()
                .contains("tok_secret_value")
        );
    }

    #[test]
    fn renewal_fields_are_optional_both_ways() {
        let json = r#"{"server_id":"srv_1","account":"a.example","state":"trusted","hostname":"gw01",
            "fqdn":null,"addresses":[],"dns":"ok","serial":null,"agent_version":"0.1.0",
            "key_fingerprint":"SHA256:00","registered_at":"2026-01-01T00:00:00Z","authorized_at":null,
            "last_secure_contact":null}"#;
        let mut r: ServerRecord = serde_json::from_str(json).unwrap();
        assert_eq!((r.renewals, r.certificate_expires.as_deref()), (0, None));
        let v = serde_json::to_value(&r).unwrap();
        assert!(v.get("renewals").is_none() && v.get("certificate_expires").is_none());
        r.renewals = 2;
        r.certificate_expires = Some("2027-01-01T00:00:00Z".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["renewals"], 2);
        assert_eq!(v["certificate_expires"], "2027-01-01T00:00:00Z");
        let back: ServerRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back.renewals, 2);
    }

    #[test]
    fn certificate_expired_is_a_401_and_the_csr_request_is_one_field() {
        assert_eq!(ErrorCode::CertificateExpired.status(), 401);
        assert_eq!(
            serde_json::to_value(ErrorCode::CertificateExpired).unwrap(),
            "certificate-expired"
        );
        let r: CsrRequest = serde_json::from_str(r#"{"csr":"PEM"}"#).unwrap();
        assert_eq!(r.csr, "PEM");
    }

    #[test]
    fn fingerprints() {
        let fp = key_fingerprint(b"spki");
        assert_eq!(fp.len(), 7 + 64);
        assert_eq!(short_fingerprint(&fp).len(), 14);
        assert_eq!(short_fingerprint("SHA256:3f7a91c20b4e99"), "3F7A-91C2-0B4E");
    }
}
