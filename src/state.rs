//! The provisioning state, persisted under /var/lib/gateway-firstboot so that a power cut at
//! any point resumes where it stopped. Holds no secret (the server token and the proxy's
//! password have their own 0600 files); `status` and `/run/gateway-firstboot/status.json` are
//! renderings of it.

use crate::dns::HostName;
use crate::failure::{Code, Failure, io};
use crate::fsutil;
use crate::primary::Endpoint;
use crate::protocol::{DnsReport, TrustState};
use crate::root::Root;
use serde::{Deserialize, Serialize};

pub const STATE_FILE: &str = "/var/lib/gateway-firstboot/state.json";
/// Exists once provisioning is handed off; `gateway.service` is conditioned on it.
pub const DONE_MARKER: &str = "/var/lib/gateway-firstboot/done";
pub const TOKEN_FILE: &str = "/var/lib/gateway-firstboot/server-token";
/// The proxy's password (0600), beside the state that names the proxy and its user: the trust
/// step and a resumed handoff need it after a reboot. Kept while the proxy has a user.
pub const PROXY_PASSWORD_FILE: &str = "/var/lib/gateway-firstboot/proxy-password";
/// Exists once the secure connection is proven; the trust unit then runs only while
/// [`DNS_TODO_MARKER`] exists.
pub const TRUSTED_MARKER: &str = "/var/lib/gateway-firstboot/trusted";
/// Exists while DNS has a record to create or delete: the trust unit then runs at every boot
/// (also once trusted) to check again and keep the advice on the console until it is done.
pub const DNS_TODO_MARKER: &str = "/var/lib/gateway-firstboot/dns-todo";

/// Steps, in order. A step's effects are on disk before the phase says it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    #[default]
    New,
    Validated,
    DnsChecked,
    Connected,
    Registered,
    HandedOff,
    Trusted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::New => "new",
            Phase::Validated => "validated",
            Phase::DnsChecked => "dns-checked",
            Phase::Connected => "connected",
            Phase::Registered => "registered",
            Phase::HandedOff => "handed-off",
            Phase::Trusted => "trusted",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    pub version: u32,
    pub phase: Phase,
    pub account: Option<String>,
    /// What the trust step needs to reach the primary again after a reboot.
    pub primary: Option<Endpoint>,
    /// This server's name as provisioning found it (one string on disk, the FQDN if any).
    pub hostname: Option<HostName>,
    pub dns: Option<DnsReport>,
    /// Records the DNS check says to create (`gw01.acme.lan. IN A 192.0.2.10`).
    pub dns_records_missing: Vec<String>,
    /// Records of this server's name that lead to another machine: to delete.
    pub dns_records_to_delete: Vec<String>,
    /// Reverse (PTR) records that would make this server's address resolve to its name.
    pub dns_reverse_missing: Vec<String>,
    pub server_id: Option<String>,
    pub key_fingerprint: Option<String>,
    pub trust: Option<TrustState>,
    pub api_key_is_default: bool,
    /// The `GWSEED` filesystem the seed was read from, if one was: the API key is scrubbed
    /// there at handoff, and on no other.
    pub gwseed: Option<crate::settings::gwseed::UsedGwseed>,
    /// The seed's network settings, kept under /etc/systemd/network at handoff.
    pub network: Option<crate::network::NetworkConfig>,
    pub warnings: Vec<String>,
    /// What the last DNS check found wrong, if anything: replaced by every new check (the
    /// trust step checks again at each boot), so it goes once DNS is right.
    pub dns_warning: Option<String>,
    pub last_error: Option<Failure>,
    pub updated: Option<String>,
}

impl State {
    /// Every open warning: the DNS check's, then the rest.
    pub fn all_warnings(&self) -> Vec<String> {
        self.dns_warning
            .iter()
            .chain(&self.warnings)
            .cloned()
            .collect()
    }

    pub fn load(root: &Root) -> Result<State, Failure> {
        let path = root.path(STATE_FILE);
        let Some(bytes) =
            fsutil::read_optional(&path).map_err(|e| io(format!("reading {STATE_FILE}"), e))?
        else {
            return Ok(State {
                version: 1,
                ..State::default()
            });
        };
        match serde_json::from_slice::<State>(&bytes) {
            Ok(mut state) => {
                state.restore_proxy_password(root);
                Ok(state)
            }
            // Before registration the state is saved without waiting for the disk, so a power
            // cut may tear it; nothing in it is needed then (the steps are redone), and the
            // token file exists from registration on. Keep the torn file for a look.
            Err(e) if !root.path(TOKEN_FILE).exists() => {
                log::warn!(
                    "{STATE_FILE} is damaged ({e}); starting over (kept as {STATE_FILE}.damaged)"
                );
                let _ = std::fs::rename(&path, root.path(format!("{STATE_FILE}.damaged")));
                Ok(State {
                    version: 1,
                    ..State::default()
                })
            }
            Err(e) => Err(Failure::with_fix(
                Code::StateCorrupt,
                format!("{STATE_FILE} is damaged: {e}"),
                format!(
                    "move {STATE_FILE} away to provision again from the start (the server keeps its identity)"
                ),
            )),
        }
    }

