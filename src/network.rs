//! The appliance's own network from the seed (docs/network.md): a static address with its
//! prefix, a gateway, DNS servers, search domains, a VLAN, the link to put them on. Turned
//! into systemd-networkd files: `network` (the early unit, before networkd starts) writes them
//! under `/run/systemd/network`, the handoff keeps them under `/etc/systemd/network` so that
//! later boots have them when the seed (a stick, a credential) is gone.

use crate::fsutil;
use crate::root::Root;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::Path;

/// Where the early unit writes the files (runtime: made anew at every boot until provisioned).
pub(crate) const RUN_DIR: &str = "/run/systemd/network";
/// Where the handoff keeps them for the boots after provisioning.
pub(crate) const ETC_DIR: &str = "/etc/systemd/network";
/// Every file of ours starts with this; numbered ahead of the image's `80-wired.network`, so
/// networkd, which takes the first matching file in name order, uses ours.
const PREFIX: &str = "10-gateway-firstboot";
/// The tagged link's `.network`, ahead of ours for the physical link.
const VLAN_NETWORK: &str = "09-gateway-firstboot-vlan.network";

/// An address with its prefix length (`192.0.2.10/24`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Parses `ADDRESS/PREFIX`; the message says what is wrong, for the validation's text.
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let Some((addr, prefix)) = s.trim().split_once('/') else {
            return Err("the prefix length is missing (192.0.2.10/24)".into());
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix.parse::<u8>() {
            Ok(p) if (1..=max).contains(&p) => p,
            _ => {
                return Err(format!(
                    "prefix length {prefix:?} is not a number from 1 to {max}"
                ));
            }
        };
        Ok(Cidr { addr, prefix })
    }

    /// The address as a number, and the mask of the network part, in a 128-bit space.
    fn bits(ip: IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 32),
            IpAddr::V6(v6) => (u128::from(v6), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Self::bits(self.addr);
        let host_bits = width - u32::from(self.prefix);
        let all = if width == 32 {
            u128::from(u32::MAX)
        } else {
            u128::MAX
        };
        all & !((1u128 << host_bits) - 1)
    }

    /// True when `ip` is in this address's subnet.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let (a, _) = Self::bits(self.addr);
        let (b, _) = Self::bits(ip);
        a & self.mask() == b & self.mask()
    }

    /// The subnet, for messages (`192.0.2.0/24`).
    pub fn subnet(&self) -> String {
        let (a, _) = Self::bits(self.addr);
        let net = a & self.mask();
        let ip = match self.addr {
            IpAddr::V4(_) => IpAddr::V4((net as u32).into()),
            IpAddr::V6(_) => IpAddr::V6(net.into()),
        };
        format!("{ip}/{}", self.prefix)
    }

    /// Why this is not an address a host can have, if it is not one: the subnet's own address
    /// or its broadcast (IPv4, prefix up to /30), loopback, multicast, unspecified.
    pub fn host_problem(&self) -> Option<String> {
        let ip = self.addr;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Some(format!("{ip} cannot be a server's address"));
        }
        if let IpAddr::V4(v4) = ip
            && self.prefix <= 30
        {
            let (a, _) = Self::bits(ip);
            let host = a & !self.mask() & u128::from(u32::MAX);
            let broadcast = !self.mask() & u128::from(u32::MAX);
            if host == 0 {
                return Some(format!(
                    "{v4} is the address of the subnet {} itself",
                    self.subnet()
                ));
            }
            if host == broadcast {
                return Some(format!(
                    "{v4} is the broadcast address of {}",
                    self.subnet()
                ));
            }
        }
        None
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Which link the settings are for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkMatch {
    /// A kernel interface name (`enp1s0`).
    Name(String),
    /// A MAC address, lowercase (`52:54:00:12:34:56`).
    Mac(String),
}

/// The seed's network settings, validated. Leaving out `address` keeps DHCP (with the seed's
/// DNS servers, search domains and VLAN, where given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    /// Empty: DHCP.
    pub addresses: Vec<Cidr>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub search_domains: Vec<String>,
    pub vlan: Option<u16>,
    /// `None`: every Ethernet link.
    pub interface: Option<LinkMatch>,
}

const HEADER: &str = "# Written by gateway-firstboot from its settings (docs/network.md).\n\
     # Change the seed (or run gateway-firstboot install) rather than this file.\n";

impl NetworkConfig {
    pub fn is_static(&self) -> bool {
        !self.addresses.is_empty()
    }

