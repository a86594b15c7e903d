//! `reset`: takes this box out of its account and back to how it was before its first boot, so
//! that the next boot (or `install`) provisions it again. First it deregisters from the primary
//! (`DELETE /servers/{id}`), then it wipes what provisioning made, in an order a power cut
//! cannot turn into a box that looks provisioned but has no identity (docs/lifecycle.md):
//!
//! 1. [`PENDING_FILE`] is written in the state directory (saying whether the reset keeps the
//!    registration), then the done-marker goes: from then on the box is not provisioned, and
//!    the pending file records that a reset is under way;
//! 2. the secrets are overwritten and removed, then the identity, `gateway.toml`, the console
//!    line, the network files the handoff kept, the live status;
//! 3. the rest of the state directory goes, the pending file last. The directory itself stays:
//!    it is the units' `StateDirectory=`, the one place under /var/lib that the sandboxed units
//!    (`check-identity`, the factory reset) may write, and a mount point there.
//!
//! Run again after an interruption, `reset` goes on from where it stopped; so does
//! `provision` (the next boot), before it provisions ([`finish_interrupted`]).

use crate::cli::ResetArgs;
use crate::exit;
use crate::failure::{Code, Failure, io};
use crate::fsutil;
use crate::identity::{
    ACCOUNT_CA_FILE, CERT_FILE, CSR_FILE, HARDWARE_FILE, KEY_FILE, MACHINE_ID_FILE, PRIMARY_CA_FILE,
};
use crate::primary::{ClientIdentity, Endpoint, Primary};
use crate::progress::{self, Progress};
use crate::retry::{Backoff, Report, retry};
use crate::root::Root;
use crate::secret::Secret;
use crate::state::{DONE_MARKER, PROXY_PASSWORD_FILE, State, TOKEN_FILE};
use std::path::Path;
use std::time::Duration;

/// The agent's state directory: progress, done-marker, server token.
pub const STATE_DIR: &str = "/var/lib/gateway-firstboot";
/// In the state directory while a reset is under way: written before the done-marker goes,
/// removed last. It holds [`KEEP`] when the reset keeps the registration (key pair, machine
/// identity), [`WIPE`] otherwise.
pub const PENDING_FILE: &str = "/var/lib/gateway-firstboot/reset-pending";
const KEEP: &str = "keep-registration\n";
const WIPE: &str = "wipe\n";
/// In the state directory: the machine identity a copy of a box gets ([`wipe_copy`]), put in
/// place once the copied identity is gone, so a wipe cut short and finished later still gives
/// the copy its own.
const COPY_MACHINE_ID: &str = "/var/lib/gateway-firstboot/copy-machine-id";
const IDENTITY_DIR: &str = "/var/lib/gateway/identity";

/// Deregistration tries at most this often, within [`DEREGISTER_DEADLINE`]: a person waits.
const DEREGISTER_ATTEMPTS: u32 = 3;
const DEREGISTER_DEADLINE: Duration = Duration::from_secs(30);

pub async fn run(root: &Root, args: &ResetArgs) -> anyhow::Result<u8> {
    let pending = root.path(PENDING_FILE).exists();
    let state = State::load(root);
    if !args.yes
        && let Some(code) = confirm(&plan(state.as_ref().ok(), pending, args))
    {
        return Ok(code);
    }
    let _lock = match crate::lock::try_lock(root) {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            say_error(
                "another provisioning run (gateway-firstboot.service or install) is in progress",
                "wait for it to end (gateway-firstboot status --wait), or stop it, then run reset again",
            );
            return Ok(exit::TEMPFAIL);
        }
        Err(e) => return Ok(fail(&io(format!("taking {}", crate::lock::LOCK_FILE), e))),
    };
    let registration = if pending {
        say("finishing a reset that was interrupted (the primary was dealt with then)");
        None
    } else if args.keep_registration {
        say("keeping the registration: the primary is not asked to remove this server");
        None
    } else {
        match deregister_step(root, state, args.force).await {
            Ok(kept) => kept,
            Err(code) => return Ok(code),
        }
    };
    let keep = args.keep_registration || pending_keeps(root);
    stop_gateway(root);
    if let Err(f) = wipe(root, keep) {
        return Ok(fail(&f));
    }
    report_done(root, keep, registration.as_ref());
    Ok(exit::OK)
}

