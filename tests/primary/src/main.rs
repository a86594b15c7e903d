//! gateway-primary-sim: the primary server's side of the registration protocol, for tests and
//! demos. See docs/protocol.md and tests/primary/README.md.

mod api;
mod capacity;
mod db;
mod faults;
mod pki;
mod requests;
mod stats;
mod ui;
mod verifier;

use anyhow::{Context, Result};
use axum::Router;
use axum::routing::{delete, get, post};
use clap::{Args, Parser, Subcommand};
use db::Db;
use faults::Faults;
use gateway_protocol::{KeyKind, TrustState, short_fingerprint};
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

#[derive(Parser)]
#[command(
    name = "gateway-primary-sim",
    version,
    about = "Simulator of the primary server's registration protocol"
)]
struct Cli {
    /// SQLite database holding accounts, keys, servers and faults
    #[arg(
        long,
        global = true,
        env = "GATEWAY_PRIMARY_SIM_DB",
        default_value = "primary-sim.db"
    )]
    db: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the API (/api/v1) and the web page (/ui) over HTTPS
    Serve(ServeArgs),
    /// Manage accounts
    #[command(subcommand)]
    Account(AccountCmd),
    /// Manage API keys
    #[command(subcommand)]
    Key(KeyCmd),
    /// Show the tree of accounts and their servers, or remove one
    Servers {
        /// Print the tree as JSON
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<ServersCmd>,
    },
    /// Authorize a server (by id, or a host name naming exactly one server)
    Authorize { server: String },
    /// Reject a server
    Reject { server: String },
    /// Inject faults into a running (or the next) server
    #[command(subcommand)]
    Faults(FaultsCmd),
    /// Print the API requests the last `serve` answered, one JSON line each (at, method,
    /// path, status, ms), from DB.requests.jsonl
    Requests,
    /// Sum up the request log of the last `serve` (DB.requests.jsonl), as JSON: requests by
    /// endpoint and status, the peak in flight, the peak in one second, the busiest seconds
    Stats {
        /// Only requests at or after this Unix time (seconds, fractions allowed)
        #[arg(long, value_name = "UNIX")]
        since: Option<f64>,
        /// Only requests before this Unix time
        #[arg(long, value_name = "UNIX")]
        until: Option<f64>,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen one is printed)
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Directory for the simulator's CA (ca.pem) and TLS certificate, created on first start
    #[arg(long)]
    tls_dir: PathBuf,
    /// DNS name or IP address the TLS certificate is for (repeat; localhost and loopback always)
    #[arg(long = "name")]
    names: Vec<String>,
    /// Set the deployment's default restricted API key (as baked into an image)
    #[arg(long)]
    default_key: Option<String>,
    /// Run with a clock this far off (2d, -3d): the Date header and the TLS certificate's
    /// validity follow it, which is how a wrong clock on the appliance looks from there
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    clock_skew: Option<String>,
    /// Shift only the TLS certificate's validity (-900d: expired), the clock stays right
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    cert_skew: Option<String>,
    /// Serve at most N API requests at once; answer the rest 429 + Retry-After at once, as a
    /// busy real service would (the fleet benchmark's primary)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    max_concurrent: Option<u64>,
    /// Lifetime of the client certificates the simulator signs, on Authorize and on renewal
    /// (5m, 90s, 365d); they are valid from a tenth of it (at most an hour) before the signing
    /// on. Kept in the database, so `authorize` from a shell signs with it too
    #[arg(long, value_name = "DURATION", default_value = "365d")]
    cert_lifetime: String,
    #[command(flatten)]
    faults: FaultArgs,
}

#[derive(Subcommand)]
enum ServersCmd {
    /// Remove a server (by id, or a host name naming exactly one server), as the web page's
    /// Remove button does: its token and certificate stop working, and the same machine
    /// registering again gets a new server id
    Remove { server: String },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// Add an account with its domain name (creates the account's CA)
    Add { domain: String },
    /// List accounts
    List,
}

#[derive(Subcommand)]
enum KeyCmd {
    /// Add an API key for an account and print it
    Add {
        domain: String,
        #[arg(long, value_parser = ["restricted", "full"])]
        kind: String,
        /// Servers registered with this key are trusted at once
        #[arg(long)]
        auto_trust: bool,
        /// Expiry: an RFC 3339 time, or a duration from now (90s, 2h)
        #[arg(long)]
        expires: Option<String>,
        /// Only clients in these networks may use the key (CIDR, comma-separated)
        #[arg(long)]
        allow_ip: Option<String>,
    },
    /// List keys, the default restricted key first
    List,
}