    /// Saves; durably (waiting for the disk) from registration on, and for failures, whose
    /// record `status` must find after a reboot. Earlier phases are simply redone if lost.
    pub fn save(&mut self, root: &Root) -> Result<(), Failure> {
        self.updated = Some(now_rfc3339());
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Failure::new(Code::Internal, e.to_string()))?;
        let path = root.path(STATE_FILE);
        let durable = self.phase >= Phase::Registered
            || self.last_error.as_ref().is_some_and(|e| e.permanent());
        let written = if durable {
            fsutil::write_atomic(&path, &json, 0o644)
        } else {
            fsutil::write_quick(&path, &json, 0o644)
        };
        written.map_err(|e| io(format!("writing {STATE_FILE}"), e))?;
        self.sync_proxy_password(root)?;
        self.sync_dns_marker(root)
    }

    /// Writes [`PROXY_PASSWORD_FILE`] when the proxy has a password the file does not hold yet,
    /// removes it when the proxy has no user (or there is none). A proxy with a user whose
    /// password was not restored (a reader without root) leaves the file alone.
    fn sync_proxy_password(&self, root: &Root) -> Result<(), Failure> {
        let path = root.path(PROXY_PASSWORD_FILE);
        let proxy = self.primary.as_ref().and_then(|p| p.proxy.as_ref());
        let result = match proxy.map(|p| (&p.user, &p.password)) {
            Some((Some(_), Some(password))) => match std::fs::read(&path) {
                Ok(saved) if saved == password.expose().as_bytes() => Ok(()),
                _ => fsutil::write_atomic(&path, password.expose().as_bytes(), 0o600),
            },
            Some((Some(_), None)) => Ok(()),
            _ => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        result.map_err(|e| io(format!("updating {PROXY_PASSWORD_FILE}"), e))
    }

    /// Puts the proxy's password back from [`PROXY_PASSWORD_FILE`] (readable by root only: a
    /// `status` run by another user goes without, and needs none).
    fn restore_proxy_password(&mut self, root: &Root) {
        let Some(proxy) = self.primary.as_mut().and_then(|p| p.proxy.as_mut()) else {
            return;
        };
        if proxy.user.is_some()
            && let Ok(text) = std::fs::read_to_string(root.path(PROXY_PASSWORD_FILE))
        {
            proxy.password = Some(crate::secret::Secret::new(text));
        }
    }

    /// Creates or removes [`DNS_TODO_MARKER`] to match the state.
    fn sync_dns_marker(&self, root: &Root) -> Result<(), Failure> {
        let marker = root.path(DNS_TODO_MARKER);
        let todo = !self.dns_records_missing.is_empty() || !self.dns_records_to_delete.is_empty();
        let result = match (todo, marker.exists()) {
            (true, false) => fsutil::write_quick(&marker, b"", 0o644),
            (false, true) => std::fs::remove_file(&marker),
            _ => Ok(()),
        };
        result.map_err(|e| io(format!("updating {DNS_TODO_MARKER}"), e))
    }

    /// Moves to `phase` and saves.
    pub fn advance(&mut self, root: &Root, phase: Phase) -> Result<(), Failure> {
        if phase > self.phase {
            self.phase = phase;
        }
        self.last_error = None;
        self.save(root)
    }
}

/// The current time as RFC 3339 (UTC, seconds).
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    rfc3339(secs)
}