/// What the primary keeps after the reset, when it could not be told: its server id, the
/// primary and the account, for the message that says an administrator must remove it.
struct Stale {
    id: String,
    primary: String,
    account: String,
}

/// The confirmation text: what reset is about to do.
fn plan(state: Option<&State>, pending: bool, args: &ResetArgs) -> String {
    let registered = state.and_then(|s| Some((s.server_id.as_deref()?, s.primary.as_ref()?)));
    let first = match (pending, registered) {
        (true, _) => "This finishes an interrupted reset of this gateway.".to_string(),
        (false, Some((id, primary))) if !args.keep_registration => format!(
            "This removes server {id} from {} and wipes this gateway's provisioning.",
            primary.url
        ),
        (false, Some((id, _))) => {
            format!("This wipes this gateway's provisioning but keeps server {id} on the primary.")
        }
        (false, None) => "This wipes this gateway's provisioning.".to_string(),
    };
    format!(
        "{first} The seeds are kept: the next boot (or `gateway-firstboot install`) provisions it again."
    )
}

/// Asks on the terminal; `None` to go on, or the exit status.
fn confirm(plan: &str) -> Option<u8> {
    if !crate::tty::interactive() {
        say_error(
            "reset asks for confirmation, and there is no terminal to ask on",
            "run `gateway-firstboot reset --yes`",
        );
        return Some(exit::USAGE);
    }
    crate::wrap::say(plan);
    print!("Reset this gateway? Type yes to go on: ");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let mut answer = String::new();
    let _ = std::io::stdin().read_line(&mut answer);
    if answer.trim().eq_ignore_ascii_case("yes") {
        return None;
    }
    say("reset cancelled: nothing was changed");
    Some(exit::CANCELLED)
}

/// Deregisters, or says why not. `Ok(Some(stale))`: gone on offline (`--force`), the primary
/// keeps `stale`; `Err`: the exit status after saying so.
async fn deregister_step(
    root: &Root,
    state: Result<State, Failure>,
    force: bool,
) -> Result<Option<Stale>, u8> {
    let mut state = match state {
        Ok(state) => state,
        Err(f) if force => {
            say(&format!(
                "{} [{}]; going on offline (--force)",
                f.message, f.code
            ));
            return Ok(None);
        }
        Err(f) => return Err(stop_offline(&f, None)),
    };
    let (Some(id), Some(endpoint)) = (state.server_id.clone(), state.primary.clone()) else {
        say("not registered with a primary: nothing to deregister");
        return Ok(None);
    };
    let stale = Stale {
        id: id.clone(),
        primary: endpoint.url.to_string(),
        account: state.account.clone().unwrap_or_default(),
    };
    match deregister(root, &endpoint, &mut state, &id).await {
        Ok(()) => {
            log::info!(MESSAGE_ID = progress::MSG_DEREGISTERED, SERVER_ID = id.as_str(); "removed server {id} from {}", endpoint.url);
            say(&format!("removed server {id} from {}", endpoint.url));
            Ok(None)
        }
        Err(f) if f.code == Code::RegistrationLost => {
            say(&format!(
                "the primary no longer knows server {id}: removed already, going on"
            ));
            Ok(None)
        }
        Err(f) if force => {
            say(&format!("could not deregister: {} [{}]", f.message, f.code));
            say("going on offline (--force)");
            Ok(Some(stale))
        }
        Err(f) => Err(stop_offline(&f, Some(&stale))),
    }
}