#[derive(Subcommand)]
enum FaultsCmd {
    /// Replace the faults with these
    Set(FaultArgs),
    /// Remove all faults
    Clear,
    /// Print the faults in force as JSON
    Show,
}

#[derive(Args, Default)]
struct FaultArgs {
    /// Delay every API response (250ms, 2s)
    #[arg(long, value_name = "DURATION")]
    latency: Option<String>,
    /// Answer this share of API requests with 503 (0-100)
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    error_percent: Option<u8>,
    /// Allow this many API requests a second; answer the rest 429 + Retry-After
    #[arg(long, value_name = "N")]
    rate_limit: Option<u32>,
    /// Retry-After seconds for 429s (default 1)
    #[arg(long, value_name = "SECONDS")]
    retry_after: Option<u64>,
    /// Refuse connections for this long from now (90s, 2m)
    #[arg(long, value_name = "DURATION", conflicts_with = "down_until")]
    down_for: Option<String>,
    /// Refuse connections until this RFC 3339 time
    #[arg(long, value_name = "TIME")]
    down_until: Option<String>,
    /// Start this share of API responses and never finish them (0-100)
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(0..=100))]
    hang_percent: Option<u8>,
    /// Hold the answer of every POST (a registration) this long after its change is committed
    /// (20s): a power cut then loses the answer, not the registration
    #[arg(long, value_name = "DURATION")]
    commit_delay: Option<String>,
}

fn parse_time(s: &str) -> Result<i64> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t.unix_timestamp());
    }
    let (sign, rest) = s.strip_prefix('-').map_or((1, s), |r| (-1, r));
    let ms = faults::parse_millis(rest).map_err(anyhow::Error::msg)?;
    Ok(db::now() + sign * (ms / 1000) as i64)
}

impl FaultArgs {
    fn to_faults(&self) -> Result<Faults> {
        let down_until = match (&self.down_for, &self.down_until) {
            (Some(d), _) => Some(
                db::now() + (faults::parse_millis(d).map_err(anyhow::Error::msg)? / 1000) as i64,
            ),
            (_, Some(t)) => Some(parse_time(t)?),
            _ => None,
        };
        Ok(Faults {
            latency_ms: self
                .latency
                .as_deref()
                .map(faults::parse_millis)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .unwrap_or(0),
            error_percent: self.error_percent.unwrap_or(0),
            rate_limit_per_second: self.rate_limit,
            retry_after_secs: self.retry_after,
            down_until,
            hang_percent: self.hang_percent.unwrap_or(0),
            commit_delay_ms: self
                .commit_delay
                .as_deref()
                .map(faults::parse_millis)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .unwrap_or(0),
        })
    }
}

/// What a handler knows about its connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The verified client certificate (DER), on mutual TLS.
    pub client_cert: Option<Vec<u8>>,
}

pub struct AppState {
    db: Mutex<Db>,
    faults: RwLock<Faults>,
    window: Mutex<faults::Window>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    tls: Mutex<Option<(i64, Arc<rustls::ServerConfig>)>>,
    /// DB.requests.jsonl, opened for appending (see requests.rs).
    request_log: Option<Mutex<std::fs::File>>,
    /// `serve --max-concurrent`, and the requests in flight (capacity.rs).
    max_concurrent: Option<usize>,
    in_flight: capacity::InFlight,
    /// `serve --cert-lifetime`, seconds.
    pub cert_lifetime: i64,
}

impl AppState {
    pub fn db(&self) -> MutexGuard<'_, Db> {
        self.db.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn refresh_faults(&self) {
        let json = self.db().faults_json().ok().flatten();
        let faults = json
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// The TLS configuration; rebuilt when accounts (whose CAs verify client certificates)
    /// were added, also by another process.
    fn tls_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        let (stamp, cas) = {
            let db = self.db();
            (
                db.accounts_stamp()?,
                db.accounts()?
                    .into_iter()
                    .map(|a| a.ca_cert)
                    .collect::<Vec<_>>(),
            )
        };
        let mut cached = self.tls.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, config)) = cached.as_ref()
            && *s == stamp
        {
            return Ok(config.clone());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = if cas.is_empty() {
            WebPkiClientVerifier::no_client_auth()
        } else {
            let mut roots = RootCertStore::empty();
            for pem in cas {
                roots.add(CertificateDer::from_pem_slice(pem.as_bytes())?)?;
            }
            verifier::AcceptExpired::wrap(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .allow_unauthenticated()
                    .build()?,
            )
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        *cached = Some((stamp, config.clone()));
        Ok(config)
    }
}

