//! Talking to the primary: resolve its name, TCP, TLS (the system's CA bundle plus the seed's
//! CA, or a SHA-256 pin), then the `/api/v1` calls. Every failure becomes a [`Failure`] with a
//! stable code, a fix, and a class (permanent or transient), as docs/provisioning.md lists.

use crate::failure::{Code, Failure};
use crate::protocol::{
    API_PREFIX, AccountInfo, CertificateBundle, ErrorBody, ErrorCode, Health, KeyKind,
    RegisterResponse, Registration, SecureHello, ServerRecord,
};
use crate::proxy::{NoProxy, Proxy, TunnelFault};
use crate::root::Root;
use crate::secret::Secret;
use crate::settings::Settings;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use url::Url;

/// Debian's bundle of the system's trusted CAs (package ca-certificates).
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// systemd-timesyncd's mark that NTP has synchronized the clock (this boot).
const TIMESYNC_SYNCHRONIZED: &str = "/run/systemd/timesync/synchronized";
/// A clock this far from the primary's is reported as wrong.
const CLOCK_TOLERANCE: Duration = Duration::from_secs(300);
/// The most the agent reads of one answer (the largest, a certificate bundle, is a few KiB).
const MAX_RESPONSE: usize = 256 * 1024;

/// Where the primary is and how to trust it. The state file keeps it (key `primary`) so that
/// the trust step reaches the same primary after a reboot, in the released agent's form: the
/// address and nameservers as text, the pin as hex, the timeouts as whole seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(with = "saved::address")]
    pub url: Url,
    /// PEM of extra CA certificates to trust (the seed's primary-ca).
    pub ca_pem: Option<String>,
    #[serde(default, with = "saved::pin")]
    pub pin: Option<[u8; 32]>,
    pub nameservers: Vec<SocketAddr>,
    #[serde(rename = "connect_timeout_secs", with = "saved::seconds")]
    pub connect_timeout: Duration,
    #[serde(rename = "request_timeout_secs", with = "saved::seconds")]
    pub request_timeout: Duration,
    pub insecure_http: bool,
    /// The HTTP proxy, if one is set. Its password is not in the state file: the state's
    /// reader restores it from [`crate::state::PROXY_PASSWORD_FILE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<Proxy>,
    /// The hosts reached without the proxy.
    #[serde(default, skip_serializing_if = "NoProxy::is_empty")]
    pub no_proxy: NoProxy,
}

/// How the state file writes an [`Endpoint`]'s values. A value that does not read back makes
/// the whole state file damaged ([`Code::StateCorrupt`]), its message naming the value.
mod saved {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};

    fn unreadable<E: Error>(what: &str) -> E {
        E::custom(format!("the saved primary {what} is unreadable"))
    }

    pub mod address {
        use super::*;

        pub fn serialize<S: Serializer>(url: &::url::Url, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_str(url.as_str())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<::url::Url, D::Error> {
            let text = String::deserialize(d)?;
            ::url::Url::parse(&text).map_err(|_| unreadable("address"))
        }
    }

    /// The SHA-256 pin as 64 hex digits.
    pub mod pin {
        use super::*;

        pub fn serialize<S: Serializer>(pin: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
            match pin {
                Some(p) => s.serialize_some(&crate::protocol::hex::encode(p)),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u8; 32]>, D::Error> {
            let Some(text) = Option::<String>::deserialize(d)? else {
                return Ok(None);
            };
            let out = crate::protocol::hex::decode(&text).ok_or_else(|| unreadable("pin"))?;
            Ok(Some(out))
        }
    }

    /// A timeout as whole seconds (settings give whole seconds, at least one).
    pub mod seconds {
        use super::*;
        use std::time::Duration;

        pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_u64(d.as_secs())
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
            Ok(Duration::from_secs(u64::deserialize(d)?.max(1)))
        }
    }
}

impl Endpoint {
    /// The longest one attempt on the primary takes (a connection and two requests): what a
    /// retry extends systemd's start timeout by beyond its wait ([`crate::retry::Report`]).
    pub fn attempt_time(&self) -> Duration {
        self.connect_timeout + self.request_timeout * 2
    }

    pub fn from_settings(s: &Settings) -> Endpoint {
        Endpoint {
            url: s.primary.clone(),
            ca_pem: s.primary_ca.clone(),
            pin: s.primary_ca_sha256,
            nameservers: s.nameservers.clone(),
            connect_timeout: s.connect_timeout,
            request_timeout: s.request_timeout,
            insecure_http: s.insecure_http,
            proxy: s.proxy.clone(),
            no_proxy: s.no_proxy.clone(),
        }
    }