/// Stops before anything is wiped: says why, and that `--force` goes on offline.
fn stop_offline(f: &Failure, stale: Option<&Stale>) -> u8 {
    let server = stale.map_or("this server".to_string(), |s| format!("server {}", s.id));
    say_error(
        &format!(
            "could not deregister from the primary, nothing was wiped: {} [{}]",
            f.message, f.code
        ),
        &format!(
            "{}; run reset again once the primary can be reached, or with --force to reset \
             offline (the primary then keeps {server}: an administrator must remove it there)",
            f.fix
        ),
    );
    match f.code {
        Code::Deadline => exit::UNAVAILABLE,
        _ => f.exit_code(),
    }
}

/// `DELETE /servers/{id}`, with the server token, or over mutual TLS with the certificate when
/// there is no token; a few attempts within [`DEREGISTER_DEADLINE`].
async fn deregister(
    root: &Root,
    endpoint: &Endpoint,
    state: &mut State,
    id: &str,
) -> Result<(), Failure> {
    let token = fsutil::read_optional(&root.path(TOKEN_FILE))
        .map_err(|e| io(format!("reading {TOKEN_FILE}"), e))?
        .map(|bytes| Secret::new(String::from_utf8_lossy(&bytes).trim()));
    let client = match token {
        Some(_) => None,
        None => Some(client_identity(root)?),
    };
    let account = state.account.clone().unwrap_or_default();
    let mut backoff = Backoff::new(
        Duration::from_secs(1),
        Duration::from_secs(10),
        Some(DEREGISTER_DEADLINE),
    )
    .at_most(DEREGISTER_ATTEMPTS);
    let report = Report::loud(endpoint.connect_timeout + endpoint.request_timeout);
    let mut progress = Progress::new(root);
    retry(&mut backoff, state, &mut progress, report, async |_, _| {
        let primary = Primary::connect(root, endpoint, &account, client.as_ref()).await?;
        crate::commands::provision::failpoint("reset-before-deregister");
        primary.deregister(id, token.as_ref()).await
    })
    .await?;
    crate::commands::provision::failpoint("reset-after-deregister");
    Ok(())
}

/// The certificate and key, for deregistering over mutual TLS.
fn client_identity(root: &Root) -> Result<ClientIdentity, Failure> {
    let read = |path: &str| {
        std::fs::read_to_string(root.path(path)).map_err(|e| {
            Failure::with_fix(
                Code::Io,
                format!("no server token ({TOKEN_FILE}) and no certificate: reading {path}: {e}"),
                "nothing to deregister with",
            )
        })
    };
    Ok(ClientIdentity {
        cert_pem: read(CERT_FILE)?,
        key_pem: read(KEY_FILE)?,
    })
}

/// Finishes a reset that a power cut interrupted (the pending directory is there), as it was
/// started. For `provision`, before it provisions; returns whether there was one.
pub fn finish_interrupted(root: &Root) -> Result<bool, Failure> {
    if !root.path(PENDING_FILE).exists() {
        return Ok(false);
    }
    log::info!("finishing a reset that was interrupted");
    wipe(root, pending_keeps(root))?;
    Ok(true)
}

/// Whether the reset under way keeps the registration ([`PENDING_FILE`] says so).
fn pending_keeps(root: &Root) -> bool {
    std::fs::read_to_string(root.path(PENDING_FILE)).is_ok_and(|text| text == KEEP)
}

