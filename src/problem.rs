//! Problems found in the settings: what is wrong, where it came from, and how to fix it.

use crate::code::code_enum;
use crate::settings::Key;
use serde::Serialize;
use std::fmt;

code_enum! {
    /// A settings problem's code (`check --json`'s `problems[].code`). To add one: a variant
    /// here, and a line in [`Code::question`] if the installer asks for what it is about
    /// (no `match` has a wildcard, so the compiler asks).
    pub enum Code {
        /// `/proc/cmdline` could not be read.
        CmdlineUnreadable = "cmdline-unreadable",
        /// A `gateway.*` kernel parameter the agent does not know.
        UnknownParameter = "unknown-parameter",
        /// A `gateway.*` kernel parameter without `=value`.
        MissingValue = "missing-value",
        /// The API key on the kernel command line, which every user can read.
        SecretOnCmdline = "secret-on-cmdline",
        SeedUnreadable = "seed-unreadable",
        SeedTooLarge = "seed-too-large",
        SeedNotText = "seed-not-text",
        /// A seed holding the API key is readable by others than root.
        SeedReadable = "seed-readable",
        SeedSyntax = "seed-syntax",
        /// A key in a seed file the agent does not know.
        UnknownKey = "unknown-key",
        /// Two seeds give different values for a setting.
        SeedsDisagree = "seeds-disagree",
        GwseedUnreadable = "gwseed-unreadable",
        /// Two `GWSEED` filesystems of the same rank hold different seeds.
        GwseedAmbiguous = "gwseed-ambiguous",
        /// Two `GWSEED` filesystems hold the same seed (the copy is ignored).
        GwseedCopy = "gwseed-copy",
        CredentialsUnreadable = "credentials-unreadable",
        CredentialUnreadable = "credential-unreadable",
        CredentialNotText = "credential-not-text",
        UnknownCredential = "unknown-credential",
        ApiKeyFileUnreadable = "api-key-file-unreadable",
        /// `seed embed`: a CA path cannot be checked off the appliance.
        CaPathUnchecked = "ca-path-unchecked",
        PrimaryMissing = "primary-missing",
        AccountMissing = "account-missing",
        /// The API key is blank or not set, and the image has no default key.
        ApiKeyMissing = "api-key-missing",
        /// Another required setting is not set.
        SettingMissing = "setting-missing",
        InvalidPrimary = "invalid-primary",
        InvalidAccount = "invalid-account",
        InvalidApiKey = "invalid-api-key",
        InvalidHostname = "invalid-hostname",
        InvalidDnsCheck = "invalid-dns-check",
        InvalidNameserver = "invalid-nameserver",
        InvalidPrimaryCa = "invalid-primary-ca",
        InvalidPrimaryCaSha256 = "invalid-primary-ca-sha256",
        /// `connect-timeout`, `request-timeout` or `deadline`.
        InvalidDuration = "invalid-duration",
        InvalidBoolean = "invalid-boolean",
        InvalidAddress = "invalid-address",
        InvalidGateway = "invalid-gateway",
        InvalidDnsServer = "invalid-dns-server",
        InvalidSearchDomain = "invalid-search-domain",
        InvalidVlan = "invalid-vlan",
        InvalidInterface = "invalid-interface",
        /// A static address with no gateway, or no DNS server: only the local subnet, or no
        /// names, can be reached.
        NetworkIncomplete = "network-incomplete",
        InvalidProxy = "invalid-proxy",
        InvalidNoProxy = "invalid-no-proxy",
    }
}

impl Code {
    /// The code for an invalid value of `key`.
    pub fn invalid(key: Key) -> Code {
        match key {
            Key::Primary => Code::InvalidPrimary,
            Key::Account => Code::InvalidAccount,
            Key::ApiKey => Code::InvalidApiKey,
            Key::Hostname => Code::InvalidHostname,
            Key::DnsCheck => Code::InvalidDnsCheck,
            Key::Nameservers => Code::InvalidNameserver,
            Key::PrimaryCa => Code::InvalidPrimaryCa,
            Key::PrimaryCaSha256 => Code::InvalidPrimaryCaSha256,
            Key::ConnectTimeout | Key::RequestTimeout | Key::Deadline => Code::InvalidDuration,
            Key::InsecureHttp => Code::InvalidBoolean,
            Key::Address => Code::InvalidAddress,
            Key::Gateway => Code::InvalidGateway,
            Key::DnsServers => Code::InvalidDnsServer,
            Key::SearchDomains => Code::InvalidSearchDomain,
            Key::Vlan => Code::InvalidVlan,
            Key::Interface => Code::InvalidInterface,
            Key::Proxy => Code::InvalidProxy,
            Key::NoProxy => Code::InvalidNoProxy,
        }
    }

