//! Offline validation: turns the collected values into [`Settings`], reporting every problem at
//! once, each naming its setting, its source and the fix. After this point bad states are
//! unrepresentable: the rest of the agent only sees `Settings`.

use super::{Collected, Entry, Key, RawValue, Source, VENDOR_DEFAULTS};
use crate::problem::{Code, Problem};
use crate::proxy::{NoProxy, Proxy};
use crate::root::Root;
use crate::secret::Secret;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use url::Url;

mod network;
pub(crate) use network::validate_network;

/// The DNS self-check policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DnsCheck {
    /// Check, report a miss, carry on.
    Warn,
    /// Keep checking until this server's name resolves to it, within the deadline.
    Require,
    /// Do not check.
    Off,
}

/// Validated provisioning settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Base URL of the primary, ending in `/`.
    pub primary: Url,
    /// Account domain name, lowercase, without a trailing dot.
    pub account: String,
    pub api_key: Secret,
    /// True when the key is the image's default restricted key.
    pub api_key_is_default: bool,
    pub hostname: Option<String>,
    pub dns_check: DnsCheck,
    pub nameservers: Vec<SocketAddr>,
    /// PEM text of the seed's CA for the primary (validated: holds certificates).
    pub primary_ca: Option<String>,
    pub primary_ca_sha256: Option<[u8; 32]>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// `None`: retry transient failures for ever.
    pub deadline: Option<Duration>,
    pub insecure_http: bool,
    /// The seed's network settings; `None`: the image's own (DHCP).
    pub network: Option<crate::network::NetworkConfig>,
    /// The HTTP proxy for the primary, if one is set (its password a [`Secret`]).
    pub proxy: Option<Proxy>,
    /// The hosts reached without the proxy.
    pub no_proxy: NoProxy,
}

/// The outcome of checking one setting.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Checked<T> {
    /// No source gave it (nor has it a built-in default).
    NotGiven,
    /// Given, and valid.
    Valid(T),
    /// Given but invalid; the problem is already recorded.
    Invalid,
}

impl<T> Checked<T> {
    /// The value if it is valid. For a setting that may be left out, and for one whose
    /// problem is already recorded.
    fn valid(self) -> Option<T> {
        match self {
            Checked::Valid(v) => Some(v),
            Checked::NotGiven | Checked::Invalid => None,
        }
    }

    /// The value of a setting that must be there: records that it is missing when no source
    /// gave it (for a setting with a built-in default, only a caller that bypassed `collect`).
    fn required(self, key: Key, problems: &mut Vec<Problem>) -> Option<T> {
        if let Checked::NotGiven = self {
            problems.push(missing(key));
        }
        self.valid()
    }
}

/// A failed check: what is wrong, and the fix.
struct Invalid {
    message: String,
    fix: String,
}

fn invalid(message: impl Into<String>, fix: impl Into<String>) -> Invalid {
    Invalid {
        message: message.into(),
        fix: fix.into(),
    }
}

fn text<'a>(value: &'a RawValue, fix: &str) -> Result<&'a str, Invalid> {
    match value {
        RawValue::Text(s) => Ok(s),
        other => Err(invalid(
            format!("expected a string, found {}", other.type_name()),
            fix,
        )),
    }
}