/// Loads the simulator's CA and server certificate from `dir`, creating them on first start
/// (and the certificate again when the names change).
fn load_tls(
    dir: &Path,
    names: &[String],
    skew_secs: i64,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut all: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let ca = match (read("ca.pem"), read("ca-key.pem")) {
        (Ok(cert), Ok(key)) => pki::Ca { cert, key },
        _ => {
            let ca = pki::new_ca("gateway-primary-sim CA")?;
            write_private(&dir.join("ca-key.pem"), &ca.key)?;
            std::fs::write(dir.join("ca.pem"), &ca.cert)?;
            ca
        }
    };
    let names_line = all.join(" ");
    let (cert, key) = match (
        read("server.pem"),
        read("server-key.pem"),
        read("server-names"),
    ) {
        // A skewed clock gets a certificate of its own, not kept.
        _ if skew_secs != 0 => pki::server_cert(&ca, &all, skew_secs)?,
        (Ok(cert), Ok(key), Ok(n)) if n.trim() == names_line => (cert, key),
        _ => {
            let (cert, key) = pki::server_cert(&ca, &all, 0)?;
            write_private(&dir.join("server-key.pem"), &key)?;
            std::fs::write(dir.join("server.pem"), &cert)?;
            std::fs::write(dir.join("server-names"), &names_line)?;
            (cert, key)
        }
    };
    let mut chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?;
    chain.push(CertificateDer::from_pem_slice(ca.cert.as_bytes())?);
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    Ok((chain, key))
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/api/v1/health", get(api::health))
        .route("/api/v1/accounts/{domain}", get(api::account))
        .route(
            "/api/v1/accounts/{domain}/servers",
            get(api::list_servers).post(api::register),
        )
        .route(
            "/api/v1/accounts/{domain}/servers/{id}",
            delete(api::remove_server),
        )
        .route(
            "/api/v1/servers/{id}",
            get(api::server).delete(api::deregister),
        )
        .route("/api/v1/servers/{id}/authorize", post(api::authorize))
        .route("/api/v1/servers/{id}/reject", post(api::reject))
        .route(
            "/api/v1/servers/{id}/certificate",
            get(api::certificate).post(api::renew),
        )
        .route("/api/v1/servers/{id}/enrolment", post(api::enrol))
        .route("/api/v1/secure/hello", get(api::secure_hello))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults::middleware,
        ))
        // The capacity limit before the faults (a request shed costs nothing), inside the log.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            capacity::middleware,
        ))
        // Outside the faults and the limit: the 429s and 503s they answer are logged too.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            requests::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            faults::hold_after_commit,
        ));
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route("/ui", get(ui::page))
        .route("/ui/servers/{id}/authorize", post(ui::authorize))
        .route("/ui/servers/{id}/reject", post(ui::reject))
        .route("/ui/servers/{id}/remove", post(ui::remove))
        .merge(api)
        .fallback(api::not_found)
        .with_state(state)
}

async fn handle(
    app: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    // As any HTTPS server: no Nagle delay on small writes (it meets the client's delayed ACK).
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec());
    let info = ConnInfo {
        peer: SocketAddr::new(peer.ip().to_canonical(), peer.port()),
        client_cert,
    };
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            app.clone().oneshot(req.map(axum::body::Body::new))
        });
    let _ = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
        .await;
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