/// Formats Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (civil-from-days, proleptic Gregorian).
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_305_600 + 3661), "2026-11-22T01:01:01Z");
    }

    #[test]
    fn state_round_trips_and_phases_only_advance() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let mut s = State::load(&root).unwrap();
        assert_eq!(s.phase, Phase::New);
        s.server_id = Some("srv_1".into());
        s.advance(&root, Phase::Registered).unwrap();
        s.advance(&root, Phase::Connected).unwrap();
        let back = State::load(&root).unwrap();
        assert_eq!(back.phase, Phase::Registered);
        assert_eq!(back.server_id.as_deref(), Some("srv_1"));
        // Torn before registration: start over, keep the evidence.
        std::fs::write(root.path(STATE_FILE), b"{broken").unwrap();
        assert_eq!(State::load(&root).unwrap().phase, Phase::New);
        assert!(root.path(format!("{STATE_FILE}.damaged")).exists());
        // Damaged after registration: stop and say so.
        std::fs::write(root.path(TOKEN_FILE), b"gwt_x").unwrap();
        std::fs::write(root.path(STATE_FILE), b"{broken").unwrap();
        assert_eq!(State::load(&root).unwrap_err().code, Code::StateCorrupt);
    }

    /// A state file as the released agent wrote it (registered, waiting for authorization).
    const RELEASED: &str = r#"{
  "version": 1,
  "phase": "handed-off",
  "account": "acme.example",
  "primary": {
    "url": "https://primary.example:8443/",
    "ca_pem": null,
    "pin": "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF",
    "nameservers": [
      "192.0.2.53:53",
      "[2001:db8::53]:5353"
    ],
    "connect_timeout_secs": 10,
    "request_timeout_secs": 30,
    "insecure_http": false
  },
  "hostname": "gw01.acme.lan",
  "server_id": "srv_1",
  "api_key_is_default": true,
  "updated": "2026-11-22T01:01:01Z"
}"#;

    fn registered(dir: &tempfile::TempDir, state: &str) -> Root {
        let root = Root::new(dir.path());
        std::fs::create_dir_all(root.path(STATE_FILE).parent().unwrap()).unwrap();
        std::fs::write(root.path(STATE_FILE), state).unwrap();
        std::fs::write(root.path(TOKEN_FILE), b"gwt_x").unwrap();
        root
    }

    #[test]
    fn a_state_file_of_the_released_agent_loads() {
        let dir = tempfile::tempdir().unwrap();
        let state = State::load(&registered(&dir, RELEASED)).unwrap();
        let ep = state.primary.unwrap();
        assert_eq!(ep.url.as_str(), "https://primary.example:8443/");
        assert_eq!(ep.ca_pem, None);
        let pin = ep.pin.unwrap();
        assert_eq!((pin[0], pin[1], pin[15], pin[31]), (0x00, 0x11, 0xff, 0xff));
        assert_eq!(
            ep.nameservers,
            [
                "192.0.2.53:53".parse().unwrap(),
                "[2001:db8::53]:5353".parse().unwrap()
            ]
        );
        assert_eq!(ep.connect_timeout, std::time::Duration::from_secs(10));
        assert_eq!(ep.request_timeout, std::time::Duration::from_secs(30));
        assert!(!ep.insecure_http);
        let name = state.hostname.unwrap();
        assert_eq!(name.short, "gw01");
        assert_eq!(name.fqdn.as_deref(), Some("gw01.acme.lan"));
    }

    #[test]
    fn the_endpoint_is_saved_in_the_released_form_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = registered(&dir, RELEASED);
        let mut state = State::load(&root).unwrap();
        state.primary.as_mut().unwrap().ca_pem = Some("-----BEGIN CERTIFICATE-----\n".into());
        state.save(&root).unwrap();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.path(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(
            json["primary"],
            serde_json::json!({
                "url": "https://primary.example:8443/",
                "ca_pem": "-----BEGIN CERTIFICATE-----\n",
                "pin": "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
                "nameservers": ["192.0.2.53:53", "[2001:db8::53]:5353"],
                "connect_timeout_secs": 10,
                "request_timeout_secs": 30,
                "insecure_http": false,
            })
        );
        assert_eq!(json["hostname"], "gw01.acme.lan");
        let back = State::load(&root).unwrap();
        assert_eq!(back, state);
    }

    #[test]
    fn an_unreadable_saved_endpoint_says_to_provision_again() {
        for (what, from, to) in [
            ("pin", "\"pin\": \"0011", "\"pin\": \"zz11"),
            ("pin", "\"pin\": \"0011", "\"pin\": \"11"),
            ("address", "https://primary.example:8443/", "no address"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let root = registered(&dir, &RELEASED.replace(from, to));
            let failure = State::load(&root).unwrap_err();
            assert_eq!(failure.code, Code::StateCorrupt, "{to}");
            assert!(
                failure
                    .message
                    .contains(&format!("the saved primary {what} is unreadable")),
                "{}",
                failure.message
            );
            assert!(failure.fix.contains("provision again"), "{}", failure.fix);
        }
    }
}