/// Validates the collected settings. Returns the settings when there is no error, and every
/// problem found (including those met while reading the sources).
pub fn validate(root: &Root, collected: &Collected) -> (Option<Settings>, Vec<Problem>) {
    let mut v = Validator {
        collected,
        problems: collected.problems.clone(),
    };
    // Settings with a built-in default are required: `collect` always gives them.
    // Only a valid `true` allows http; an invalid value is reported and allows nothing.
    let insecure_http = v.require(Key::InsecureHttp, check_bool) == Some(true);
    let primary = v.check(Key::Primary, |value| check_primary(value, insecure_http));
    let account = v.check(Key::Account, |value| {
        let s = text(value, ACCOUNT_FIX)?;
        check_dns_name(s)
            .map_err(|why| invalid(format!("{s:?} is not a DNS name: {why}"), ACCOUNT_FIX))
    });
    let api_key = v.api_key();
    let hostname = v.check(Key::Hostname, |value| {
        let fix = "give this server's host name (gw01) or its full name (gw01.acme.lan)";
        let s = text(value, fix)?;
        check_dns_name(s).map_err(|why| invalid(format!("{s:?} is not a host name: {why}"), fix))
    });
    let dns_check = v.require(Key::DnsCheck, |value| {
        let fix = "use warn, require or off";
        match text(value, fix)? {
            "warn" => Ok(DnsCheck::Warn),
            "require" => Ok(DnsCheck::Require),
            "off" => Ok(DnsCheck::Off),
            other => Err(invalid(format!("{other:?} is not a DNS check policy"), fix)),
        }
    });
    let nameservers = v.check(Key::Nameservers, check_nameservers);
    let primary_ca =
        v.check_with_origin(Key::PrimaryCa, |value, entry| check_ca(root, value, entry));
    let primary_ca_sha256 = v.check(Key::PrimaryCaSha256, check_pin);
    let connect_timeout = v.require(Key::ConnectTimeout, |value| {
        check_duration(value, 1, 600, false)
    });
    let request_timeout = v.require(Key::RequestTimeout, |value| {
        check_duration(value, 1, 3600, false)
    });
    let deadline = v.require(Key::Deadline, |value| {
        check_duration(value, 10, 30 * 86400, true)
    });
    let network = v.network();
    let proxy = v.check(Key::Proxy, check_proxy);
    let no_proxy = v.check(Key::NoProxy, check_no_proxy);
    v.plain_http_through_proxy(&primary, &proxy);

    // A missing primary or account is reported after every invalid value, as `check` lists them.
    let mut problems = v.problems;
    let primary = primary.required(Key::Primary, &mut problems);
    let account = account.required(Key::Account, &mut problems);
    let settings = (|| {
        if problems.iter().any(Problem::is_error) {
            return None;
        }
        let (api_key, api_key_is_default) = api_key?;
        Some(Settings {
            primary: primary?,
            account: account?,
            api_key,
            api_key_is_default,
            hostname: hostname.valid(),
            dns_check: dns_check?,
            nameservers: nameservers.valid().unwrap_or_default(),
            primary_ca: primary_ca.valid(),
            primary_ca_sha256: primary_ca_sha256.valid(),
            // Neither timeout takes `infinity`.
            connect_timeout: connect_timeout??,
            request_timeout: request_timeout??,
            deadline: deadline?,
            insecure_http,
            network: network.ok()?,
            proxy: proxy.valid().flatten(),
            no_proxy: no_proxy.valid().unwrap_or_default(),
        })
    })();
    problems.sort_by_key(|p| !p.is_error());
    (settings, problems)
}

const ACCOUNT_FIX: &str =
    "give the account's DNS name as shown in its settings on the primary, for example acme.example";

fn missing(key: Key) -> Problem {
    Problem::error(Code::missing(key), key.name(), "is not set").fix(format!(
        "give gateway.{}= on the kernel command line, {} in a seed file (/etc/gateway/seed.toml), or {}",
        key.param_name(),
        key.name(),
        key.flag()
    ))
}

struct Validator<'a> {
    collected: &'a Collected,
    problems: Vec<Problem>,
}

