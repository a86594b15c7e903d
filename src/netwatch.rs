//! Wakes a retry's wait when the kernel's addresses or routes change (rtnetlink multicast
//! groups), so that a network that comes up late (DHCP answering minutes after the boot, a
//! cable plugged in) is used within seconds rather than at the end of a backoff of up to a
//! minute. The messages are not parsed: a wake-up compares what the kernel has (addresses,
//! routes) with what it had at the last one, so that a refresh (a router advertisement or a
//! DHCP renewal re-adding the same address with a new lifetime, at the same moment on every
//! box of a LAN) wakes nobody.

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// rtnetlink groups (linux/rtnetlink.h): IPv4 and IPv6 addresses and routes.
const RTMGRP_IPV4_IFADDR: u32 = 0x10;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_IFADDR: u32 = 0x100;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// After a change, how long to let the rest of it arrive (an address, then its route, then
/// resolved's DNS servers) before trying again: at least [`SETTLE`], at most [`SETTLE_MAX`],
/// at random in between, so that boxes that see the same change (a router back after a power
/// cut) do not all try again at the same moment.
pub(crate) const SETTLE: Duration = Duration::from_secs(2);
pub(crate) const SETTLE_MAX: Duration = Duration::from_secs(6);

pub(crate) struct NetWatch {
    fd: AsyncFd<OwnedFd>,
    /// The network as the last wake-up (or the opening) found it.
    seen: Mutex<Snapshot>,
}

/// What a change must change to count: every address of every link, and the routes (without
/// their use counters). Lifetimes are not in it.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    addresses: Vec<String>,
    routes: Vec<String>,
}

impl Snapshot {
    fn now() -> Snapshot {
        let mut addresses: Vec<String> = nix::ifaddrs::getifaddrs()
            .map(|all| {
                all.filter_map(|ifa| {
                    let addr = ifa.address?;
                    let ip = match (addr.as_sockaddr_in(), addr.as_sockaddr_in6()) {
                        (Some(v4), _) => v4.ip().to_string(),
                        (_, Some(v6)) => v6.ip().to_string(),
                        _ => return None,
                    };
                    let mask = ifa.netmask.map(|m| m.to_string()).unwrap_or_default();
                    Some(format!("{} {ip} {mask}", ifa.interface_name))
                })
                .collect()
            })
            .unwrap_or_default();
        addresses.sort();
        let table = |path: &str, keep: &[usize]| -> Vec<String> {
            let mut rows: Vec<String> = std::fs::read_to_string(path)
                .unwrap_or_default()
                .lines()
                .map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    keep.iter()
                        .filter_map(|&i| fields.get(i).copied())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect();
            rows.sort();
            rows
        };
        // route: Iface Destination Gateway Flags RefCnt Use Metric Mask …; ipv6_route: dest
        // plen src plen next-hop metric refcnt use flags iface.
        let mut routes = table("/proc/net/route", &[0, 1, 2, 3, 6, 7]);
        routes.extend(table("/proc/net/ipv6_route", &[0, 1, 2, 3, 4, 5, 8, 9]));
        Snapshot { addresses, routes }
    }
}

impl NetWatch {
    /// Subscribes to address and route changes; `None` where netlink is not available (a
    /// sandbox without AF_NETLINK, a test runner), and the retries keep their backoff.
    pub(crate) fn open() -> Option<NetWatch> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            SockProtocol::NetlinkRoute,
        )
        .inspect_err(|e| log::debug!("netlink socket: {e}: retries wait out their backoff"))
        .ok()?;
        let groups =
            RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))
            .inspect_err(|e| log::debug!("netlink bind: {e}: retries wait out their backoff"))
            .ok()?;
        // `new` is deprecated for objects that do not own their descriptor; an `OwnedFd` does,
        // and `register`, the replacement, is unsafe (the crate denies unsafe code).
        #[allow(deprecated)]
        let fd = AsyncFd::new(fd).ok()?;
        Some(NetWatch {
            fd,
            seen: Mutex::new(Snapshot::now()),
        })
    }

    /// Reads and drops what is queued (changes before now): true if there was anything.
    pub(crate) fn drain(&self) -> bool {
        let mut buf = [0u8; 8192];
        let mut any = false;
        loop {
            match recv(
                self.fd.get_ref().as_raw_fd(),
                &mut buf,
                MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(0) => break,
                // An overrun says that something changed, too.
                Ok(_) | Err(Errno::ENOBUFS) => any = true,
                // EAGAIN: nothing more.
                Err(_) => break,
            }
        }
        any
    }

    /// Waits for the next change of the addresses or routes (one that leaves them as they
    /// were, a refreshed lifetime, does not count), then lets it settle.
    pub(crate) async fn changed(&self) {
        loop {
            let Ok(mut guard) = self.fd.readable().await else {
                return std::future::pending().await;
            };
            guard.clear_ready();
            if !self.drain() {
                continue;
            }
            let settle = rand::random_range(SETTLE.as_millis()..=SETTLE_MAX.as_millis());
            tokio::time::sleep(Duration::from_millis(settle as u64)).await;
            self.drain();
            let now = Snapshot::now();
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen != now {
                *seen = now;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// In a network namespace of its own (this test's thread, and the `ip` it starts): the
    /// watch wakes when addresses appear, and not without a change.
    #[test]
    fn wakes_when_an_address_appears_and_not_before() {
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                .expect("a network namespace (the tests run as root)");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let watch = NetWatch::open().expect("netlink");
                let quiet = tokio::time::timeout(Duration::from_secs(2), watch.changed()).await;
                assert!(quiet.is_err(), "woke without a change");
                let ip = |args: &str| {
                    let ok = Command::new("ip")
                        .args(args.split(' '))
                        .status()
                        .unwrap()
                        .success();
                    assert!(ok, "ip {args}");
                };
                // Bringing the namespace's loopback up gives it its addresses and routes.
                ip("link set lo up");
                let woke = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
                assert!(woke.is_ok(), "no wake-up for a new address");
                // A router advertisement or a DHCP renewal re-adds an address with a new
                // lifetime: the kernel says RTM_NEWADDR, nothing changed, nobody wakes.
                ip("addr add 192.0.2.10/24 dev lo valid_lft 300 preferred_lft 300");
                let woke = tokio::time::timeout(Duration::from_secs(10), watch.changed()).await;
                assert!(woke.is_ok(), "no wake-up for another address");
                ip("addr change 192.0.2.10/24 dev lo valid_lft 600 preferred_lft 600");
                let refresh = SETTLE_MAX + Duration::from_secs(2);
                let quiet = tokio::time::timeout(refresh, watch.changed()).await;
                assert!(quiet.is_err(), "woke for a refreshed lifetime");
            });
        })
        .join()
        .unwrap();
    }
}
