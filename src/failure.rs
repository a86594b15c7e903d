//! Why provisioning could not go on: a stable [`Code`], a one-line message and fix, and
//! whether retrying can help. Messages never contain the API key or the server token.
//!
//! Failures and settings problems have two code enums, not one: a failure ends a command,
//! so its code has an exit status, a class and the installer questions it blames; a
//! [`crate::problem::Problem`] is one of many findings that together end in one failure
//! (`settings-invalid` or `no-settings`), so its [`crate::problem::Code`] has none of those.

use crate::code::code_enum;
use crate::exit;
use crate::settings::Key;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

code_enum! {
    /// A failure code. The table in docs/provisioning.md lists every one with its class and
    /// exit status (tests/docs_agree.rs checks it). To add one: a variant here, then a line in
    /// each `match` below (none has a wildcard, so the compiler asks), then a row in the table.
    pub enum Code {
        /// At least one setting is invalid.
        SettingsInvalid = "settings-invalid",
        /// No settings anywhere.
        NoSettings = "no-settings",
        /// The deadline passed while retrying a transient failure.
        Deadline = "deadline",
        /// The primary's name does not resolve.
        PrimaryDns = "primary-dns",
        PrimaryRefused = "primary-refused",
        PrimaryUnreachable = "primary-unreachable",
        PrimaryTimeout = "primary-timeout",
        PrimaryReset = "primary-reset",
        /// The primary answered 5xx.
        PrimaryError = "primary-error",
        RateLimited = "rate-limited",
        /// A certificate looks expired or not valid yet because this server's clock is wrong.
        ClockWrong = "clock-wrong",
        /// `dns-check = "require"` and this server's DNS record is missing or wrong.
        DnsMissing = "dns-missing",
        /// Registered, waiting for an administrator to authorize the server.
        NotTrusted = "not-trusted",
        TlsPinMismatch = "tls-pin-mismatch",
        TlsPinNotIssuer = "tls-pin-not-issuer",
        TlsUnknownIssuer = "tls-unknown-issuer",
        TlsWrongName = "tls-wrong-name",
        TlsExpired = "tls-expired",
        TlsNotYetValid = "tls-not-yet-valid",
        TlsNotServerCertificate = "tls-not-server-certificate",
        TlsCertificate = "tls-certificate",
        TlsVersion = "tls-version",
        TlsHandshake = "tls-handshake",
        PrimaryRedirect = "primary-redirect",
        PrimaryResponseTooLarge = "primary-response-too-large",
        KeyRejected = "key-rejected",
        KeyExpired = "key-expired",
        KeyIpNotAllowed = "key-ip-not-allowed",
        KeyAccountMismatch = "key-account-mismatch",
        KeyRestricted = "key-restricted",
        AccountUnknown = "account-unknown",
        IdentityConflict = "identity-conflict",
        ServerRejected = "server-rejected",
        /// The primary no longer knows the registered server (its token or record is gone).
        RegistrationLost = "registration-lost",
        /// The primary says the server's client certificate has expired: renewal cannot
        /// help, the server re-enrols and waits for Authorize again.
        CertificateExpired = "certificate-expired",
        /// The address answers, but not with the registration protocol.
        NotAPrimary = "not-a-primary",
        /// The primary refused a request the agent made: a bug on one side.
        Protocol = "protocol",
        /// `await-trust` before `provision` registered the server.
        NotProvisioned = "not-provisioned",
        StateCorrupt = "state-corrupt",
        Io = "io",
        NoMachineId = "no-machine-id",
        IdentityDamaged = "identity-damaged",
        /// A bug.
        Internal = "internal",
        /// No TCP connection to the proxy (refused, no route, timed out, its name unknown).
        ProxyUnreachable = "proxy-unreachable",
        /// The proxy answered CONNECT with 407: it does not accept the credentials.
        ProxyAuth = "proxy-auth",
        /// The proxy answered CONNECT with a refusal (403: its policy; any other but the ones
        /// of `proxy-upstream`).
        ProxyConnectRefused = "proxy-connect-refused",
        /// The proxy answered CONNECT with 408, 429, 500, 502, 503 or 504: it could not reach
        /// the primary, or is busy.
        ProxyUpstream = "proxy-upstream",
    }
}

/// Whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Stops at once: a person must change something.
    Permanent,
    /// Retried with backoff until the deadline.
    Transient,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Permanent => "permanent",
            Class::Transient => "transient",
        }
    }
}

