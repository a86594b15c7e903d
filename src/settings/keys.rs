//! The settings the agent takes, with their names in each kind of source.

use crate::secret::Secret;
use std::fmt;

/// What sort of value a setting holds; decides how sources hand it over and how it is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    /// Text that is never shown whole: the API key ([redacted]), the proxy URL (its password
    /// [redacted], [`Key::secret`]).
    Secret,
    /// A list; comma-separated where a source only has text.
    List,
    Bool,
    /// Seconds as an integer, or text such as `90s`, `5m`, `1h30m`, `infinity`.
    Duration,
    /// A whole number; text where a source only has text.
    Integer,
}

macro_rules! keys {
    (@default) => { None };
    (@default $default:literal) => { Some($default) };
    ($($variant:ident = $name:literal, $kind:ident, $help:literal $(, default $default:literal)?;)*) => {
        /// A provisioning setting.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Key { $($variant),* }

        impl Key {
            /// Every setting, in the order they are shown.
            pub const ALL: &'static [Key] = &[$(Key::$variant),*];

            /// The name in a seed file (kebab-case).
            pub fn name(self) -> &'static str {
                match self { $(Key::$variant => $name),* }
            }

            pub fn kind(self) -> Kind {
                match self { $(Key::$variant => Kind::$kind),* }
            }

            /// One line on what the setting is, for documentation and `--help`.
            pub fn help(self) -> &'static str {
                match self { $(Key::$variant => $help),* }
            }

            /// The agent's own default, as the text a source would give; `None`: no default
            /// (the setting is required, or leaving it out means something). Collected as the
            /// lowest layer (`Source::BuiltIn`), so validation sees it like any given value.
            pub fn builtin_default(self) -> Option<&'static str> {
                match self { $(Key::$variant => keys!(@default $($default)?)),* }
            }
        }
    };
}

keys! {
    Primary = "primary", Text, "address of the primary server: host, host:port, IPv4, [IPv6]:port or https:// URL";
    Account = "account", Text, "DNS name of the account this server attaches to";
    ApiKey = "api-key", Secret, "API key from the account settings; blank means the default restricted key";
    Hostname = "hostname", Text, "this server's host name or FQDN (default: the system's)";
    DnsCheck = "dns-check", Text, "DNS self-check policy: warn, require or off", default "warn";
    Nameservers = "nameservers", List, "DNS servers for the self-check (default: the system's resolver)";
    Address = "address", List, "static address(es) with prefix length, 192.0.2.10/24 (default: DHCP)";
    Gateway = "gateway", Text, "default gateway (router) for a static address";
    DnsServers = "dns-servers", List, "DNS servers this server uses (default: DHCP's)";
    SearchDomains = "search-domains", List, "DNS search domains (default: DHCP's)";
    Vlan = "vlan", Integer, "VLAN id 1-4094 of the server network (default: untagged)";
    Interface = "interface", Text, "network link the settings are for: name or MAC address (default: every Ethernet link)";
    PrimaryCa = "primary-ca", Text, "CA certificate of a primary with a private CA: PEM text or an absolute path";
    PrimaryCaSha256 = "primary-ca-sha256", Text, "SHA-256 fingerprint pinning the primary's certificate or CA";
    ConnectTimeout = "connect-timeout", Duration, "time allowed for one TCP and TLS connection attempt", default "10s";
    RequestTimeout = "request-timeout", Duration, "time allowed for one request to the primary", default "30s";
    Deadline = "deadline", Duration, "how long to keep retrying transient failures, or infinity", default "30m";
    InsecureHttp = "insecure-http", Bool, "allow a plain http:// primary; for testing only", default "false";
    Proxy = "proxy", Secret, "HTTP proxy to reach the primary through: http://[user:password@]host:port";
    NoProxy = "no-proxy", List, "hosts reached without the proxy: names, .domain suffixes, IPs, CIDR ranges, *";
}

impl Key {
    /// Looks a setting up by its seed name (kebab-case only: seeds are strict).
    pub fn from_seed_name(name: &str) -> Option<Key> {
        Key::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// Looks a setting up by the part after `gateway.` on the kernel command line or in a
    /// credential name. The kernel treats `-` and `_` in parameter names alike, and so do we.
    pub fn from_param_name(name: &str) -> Option<Key> {
        let wanted = name.replace('-', "_");
        Key::ALL.iter().copied().find(|k| k.param_name() == wanted)
    }

    /// The name after `gateway.` on the kernel command line and in credentials (`api_key`).
    pub fn param_name(self) -> String {
        self.name().replace('-', "_")
    }

    /// The command-line flag that sets it.
    pub fn flag(self) -> String {
        match self {
            Key::ApiKey => "--api-key-file".to_string(),
            Key::Nameservers => "--nameserver".to_string(),
            Key::DnsServers => "--dns-server".to_string(),
            Key::SearchDomains => "--search-domain".to_string(),
            _ => format!("--{}", self.name()),
        }
    }

    /// "did you mean gateway.account?" for a misspelt name after `gateway.`, if one is near.
    pub fn suggest_param(name: &str) -> Option<String> {
        let known: Vec<String> = Key::ALL.iter().map(|k| k.param_name()).collect();
        crate::problem::closest(&name.replace('-', "_"), known.iter().map(String::as_str))
            .map(|near| format!("did you mean gateway.{near}?"))
    }

    pub fn is_secret(self) -> bool {
        self.kind() == Kind::Secret
    }

    /// A secret setting's text, held from the moment it is read in the form that prints
    /// safely: the proxy URL with its password redacted, anything else as `[redacted]`.
    pub fn secret(self, text: &str) -> Secret {
        match self {
            Key::Proxy => crate::proxy::secret(text),
            _ => Secret::new(text),
        }
    }

    /// Whether `text`, given for this setting, holds a secret: the API key when not blank, the
    /// proxy URL when it has a password.
    pub fn holds_secret(self, text: &str) -> bool {
        match self {
            Key::Proxy => crate::proxy::has_password(text),
            _ => self.is_secret() && !text.trim().is_empty(),
        }
    }

    /// What the secret of a secret setting is called in messages.
    pub fn secret_name(self) -> &'static str {
        match self {
            Key::Proxy => "the proxy password",
            _ => "the API key",
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &key in Key::ALL {
            assert_eq!(Key::from_seed_name(key.name()), Some(key));
            assert_eq!(Key::from_param_name(&key.param_name()), Some(key));
            assert_eq!(Key::from_param_name(key.name()), Some(key));
        }
        assert_eq!(
            Key::from_seed_name("api_key"),
            None,
            "seeds take kebab-case only"
        );
        assert_eq!(Key::from_param_name("api_key"), Some(Key::ApiKey));
    }
}
