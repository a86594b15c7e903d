//! Starts `gateway-primary-sim` for a test: a fresh database and TLS directory, a free port on
//! loopback, stopped (killed) when dropped. Shared by the simulator's own tests and the agent's.

use crate::Run;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long the simulator may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct Sim {
    pub bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub default_key: String,
    child: Option<Child>,
    serve_args: Vec<String>,
}

/// The simulator binary.
pub fn sim_bin() -> PathBuf {
    crate::target_bin("gateway-primary-sim")
}

impl Sim {
    pub fn start() -> Sim {
        Sim::start_with(&[])
    }

    /// Starts with extra `serve` arguments (fault flags, `--default-key`, `--name`).
    pub fn start_with(extra: &[&str]) -> Sim {
        let mut sim = Sim {
            bin: sim_bin(),
            dir: tempfile::tempdir().expect("temp dir"),
            port: 0,
            default_key: String::new(),
            child: None,
            serve_args: extra.iter().map(|s| s.to_string()).collect(),
        };
        sim.spawn();
        let keys = sim.cli(&["key", "list"]);
        sim.default_key = keys
            .stdout
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        sim
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("primary.db")
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.tls_dir().join("ca.pem")).expect("ca.pem")
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn spawn(&mut self) {
        let listen = format!("127.0.0.1:{}", self.port);
        let mut child = Command::new(&self.bin)
            .arg("--db")
            .arg(self.db())
            .args(["serve", "--listen", &listen, "--tls-dir"])
            .arg(self.tls_dir())
            .args(&self.serve_args)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::File::create(self.dir.path().join("serve.stderr")).expect("stderr file"),
            )
            .stdin(Stdio::null())
            .spawn()
            .expect("starting gateway-primary-sim");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on https://") {
                    let _ = tx.send(addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()));
                }
            }
        });
        self.child = Some(child);
        match rx.recv_timeout(START_DEADLINE) {
            Ok(Some(port)) => self.port = port,
            other => panic!(
                "gateway-primary-sim did not start listening within {START_DEADLINE:?}: {other:?}"
            ),
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts again on the same port with the same database.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops and starts again on the same port and database with other `serve` arguments.
    pub fn restart_with(&mut self, extra: &[&str]) {
        self.serve_args = extra.iter().map(|s| s.to_string()).collect();
        self.restart();
    }

    pub fn cli(&self, args: &[&str]) -> Run {
        Command::new(&self.bin)
            .arg("--db")
            .arg(self.db())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running gateway-primary-sim")
            .into()
    }

    /// Runs a CLI command that must succeed; returns its trimmed standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert_eq!(
            out.code, 0,
            "gateway-primary-sim {args:?} failed: {}",
            out.stderr
        );
        out.stdout.trim().to_string()
    }

    pub fn servers(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["servers", "--json"])).expect("servers --json")
    }

    /// All servers of all accounts, flattened.
    pub fn all_servers(&self) -> Vec<serde_json::Value> {
        self.servers()["accounts"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|a| a["servers"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.stop();
    }
}
