//! `await-trust`: after handoff, wait (polling with capped backoff and jitter) until an
//! administrator authorizes this server, store its certificate and the account's CA, prove the
//! mutual-TLS connection, then tell the gateway.

use crate::cli::AwaitTrustArgs;
use crate::failure::{Code, Failure, io};
use crate::fsutil;
use crate::identity::{ACCOUNT_CA_FILE, CERT_FILE, Identity};
use crate::primary::{ClientIdentity, Endpoint, Primary};
use crate::progress::{self, Progress};
use crate::protocol::{SecureHello, ServerRecord, TrustState, short_fingerprint};
use crate::retry::{Backoff, Report, retry};
use crate::root::Root;
use crate::secret::Secret;
use crate::state::{Phase, State, TOKEN_FILE, TRUSTED_MARKER};
use std::time::Duration;

/// What `await-trust` runs once trusted, on the real system, unless told otherwise.
pub const DEFAULT_NOTIFY: &str = "systemctl try-restart gateway.service";

pub async fn run(root: &Root, args: &AwaitTrustArgs) -> anyhow::Result<u8> {
    let mut progress = Progress::new(root);
    let mut state = match progress.load_state() {
        Ok(s) => s,
        Err(code) => return Ok(code),
    };
    // Type=notify: started is ready; what it waits for follows as STATUS= lines.
    progress.ready();
    let result = wait(root, args, &mut state, &mut progress).await;
    Ok(progress.finish(&mut state, result))
}

async fn wait(
    root: &Root,
    args: &AwaitTrustArgs,
    state: &mut State,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let (Some(id), Some(endpoint), true) = (
        state.server_id.clone(),
        state.primary.clone(),
        state.phase >= Phase::HandedOff,
    ) else {
        return Err(Failure::new(
            Code::NotProvisioned,
            "this server is not registered with a primary yet",
        ));
    };
    let account = state.account.clone().unwrap_or_default();
    let token = Secret::new(
        std::fs::read_to_string(root.path(TOKEN_FILE))
            .map_err(|e| io(format!("reading {TOKEN_FILE}"), e))?
            .trim(),
    );
    if state.phase >= Phase::Trusted && root.path(TRUSTED_MARKER).exists() {
        // Started at boot only because DNS still had a record to create or delete (the unit's
        // conditions): check again and keep the console current.
        refresh_dns(root, state).await;
        progress.console(state, &trusted_line(&id, endpoint.url.as_str(), &account));
        return Ok(());
    }
    let identity = Identity::load_or_create(root)?;
    let server = Server {
        root,
        endpoint: &endpoint,
        account: &account,
        id: &id,
        poll_max: args.poll_max,
        timeout: args.timeout,
    };
    // When DNS was last checked: the check after trust is skipped if the wait just did it.
    let mut dns_checked = None;
    if !(state.phase >= Phase::Trusted && root.path(CERT_FILE).exists()) {
        dns_checked = Some(fetch_certificate(&server, &identity, &token, state, progress).await?);
    }
    let hello = prove(&server, &identity, state, progress).await?;
    state.trust = Some(TrustState::Trusted);
    state.advance(root, Phase::Trusted)?;
    fsutil::write_atomic(
        &root.path(TRUSTED_MARKER),
        format!("{id}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| io(format!("writing {TRUSTED_MARKER}"), e))?;
    progress.step(
        state,
        progress::MSG_TRUSTED,
        &format!(
            "trusted: secure connection to {} established as {} at {}",
            endpoint.url, hello.server_id, hello.at
        ),
    );
    if dns_checked.is_none_or(|t: tokio::time::Instant| t.elapsed() >= DNS_RECHECK) {
        refresh_dns(root, state).await;
    }
    progress.console(state, &trusted_line(&id, endpoint.url.as_str(), &account));
    notify_gateway(root, args);
    Ok(())
}

/// The primary this server waits on, and how it polls.
struct Server<'a> {
    root: &'a Root,
    endpoint: &'a Endpoint,
    account: &'a str,
    id: &'a str,
    /// The longest wait between two polls.
    poll_max: Duration,
    /// How long each wait may last in all.
    timeout: Option<Duration>,
}

impl Server<'_> {
    /// A fresh backoff for each wait: its deadline counts from now.
    fn backoff(&self) -> Backoff {
        Backoff::new(Duration::from_secs(1), self.poll_max, self.timeout)
    }
}

