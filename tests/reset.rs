//! `reset`: the real binary with `--root`, against gateway-primary-sim over TLS on loopback.
//! Deregistration online and offline (`--force`), what is wiped and what is kept, provisioning
//! again (a new server, or the same with `--keep-registration`), a reset cut short at each
//! failpoint and run again, the confirmation, and no secret in any output.

use gateway_test_support::sim::Sim;
use gateway_test_support::{Appliance, Run, Tree, assert_code};
use std::time::Duration;

const TOKEN_FILE: &str = "/var/lib/gateway-firstboot/server-token";
const KEY_FILE: &str = "/var/lib/gateway/identity/key.pem";
const ETC_NET: &str = "/etc/systemd/network/10-gateway-firstboot.network";
/// A file of the image's own in the same directory: never ours to remove.
const IMAGE_NET: &str = "/etc/systemd/network/80-wired.network";

/// What provisioning makes and a reset wipes.
const WIPED: &[&str] = &[
    "/var/lib/gateway-firstboot/done",
    "/var/lib/gateway-firstboot/state.json",
    "/var/lib/gateway-firstboot/reset-pending",
    "/var/lib/gateway/identity",
    "/etc/gateway/gateway.toml",
    "/etc/issue.d/gateway-firstboot.issue",
    "/run/gateway-firstboot/status.json",
    ETC_NET,
];

gateway_test_support::appliance_env!(
    /// The appliance, with what these tests ask of it.
    Env
);

impl Env {
    /// A simulator with account acme.example; a tree with a seed (static network settings,
    /// which the handoff keeps under /etc/systemd/network) and one network file of the image.
    fn new() -> Env {
        let mut appliance = Appliance::new(Sim::start());
        appliance
            .seed(
                "127.0.0.1",
                "address = \"192.0.2.10/24\"\ngateway = \"192.0.2.1\"\n",
            )
            .tree
            .file_mode(
                IMAGE_NET,
                "[Match]\nType=ether\n[Network]\nDHCP=yes\n",
                0o644,
            );
        Env(appliance)
    }

    /// Provisions; returns the server id and the token.
    fn provision(&self) -> (String, String) {
        let id = self.0.provision();
        (id, self.read(TOKEN_FILE).trim().to_string())
    }

    /// Provisions, authorizes, and proves the secure connection: the whole identity on disk.
    fn provision_trusted(&self) -> (String, String) {
        let (id, token) = self.provision();
        self.trust(&id);
        (id, token)
    }

    fn server_ids(&self) -> Vec<String> {
        self.sim
            .all_servers()
            .iter()
            .map(|s| s["server_id"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// Everything provisioning made is gone; the seed, the image's network file and the
    /// machine's own files stay.
    fn assert_wiped(&self) {
        for path in WIPED {
            assert!(!self.exists(path), "{path} is left after the reset");
        }
        // The state directory stays (a unit's StateDirectory=, a mount point in the sandbox),
        // empty.
        let left: Vec<_> = std::fs::read_dir(self.tree.path("/var/lib/gateway-firstboot"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "left in the state directory: {left:?}");
        let seed = self.read("/etc/gateway/seed.toml");
        assert!(
            seed.contains("account = \"acme.example\""),
            "the seed stays: {seed}"
        );
        assert!(self.exists(IMAGE_NET), "the image's network file stays");
        assert!(self.exists("/etc/machine-id"));
    }

    /// The primary's answer to `GET /servers/{id}` with `token`.
    fn server_status(&self, id: &str, token: &str) -> u16 {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.sim.ca_pem().as_bytes()).unwrap()])
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let url = self.sim.url(&format!("/api/v1/servers/{id}"));
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async { client.get(url).bearer_auth(token).send().await })
            .unwrap()
            .status()
            .as_u16()
    }
}

fn assert_no_secret(run: &Run, token: &str) {
    assert!(!token.is_empty());
    assert!(
        !run.all().contains(token),
        "the server token in the output:\n{}",
        run.all()
    );
}