impl Validator<'_> {
    /// Checks the effective value of `key`, recording the problem if it is invalid.
    fn check<T>(
        &mut self,
        key: Key,
        f: impl FnOnce(&RawValue) -> Result<T, Invalid>,
    ) -> Checked<T> {
        self.check_with_origin(key, |value, _| f(value))
    }

    /// Checks a setting that must be there, recording that it is missing if no source gave it.
    fn require<T>(
        &mut self,
        key: Key,
        f: impl FnOnce(&RawValue) -> Result<T, Invalid>,
    ) -> Option<T> {
        self.check(key, f).required(key, &mut self.problems)
    }

    fn check_with_origin<T>(
        &mut self,
        key: Key,
        f: impl FnOnce(&RawValue, &Entry) -> Result<T, Invalid>,
    ) -> Checked<T> {
        let Some(entry) = self.collected.effective(key) else {
            return Checked::NotGiven;
        };
        match f(&entry.value, entry) {
            Ok(v) => Checked::Valid(v),
            Err(Invalid { message, fix }) => {
                self.problems
                    .push(Problem::error(Code::invalid(key), entry.subject(), message).fix(fix));
                Checked::Invalid
            }
        }
    }

    /// A plain http:// primary through a proxy would show the proxy the API key: refused
    /// (`insecure-http` is for a test primary on the lab's own network).
    fn plain_http_through_proxy(&mut self, primary: &Checked<Url>, proxy: &Checked<Option<Proxy>>) {
        let (Checked::Valid(url), Checked::Valid(Some(_))) = (primary, proxy) else {
            return;
        };
        if url.scheme() != "http" {
            return;
        }
        let subject = self
            .collected
            .effective(Key::Proxy)
            .map_or_else(|| Key::Proxy.to_string(), Entry::subject);
        self.problems.push(
            Problem::error(
                Code::InvalidProxy,
                subject,
                "a plain http:// primary through a proxy would show the proxy the API key",
            )
            .fix("use an https:// primary, or leave proxy out for a test primary on this network"),
        );
    }

    fn api_key(&mut self) -> Option<(Secret, bool)> {
        let no_default = || {
            Problem::error(
                Code::ApiKeyMissing,
                "api-key",
                format!("is blank or not set, and this image has no default restricted key in {VENDOR_DEFAULTS}"),
            )
            .fix("set api-key to a key from the account settings on the primary, or build the image with a default key")
        };
        let Some(entry) = self
            .collected
            .effective(Key::ApiKey)
            .filter(|e| !e.value.is_blank_secret())
        else {
            self.problems.push(no_default());
            return None;
        };
        let fix = "copy the API key again from the account settings on the primary";
        let key = match &entry.value {
            RawValue::Secret(s) => s,
            other => {
                let message = format!("expected a string, found {}", other.type_name());
                self.problems
                    .push(Problem::error(Code::InvalidApiKey, entry.subject(), message).fix(fix));
                return None;
            }
        };
        if let Err(message) = check_api_key(key) {
            self.problems
                .push(Problem::error(Code::InvalidApiKey, entry.subject(), message).fix(fix));
            return None;
        }
        Some((
            key.clone(),
            matches!(entry.origin.source, Source::Default(_)),
        ))
    }
}

/// Checks a DNS name (RFC 1123 host name rules); the rule is the protocol's, shared with the
/// primary simulator.
pub use gateway_protocol::check_dns_name;

const PRIMARY_FIX: &str = "give the primary as a host name, IP address, host:port, [IPv6]:port or https:// URL, for example primary.example.com";

/// Parses the primary server address into a base URL ending in `/`.
fn check_primary(value: &RawValue, insecure_http: bool) -> Result<Url, Invalid> {
    let raw = text(value, PRIMARY_FIX)?;
    let s = raw.trim();
    let bad = |why: String| {
        invalid(
            format!("{raw:?} is not a primary server address: {why}"),
            PRIMARY_FIX,
        )
    };
    if s.is_empty() {
        return Err(bad("empty".into()));
    }
    if let Some((scheme, _)) = s.split_once("://") {
        let mut url = Url::parse(s).map_err(|e| bad(e.to_string()))?;
        match scheme.to_ascii_lowercase().as_str() {
            "https" => {}
            "http" if insecure_http => {}
            "http" => {
                return Err(invalid(
                    format!("{raw:?} uses plain http, which would send the API key unencrypted"),
                    "use https://, or set insecure-http = true for a test primary",
                ));
            }
            other => return Err(bad(format!("unsupported scheme {other:?}, use https://"))),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad("a user name or password does not belong in it; the API key is a setting of its own".into()));
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(bad("it must not have a query (?) or fragment (#)".into()));
        }
        match url.host() {
            Some(url::Host::Domain(d)) => {
                check_dns_name(d).map_err(|why| bad(format!("host {d:?}: {why}")))?;
            }
            Some(_) => {}
            None => return Err(bad("no host".into())),
        }
        if !url.path().ends_with('/') {
            let path = format!("{}/", url.path());
            url.set_path(&path);
        }
        return Ok(url);
    }
    if s.contains('/') {
        return Err(bad(
            "a path needs the https:// form (https://host/path)".into()
        ));
    }
    let (host, port) = split_host_port(s).map_err(bad)?;
    Url::parse(&format!("https://{host}:{port}/")).map_err(|e| bad(e.to_string()))
}

