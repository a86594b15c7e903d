//! What the integration tests share (a dev-dependency of the agent and of the simulator):
//! a fixture tree for running the real binary with `--root` ([`tree`]), the simulator
//! ([`sim`]), an appliance provisioned against it ([`appliance`]), a real DNS server
//! ([`dnsmasq`]), a real HTTP proxy ([`tinyproxy`]), impostor servers ([`impostor`]) and FAT
//! images ([`fat`]).

pub mod appliance;
pub mod dnsmasq;
pub mod fat;
pub mod impostor;
pub mod sim;
pub mod tinyproxy;
pub mod tree;

pub use appliance::{Appliance, assert_code};
pub use tree::{Tree, appliance_tree};

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Output;

/// The result of a run of the agent or of the simulator, with stdout and stderr as text.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// The codes of a `check --json` report's problems, in its order.
pub fn problem_codes(report: &serde_json::Value) -> Vec<&str> {
    report["problems"]
        .as_array()
        .expect("a problems array")
        .iter()
        .map(|p| p["code"].as_str().expect("a code"))
        .collect()
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A workspace binary, beside the running test's own executable (cargo builds a package's
/// binaries before its integration tests, and every workspace binary with `--workspace`).
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join(name);
    assert!(
        bin.exists(),
        "{} is missing: build it first (cargo build -p {name}) or run the tests with --workspace",
        bin.display()
    );
    bin
}

/// The agent's binary.
pub fn agent_bin() -> PathBuf {
    target_bin("gateway-firstboot")
}

/// A file of the repository.
pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// The exit status of `child` once it exits within `within`; `None` (and killed) if not.
pub fn wait_exit(child: &mut std::process::Child, within: std::time::Duration) -> Option<i32> {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// SHA-256 of `der` in hex: a `primary-ca-sha256` pin.
pub fn sha256_hex(der: &[u8]) -> String {
    gateway_protocol::hex::encode(&Sha256::digest(der))
}

/// The pin of the (first) certificate of `pem`.
pub fn pin_of(pem: &str) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    sha256_hex(
        CertificateDer::from_pem_slice(pem.as_bytes())
            .expect("a PEM certificate")
            .as_ref(),
    )
}

/// Account acme.example on `sim`, and an appliance tree for it ([`appliance_tree`]: a machine
/// ID, the simulator's default key as the image's, its CA at /etc/gateway/primary-ca.pem).
pub fn acme_appliance(sim: &sim::Sim) -> Tree {
    sim.ok(&["account", "add", "acme.example"]);
    appliance_tree(&sim.default_key, &sim.ca_pem())
}
