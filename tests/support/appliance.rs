//! A simulator and an appliance tree provisioned against it over loopback: what the tests of
//! the agent's later life (`renew`, `reset`) and of its ways out (a proxy) start from.

use crate::sim::Sim;
use crate::{Run, Tree, acme_appliance};

/// Account acme.example on a simulator, and an appliance tree for it ([`acme_appliance`]).
pub struct Appliance {
    pub sim: Sim,
    pub tree: Tree,
}

impl Appliance {
    pub fn new(sim: Sim) -> Appliance {
        let tree = acme_appliance(&sim);
        Appliance { sim, tree }
    }

    /// Writes /etc/gateway/seed.toml (0600): the primary as `host:PORT` (a name or address in
    /// the simulator's certificate), account acme.example, the tree's CA, hostname
    /// gw01.acme.test, no DNS self-check, deadlines of seconds; then the lines of `extra`.
    pub fn seed(&mut self, host: &str, extra: &str) -> &mut Self {
        let text = format!(
            "primary = \"{host}:{}\"\naccount = \"acme.example\"\n\
             primary-ca = \"/etc/gateway/primary-ca.pem\"\nhostname = \"gw01.acme.test\"\n\
             dns-check = \"off\"\ndeadline = \"10s\"\nconnect-timeout = \"2s\"\n\
             request-timeout = \"3s\"\n{extra}",
            self.sim.port
        );
        self.tree.file("/etc/gateway/seed.toml", text);
        self
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.tree.run(args)
    }

    pub fn exists(&self, path: &str) -> bool {
        self.tree.path(path).exists()
    }

    /// The file's text; empty when it is missing.
    pub fn read(&self, path: &str) -> String {
        std::fs::read_to_string(self.tree.path(path)).unwrap_or_default()
    }

    /// Provisions (it must exit 0); the server id it recorded as done.
    pub fn provision(&self) -> String {
        assert_code(&self.run(&["provision"]), 0);
        let id = self
            .read("/var/lib/gateway-firstboot/done")
            .trim()
            .to_string();
        assert!(
            id.starts_with("srv_"),
            "the done file names no server: {id:?}"
        );
        id
    }

    /// Authorizes `id` on the primary, and `await-trust` proves the secure connection (it must
    /// exit 0 and leave the certificate).
    pub fn trust(&self, id: &str) {
        self.sim.ok(&["authorize", id]);
        let run = self.run(&["await-trust", "--poll-max", "1s", "--timeout", "30s"]);
        assert_code(&run, 0);
        assert!(
            self.exists("/var/lib/gateway/identity/cert.pem"),
            "trusted without a certificate"
        );
    }
}

/// The run exited with `code`; otherwise fails showing all it printed.
pub fn assert_code(run: &Run, code: i32) {
    assert_eq!(
        run.code, code,
        "exit status\n--- stdout\n{}\n--- stderr\n{}",
        run.stdout, run.stderr
    );
}

/// `struct NAME(Appliance)`, dereferencing to the [`Appliance`]: a test file's own appliance,
/// with the methods only that file needs (`impl NAME { ... }`).
#[macro_export]
macro_rules! appliance_env {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        struct $name($crate::Appliance);

        impl std::ops::Deref for $name {
            type Target = $crate::Appliance;
            fn deref(&self) -> &$crate::Appliance {
                &self.0
            }
        }

        impl std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut $crate::Appliance {
                &mut self.0
            }
        }
    };
}
