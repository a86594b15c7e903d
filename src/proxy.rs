//! The HTTP proxy the agent may have to reach the primary through: the `proxy` setting
//! (`http://[user:password@]host:port`), the `no-proxy` list, and how a proxy's refusals are
//! told apart. The password is a secret like the API key: held in [`Secret`] from the moment
//! it is read, shown only as `http://user:[redacted]@host:port`. See docs/seed.md (Proxy).
//!
//! The agent decides itself whether the primary goes through the proxy ([`NoProxy::matches`])
//! and hands reqwest one explicit proxy or none, never the environment: precedence and
//! redaction stay the settings' own.

use crate::failure::{Code, Failure};
use crate::secret::{REDACTED, Secret};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::time::Duration;

/// A proxy URL as every output shows it: the password (anything between the user name and the
/// last `@`) replaced by `[redacted]`. Works on any text, valid or not, so that a message
/// about a malformed URL never shows its password either.
pub fn redacted(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    let Some(at) = text.rfind('@').filter(|&at| at >= start) else {
        return text.to_string();
    };
    let userinfo = &text[start..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:{REDACTED}{}",
            &text[..start],
            &userinfo[..colon],
            &text[at..]
        ),
        None => text.to_string(),
    }
}

/// Whether the proxy URL `text` holds a password.
pub fn has_password(text: &str) -> bool {
    redacted(text) != text
}

/// The `proxy` setting's text as a [`Secret`] that prints as [`redacted`].
pub fn secret(text: &str) -> Secret {
    Secret::shown_as(text, redacted(text))
}

/// The proxy, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proxy {
    /// `host:port` (an IPv6 address in brackets): how every message names the proxy.
    pub address: String,
    /// The user name, percent-decoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The password, percent-decoded. Never in the state file: it has its own 0600 file
    /// ([`crate::state::PROXY_PASSWORD_FILE`]).
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// What `userinfo` may hold unencoded (RFC 3986 unreserved); everything else is encoded.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl Proxy {
    /// `http://host:port`, without credentials.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// `http://user:[redacted]@host:port`: what show-config and status show.
    pub fn shown(&self) -> String {
        match (&self.user, &self.password) {
            (Some(user), Some(_)) => format!(
                "http://{}:{REDACTED}@{}",
                utf8_percent_encode(user, USERINFO),
                self.address
            ),
            (Some(user), None) => {
                format!(
                    "http://{}@{}",
                    utf8_percent_encode(user, USERINFO),
                    self.address
                )
            }
            _ => self.url(),
        }
    }

    /// The URL with its credentials, percent-encoded: for gateway.toml only.
    pub fn with_credentials(&self) -> Secret {
        let text = match (&self.user, &self.password) {
            (Some(user), Some(password)) => format!(
                "http://{}:{}@{}",
                utf8_percent_encode(user, USERINFO),
                utf8_percent_encode(password.expose(), USERINFO),
                self.address
            ),
            _ => self.shown(),
        };
        secret(&text)
    }

    /// The proxy for reqwest: every request to the primary, its credentials only in the
    /// CONNECT request (`Proxy-Authorization`), or for a plain http:// test primary in the
    /// requests to the proxy, never to the primary.
    pub fn for_reqwest(&self) -> Result<reqwest::Proxy, Failure> {
        let proxy = reqwest::Proxy::all(self.url()).map_err(|e| {
            Failure::internal(format!("the proxy {} is not usable: {e}", self.address))
        })?;
        Ok(match &self.user {
            Some(user) => proxy.basic_auth(
                user,
                self.password
                    .as_ref()
                    .map(Secret::expose)
                    .unwrap_or_default(),
            ),
            None => proxy,
        })
    }
}

const PROXY_FIX: &str = "give the proxy as http://host:port, with user:password@ before the host if it asks for one (percent-encode : @ / in them)";

