//! `renew`: keeps the trusted server's client certificate current. Run by
//! gateway-firstboot-renew.timer; does nothing until two thirds of the certificate's lifetime
//! have passed. Then it asks the primary for a new certificate over mutual TLS with the current
//! one (`POST /servers/{id}/certificate`, a new CSR for the same key), with the retry policy of
//! every other wait, proves the new one (the secure hello) and tells the gateway. Once the
//! certificate has expired (by the primary's word: this box's clock only decides when to try),
//! renewal cannot help: the server re-enrols (`POST /servers/{id}/enrolment` with its token and
//! a new CSR), which puts it back to waiting for Authorize, and gateway-firstboot-trust takes
//! over as on the first boot.

use crate::cli::RenewArgs;
use crate::failure::{Code, Failure, io};
use crate::fsutil;
use crate::identity::{ACCOUNT_CA_FILE, CERT_FILE, Identity};
use crate::primary::{ClientIdentity, Endpoint, Primary};
use crate::progress::{self, Progress};
use crate::protocol::{CertificateBundle, TrustState};
use crate::retry::{Backoff, Report, retry};
use crate::root::Root;
use crate::secret::Secret;
use crate::state::{Phase, State, TOKEN_FILE, TRUSTED_MARKER};
use crate::validity::{Validity, rfc3339 as time};
use std::time::{Duration, SystemTime};

/// What `renew` runs once renewed, on the real system, unless told otherwise: a gateway that
/// can reload re-reads its certificate, one that cannot is restarted (if it runs).
pub const DEFAULT_NOTIFY: &str = "systemctl reload-or-try-restart gateway.service";
/// What `renew` runs after re-enrolling, on the real system: the trust unit waits for
/// Authorize again (its conditions let it start: the trusted marker is gone).
pub const TRUST_UNIT_START: &str = "systemctl start --no-block gateway-firstboot-trust.service";

pub async fn run(root: &Root, args: &RenewArgs) -> anyhow::Result<u8> {
    let mut progress = Progress::new(root);
    let mut state = match progress.load_state() {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    let _lock = match crate::lock::try_lock(root) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            // The journal's under systemd, standard error by hand; the timer tries again.
            log::warn!("another run (provisioning, reset) is in progress: not renewing now");
            return Ok(crate::exit::TEMPFAIL);
        }
        Err(e) => {
            let f = io(format!("taking {}", crate::lock::LOCK_FILE), e);
            return Ok(progress.finish(&mut state, Err(f)));
        }
    };
    match renew(root, args, &mut state, &mut progress).await {
        Ok(code) => Ok(code),
        Err(f) => Ok(progress.finish(&mut state, Err(f))),
    }
}

async fn renew(
    root: &Root,
    args: &RenewArgs,
    state: &mut State,
    progress: &mut Progress,
) -> Result<u8, Failure> {
    let (Some(id), Some(endpoint)) = (state.server_id.clone(), state.primary.clone()) else {
        return Err(Failure::new(
            Code::NotProvisioned,
            "this server is not registered with a primary yet: there is no certificate to renew",
        ));
    };
    if state.phase < Phase::Trusted || !root.path(TRUSTED_MARKER).exists() {
        Progress::note(&format!(
            "server {id} is not trusted yet: no certificate to renew (gateway-firstboot-trust waits for Authorize)"
        ));
        return Ok(crate::exit::OK);
    }
    let account = state.account.clone().unwrap_or_default();
    let (cert_pem, validity) = current_certificate(root)?;
    if let Ok(v) = &validity
        && !args.force
        && SystemTime::now() < v.renew_at()
    {
        Progress::note(&format!(
            "the certificate of server {id} is valid until {}; renewal is due at {}: nothing to do",
            time(v.not_after),
            time(v.renew_at())
        ));
        return Ok(crate::exit::OK);
    }
    let identity = Identity::load_or_create(root)?;
    let (short, fqdn) = state
        .hostname
        .as_ref()
        .map(|h| (h.short.clone(), h.fqdn.clone()))
        .unwrap_or_else(|| ("gateway".into(), None));
    let csr = identity.csr(root, &short, fqdn.as_deref())?;
    let server = Server {
        root,
        endpoint: &endpoint,
        account: &account,
        id: &id,
        args,
    };
    let client = ClientIdentity {
        cert_pem,
        key_pem: identity.key_pem(),
    };
    let why = match validity {
        Ok(v) => match attempt(&server, &client, &v, &csr, state, progress).await? {
            Attempt::Renewed(bundle) => {
                install(&server, &identity, bundle, state, progress).await?;
                return Ok(crate::exit::OK);
            }
            Attempt::GaveUp => return Ok(crate::exit::TEMPFAIL),
            Attempt::Expired => "has expired",
        },
        Err(damaged) => {
            log::warn!("{damaged}");
            "is missing or cannot be read"
        }
    };
    reenrol(&server, &csr, why, state, progress).await?;
    Ok(crate::exit::OK)
}

