//! A real DNS server for a test: dnsmasq on 127.0.0.1 at a free port, authoritative for
//! `acme.test` (unknown names there get NXDOMAIN, nothing is forwarded anywhere), killed when
//! dropped.

use std::net::{IpAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const DOMAIN: &str = "acme.test";

pub struct Dnsmasq {
    child: Child,
    pub port: u16,
    /// The hosts file the records are served from (`--addn-hosts`), re-read on SIGHUP.
    hosts: tempfile::NamedTempFile,
}

fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").expect("binding a UDP port");
    s.local_addr().expect("local address").port()
}

impl Dnsmasq {
    /// Serves `records` (name → address, with the reverse PTR) on a new port.
    pub fn start(records: &[(&str, IpAddr)]) -> Dnsmasq {
        Dnsmasq::spawn(records, &[])
    }

    /// Serves `records` as address records only: no reverse (PTR) record.
    pub fn start_forward_only(records: &[(&str, IpAddr)]) -> Dnsmasq {
        let args: Vec<String> = records
            .iter()
            .map(|(name, ip)| format!("--address=/{name}/{ip}"))
            .collect();
        Dnsmasq::spawn(&[], &args)
    }

    /// Serves `records` from now on, in place of the ones before, on the same port (the
    /// server keeps its sockets: no moment when another process could take the port).
    pub fn replace_records(&mut self, records: &[(&str, IpAddr)]) {
        write_hosts(&self.hosts, records);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("signalling dnsmasq");
        // Re-read once it answers for each name (a plain DNS query over UDP).
        let deadline = Instant::now() + Duration::from_secs(10);
        for (name, _) in records {
            while query(self.port, name).unwrap_or(0) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "dnsmasq did not reload its records"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts dnsmasq on a free port. The port is free when picked but another process (a
    /// resolver's ephemeral socket in a parallel test) may take it before dnsmasq binds it:
    /// dnsmasq then exits, and a new port is tried.
    fn spawn(records: &[(&str, IpAddr)], extra: &[String]) -> Dnsmasq {
        let hosts = tempfile::NamedTempFile::new().expect("a hosts file for dnsmasq");
        write_hosts(&hosts, records);
        for _attempt in 0..5 {
            let port = free_udp_port();
            let mut child = dnsmasq_command(port, hosts.path(), extra)
                .spawn()
                .expect("starting dnsmasq");
            // Ready once it answers a query (even NXDOMAIN); gone if it could not bind.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if query(port, DOMAIN).is_some() {
                    return Dnsmasq { child, port, hosts };
                }
                if child.try_wait().expect("waiting for dnsmasq").is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("dnsmasq did not answer on port {port} within 10 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("dnsmasq exited at start five times (ports taken, or run it by hand to see why)")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hosts file: each name with its address (dnsmasq serves the reverse PTR too).
fn write_hosts(file: &tempfile::NamedTempFile, records: &[(&str, IpAddr)]) {
    let text: String = records
        .iter()
        .map(|(name, ip)| format!("{ip} {name}\n"))
        .collect();
    std::fs::write(file.path(), text).expect("writing dnsmasq's hosts file");
}

fn dnsmasq_command(port: u16, hosts: &std::path::Path, extra: &[String]) -> Command {
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
    cmd.arg(format!("--addn-hosts={}", hosts.display()));
    cmd.args(extra);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Asks the server on `port` for `name` (type A, plain UDP): the number of answers, or
/// `None` when nothing replied within half a second.
fn query(port: u16, name: &str) -> Option<u16> {
    let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    socket.send_to(&query, ("127.0.0.1", port)).ok()?;
    let mut reply = [0u8; 512];
    match socket.recv(&mut reply) {
        Ok(n) if n >= 12 && reply[..2] == query[..2] => {
            Some(u16::from_be_bytes([reply[6], reply[7]]))
        }
        _ => None,
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
    }
}