    /// The proxy the primary is reached through: the `proxy` setting, unless `no-proxy`
    /// names the primary's host.
    pub fn via_proxy(&self) -> Option<&Proxy> {
        let host = self.url.host_str().unwrap_or_default();
        self.proxy.as_ref().filter(|_| !self.no_proxy.matches(host))
    }

    /// `host:port` of the primary, as a CONNECT request names it.
    fn target(&self) -> String {
        let port = self.url.port_or_known_default().unwrap_or(443);
        format!("{}:{port}", self.url.host_str().unwrap_or_default())
    }

    /// `primary-ca-sha256` as the seed gives it (hex), if there is a pin.
    pub fn pin_hex(&self) -> Option<String> {
        self.pin.map(|p| crate::protocol::hex::encode(&p))
    }

    fn host(&self) -> String {
        match self.url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(h) => h.to_string(),
            None => String::new(),
        }
    }
}

/// A client certificate and key (PEM), for the mutual-TLS call.
pub struct ClientIdentity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// How the primary's certificate is trusted; docs/security.md says what each one proves.
#[derive(Debug)]
enum Trust {
    /// The system's CAs plus `primary-ca`: the web PKI checks (a chain by signature to one of
    /// them, the primary's name, valid now, a server certificate). `None`: no CA at all.
    Roots(Option<Arc<WebPkiServerVerifier>>),
    /// `primary-ca-sha256`: the certificate with this SHA-256 is either the primary's own
    /// (the end-entity, exactly) or the only trust anchor its chain must reach by signature,
    /// with the web PKI checks above. The pinned CA may come from the chain the server sends
    /// or from `primary-ca`.
    Pin(Pin),
    /// Anything: only to read the primary's `Date` after a certificate time error (a plain
    /// health request, nothing secret sent).
    AnyForDate,
}

/// `primary-ca-sha256`, and the certificates of `primary-ca` where the pinned CA may be.
#[derive(Debug)]
struct Pin {
    sha256: [u8; 32],
    local: Vec<CertificateDer<'static>>,
}

/// The pinned CA is in the chain, but the server's certificate does not chain to it.
#[derive(Debug)]
struct PinnedCaDidNotSign;

impl std::fmt::Display for PinnedCaDidNotSign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the pinned CA did not sign the server's certificate")
    }
}

impl std::error::Error for PinnedCaDidNotSign {}

#[derive(Debug)]
struct Verifier {
    trust: Trust,
    /// The certificate that matched the pin, for the gateway to trust as well.
    pinned: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    /// A pinned end-entity's name and dates are reported once per client, not checked.
    warned: std::sync::atomic::AtomicBool,
    provider: Arc<CryptoProvider>,
}

