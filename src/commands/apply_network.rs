//! `apply-network`: the network settings as systemd-networkd files (docs/network.md).
//! gateway-firstboot-network.service runs it before networkd starts; the installer, and a
//! person at the console, with `--reload` once the network is up.

use crate::cli::ApplyNetworkArgs;
use crate::exit;
use crate::network::{self, ETC_DIR, NetworkConfig, RUN_DIR};
use crate::root::Root;
use crate::settings::validate::validate_network;
use crate::state::DONE_MARKER;
use std::process::Command;

pub fn run(root: &Root, args: &ApplyNetworkArgs) -> anyhow::Result<u8> {
    let collected = super::load(root, &args.settings);
    let (config, problems) = validate_network(&collected);
    let mut err = std::io::stderr().lock();
    super::check::print_problems(&mut err, &problems)?;
    if problems.iter().any(|p| p.is_error()) {
        println!(
            "gateway-firstboot: network settings not applied (see above): this boot uses the image's network (DHCP)"
        );
        return Ok(exit::DATAERR);
    }
    // Before provisioning the files are made anew at every boot from the seed; after it they
    // are kept where the handoff put them.
    let dir = if root.path(DONE_MARKER).exists() {
        ETC_DIR
    } else {
        RUN_DIR
    };
    if dir == RUN_DIR {
        // Made even when empty: the installer may write there later, and its sandbox can
        // only write what exists.
        std::fs::create_dir_all(root.path(RUN_DIR))
            .map_err(|e| anyhow::anyhow!("making {RUN_DIR}: {e}"))?;
    }
    let changed = network::write(root, dir, config.as_ref())
        .map_err(|e| anyhow::anyhow!("writing the network settings in {dir}: {e}"))?;
    if config.as_ref().is_some_and(|c| c.interface.is_none()) {
        let ports = ethernet_ports(root);
        if ports.len() > 1 {
            println!(
                "gateway-firstboot: warning: this server has {} Ethernet ports ({}): the network settings go on every one; give interface (a name or MAC address) to choose one",
                ports.len(),
                ports.join(", ")
            );
        }
    }
    match &config {
        Some(c) => println!("gateway-firstboot: network: {}", c.describe()),
        None if changed => {
            println!("gateway-firstboot: network: no network settings: the image's network (DHCP)")
        }
        None => {}
    }
    if args.reload && changed && root.is_host() {
        reload()?;
    }
    Ok(exit::OK)
}

/// The physical Ethernet links (`/sys/class/net/*` of ARP type 1 with a device behind them),
/// by name.
fn ethernet_ports(root: &Root) -> Vec<String> {
    let Ok(links) = std::fs::read_dir(root.path("/sys/class/net")) else {
        return Vec::new();
    };
    let mut ports: Vec<String> = links
        .flatten()
        .filter(|l| {
            let dir = l.path();
            std::fs::read_to_string(dir.join("type")).is_ok_and(|t| t.trim() == "1")
                && dir.join("device").exists()
        })
        .map(|l| l.file_name().to_string_lossy().into_owned())
        .collect();
    ports.sort();
    ports
}

/// Makes `/run/systemd/network` say `config` and, when that changed it on the real system,
/// has networkd read it: for settings that arrive after the early unit ran (a stick plugged in
/// while the box waits, the installer's answers), so that the box provisions on the network
/// the handoff then keeps. `Ok(true)`: something changed.
pub(crate) fn apply_runtime(root: &Root, config: Option<&NetworkConfig>) -> anyhow::Result<bool> {
    let changed = network::write(root, RUN_DIR, config)
        .map_err(|e| anyhow::anyhow!("writing the network settings in {RUN_DIR}: {e}"))?;
    if changed && root.is_host() {
        reload()?;
    }
    Ok(changed)
}

/// Has networkd read its files again: `networkctl reload` (it reconfigures the links whose
/// files changed), or, should that fail (networkd not answering on the bus), a restart of
/// networkd through systemd.
pub(crate) fn reload() -> anyhow::Result<()> {
    let quiet = |cmd: &mut Command| {
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    if quiet(Command::new("networkctl").arg("reload")).is_ok_and(|s| s.success()) {
        return Ok(());
    }
    let status = quiet(Command::new("systemctl").args(["try-restart", "systemd-networkd.service"]))
        .map_err(|e| {
            anyhow::anyhow!("running systemctl try-restart systemd-networkd.service: {e}")
        })?;
    anyhow::ensure!(
        status.success(),
        "networkctl reload and systemctl try-restart systemd-networkd.service both failed ({status})"
    );
    Ok(())
}