const REACH_FIX: &str =
    "check the primary address, this server's network and any firewall between them";
const TRUST_FIX: &str = "set primary-ca to the primary's CA certificate (or primary-ca-sha256), or check the primary address";
const NOT_PRIMARY_FIX: &str = "check that the primary address points at the primary server";
const WRONG_NAME_FIX: &str = "use an address the primary's certificate names (its DNS name, usually), or reissue the certificate";
/// How an administrator removes a server on the primary (docs/lifecycle.md).
macro_rules! remove_on_primary {
    () => {
        "an administrator must remove the server on the primary (its web page: Server \
         information, Remove; or DELETE /api/v1/accounts/ACCOUNT/servers/ID with a full API key)"
    };
}
const REENROL_FIX: &str = "nothing: the agent re-enrols (`gateway-firstboot renew`); click Authorize on the primary again";
const NO_MACHINE_ID_FIX: &str =
    "systemd writes it early at first boot; the image must ship it as \"uninitialized\"";
const REJECTED_FIX: &str = concat!(
    "ask the administrator; to register again, ",
    remove_on_primary!(),
    ", then run `gateway-firstboot reset --yes` here and provision again"
);

impl Code {
    /// Whether a change of this server's addresses or routes may mend it (a network that came
    /// up late): the retry then tries again when the network changes, not only at the end of
    /// its backoff.
    pub fn network_may_fix(self) -> bool {
        use Code::*;
        matches!(
            self,
            PrimaryDns
                | PrimaryRefused
                | PrimaryUnreachable
                | PrimaryTimeout
                | PrimaryReset
                | DnsMissing
                | ProxyUnreachable
        )
    }

    pub fn class(self) -> Class {
        use Code::*;
        match self {
            PrimaryDns | PrimaryRefused | PrimaryUnreachable | PrimaryTimeout | PrimaryReset
            | PrimaryError | RateLimited | ClockWrong | DnsMissing | NotTrusted
            | ProxyUnreachable | ProxyUpstream => Class::Transient,
            SettingsInvalid
            | NoSettings
            | Deadline
            | TlsPinMismatch
            | TlsPinNotIssuer
            | TlsUnknownIssuer
            | TlsWrongName
            | TlsExpired
            | TlsNotYetValid
            | TlsNotServerCertificate
            | TlsCertificate
            | TlsVersion
            | TlsHandshake
            | PrimaryRedirect
            | PrimaryResponseTooLarge
            | KeyRejected
            | KeyExpired
            | KeyIpNotAllowed
            | KeyAccountMismatch
            | KeyRestricted
            | AccountUnknown
            | IdentityConflict
            | ServerRejected
            | RegistrationLost
            | CertificateExpired
            | NotAPrimary
            | Protocol
            | NotProvisioned
            | StateCorrupt
            | Io
            | NoMachineId
            | IdentityDamaged
            | ProxyAuth
            | ProxyConnectRefused
            | Internal => Class::Permanent,
        }
    }

    /// Permanent failures stop at once; transient ones are retried until the deadline.
    pub fn permanent(self) -> bool {
        self.class() == Class::Permanent
    }

    /// The exit status when this failure ends a command (docs/exit-codes.md). A transient
    /// failure ends one only in `check --online`, which tries once; elsewhere it is retried
    /// and ends as [`Code::Deadline`].
    pub fn exit_code(self) -> u8 {
        use Code::*;
        match self {
            SettingsInvalid => exit::DATAERR,
            NoSettings => exit::NOINPUT,
            Deadline => exit::TEMPFAIL,
            KeyRejected | KeyExpired | KeyIpNotAllowed | KeyAccountMismatch | KeyRestricted
            | ServerRejected | ProxyAuth => exit::NOPERM,
            Protocol | NotAPrimary => exit::PROTOCOL,
            Io => exit::IOERR,
            Internal => exit::SOFTWARE,
            TlsPinMismatch
            | TlsPinNotIssuer
            | TlsUnknownIssuer
            | TlsWrongName
            | TlsExpired
            | TlsNotYetValid
            | TlsNotServerCertificate
            | TlsCertificate
            | TlsVersion
            | TlsHandshake
            | PrimaryRedirect
            | PrimaryResponseTooLarge
            | AccountUnknown
            | IdentityConflict
            | RegistrationLost
            | CertificateExpired
            | NotProvisioned
            | StateCorrupt
            | NoMachineId
            | IdentityDamaged
            | ProxyConnectRefused => exit::CONFIG,
            PrimaryDns | PrimaryRefused | PrimaryUnreachable | PrimaryTimeout | PrimaryReset
            | PrimaryError | RateLimited | ClockWrong | DnsMissing | NotTrusted
            | ProxyUnreachable | ProxyUpstream => exit::UNAVAILABLE,
        }
    }

