//! Impostor servers for the adversarial tests: real TLS on loopback with certificates made on
//! the fly, each one wrong in one way, recording every byte the agent sends them (after TLS,
//! so a request that carries the API key is seen in clear).

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// A certificate and its key.
pub struct Cert {
    pub der: CertificateDer<'static>,
    key: KeyPair,
    params: CertificateParams,
}

impl Cert {
    pub fn pem(&self) -> String {
        let lf = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        pem::encode_config(&pem::Pem::new("CERTIFICATE", self.der.to_vec()), lf)
    }

    /// The `primary-ca-sha256` that pins this certificate.
    pub fn sha256(&self) -> String {
        crate::sha256_hex(self.der.as_ref())
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// When a certificate is valid.
#[derive(Clone, Copy)]
pub enum Validity {
    Now,
    Expired,
    NotYet,
}

/// What a made-up certificate looks like.
pub struct Spec<'a> {
    pub names: &'a [&'a str],
    pub validity: Validity,
    pub ca: bool,
    pub server_auth: bool,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            names: &["127.0.0.1"],
            validity: Validity::Now,
            ca: false,
            server_auth: true,
        }
    }
}

fn params(common_name: &str, spec: &Spec<'_>) -> CertificateParams {
    let names: Vec<String> = spec.names.iter().map(|n| n.to_string()).collect();
    let mut p = CertificateParams::new(names).expect("certificate names");
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    p.distinguished_name = dn;
    let (from, to) = match spec.validity {
        Validity::Now => (date_time_ymd(2020, 1, 1), date_time_ymd(2090, 1, 1)),
        Validity::Expired => (date_time_ymd(2020, 1, 1), date_time_ymd(2021, 1, 1)),
        Validity::NotYet => (date_time_ymd(2089, 1, 1), date_time_ymd(2090, 1, 1)),
    };
    p.not_before = from;
    p.not_after = to;
    p.is_ca = if spec.ca {
        IsCa::Ca(BasicConstraints::Unconstrained)
    } else {
        IsCa::ExplicitNoCa
    };
    p.extended_key_usages = if spec.server_auth {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    p
}

/// A CA (the customer's private CA, or an attacker's).
pub fn ca(common_name: &str) -> Cert {
    let key = KeyPair::generate().expect("key pair");
    let spec = Spec {
        names: &[],
        ca: true,
        ..Spec::default()
    };
    let mut p = params(common_name, &spec);
    p.extended_key_usages.clear();
    let der = p.self_signed(&key).expect("self-signed CA").der().clone();
    Cert {
        der,
        key,
        params: p,
    }
}

/// A self-signed certificate (an attacker's own, or a primary without a CA).
pub fn self_signed(spec: Spec<'_>) -> Cert {
    let key = KeyPair::generate().expect("key pair");
    let p = params("primary", &spec);
    let der = p.self_signed(&key).expect("self-signed").der().clone();
    Cert {
        der,
        key,
        params: p,
    }
}

/// A certificate signed by `issuer`.
pub fn issued_by(issuer: &Cert, spec: Spec<'_>) -> Cert {
    let key = KeyPair::generate().expect("key pair");
    let p = params("primary", &spec);
    let der = p
        .signed_by(&key, &issuer.issuer())
        .expect("signed certificate")
        .der()
        .clone();
    Cert {
        der,
        key,
        params: p,
    }
}

/// How an impostor answers once a TLS connection is up (if the agent lets it get that far).
#[derive(Clone)]
pub enum Answer {
    /// Like the primary: `/health` is fine, everything else says the account exists (so an
    /// agent that trusts it goes on to send the key).
    Primary,
    /// A 301 to this location.
    Redirect(String),
    /// Announces and streams this many bytes of body.
    HugeBody(u64),
    /// A status line, then header lines forever.
    EndlessHeaders,
    /// Headers, then one byte of body a second.
    Drip,
    /// 200 with this body (malformed, nested JSON).
    Json(Vec<u8>),
    /// 200 with `Content-Encoding: gzip` and this body.
    Gzip(Vec<u8>),
}

/// What the impostor is.
pub enum Kind {
    /// TLS with this chain (end-entity first) and the end-entity's key.
    Tls {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        answer: Answer,
    },
    /// Plain TCP HTTP (a redirect target on http://).
    Plain,
    /// Answers any ClientHello with a TLS 1.0 ServerHello: a server that speaks nothing newer.
    Tls10Only,
}

impl Kind {
    /// TLS with `leaf` (and these further certificates in its chain).
    pub fn tls(leaf: &Cert, more: &[&Cert], answer: Answer) -> Kind {
        Kind::tls_with(leaf, more.iter().map(|c| c.der.clone()).collect(), answer)
    }

    /// TLS with `leaf` followed by certificates someone else made.
    pub fn tls_with(leaf: &Cert, more: Vec<CertificateDer<'static>>, answer: Answer) -> Kind {
        let mut chain = vec![leaf.der.clone()];
        chain.extend(more);
        Kind::Tls {
            chain,
            key: leaf.key_der(),
            answer,
        }
    }
}

/// A running impostor on 127.0.0.1 (or another loopback address). Stops when dropped.
pub struct Impostor {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    sent: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Impostor {
    pub fn start(kind: Kind) -> Impostor {
        Impostor::start_on("127.0.0.1:0", kind)
    }

    pub fn start_on(bind: &str, kind: Kind) -> Impostor {
        let listener = TcpListener::bind(bind).expect("binding the impostor");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let kind = Arc::new(kind);
        let tls = match &*kind {
            Kind::Tls { chain, key, .. } => Some(Arc::new(
                rustls::ServerConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain.clone(), key.clone_key())
                .expect("impostor TLS configuration"),
            )),
            _ => None,
        };
        let thread = {
            let (received, sent, connections, stop) = (
                received.clone(),
                sent.clone(),
                connections.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            connections.fetch_add(1, Ordering::Relaxed);
                            let conn = Conn {
                                received: received.clone(),
                                sent: sent.clone(),
                                stop: stop.clone(),
                            };
                            let (kind, tls) = (kind.clone(), tls.clone());
                            std::thread::spawn(move || conn.serve(stream, &kind, tls));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Impostor {
            addr,
            received,
            sent,
            connections,
            stop,
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every byte the agent sent, after TLS where there was TLS.
    pub fn received(&self) -> Vec<u8> {
        self.received.lock().unwrap().clone()
    }

    /// Whether `needle` appears in what the agent sent.
    pub fn heard(&self, needle: &str) -> bool {
        let got = self.received();
        got.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    /// Bytes of answer the agent's end of the connection accepted.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Conn {
    received: Arc<Mutex<Vec<u8>>>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

/// How long one impostor connection may live: longer than any agent deadline in the tests.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

impl Conn {
    fn serve(self, stream: TcpStream, kind: &Kind, tls: Option<Arc<rustls::ServerConfig>>) {
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        match (kind, tls) {
            (Kind::Tls { answer, .. }, Some(config)) => {
                let Ok(conn) = rustls::ServerConnection::new(config) else {
                    return;
                };
                let mut s = rustls::StreamOwned::new(conn, stream);
                self.http(&mut s, answer);
            }
            (Kind::Plain, _) => {
                let mut s = stream;
                self.http(&mut s, &Answer::Primary);
            }
            (Kind::Tls10Only, _) => self.tls10(stream),
            _ => {}
        }
    }

    fn record(&self, bytes: &[u8]) {
        self.received.lock().unwrap().extend_from_slice(bytes);
    }

    fn write(&self, s: &mut impl Write, bytes: &[u8]) -> bool {
        match s.write_all(bytes).and_then(|_| s.flush()) {
            Ok(()) => {
                self.sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// One read, recorded: `Some(0)` when nothing came within the read timeout, `None` when
    /// the peer is gone.
    fn read_some(&self, s: &mut impl Read, buf: &mut [u8]) -> Option<usize> {
        match s.read(buf) {
            Ok(0) => None,
            Ok(n) => {
                self.record(&buf[..n]);
                Some(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Some(0)
            }
            Err(_) => None,
        }
    }

    /// Reads one request head (and its body, by Content-Length); `None` when the peer is gone.
    fn request(&self, s: &mut impl Read) -> Option<()> {
        let started = std::time::Instant::now();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            if self.stop.load(Ordering::Relaxed) || started.elapsed() > CONNECTION_LIFETIME {
                return None;
            }
            let n = self.read_some(s, &mut buf)?;
            head.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let end = text.find("\r\n\r\n").unwrap() + 4;
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut have = head.len() - end;
        while have < length {
            if self.stop.load(Ordering::Relaxed) || started.elapsed() > CONNECTION_LIFETIME {
                return None;
            }
            have += self.read_some(s, &mut buf)?;
        }
        Some(())
    }

    fn http(&self, s: &mut (impl Read + Write), answer: &Answer) {
        while self.request(s).is_some() {
            let date = httpdate::fmt_http_date(std::time::SystemTime::now());
            let ok = |body: &[u8], extra: &str| {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: {date}\r\n{extra}content-length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                r.extend_from_slice(body);
                r
            };
            let keep_going = match answer {
                Answer::Primary => self.write(
                    s,
                    &ok(
                        br#"{"status":"ok","version":"1.0","account":"acme.example","key_kind":"full","auto_trust":false}"#,
                        "",
                    ),
                ),
                Answer::Redirect(to) => self.write(
                    s,
                    format!("HTTP/1.1 301 Moved Permanently\r\nlocation: {to}\r\ndate: {date}\r\ncontent-length: 0\r\n\r\n")
                        .as_bytes(),
                ),
                Answer::Json(body) => self.write(s, &ok(body, "")),
                Answer::Gzip(body) => self.write(s, &ok(body, "content-encoding: gzip\r\n")),
                Answer::HugeBody(n) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: {date}\r\ncontent-length: {n}\r\n\r\n["
                    );
                    let chunk = vec![b' '; 64 * 1024];
                    self.write(s, head.as_bytes()) && (0..n / chunk.len() as u64).all(|_| self.write(s, &chunk))
                }
                Answer::EndlessHeaders => {
                    let line = format!("x-padding: {}\r\n", "a".repeat(1000));
                    self.write(s, b"HTTP/1.1 200 OK\r\n")
                        && (0..1 << 20).all(|_| {
                            !self.stop.load(Ordering::Relaxed) && self.write(s, line.as_bytes())
                        })
                }
                Answer::Drip => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ndate: {date}\r\ncontent-length: 1000\r\n\r\n"
                    );
                    self.write(s, head.as_bytes())
                        && (0..60).all(|_| {
                            std::thread::sleep(Duration::from_secs(1));
                            !self.stop.load(Ordering::Relaxed) && self.write(s, b" ")
                        })
                }
            };
            if !keep_going {
                return;
            }
        }
    }

    /// Reads the ClientHello and answers with a ServerHello for TLS 1.0
    /// (TLS_RSA_WITH_AES_128_CBC_SHA), as a server that knows nothing newer does.
    fn tls10(&self, mut stream: TcpStream) {
        let mut buf = [0u8; 4096];
        if let Ok(n) = stream.read(&mut buf) {
            self.record(&buf[..n]);
        }
        let mut hello = vec![0x03, 0x01];
        hello.extend_from_slice(&[0x5a; 32]);
        hello.extend_from_slice(&[0x00, 0x00, 0x2f, 0x00]);
        let mut handshake = vec![0x02, 0x00, 0x00, hello.len() as u8];
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
        record.extend_from_slice(&handshake);
        self.write(&mut stream, &record);
        let _ = stream.read(&mut buf);
    }
}
