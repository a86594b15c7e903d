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
}

fn records_for(fqdn: &str, own: &[IpAddr]) -> Vec<String> {
    let v4 = own
        .iter()
        .find(|ip| ip.is_ipv4())
        .map(|ip| format!("{fqdn}. IN A {ip}"));
    let v6 = own
        .iter()
        .find(|ip| ip.is_ipv6())
        .map(|ip| format!("{fqdn}. IN AAAA {ip}"));
    v4.into_iter().chain(v6).collect()
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
        return Outcome {
            report: report(DnsStatus::Missing, vec![], vec![]),
            summary: format!(
                "this server ({hostname}) has no domain name, so no DNS record can name it; \
                 set hostname = \"{hostname}.<domain>\" in the seed or have DHCP hand out a domain"
            ),
            records_to_create: vec![],
        };
    };
    let resolver = match resolver {
        Ok(r) => r,
        Err(why) => {
            return Outcome {
                report: report(DnsStatus::Error, vec![], vec![]),
                summary: format!("cannot check DNS for {fqdn}: {why}"),
                records_to_create: vec![],
            };
        }
    };
    let name = match Name::from_ascii(format!("{fqdn}.")) {
        Ok(n) => n,
        Err(e) => {
            return Outcome {
                report: report(DnsStatus::Error, vec![], vec![]),
                summary: format!("{fqdn} is not a DNS name: {e}"),
                records_to_create: vec![],
            };
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
    let mine: Vec<IpAddr> = resolved
        .iter()
        .copied()
        .filter(|ip| own.contains(ip))
        .collect();
    let mut reverse = Vec::new();
    for ip in mine.iter().chain(own.iter().take(1)) {
        if let Ok(ptr) = resolver.reverse_lookup(Name::from(*ip)).await {
            for r in ptr.answers() {
                if let RData::PTR(p) = &r.data {
                    let n = p.0.to_string().trim_end_matches('.').to_string();
                    if !reverse.contains(&n) {
                        reverse.push(n);
                    }
                }
            }
        }
    }
    let own_text = own
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if !mine.is_empty() {
        let rev = if reverse.is_empty() {
            "no reverse (PTR) record".to_string()
        } else {
            format!("reverse: {}", reverse.join(", "))
        };
        return Outcome {
            summary: format!(
                "DNS: {fqdn} resolves to this server ({}); {rev}",
                mine.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            report: report(DnsStatus::Ok, resolved, reverse),
            records_to_create: vec![],
        };
    }
    if resolved.is_empty() {
        if let Some(why) = failure {
            return Outcome {
                report: report(DnsStatus::Error, vec![], reverse),
                summary: format!("cannot check DNS for {fqdn}: {why}"),
                records_to_create: records_for(fqdn, own),
            };
        }
        let records = records_for(fqdn, own);
        return Outcome {
            summary: format!(
                "DNS has no record for {fqdn}; print clients and terminals cannot find this server. Create: {}",
                records.join("; ")
            ),
            report: report(DnsStatus::Missing, vec![], reverse),
            records_to_create: records,
        };
    }
    let records = records_for(fqdn, own);
    Outcome {
        summary: format!(
            "DNS has {fqdn} pointing at {}, not at this server ({own_text}). Change it to: {}",
            resolved
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            records.join("; ")
        ),
        report: report(DnsStatus::Mismatch, resolved, reverse),
        records_to_create: records,
    }
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