/// The current certificate (PEM, empty when gone) and its dates, or why they cannot be read:
/// then the server re-enrols, as when it has expired.
fn current_certificate(root: &Root) -> Result<(String, Result<Validity, Failure>), Failure> {
    let pem = match std::fs::read_to_string(root.path(CERT_FILE)) {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io(format!("reading {CERT_FILE}"), e)),
    };
    let validity = Validity::of_pem(&pem).map_err(|e| {
        Failure::with_fix(
            Code::IdentityDamaged,
            format!("{CERT_FILE} cannot be read: {e}"),
            "move it away and run `gateway-firstboot renew` again: the server re-enrols (an administrator must authorize it again)",
        )
    });
    Ok((pem, validity))
}

/// How a renewal attempt ended, short of a failure.
enum Attempt {
    Renewed(CertificateBundle),
    /// By the primary's word (or this clock's, once the retrying is over): re-enrol.
    Expired,
    /// The retrying is over while the certificate is still valid: the timer tries again.
    GaveUp,
}

/// Asks for a new certificate over mutual TLS with `client` (whose certificate's dates are
/// `v`), retrying until it expires by this clock (at least [`MIN_TRY`]) or `--timeout`.
async fn attempt(
    server: &Server<'_>,
    client: &ClientIdentity,
    v: &Validity,
    csr: &str,
    state: &mut State,
    progress: &mut Progress,
) -> Result<Attempt, Failure> {
    let text = format!(
        "renewing the certificate of server {} with {} (valid until {})",
        server.id,
        server.endpoint.url,
        time(v.not_after)
    );
    progress.step(state, progress::MSG_RENEWING, &text);
    let left = v
        .not_after
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .max(MIN_TRY);
    let deadline = server.args.timeout.map_or(left, |t| t.min(left));
    match renew_over_mtls(server, client, csr, deadline, state, progress).await {
        Ok(bundle) => Ok(Attempt::Renewed(bundle)),
        Err(f) if f.code == Code::CertificateExpired => Ok(Attempt::Expired),
        Err(f) if f.code == Code::Deadline && v.expired_at(SystemTime::now()) => {
            Ok(Attempt::Expired)
        }
        // Still valid: a warning, not a failure of the box (nor of the unit).
        Err(f) if f.code == Code::Deadline => {
            let text = format!(
                "could not renew the certificate of server {} for now: {}; it is valid until {}, and the timer tries again",
                server.id,
                f.message,
                time(v.not_after)
            );
            println!("gateway-firstboot: warning: {text}");
            log::warn!(MESSAGE_ID = progress::MSG_RETRYING, CODE = f.code.as_str(); "{text}");
            state.last_error = None;
            Ok(Attempt::GaveUp)
        }
        Err(f) => Err(f),
    }
}

/// Renewal is tried for at least this long, even when the certificate looks expired already
/// by this box's clock (which may be wrong: the primary decides).
const MIN_TRY: Duration = Duration::from_secs(60);

struct Server<'a> {
    root: &'a Root,
    endpoint: &'a Endpoint,
    account: &'a str,
    id: &'a str,
    args: &'a RenewArgs,
}

impl Server<'_> {
    fn backoff(&self, deadline: Duration) -> Backoff {
        Backoff::new(Duration::from_secs(1), self.args.poll_max, Some(deadline))
    }
}

async fn renew_over_mtls(
    server: &Server<'_>,
    client: &ClientIdentity,
    csr: &str,
    deadline: Duration,
    state: &mut State,
    progress: &mut Progress,
) -> Result<CertificateBundle, Failure> {
    let mut backoff = server.backoff(deadline);
    let report = Report::loud(server.endpoint.attempt_time());
    retry(&mut backoff, state, progress, report, async |_, _| {
        Primary::connect(server.root, server.endpoint, server.account, Some(client))
            .await?
            .renew(server.id, csr)
            .await
    })
    .await
}