    /// One line for the console and the journal: `static 192.0.2.10/24 via 192.0.2.1, DNS
    /// 192.0.2.53, search acme.lan, VLAN 42, on every Ethernet link`.
    pub fn describe(&self) -> String {
        let join = |items: Vec<String>| items.join(" ");
        let mut parts = Vec::new();
        if self.is_static() {
            let addrs = join(self.addresses.iter().map(Cidr::to_string).collect());
            parts.push(match self.gateway {
                Some(gw) => format!("static {addrs} via {gw}"),
                None => format!("static {addrs}, no gateway"),
            });
        } else {
            parts.push("DHCP".to_string());
        }
        if !self.dns.is_empty() {
            parts.push(format!(
                "DNS {}",
                join(self.dns.iter().map(IpAddr::to_string).collect())
            ));
        }
        if !self.search_domains.is_empty() {
            parts.push(format!("search {}", self.search_domains.join(" ")));
        }
        if let Some(id) = self.vlan {
            parts.push(format!("VLAN {id}"));
        }
        parts.push(match &self.interface {
            Some(LinkMatch::Name(n)) => format!("on {n}"),
            Some(LinkMatch::Mac(m)) => format!("on the link with MAC address {m}"),
            None => "on every Ethernet link".to_string(),
        });
        parts.join(", ")
    }

    /// The VLAN link's name (`vlan42`).
    fn vlan_link(&self) -> Option<String> {
        self.vlan.map(|id| format!("vlan{id}"))
    }

    /// The networkd files, by name, with their text.
    pub fn files(&self) -> Vec<(String, String)> {
        let mut link = String::from("[Match]\n");
        match &self.interface {
            Some(LinkMatch::Name(name)) => link += &format!("Name={name}\n"),
            Some(LinkMatch::Mac(mac)) => link += &format!("Type=ether\nMACAddress={mac}\n"),
            None => link += "Type=ether\n",
        }
        let Some(vlan) = self.vlan_link() else {
            return vec![(
                format!("{PREFIX}.network"),
                HEADER.to_string() + &link + &self.addressing(),
            )];
        };
        let id = self.vlan.unwrap_or_default();
        let netdev = format!("[NetDev]\nName={vlan}\nKind=vlan\n\n[VLAN]\nId={id}\n");
        let parent = format!(
            "{link}\n[Network]\n# Only the tagged traffic: the addresses are on {vlan}.\nVLAN={vlan}\nLinkLocalAddressing=no\nDHCP=no\nIPv6AcceptRA=no\n"
        );
        let tagged = format!("[Match]\nName={vlan}\n{}", self.addressing());
        vec![
            (format!("{PREFIX}.network"), HEADER.to_string() + &parent),
            (
                format!("{PREFIX}-vlan.netdev"),
                HEADER.to_string() + &netdev,
            ),
            (VLAN_NETWORK.to_string(), HEADER.to_string() + &tagged),
        ]
    }

    /// The `[Network]` part (and DHCP's) of the link that carries the addresses.
    fn addressing(&self) -> String {
        let mut s = String::from("\n[Network]\n");
        if self.is_static() {
            s += "DHCP=no\n";
            for a in &self.addresses {
                s += &format!("Address={a}\n");
            }
            if let Some(gw) = self.gateway {
                s += &format!("Gateway={gw}\n");
            }
        } else {
            s += "DHCP=yes\n";
        }
        for dns in &self.dns {
            s += &format!("DNS={dns}\n");
        }
        if !self.search_domains.is_empty() {
            s += &format!("Domains={}\n", self.search_domains.join(" "));
        }
        if !self.is_static() {
            // The seed's DNS servers replace the ones DHCP offers; its host name stays ours.
            let use_dns = if self.dns.is_empty() { "yes" } else { "no" };
            s += &format!("\n[DHCPv4]\nUseDomains=yes\nUseHostname=no\nUseDNS={use_dns}\n");
            s += &format!("\n[IPv6AcceptRA]\nUseDNS={use_dns}\n");
        }
        s
    }
}

/// Makes the files in `dir` (under `root`) say `config`: writes ours, removes ours that are no
/// longer wanted (a VLAN taken out of the seed), leaves every other file alone. Returns
/// whether anything changed.
pub(crate) fn write(root: &Root, dir: &str, config: Option<&NetworkConfig>) -> io::Result<bool> {
    let dir = root.path(dir);
    let wanted = config.map(NetworkConfig::files).unwrap_or_default();
    let mut changed = false;
    for (name, text) in &wanted {
        let path = dir.join(name);
        if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            std::fs::create_dir_all(&dir)?;
            fsutil::write_atomic(&path, text.as_bytes(), 0o644)?;
            changed = true;
        }
    }
    for name in ours(&dir)? {
        if !wanted.iter().any(|(w, _)| *w == name) {
            std::fs::remove_file(dir.join(&name))?;
            changed = true;
        }
    }
    Ok(changed)
}