    /// The code for a required `key` that no source gave.
    pub fn missing(key: Key) -> Code {
        match key {
            Key::Primary => Code::PrimaryMissing,
            Key::Account => Code::AccountMissing,
            Key::ApiKey => Code::ApiKeyMissing,
            _ => Code::SettingMissing,
        }
    }

    /// A required setting is not set (`check` says so once when nothing was given at all).
    pub fn is_missing(self) -> bool {
        matches!(
            self,
            Code::PrimaryMissing
                | Code::AccountMissing
                | Code::ApiKeyMissing
                | Code::SettingMissing
        )
    }

    /// The installer question whose answer this problem is about, if any.
    pub fn question(self) -> Option<Key> {
        use Code::*;
        match self {
            InvalidPrimary | PrimaryMissing => Some(Key::Primary),
            InvalidAccount | AccountMissing => Some(Key::Account),
            InvalidApiKey | ApiKeyMissing => Some(Key::ApiKey),
            CmdlineUnreadable
            | UnknownParameter
            | MissingValue
            | SecretOnCmdline
            | SeedUnreadable
            | SeedTooLarge
            | SeedNotText
            | SeedReadable
            | SeedSyntax
            | UnknownKey
            | SeedsDisagree
            | GwseedUnreadable
            | GwseedAmbiguous
            | GwseedCopy
            | CredentialsUnreadable
            | CredentialUnreadable
            | CredentialNotText
            | UnknownCredential
            | ApiKeyFileUnreadable
            | CaPathUnchecked
            | SettingMissing
            | InvalidHostname
            | InvalidDnsCheck
            | InvalidNameserver
            | InvalidPrimaryCa
            | InvalidPrimaryCaSha256
            | InvalidDuration
            | InvalidBoolean => None,
            InvalidAddress | NetworkIncomplete => Some(Key::Address),
            InvalidGateway => Some(Key::Gateway),
            InvalidDnsServer => Some(Key::DnsServers),
            InvalidSearchDomain => Some(Key::SearchDomains),
            InvalidVlan => Some(Key::Vlan),
            InvalidInterface | InvalidProxy | InvalidNoProxy => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem. `subject` names the setting and its source
/// (`gateway.account from /proc/cmdline`), `message` says what is wrong without ever quoting a
/// secret, `fix` says what to do. `code` is stable and machine-readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub severity: Severity,
    pub code: Code,
    pub subject: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Problem {
    pub fn error(code: Code, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            subject: subject.into(),
            message: message.into(),
            fix: None,
        }
    }

    pub fn warning(code: Code, subject: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(code, subject, message)
        }
    }

    pub fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = Some(fix.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n  fix: {fix}")?;
        }
        Ok(())
    }
}

/// The closest candidate to a misspelt name, for "did you mean" hints.
pub fn closest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_serde_names() {
        crate::code::check_names(Code::ALL, |c| c.as_str());
    }

    #[test]
    fn every_key_has_its_codes() {
        for &key in Key::ALL {
            assert!(Code::missing(key).is_missing(), "{key:?}");
            assert!(!Code::invalid(key).is_missing(), "{key:?}");
        }
        for key in [Key::Primary, Key::Account, Key::ApiKey] {
            assert_eq!(Code::missing(key).question(), Some(key));
            assert_eq!(Code::invalid(key).question(), Some(key));
        }
    }

    #[test]
    fn suggests_near_names_only() {
        let keys = ["primary", "account", "api-key", "dns-check"];
        assert_eq!(closest("acount", keys), Some("account"));
        assert_eq!(closest("api_key", keys), Some("api-key"));
        assert_eq!(closest("primery", keys), Some("primary"));
        assert_eq!(closest("colour", keys), None);
    }
}
