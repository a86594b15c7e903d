//! The network settings (docs/network.md): each checked on its own, then together (the gateway
//! in an address's subnet, a gateway only with a static address).

use super::{Checked, Invalid, Validator, check_dns_name, invalid, text};
use crate::network::{Cidr, LinkMatch, NetworkConfig};
use crate::problem::{Code, Problem};
use crate::settings::{Collected, Key, RawValue};
use std::net::IpAddr;

/// The items of a list setting (a seed's array, or comma-separated text).
fn items<'a>(value: &'a RawValue, fix: &str) -> Result<Vec<&'a str>, Invalid> {
    match value {
        RawValue::List(items) => Ok(items.iter().map(|s| s.trim()).collect()),
        RawValue::Text(s) => Ok(s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()),
        other => Err(invalid(
            format!("expected an array of strings, found {}", other.type_name()),
            fix,
        )),
    }
}

const ADDRESS_FIX: &str =
    "give this server's address with its prefix length, as in 192.0.2.10/24 or 2001:db8::10/64";

fn check_addresses(value: &RawValue) -> Result<Vec<Cidr>, Invalid> {
    let list = items(value, ADDRESS_FIX)?;
    if list.is_empty() {
        return Err(invalid("is empty", ADDRESS_FIX));
    }
    list.into_iter()
        .map(|item| {
            let cidr = Cidr::parse(item).map_err(|why| {
                invalid(
                    format!("{item:?} is not an address with a prefix: {why}"),
                    ADDRESS_FIX,
                )
            })?;
            match cidr.host_problem() {
                Some(why) => Err(invalid(format!("{item:?}: {why}"), ADDRESS_FIX)),
                None => Ok(cidr),
            }
        })
        .collect()
}

fn check_ip(value: &RawValue, what: &str, fix: &str) -> Result<IpAddr, Invalid> {
    let s = text(value, fix)?.trim();
    s.parse()
        .map_err(|_| invalid(format!("{s:?} is not {what}"), fix))
}

fn check_dns_servers(value: &RawValue) -> Result<Vec<IpAddr>, Invalid> {
    let fix = "list the DNS servers' IP addresses: [\"192.0.2.53\", \"2001:db8::53\"]";
    items(value, fix)?
        .into_iter()
        .map(|item| {
            item.parse::<IpAddr>()
                .map_err(|_| invalid(format!("{item:?} is not an IP address"), fix))
        })
        .collect()
}

fn check_search_domains(value: &RawValue) -> Result<Vec<String>, Invalid> {
    let fix = "list DNS domain names: [\"acme.lan\", \"corp.acme.lan\"]";
    items(value, fix)?
        .into_iter()
        .map(|item| {
            check_dns_name(item)
                .map_err(|why| invalid(format!("{item:?} is not a domain name: {why}"), fix))
        })
        .collect()
}

fn check_vlan(value: &RawValue) -> Result<u16, Invalid> {
    let fix = "give the VLAN id of the server network, a number from 1 to 4094, or leave vlan out for an untagged port";
    let n = match value {
        RawValue::Int(i) => *i,
        RawValue::Text(s) => s
            .trim()
            .parse::<i64>()
            .map_err(|_| invalid(format!("{s:?} is not a number"), fix))?,
        other => {
            return Err(invalid(
                format!("expected a number, found {}", other.type_name()),
                fix,
            ));
        }
    };
    match u16::try_from(n) {
        Ok(id) if (1..=4094).contains(&id) => Ok(id),
        _ => Err(invalid(format!("{n} is not a VLAN id from 1 to 4094"), fix)),
    }
}

fn check_interface(value: &RawValue) -> Result<LinkMatch, Invalid> {
    let fix = "give the link's name as `ip link` shows it (enp1s0) or its MAC address (52:54:00:12:34:56)";
    let s = text(value, fix)?.trim();
    let hex_pairs = s.split(':').collect::<Vec<_>>();
    if hex_pairs.len() == 6
        && hex_pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Ok(LinkMatch::Mac(s.to_ascii_lowercase()));
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if s.is_empty() || s.len() > 15 || !s.chars().all(ok_char) || s == "." || s == ".." {
        return Err(invalid(
            format!(
                "{s:?} is neither a link name (at most 15 letters, digits, - _ .) nor a MAC address"
            ),
            fix,
        ));
    }
    Ok(LinkMatch::Name(s.to_string()))
}

