//! `check-identity`: at every boot of a provisioned box, before the gateway, the trust step and
//! provisioning, whether this is the box its identity was made on. A VM copied after it was
//! provisioned carries the original's key pair, certificate and server token: two boxes, one
//! server on the primary, both connecting as it. The copy is told apart by the hardware record
//! kept with the identity ([`Hardware`]): another SMBIOS product UUID, or another (committed)
//! /etc/machine-id.
//!
//! On a copy the copied identity is not used: it is wiped here (the private key overwritten
//! first), without deregistering (the server on the primary is the original's), and this box
//! gets a machine identity of its own. gateway-firstboot.service, ordered after this check,
//! then finds the box unprovisioned: it provisions as a new server when a seed is there, or
//! waits for a person (the setup questions on the console).

use crate::exit;
use crate::failure::Failure;
use crate::identity::{Hardware, KEY_FILE};
use crate::progress;
use crate::root::Root;
use crate::state::State;

pub fn run(root: &Root) -> anyhow::Result<u8> {
    match check(root) {
        Ok(()) => Ok(exit::OK),
        Err(f) => {
            eprintln!("gateway-firstboot: error: {f}");
            Ok(f.exit_code())
        }
    }
}

fn check(root: &Root) -> Result<(), Failure> {
    let now = Hardware::current(root);
    let Some(recorded) = Hardware::recorded(root)? else {
        if root.path(KEY_FILE).exists() {
            // An identity made before the hardware was recorded: this box is taken as its own.
            log::info!("no hardware record beside the identity: recording this box's");
            now.record(root)?;
        }
        return Ok(());
    };
    let differences = recorded.differs(&now);
    if differences.is_empty() {
        // The machine ID of a first boot is committed to disk only as that boot completes:
        // the first committed one seen on this hardware is the one to compare from now on.
        if !recorded.machine_id_committed
            && now.machine_id_committed
            && recorded.product_uuid == now.product_uuid
        {
            now.record(root)?;
        }
        log::debug!("the identity was made on this box");
        return Ok(());
    }
    let state = State::load(root).unwrap_or_default();
    let server = state
        .server_id
        .as_deref()
        .map(|id| format!("server {id}"))
        .unwrap_or_else(|| "a server".to_string());
    let key = state
        .key_fingerprint
        .as_deref()
        .map(|k| format!(", key {}", crate::protocol::short_fingerprint(k)))
        .unwrap_or_default();
    let text = format!(
        "this box is a copy: its identity ({server}{key}) was made on another box ({}). \
         The copy does not connect as {server}: its identity is wiped here, the original's \
         registration on the primary is left alone",
        differences.join("; ")
    );
    log::warn!(
        MESSAGE_ID = progress::MSG_COPY_DETECTED,
        SERVER_ID = state.server_id.as_deref().unwrap_or("");
        "{text}"
    );
    say(&text);
    crate::commands::reset::wipe_copy(root, &new_machine_identity())?;
    let next = "gateway-firstboot.service provisions this box as a new server now if a seed is \
                here (the seed file, the kernel command line, credentials, a GWSEED stick), or \
                else waits for its settings (the setup questions on the console, \
                `gateway-firstboot install`)";
    say(next);
    Ok(())
}

/// A machine identity of this box's own for the primary: the copy's /etc/machine-id is the
/// original's, and the primary knows a machine by the ID derived from it; registering with
/// that would be answered as the original. Random, a version-4 UUID as 32 hex digits.
fn new_machine_identity() -> String {
    let mut id: [u8; 16] = rand::random();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    crate::protocol::hex::encode(&id)
}

fn say(text: &str) {
    crate::wrap::say(&format!("gateway-firstboot: {text}"));
}
