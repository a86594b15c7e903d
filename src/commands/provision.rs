//! `provision`: settings → DNS self-check → connect and validate → register → hand off.
//! Each step's result is on disk before the next starts; run again after a power cut, it
//! resumes (the identity is kept, registration is idempotent, handoff is repeatable).

use crate::cli::ProvisionArgs;
use crate::dns;
use crate::exit;
use crate::failure::{Code, Failure, io};
use crate::fsutil;
use crate::handoff;
use crate::identity::{self, Identity};
use crate::lock::Lock;
use crate::primary::{Endpoint, Primary, connect_and_validate};
use crate::progress::{self, Progress};
use crate::protocol::{DnsReport, DnsStatus, Registration, TrustState, short_fingerprint};
use crate::retry::{Backoff, Report, retry};
use crate::root::Root;
use crate::settings::{self, Collected, Settings, validate::DnsCheck};
use crate::state::{DONE_MARKER, Phase, State, TOKEN_FILE};
use std::time::Duration;

/// Backoff for provisioning retries.
const BASE: Duration = Duration::from_secs(1);
const CAP: Duration = Duration::from_secs(60);

/// Stops the process here, as a power cut would, when tests ask for it (feature `failpoints`).
pub fn failpoint(name: &str) {
    #[cfg(feature = "failpoints")]
    if std::env::var("GATEWAY_FIRSTBOOT_FAILPOINT").as_deref() == Ok(name) {
        eprintln!("gateway-firstboot: failpoint {name}: stopping as a power cut would");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
    let _ = name;
}

pub async fn run(root: &Root, args: &ProvisionArgs) -> anyhow::Result<u8> {
    let load = || super::load(root, &args.settings);
    let wait = match (args.wait_for_seed, args.console_installer) {
        (false, _) => WaitForSeed::No,
        (true, false) => WaitForSeed::Yes,
        (true, true) => WaitForSeed::WithConsoleInstaller,
    };
    Ok(provision(root, &load, wait, None).await)
}

/// What to do when there is nothing to provision from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitForSeed {
    /// Stop with exit status 66.
    No,
    /// Wait for a seed.
    Yes,
    /// Wait, and meanwhile run the setup questions on the console terminals.
    WithConsoleInstaller,
}