/// For a copy of a provisioned box (`check-identity`): wipes the copied identity and state as
/// a reset does, without asking the primary (the server there is the original's), and leaves
/// `machine_id` (32 hex digits) as this box's machine identity.
pub fn wipe_copy(root: &Root, machine_id: &str) -> Result<(), Failure> {
    fsutil::write_atomic(
        &root.path(COPY_MACHINE_ID),
        format!("{machine_id}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| io(format!("writing {COPY_MACHINE_ID}"), e))?;
    // Whatever a reset under way meant to keep, a copy keeps nothing of the original's.
    mark(root, false)?;
    wipe(root, false)
}

/// Stops the gateway before its identity goes (on the running system only): it must not go
/// on connecting with a certificate that is being removed. Bounded; a failure is said, not
/// fatal (the wipe is what matters, and gateway.service cannot start again without the
/// done-marker).
fn stop_gateway(root: &Root) {
    if !root.is_host() {
        return;
    }
    // The handoff path unit first: while the done-marker is there it starts the gateway again
    // as soon as it stops. It is enabled, so the next boot has it back.
    let stop = std::process::Command::new("timeout")
        .args([
            "60",
            "systemctl",
            "stop",
            "gateway-firstboot-handoff.path",
            "gateway.service",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    match stop {
        Ok(out) if out.status.success() => say("stopped gateway.service"),
        Ok(out) => say(&format!(
            "stopping gateway.service failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => say(&format!("stopping gateway.service: {e}")),
    }
}

/// Wipes what provisioning made, in the order the module describes; every step may be done
/// again. `keep`: the key pair and the machine identity stay (`--keep-registration`).
fn wipe(root: &Root, keep: bool) -> Result<(), Failure> {
    unmark(root, keep)?;
    crate::commands::provision::failpoint("reset-after-unmark");
    let keep = keep || pending_keeps(root);
    for secret in [TOKEN_FILE, PROXY_PASSWORD_FILE] {
        shred(&root.path(secret), secret)?;
    }
    crate::commands::provision::failpoint("reset-after-secrets");
    wipe_identity(root, keep)?;
    let copy_id = root.path(COPY_MACHINE_ID);
    if copy_id.exists() {
        let target = root.path(MACHINE_ID_FILE);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("making the identity directory", e))?;
        }
        // Copied, not renamed: the two directories are separate mounts in the units' sandbox
        // (each a StateDirectory=), and a rename between them fails (EXDEV). Done again if cut
        // short: the copy's file goes only once the identity holds it.
        let id =
            std::fs::read(&copy_id).map_err(|e| io(format!("reading {COPY_MACHINE_ID}"), e))?;
        fsutil::write_atomic(&target, &id, 0o644).map_err(|e| {
            io(
                format!("writing the copy's machine identity to {MACHINE_ID_FILE}"),
                e,
            )
        })?;
        fsutil::remove(&copy_id).map_err(|e| io(format!("removing {COPY_MACHINE_ID}"), e))?;
    }
    crate::commands::provision::failpoint("reset-after-identity");
    shred(
        &root.path(crate::handoff::GATEWAY_CONFIG),
        crate::handoff::GATEWAY_CONFIG,
    )?;
    for path in [progress::ISSUE_FILE, progress::STATUS_FILE] {
        fsutil::remove(&root.path(path)).map_err(|e| io(format!("removing {path}"), e))?;
    }
    crate::network::write(root, crate::network::ETC_DIR, None).map_err(|e| {
        io(
            format!("removing the network files in {}", crate::network::ETC_DIR),
            e,
        )
    })?;
    crate::commands::provision::failpoint("reset-after-config");
    clear_state_dir(root)
}

/// Step 1: [`PENDING_FILE`] is written (unless a reset is under way already), then the
/// done-marker goes, each durably: a power cut leaves either a provisioned box or one whose
/// reset the next run finishes.
fn unmark(root: &Root, keep: bool) -> Result<(), Failure> {
    if !root.path(PENDING_FILE).exists() {
        mark(root, keep)?;
    }
    fsutil::remove(&root.path(DONE_MARKER))
        .map_err(|e| io(format!("removing {DONE_MARKER}"), e))?;
    sync_dir(root, STATE_DIR)
}

/// Writes [`PENDING_FILE`]: a reset is under way, keeping the registration or not.
fn mark(root: &Root, keep: bool) -> Result<(), Failure> {
    fsutil::write_atomic(
        &root.path(PENDING_FILE),
        if keep { KEEP } else { WIPE }.as_bytes(),
        0o644,
    )
    .map_err(|e| io(format!("writing {PENDING_FILE}"), e))
}

/// Step 3: everything left in the state directory (the state, a status an `await-trust` wrote
/// meanwhile), then the pending file. The directory itself stays (see the module).
fn clear_state_dir(root: &Root) -> Result<(), Failure> {
    let dir = root.path(STATE_DIR);
    let pending = root.path(PENDING_FILE);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(format!("reading {STATE_DIR}"), e)),
    };
    for entry in entries {
        let path = entry
            .map_err(|e| io(format!("reading {STATE_DIR}"), e))?
            .path();
        if path == pending {
            continue;
        }
        let removed = if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io(format!("removing {}", path.display()), e));
            }
            _ => {}
        }
    }
    sync_dir(root, STATE_DIR)?;
    fsutil::remove(&pending).map_err(|e| io(format!("removing {PENDING_FILE}"), e))?;
    sync_dir(root, STATE_DIR)
}

