//! A fixture tree for running the real binary with `--root`.

use crate::fat::Fat;
use crate::{Run, agent_bin};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

pub const CREDENTIALS_DIR: &str = "/run/credentials/gateway-firstboot.service";

pub struct Tree {
    pub dir: tempfile::TempDir,
    credentials: bool,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Tree {
    pub fn new() -> Self {
        Tree {
            dir: tempfile::tempdir().unwrap(),
            credentials: false,
        }
    }

    pub fn path(&self, appliance_path: &str) -> PathBuf {
        self.dir.path().join(appliance_path.trim_start_matches('/'))
    }

    /// Writes a file (mode 0600, as a careful installer would).
    pub fn file(&mut self, appliance_path: &str, content: impl AsRef<[u8]>) -> &mut Self {
        self.file_mode(appliance_path, content, 0o600)
    }

    pub fn file_mode(
        &mut self,
        appliance_path: &str,
        content: impl AsRef<[u8]>,
        mode: u32,
    ) -> &mut Self {
        let path = self.path(appliance_path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        self
    }

    pub fn cmdline(&mut self, cmdline: &str) -> &mut Self {
        self.file_mode("/proc/cmdline", format!("{cmdline}\n"), 0o444)
    }

    pub fn credential(&mut self, name: &str, content: &str) -> &mut Self {
        self.credentials = true;
        self.file(&format!("{CREDENTIALS_DIR}/{name}"), content)
    }

    /// A FAT partition labelled GWSEED at /dev/vdb1 holding `files`, linked as udev would.
    pub fn gwseed(&mut self, files: &[(&str, &[u8])]) -> &mut Self {
        let device = self.path("/dev/vdb1");
        std::fs::create_dir_all(device.parent().unwrap()).unwrap();
        Fat::gwseed(files).write_file(&device, 1024 * 1024);
        let link = self.path("/dev/disk/by-label/GWSEED");
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink("../../vdb1", &link).unwrap();
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(agent_bin());
        cmd.arg("--root").arg(self.dir.path()).args(args);
        cmd.env_remove("CREDENTIALS_DIRECTORY")
            .env_remove("GATEWAY_FIRSTBOOT_LOG");
        // The proxy settings the agent reads from its environment: none unless a test sets them.
        for name in ["https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"] {
            cmd.env_remove(name);
        }
        if self.credentials {
            cmd.env("CREDENTIALS_DIRECTORY", CREDENTIALS_DIR);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Starts the agent with `args` in the background, its standard output piped (for a test
    /// that changes the world while it waits, then reads what it said).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the agent")
    }

    /// Runs the agent with `args`, stopped at the failpoint `point` (GATEWAY_FIRSTBOOT_FAILPOINT,
    /// the `failpoints` feature): it must die there by a signal, as at a power cut.
    pub fn kill_at(&self, args: &[&str], point: &str) {
        let out = self
            .command(args)
            .env("GATEWAY_FIRSTBOOT_FAILPOINT", point)
            .output()
            .expect("running the agent");
        assert_eq!(
            out.status.code(),
            None,
            "{args:?} at {point}: the process must die by a signal\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.command(args).output().unwrap().into()
    }

    /// `show-config --json`: (value, origin) of one setting.
    pub fn effective(
        &self,
        setting: &str,
        extra: &[&str],
    ) -> (serde_json::Value, serde_json::Value) {
        let mut args = vec!["show-config", "--json"];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        assert_eq!(run.code, 0, "{}", run.all());
        let json = run.json();
        (
            json[setting]["value"].clone(),
            json[setting]["origin"].clone(),
        )
    }
}

/// An appliance tree for runs against a primary: a machine ID, the image's default key
/// (`default_key`) in the vendor defaults, and the primary's CA at /etc/gateway/primary-ca.pem.
pub fn appliance_tree(default_key: &str, ca_pem: &str) -> Tree {
    let mut tree = Tree::new();
    tree.file("/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
        .file_mode(
            "/usr/lib/gateway-firstboot/defaults.toml",
            format!("api-key = \"{default_key}\"\n"),
            0o644,
        )
        .file_mode("/etc/gateway/primary-ca.pem", ca_pem, 0o644);
    tree
}
