//! A real DNS server for a test: dnsmasq on 127.0.0.1 at a free port, authoritative for
//! `acme.test` (unknown names there get NXDOMAIN, nothing is forwarded anywhere), killed when
//! dropped.
#![allow(dead_code)]

use std::net::{IpAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "acme.test";

pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
    s.local_addr().expect("local address").port()
}

impl Dnsmasq {
    /// Serves `records` (name → address, with the reverse PTR) on a new port.
    pub fn start(records: &[(&str, IpAddr)]) -> Dnsmasq {
        Dnsmasq::start_on(free_udp_port(), records)
    }

    /// Serves `records` as address records only: no reverse (PTR) record.
    pub fn start_forward_only(records: &[(&str, IpAddr)]) -> Dnsmasq {
        let args: Vec<String> = records
            .iter()
            .map(|(name, ip)| format!("--address=/{name}/{ip}"))
            .collect();
        Dnsmasq::spawn(free_udp_port(), &args)
    }

    /// Serves on a given port (to replace a running server's records).
    pub fn start_on(port: u16, records: &[(&str, IpAddr)]) -> Dnsmasq {
        let args: Vec<String> = records
            .iter()
            .map(|(name, ip)| format!("--host-record={name},{ip}"))
            .collect();
        Dnsmasq::spawn(port, &args)
    }

    fn spawn(port: u16, records: &[String]) -> Dnsmasq {
        let bin = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("dnsmasq is missing: install dnsmasq-base (tests/setup does)");
        let mut cmd = Command::new(bin);
        cmd.args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
            &format!("--port={port}"),
            &format!("--local=/{DOMAIN}/"),
        ]);
        cmd.args(records);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq");
        // Ready once it holds the port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start listening on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Dnsmasq { child, port }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}

/// This host's first address others could reach (what the agent compares DNS answers with).
pub fn host_address() -> IpAddr {
    gateway_firstboot::dns::own_addresses()
        .into_iter()
        .find(IpAddr::is_ipv4)
        .or_else(|| gateway_firstboot::dns::own_addresses().into_iter().next())
        .expect("this machine has no non-loopback address; the DNS tests need one")
}
