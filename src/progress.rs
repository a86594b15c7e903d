//! Progress everywhere an operator looks: `STATUS=` for `systemctl status`, the journal (one
//! stable `MESSAGE_ID` per event), `/run/gateway-firstboot/status.json` for tools, a line on
//! the login console (`/etc/issue.d/`), and standard output (the console when run as a unit).
//! While retrying it sends `EXTEND_TIMEOUT_USEC` so systemd never kills a healthy wait.

use crate::failure::Failure;
use crate::fsutil;
use crate::root::Root;
use crate::state::{Phase, State};
use sd_notify::NotifyState;
use std::time::Duration;

pub const STATUS_FILE: &str = "/run/gateway-firstboot/status.json";
pub const ISSUE_FILE: &str = "/etc/issue.d/gateway-firstboot.issue";
/// Touched to make running agetty instances redraw the login prompt (`agetty --reload`).
pub const AGETTY_RELOAD: &str = "/run/agetty.reload";

// Journal MESSAGE_IDs (`journalctl MESSAGE_ID=…`); generated once, never changed.
pub const MSG_STARTED: &str = "5b1f0c6e2a9d4c7f8e3a1b2c4d5e6f70";
pub const MSG_SETTINGS_INVALID: &str = "6c2e1d7f3b0a4d8e9f4b2c3d5e6f7081";
pub const MSG_DNS_OK: &str = "7d3f2e8a4c1b4e9fa05c3d4e6f708192";
pub const MSG_DNS_MISSING: &str = "8e403f9b5d2c4fa0b16d4e5f708192a3";
pub const MSG_CONNECTED: &str = "9f5140ac6e3d40b1c27e5f608192a3b4";
pub const MSG_RETRYING: &str = "a06251bd7f4e41c2d38f6071a2b3c4d5";
pub const MSG_KEY_CREATED: &str = "b17362ce8051420de4907182b3c4d5e6";
pub const MSG_REGISTERED: &str = "c28473df9162431ef5a18293c4d5e6f7";
pub const MSG_HANDED_OFF: &str = "d39584e0a27344f0a6b293a4d5e6f708";
pub const MSG_AWAITING_TRUST: &str = "e4a695f1b38445a1b7c3a4b5e6f70819";
pub const MSG_TRUSTED: &str = "f5b7a602c49546b2c8d4b5c6f708192a";
pub const MSG_FAILED: &str = "06c8b713d5a647c3d9e5c6d708192a3b";
pub const MSG_WAITING_FOR_SEED: &str = "0d78282148414d0bba53d5b66c9e2b29";
pub const MSG_ALREADY_PROVISIONED: &str = "51a00cc27df04fb49c3511dee8102f1f";
pub const MSG_LOCK_WAIT: &str = "04d2f43fffcf4392b963db4f06d44362";
pub const MSG_KEY_SCRUBBED: &str = "13eaa51533ff44858e532531cbca4154";
pub const MSG_HOSTNAME_SET: &str = "20ca3964077b40afb5e766f8d5ec2823";
pub const MSG_NETWORK_APPLIED: &str = "3a7c5e9b1d2f4a6c8e0b2d4f6a8c0e1f";
pub const MSG_DEREGISTERED: &str = "8189c9a3b46848c7b4da8a3d6a982e4d";
pub const MSG_RESET: &str = "df8f9930ae1a4c6999b069cf73e1bfce";
pub const MSG_COPY_DETECTED: &str = "ca4d3c1aa7aa453792d9afbf5df8e526";
pub const MSG_RENEWING: &str = "a2904ca55a6f472a8478fb06920aad6c";
pub const MSG_RENEWED: &str = "b213ae9d89ea47f1b4b8d76c48503a96";
pub const MSG_REENROLLED: &str = "ee434912ca5044f8838586fbf4d808cc";

/// Slack added to every timeout extension beyond the wait itself.
const EXTEND_SLACK: Duration = Duration::from_secs(90);

pub struct Progress {
    root: Root,
    /// What is happening now, for status.json.
    activity: String,
}

impl Progress {
    pub fn new(root: &Root) -> Progress {
        Progress {
            root: root.clone(),
            activity: String::new(),
        }
    }