impl Verifier {
    /// The web PKI verifier with `anchor` as its only root.
    fn anchored(
        &self,
        anchor: &CertificateDer<'_>,
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))
    }

    fn remember(&self, cert: &CertificateDer<'_>) {
        if let Ok(mut slot) = self.pinned.lock() {
            *slot = Some(cert.as_ref().to_vec());
        }
    }

    /// A pinned end-entity: the handshake proves the server holds its key, which is the whole
    /// proof. Its name and validity are looked at only to warn (a self-signed primary's name
    /// or dates are often wrong; the administrator should still hear about it).
    fn warn_about_pinned_leaf(
        &self,
        leaf: &CertificateDer<'_>,
        name: &ServerName<'_>,
        now: UnixTime,
    ) {
        if self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let Ok(itself) = self.anchored(leaf) else {
            return;
        };
        let host = name.to_str();
        let said = match itself.verify_server_cert(leaf, &[], name, &[], now) {
            Err(rustls::Error::InvalidCertificate(e)) => match e {
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("the pinned certificate of {host} is not issued for that name")
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    format!("the pinned certificate of {host} has expired")
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    format!("the pinned certificate of {host} is not valid yet")
                }
                _ => return,
            },
            _ => return,
        };
        log::warn!(
            "{said}: accepted because it is exactly the pinned certificate; renew it with the right name and dates, then update primary-ca-sha256"
        );
    }

    fn verify_pinned(
        &self,
        pin: &Pin,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let matches = |c: &&CertificateDer<'_>| Sha256::digest(c.as_ref()).as_slice() == pin.sha256;
        if matches(&end_entity) {
            self.remember(end_entity);
            self.warn_about_pinned_leaf(end_entity, server_name, now);
            return Ok(ServerCertVerified::assertion());
        }
        let Some(anchor) = intermediates.iter().chain(&pin.local).find(matches) else {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        };
        let verdict = self.anchored(anchor)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp,
            now,
        );
        match verdict {
            Ok(ok) => {
                self.remember(anchor);
                Ok(ok)
            }
            Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::BadSignature,
            )) => Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinnedCaDidNotSign)),
            ))),
            Err(e) => Err(e),
        }
    }
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.trust {
            Trust::AnyForDate => Ok(ServerCertVerified::assertion()),
            Trust::Pin(pin) => {
                self.verify_pinned(pin, end_entity, intermediates, server_name, ocsp, now)
            }
            Trust::Roots(Some(v)) => {
                v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            }
            Trust::Roots(None) => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_config(
    root: &Root,
    ep: &Endpoint,
    identity: Option<&ClientIdentity>,
    accept_any: bool,
    pinned: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) -> Result<rustls::ClientConfig, Failure> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let local: Vec<CertificateDer<'static>> = ep
        .ca_pem
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(Result::ok))
        .collect();
    let trust = if accept_any {
        Trust::AnyForDate
    } else if let Some(pin) = ep.pin {
        Trust::Pin(Pin { sha256: pin, local })
    } else {
        let mut roots = RootCertStore::empty();
        if let Ok(bundle) = std::fs::read(root.path(SYSTEM_CA_BUNDLE)) {
            let certs = CertificateDer::pem_slice_iter(&bundle).filter_map(Result::ok);
            roots.add_parsable_certificates(certs);
        }
        roots.add_parsable_certificates(local);
        if roots.is_empty() {
            Trust::Roots(None)
        } else {
            Trust::Roots(Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(Failure::internal)?,
            ))
        }
    };
    let verifier = Arc::new(Verifier {
        trust,
        pinned,
        warned: Default::default(),
        provider: provider.clone(),
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(Failure::internal)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(id.cert_pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(Failure::internal)?;
            let key =
                PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes()).map_err(Failure::internal)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(Failure::internal)?
        }
    };
    Ok(config)
}