async fn serve(db_path: &Path, args: ServeArgs) -> Result<()> {
    let db = Db::open(db_path)?;
    let (default_key, new) = db.ensure_default_key(args.default_key.as_deref())?;
    let start_faults = args.faults.to_faults()?;
    if start_faults != Faults::default() {
        db.set_faults_json(&serde_json::to_string(&start_faults)?)?;
    }
    let signed_secs = |s: Option<&str>| -> Result<i64> {
        let Some(s) = s else { return Ok(0) };
        let (sign, rest) = s.strip_prefix('-').map_or((1, s), |r| (-1, r));
        Ok(sign * (faults::parse_millis(rest).map_err(anyhow::Error::msg)? / 1000) as i64)
    };
    let skew_secs = signed_secs(args.clock_skew.as_deref())?;
    let cert_skew = match args.cert_skew.as_deref() {
        Some(s) => signed_secs(Some(s))?,
        None => skew_secs,
    };
    let cert_lifetime =
        (faults::parse_millis(&args.cert_lifetime).map_err(anyhow::Error::msg)? / 1000) as i64;
    if cert_lifetime < 1 {
        anyhow::bail!(
            "--cert-lifetime {} is too short: a certificate must be valid for at least 1s",
            args.cert_lifetime
        );
    }
    db.set_cert_lifetime(cert_lifetime)?;
    let (chain, key) = load_tls(&args.tls_dir, &args.names, cert_skew)?;
    let state = Arc::new(AppState {
        db: Mutex::new(db),
        faults: RwLock::new(Faults::default()),
        window: Mutex::new(faults::Window::default()),
        chain,
        key,
        tls: Mutex::new(None),
        request_log: Some(Mutex::new(
            std::fs::File::create(requests::path(db_path))
                .and_then(|_| {
                    std::fs::OpenOptions::new()
                        .append(true)
                        .open(requests::path(db_path))
                })
                .with_context(|| format!("creating {}", requests::path(db_path).display()))?,
        )),
        max_concurrent: args.max_concurrent.map(|n| n as usize),
        in_flight: capacity::InFlight::default(),
        cert_lifetime,
    });
    state.refresh_faults();
    let mut app = router(state.clone());
    if skew_secs != 0 {
        app = app.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| async move {
                let mut resp = next.run(req).await;
                let now = std::time::SystemTime::now();
                let shifted = if skew_secs > 0 {
                    now + Duration::from_secs(skew_secs as u64)
                } else {
                    now - Duration::from_secs(skew_secs.unsigned_abs())
                };
                if let Ok(v) = httpdate::fmt_http_date(shifted).parse() {
                    resp.headers_mut().insert(axum::http::header::DATE, v);
                }
                resp
            },
        ));
    }
    let mut listener = Some(
        TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?,
    );
    let addr = listener
        .as_ref()
        .map(|l| l.local_addr())
        .transpose()?
        .unwrap_or(args.listen);
    if new {
        println!("default restricted key: {default_key}");
    }
    println!("CA certificate: {}", args.tls_dir.join("ca.pem").display());
    println!("web page: https://{addr}/ui");
    println!("listening on https://{addr}");
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        let down = state.faults().is_down(db::now());
        if down && listener.is_some() {
            listener = None;
            eprintln!("gateway-primary-sim: down: refusing connections");
        } else if !down && listener.is_none() {
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    listener = Some(l);
                    eprintln!("gateway-primary-sim: up again on {addr}");
                }
                Err(e) => eprintln!("gateway-primary-sim: rebinding {addr}: {e}"),
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => state.refresh_faults(),
            accepted = async { match &listener { Some(l) => l.accept().await, None => std::future::pending().await } } => {
                let Ok((tcp, peer)) = accepted else { continue };
                match state.tls_config() {
                    Ok(config) => {
                        tokio::spawn(handle(app.clone(), tokio_rustls::TlsAcceptor::from(config), tcp, peer));
                    }
                    Err(e) => eprintln!("gateway-primary-sim: TLS configuration: {e:#}"),
                }
            }
        }
    }
    eprintln!(
        "gateway-primary-sim: stopped; at most {} API requests were in flight at once",
        state.in_flight.peak()
    );
    Ok(())
}

