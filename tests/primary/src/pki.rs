//! Certificates: the simulator's own CA and TLS certificate, one CA per account, and signing
//! a server's CSR when it is authorized.

use anyhow::{Context, Result, bail};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::net::IpAddr;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

/// A CA certificate and its key, both PEM.
pub struct Ca {
    pub cert: String,
    pub key: String,
}

fn serial() -> SerialNumber {
    let bytes: [u8; 16] = rand::random();
    let mut bytes = bytes.to_vec();
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

pub fn new_ca(common_name: &str) -> Result<Ca> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = OffsetDateTime::now_utc() - Duration::days(1);
    params.not_after = OffsetDateTime::now_utc() + Duration::days(3650);
    params.serial_number = Some(serial());
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issuer(ca: &Ca) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(&ca.key).context("reading the CA key")?;
    Issuer::from_ca_cert_pem(&ca.cert, key).context("reading the CA certificate")
}

/// A TLS server certificate for `names` (DNS names or IP addresses), signed by `ca`, valid
/// around now plus `skew_secs` (a simulated wrong clock).
pub fn server_cert(ca: &Ca, names: &[String], skew_secs: i64) -> Result<(String, String)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().map(String::as_str).unwrap_or("primary"),
    );
    params.distinguished_name = dn;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(n.clone().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc() + Duration::seconds(skew_secs);
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(825);
    params.serial_number = Some(serial());
    let cert = params.signed_by(&key, &issuer(ca)?)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Checks a CSR (well-formed, signature valid) and returns the fingerprint of its public key.
pub fn csr_fingerprint(csr_pem: &str) -> Result<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate signing request: {e}"))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| anyhow::anyhow!("not a certificate signing request: {e}"))?;
    csr.verify_signature()
        .map_err(|_| anyhow::anyhow!("the request's signature does not match its key"))?;
    Ok(gateway_protocol::key_fingerprint(
        csr.certification_request_info.subject_pki.raw,
    ))
}

/// The default lifetime of the client certificates the simulator signs (`serve
/// --cert-lifetime`): a year.
pub const DEFAULT_LIFETIME_SECS: i64 = 365 * 24 * 3600;

/// Signs a server's CSR with the account's CA: a client certificate whose common name is the
/// server id, valid from `now` minus a tenth of `lifetime_secs` (at most an hour, for a clock
/// a little behind) to `now` plus `lifetime_secs`, with a new serial number.
pub fn sign_csr(
    ca: &Ca,
    csr_pem: &str,
    server_id: &str,
    account: &str,
    lifetime_secs: i64,
) -> Result<String> {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem).context("reading the CSR")?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, server_id);
    dn.push(DnType::OrganizationName, account);
    csr.params.distinguished_name = dn;
    csr.params.is_ca = IsCa::ExplicitNoCa;
    csr.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    csr.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = OffsetDateTime::from_unix_timestamp(crate::db::now())?;
    let lifetime = lifetime_secs.max(1);
    csr.params.not_before = now - Duration::seconds((lifetime / 10).min(3600));
    csr.params.not_after = now + Duration::seconds(lifetime);
    csr.params.serial_number = Some(serial());
    Ok(csr.signed_by(&issuer(ca)?)?.pem())
}

/// The notAfter of a certificate (DER), Unix seconds.
pub fn not_after(cert_der: &[u8]) -> Result<i64> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| anyhow::anyhow!("reading the certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The notAfter of a certificate (PEM), Unix seconds.
pub fn pem_not_after(cert_pem: &str) -> Result<i64> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    not_after(der.as_ref())
}

/// The server id (common name) and key fingerprint of a client certificate.
pub fn client_identity(cert_der: &[u8]) -> Result<(String, String)> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der)
        .map_err(|e| anyhow::anyhow!("reading the client certificate: {e}"))?;
    let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    else {
        bail!("the client certificate has no common name");
    };
    Ok((
        cn.to_string(),
        gateway_protocol::key_fingerprint(cert.tbs_certificate.subject_pki.raw),
    ))
}