    /// The fix, where it is the same text whatever the details; `None` where the fix names
    /// a file, a record or another failure's fix ([`Failure::with_fix`] gives it).
    pub fn fix(self) -> Option<&'static str> {
        use Code::*;
        Some(match self {
            PrimaryDns => {
                "check the primary address and this server's DNS settings (nameservers in the seed, or DHCP)"
            }
            PrimaryRefused => "check that the primary is running and the port is right",
            PrimaryUnreachable | PrimaryTimeout | PrimaryReset => REACH_FIX,
            PrimaryError => "nothing: the agent retries; if it lasts, check the primary",
            RateLimited => "nothing: the agent waits as asked",
            ClockWrong => {
                "set the clock (timedatectl set-time, or fix NTP); provisioning retries on its own"
            }
            NotTrusted => "click Authorize on the primary",
            TlsPinMismatch => {
                "check the pin against `openssl x509 -noout -fingerprint -sha256` of the primary's certificate or CA"
            }
            TlsPinNotIssuer => {
                "this is not the primary (anyone can send a public CA certificate); check the primary address and the network path"
            }
            TlsUnknownIssuer | TlsCertificate => TRUST_FIX,
            TlsWrongName => WRONG_NAME_FIX,
            TlsExpired => "renew the primary's certificate",
            TlsNotYetValid => "check the primary's certificate dates; reissue it if they are wrong",
            TlsNotServerCertificate => {
                "the primary must present a TLS server certificate issued for its name; check the primary address"
            }
            TlsVersion => {
                "enable TLS 1.2 or 1.3 on the primary (TLS 1.0 and 1.1 are refused), or check the primary address"
            }
            TlsHandshake => "check that the primary address points at the primary's HTTPS port",
            PrimaryRedirect => {
                "set primary to the address the primary itself answers on (an https:// URL with the right host and port)"
            }
            PrimaryResponseTooLarge | NotAPrimary => NOT_PRIMARY_FIX,
            KeyRejected => {
                "copy the API key again from the account settings, or leave it blank for the default restricted key"
            }
            KeyExpired => "create a new API key in the account settings",
            KeyIpNotAllowed => {
                "allow this server's address for the key in the account settings, or use another key"
            }
            KeyAccountMismatch => "check the account domain name, or use a key of this account",
            KeyRestricted => "use a full API key from the account settings",
            AccountUnknown => {
                "check the account domain name (Account settings on the primary show it)"
            }
            IdentityConflict => concat!(remove_on_primary!(), ", then provision again"),
            ServerRejected => REJECTED_FIX,
            RegistrationLost => {
                "run `gateway-firstboot reset --yes`, then provision again (reboot, or `gateway-firstboot install`)"
            }
            CertificateExpired => REENROL_FIX,
            Protocol => "report this with the agent's version",
            NotProvisioned => {
                "run `gateway-firstboot provision` (gateway-firstboot.service does at boot)"
            }
            NoSettings => {
                "give gateway.primary= and gateway.account= on the kernel command line, write /etc/gateway/seed.toml, \
                 put seed.toml on a FAT stick labelled GWSEED, pass gateway.* credentials, \
                 or run `gateway-firstboot install`"
            }
            NoMachineId => NO_MACHINE_ID_FIX,
            Internal => "report a bug",
            ProxyUnreachable => {
                "check the proxy setting (host and port), that the proxy is running, and this server's network"
            }
            ProxyAuth => "check the proxy user and password in the proxy setting",
            ProxyConnectRefused => {
                "ask the proxy's administrator to allow CONNECT to the primary's host and port, or check the primary address"
            }
            ProxyUpstream => {
                "nothing: the agent retries; if it lasts, check the primary address and that the proxy can reach the primary"
            }
            SettingsInvalid | Deadline | DnsMissing | StateCorrupt | Io | IdentityDamaged => {
                return None;
            }
        })
    }

    /// The installer questions this failure is about, asked again in this order; none when
    /// another answer cannot help.
    pub fn blames(self) -> &'static [Key] {
        use Code::*;
        match self {
            AccountUnknown => &[Key::Account],
            KeyAccountMismatch => &[Key::Account, Key::ApiKey],
            KeyRejected | KeyExpired | KeyIpNotAllowed | KeyRestricted => &[Key::ApiKey],
            PrimaryDns
            | PrimaryRefused
            | PrimaryUnreachable
            | PrimaryTimeout
            | PrimaryReset
            | PrimaryError
            | RateLimited
            | ClockWrong
            | PrimaryRedirect
            | PrimaryResponseTooLarge
            | NotAPrimary
            | TlsPinMismatch
            | TlsPinNotIssuer
            | TlsUnknownIssuer
            | TlsWrongName
            | TlsExpired
            | TlsNotYetValid
            | TlsNotServerCertificate
            | TlsCertificate
            | TlsVersion
            | TlsHandshake
            | ProxyConnectRefused
            | ProxyUpstream => &[Key::Primary],
            ProxyUnreachable | ProxyAuth => &[],
            SettingsInvalid | NoSettings | Deadline | DnsMissing | NotTrusted
            | IdentityConflict | ServerRejected | RegistrationLost | CertificateExpired
            | Protocol | NotProvisioned | StateCorrupt | Io | NoMachineId | IdentityDamaged
            | Internal => &[],
        }
    }
}

