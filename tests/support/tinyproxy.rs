//! A real HTTP proxy for a test: tinyproxy in the foreground on 127.0.0.1 at a free port, with
//! its own configuration and log in a temporary directory, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The credentials the proxy asks for (`BasicAuth`).
pub const USER: &str = "gwproxy";
pub const PASSWORD: &str = "Pr0xy-pw-7c1e9d";

pub struct Tinyproxy {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn free_tcp_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a TCP port");
    l.local_addr().expect("local address").port()
}

impl Tinyproxy {
    /// Asks for [`USER`] and [`PASSWORD`]; `extra` are more configuration lines
    /// (`ConnectPort 443`, `Filter …`).
    pub fn start(extra: &str) -> Tinyproxy {
        Tinyproxy::spawn(&format!("BasicAuth {USER} {PASSWORD}\n{extra}"))
    }

    /// Asks for no credentials.
    pub fn open(extra: &str) -> Tinyproxy {
        Tinyproxy::spawn(extra)
    }

    /// Starts it on a free port; the port may be taken by another process before tinyproxy
    /// binds it (then it exits, and a new port is tried).
    fn spawn(extra: &str) -> Tinyproxy {
        let dir = tempfile::tempdir().expect("a directory for tinyproxy");
        for _attempt in 0..5 {
            let port = free_tcp_port();
            let conf = dir.path().join("tinyproxy.conf");
            let log = dir.path().join("tinyproxy.log");
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 30\nLogLevel Connect\n\
                     LogFile \"{}\"\nMaxClients 20\nAllow 127.0.0.1\n{extra}\n",
                    log.display()
                ),
            )
            .expect("writing tinyproxy.conf");
            let mut child = Command::new("tinyproxy")
                .arg("-d")
                .arg("-c")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting tinyproxy (tests/setup installs it)");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Tinyproxy { child, port, dir };
                }
                if child.try_wait().expect("waiting for tinyproxy").is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "tinyproxy did not listen on port {port} within 10 s"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("tinyproxy exited at start five times (see its configuration in tests/support)");
    }

    /// `http://host:port`, without credentials.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://USER:PASSWORD@host:port`, with `password`.
    pub fn url_with(&self, password: &str) -> String {
        format!("http://{USER}:{password}@127.0.0.1:{}", self.port)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tinyproxy.log")
    }

    /// What tinyproxy logged so far (each CONNECT request it got, among others).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