#[test]
fn online_reset_deregisters_and_wipes_and_the_next_provisioning_is_a_new_server() {
    let env = Env::new();
    let (id, token) = env.provision_trusted();
    assert!(env.exists(ETC_NET), "the handoff kept the network file");
    assert_eq!(env.server_status(&id, &token), 200);

    let run = env.run(&["reset", "--yes"]);
    assert_code(&run, 0);
    assert_no_secret(&run, &token);
    assert!(
        run.stdout.contains(&format!("removed server {id} from")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("gateway-firstboot.service provisions again")
            && run.stdout.contains("gateway-firstboot install"),
        "says what happens next: {}",
        run.stdout
    );
    assert!(
        env.server_ids().is_empty(),
        "the primary no longer lists it"
    );
    assert_eq!(env.server_status(&id, &token), 404, "the token is refused");
    env.assert_wiped();
    let (code, status) = {
        let run = env.run(&["status", "--json"]);
        (run.code, run.json())
    };
    assert_eq!((code, &status["phase"]), (4, &serde_json::json!("new")));

    // Provisioning again: a new server, the only one in the account.
    let (again, new_token) = env.provision();
    assert_ne!(again, id);
    assert_ne!(new_token, token);
    assert_eq!(env.server_ids(), [again]);
}

#[test]
fn keep_registration_keeps_the_record_and_the_same_server_comes_back() {
    let env = Env::new();
    let (id, token) = env.provision_trusted();
    let key = env.read(KEY_FILE);
    let run = env.run(&["reset", "--keep-registration", "--yes"]);
    assert_code(&run, 0);
    assert_no_secret(&run, &token);
    assert!(
        run.stdout
            .contains("kept: the key pair and the machine identity"),
        "{}",
        run.stdout
    );
    assert_eq!(
        env.server_ids(),
        std::slice::from_ref(&id),
        "the primary keeps the server"
    );
    assert_eq!(env.read(KEY_FILE), key, "the key pair stays");
    assert!(env.exists("/var/lib/gateway/identity/machine-id"));
    for gone in [
        "/var/lib/gateway-firstboot/done",
        "/var/lib/gateway-firstboot/state.json",
        "/var/lib/gateway-firstboot/server-token",
        "/var/lib/gateway/identity/cert.pem",
        "/etc/gateway/gateway.toml",
        ETC_NET,
    ] {
        assert!(!env.exists(gone), "{gone} is left");
    }

    let (again, _) = env.provision();
    assert_eq!(again, id, "the same server id");
    assert_eq!(env.server_ids(), [id]);
}

#[test]
fn offline_reset_stops_and_names_force_and_force_goes_on() {
    let mut env = Env::new();
    let (id, token) = env.provision();
    env.sim.stop();

    let run = env.run(&["reset", "--yes"]);
    assert_code(&run, 69);
    assert_no_secret(&run, &token);
    assert!(
        run.stderr.contains("nothing was wiped") && run.stderr.contains("--force"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("attempts"),
        "a bounded wait: {}",
        run.stderr
    );
    assert!(
        env.exists("/var/lib/gateway-firstboot/done"),
        "nothing wiped"
    );
    assert!(env.exists(KEY_FILE) && env.exists(TOKEN_FILE));

    let run = env.run(&["reset", "--yes", "--force"]);
    assert_code(&run, 0);
    assert_no_secret(&run, &token);
    assert!(
        run.stdout.contains(&format!("still lists server {id}"))
            && run.stdout.contains("Remove button"),
        "says the administrator must remove it: {}",
        run.stdout
    );
    env.assert_wiped();
    env.sim.restart();
    assert_eq!(env.server_ids(), [id], "the primary keeps the stale record");
}

#[test]
fn a_server_removed_on_the_primary_already_is_reset_without_force() {
    let env = Env::new();
    let (id, token) = env.provision();
    env.sim.ok(&["servers", "remove", &id]);
    let run = env.run(&["reset", "--yes"]);
    assert_code(&run, 0);
    assert_no_secret(&run, &token);
    assert!(run.stdout.contains("removed already"), "{}", run.stdout);
    env.assert_wiped();
}

#[test]
fn without_its_token_a_trusted_server_deregisters_over_mutual_tls() {
    let env = Env::new();
    let (id, _) = env.provision_trusted();
    std::fs::remove_file(env.tree.path(TOKEN_FILE)).unwrap();
    let run = env.run(&["reset", "--yes"]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains(&format!("removed server {id} from")),
        "{}",
        run.stdout
    );
    assert!(env.server_ids().is_empty());
    env.assert_wiped();
}

#[test]
fn without_a_terminal_and_without_yes_it_refuses_and_changes_nothing() {
    let env = Env::new();
    let (_, token) = env.provision();
    let run = env.run(&["reset"]);
    assert_code(&run, 64);
    assert_no_secret(&run, &token);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert!(env.exists("/var/lib/gateway-firstboot/done") && env.exists(KEY_FILE));
    assert_eq!(env.server_ids().len(), 1);
}

/// `reset` on a pseudo-terminal answering `answer` to its question: the transcript and the
/// exit status.
fn reset_on_a_terminal(env: &Env, answer: &str) -> (String, i32) {
    let mut cmd = env.tree.command(&["reset"]);
    cmd.stdin(std::process::Stdio::inherit())
        .env("TERM", "vt100")
        .env("COLUMNS", "1000");
    let mut pty = rexpect::session::spawn_command(cmd, Some(30_000)).expect("spawning on a pty");
    let asked = pty.exp_string("Type yes to go on: ").expect("the question");
    pty.send(&format!("{answer}\r")).unwrap();
    pty.flush().unwrap();
    let rest = pty.exp_eof().unwrap_or_default();
    let code = match pty.process().wait().expect("exit status") {
        nix::sys::wait::WaitStatus::Exited(_, code) => code,
        other => panic!("reset did not exit: {other:?}"),
    };
    (format!("{asked}{rest}"), code)
}

#[test]
fn on_a_terminal_it_asks_first() {
    let env = Env::new();
    let (id, token) = env.provision();
    let (said, code) = reset_on_a_terminal(&env, "no");
    assert_eq!(code, 130, "{said}");
    assert!(
        said.contains(&format!("This removes server {id} from"))
            && said.contains("reset cancelled"),
        "{said}"
    );
    assert!(!said.contains(&token));
    assert!(
        env.exists("/var/lib/gateway-firstboot/done"),
        "nothing changed"
    );
    assert_eq!(env.server_ids(), [id]);

    let (said, code) = reset_on_a_terminal(&env, "yes");
    assert_eq!(code, 0, "{said}");
    assert!(!said.contains(&token));
    assert!(env.server_ids().is_empty());
    env.assert_wiped();
}

#[test]
fn reset_on_a_box_never_provisioned_wipes_nothing_and_succeeds() {
    let env = Env::new();
    let run = env.run(&["reset", "--yes"]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains("nothing to deregister"),
        "{}",
        run.stdout
    );
    env.assert_wiped();
}

#[cfg(feature = "failpoints")]
#[test]
fn a_reset_cut_short_at_any_point_completes_when_run_again() {
    let points = [
        "reset-before-deregister",
        "reset-after-deregister",
        "reset-after-unmark",
        "reset-after-secrets",
        "reset-after-identity",
        "reset-after-config",
    ];
    for point in points {
        let env = Env::new();
        let (_, token) = env.provision_trusted();
        env.tree.kill_at(&["reset", "--yes"], point);
        // Never a box that looks provisioned without its identity.
        if env.exists("/var/lib/gateway-firstboot/done") {
            assert!(env.exists(KEY_FILE), "{point}: done-marker without the key");
        }
        let run = env.run(&["reset", "--yes"]);
        assert_code(&run, 0);
        assert_no_secret(&run, &token);
        env.assert_wiped();
        assert!(
            env.server_ids().is_empty(),
            "{point}: the server is removed"
        );
    }
}

#[cfg(feature = "failpoints")]
#[test]
fn the_next_provisioning_finishes_a_reset_cut_short() {
    let env = Env::new();
    let (id, _) = env.provision_trusted();
    let old_key = env.read(KEY_FILE);
    env.tree.kill_at(&["reset", "--yes"], "reset-after-unmark");
    assert!(
        !env.exists("/var/lib/gateway-firstboot/done"),
        "not provisioned any more"
    );
    // The next boot: provisioning finishes the reset (the old key goes), then provisions.
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    assert!(
        run.stdout.contains("finished a reset that was interrupted"),
        "{}",
        run.stdout
    );
    assert!(!env.exists("/var/lib/gateway-firstboot/reset-pending"));
    assert_ne!(env.read(KEY_FILE), old_key, "a new key pair");
    let ids = env.server_ids();
    assert_eq!(ids.len(), 1, "one server in the account: {ids:?}");
    assert_ne!(ids[0], id);
}

#[test]
fn reset_help_says_what_each_flag_does_within_80_columns() {
    let run = Tree::new().run(&["reset", "--help"]);
    assert_code(&run, 0);
    for flag in ["--keep-registration", "--force", "--yes"] {
        assert!(run.stdout.contains(flag), "{flag}: {}", run.stdout);
    }
    for line in run.stdout.lines() {
        assert!(line.chars().count() <= 80, "too wide: {line:?}");
    }
}

// --- A copy of a provisioned box (`check-identity`, at every boot) ---

const HARDWARE_FILE: &str = "/var/lib/gateway/identity/hardware.json";
const MACHINE_ID_FILE: &str = "/var/lib/gateway/identity/machine-id";
const PRODUCT_UUID: &str = "/sys/class/dmi/id/product_uuid";
const BOARD: &str = "4c4c4544-0042-3910-8057-b4c04f4e4d32";

impl Env {
    /// The box's SMBIOS product UUID, as the firmware shows it (upper case, as many do).
    fn product_uuid(&mut self, uuid: &str) -> &mut Self {
        self.tree
            .file_mode(PRODUCT_UUID, format!("{}\n", uuid.to_uppercase()), 0o400);
        self
    }

    /// /etc/machine-id committed (no transient mount over it) or not (a first boot).
    fn machine_id_committed(&mut self, committed: bool) -> &mut Self {
        let target = self.tree.path("/etc/machine-id");
        let mut mounts = String::from("25 1 253:1 / / rw,relatime - ext4 /dev/vda1 rw\n");
        if !committed {
            mounts += &format!(
                "31 25 0:27 /machine-id {} ro,relatime - tmpfs tmpfs rw\n",
                target.display()
            );
        }
        self.tree.file_mode("/proc/self/mountinfo", mounts, 0o444);
        self
    }
}

/// The server the primary lists as `id`.
fn server(env: &Env, id: &str) -> serde_json::Value {
    env.sim
        .all_servers()
        .into_iter()
        .find(|s| s["server_id"] == id)
        .unwrap_or_else(|| panic!("no server {id} on the primary"))
}

#[test]
fn the_same_box_keeps_its_identity_at_every_boot() {
    let mut env = Env::new();
    env.product_uuid(BOARD).machine_id_committed(true);
    let (id, _) = env.provision_trusted();
    let recorded: serde_json::Value = serde_json::from_str(&env.read(HARDWARE_FILE)).unwrap();
    assert_eq!(recorded["product_uuid"], BOARD, "{recorded}");
    let key = env.read(KEY_FILE);
    for _ in 0..2 {
        let run = env.run(&["check-identity"]);
        assert_code(&run, 0);
        assert!(!run.stdout.contains("copy"), "{}", run.stdout);
    }
    assert_eq!(env.read(KEY_FILE), key);
    assert_eq!(env.read("/var/lib/gateway-firstboot/done").trim(), id);
}

#[test]
fn a_copy_booted_with_another_product_uuid_does_not_connect_as_the_original() {
    let mut env = Env::new();
    env.product_uuid(BOARD);
    let (id, token) = env.provision_trusted();
    let known_as = env.read(MACHINE_ID_FILE);
    // The disk copied, booted as another VM.
    let other = "11111111-2222-4333-8444-555555555555";
    env.product_uuid(other);
    let run = env.run(&["check-identity"]);
    assert_code(&run, 0);
    assert_no_secret(&run, &token);
    let out = run.stdout.replace('\n', " ");
    assert!(
        out.contains("this box is a copy") && out.contains(&id) && out.contains(other),
        "{}",
        run.stdout
    );
    // Nothing of the original's identity is left to connect with.
    for path in [
        KEY_FILE,
        TOKEN_FILE,
        "/var/lib/gateway/identity/cert.pem",
        "/var/lib/gateway-firstboot/done",
        "/etc/gateway/gateway.toml",
    ] {
        assert!(!env.exists(path), "{path} is left on the copy");
    }
    let own = env.read(MACHINE_ID_FILE);
    assert_eq!(own.trim().len(), 32, "{own:?}");
    assert_ne!(own, known_as, "the copy has a machine identity of its own");
    // The original's record is the original's: still there, still trusted.
    assert_eq!(env.server_status(&id, &token), 200);
    assert_eq!(server(&env, &id)["state"], "trusted");
    // The next step of the boot: provisioning, as a new server.
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    let ids = env.server_ids();
    assert_eq!(ids.len(), 2, "the original and the copy: {ids:?}");
    let new = env
        .read("/var/lib/gateway-firstboot/done")
        .trim()
        .to_string();
    assert_ne!(new, id);
    assert_eq!(server(&env, &id)["state"], "trusted");
    assert_eq!(server(&env, &new)["state"], "untrusted");
    // From now on the copy is a box of its own.
    let run = env.run(&["check-identity"]);
    assert_code(&run, 0);
    assert!(!run.stdout.contains("copy"), "{}", run.stdout);
    assert!(env.exists(KEY_FILE));
}

#[test]
fn a_new_machine_id_is_a_copy_only_once_the_recorded_one_was_committed() {
    // A first boot: the machine ID is not committed when the key is made; a power cut then
    // gives the next boot another one. Not a copy.
    let mut env = Env::new();
    env.product_uuid(BOARD).machine_id_committed(false);
    let (id, _) = env.provision();
    env.tree
        .file("/etc/machine-id", "fedcba9876543210fedcba9876543210\n");
    env.machine_id_committed(true);
    let run = env.run(&["check-identity"]);
    assert_code(&run, 0);
    assert!(!run.stdout.contains("copy"), "{}", run.stdout);
    assert!(env.exists(KEY_FILE));
    let recorded: serde_json::Value = serde_json::from_str(&env.read(HARDWARE_FILE)).unwrap();
    assert_eq!(
        recorded["machine_id_committed"], true,
        "adopted: {recorded}"
    );
    // Now committed: a machine ID made anew (virt-sysprep on a copy that keeps the UUID) is.
    env.tree
        .file("/etc/machine-id", "00112233445566778899aabbccddeeff\n");
    let run = env.run(&["check-identity"]);
    assert_code(&run, 0);
    assert!(run.stdout.contains("this box is a copy"), "{}", run.stdout);
    assert!(run.stdout.contains("machine-id"), "{}", run.stdout);
    assert!(!env.exists(KEY_FILE));
    assert_eq!(env.server_ids(), vec![id], "the original's record stays");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_copy_wiped_only_halfway_still_gets_a_machine_identity_of_its_own() {
    for point in ["reset-after-unmark", "reset-after-secrets"] {
        let mut env = Env::new();
        env.product_uuid(BOARD);
        let (id, _) = env.provision_trusted();
        let known_as = env.read(MACHINE_ID_FILE);
        env.product_uuid("11111111-2222-4333-8444-555555555555");
        env.tree.kill_at(&["check-identity"], point);
        // The next step of that boot (or the next boot's): provisioning finishes the wipe.
        let run = env.run(&["provision"]);
        assert_code(&run, 0);
        assert_ne!(env.read(MACHINE_ID_FILE), known_as, "{point}");
        let ids = env.server_ids();
        assert_eq!(
            ids.len(),
            2,
            "{point}: a new server beside the original: {ids:?}"
        );
        assert_eq!(server(&env, &id)["state"], "trusted", "{point}");
    }
}

#[test]
fn a_reset_removes_the_hardware_record_and_keep_registration_keeps_it() {
    let mut env = Env::new();
    env.product_uuid(BOARD);
    env.provision();
    assert_code(&env.run(&["reset", "--yes", "--keep-registration"]), 0);
    assert!(env.exists(HARDWARE_FILE), "kept with the key pair");
    env.provision();
    assert_code(&env.run(&["reset", "--yes"]), 0);
    assert!(!env.exists(HARDWARE_FILE));
}

#[test]
fn a_re_imaged_box_registers_as_the_replacement_of_its_old_server() {
    let mut env = Env::new();
    env.product_uuid(BOARD);
    let (old, _) = env.provision_trusted();
    // The disk swapped for a fresh image on the same board: nothing of the old state, a new
    // machine ID.
    for dir in [
        "/var/lib/gateway-firstboot",
        "/var/lib/gateway",
        "/etc/gateway/gateway.toml",
    ] {
        let path = env.tree.path(dir);
        let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
    }
    env.tree
        .file("/etc/machine-id", "fedcba9876543210fedcba9876543210\n");
    let run = env.run(&["provision"]);
    assert_code(&run, 0);
    let new = env
        .read("/var/lib/gateway-firstboot/done")
        .trim()
        .to_string();
    assert_ne!(new, old);
    assert!(
        run.stdout.contains(&format!(
            "it replaces {old} (the same hardware, re-imaged): Authorize retires {old}"
        )),
        "{}",
        run.stdout
    );
    assert_eq!(server(&env, &new)["replaces"], old.as_str());
    assert_eq!(
        server(&env, &old)["state"],
        "trusted",
        "kept until Authorize"
    );
    env.sim.ok(&["authorize", &new]);
    assert_eq!(env.server_ids(), [new], "the old record retired");
}