/// Waits until an administrator authorizes this server (the console says how, the DNS check
/// runs again now and then), then stores its certificate and the account's CA. Returns when
/// the DNS check last ran.
async fn fetch_certificate(
    server: &Server<'_>,
    identity: &Identity,
    token: &Secret,
    state: &mut State,
    progress: &mut Progress,
) -> Result<tokio::time::Instant, Failure> {
    let (root, id, account) = (server.root, server.id, server.account);
    let short = short_fingerprint(&identity.fingerprint);
    let text = format!(
        "waiting for an administrator to authorize server {id} on {} (account {account}); key fingerprint {short}",
        server.endpoint.url
    );
    progress.step(state, progress::MSG_AWAITING_TRUST, &text);
    let waiting_line = format!(
        "Gateway {id} waits for authorization: on the primary's web page, open Server information and click Authorize. Key fingerprint {short}."
    );
    refresh_dns(root, state).await;
    progress.console(state, &waiting_line);
    let mut dns_checked = tokio::time::Instant::now();
    let mut backoff = server.backoff();
    let mut primary: Option<Primary> = None;
    // Not authorized yet is the expected wait: polled quietly, not an error.
    let report = Report {
        attempt_time: server.endpoint.attempt_time(),
        quiet: &|f| f.code == Code::NotTrusted,
    };
    let bundle = retry(
        &mut backoff,
        state,
        progress,
        report,
        async |state, progress| {
            if dns_checked.elapsed() >= DNS_RECHECK {
                dns_checked = tokio::time::Instant::now();
                if refresh_dns(root, state).await {
                    progress.console(state, &waiting_line);
                }
            }
            let record = poll(server, &mut primary, token).await?;
            match record.state {
                // The certificate in the same attempt: a primary that sheds load (429) at
                // this request too is waited out like at any other, not a failed unit.
                TrustState::Trusted => certificate(server, &mut primary, token).await,
                TrustState::Rejected => Err(Failure::new(
                    Code::ServerRejected,
                    format!("an administrator rejected server {id} on the primary"),
                )),
                _ => Err(Failure::new(
                    Code::NotTrusted,
                    format!("not authorized yet (key {short})"),
                )),
            }
        },
    )
    .await?;
    fsutil::write_atomic(&root.path(ACCOUNT_CA_FILE), bundle.ca.as_bytes(), 0o644)
        .map_err(|e| io(format!("writing {ACCOUNT_CA_FILE}"), e))?;
    fsutil::write_atomic(&root.path(CERT_FILE), bundle.certificate.as_bytes(), 0o644)
        .map_err(|e| io(format!("writing {CERT_FILE}"), e))?;
    state.trust = Some(TrustState::Trusted);
    state.save(root)?;
    crate::commands::provision::failpoint("after-certificate");
    Ok(dns_checked)
}

/// Asks the primary for this server's record, through the client kept in `primary` (made
/// when there is none; dropped after a failure, so the next poll connects afresh).
async fn poll(
    server: &Server<'_>,
    primary: &mut Option<Primary>,
    token: &Secret,
) -> Result<ServerRecord, Failure> {
    if primary.is_none() {
        *primary =
            Some(Primary::connect(server.root, server.endpoint, server.account, None).await?);
    }
    let p = primary
        .as_ref()
        .ok_or_else(|| Failure::internal("no client"))?;
    let record = p.server(server.id, token).await;
    if record.is_err() {
        *primary = None;
    }
    record
}