fn print_servers(db: &Db, json: bool) -> Result<()> {
    let accounts = db.accounts()?;
    let servers = db.servers(None)?;
    if json {
        let tree: Vec<serde_json::Value> = accounts
            .iter()
            .map(|a| {
                let list: Vec<serde_json::Value> = servers
                    .iter()
                    .filter(|s| s.account_id == a.id)
                    .map(|s| {
                        let mut v = serde_json::to_value(&s.record).unwrap_or_default();
                        v["registrations"] = s.registrations.into();
                        v["secure_contacts"] = s.secure_contacts.into();
                        v["renewals"] = s.record.renewals.into();
                        v["certificate_expires"] = s.record.certificate_expires.clone().into();
                        v
                    })
                    .collect();
                serde_json::json!({ "account": a.domain, "servers": list })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "accounts": tree }))?
        );
        return Ok(());
    }
    for a in &accounts {
        println!("{}", a.domain);
        for s in servers.iter().filter(|s| s.account_id == a.id) {
            let r = &s.record;
            let state = match r.state {
                TrustState::Untrusted => "not trusted",
                TrustState::Trusted => "trusted",
                TrustState::Rejected => "rejected",
            };
            println!(
                "  {}  {}  {state}  key {}  registered {} ({}x)  secure contacts {}  certificate {} ({} renewals){}",
                r.server_id,
                r.fqdn.as_deref().unwrap_or(&r.hostname),
                short_fingerprint(&r.key_fingerprint),
                r.registered_at,
                s.registrations,
                s.secure_contacts,
                r.certificate_expires
                    .as_deref()
                    .map(|t| format!("until {t}"))
                    .unwrap_or_else(|| "none".into()),
                r.renewals,
                r.replaces
                    .as_deref()
                    .map(|old| format!("  replaces {old}"))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-primary-sim: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Cmd::Serve(args) = cli.command {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        return runtime.block_on(serve(&cli.db, args));
    }
    let db = Db::open(&cli.db)?;
    match cli.command {
        Cmd::Serve(_) => unreachable!("handled above"),
        Cmd::Account(AccountCmd::Add { domain }) => {
            let domain = gateway_protocol::check_dns_name(&domain)
                .map_err(|why| anyhow::anyhow!("{domain:?} is not a DNS name: {why}"))?;
            let ca = pki::new_ca(&format!("Account CA {domain}"))?;
            db.add_account(&domain, &ca.cert, &ca.key)?;
            println!("{domain}");
        }
        Cmd::Account(AccountCmd::List) => {
            for a in db.accounts()? {
                println!("{}", a.domain);
            }
        }
        Cmd::Key(KeyCmd::Add {
            domain,
            kind,
            auto_trust,
            expires,
            allow_ip,
        }) => {
            let account = db
                .account(&domain)?
                .with_context(|| format!("no account {domain}"))?;
            if let Some(cidrs) = &allow_ip {
                for c in cidrs.split(',') {
                    c.trim()
                        .parse::<ipnet::IpNet>()
                        .with_context(|| format!("{c:?} is not a CIDR network"))?;
                }
            }
            let key = db::random_token("gwk_", 32);
            db.add_key(&db::ApiKey {
                key: key.clone(),
                account_id: Some(account.id),
                account: Some(account.domain),
                kind: if kind == "full" {
                    KeyKind::Full
                } else {
                    KeyKind::Restricted
                },
                auto_trust,
                expires_at: expires.as_deref().map(parse_time).transpose()?,
                allow_ip,
                is_default: false,
            })?;
            println!("{key}");
        }
        Cmd::Key(KeyCmd::List) => {
            let _ = db.ensure_default_key(None)?;
            for k in db.keys()? {
                let scope = if k.is_default {
                    "default, any account".to_string()
                } else {
                    k.account.unwrap_or_default()
                };
                let kind = if k.kind == KeyKind::Full {
                    "full"
                } else {
                    "restricted"
                };
                let mut flags = Vec::new();
                if k.auto_trust {
                    flags.push("auto-trust".to_string());
                }
                if let Some(t) = k.expires_at {
                    flags.push(format!("expires {}", db::rfc3339(t)));
                }
                if let Some(ip) = k.allow_ip {
                    flags.push(format!("from {ip}"));
                }
                println!("{}  {kind}  {scope}  {}", k.key, flags.join(" "));
            }
        }
        Cmd::Servers {
            action: Some(ServersCmd::Remove { server }),
            ..
        } => {
            let s = api::remove(&db, &server)?;
            println!("{} removed", s.record.server_id);
        }
        Cmd::Servers { json, action: None } => print_servers(&db, json)?,
        Cmd::Authorize { server } => {
            let s = api::set_trust(&db, &server, TrustState::Trusted, db.cert_lifetime()?)?;
            println!("{} trusted", s.record.server_id);
        }
        Cmd::Reject { server } => {
            let s = api::set_trust(&db, &server, TrustState::Rejected, db.cert_lifetime()?)?;
            println!("{} rejected", s.record.server_id);
        }
        Cmd::Faults(FaultsCmd::Set(args)) => {
            let faults = args.to_faults()?;
            db.set_faults_json(&serde_json::to_string(&faults)?)?;
            println!("{}", serde_json::to_string(&faults)?);
        }
        Cmd::Faults(FaultsCmd::Clear) => {
            db.set_faults_json(&serde_json::to_string(&Faults::default())?)?
        }
        Cmd::Stats { since, until } => {
            let summary = stats::summary(&requests::path(&cli.db), since, until)?;
            println!("{}", serde_json::to_string_pretty(&summary)?);
        }
        Cmd::Requests => {
            let log = requests::path(&cli.db);
            match std::fs::read_to_string(&log) {
                Ok(text) => print!("{text}"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("reading {}", log.display())),
            }
        }
        Cmd::Faults(FaultsCmd::Show) => {
            let json = db.faults_json()?.unwrap_or_else(|| "{}".into());
            println!("{json}");
        }
    }
    Ok(())
}