/// A failure. Its class is its code's: the state file still records `permanent` for
/// readers of `status --json`, and ignores it when read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "Record", from = "Record")]
pub struct Failure {
    pub code: Code,
    pub message: String,
    pub fix: String,
    /// The primary's `Retry-After`, if it gave one.
    pub retry_after: Option<Duration>,
}

/// A failure as the state file and `status --json` have it.
#[derive(Serialize, Deserialize)]
struct Record {
    code: Code,
    message: String,
    fix: String,
    permanent: bool,
}

impl From<Failure> for Record {
    fn from(f: Failure) -> Self {
        Record {
            permanent: f.permanent(),
            code: f.code,
            message: f.message,
            fix: f.fix,
        }
    }
}

impl From<Record> for Failure {
    fn from(r: Record) -> Self {
        Failure::with_fix(r.code, r.message, r.fix)
    }
}

impl Failure {
    /// A failure whose code has a fixed fix ([`Code::fix`]).
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        debug_assert!(code.fix().is_some(), "{code} has no fixed fix");
        Failure::with_fix(code, message, code.fix().unwrap_or_default())
    }

    pub fn with_fix(code: Code, message: impl Into<String>, fix: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            fix: fix.into(),
            retry_after: None,
        }
    }

    /// A bug, with what went wrong.
    pub fn internal(message: impl fmt::Display) -> Self {
        Failure::new(Code::Internal, message.to_string())
    }

    /// Permanent failures stop at once; transient ones are retried until the deadline.
    pub fn permanent(&self) -> bool {
        self.code.permanent()
    }

    /// The exit status for this failure (docs/exit-codes.md).
    pub fn exit_code(&self) -> u8 {
        self.code.exit_code()
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]\n  fix: {}", self.message, self.code, self.fix)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::with_fix(
            Code::Io,
            e.to_string(),
            "check the disk and the permissions of /var/lib and /etc",
        )
    }
}

/// Wraps an I/O error with what was being done.
pub fn io(what: impl fmt::Display, e: std::io::Error) -> Failure {
    Failure::with_fix(
        Code::Io,
        format!("{what}: {e}"),
        "check that the file system is writable and has space",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        crate::code::check_names(Code::ALL, |c| c.as_str());
    }

    #[test]
    fn the_state_file_keeps_the_shape_it_had() {
        let f = Failure::new(Code::KeyRejected, "the primary rejected the API key");
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "code": "key-rejected",
                "message": "the primary rejected the API key",
                "fix": Code::KeyRejected.fix().unwrap(),
                "permanent": true,
            })
        );
        assert_eq!(serde_json::from_value::<Failure>(json).unwrap(), f);
        let transient = serde_json::to_value(Failure::new(Code::PrimaryRefused, "m")).unwrap();
        assert_eq!(transient["permanent"], false);
    }

    #[test]
    fn transient_failures_exit_unavailable_and_permanent_ones_do_not() {
        for &code in Code::ALL {
            assert_eq!(
                code.exit_code() == exit::UNAVAILABLE,
                !code.permanent(),
                "{code}"
            );
        }
    }

    #[test]
    fn a_bug_exits_software() {
        assert_eq!(Failure::internal("oops").exit_code(), exit::SOFTWARE);
    }
}