    fn notify(states: &[NotifyState<'_>]) {
        // Does nothing without NOTIFY_SOCKET (not run by systemd).
        let _ = sd_notify::notify(states);
    }

    /// A line that says nothing was done (a renewal not due yet): the journal's only when run
    /// by systemd (a timer twice a day must not fill the console), standard output by hand.
    pub fn note(text: &str) {
        if systemd_journal_logger::connected_to_journal() {
            log::info!("{text}");
        } else {
            crate::wrap::say(&format!("gateway-firstboot: {text}"));
        }
    }

    /// A step starts or ends: standard output, `STATUS=`, the journal, status.json.
    pub fn step(&mut self, state: &State, message_id: &str, text: &str) {
        crate::wrap::say(&format!("gateway-firstboot: {text}"));
        log::info!(MESSAGE_ID = message_id, PHASE = state.phase.as_str(); "{text}");
        Self::notify(&[NotifyState::Status(text)]);
        self.activity = text.to_string();
        self.write_status(state);
    }

    /// A transient failure; the next attempt follows after `delay`.
    pub fn retrying(
        &mut self,
        state: &State,
        failure: &Failure,
        attempt: u32,
        delay: Duration,
        extra: Duration,
    ) {
        let text = format!(
            "{} [{}]; attempt {attempt} failed, retrying in {}s",
            failure.message,
            failure.code,
            delay.as_secs().max(1)
        );
        crate::wrap::say(&format!("gateway-firstboot: {text}"));
        log::warn!(MESSAGE_ID = MSG_RETRYING, CODE = failure.code.as_str(), ATTEMPT = attempt; "{text}");
        Self::extend(delay + extra);
        Self::notify(&[NotifyState::Status(&text)]);
        self.activity = text;
        self.write_status(state);
    }

    /// Asks systemd for more time before the unit's start timeout strikes.
    pub fn extend(by: Duration) {
        let usec = (by + EXTEND_SLACK).as_micros().min(u128::from(u32::MAX)) as u32;
        Self::notify(&[NotifyState::ExtendTimeoutUsec(usec)]);
    }

    /// Provisioning stopped: say what to fix, everywhere.
    pub fn failed(&mut self, state: &State, failure: &Failure) {
        crate::wrap::say(&format!("gateway-firstboot: error: {failure}"));
        log::error!(MESSAGE_ID = MSG_FAILED, CODE = failure.code.as_str(), PHASE = state.phase.as_str(); "{}; fix: {}", failure.message, failure.fix);
        let text = format!("failed: {} [{}]", failure.message, failure.code);
        Self::notify(&[NotifyState::Status(&text)]);
        self.activity = text;
        self.write_status(state);
        self.console(
            state,
            &format!(
                "Gateway provisioning failed: {}. Fix: {}",
                failure.message, failure.fix
            ),
        );
    }

    /// The persisted state, or the exit status after saying why it cannot be read.
    pub fn load_state(&mut self) -> Result<State, u8> {
        State::load(&self.root).map_err(|f| {
            self.failed(&State::default(), &f);
            f.exit_code()
        })
    }

    /// Ends a command: a failure is recorded in the state (durably: `status` finds it after a
    /// reboot) and shown everywhere; returns the exit status.
    pub fn finish(&mut self, state: &mut State, result: Result<(), Failure>) -> u8 {
        let Err(f) = result else {
            return crate::exit::OK;
        };
        if f.code == crate::failure::Code::ServerRejected {
            state.trust = Some(crate::protocol::TrustState::Rejected);
        }
        state.last_error = Some(f.clone());
        let _ = state.save(&self.root);
        self.failed(state, &f);
        f.exit_code()
    }

    pub fn ready(&self) {
        Self::notify(&[NotifyState::Ready]);
    }

    /// The lines above the login prompt (agetty shows /etc/issue.d/*.issue): `line`, where
    /// provisioning stands, then what is still to do in DNS (kept until the record is right:
    /// every step's line carries it, so none erases it).
    pub fn console(&self, state: &State, line: &str) {
        let mut lines = vec![line.to_string()];
        lines.extend(crate::dns::todo_lines(state));
        // Wrapped for an 80-column console (agetty's terminal does not say its width to us).
        let text = crate::wrap::fill(&lines.join("\n"), crate::wrap::DEFAULT_WIDTH);
        // In issue files a backslash starts an escape; write it literally.
        let text = format!("{}\n\n", text.replace('\\', "\\\\"));
        if let Err(e) = fsutil::write_quick(&self.root.path(ISSUE_FILE), text.as_bytes(), 0o644) {
            log::warn!("writing {ISSUE_FILE}: {e}");
            return;
        }
        // A login prompt already on screen shows the new line at once: touching this file is
        // what `agetty --reload` does. It exists where agetty runs (tmpfiles.d makes it early).
        if let Ok(f) = std::fs::OpenOptions::new()
            .write(true)
            .open(self.root.path(AGETTY_RELOAD))
        {
            let _ = f.set_modified(std::time::SystemTime::now());
        }
    }

    /// `/run/gateway-firstboot/status.json`: the state plus the current activity; no secrets.
    pub fn write_status(&self, state: &State) {
        let mut doc = state_json(state);
        doc.insert("activity".into(), self.activity.clone().into());
        doc.insert("updated".into(), crate::state::now_rfc3339().into());
        let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
        if let Err(e) = fsutil::write_quick(&self.root.path(STATUS_FILE), &bytes, 0o644) {
            log::warn!("writing {STATUS_FILE}: {e}");
        }
    }
}

/// Short description of a phase for people.
pub fn describe(phase: Phase) -> &'static str {
    match phase {
        Phase::New => "not started",
        Phase::Validated => "settings checked",
        Phase::DnsChecked => "DNS checked",
        Phase::Connected => "connected to the primary",
        Phase::Registered => "registered",
        Phase::HandedOff => "handed off, waiting for authorization",
        Phase::Trusted => "trusted, secure connection established",
    }
}

/// What `status --json` and `status.json` both say of the state; no secrets.
pub fn state_json(state: &State) -> serde_json::Map<String, serde_json::Value> {
    let serde_json::Value::Object(doc) = serde_json::json!({
        "phase": state.phase,
        "server_id": state.server_id,
        "account": state.account,
        "primary": state.primary.as_ref().map(|p| p.url.as_str()),
        "trust": state.trust,
        "key_fingerprint": state.key_fingerprint,
        "short_fingerprint": state.key_fingerprint.as_deref().map(crate::protocol::short_fingerprint),
        "dns": state.dns,
        "dns_records_missing": state.dns_records_missing,
        "dns_records_to_delete": state.dns_records_to_delete,
        "dns_reverse_missing": state.dns_reverse_missing,
        "warnings": state.all_warnings(),
        "last_error": state.last_error,
        "updated": state.updated,
    }) else {
        unreachable!("a JSON object literal")
    };
    doc
}