/// A connection to the primary, its name already resolved.
pub struct Primary {
    endpoint: Endpoint,
    root: Root,
    http: reqwest::Client,
    /// Context for messages: the account domain being validated.
    pub account: String,
    pinned: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

/// The primary's addresses, by the agent's own DNS lookup; none through a proxy, which
/// resolves the name itself (in a network whose only way out is the proxy, the box's own DNS
/// may not know the primary at all).
async fn resolve(root: &Root, ep: &Endpoint) -> Result<Vec<SocketAddr>, Failure> {
    if ep.via_proxy().is_some() {
        return Ok(Vec::new());
    }
    let host = ep.host();
    let port = ep.url.port_or_known_default().unwrap_or(443);
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolver = crate::dns::resolver(root, &ep.nameservers).map_err(|why| {
        Failure::new(
            Code::PrimaryDns,
            format!("cannot resolve the primary's name {host}: {why}"),
        )
    })?;
    let lookup = resolver.lookup_ip(format!("{host}.")).await.map_err(|e| {
        let why = if e.is_no_records_found() || e.is_nx_domain() {
            "no such name in DNS".to_string()
        } else {
            e.to_string()
        };
        Failure::new(
            Code::PrimaryDns,
            format!("cannot resolve the primary's name {host}: {why}"),
        )
    })?;
    Ok(lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect())
}

fn build_client(
    root: &Root,
    ep: &Endpoint,
    addrs: &[SocketAddr],
    identity: Option<&ClientIdentity>,
    accept_any: bool,
    pinned: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
) -> Result<reqwest::Client, Failure> {
    let mut b = reqwest::Client::builder()
        .use_preconfigured_tls(tls_config(root, ep, identity, accept_any, pinned)?)
        .connect_timeout(ep.connect_timeout)
        .timeout(ep.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .https_only(!ep.insecure_http)
        .user_agent(concat!("gateway-firstboot/", env!("CARGO_PKG_VERSION")));
    let host = ep.host();
    if let Some(proxy) = ep.via_proxy() {
        // The only proxy, set explicitly: reqwest reads no environment (`no_proxy()` above).
        b = b.proxy(proxy.for_reqwest()?);
    } else if host.parse::<IpAddr>().is_err() {
        b = b.resolve_to_addrs(&host, addrs);
    }
    b.build().map_err(Failure::internal)
}

/// The messages of an error and its sources, outermost first, looking inside `io::Error`s.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        out.push(e.to_string());
        cur = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    out
}

/// Finds the first error of type `E` in a chain, looking inside `io::Error`s too.
fn find<'a, E: std::error::Error + 'static>(
    err: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(hit) = e.downcast_ref::<E>() {
            return Some(hit);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(hit) = find::<E>(inner)
        {
            return Some(hit);
        }
        cur = e.source();
    }
    None
}

/// What went wrong in a TLS certificate check, before the clock is looked at.
enum CertProblem {
    /// Expired (`true`) or not valid yet: the certificate, or this server's clock.
    Time {
        expired: bool,
    },
    Other(Failure),
}

/// Text the network chose (a certificate's names, a redirect's target, an error message),
/// made safe for a console: no control characters, at most `max` characters.
pub(crate) fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(max)
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

fn cert_problem(e: &CertificateError, host: &str) -> CertProblem {
    let permanent = |code: Code, m: String| CertProblem::Other(Failure::new(code, m));
    let not_server = |what: &str| {
        permanent(
            Code::TlsNotServerCertificate,
            format!("the certificate of {host} {what}, so it cannot prove a server's identity"),
        )
    };
    match e {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
            CertProblem::Time { expired: true }
        }
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            CertProblem::Time { expired: false }
        }
        CertificateError::ApplicationVerificationFailure => permanent(
            Code::TlsPinMismatch,
            format!("no certificate {host} presented matches primary-ca-sha256"),
        ),
        CertificateError::Other(o) if o.0.downcast_ref::<PinnedCaDidNotSign>().is_some() => {
            permanent(
                Code::TlsPinNotIssuer,
                format!(
                    "{host} sent the pinned CA certificate, but its own certificate is not signed by it"
                ),
            )
        }
        CertificateError::Other(o)
            if matches!(
                o.0.downcast_ref::<webpki::Error>(),
                Some(webpki::Error::CaUsedAsEndEntity)
            ) =>
        {
            not_server("is a CA certificate")
        }
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            not_server("is not for TLS servers (no serverAuth usage)")
        }
        CertificateError::UnknownIssuer | CertificateError::BadSignature => permanent(
            Code::TlsUnknownIssuer,
            format!("the certificate of {host} is not signed by a trusted CA"),
        ),
        CertificateError::NotValidForNameContext { presented, .. } => permanent(
            Code::TlsWrongName,
            format!(
                "the certificate of {host} is not for that name (it names {})",
                printable(&presented.join(", "), 120)
            ),
        ),
        CertificateError::NotValidForName => permanent(
            Code::TlsWrongName,
            format!("the certificate of {host} is not for that name"),
        ),
        other => permanent(
            Code::TlsCertificate,
            format!(
                "the certificate of {host} is not acceptable: {}",
                printable(&format!("{other:?}"), 160)
            ),
        ),
    }
}

/// A TLS failure outside the certificate.
fn handshake_problem(e: &rustls::Error, host: &str) -> Failure {
    use rustls::{AlertDescription, PeerIncompatible};
    match e {
        rustls::Error::PeerIncompatible(PeerIncompatible::ServerDoesNotSupportTls12Or13)
        | rustls::Error::AlertReceived(AlertDescription::ProtocolVersion) => Failure::new(
            Code::TlsVersion,
            format!("{host} speaks only TLS versions older than 1.2"),
        ),
        other => Failure::new(
            Code::TlsHandshake,
            format!("the TLS handshake with {host} failed: {other}"),
        ),
    }
}

impl Primary {
    /// Resolves the primary's name and prepares a client (no traffic to the primary yet).
    pub async fn connect(
        root: &Root,
        endpoint: &Endpoint,
        account: &str,
        identity: Option<&ClientIdentity>,
    ) -> Result<Primary, Failure> {
        let addrs = resolve(root, endpoint).await?;
        let pinned = Arc::new(std::sync::Mutex::new(None));
        let http = build_client(root, endpoint, &addrs, identity, false, pinned.clone())?;
        Ok(Primary {
            endpoint: endpoint.clone(),
            root: root.clone(),
            http,
            account: account.to_string(),
            pinned,
        })
    }