/// The certificate, once authorized, through the client that saw the authorization (or a new
/// one); the client is dropped after a failure, as [`poll`] does.
async fn certificate(
    server: &Server<'_>,
    primary: &mut Option<Primary>,
    token: &Secret,
) -> Result<crate::protocol::CertificateBundle, Failure> {
    if primary.is_none() {
        *primary =
            Some(Primary::connect(server.root, server.endpoint, server.account, None).await?);
    }
    let p = primary
        .as_ref()
        .ok_or_else(|| Failure::internal("no client"))?;
    let bundle = p.certificate(server.id, token).await;
    if bundle.is_err() {
        *primary = None;
    }
    bundle
}

/// Proves the secure connection: mutual TLS with the new certificate.
async fn prove(
    server: &Server<'_>,
    identity: &Identity,
    state: &mut State,
    progress: &mut Progress,
) -> Result<SecureHello, Failure> {
    let client = ClientIdentity {
        cert_pem: std::fs::read_to_string(server.root.path(CERT_FILE))
            .map_err(|e| io(format!("reading {CERT_FILE}"), e))?,
        key_pem: identity.key_pem(),
    };
    let mut backoff = server.backoff();
    let report = Report::loud(server.endpoint.attempt_time());
    retry(&mut backoff, state, progress, report, async |_, _| {
        Primary::connect(server.root, server.endpoint, server.account, Some(&client))
            .await?
            .secure_hello()
            .await
    })
    .await
}

fn trusted_line(id: &str, url: &str, account: &str) -> String {
    format!("Gateway {id} is trusted by {url} (account {account}); secure connection established.")
}

/// How often the DNS check runs again while waiting for authorization.
const DNS_RECHECK: Duration = Duration::from_secs(60);

/// Runs the DNS check again (on every start of the trust step, so at every boot, and while it
/// waits): the console keeps a missing or wrong record until DNS is right. Returns whether
/// what is left to do changed; records that in the state.
async fn refresh_dns(root: &Root, state: &mut State) -> bool {
    let Some(outcome) = crate::dns::recheck(root, state).await else {
        return false;
    };
    let before = crate::dns::todo_lines(state);
    outcome.record_in(state);
    let after = crate::dns::todo_lines(state);
    if before == after {
        return false;
    }
    if after.is_empty() || outcome.settled() {
        log::info!(MESSAGE_ID = progress::MSG_DNS_OK; "{}", outcome.summary);
    } else {
        log::warn!(MESSAGE_ID = progress::MSG_DNS_MISSING; "{}", outcome.summary);
    }
    if let Err(f) = state.save(root) {
        log::warn!("saving the DNS check: {f}");
    }
    true
}

/// Runs the notify command (default on the real system: restart the gateway if it runs).
/// A failure here is reported, not fatal: the gateway also reads the certificate on start.
fn notify_gateway(root: &Root, args: &AwaitTrustArgs) {
    run_command(root, args.notify_command.as_deref(), DEFAULT_NOTIFY);
}

/// Runs `command` (`default` when none is given, on the real system only; "none" or blank:
/// nothing), split at spaces, and says how it went; a failure is reported, not fatal.
pub fn run_command(root: &Root, command: Option<&str>, default: &str) {
    let command = match command {
        Some(c) if c.trim().is_empty() || c == "none" => return,
        Some(c) => c.to_string(),
        None if root.is_host() => default.to_string(),
        None => {
            log::info!("under --root: not running `{default}`");
            return;
        }
    };
    let words: Vec<&str> = command.split_whitespace().collect();
    let Some((program, rest)) = words.split_first() else {
        return;
    };
    match std::process::Command::new(program).args(rest).status() {
        Ok(s) if s.success() => println!("gateway-firstboot: ran `{command}`"),
        Ok(s) => println!("gateway-firstboot: warning: `{command}` exited with {s}"),
        Err(e) => println!("gateway-firstboot: warning: running `{command}`: {e}"),
    }
}