/// Validates the `proxy` setting: `http://[user:password@]host:port` (the scheme may be left
/// out). Blank means no proxy. The message shows the URL only as [`redacted`].
pub fn parse(text: &str) -> Result<Option<Proxy>, (String, &'static str)> {
    let raw = text.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    let shown = redacted(raw);
    let bad = |why: &str| (format!("{shown:?} is not a proxy URL: {why}"), PROXY_FIX);
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let (scheme, rest) = with_scheme.split_once("://").unwrap_or(("http", raw));
    match scheme.to_ascii_lowercase().as_str() {
        "http" => {}
        "https" => {
            return Err((
                format!("{shown:?}: https:// proxies (TLS to the proxy) are not supported"),
                "use the proxy's plain http:// port: the connection to the primary is TLS inside the proxy's tunnel all the same",
            ));
        }
        other => {
            return Err((
                format!("{shown:?}: {other}:// proxies are not supported, only http://"),
                PROXY_FIX,
            ));
        }
    }
    let url = url::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must not have a path, query (?) or fragment (#)"));
    }
    let host = match url.host() {
        Some(url::Host::Domain(d)) => {
            crate::settings::validate::check_dns_name(d)
                .map_err(|why| bad(&format!("host {d:?}: {why}")))?;
            d.to_ascii_lowercase()
        }
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
        None => return Err(bad("no host")),
    };
    let port = explicit_port(rest).ok_or_else(|| {
        bad("no port; proxies listen on many (3128, 8080, 80): give it as host:port")
    })?;
    let user = decoded(url.username()).map_err(|why| bad(&format!("the user name {why}")))?;
    let password = match url.password() {
        Some(p) => Some(Secret::new(
            decoded(p).map_err(|why| bad(&format!("the password {why}")))?,
        )),
        None => None,
    };
    if user.is_empty() && password.is_some() {
        return Err(bad("a password without a user name"));
    }
    Ok(Some(Proxy {
        address: format!("{host}:{port}"),
        user: (!user.is_empty()).then_some(user),
        password,
    }))
}

/// The port written after the host (`url` forgets an explicit `:80`), if any.
fn explicit_port(after_scheme: &str) -> Option<u16> {
    let authority = after_scheme.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let after_host = match host_port.rfind(']') {
        Some(i) => &host_port[i + 1..],
        None => host_port,
    };
    let (_, port) = after_host.rsplit_once(':')?;
    port.parse().ok().filter(|&p| p > 0)
}

fn decoded(text: &str) -> Result<String, &'static str> {
    percent_decode_str(text)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| "is not UTF-8 once percent-decoded")
}

/// The `no-proxy` list: host names (also matching their subdomains), `.domain` suffixes,
/// IP addresses, CIDR ranges, or `*` for everything; as curl's `no_proxy`. Kept as the
/// normalised items.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NoProxy(pub Vec<String>);

const NO_PROXY_FIX: &str = "list host names, .domain suffixes, IP addresses or CIDR ranges (10.0.0.0/8), or *: \"primary.acme.lan,.corp.example,10.0.0.0/8\"";

/// One item of the list, understood.
#[derive(Debug, PartialEq, Eq)]
enum Rule {
    All,
    /// A domain: the name itself and every name under it.
    Domain(String),
    Net(IpAddr, u8),
}

fn rule(item: &str) -> Result<Rule, String> {
    let item = item.trim();
    if item == "*" {
        return Ok(Rule::All);
    }
    let (addr, prefix) = match item.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (item, None),
    };
    let bare = addr.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&b| b <= max)
                .ok_or_else(|| format!("{item:?}: the prefix length must be 0 to {max}"))?,
        };
        return Ok(Rule::Net(ip, bits));
    }
    if prefix.is_some() {
        return Err(format!(
            "{item:?} is not a CIDR range (address/prefix length)"
        ));
    }
    if item.contains(':') {
        return Err(format!(
            "{item:?}: ports do not belong in no-proxy (a name matches on every port)"
        ));
    }
    let name = item.trim_start_matches("*.").trim_start_matches('.');
    crate::settings::validate::check_dns_name(name)
        .map(Rule::Domain)
        .map_err(|why| {
            format!("{item:?} is not a host name, domain, IP address or CIDR range: {why}")
        })
}

impl Rule {
    fn matches(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match self {
            Rule::All => true,
            Rule::Net(net, bits) => host
                .parse::<IpAddr>()
                .is_ok_and(|ip| in_net(ip, *net, *bits)),
            Rule::Domain(domain) => {
                let host = host.trim_end_matches('.').to_ascii_lowercase();
                host == *domain || host.ends_with(&format!(".{domain}"))
            }
        }
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    let (ip, net, width) = match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => (u32::from(a) as u128, u32::from(b) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), 128),
        _ => return false,
    };
    let shift = width - u32::from(bits);
    shift >= width || (ip >> shift) == (net >> shift)
}

