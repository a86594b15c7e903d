//! The DNS self-check: does this server's FQDN resolve to one of its own addresses? Print
//! clients and embedded terminals reach a secondary gateway by name, which is why the product
//! documentation asks for a DNS record. On a miss the check says exactly which record to make.

use crate::protocol::{DnsReport, DnsStatus};
use crate::root::Root;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{Name, RData};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A resolver for the agent's own lookups: the seed's `nameservers`, else the root's
/// /etc/resolv.conf. DNS only: the self-check asks what print clients will see, not /etc/hosts.
pub fn resolver(root: &Root, nameservers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let (config, mut opts) = if nameservers.is_empty() {
        let data = std::fs::read(root.path(RESOLV_CONF))
            .map_err(|e| format!("reading {RESOLV_CONF}: {e}"))?;
        hickory_resolver::system_conf::parse_resolv_conf(data)
            .map_err(|e| format!("reading {RESOLV_CONF}: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|addr| {
                let mut ns = NameServerConfig::udp_and_tcp(addr.ip());
                for c in &mut ns.connections {
                    c.port = addr.port();
                }
                ns
            })
            .collect();
        (
            ResolverConfig::from_name_servers(servers),
            ResolverOpts::default(),
        )
    };
    if config.name_servers().is_empty() {
        return Err(format!(
            "no DNS server is configured ({RESOLV_CONF} names none)"
        ));
    }
    opts.timeout = Duration::from_secs(2);
    opts.attempts = 2;
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(opts)
        .build()
        .map_err(|e| format!("setting up the resolver: {e}"))
}

/// This server's name: the short host name and, when it has a domain, its FQDN
/// (`gw01`, `gw01.acme.lan`). Kept as one string, the FQDN when there is one, in the state
/// file (`hostname`); the registration sends the two parts.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(from = "String", into = "String")]
pub struct HostName {
    pub short: String,
    pub fqdn: Option<String>,
}

impl HostName {
    /// A name as written: with a dot it is an FQDN, whose first label is the short name.
    pub fn parse(name: &str) -> HostName {
        match name.split_once('.') {
            Some((short, _)) => HostName {
                short: short.to_string(),
                fqdn: Some(name.to_string()),
            },
            None => HostName {
                short: name.to_string(),
                fqdn: None,
            },
        }
    }

    /// The FQDN when there is one, else the short name.
    pub fn full(&self) -> &str {
        self.fqdn.as_deref().unwrap_or(&self.short)
    }
}

impl From<String> for HostName {
    fn from(name: String) -> HostName {
        HostName::parse(&name)
    }
}

impl From<HostName> for String {
    fn from(name: HostName) -> String {
        name.full().to_string()
    }
}

/// This server's name: the seed's `hostname` if given, else the kernel's host name, with the
/// domain from the name itself, the kernel's domain name, or the first search domain in
/// resolv.conf (which DHCP fills in).
pub fn names(root: &Root, seed_hostname: Option<&str>) -> HostName {
    let read = |p: &str| {
        std::fs::read_to_string(root.path(p))
            .ok()
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty() && !is_placeholder(s))
    };
    let host = seed_hostname
        .map(str::to_string)
        .or_else(|| read("/proc/sys/kernel/hostname"))
        .or_else(|| read("/etc/hostname"))
        .or_else(|| dhcp_hostname(root))
        .unwrap_or_else(|| "localhost".into());
    if host.contains('.') {
        return HostName::parse(&host);
    }
    let domain = read("/proc/sys/kernel/domainname")
        .filter(|d| d != "(none)" && d.contains('.'))
        .or_else(|| {
            let conf = std::fs::read_to_string(root.path(RESOLV_CONF)).unwrap_or_default();
            conf.lines().find_map(|l| {
                let mut words = l.split_whitespace();
                match words.next() {
                    Some("search") | Some("domain") => words
                        .next()
                        .map(|d| d.trim_end_matches('.').to_ascii_lowercase()),
                    _ => None,
                }
            })
        })
        .filter(|d| !d.is_empty() && d != ".");
    let fqdn = domain.map(|d| format!("{host}.{d}"));
    HostName { short: host, fqdn }
}

/// Names that say "no name was set".
fn is_placeholder(name: &str) -> bool {
    matches!(
        name,
        "localhost" | "localhost.localdomain" | "(none)" | "debian"
    )
}