#[derive(PartialEq)]
enum State {
    NotGiven,
    Valid,
    Invalid,
}

fn state<T>(checked: &Checked<T>) -> State {
    match checked {
        Checked::NotGiven => State::NotGiven,
        Checked::Valid(_) => State::Valid,
        Checked::Invalid => State::Invalid,
    }
}

impl Validator<'_> {
    /// The network settings: `Ok(None)` when none is given (the image's DHCP), `Err(())` when
    /// one is invalid (the problems are recorded).
    pub(super) fn network(&mut self) -> Result<Option<NetworkConfig>, ()> {
        let addresses = self.check(Key::Address, check_addresses);
        let gateway = self.check(Key::Gateway, |v| {
            check_ip(
                v,
                "an IP address",
                "give the router's IP address, as in 192.0.2.1",
            )
        });
        let dns = self.check(Key::DnsServers, check_dns_servers);
        let search = self.check(Key::SearchDomains, check_search_domains);
        let vlan = self.check(Key::Vlan, check_vlan);
        let interface = self.check(Key::Interface, check_interface);
        let states = [
            state(&addresses),
            state(&gateway),
            state(&dns),
            state(&search),
            state(&vlan),
            state(&interface),
        ];
        if states.contains(&State::Invalid) {
            return Err(());
        }
        if states.iter().all(|s| *s == State::NotGiven) {
            return Ok(None);
        }
        let config = NetworkConfig {
            addresses: addresses.valid().unwrap_or_default(),
            gateway: gateway.valid(),
            dns: dns.valid().unwrap_or_default(),
            search_domains: search.valid().unwrap_or_default(),
            vlan: vlan.valid(),
            interface: interface.valid(),
        };
        self.network_together(&config)?;
        Ok(Some(config))
    }

    /// The rules between settings: a gateway only with a static address, in its subnet; a
    /// warning for a static address without a gateway or without DNS servers.
    fn network_together(&mut self, config: &NetworkConfig) -> Result<(), ()> {
        let subject = |v: &Self, key| {
            v.collected
                .effective(key)
                .map(|e| e.subject())
                .unwrap_or_else(|| key.to_string())
        };
        if let Some(gw) = config.gateway {
            if !config.is_static() {
                let s = subject(self, Key::Gateway);
                self.problems.push(
                    Problem::error(Code::InvalidGateway, s, format!("{gw} is given without a static address"))
                        .fix("give address (192.0.2.10/24) too, or leave gateway out to take it from DHCP"),
                );
                return Err(());
            }
            let link_local = matches!(gw, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
            if !link_local && !config.addresses.iter().any(|a| a.contains(gw)) {
                let subnets: Vec<String> = config.addresses.iter().map(Cidr::subnet).collect();
                let s = subject(self, Key::Gateway);
                self.problems.push(
                    Problem::error(
                        Code::InvalidGateway,
                        s,
                        format!("{gw} is not in this server's subnet ({})", subnets.join(", ")),
                    )
                    .fix("give the router's address on this server's subnet, or correct the prefix length of address"),
                );
                return Err(());
            }
        }
        if config.is_static() {
            let s = subject(self, Key::Address);
            if config.gateway.is_none() {
                self.problems.push(
                    Problem::warning(
                        Code::NetworkIncomplete,
                        s.clone(),
                        "has no gateway: only hosts on this subnet can be reached",
                    )
                    .fix(
                        "give gateway (the router's address) unless the primary is on this subnet",
                    ),
                );
            }
            if config.dns.is_empty() {
                self.problems.push(
                    Problem::warning(
                        Code::NetworkIncomplete,
                        s,
                        "has no DNS servers: names will not resolve",
                    )
                    .fix("give dns-servers (192.0.2.53) unless the primary is given by IP address"),
                );
            }
        }
        Ok(())
    }
}

/// Only the network settings, for the early unit that writes networkd's files before the
/// network starts (the other settings may come later, from the installer): the configuration
/// (`None`: none given, or invalid) and the network settings' problems.
pub(crate) fn validate_network(collected: &Collected) -> (Option<NetworkConfig>, Vec<Problem>) {
    let mut v = Validator {
        collected,
        problems: Vec::new(),
    };
    let config = v.network().ok().flatten();
    (config, v.problems)
}