/// Validates the `no-proxy` list (every item; the first bad one is reported).
pub fn parse_no_proxy(items: &[String]) -> Result<NoProxy, (String, &'static str)> {
    let mut out = Vec::new();
    for item in items.iter().map(|i| i.trim()).filter(|i| !i.is_empty()) {
        rule(item).map_err(|why| (why, NO_PROXY_FIX))?;
        out.push(item.to_ascii_lowercase());
    }
    Ok(NoProxy(out))
}

impl NoProxy {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `host` (a URL's host: a name, an IPv4 address or a bracketed IPv6 one) is to be
    /// reached directly. As curl, IP ranges match only a host written as an address: names are
    /// not resolved to be compared.
    pub fn matches(&self, host: &str) -> bool {
        self.0
            .iter()
            .any(|item| rule(item).is_ok_and(|r| r.matches(host)))
    }

    /// The list as curl's `--noproxy` and `no_proxy` take it.
    pub fn joined(&self) -> String {
        self.0.join(",")
    }
}

/// Why a connection through the proxy failed, read from reqwest's error chain (hyper-util
/// names the kind of a tunnel failure only in its message: `tunnel error: …`).
#[derive(Debug, PartialEq, Eq)]
pub enum TunnelFault {
    /// 407: the proxy wants (other) credentials.
    Auth,
    /// Another answer than 2xx to CONNECT; hyper-util keeps no status: [`probe`] asks again.
    Refused,
    /// No TCP connection to the proxy: why, as the deepest error says it.
    NoConnection(String),
    /// The proxy closed the connection or sent something that is not an answer.
    Broken,
}

/// Classifies the texts of an error chain (outermost first); `None`: not a tunnel failure (an
/// error inside the tunnel, TLS with the primary say, is the primary's).
pub fn classify(chain: &[String]) -> Option<TunnelFault> {
    let at = chain.iter().position(|t| t.starts_with("tunnel error: "))?;
    Some(match chain[at].trim_start_matches("tunnel error: ") {
        "proxy authorization required" => TunnelFault::Auth,
        "unsuccessful" => TunnelFault::Refused,
        "failed to create underlying connection" => {
            let deepest = chain.last().map(String::as_str).unwrap_or("");
            let why = match deepest.find(" (os error") {
                Some(i) => &deepest[..i],
                None => deepest,
            };
            TunnelFault::NoConnection(why.to_lowercase())
        }
        _ => TunnelFault::Broken,
    })
}

/// The failure for a CONNECT answered with `status`: 407 (or 401) the credentials; the statuses
/// `curl --retry` retries (408, 429, 500, 502, 503, 504: the proxy could not reach the
/// primary, or is busy) transient; any other (403: the proxy's policy) permanent.
pub fn refusal(address: &str, target: &str, status: Option<(u16, String)>) -> Failure {
    let Some((status, reason)) = status else {
        return Failure::new(
            Code::ProxyUpstream,
            format!(
                "the proxy {address} refused the tunnel to {target} (its answer could not be read again)"
            ),
        );
    };
    let said = crate::primary::printable(&reason, 80);
    let answered = format!("the proxy {address} answered HTTP {status} {said} to CONNECT {target}");
    match status {
        // 407 is the proxy's "credentials, please"; tinyproxy (1.11) answers a CONNECT with
        // wrong ones with 401, which from a proxy can mean nothing else.
        401 | 407 => Failure::new(
            Code::ProxyAuth,
            format!("{answered}: it does not accept the proxy credentials"),
        ),
        408 | 429 | 500 | 502 | 503 | 504 => Failure::new(
            Code::ProxyUpstream,
            format!("{answered}: it could not reach the primary, or is busy"),
        ),
        200..=299 => Failure::new(
            Code::ProxyUpstream,
            format!("the proxy {address} refused the tunnel to {target} once, then accepted it"),
        ),
        _ => Failure::new(Code::ProxyConnectRefused, answered),
    }
}

/// Asks the proxy again for the tunnel to `target` (`host:port`) and reads only its status
/// line, to tell a refusal by policy (403) from an unreachable primary (502, 503, 504).
/// The credentials go to the proxy, as in the tunnel reqwest asked for; nothing goes through.
pub async fn probe(proxy: &Proxy, target: &str, timeout: Duration) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(proxy.address.as_str())
            .await
            .ok()?;
        let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some(user) = &proxy.user {
            let password = proxy.password.as_ref().map(Secret::expose).unwrap_or("");
            let token = base64_encode(format!("{user}:{password}").as_bytes());
            request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        request.push_str("\r\n");
        conn.write_all(request.as_bytes()).await.ok()?;
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 8192 {
            let n = conn.read(&mut buf).await.ok()?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        status_line(&String::from_utf8_lossy(&head))
    };
    tokio::time::timeout(timeout, ask).await.ok().flatten()
}

/// `HTTP/1.1 403 Forbidden` → (403, "Forbidden").
fn status_line(head: &str) -> Option<(u16, String)> {
    let line = head.lines().next()?;
    let mut parts = line.splitn(3, ' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status = parts.next()?.parse().ok()?;
    Some((status, parts.next().unwrap_or("").trim().to_string()))
}

fn base64_encode(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PW: &str = "s3cr3t-pw";

    #[test]
    fn redaction_hides_the_password_of_any_text() {
        let cases = [
            (
                "http://u:s3cr3t-pw@p.example:3128",
                "http://u:[redacted]@p.example:3128",
            ),
            ("u:s3cr3t-pw@p.example:3128", "u:[redacted]@p.example:3128"),
            // An unencoded @ or / in the password: up to the last @ is the password.
            (
                "http://u:s3cr@t/pw@p.example:3128",
                "http://u:[redacted]@p.example:3128",
            ),
            ("http://u@p.example:3128", "http://u@p.example:3128"),
            ("http://p.example:3128", "http://p.example:3128"),
            (
                "http://:s3cr3t-pw@p.example",
                "http://:[redacted]@p.example",
            ),
        ];
        for (text, want) in cases {
            assert_eq!(redacted(text), want, "{text}");
            assert_eq!(format!("{}", secret(text)), want);
            assert_eq!(has_password(text), want.contains(REDACTED), "{text}");
        }
    }

    #[test]
    fn proxies() {
        let p = parse("http://gw%40acme:s3cr3t-pw@Proxy.Acme.lan:3128/")
            .unwrap()
            .unwrap();
        assert_eq!(p.address, "proxy.acme.lan:3128");
        assert_eq!(p.user.as_deref(), Some("gw@acme"));
        assert_eq!(p.password.as_ref().map(Secret::expose), Some(PW));
        assert_eq!(p.shown(), "http://gw%40acme:[redacted]@proxy.acme.lan:3128");
        assert_eq!(
            p.with_credentials().expose(),
            "http://gw%40acme:s3cr3t-pw@proxy.acme.lan:3128"
        );
        assert!(!format!("{p:?}").contains(PW));
        let ok = [
            ("proxy.acme.lan:8080", "proxy.acme.lan:8080"),
            ("http://192.0.2.1:80", "192.0.2.1:80"),
            ("http://[2001:db8::1]:3128", "[2001:db8::1]:3128"),
        ];
        for (text, address) in ok {
            let p = parse(text).unwrap().unwrap();
            assert_eq!(p.address, address, "{text}");
            assert_eq!((p.user, p.password), (None, None));
        }
        assert_eq!(parse("  "), Ok(None));
    }

    #[test]
    fn bad_proxies_say_why_without_the_password() {
        let cases = [
            (
                "https://u:s3cr3t-pw@p.example:3128",
                "https:// proxies (TLS to the proxy) are not supported",
            ),
            (
                "socks5://p.example:1080",
                "socks5:// proxies are not supported",
            ),
            ("http://u:s3cr3t-pw@p.example", "no port"),
            ("http://p.example:3128/path", "must not have a path"),
            ("http://p.example:3128/?a=1", "must not have a path, query"),
            ("http://p..example:3128", "empty label"),
            (
                "http://:s3cr3t-pw@p.example:3128",
                "a password without a user name",
            ),
            ("http://u:%ff@p.example:3128", "the password is not UTF-8"),
            ("http://p.example:99999", "is not a proxy URL"),
        ];
        for (text, want) in cases {
            let (message, fix) = parse(text).unwrap_err();
            assert!(message.contains(want), "{text}: {message}");
            assert!(!message.contains(PW) && !fix.contains(PW), "{message}");
        }
    }

    #[test]
    fn no_proxy_matches_as_curl_does() {
        let list: Vec<String> = [
            "primary.acme.lan",
            ".corp.example",
            "*.x.example",
            "10.0.0.0/8",
            "::1",
            "192.0.2.7",
        ]
        .map(String::from)
        .to_vec();
        let np = parse_no_proxy(&list).unwrap();
        for host in [
            "primary.acme.lan",
            "PRIMARY.acme.lan.",
            "a.primary.acme.lan",
            "corp.example",
            "gw.corp.example",
            "y.x.example",
            "10.1.2.3",
            "[::1]",
            "192.0.2.7",
        ] {
            assert!(np.matches(host), "{host}");
        }
        for host in [
            "other.acme.lan",
            "xprimary.acme.lan",
            "corp.example.org",
            "11.0.0.1",
            "[::2]",
            "192.0.2.8",
        ] {
            assert!(!np.matches(host), "{host}");
        }
        assert!(
            parse_no_proxy(&["*".into()])
                .unwrap()
                .matches("anything.example")
        );
        assert!(!NoProxy::default().matches("primary.acme.lan"));
        assert!(
            parse_no_proxy(&["0.0.0.0/0".into()])
                .unwrap()
                .matches("203.0.113.9")
        );
        assert_eq!(
            np.joined(),
            "primary.acme.lan,.corp.example,*.x.example,10.0.0.0/8,::1,192.0.2.7"
        );
    }

    #[test]
    fn bad_no_proxy_items() {
        let cases = [
            ("10.0.0.0/33", "prefix length must be 0 to 32"),
            ("p.example/8", "is not a CIDR range"),
            ("p.example:3128", "ports do not belong"),
            ("acme..lan", "empty label"),
            ("bad_name", "is not a host name"),
        ];
        for (item, want) in cases {
            let (message, _) = parse_no_proxy(&[item.into()]).unwrap_err();
            assert!(message.contains(want), "{item}: {message}");
        }
    }

    #[test]
    fn tunnel_failures_are_told_apart() {
        let chain = |texts: &[&str]| texts.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert_eq!(
            classify(&chain(&[
                "error sending request",
                "client error (Connect)",
                "tunnel error: proxy authorization required"
            ])),
            Some(TunnelFault::Auth)
        );
        assert_eq!(
            classify(&chain(&[
                "error sending request",
                "tunnel error: unsuccessful"
            ])),
            Some(TunnelFault::Refused)
        );
        assert_eq!(
            classify(&chain(&[
                "e",
                "tunnel error: failed to create underlying connection",
                "tcp connect error",
                "Connection refused (os error 111)"
            ])),
            Some(TunnelFault::NoConnection("connection refused".into()))
        );
        assert_eq!(
            classify(&chain(&["e", "tunnel error: unexpected end of file"])),
            Some(TunnelFault::Broken)
        );
        assert_eq!(
            classify(&chain(&["e", "invalid peer certificate: UnknownIssuer"])),
            None
        );
    }

    #[test]
    fn refusals_by_status() {
        let code = |s: u16| refusal("p:3128", "primary:443", Some((s, "X".into()))).code;
        assert_eq!(code(407), Code::ProxyAuth);
        assert_eq!(code(401), Code::ProxyAuth);
        assert_eq!(code(403), Code::ProxyConnectRefused);
        assert_eq!(code(400), Code::ProxyConnectRefused);
        for s in [408, 429, 500, 502, 503, 504, 200] {
            assert_eq!(code(s), Code::ProxyUpstream, "{s}");
        }
        assert_eq!(
            refusal("p:3128", "primary:443", None).code,
            Code::ProxyUpstream
        );
        let f = refusal(
            "p:3128",
            "primary:443",
            Some((403, "Access violation\x1b[2J".into())),
        );
        assert!(
            f.message.contains("p:3128") && f.message.contains("403"),
            "{}",
            f.message
        );
        assert!(!f.message.contains('\x1b'));
        assert!(
            !Code::ProxyConnectRefused
                .class()
                .eq(&crate::failure::Class::Transient)
        );
    }

    #[test]
    fn status_lines_and_base64() {
        assert_eq!(
            status_line("HTTP/1.0 403 Access violation\r\n\r\n"),
            Some((403, "Access violation".into()))
        );
        assert_eq!(status_line("HTTP/1.1 502\r\n"), Some((502, String::new())));
        assert_eq!(status_line("SSH-2.0-x\r\n"), None);
        assert_eq!(base64_encode(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"a"), "YQ==");
    }
}