/// Directory where systemd-networkd keeps its DHCP leases (one file per interface).
pub const NETWORKD_LEASES: &str = "/run/systemd/netif/leases";

/// The host name a DHCP server gave (systemd-networkd records it in its lease; networkd
/// itself cannot set it without polkit, so the agent does, through hostnamed).
pub fn dhcp_hostname(root: &Root) -> Option<String> {
    let mut leases: Vec<_> = std::fs::read_dir(root.path(NETWORKD_LEASES))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    leases.sort();
    leases.iter().find_map(|path| {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("HOSTNAME="))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| crate::settings::validate::check_dns_name(h).is_ok() && !is_placeholder(h))
    })
}

/// This host's addresses that others could reach: not loopback, not link-local.
pub fn own_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut out: Vec<IpAddr> = addrs
        .filter_map(|ifa| {
            let addr = ifa.address?;
            if let Some(v4) = addr.as_sockaddr_in() {
                return Some(IpAddr::V4(v4.ip()));
            }
            addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
        })
        .filter(|ip| match ip {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unicast_link_local() && !v6.is_unspecified()
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What the check found, and what to tell the operator.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: DnsReport,
    /// One line for people.
    pub summary: String,
    /// The records to create when the name is missing or points elsewhere.
    pub records_to_create: Vec<String>,
    /// Records of this server's name that lead to another machine (a stale round-robin entry:
    /// some print clients reach the other box): to delete.
    pub records_to_delete: Vec<String>,
    /// Reverse (PTR) records to create: this server's address does not resolve back to its
    /// name. Print clients do not need them; logs and some terminals show names with them.
    pub reverse_to_create: Vec<String>,
}

impl Outcome {
    fn new(report: DnsReport, summary: String) -> Outcome {
        Outcome {
            report,
            summary,
            records_to_create: vec![],
            records_to_delete: vec![],
            reverse_to_create: vec![],
        }
    }
}

fn record(fqdn: &str, ip: &IpAddr) -> String {
    let kind = if ip.is_ipv4() { "A" } else { "AAAA" };
    format!("{fqdn}. IN {kind} {ip}")
}

/// The PTR record that makes `ip` resolve back to `fqdn`.
fn reverse_record(fqdn: &str, ip: &IpAddr) -> String {
    format!("{} IN PTR {fqdn}.", Name::from(*ip))
}

/// The addresses a record should name: the first of each family.
fn record_addresses(own: &[IpAddr]) -> Vec<IpAddr> {
    let v4 = own.iter().find(|ip| ip.is_ipv4());
    let v6 = own.iter().find(|ip| ip.is_ipv6());
    v4.into_iter().chain(v6).copied().collect()
}

fn records_for(fqdn: &str, own: &[IpAddr]) -> Vec<String> {
    record_addresses(own)
        .iter()
        .map(|ip| record(fqdn, ip))
        .collect()
}

fn join(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// What the lookups for a name found: the facts the classifier decides on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The name's A and AAAA answers, sorted, each once.
    pub resolved: Vec<IpAddr>,
    /// Why a forward lookup failed, other than "no such name" or "no such record".
    pub failure: Option<String>,
    /// Each address looked up in reverse (see [`reverse_targets`]) and the names it resolves
    /// back to (lowercase, no final dot; none when the lookup failed).
    pub ptr: Vec<(IpAddr, Vec<String>)>,
}

/// Runs the check once: the lookups, then [`classify`].
pub async fn check(
    resolver: Result<&TokioResolver, &str>,
    name: &HostName,
    own: &[IpAddr],
) -> Outcome {
    let found = match &name.fqdn {
        Some(fqdn) => lookup(resolver, fqdn, own).await,
        None => Ok(Found::default()),
    };
    classify(name, own, found)
}

/// Looks `fqdn` up (A, AAAA), then the addresses it should lead to in reverse (PTR). `Err`:
/// why no lookup could run, as the line for people.
async fn lookup(
    resolver: Result<&TokioResolver, &str>,
    fqdn: &str,
    own: &[IpAddr],
) -> Result<Found, String> {
    let resolver = resolver.map_err(|why| format!("cannot check DNS for {fqdn}: {why}"))?;
    let name = Name::from_ascii(format!("{fqdn}."))
        .map_err(|e| format!("{fqdn} is not a DNS name: {e}"))?;
    let mut found = Found::default();
    for result in [
        resolver.ipv4_lookup(name.clone()).await,
        resolver.ipv6_lookup(name.clone()).await,
    ] {
        match result {
            Ok(lookup) => {
                found
                    .resolved
                    .extend(lookup.answers().iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                        _ => None,
                    }))
            }
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) => found.failure = Some(e.to_string()),
        }
    }
    found.resolved.sort();
    found.resolved.dedup();
    for ip in reverse_targets(&found.resolved, own) {
        let mut names = Vec::new();
        if let Ok(ptr) = resolver.reverse_lookup(Name::from(ip)).await {
            for r in ptr.answers() {
                if let RData::PTR(p) = &r.data {
                    names.push(p.0.to_string().trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        found.ptr.push((ip, names));
    }
    Ok(found)
}

/// The addresses to look up in reverse: those of this server the name leads to, else the ones
/// a record would name.
pub fn reverse_targets(resolved: &[IpAddr], own: &[IpAddr]) -> Vec<IpAddr> {
    let mine: Vec<IpAddr> = resolved
        .iter()
        .filter(|ip| own.contains(ip))
        .copied()
        .collect();
    if mine.is_empty() {
        record_addresses(own)
    } else {
        mine
    }
}

/// Decides what the lookups mean for this server (its `name`, its addresses `own`) and what
/// the operator should do. `found`: what the lookups found, or why none could run.
pub fn classify(name: &HostName, own: &[IpAddr], found: Result<Found, String>) -> Outcome {
    let shown = name.full().to_string();
    let report = |status, resolved: Vec<IpAddr>, reverse: Vec<String>| DnsReport {
        status,
        fqdn: shown.clone(),
        resolved,
        reverse,
    };
    let Some(fqdn) = name.fqdn.as_deref() else {
        let hostname = &name.short;
        return Outcome::new(
            report(DnsStatus::Missing, vec![], vec![]),
            format!(
                "this server ({hostname}) has no domain name, so no DNS record can name it; \
                 set hostname = \"{hostname}.<domain>\" in the seed or have DHCP hand out a domain"
            ),
        );
    };
    let found = match found {
        Ok(found) => found,
        Err(why) => return Outcome::new(report(DnsStatus::Error, vec![], vec![]), why),
    };
    let (reverse, reverse_to_create) = reverse_names(fqdn, &found.ptr);
    let (mine, foreign): (Vec<IpAddr>, Vec<IpAddr>) =
        found.resolved.iter().partition(|ip| own.contains(ip));
    if found.resolved.is_empty() {
        let mut outcome = match found.failure {
            Some(why) => Outcome::new(
                report(DnsStatus::Error, vec![], reverse),
                format!("cannot check DNS for {fqdn}: {why}"),
            ),
            None => missing(report(DnsStatus::Missing, vec![], reverse), fqdn, own),
        };
        outcome.records_to_create = records_for(fqdn, own);
        if outcome.report.status == DnsStatus::Missing {
            outcome.reverse_to_create = reverse_to_create;
        }
        return outcome;
    }
    let status = if foreign.is_empty() {
        DnsStatus::Ok
    } else {
        DnsStatus::Mismatch
    };
    let rev = if reverse.is_empty() {
        "no reverse (PTR) record".to_string()
    } else {
        format!("reverse: {}", reverse.join(", "))
    };
    let report = report(status, found.resolved.clone(), reverse);
    let mut outcome = resolved(report, fqdn, own, &mine, &foreign, &rev);
    outcome.reverse_to_create = reverse_to_create;
    outcome
}

/// The names the reverse lookups found (each once) and the PTR records to suggest: one for
/// each address that does not resolve back to `fqdn`.
fn reverse_names(fqdn: &str, ptr: &[(IpAddr, Vec<String>)]) -> (Vec<String>, Vec<String>) {
    let mut reverse: Vec<String> = Vec::new();
    let mut to_create = Vec::new();
    for (ip, names) in ptr {
        if !names.iter().any(|n| n == &fqdn.to_ascii_lowercase()) {
            to_create.push(reverse_record(fqdn, ip));
        }
        for n in names {
            if !reverse.contains(n) {
                reverse.push(n.clone());
            }
        }
    }
    (reverse, to_create)
}

/// The name resolves to nothing.
fn missing(report: DnsReport, fqdn: &str, own: &[IpAddr]) -> Outcome {
    Outcome::new(
        report,
        format!(
            "DNS has no record for {fqdn}; print clients and terminals cannot find this server. Create: {}",
            records_for(fqdn, own).join("; ")
        ),
    )
}

/// The name resolves: to this server only (`rev`: what the reverse lookups found), to this
/// server and another machine, or only elsewhere.
fn resolved(
    report: DnsReport,
    fqdn: &str,
    own: &[IpAddr],
    mine: &[IpAddr],
    foreign: &[IpAddr],
    rev: &str,
) -> Outcome {
    let delete: Vec<String> = foreign.iter().map(|ip| record(fqdn, ip)).collect();
    if foreign.is_empty() {
        let summary = format!(
            "DNS: {fqdn} resolves to this server ({}); {rev}",
            join(mine)
        );
        return Outcome::new(report, summary);
    }
    if !mine.is_empty() {
        // This server and another machine: a stale entry of a round robin, a copied record.
        let summary = format!(
            "DNS has {fqdn} pointing at this server ({}) and also at {}, which is not this \
             server: some print clients and terminals reach the other machine. Delete: {}",
            join(mine),
            join(foreign),
            delete.join("; ")
        );
        let mut outcome = Outcome::new(report, summary);
        outcome.records_to_delete = delete;
        return outcome;
    }
    let records = records_for(fqdn, own);
    let summary = format!(
        "DNS has {fqdn} pointing at {}, not at this server ({}). Change it to: {}",
        join(foreign),
        join(own),
        records.join("; ")
    );
    let mut outcome = Outcome::new(report, summary);
    outcome.records_to_create = records;
    outcome.records_to_delete = delete;
    outcome
}

impl Outcome {
    /// Records the outcome in the state: the report and what is left to do in DNS.
    pub fn record_in(&self, state: &mut crate::state::State) {
        state.dns = Some(self.report.clone());
        state.dns_records_missing = self.records_to_create.clone();
        state.dns_records_to_delete = self.records_to_delete.clone();
        state.dns_reverse_missing = self.reverse_to_create.clone();
        state.dns_warning = (!self.settled()).then(|| self.summary.clone());
    }

    /// Nothing left to do in DNS for print clients (a reverse record may still be suggested).
    pub fn settled(&self) -> bool {
        self.report.status == DnsStatus::Ok
    }
}

/// Runs the check again for a provisioned server (its name, nameservers and addresses as at
/// provisioning): `None` when it was off or never ran, or when the resolver failed now (what
/// was known stays; a DNS outage does not make a record look fixed or missing).
pub async fn recheck(root: &Root, state: &crate::state::State) -> Option<Outcome> {
    let last = state.dns.as_ref()?;
    if last.status == DnsStatus::Skipped {
        return None;
    }
    let name = state.hostname.as_ref()?;
    let nameservers: &[SocketAddr] = state
        .primary
        .as_ref()
        .map_or(&[], |p| p.nameservers.as_slice());
    let resolver = resolver(root, nameservers);
    let outcome = check(
        resolver.as_ref().map_err(String::as_str),
        name,
        &own_addresses(),
    )
    .await;
    (outcome.report.status != DnsStatus::Error).then_some(outcome)
}

/// What is left to do in DNS, one line each, for the login console: kept there until done.
pub fn todo_lines(state: &crate::state::State) -> Vec<String> {
    let create = state
        .dns_records_missing
        .iter()
        .map(|r| format!("DNS record missing (create it): {r}"));
    let delete = state
        .dns_records_to_delete
        .iter()
        .map(|r| format!("DNS record leads to another machine (delete it): {r}"));
    let reverse = state
        .dns_reverse_missing
        .iter()
        .map(|r| format!("Reverse DNS record (suggested): {r}"));
    create.chain(delete).chain(reverse).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_name_is_one_string_on_disk_and_two_parts_inside() {
        for (text, short, fqdn) in [
            ("gw01.acme.lan", "gw01", Some("gw01.acme.lan")),
            ("gw01", "gw01", None),
        ] {
            let name: HostName = serde_json::from_str(&format!("{text:?}")).unwrap();
            assert_eq!((name.short.as_str(), name.fqdn.as_deref()), (short, fqdn));
            assert_eq!(name.full(), text);
            assert_eq!(serde_json::to_string(&name).unwrap(), format!("{text:?}"));
        }
    }

    #[test]
    fn names_come_from_the_seed_the_kernel_or_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert_eq!(
            names(&root, Some("gw01.acme.lan")),
            HostName {
                short: "gw01".into(),
                fqdn: Some("gw01.acme.lan".into())
            }
        );
        assert_eq!(
            names(&root, Some("gw01")),
            HostName {
                short: "gw01".into(),
                fqdn: None
            }
        );
        std::fs::create_dir_all(root.path("/proc/sys/kernel")).unwrap();
        std::fs::create_dir_all(root.path("/etc")).unwrap();
        std::fs::write(root.path("/proc/sys/kernel/hostname"), "GW02\n").unwrap();
        std::fs::write(root.path("/proc/sys/kernel/domainname"), "(none)\n").unwrap();
        std::fs::write(
            root.path(RESOLV_CONF),
            "nameserver 127.0.0.53\nsearch acme.lan other.lan\n",
        )
        .unwrap();
        assert_eq!(
            names(&root, None),
            HostName {
                short: "gw02".into(),
                fqdn: Some("gw02.acme.lan".into())
            }
        );
    }

    #[test]
    fn records_to_create_name_one_address_of_each_family() {
        let own: Vec<IpAddr> = ["192.0.2.10", "192.0.2.11", "2001:db8::10"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            records_for("gw01.acme.lan", &own),
            [
                "gw01.acme.lan. IN A 192.0.2.10",
                "gw01.acme.lan. IN AAAA 2001:db8::10"
            ]
        );
    }

    #[test]
    fn no_nameserver_is_an_error_not_a_fallback_to_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let err = resolver(&root, &[]).err().unwrap();
        assert!(err.contains("reading /etc/resolv.conf"), "{err}");
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    const FQDN: &str = "gw01.acme.lan";

    /// This server: one address of each family.
    fn own() -> Vec<IpAddr> {
        ips(&["192.0.2.10", "2001:db8::10"])
    }

    /// Found `resolved`; each reverse target resolves back to `ptr`.
    fn found(resolved: &[&str], ptr: &[&str]) -> Found {
        let resolved = ips(resolved);
        let names: Vec<String> = ptr.iter().map(|s| s.to_string()).collect();
        Found {
            ptr: reverse_targets(&resolved, &own())
                .into_iter()
                .map(|ip| (ip, names.clone()))
                .collect(),
            resolved,
            failure: None,
        }
    }

    fn classify_found(found: Found) -> Outcome {
        classify(&HostName::parse(FQDN), &own(), Ok(found))
    }

    #[test]
    fn ok_when_the_name_leads_here_and_back() {
        let o = classify_found(found(&["192.0.2.10"], &["gw01.acme.lan"]));
        assert_eq!(o.report.status, DnsStatus::Ok);
        assert!(o.settled());
        assert_eq!(o.report.resolved, ips(&["192.0.2.10"]));
        assert_eq!(o.report.reverse, ["gw01.acme.lan"]);
        assert_eq!(
            o.summary,
            "DNS: gw01.acme.lan resolves to this server (192.0.2.10); reverse: gw01.acme.lan"
        );
        assert!(o.records_to_create.is_empty() && o.records_to_delete.is_empty());
        assert!(o.reverse_to_create.is_empty(), "{:?}", o.reverse_to_create);
    }

    #[test]
    fn ok_with_a_suggested_ptr_when_the_address_does_not_lead_back() {
        let o = classify_found(found(&["192.0.2.10"], &["dhcp-10.acme.lan"]));
        assert_eq!(o.report.status, DnsStatus::Ok);
        assert!(
            o.summary.ends_with("reverse: dhcp-10.acme.lan"),
            "{}",
            o.summary
        );
        assert_eq!(
            o.reverse_to_create,
            ["10.2.0.192.in-addr.arpa. IN PTR gw01.acme.lan."]
        );
        let o = classify_found(found(&["192.0.2.10"], &[]));
        assert!(
            o.summary.ends_with("no reverse (PTR) record"),
            "{}",
            o.summary
        );
        assert_eq!(o.reverse_to_create.len(), 1);
        assert!(o.records_to_create.is_empty() && o.records_to_delete.is_empty());
    }

    #[test]
    fn missing_asks_for_one_record_of_each_family() {
        let o = classify_found(found(&[], &[]));
        assert_eq!(o.report.status, DnsStatus::Missing);
        assert!(!o.settled());
        assert_eq!(
            o.records_to_create,
            [
                "gw01.acme.lan. IN A 192.0.2.10",
                "gw01.acme.lan. IN AAAA 2001:db8::10"
            ]
        );
        assert!(
            o.summary.starts_with("DNS has no record for gw01.acme.lan"),
            "{}",
            o.summary
        );
        assert!(o.records_to_delete.is_empty());
        // Reverse lookups ran for the addresses a record would name.
        assert_eq!(o.reverse_to_create.len(), 2);
    }

    #[test]
    fn pointing_elsewhere_asks_to_change_the_record() {
        let o = classify_found(found(&["198.51.100.7"], &[]));
        assert_eq!(o.report.status, DnsStatus::Mismatch);
        assert_eq!(o.report.resolved, ips(&["198.51.100.7"]));
        assert_eq!(o.records_to_delete, ["gw01.acme.lan. IN A 198.51.100.7"]);
        assert_eq!(o.records_to_create.len(), 2);
        assert!(
            o.summary
                .starts_with("DNS has gw01.acme.lan pointing at 198.51.100.7, not at this server"),
            "{}",
            o.summary
        );
    }

    #[test]
    fn this_server_and_a_foreign_address_asks_to_delete_the_foreign_record() {
        let o = classify_found(found(&["192.0.2.10", "198.51.100.7"], &["gw01.acme.lan"]));
        assert_eq!(o.report.status, DnsStatus::Mismatch);
        assert!(!o.settled());
        assert_eq!(o.records_to_delete, ["gw01.acme.lan. IN A 198.51.100.7"]);
        assert!(o.records_to_create.is_empty(), "{:?}", o.records_to_create);
        assert!(o.reverse_to_create.is_empty());
        assert!(
            o.summary
                .contains("this server (192.0.2.10) and also at 198.51.100.7"),
            "{}",
            o.summary
        );
    }

    #[test]
    fn no_domain_means_no_record_can_name_the_server() {
        let o = classify(&HostName::parse("gw01"), &own(), Ok(Found::default()));
        assert_eq!(o.report.status, DnsStatus::Missing);
        assert_eq!(o.report.fqdn, "gw01");
        assert!(
            o.summary.contains("(gw01) has no domain name"),
            "{}",
            o.summary
        );
        assert!(o.records_to_create.is_empty() && o.reverse_to_create.is_empty());
    }

    #[test]
    fn resolver_errors_are_errors_not_a_missing_record() {
        let o = classify(
            &HostName::parse(FQDN),
            &own(),
            Err("cannot check DNS for gw01.acme.lan: no DNS server".into()),
        );
        assert_eq!(o.report.status, DnsStatus::Error);
        assert_eq!(
            o.summary,
            "cannot check DNS for gw01.acme.lan: no DNS server"
        );
        assert!(o.records_to_create.is_empty());
        // A lookup that failed with nothing resolved: an error, and the records to make.
        let mut f = found(&[], &[]);
        f.failure = Some("request timed out".into());
        let o = classify_found(f);
        assert_eq!(o.report.status, DnsStatus::Error);
        assert_eq!(
            o.summary,
            "cannot check DNS for gw01.acme.lan: request timed out"
        );
        assert_eq!(o.records_to_create.len(), 2);
        assert!(o.reverse_to_create.is_empty());
        // A failed AAAA lookup does not hide an A record that leads here.
        let mut f = found(&["192.0.2.10"], &["gw01.acme.lan"]);
        f.failure = Some("request timed out".into());
        assert_eq!(classify_found(f).report.status, DnsStatus::Ok);
    }

    #[test]
    fn reverse_lookups_go_to_the_addresses_the_name_should_lead_to() {
        let own = ips(&["192.0.2.10", "192.0.2.11", "2001:db8::10"]);
        assert_eq!(
            reverse_targets(&ips(&["192.0.2.11", "198.51.100.7"]), &own),
            ips(&["192.0.2.11"])
        );
        assert_eq!(
            reverse_targets(&ips(&["198.51.100.7"]), &own),
            ips(&["192.0.2.10", "2001:db8::10"])
        );
    }
}