/// Splits `host[:port]`, `[v6][:port]` or a bare IPv6 address; port 443 by default.
fn split_host_port(s: &str) -> Result<(String, u16), String> {
    let port_of = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("port {p:?} is not a number from 1 to 65535")),
        }
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or("missing ] after the IPv6 address")?;
        let ip: Ipv6Addr = inside
            .parse()
            .map_err(|_| format!("{inside:?} is not an IPv6 address"))?;
        let port = match after {
            "" => 443,
            p => port_of(p.strip_prefix(':').ok_or("expected :PORT after ]")?)?,
        };
        return Ok((format!("[{ip}]"), port));
    }
    if let Ok(ip) = s.parse::<Ipv6Addr>() {
        return Ok((format!("[{ip}]"), 443));
    }
    let (host, port) = match s.split_once(':') {
        Some((h, p)) if !p.contains(':') => (h, port_of(p)?),
        Some(_) => {
            return Err("an IPv6 address with a port goes in brackets: [2001:db8::1]:8443".into());
        }
        None => (s, 443),
    };
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok((ip.to_string(), port));
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    check_dns_name(host).map_err(|why| format!("host {host:?}: {why}"))?;
    Ok((host.to_ascii_lowercase(), port))
}

/// API keys: 16 to 512 characters of letters, digits and `-._~+/=`. The message never shows
/// the key or any character of it.
pub fn check_api_key(key: &Secret) -> Result<(), String> {
    let n = key.char_count();
    if !(16..=512).contains(&n) {
        return Err(format!("has {n} characters; an API key has 16 to 512"));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    if let Some((i, c)) = key.expose().chars().enumerate().find(|(_, c)| !allowed(*c)) {
        let what = if c.is_whitespace() {
            "whitespace (a stray space or line break from copying?)"
        } else if !c.is_ascii() {
            "a non-ASCII character"
        } else {
            "a character that is not allowed"
        };
        return Err(format!(
            "character {} is {what}; an API key has only letters, digits and -._~+/=",
            i + 1
        ));
    }
    Ok(())
}

fn check_bool(value: &RawValue) -> Result<bool, Invalid> {
    let fix = "use true or false";
    match value {
        RawValue::Bool(b) => Ok(*b),
        RawValue::Text(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "yes" | "true" | "on" => Ok(true),
            "0" | "no" | "false" | "off" => Ok(false),
            _ => Err(invalid(format!("{s:?} is not a boolean"), fix)),
        },
        other => Err(invalid(
            format!("expected a boolean, found {}", other.type_name()),
            fix,
        )),
    }
}

fn check_nameservers(value: &RawValue) -> Result<Vec<SocketAddr>, Invalid> {
    let fix =
        "list IP addresses, optionally with a port: [\"192.0.2.53\", \"[2001:db8::53]:5353\"]";
    let items: Vec<&str> = match value {
        RawValue::List(items) => items.iter().map(String::as_str).collect(),
        RawValue::Text(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect(),
        other => {
            return Err(invalid(
                format!("expected an array of strings, found {}", other.type_name()),
                fix,
            ));
        }
    };
    items
        .into_iter()
        .map(|item| {
            item.parse::<SocketAddr>()
                .or_else(|_| item.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| invalid(format!("{item:?} is not an IP address or IP:port"), fix))
        })
        .collect()
}

fn check_ca(root: &Root, value: &RawValue, entry: &Entry) -> Result<String, Invalid> {
    let fix = "give the primary's CA certificate as PEM text (-----BEGIN CERTIFICATE-----…) or the absolute path of a PEM file";
    let s = text(value, fix)?;
    let (pem, what) = if s.trim_start().starts_with("-----BEGIN") {
        (s.as_bytes().to_vec(), "PEM text".to_string())
    } else {
        let path = std::path::Path::new(s.trim());
        // A path from the agent's own flag is the operator's; any other is an appliance path.
        let real = match entry.origin.source {
            Source::Flag => path.to_path_buf(),
            _ if path.is_absolute() => root.path(path),
            _ => {
                return Err(invalid(
                    format!("{s:?} is neither PEM text nor an absolute path"),
                    fix,
                ));
            }
        };
        let bytes = std::fs::read(&real)
            .map_err(|e| invalid(format!("reading {}: {e}", path.display()), fix))?;
        (bytes, path.display().to_string())
    };
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => Ok(String::from_utf8_lossy(&pem).into_owned()),
        Ok(_) => Err(invalid(format!("{what} holds no PEM certificate"), fix)),
        Err(e) => Err(invalid(
            format!("{what} is not a PEM certificate: {e}"),
            fix,
        )),
    }
}

/// `proxy`: `http://[user:password@]host:port`; blank for none. Messages show the URL with
/// its password redacted.
fn check_proxy(value: &RawValue) -> Result<Option<Proxy>, Invalid> {
    let fix = "give the proxy as http://host:port or http://user:password@host:port";
    let text = match value {
        RawValue::Secret(s) => s.expose(),
        other => {
            return Err(invalid(
                format!("expected a string, found {}", other.type_name()),
                fix,
            ));
        }
    };
    crate::proxy::parse(text).map_err(|(message, fix)| invalid(message, fix))
}

/// `no-proxy`: host names, `.domain` suffixes, IP addresses, CIDR ranges or `*`.
fn check_no_proxy(value: &RawValue) -> Result<NoProxy, Invalid> {
    let items = match value {
        RawValue::List(items) => items.clone(),
        RawValue::Text(s) => s.split(',').map(str::to_string).collect(),
        other => {
            return Err(invalid(
                format!("expected an array of strings, found {}", other.type_name()),
                "list host names, .domain suffixes, IP addresses or CIDR ranges: [\"primary.acme.lan\", \".corp.example\"]",
            ));
        }
    };
    crate::proxy::parse_no_proxy(&items).map_err(|(message, fix)| invalid(message, fix))
}

fn check_pin(value: &RawValue) -> Result<[u8; 32], Invalid> {
    let fix =
        "give the SHA-256 fingerprint as printed by `openssl x509 -noout -fingerprint -sha256`";
    let s = text(value, fix)?;
    let hex: String = s.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
    let hex = hex.strip_prefix("sha256:").unwrap_or(&hex);
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid(
            format!("{s:?} is not a SHA-256 fingerprint: expected 64 hex digits (colons allowed)"),
            fix,
        ));
    }
    gateway_protocol::hex::decode(hex).ok_or_else(|| invalid("not hex", fix))
}

