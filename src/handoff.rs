//! Handing off to the gateway: its configuration, the API key removed from every writable
//! seed it was in, the done-marker `gateway.service` is conditioned on. See
//! docs/gateway-contract.md for what the gateway may rely on.

use crate::failure::{Failure, io};
use crate::fsutil;
use crate::identity::{ACCOUNT_CA_FILE, CERT_FILE, KEY_FILE, PRIMARY_CA_FILE};
use crate::root::Root;
use crate::settings::{BOOT_SEED, ETC_SEED, GWSEED_DEVICE, GWSEED_FILE, gwseed, seed};
use crate::state::{DONE_MARKER, State};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use toml::de::DeTable;

pub const GATEWAY_CONFIG: &str = "/etc/gateway/gateway.toml";

/// Writes /etc/gateway/gateway.toml (and the primary's CA, if the seed gave one).
pub fn write_gateway_config(root: &Root, state: &State) -> Result<(), Failure> {
    let primary = state.primary.clone().unwrap_or_default();
    if let Some(pem) = &primary.ca_pem {
        fsutil::write_atomic(&root.path(PRIMARY_CA_FILE), pem.as_bytes(), 0o644)
            .map_err(|e| io(format!("writing {PRIMARY_CA_FILE}"), e))?;
    }
    let mut t = toml::Table::new();
    let mut put = |k: &str, v: toml::Value| {
        t.insert(k.to_string(), v);
    };
    put("primary", primary.url.clone().into());
    put("account", state.account.clone().unwrap_or_default().into());
    put(
        "server-id",
        state.server_id.clone().unwrap_or_default().into(),
    );
    put("key", KEY_FILE.into());
    put("certificate", CERT_FILE.into());
    put("account-ca", ACCOUNT_CA_FILE.into());
    if primary.ca_pem.is_some() {
        put("primary-ca", PRIMARY_CA_FILE.into());
    }
    if let Some(pin) = &primary.pin {
        put("primary-ca-sha256", pin.clone().into());
    }
    let text = format!(
        "# Written by gateway-firstboot when it handed off to the gateway; see docs/gateway-contract.md.\n\
         # certificate and account-ca exist once an administrator has authorized this server.\n{}",
        toml::to_string(&t).map_err(|e| Failure::permanent(
            "internal",
            e.to_string(),
            "report a bug"
        ))?
    );
    fsutil::write_atomic(
        &root.path(crate::handoff::GATEWAY_CONFIG),
        text.as_bytes(),
        0o644,
    )
    .map_err(|e| io(format!("writing {GATEWAY_CONFIG}"), e))
}

/// The seed text without its `api-key` entry (the rest byte for byte), or `None` if it has no
/// non-blank key.
pub fn without_api_key(text: &str) -> Option<String> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return None;
    }
    let (_, value) = table
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref() == "api-key")?;
    if let toml::de::DeValue::String(s) = value.get_ref()
        && s.trim().is_empty()
    {
        return None;
    }
    seed::without_keys(text, &["api-key"])
}

/// Removes the API key from every writable seed that holds one. Returns what it could not do
/// (as warnings: the server is registered; a leftover key is worth fixing, not failing for).
pub fn scrub_api_key(root: &Root) -> Vec<String> {
    let mut warnings = Vec::new();
    for path in [ETC_SEED, BOOT_SEED] {
        let real = root.path(path);
        let Ok(text) = std::fs::read_to_string(&real) else {
            continue;
        };
        let Some(scrubbed) = without_api_key(&text) else {
            continue;
        };
        let mode = std::fs::metadata(&real)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o600);
        match fsutil::write_atomic(&real, scrubbed.as_bytes(), mode) {
            Ok(()) => log::info!("removed the API key from {path}"),
            Err(e) => warnings.push(format!(
                "could not remove the API key from {path} ({e}); remove the api-key line by hand"
            )),
        }
    }
    if let Ok(device) = root.resolve_links(Path::new(GWSEED_DEVICE))
        && let Ok(Some(bytes)) = gwseed::read_file(&device, GWSEED_FILE, seed::MAX_SEED_BYTES)
        && let Some(scrubbed) = without_api_key(&String::from_utf8_lossy(&bytes))
    {
        match gwseed::replace_file(&device, GWSEED_FILE, scrubbed.as_bytes()) {
            Ok(()) => log::info!("removed the API key from {GWSEED_DEVICE}:{GWSEED_FILE}"),
            Err(e) => warnings.push(format!(
                "could not remove the API key from the GWSEED seed ({e}); remove the api-key line by hand"
            )),
        }
    }
    warnings
}

/// Marks provisioning done (the unit's and the gateway's condition).
pub fn mark_done(root: &Root, server_id: &str) -> Result<(), Failure> {
    fsutil::write_atomic(
        &root.path(DONE_MARKER),
        format!("{server_id}\n").as_bytes(),
        0o644,
    )
    .map_err(|e| io(format!("writing {DONE_MARKER}"), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_key_goes() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "# seed\nprimary = \"p.example\"\napi-key = \"gwk_secret\" # from the portal\naccount = \"a.example\"\n",
                Some("# seed\nprimary = \"p.example\"\naccount = \"a.example\"\n"),
            ),
            ("api-key = 'gwk_secret'", Some("")),
            ("primary = \"p\"\napi-key = \"\"\n", None),
            ("primary = \"p\"\n", None),
            ("api-key = \"broken\n", None),
            (
                "api-key = \"\"\"\ngwk_multi\n\"\"\"\nprimary = \"p\"\n",
                Some("primary = \"p\"\n"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(without_api_key(input).as_deref(), *want, "{input:?}");
        }
    }
}