    /// The certificate that matched `primary-ca-sha256`, as PEM, once a connection was made:
    /// what the gateway needs to trust to reach the same primary.
    /// Where this connection goes, and how.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn pinned_certificate_pem(&self) -> Option<String> {
        let der = self.pinned.lock().ok()?.clone()?;
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        Some(pem::encode_config(&pem::Pem::new("CERTIFICATE", der), lf))
    }

    fn url(&self, path: &str) -> Result<Url, Failure> {
        self.endpoint
            .url
            .join(&format!("{}{path}", API_PREFIX.trim_start_matches('/')))
            .map_err(Failure::internal)
    }

    fn host(&self) -> String {
        self.endpoint.host()
    }

    /// Maps a failure to send or receive.
    async fn transport_failure(&self, e: &reqwest::Error) -> Failure {
        if let Some(proxy) = self.endpoint.via_proxy()
            && let Some(failure) = self.proxy_failure(proxy, e).await
        {
            return failure;
        }
        let host = self.host();
        if let Some(tls) = find::<rustls::Error>(e) {
            return match tls {
                rustls::Error::InvalidCertificate(c) => match cert_problem(c, &host) {
                    CertProblem::Other(f) => f,
                    CertProblem::Time { expired } => self.clock_or_certificate(expired).await,
                },
                other => handshake_problem(other, &host),
            };
        }
        if let Some(h) = find::<hyper::Error>(e)
            && h.is_parse()
        {
            // hyper names the kind only in a server build (is_parse_too_large); its message
            // says it, and tests/impostor.rs headers_that_never_end notices if that changes.
            return if h.to_string().contains("too large") {
                Failure::new(
                    Code::PrimaryResponseTooLarge,
                    format!("{host} sent an answer whose head never ends"),
                )
            } else {
                Failure::new(
                    Code::NotAPrimary,
                    format!("{host} answered with something that is not HTTP"),
                )
            };
        }
        if let Some(io) = find::<std::io::Error>(e) {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => {
                    return Failure::new(
                        Code::PrimaryRefused,
                        format!("{host} refused the connection"),
                    );
                }
                HostUnreachable | NetworkUnreachable | NetworkDown => {
                    return Failure::new(Code::PrimaryUnreachable, format!("no route to {host}"));
                }
                TimedOut => {
                    return Failure::new(
                        Code::PrimaryTimeout,
                        format!("{host} did not answer in time"),
                    );
                }
                ConnectionReset | ConnectionAborted | UnexpectedEof | BrokenPipe => {
                    return Failure::new(
                        Code::PrimaryReset,
                        format!("{host} closed the connection"),
                    );
                }
                _ => {}
            }
        }
        if e.is_timeout() {
            return Failure::new(
                Code::PrimaryTimeout,
                format!("{host} did not answer in time"),
            );
        }
        if e.is_connect() {
            return Failure::new(
                Code::PrimaryUnreachable,
                format!("cannot connect to {host}"),
            );
        }
        Failure::new(
            Code::PrimaryUnreachable,
            format!("talking to {host} failed: {}", without_url(e)),
        )
    }

    /// A failure of the proxy rather than of the primary: no connection to the proxy, or its
    /// refusal of the tunnel. `None` for anything inside the tunnel (the primary's TLS, its
    /// answers). Messages name the proxy by host:port, never its credentials.
    async fn proxy_failure(&self, proxy: &Proxy, e: &reqwest::Error) -> Option<Failure> {
        let address = &proxy.address;
        let target = self.endpoint.target();
        Some(match crate::proxy::classify(&error_chain(e)) {
            Some(TunnelFault::Auth) => crate::proxy::refusal(
                address,
                &target,
                Some((407, "Proxy Authentication Required".into())),
            ),
            Some(TunnelFault::Refused) => {
                let timeout = self.endpoint.connect_timeout;
                let status = crate::proxy::probe(proxy, &target, timeout).await;
                crate::proxy::refusal(address, &target, status)
            }
            Some(TunnelFault::NoConnection(why)) => Failure::new(
                Code::ProxyUnreachable,
                format!("cannot connect to the proxy {address}: {why}"),
            ),
            Some(TunnelFault::Broken) => Failure::new(
                Code::ProxyUnreachable,
                format!("the proxy {address} broke off before the tunnel to {target} was set up"),
            ),
            None if e.is_connect() && e.is_timeout() => Failure::new(
                Code::ProxyUnreachable,
                format!(
                    "no connection through the proxy {address} to {target} within {}s",
                    self.endpoint.connect_timeout.as_secs()
                ),
            ),
            None => return None,
        })
    }

    /// After a "certificate expired / not yet valid" error: asks the primary for its Date
    /// (a plain health request, nothing secret sent) to tell a wrong local clock from a bad
    /// certificate.
    async fn clock_or_certificate(&self, is_expired: bool) -> Failure {
        let host = self.host();
        let expired = if is_expired {
            Failure::new(
                Code::TlsExpired,
                format!("the certificate of {host} has expired"),
            )
        } else {
            Failure::new(
                Code::TlsNotYetValid,
                format!("the certificate of {host} is not valid yet"),
            )
        };
        let Ok(addrs) = resolve(&self.root, &self.endpoint).await else {
            return expired;
        };
        let Ok(probe) = build_client(
            &self.root,
            &self.endpoint,
            &addrs,
            None,
            true,
            Arc::default(),
        ) else {
            return expired;
        };
        let Ok(url) = self.url("/health") else {
            return expired;
        };
        let Ok(resp) = probe.get(url).send().await else {
            return expired;
        };
        match clock_skew(resp.headers()) {
            Some((skew, theirs)) if skew > CLOCK_TOLERANCE => {
                clock_wrong(skew, theirs, ", so its certificate looks invalid")
            }
            _ => expired,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(T, reqwest::header::HeaderMap), Failure> {
        let (body, headers) = self.exchange(req).await?;
        serde_json::from_slice(&body)
            .map(|v| (v, headers))
            .map_err(|e| {
                Failure::new(
                    Code::NotAPrimary,
                    format!(
                        "{} answered, but not with the registration protocol ({e})",
                        self.host()
                    ),
                )
            })
    }

    /// Sends `req`; a 2xx answer's body and headers, or the failure any other answer means.
    async fn exchange(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<(Vec<u8>, reqwest::header::HeaderMap), Failure> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_failure(&e).await),
        };
        let status = resp.status();
        let headers = resp.headers().clone();
        if status.is_redirection() {
            return Err(self.redirected(status.as_u16(), &headers));
        }
        let body = self.read_body(resp).await?;
        if status.is_success() {
            return Ok((body, headers));
        }
        let mut failure = self.error_failure(status.as_u16(), &body);
        failure.retry_after = retry_after(&headers);
        Err(failure)
    }

    /// The body, at most [`MAX_RESPONSE`] bytes: the primary's answers are small, and a
    /// server that sends more is not one to keep reading from.
    async fn read_body(&self, mut resp: reqwest::Response) -> Result<Vec<u8>, Failure> {
        let too_large = || {
            Failure::new(
                Code::PrimaryResponseTooLarge,
                format!(
                    "{} sent an answer larger than {} KiB, which no primary does",
                    self.host(),
                    MAX_RESPONSE / 1024
                ),
            )
        };
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_RESPONSE as u64)
        {
            return Err(too_large());
        }
        let mut body = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) if body.len() + chunk.len() > MAX_RESPONSE => {
                    return Err(too_large());
                }
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                Ok(None) => return Ok(body),
                Err(e) => return Err(self.transport_failure(&e).await),
            }
        }
    }

    /// A 3xx: never followed, so nothing (above all the API key) goes to an address other
    /// than the configured one.
    fn redirected(&self, status: u16, headers: &reqwest::header::HeaderMap) -> Failure {
        let target = headers
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(|v| printable(v, 160))
            .unwrap_or_else(|| "nowhere".into());
        Failure::new(
            Code::PrimaryRedirect,
            format!(
                "{} answered with a redirect (HTTP {status}) to {target}; the agent does not follow redirects",
                self.host()
            ),
        )
    }

    /// The failures of the credentials the request carried: the API key, the client
    /// certificate.
    fn credential_failure(&self, code: ErrorCode) -> Option<Failure> {
        use ErrorCode::*;
        Some(match code {
            KeyInvalid | Unauthenticated => {
                Failure::new(Code::KeyRejected, "the primary rejected the API key")
            }
            KeyExpired => Failure::new(Code::KeyExpired, "the API key has expired"),
            KeyIpNotAllowed => Failure::new(
                Code::KeyIpNotAllowed,
                "the API key may not be used from this server's address",
            ),
            KeyAccountMismatch => Failure::new(
                Code::KeyAccountMismatch,
                format!(
                    "the API key belongs to another account, not {}",
                    self.account
                ),
            ),
            KeyRestricted => Failure::new(
                Code::KeyRestricted,
                "the primary does not allow a restricted API key for this",
            ),
            CertificateExpired => Failure::new(
                Code::CertificateExpired,
                "the primary says this server's client certificate has expired",
            ),
            _ => return None,
        })
    }

    fn error_failure(&self, status: u16, body: &[u8]) -> Failure {
        let account = &self.account;
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let code = parsed.as_ref().map(|b| b.code);
        let said = parsed
            .as_ref()
            .map(|b| printable(&b.message, 200))
            .unwrap_or_default();
        if let Some(f) = code.and_then(|c| self.credential_failure(c)) {
            return f;
        }
        use ErrorCode::*;
        match code {
            Some(AccountUnknown) => Failure::new(
                Code::AccountUnknown,
                format!("the primary has no account with the domain name {account}"),
            ),
            Some(ServerRejected) => Failure::new(
                Code::ServerRejected,
                "an administrator rejected this server on the primary",
            ),
            Some(IdentityConflict) => Failure::new(
                Code::IdentityConflict,
                "the primary knows this machine as a trusted server with another key",
            ),
            Some(RateLimited) => Failure::new(Code::RateLimited, "the primary asked to slow down"),
            Some(NotFound) => Failure::with_fix(
                Code::NotAPrimary,
                format!(
                    "{} has no registration protocol at {}",
                    self.host(),
                    self.endpoint.url
                ),
                "check the primary address (host, port and any path) points at the primary server",
            ),
            Some(TokenInvalid) | Some(ServerUnknown) => Failure::new(
                Code::RegistrationLost,
                format!("the primary no longer knows this server ({said})"),
            ),
            _ if status == 429 => Failure::new(Code::RateLimited, "the primary asked to slow down"),
            _ if status >= 500 => Failure::new(
                Code::PrimaryError,
                format!(
                    "the primary failed (HTTP {status}{})",
                    if said.is_empty() {
                        String::new()
                    } else {
                        format!(": {said}")
                    }
                ),
            ),
            _ if parsed.is_none() => Failure::new(
                Code::NotAPrimary,
                format!(
                    "{} answered HTTP {status}, not the registration protocol",
                    self.host()
                ),
            ),
            _ => Failure::new(
                Code::Protocol,
                format!("the primary refused the request (HTTP {status}): {said}"),
            ),
        }
    }

    /// TLS, clock and liveness: `GET /health`. A clock further off than [`CLOCK_TOLERANCE`] is a `clock-wrong` failure even when the
    /// certificate happened to pass: retried (a transient failure) until NTP has set it, not
    /// registered with (the certificate the primary signs would start or end at a wrong time).
    pub async fn health(&self) -> Result<(), Failure> {
        let (_, headers): (Health, _) = self.call(self.http.get(self.url("/health")?)).await?;
        match clock_skew(&headers) {
            // NTP has set this server's clock: the primary's is the wrong one. Said, not waited
            // on (no NTP fix here would mend it).
            Some((skew, _))
                if skew > CLOCK_TOLERANCE && self.root.path(TIMESYNC_SYNCHRONIZED).exists() =>
            {
                log::warn!(
                    "the primary's clock is {}s away from this server's, which NTP has synchronized: going on",
                    skew.as_secs()
                );
                Ok(())
            }
            Some((skew, theirs)) if skew > CLOCK_TOLERANCE => Err(clock_wrong(skew, theirs, "")),
            _ => Ok(()),
        }
    }

    pub async fn account_info(&self, key: &Secret) -> Result<AccountInfo, Failure> {
        let url = self.url(&format!("/accounts/{}", self.account))?;
        Ok(self
            .call(self.http.get(url).bearer_auth(key.expose()))
            .await?
            .0)
    }

    pub async fn register(
        &self,
        key: &Secret,
        reg: &Registration,
    ) -> Result<RegisterResponse, Failure> {
        let url = self.url(&format!("/accounts/{}/servers", self.account))?;
        Ok(self
            .call(self.http.post(url).bearer_auth(key.expose()).json(reg))
            .await?
            .0)
    }

    pub async fn server(&self, id: &str, token: &Secret) -> Result<ServerRecord, Failure> {
        let url = self.url(&format!("/servers/{id}"))?;
        Ok(self
            .call(self.http.get(url).bearer_auth(token.expose()))
            .await?
            .0)
    }

    pub async fn certificate(
        &self,
        id: &str,
        token: &Secret,
    ) -> Result<CertificateBundle, Failure> {
        let url = self.url(&format!("/servers/{id}/certificate"))?;
        Ok(self
            .call(self.http.get(url).bearer_auth(token.expose()))
            .await?
            .0)
    }

    /// Deregisters server `id`: `DELETE /servers/{id}` with its token, or, without one, over
    /// mutual TLS (the `Primary` connected with the server's client identity). A primary that
    /// no longer knows the server answers 404, which is `registration-lost`.
    pub async fn deregister(&self, id: &str, token: Option<&Secret>) -> Result<(), Failure> {
        let url = self.url(&format!("/servers/{id}"))?;
        let req = match token {
            Some(token) => self.http.delete(url).bearer_auth(token.expose()),
            None => self.http.delete(url),
        };
        self.exchange(req).await.map(drop)
    }

    /// Renews server `id`'s certificate: `POST /servers/{id}/certificate` with a new CSR for
    /// the same key, over mutual TLS (the `Primary` connected with the current certificate,
    /// which must not have expired: `certificate-expired` otherwise).
    pub async fn renew(&self, id: &str, csr: &str) -> Result<CertificateBundle, Failure> {
        let url = self.url(&format!("/servers/{id}/certificate"))?;
        let body = crate::protocol::CsrRequest {
            csr: csr.to_string(),
        };
        Ok(self.call(self.http.post(url).json(&body)).await?.0)
    }

    /// Re-enrols server `id` once its certificate has expired: `POST /servers/{id}/enrolment`
    /// with the server token and a new CSR. The record goes back to waiting for Authorize.
    pub async fn reenrol(
        &self,
        id: &str,
        token: &Secret,
        csr: &str,
    ) -> Result<ServerRecord, Failure> {
        let url = self.url(&format!("/servers/{id}/enrolment"))?;
        let body = crate::protocol::CsrRequest {
            csr: csr.to_string(),
        };
        Ok(self
            .call(self.http.post(url).bearer_auth(token.expose()).json(&body))
            .await?
            .0)
    }

    /// Over mutual TLS (the `Primary` must have been connected with a client identity).
    pub async fn secure_hello(&self) -> Result<SecureHello, Failure> {
        Ok(self
            .call(self.http.get(self.url("/secure/hello")?))
            .await?
            .0)
    }
}