/// Parses a duration: seconds as an integer, or `90s`, `10m`, `1h30m`, `2d`; `infinity` when
/// `infinity_ok`. `Ok(None)` means infinity.
fn check_duration(
    value: &RawValue,
    min: u64,
    max: u64,
    infinity_ok: bool,
) -> Result<Option<Duration>, Invalid> {
    let fix = if infinity_ok {
        "write seconds (600) or a number with s, m, h or d (10m, 1h30m), or infinity"
    } else {
        "write seconds (30) or a number with s, m or h (30s, 2m)"
    };
    let secs = match value {
        RawValue::Int(i) => {
            u64::try_from(*i).map_err(|_| invalid(format!("{i} is negative"), fix))?
        }
        RawValue::Text(s) if infinity_ok && s.trim() == "infinity" => return Ok(None),
        RawValue::Text(s) => parse_duration(s.trim())
            .ok_or_else(|| invalid(format!("{s:?} is not a duration"), fix))?,
        other => {
            return Err(invalid(
                format!("expected a duration, found {}", other.type_name()),
                fix,
            ));
        }
    };
    if !(min..=max).contains(&secs) {
        return Err(invalid(
            format!("{secs} seconds is outside the allowed {min} to {max} seconds"),
            fix,
        ));
    }
    Ok(Some(Duration::from_secs(secs)))
}

