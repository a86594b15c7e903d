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

/// This server's host name and, when it has a domain, its FQDN: the seed's `hostname` if
/// given, else the kernel's host name, with the domain from the name itself, the kernel's
/// domain name, or the first search domain in resolv.conf (which DHCP fills in).
pub fn names(root: &Root, seed_hostname: Option<&str>) -> (String, Option<String>) {
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
    if let Some((short, _)) = host.split_once('.') {
        return (short.to_string(), Some(host));
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
    (host, fqdn)
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

/// Runs the check once.
pub async fn check(
    resolver: Result<&TokioResolver, &str>,
    hostname: &str,
    fqdn: Option<&str>,
    own: &[IpAddr],
) -> Outcome {
    let shown = fqdn.unwrap_or(hostname).to_string();
    let report = |status, resolved: Vec<IpAddr>, reverse: Vec<String>| DnsReport {
        status,
        fqdn: shown.clone(),
        resolved,
        reverse,
    };
    let Some(fqdn) = fqdn else {
        return Outcome::new(
            report(DnsStatus::Missing, vec![], vec![]),
            format!(
                "this server ({hostname}) has no domain name, so no DNS record can name it; \
                 set hostname = \"{hostname}.<domain>\" in the seed or have DHCP hand out a domain"
            ),
        );
    };
    let resolver = match resolver {
        Ok(r) => r,
        Err(why) => {
            return Outcome::new(
                report(DnsStatus::Error, vec![], vec![]),
                format!("cannot check DNS for {fqdn}: {why}"),
            );
        }
    };
    let name = match Name::from_ascii(format!("{fqdn}.")) {
        Ok(n) => n,
        Err(e) => {
            return Outcome::new(
                report(DnsStatus::Error, vec![], vec![]),
                format!("{fqdn} is not a DNS name: {e}"),
            );
        }
    };
    let mut resolved = Vec::new();
    let mut failure = None;
    for result in [
        resolver.ipv4_lookup(name.clone()).await,
        resolver.ipv6_lookup(name.clone()).await,
    ] {
        match result {
            Ok(lookup) => resolved.extend(lookup.answers().iter().filter_map(|r| match &r.data {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })),
            Err(e) if e.is_no_records_found() || e.is_nx_domain() => {}
            Err(e) => failure = Some(e.to_string()),
        }
    }
    resolved.sort();
    resolved.dedup();
    let (mine, foreign): (Vec<IpAddr>, Vec<IpAddr>) =
        resolved.iter().partition(|ip| own.contains(ip));
    // Reverse lookups for the addresses the name should lead to: those it does, else the ones
    // a record would name.
    let targets = if mine.is_empty() {
        record_addresses(own)
    } else {
        mine.clone()
    };
    let mut reverse = Vec::new();
    let mut reverse_to_create = Vec::new();
    for ip in &targets {
        let mut names = Vec::new();
        if let Ok(ptr) = resolver.reverse_lookup(Name::from(*ip)).await {
            for r in ptr.answers() {
                if let RData::PTR(p) = &r.data {
                    names.push(p.0.to_string().trim_end_matches('.').to_ascii_lowercase());
                }
            }
        }
        if !names.iter().any(|n| n == &fqdn.to_ascii_lowercase()) {
            reverse_to_create.push(reverse_record(fqdn, ip));
        }
        for n in names {
            if !reverse.contains(&n) {
                reverse.push(n);
            }
        }
    }
    let rev = if reverse.is_empty() {
        "no reverse (PTR) record".to_string()
    } else {
        format!("reverse: {}", reverse.join(", "))
    };
    if !mine.is_empty() && foreign.is_empty() {
        let mut outcome = Outcome::new(
            report(DnsStatus::Ok, resolved, reverse),
            format!(
                "DNS: {fqdn} resolves to this server ({}); {rev}",
                join(&mine)
            ),
        );
        outcome.reverse_to_create = reverse_to_create;
        return outcome;
    }
    if !mine.is_empty() {
        // This server and another machine: a stale entry of a round robin, a copied record.
        let delete: Vec<String> = foreign.iter().map(|ip| record(fqdn, ip)).collect();
        let mut outcome = Outcome::new(
            report(DnsStatus::Mismatch, resolved, reverse),
            format!(
                "DNS has {fqdn} pointing at this server ({}) and also at {}, which is not this \
                 server: some print clients and terminals reach the other machine. Delete: {}",
                join(&mine),
                join(&foreign),
                delete.join("; ")
            ),
        );
        outcome.records_to_delete = delete;
        outcome.reverse_to_create = reverse_to_create;
        return outcome;
    }
    if resolved.is_empty() {
        if let Some(why) = failure {
            let mut outcome = Outcome::new(
                report(DnsStatus::Error, vec![], reverse),
                format!("cannot check DNS for {fqdn}: {why}"),
            );
            outcome.records_to_create = records_for(fqdn, own);
            return outcome;
        }
        let records = records_for(fqdn, own);
        let mut outcome = Outcome::new(
            report(DnsStatus::Missing, vec![], reverse),
            format!(
                "DNS has no record for {fqdn}; print clients and terminals cannot find this server. Create: {}",
                records.join("; ")
            ),
        );
        outcome.records_to_create = records;
        outcome.reverse_to_create = reverse_to_create;
        return outcome;
    }
    let records = records_for(fqdn, own);
    let delete: Vec<String> = foreign.iter().map(|ip| record(fqdn, ip)).collect();
    let mut outcome = Outcome::new(
        report(DnsStatus::Mismatch, resolved, reverse),
        format!(
            "DNS has {fqdn} pointing at {}, not at this server ({}). Change it to: {}",
            join(&foreign),
            join(own),
            records.join("; ")
        ),
    );
    outcome.records_to_create = records;
    outcome.records_to_delete = delete;
    outcome.reverse_to_create = reverse_to_create;
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
    let name = state.hostname.as_deref()?;
    let (host, fqdn) = match name.split_once('.') {
        Some((host, _)) => (host, Some(name)),
        None => (name, None),
    };
    let nameservers: Vec<SocketAddr> = state
        .primary
        .as_ref()
        .map(|p| {
            p.nameservers
                .iter()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let resolver = resolver(root, &nameservers);
    let outcome = check(
        resolver.as_ref().map_err(String::as_str),
        host,
        fqdn,
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
    fn names_come_from_the_seed_the_kernel_or_resolv_conf() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        assert_eq!(
            names(&root, Some("gw01.acme.lan")),
            ("gw01".into(), Some("gw01.acme.lan".into()))
        );
        assert_eq!(names(&root, Some("gw01")), ("gw01".into(), None));
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
            ("gw02".into(), Some("gw02.acme.lan".into()))
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
}