/// The primary reached, its health checked, the account and the API key accepted: what
/// [`connect_and_validate`] found. Each command says it in its own words.
pub struct Validated {
    /// The connection, to register through.
    pub primary: Primary,
    /// The account as the primary names it, the key's kind, whether it trusts servers at once.
    pub info: AccountInfo,
}

impl Validated {
    /// The key's kind as the messages say it.
    pub fn key_kind(&self) -> &'static str {
        match self.info.key_kind {
            KeyKind::Restricted => "restricted",
            KeyKind::Full => "full",
        }
    }
}

/// Reaches the primary (DNS, TCP, TLS, clock: `GET /health`) and validates the account domain
/// and the API key, without registering: the one check behind `check --online`, the
/// installer's answers and provisioning's connect step.
pub async fn connect_and_validate(
    root: &Root,
    endpoint: &Endpoint,
    account: &str,
    key: &Secret,
) -> Result<Validated, Failure> {
    let primary = Primary::connect(root, endpoint, account, None).await?;
    primary.health().await?;
    let info = primary.account_info(key).await?;
    Ok(Validated { primary, info })
}

/// `Retry-After` as seconds or an HTTP date.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    httpdate::parse_http_date(v)
        .ok()?
        .duration_since(SystemTime::now())
        .ok()
}