/// The identity: the certificate, the CSR and the CAs go; the private key (overwritten first)
/// and the machine identity too, unless `keep`.
fn wipe_identity(root: &Root, keep: bool) -> Result<(), Failure> {
    if !keep {
        shred(&root.path(KEY_FILE), KEY_FILE)?;
    }
    let mut plain = vec![CERT_FILE, CSR_FILE, ACCOUNT_CA_FILE, PRIMARY_CA_FILE];
    if !keep {
        plain.extend([MACHINE_ID_FILE, HARDWARE_FILE]);
    }
    for path in plain {
        fsutil::remove(&root.path(path)).map_err(|e| io(format!("removing {path}"), e))?;
    }
    // Empty now unless kept (or someone put something else there, which stays).
    let _ = std::fs::remove_dir(root.path(IDENTITY_DIR));
    Ok(())
}

fn shred(real: &Path, shown: &str) -> Result<(), Failure> {
    fsutil::shred(real)
        .map(drop)
        .map_err(|e| io(format!("overwriting and removing {shown}"), e))
}

fn sync_dir(root: &Root, path: &str) -> Result<(), Failure> {
    std::fs::File::open(root.path(path))
        .and_then(|d| d.sync_all())
        .map_err(|e| io(format!("syncing {path}"), e))
}

/// What happens next, and what the primary keeps.
fn report_done(root: &Root, keep: bool, stale: Option<&Stale>) {
    log::info!(MESSAGE_ID = progress::MSG_RESET, KEEP_REGISTRATION = keep; "reset: provisioning wiped");
    if keep && root.path(KEY_FILE).exists() {
        say(
            "reset done: the state, the certificate, gateway.toml, the console line and the network files are wiped",
        );
        say(
            "kept: the key pair and the machine identity, so provisioning again gets the same server back from the primary",
        );
    } else {
        say(
            "reset done: the state, the identity, gateway.toml, the console line and the network files are wiped",
        );
    }
    if let Some(s) = stale {
        say(&format!(
            "the primary {} still lists server {} in account {}: an administrator must remove it \
             there (the web page's Remove button, or DELETE /api/v1/accounts/{}/servers/{} with a \
             full API key)",
            s.primary, s.id, s.account, s.account, s.id
        ));
    }
    say(
        "kept: the seeds (/etc/gateway/seed.toml, /boot/gateway-seed.toml, a GWSEED stick); their API key was removed at provisioning, so the default restricted key is used unless a seed or `install` gives one",
    );
    say(&format!(
        "next: reboot, and gateway-firstboot.service provisions again ({DONE_MARKER} is gone); or run `gateway-firstboot install` now"
    ));
}

fn say(text: &str) {
    crate::wrap::say(&format!("gateway-firstboot: {text}"));
}

fn say_error(message: &str, fix: &str) {
    eprintln!("gateway-firstboot: error: {message}\n  fix: {fix}");
}

fn fail(f: &Failure) -> u8 {
    eprintln!("gateway-firstboot: error: {f}");
    f.exit_code()
}