/// A duration from text (for command-line flags): `30s`, `5m`, `1h`, or seconds.
pub fn parse_duration_value(value: &RawValue) -> Option<Duration> {
    match value {
        RawValue::Text(s) => parse_duration(s.trim()).map(Duration::from_secs),
        _ => None,
    }
}

fn parse_duration(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(n);
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "s" => 1,
            "m" | "min" => 60,
            "h" => 3600,
            "d" => 86400,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(factor)?)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{builtin_layer, seed};

    const GIVEN: &str = "primary = \"primary.example\"\naccount = \"acme.example\"\n\
                         api-key = \"gwk_0123456789abcdef\"\n";

    /// Validates a seed in /etc/gateway/seed.toml over the built-in defaults, as `collect` has it.
    fn validate_seed(text: &str) -> (Option<Settings>, Vec<Problem>) {
        let (layer, problems) = seed::parse(text, Source::Seed("/etc/gateway/seed.toml".into()));
        assert!(problems.is_empty(), "{problems:?}");
        let collected = Collected {
            layers: vec![layer, builtin_layer()],
            problems,
            given: true,
            gwseed: None,
        };
        validate(&Root::new("/nonexistent"), &collected)
    }

    #[test]
    fn every_built_in_default_is_valid_and_used() {
        let (settings, problems) = validate_seed(GIVEN);
        assert!(problems.is_empty(), "{problems:?}");
        let s = settings.unwrap();
        assert_eq!(s.dns_check, DnsCheck::Warn);
        assert_eq!(s.connect_timeout, Duration::from_secs(10));
        assert_eq!(s.request_timeout, Duration::from_secs(30));
        assert_eq!(s.deadline, Some(Duration::from_secs(30 * 60)));
        assert!(!s.insecure_http);
        assert!(s.nameservers.is_empty() && s.hostname.is_none());
    }

    #[test]
    fn a_seed_value_overrides_the_default() {
        let text = format!(
            "{GIVEN}dns-check = \"off\"\nconnect-timeout = 5\nrequest-timeout = \"2m\"\n\
             deadline = \"infinity\"\ninsecure-http = true\n"
        );
        let (settings, problems) = validate_seed(&text);
        assert!(problems.is_empty(), "{problems:?}");
        let s = settings.unwrap();
        assert_eq!(s.dns_check, DnsCheck::Off);
        assert_eq!(s.connect_timeout, Duration::from_secs(5));
        assert_eq!(s.request_timeout, Duration::from_secs(120));
        assert_eq!(s.deadline, None);
        assert!(s.insecure_http);
    }

    #[test]
    fn an_invalid_value_never_falls_back_to_the_default() {
        let cases = [
            ("dns-check = \"sometimes\"", Code::InvalidDnsCheck),
            ("connect-timeout = \"soon\"", Code::InvalidDuration),
            ("request-timeout = 0", Code::InvalidDuration),
            ("deadline = \"forever\"", Code::InvalidDuration),
            ("insecure-http = \"maybe\"", Code::InvalidBoolean),
        ];
        for (line, code) in cases {
            let (settings, problems) = validate_seed(&format!("{GIVEN}{line}\n"));
            assert!(settings.is_none(), "{line}: validated with the default");
            let codes: Vec<Code> = problems.iter().map(|p| p.code).collect();
            assert_eq!(codes, [code], "{line}");
            assert!(
                problems[0]
                    .subject
                    .ends_with("from /etc/gateway/seed.toml line 4"),
                "{line}: {:?}",
                problems[0].subject
            );
            assert!(problems[0].fix.is_some(), "{line}");
        }
    }

    #[test]
    fn an_invalid_insecure_http_allows_no_http_primary() {
        let text = "primary = \"http://127.0.0.1:8080\"\naccount = \"acme.example\"\n\
                    api-key = \"gwk_0123456789abcdef\"\ninsecure-http = \"maybe\"\n";
        let (settings, problems) = validate_seed(text);
        assert!(settings.is_none());
        let codes: Vec<Code> = problems.iter().map(|p| p.code).collect();
        assert_eq!(codes, [Code::InvalidBoolean, Code::InvalidPrimary]);
    }

    #[test]
    fn without_the_defaults_layer_a_defaulted_setting_is_missing_not_defaulted() {
        let (layer, _) = seed::parse(GIVEN, Source::Seed("/etc/gateway/seed.toml".into()));
        let collected = Collected {
            layers: vec![layer],
            problems: Vec::new(),
            given: true,
            gwseed: None,
        };
        let (settings, problems) = validate(&Root::new("/nonexistent"), &collected);
        assert!(settings.is_none());
        let subjects: Vec<&str> = problems.iter().map(|p| p.subject.as_str()).collect();
        assert_eq!(
            subjects,
            [
                "insecure-http",
                "dns-check",
                "connect-timeout",
                "request-timeout",
                "deadline"
            ]
        );
    }

    #[test]
    fn checked_helpers() {
        let mut problems = Vec::new();
        assert_eq!(
            Checked::Valid(3).required(Key::Deadline, &mut problems),
            Some(3)
        );
        assert_eq!(
            Checked::<u8>::Invalid.required(Key::Deadline, &mut problems),
            None
        );
        assert!(
            problems.is_empty(),
            "an invalid value's problem is already recorded"
        );
        assert_eq!(
            Checked::<u8>::NotGiven.required(Key::Deadline, &mut problems),
            None
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].code, Code::missing(Key::Deadline));
        assert_eq!(Checked::Valid(3).valid(), Some(3));
        assert_eq!(Checked::<u8>::NotGiven.valid(), None);
        assert_eq!(Checked::<u8>::Invalid.valid(), None);
    }

    #[test]
    fn dns_names() {
        let cases: &[(&str, Result<&str, &str>)] = &[
            ("acme.example", Ok("acme.example")),
            ("ACME.Example.", Ok("acme.example")),
            ("gw01", Ok("gw01")),
            ("a-b.c1", Ok("a-b.c1")),
            ("acme..example", Err("empty label")),
            ("", Err("empty name")),
            (".", Err("empty name")),
            (
                "-acme.example",
                Err("label \"-acme\" starts or ends with a hyphen"),
            ),
            (
                "acme_corp.example",
                Err(
                    "label \"acme_corp\" contains '_'; only letters, digits and hyphens are allowed",
                ),
            ),
            (
                "acme example",
                Err(
                    "label \"acme example\" contains ' '; only letters, digits and hyphens are allowed",
                ),
            ),
            (
                "bücher.example",
                Err(
                    "contains the non-ASCII character 'ü'; write the name in its xn-- (punycode) form",
                ),
            ),
            (
                "10.0.0.1",
                Err("the last label is all digits, so it reads as an IP address"),
            ),
        ];
        for (input, want) in cases {
            let got = check_dns_name(input);
            assert_eq!(got.as_deref().map_err(String::as_str), *want, "{input:?}");
        }
        assert!(
            check_dns_name(&"a".repeat(64))
                .unwrap_err()
                .contains("limit is 63")
        );
        assert!(
            check_dns_name(&["abc"; 64].join("."))
                .unwrap_err()
                .contains("limit is 253")
        );
    }

    #[test]
    fn primary_addresses() {
        let ok: &[(&str, &str)] = &[
            ("primary.example.com", "https://primary.example.com/"),
            (
                "Primary.Example.com:8443",
                "https://primary.example.com:8443/",
            ),
            ("192.0.2.10", "https://192.0.2.10/"),
            ("192.0.2.10:8443", "https://192.0.2.10:8443/"),
            ("[2001:db8::1]:8443", "https://[2001:db8::1]:8443/"),
            ("[2001:db8::1]", "https://[2001:db8::1]/"),
            ("2001:db8::1", "https://[2001:db8::1]/"),
            (
                "https://primary.example.com",
                "https://primary.example.com/",
            ),
            (
                "https://primary.example.com:9443/gw",
                "https://primary.example.com:9443/gw/",
            ),
        ];
        for (input, want) in ok {
            let got = check_primary(&RawValue::Text(input.to_string()), false);
            assert_eq!(
                got.ok().map(|u| u.to_string()).as_deref(),
                Some(*want),
                "{input:?}"
            );
        }
        let bad: &[(&str, &str)] = &[
            ("", "empty"),
            ("http://p.example", "uses plain http"),
            ("ftp://p.example", "unsupported scheme \"ftp\""),
            ("p.example:0", "port \"0\" is not a number from 1 to 65535"),
            ("p.example:https", "port \"https\" is not a number"),
            ("2001:db8::1:8443x", "brackets"),
            ("[2001:db8::1", "missing ]"),
            ("300.1.2.3", "\"300.1.2.3\" is not a valid IPv4 address"),
            ("p..example", "empty label"),
            ("https://user:pw@p.example", "user name or password"),
            ("https://p.example/?x=1", "query"),
            ("p.example/path", "a path needs the https:// form"),
        ];
        for (input, want) in bad {
            let got = check_primary(&RawValue::Text(input.to_string()), false);
            let message = got.err().map(|e| e.message).unwrap_or_default();
            assert!(
                message.contains(want),
                "{input:?}: {message:?} lacks {want:?}"
            );
        }
        let url = check_primary(&RawValue::Text("http://127.0.0.1:8080".into()), true)
            .ok()
            .unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/");
    }

    #[test]
    fn api_keys() {
        assert!(check_api_key(&Secret::new("gwk_0123456789abcdefABCDEF")).is_ok());
        let cases: &[(&str, &str)] = &[
            ("short", "has 5 characters; an API key has 16 to 512"),
            ("0123456789abcdef 0123", "character 17 is whitespace"),
            ("0123456789abcdef€", "character 17 is a non-ASCII character"),
            (
                "0123456789abcdef!x",
                "character 17 is a character that is not allowed",
            ),
        ];
        for (key, want) in cases {
            let message = check_api_key(&Secret::new(*key)).unwrap_err();
            assert!(message.starts_with(want), "{message}");
            assert!(
                !message.contains("0123456789"),
                "the message shows the key: {message}"
            );
        }
    }

    #[test]
    fn durations() {
        let d = |s: &str| {
            check_duration(&RawValue::Text(s.into()), 1, 86400, true)
                .ok()
                .map(|d| d.map(|d| d.as_secs()))
        };
        assert_eq!(d("90"), Some(Some(90)));
        assert_eq!(d("90s"), Some(Some(90)));
        assert_eq!(d("1h30m"), Some(Some(5400)));
        assert_eq!(d("2min"), Some(Some(120)));
        assert_eq!(d("infinity"), Some(None));
        assert_eq!(d("1d"), Some(Some(86400)));
        for bad in [
            "",
            "5 minutes",
            "m",
            "1x",
            "-1",
            "0",
            "2d",
            "99999999999999999999999h",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        assert!(check_duration(&RawValue::Int(-5), 1, 10, false).is_err());
        assert!(check_duration(&RawValue::Text("infinity".into()), 1, 10, false).is_err());
    }

    #[test]
    fn pins() {
        let hex = "AB".repeat(32);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(check_pin(&RawValue::Text(hex)).ok(), Some([0xab; 32]));
        assert_eq!(check_pin(&RawValue::Text(colons)).ok(), Some([0xab; 32]));
        assert!(check_pin(&RawValue::Text("ab".repeat(20))).is_err());
        assert!(check_pin(&RawValue::Text("zz".repeat(32))).is_err());
    }
}