/// This server's clock is `skew` away from the primary's (`theirs`): `clock-wrong`, transient.
fn clock_wrong(skew: Duration, theirs: SystemTime, so: &str) -> Failure {
    Failure::new(
        Code::ClockWrong,
        format!(
            "this server's clock ({}) is {}s away from the primary's ({}){so}; waiting for NTP to set it",
            crate::state::now_rfc3339(),
            skew.as_secs(),
            httpdate::fmt_http_date(theirs)
        ),
    )
}

/// How far the primary's `Date` is from our clock, and its time.
fn clock_skew(headers: &reqwest::header::HeaderMap) -> Option<(Duration, SystemTime)> {
    let theirs =
        httpdate::parse_http_date(headers.get(reqwest::header::DATE)?.to_str().ok()?).ok()?;
    let now = SystemTime::now();
    let skew = now
        .duration_since(theirs)
        .or_else(|_| theirs.duration_since(now))
        .ok()?;
    Some((skew, theirs))
}

/// A reqwest error's text without the URL (which is ours anyway, but keeps messages short).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" for url ({url})"), "");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_dates() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(reqwest::header::RETRY_AFTER, later.parse().unwrap());
        let got = retry_after(&h).unwrap();
        assert!(
            got > Duration::from_secs(100) && got <= Duration::from_secs(120),
            "{got:?}"
        );
    }
}