/// Stores the new certificate (after checking it is one, and newer), proves it with the secure
/// hello, tells the gateway.
async fn install(
    server: &Server<'_>,
    identity: &Identity,
    bundle: CertificateBundle,
    state: &mut State,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let root = server.root;
    let v = Validity::of_pem(&bundle.certificate).map_err(|e| {
        Failure::new(
            Code::Protocol,
            format!("the primary's renewed certificate cannot be read: {e}"),
        )
    })?;
    let client = ClientIdentity {
        cert_pem: bundle.certificate.clone(),
        key_pem: identity.key_pem(),
    };
    // Proved before it replaces the current one: a certificate the primary does not take
    // back is not installed (the current one still works until it expires).
    let mut backoff = server.backoff(server.args.timeout.unwrap_or(PROVE_DEADLINE));
    let report = Report::loud(server.endpoint.attempt_time());
    let hello = retry(&mut backoff, state, progress, report, async |_, _| {
        Primary::connect(root, server.endpoint, server.account, Some(&client))
            .await?
            .secure_hello()
            .await
    })
    .await?;
    fsutil::write_atomic(&root.path(ACCOUNT_CA_FILE), bundle.ca.as_bytes(), 0o644)
        .map_err(|e| io(format!("writing {ACCOUNT_CA_FILE}"), e))?;
    fsutil::write_atomic(&root.path(CERT_FILE), bundle.certificate.as_bytes(), 0o644)
        .map_err(|e| io(format!("writing {CERT_FILE}"), e))?;
    state.last_error = None;
    state.save(root)?;
    progress.step(
        state,
        progress::MSG_RENEWED,
        &format!(
            "renewed: the certificate of server {} is valid until {} (renewal due at {}); secure connection proved at {}",
            hello.server_id,
            time(v.not_after),
            time(v.renew_at()),
            hello.at
        ),
    );
    crate::commands::await_trust::run_command(
        root,
        server.args.notify_command.as_deref(),
        DEFAULT_NOTIFY,
    );
    Ok(())
}

const PROVE_DEADLINE: Duration = Duration::from_secs(600);

/// The certificate has expired: a new CSR with the server token; the record waits for
/// Authorize again, and so does gateway-firstboot-trust.
async fn reenrol(
    server: &Server<'_>,
    csr: &str,
    why: &str,
    state: &mut State,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let (root, id) = (server.root, server.id);
    let token = Secret::new(
        std::fs::read_to_string(root.path(TOKEN_FILE))
            .map_err(|e| io(format!("reading {TOKEN_FILE}"), e))?
            .trim(),
    );
    let mut backoff = server.backoff(server.args.timeout.unwrap_or(REENROL_DEADLINE));
    let report = Report::loud(server.endpoint.attempt_time());
    let record = retry(&mut backoff, state, progress, report, async |_, _| {
        Primary::connect(root, server.endpoint, server.account, None)
            .await?
            .reenrol(id, &token, csr)
            .await
    })
    .await?;
    // The trust unit's conditions: it starts once the marker is gone, and fetches the
    // certificate again since there is none.
    for file in [TRUSTED_MARKER, CERT_FILE] {
        match std::fs::remove_file(root.path(file)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {file}"), e)),
        }
    }
    state.trust = Some(record.state);
    state.last_error = None;
    state.save(root)?;
    let text = format!(
        "the certificate of server {id} {why}: re-enrolled with {} with a new certificate request; it waits for an administrator to authorize it again",
        server.endpoint.url
    );
    progress.step(state, progress::MSG_REENROLLED, &text);
    progress.console(
        state,
        &format!(
            "Gateway {id}'s certificate {why}: on the primary's web page, open Server information and click Authorize again. Key fingerprint {}.",
            crate::protocol::short_fingerprint(&record.key_fingerprint)
        ),
    );
    if record.state == TrustState::Rejected {
        return Err(Failure::new(
            Code::ServerRejected,
            format!("an administrator rejected server {id} on the primary"),
        ));
    }
    crate::commands::await_trust::run_command(
        root,
        server.args.trust_command.as_deref(),
        TRUST_UNIT_START,
    );
    Ok(())
}

const REENROL_DEADLINE: Duration = Duration::from_secs(3600);