/// The names of our files in `dir`.
fn ours(dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut names = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(PREFIX) || name == VLAN_NETWORK {
            names.push(name);
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    #[test]
    fn cidr_parses_and_contains() {
        let c = cidr("192.0.2.10/24");
        assert!(c.contains("192.0.2.1".parse().unwrap()));
        assert!(!c.contains("192.0.3.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(c.subnet(), "192.0.2.0/24");
        let v6 = cidr("2001:db8:1::10/64");
        assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
        assert!(!v6.contains("2001:db8:2::1".parse().unwrap()));
        assert_eq!(v6.subnet(), "2001:db8:1::/64");
        assert!(cidr("10.0.0.1/32").contains("10.0.0.1".parse().unwrap()));
        for bad in [
            "192.0.2.10",
            "192.0.2.10/33",
            "192.0.2.10/0",
            "192.0.2.300/24",
            "x/24",
            "::1/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn host_problems() {
        assert!(
            cidr("192.0.2.0/24")
                .host_problem()
                .unwrap()
                .contains("subnet")
        );
        assert!(
            cidr("192.0.2.255/24")
                .host_problem()
                .unwrap()
                .contains("broadcast")
        );
        assert!(cidr("127.0.0.2/8").host_problem().is_some());
        assert_eq!(cidr("192.0.2.10/24").host_problem(), None);
        assert_eq!(
            cidr("192.0.2.1/31").host_problem(),
            None,
            "a /31 has no broadcast"
        );
    }

    fn static_config() -> NetworkConfig {
        NetworkConfig {
            addresses: vec![cidr("192.0.2.10/24")],
            gateway: Some("192.0.2.1".parse().unwrap()),
            dns: vec!["192.0.2.53".parse().unwrap()],
            search_domains: vec!["acme.lan".into()],
            vlan: None,
            interface: None,
        }
    }

    #[test]
    fn static_file() {
        let files = static_config().files();
        assert_eq!(files.len(), 1);
        let (name, text) = &files[0];
        assert_eq!(name, "10-gateway-firstboot.network");
        for line in [
            "Type=ether",
            "DHCP=no",
            "Address=192.0.2.10/24",
            "Gateway=192.0.2.1",
            "DNS=192.0.2.53",
            "Domains=acme.lan",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("[DHCPv4]"));
        assert_eq!(
            static_config().describe(),
            "static 192.0.2.10/24 via 192.0.2.1, DNS 192.0.2.53, search acme.lan, on every Ethernet link"
        );
    }

    #[test]
    fn vlan_files() {
        let config = NetworkConfig {
            vlan: Some(42),
            interface: Some(LinkMatch::Mac("52:54:00:12:34:56".into())),
            ..static_config()
        };
        let files = config.files();
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "10-gateway-firstboot.network",
                "10-gateway-firstboot-vlan.netdev",
                "09-gateway-firstboot-vlan.network"
            ]
        );
        assert!(files[0].1.contains("MACAddress=52:54:00:12:34:56\n"));
        assert!(files[0].1.contains("VLAN=vlan42\n"));
        assert!(
            !files[0].1.lines().any(|l| l.starts_with("Address=")),
            "the parent link has no address"
        );
        assert!(files[1].1.contains("Kind=vlan\n") && files[1].1.contains("Id=42\n"));
        assert!(
            files[2].1.contains("Name=vlan42\n") && files[2].1.contains("Address=192.0.2.10/24\n")
        );
    }

    #[test]
    fn dhcp_with_the_seeds_dns() {
        let config = NetworkConfig {
            addresses: vec![],
            gateway: None,
            ..static_config()
        };
        let text = &config.files()[0].1;
        assert!(text.contains("DHCP=yes\n") && text.contains("UseDNS=no\n"));
        assert!(text.contains("DNS=192.0.2.53\n"));
    }

    #[test]
    fn write_replaces_and_removes_only_ours() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path());
        let net = root.path(RUN_DIR);
        std::fs::create_dir_all(&net).unwrap();
        std::fs::write(net.join("80-wired.network"), "[Match]\n").unwrap();
        let vlan = NetworkConfig {
            vlan: Some(7),
            ..static_config()
        };
        assert!(write(&root, RUN_DIR, Some(&vlan)).unwrap());
        assert!(!write(&root, RUN_DIR, Some(&vlan)).unwrap(), "unchanged");
        assert_eq!(ours(&net).unwrap().len(), 3);
        assert!(write(&root, RUN_DIR, Some(&static_config())).unwrap());
        assert_eq!(ours(&net).unwrap(), ["10-gateway-firstboot.network"]);
        assert!(write(&root, RUN_DIR, None).unwrap());
        assert!(ours(&net).unwrap().is_empty());
        assert!(
            net.join("80-wired.network").exists(),
            "the image's file stays"
        );
    }
}