/// Provisions from the settings `load` collects. With `wait_for_seed` and nothing to provision
/// from, waits for a seed first. `held`: the provisioning lock, if the caller took it already
/// (the installer, which writes the seed under it).
pub async fn provision(
    root: &Root,
    load: &dyn Fn() -> Collected,
    wait_for_seed: WaitForSeed,
    held: Option<Lock>,
) -> u8 {
    let mut progress = Progress::new(root);
    let state = match progress.load_state() {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(code) = already_provisioned(root, &state, &mut progress) {
        return code;
    }
    if wait_for_seed != WaitForSeed::No
        && held.is_none()
        && state.phase < Phase::Registered
        && !load().has_target()
    {
        let installer = wait_for_seed == WaitForSeed::WithConsoleInstaller;
        wait_for_seed_step(root, load, &state, &mut progress, installer).await;
    }
    let _lock = match held {
        Some(lock) => lock,
        None => {
            let waiting = || {
                let text = "another provisioning run (gateway-firstboot install?) is in progress; waiting for it to end";
                crate::wrap::say(&format!("gateway-firstboot: {text}"));
                log::info!(MESSAGE_ID = progress::MSG_LOCK_WAIT; "{text}");
            };
            match crate::lock::lock(root, waiting).await {
                Ok(lock) => lock,
                Err(e) => {
                    let mut state = state;
                    let failure = io(format!("taking {}", crate::lock::LOCK_FILE), e);
                    return progress.finish(&mut state, Err(failure));
                }
            }
        }
    };
    // A reset cut short by a power cut: finish it (as it was started), then provision afresh.
    match super::reset::finish_interrupted(root) {
        Ok(true) => progress.step(
            &State::default(),
            progress::MSG_RESET,
            "finished a reset that was interrupted; provisioning afresh",
        ),
        Ok(false) => {}
        Err(failure) => return progress.finish(&mut State::default(), Err(failure)),
    }
    // Whoever held the lock may have provisioned meanwhile: read the state again.
    let mut state = match progress.load_state() {
        Ok(s) => s,
        Err(code) => return code,
    };
    if let Some(code) = already_provisioned(root, &state, &mut progress) {
        return code;
    }
    let result = steps(root, load, &mut state, &mut progress).await;
    progress.finish(&mut state, result)
}

fn already_provisioned(root: &Root, state: &State, progress: &mut Progress) -> Option<u8> {
    if state.phase < Phase::HandedOff || !root.path(DONE_MARKER).exists() {
        return None;
    }
    let text = format!(
        "already provisioned: server {} ({})",
        state.server_id.as_deref().unwrap_or("?"),
        progress::describe(state.phase)
    );
    crate::wrap::say(&format!("gateway-firstboot: {text}"));
    log::info!(
        MESSAGE_ID = progress::MSG_ALREADY_PROVISIONED,
        SERVER_ID = state.server_id.as_deref().unwrap_or("");
        "{text}"
    );
    progress.write_status(state);
    progress.ready();
    Some(exit::OK)
}

/// Nothing to provision from yet: say so on the console (the login prompt) and wait for a
/// seed. The unit reports ready so that the boot completes and a person can log in.
async fn wait_for_seed_step(
    root: &Root,
    load: &dyn Fn() -> Collected,
    state: &State,
    progress: &mut Progress,
    console_installer: bool,
) {
    progress.step(
        state,
        progress::MSG_WAITING_FOR_SEED,
        "no provisioning settings yet: waiting for a seed (answer the setup questions on the \
         console, run `gateway-firstboot install`, or plug in a USB stick labelled GWSEED \
         holding seed.toml)",
    );
    progress.console(
        state,
        "This gateway has no provisioning settings yet.\n\
         Set it up on the console (tty1 or the serial console), or log in and run: gateway-firstboot install\n\
         (or plug in a USB stick labelled GWSEED holding seed.toml: provisioning then starts by itself)",
    );
    progress.ready();
    if console_installer {
        start_console_installers(root).await;
    }
    crate::seedwatch::wait(root, || load().has_target()).await;
    progress.console(
        state,
        "Gateway provisioning is running (settings found); `gateway-firstboot status` shows where it stands.",
    );
    progress.step(state, progress::MSG_STARTED, "settings found: provisioning");
}

/// The kernel's console list (`console=` on the command line).
pub const ACTIVE_CONSOLES: &str = "/sys/class/tty/console/active";

/// The terminals the setup questions go to: the kernel's consoles, `tty0` (the foreground
/// virtual terminal) as `tty1`, where the boot shows the login prompt. Only names a unit
/// instance can take; at most one of each.
pub fn console_terminals(active: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for name in active.split_whitespace() {
        let name = if name == "tty0" { "tty1" } else { name };
        let plain =
            !name.is_empty() && name.len() <= 32 && name.bytes().all(|b| b.is_ascii_alphanumeric());
        if plain && !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }
    out
}

/// Starts gateway-firstboot-installer@TTY.service on each console terminal (no wait: the
/// unit stops that terminal's login prompt and brings it back when done). A failure is
/// reported, not fatal: the login prompt and `gateway-firstboot install` remain.
async fn start_console_installers(root: &Root) {
    let active = std::fs::read_to_string(root.path(ACTIVE_CONSOLES)).unwrap_or_default();
    let units: Vec<String> = console_terminals(&active)
        .iter()
        .map(|t| format!("gateway-firstboot-installer@{t}.service"))
        .collect();
    if units.is_empty() {
        log::warn!("no console terminal in {ACTIVE_CONSOLES}: the setup questions are not shown");
        return;
    }
    let run = tokio::process::Command::new("systemctl")
        .args(["--no-block", "start"])
        .args(&units)
        .stdin(std::process::Stdio::null())
        .output();
    match tokio::time::timeout(Duration::from_secs(30), run).await {
        Ok(Ok(out)) if out.status.success() => {
            log::info!(
                "setup questions on the console: started {}",
                units.join(" ")
            );
        }
        Ok(Ok(out)) => log::warn!(
            "starting {}: {}",
            units.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(Err(e)) => log::warn!("starting {}: {e}", units.join(" ")),
        Err(_) => log::warn!(
            "starting {}: systemctl did not answer in 30 s",
            units.join(" ")
        ),
    }
}

async fn steps(
    root: &Root,
    load: &dyn Fn() -> Collected,
    state: &mut State,
    progress: &mut Progress,
) -> Result<(), Failure> {
    progress.step(state, progress::MSG_STARTED, "provisioning this gateway");
    if state.phase < Phase::Registered {
        let settings = settings_step(root, load(), state, progress)?;
        failpoint("after-validate");
        // This host's addresses: compared with DNS, then sent with the registration.
        let own = dns::own_addresses();
        let report = dns_step(root, &settings, &own, state, progress).await?;
        failpoint("after-dns");
        let primary = connect_step(root, &settings, state, progress).await?;
        failpoint("after-connect");
        register_step(root, &settings, &primary, report, own, state, progress).await?;
    } else {
        progress.step(
            state,
            progress::MSG_STARTED,
            "resuming: this server is registered already",
        );
    }
    handoff_step(root, state, progress)
}

/// Collects and validates the settings; every problem is printed, errors stop.
fn settings_step(
    root: &Root,
    collected: Collected,
    state: &mut State,
    progress: &mut Progress,
) -> Result<Settings, Failure> {
    let (settings, problems) = settings::validate(root, &collected);
    let mut out = std::io::stdout().lock();
    let _ = super::check::print_problems(&mut out, &problems);
    drop(out);
    state.warnings = problems
        .iter()
        .filter(|p| !p.is_error())
        .map(|p| format!("{}: {}", p.subject, p.message))
        .collect();
    let Some(settings) = settings else {
        if !collected.has_seed() {
            return Err(Failure::new(
                Code::NoSettings,
                "no provisioning settings found",
            ));
        }
        let errors: Vec<_> = problems.iter().filter(|p| p.is_error()).collect();
        let first = errors
            .first()
            .map(|p| format!("{}: {}", p.subject, p.message))
            .unwrap_or_default();
        log::error!(MESSAGE_ID = progress::MSG_SETTINGS_INVALID; "{} invalid setting(s); first: {first}", errors.len());
        return Err(Failure::with_fix(
            Code::SettingsInvalid,
            format!("{} setting(s) invalid; first: {first}", errors.len()),
            errors
                .first()
                .and_then(|p| p.fix.clone())
                .unwrap_or_else(|| "run `gateway-firstboot check`".into()),
        ));
    };
    state.account = Some(settings.account.clone());
    state.primary = Some(Endpoint::from_settings(&settings));
    state.api_key_is_default = settings.api_key_is_default;
    state.network = settings.network.clone();
    state.gwseed = collected.gwseed.clone();
    state.advance(root, Phase::Validated)?;
    // The network provisioning runs on is the one the handoff keeps.
    match super::apply_network::apply_runtime(root, settings.network.as_ref()) {
        Ok(true) => {
            let what = settings.network.as_ref().map_or_else(
                || "the image's (DHCP)".to_string(),
                crate::network::NetworkConfig::describe,
            );
            progress.step(
                state,
                progress::MSG_NETWORK_APPLIED,
                &format!("network: {what}"),
            );
        }
        Ok(false) => {}
        Err(e) => log::warn!("applying the network settings: {e:#}"),
    }
    let key = if settings.api_key_is_default {
        "the default restricted key"
    } else {
        "the given API key"
    };
    progress.step(
        state,
        progress::MSG_STARTED,
        &format!(
            "settings: primary {}, account {}, {key}",
            settings.primary, settings.account
        ),
    );
    Ok(settings)
}

/// Sets the host name the seed asks for: /etc/hostname under --root; on the real system
/// through systemd-hostnamed (`hostnamectl`), which writes /etc/hostname and sets the kernel's,
/// so the agent itself needs no privilege for it.
fn apply_hostname(root: &Root, name: &str) -> Result<(), Failure> {
    if !root.is_host() {
        let path = root.path("/etc/hostname");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current.trim() != name {
            fsutil::write_atomic(&path, format!("{name}\n").as_bytes(), 0o644)
                .map_err(|e| io("writing /etc/hostname", e))?;
            log::info!(MESSAGE_ID = progress::MSG_HOSTNAME_SET, HOSTNAME = name; "host name set to {name}");
        }
        return Ok(());
    }
    let current = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_default();
    if current == name || current == dns::HostName::parse(name).short {
        return Ok(());
    }
    match std::process::Command::new("hostnamectl")
        .args(["set-hostname", name])
        .status()
    {
        Ok(s) if s.success() => {
            log::info!(MESSAGE_ID = progress::MSG_HOSTNAME_SET, HOSTNAME = name; "host name set to {name}")
        }
        Ok(s) => log::warn!("hostnamectl set-hostname {name} exited with {s}; keeping {current}"),
        Err(e) => log::warn!("running hostnamectl: {e}; keeping the host name {current}"),
    }
    Ok(())
}

async fn dns_step(
    root: &Root,
    settings: &Settings,
    own: &[std::net::IpAddr],
    state: &mut State,
    progress: &mut Progress,
) -> Result<DnsReport, Failure> {
    let name = dns::names(root, settings.hostname.as_deref());
    // The seed's name, or the DHCP server's when the system has none: make it the system's.
    let given = settings
        .hostname
        .clone()
        .or_else(|| dns::dhcp_hostname(root).filter(|h| *h == name.short));
    if let Some(given) = given {
        apply_hostname(root, &given)?;
    }
    state.hostname = Some(name.clone());
    if settings.dns_check == DnsCheck::Off {
        let report = DnsReport {
            status: DnsStatus::Skipped,
            fqdn: name.full().to_string(),
            resolved: vec![],
            reverse: vec![],
        };
        state.dns = Some(report.clone());
        state.advance(root, Phase::DnsChecked)?;
        progress.step(state, progress::MSG_DNS_OK, "DNS self-check is off");
        return Ok(report);
    }
    let resolver = dns::resolver(root, &settings.nameservers);
    let mut backoff = Backoff::new(BASE, CAP, settings.deadline);
    let report = Report::loud(Duration::from_secs(10));
    let outcome = retry(&mut backoff, state, progress, report, async |state, _| {
        let resolver = resolver.as_ref().map_err(String::as_str);
        let outcome = dns::check(resolver, &name, own).await;
        if outcome.report.status == DnsStatus::Ok || settings.dns_check == DnsCheck::Warn {
            return Ok(outcome);
        }
        outcome.record_in(state);
        Err(Failure::with_fix(
            Code::DnsMissing,
            format!("waiting for DNS (dns-check = require): {}", outcome.summary),
            match outcome.records_to_create.as_slice() {
                [] => "fix this server's name or DNS settings".to_string(),
                records => format!("create the record: {}", records.join("; ")),
            },
        ))
    })
    .await?;
    outcome.record_in(state);
    state.advance(root, Phase::DnsChecked)?;
    announce_dns(state, progress, &outcome);
    Ok(outcome.report)
}

/// Says what the DNS check found and which records to create or delete.
fn announce_dns(state: &State, progress: &mut Progress, outcome: &dns::Outcome) {
    if outcome.report.status == DnsStatus::Ok {
        progress.step(state, progress::MSG_DNS_OK, &outcome.summary);
        for record in &outcome.reverse_to_create {
            println!("gateway-firstboot: suggested reverse DNS record: {record}");
        }
        return;
    }
    progress.step(
        state,
        progress::MSG_DNS_MISSING,
        &format!("warning: {}", outcome.summary),
    );
    for record in &outcome.records_to_create {
        crate::wrap::say(&format!(
            "gateway-firstboot: create this DNS record: {record}"
        ));
    }
    for record in &outcome.records_to_delete {
        println!("gateway-firstboot: delete this DNS record: {record}");
    }
    for record in &outcome.reverse_to_create {
        println!("gateway-firstboot: suggested reverse DNS record: {record}");
    }
}

async fn connect_step(
    root: &Root,
    settings: &Settings,
    state: &mut State,
    progress: &mut Progress,
) -> Result<Primary, Failure> {
    let endpoint = Endpoint::from_settings(settings);
    let mut backoff = Backoff::new(BASE, CAP, settings.deadline);
    let report = Report::loud(endpoint.attempt_time());
    let validated = retry(&mut backoff, state, progress, report, async |_, _| {
        connect_and_validate(root, &endpoint, &settings.account, &settings.api_key).await
    })
    .await?;
    // A pinned primary without a CA: keep the certificate the pin matched, for the gateway.
    let pinned = validated.primary.pinned_certificate_pem();
    if let (Some(endpoint), Some(pem)) = (state.primary.as_mut(), pinned)
        && endpoint.ca_pem.is_none()
    {
        endpoint.ca_pem = Some(pem);
    }
    state.advance(root, Phase::Connected)?;
    let auto = if validated.info.auto_trust {
        ", servers it registers are trusted automatically"
    } else {
        ""
    };
    progress.step(
        state,
        progress::MSG_CONNECTED,
        &format!(
            "connected to {}: account {} exists, API key accepted ({}{auto})",
            settings.primary,
            validated.info.account,
            validated.key_kind()
        ),
    );
    Ok(validated.primary)
}

async fn register_step(
    root: &Root,
    settings: &Settings,
    primary: &Primary,
    report: DnsReport,
    addresses: Vec<std::net::IpAddr>,
    state: &mut State,
    progress: &mut Progress,
) -> Result<(), Failure> {
    let identity = Identity::load_or_create(root)?;
    failpoint("after-key");
    let name = state.hostname.clone().unwrap_or_default();
    let registration = Registration {
        machine_id: identity::machine_id(root)?,
        hostname: name.short.clone(),
        fqdn: name.fqdn.clone(),
        addresses,
        dns: report,
        serial: identity::dmi_serial(root),
        hardware_id: identity::hardware_id(root),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        csr: identity.csr(root, &name.short, name.fqdn.as_deref())?,
    };
    failpoint("before-register");
    let mut backoff = Backoff::new(BASE, CAP, settings.deadline);
    let report = Report::loud(primary.endpoint().attempt_time());
    let response = retry(&mut backoff, state, progress, report, async |_, _| {
        primary.register(&settings.api_key, &registration).await
    })
    .await?;
    failpoint("after-register");
    let server = response.server;
    if server.state == TrustState::Rejected {
        return Err(Failure::new(
            Code::ServerRejected,
            format!(
                "an administrator rejected server {} on the primary",
                server.server_id
            ),
        ));
    }
    fsutil::write_atomic(
        &root.path(TOKEN_FILE),
        response.server_token.expose().as_bytes(),
        0o600,
    )
    .map_err(|e| io(format!("writing {TOKEN_FILE}"), e))?;
    state.server_id = Some(server.server_id.clone());
    state.key_fingerprint = Some(identity.fingerprint.clone());
    state.trust = Some(server.state);
    state.advance(root, Phase::Registered)?;
    let trust = match server.state {
        TrustState::Trusted => "trusted automatically",
        _ => "not trusted until an administrator clicks Authorize",
    };
    progress.step(
        state,
        progress::MSG_REGISTERED,
        &format!(
            "registered as {} in account {}: {trust}; key fingerprint {}{}",
            server.server_id,
            server.account,
            short_fingerprint(&identity.fingerprint),
            replacement(&server)
        ),
    );
    failpoint("after-register-saved");
    Ok(())
}

/// What the registration says of a server it replaces (the same hardware, re-imaged: the
/// primary's replacement rule, docs/protocol.md), or nothing.
fn replacement(server: &crate::protocol::ServerRecord) -> String {
    match (&server.replaces, server.state) {
        (None, _) => String::new(),
        (Some(old), TrustState::Trusted) => format!(
            "; it replaces {old} (the same hardware, re-imaged), which the primary has retired"
        ),
        (Some(old), _) => {
            format!("; it replaces {old} (the same hardware, re-imaged): Authorize retires {old}")
        }
    }
}

fn handoff_step(root: &Root, state: &mut State, progress: &mut Progress) -> Result<(), Failure> {
    handoff::write_gateway_config(root, state)?;
    handoff::keep_network(root, state)?;
    failpoint("after-gateway-config");
    let leftovers = handoff::scrub_api_key(root, state.gwseed.as_ref());
    state.warnings.extend(leftovers);
    failpoint("after-scrub");
    let id = state.server_id.clone().unwrap_or_default();
    handoff::mark_done(root, &id)?;
    state.advance(root, Phase::HandedOff)?;
    failpoint("after-done");
    let primary = state
        .primary
        .as_ref()
        .map(|p| p.url.to_string())
        .unwrap_or_default();
    let account = state.account.clone().unwrap_or_default();
    let short = state
        .key_fingerprint
        .as_deref()
        .map(short_fingerprint)
        .unwrap_or_default();
    let line = match state.trust {
        Some(TrustState::Trusted) => {
            format!("Gateway {id} is registered with {primary} (account {account}) and trusted.")
        }
        _ => format!(
            "Gateway {id} is registered with {primary} (account {account}) but NOT TRUSTED yet: \
             an administrator must click Authorize for key {short}."
        ),
    };
    progress.console(state, &line);
    progress.step(
        state,
        progress::MSG_HANDED_OFF,
        &format!("handed off to the gateway (server {id}, key {short})"),
    );
    progress.ready();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::console_terminals;

    #[test]
    fn the_setup_goes_to_each_kernel_console_once() {
        assert_eq!(console_terminals("tty0 ttyS0\n"), ["tty1", "ttyS0"]);
        assert_eq!(console_terminals("ttyS0 tty0 tty1"), ["ttyS0", "tty1"]);
        assert_eq!(console_terminals("hvc0"), ["hvc0"]);
        assert!(console_terminals("").is_empty());
        // Nothing that could leave the unit name's instance.
        assert!(console_terminals("../x tty@1 a/b").is_empty());
    }
}
