//! One file per subcommand.

pub mod apply_network;
pub mod await_trust;
pub mod check;
pub mod check_identity;
pub mod install;
pub mod provision;
pub mod renew;
pub mod reset;
pub mod seed;
pub mod show_config;
pub mod status;

use crate::cli::SettingsArgs;
use crate::root::Root;
use crate::settings::{self, Collected, collect::Inputs};
use std::path::PathBuf;

/// Where systemd puts the unit's credentials.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// The system's own credentials (SMBIOS type 11, fw_cfg, `systemd.set_credential=`): where a
/// command run by hand (`check`, `install`) finds what the unit gets through
/// `ImportCredential=gateway.*`.
pub const SYSTEM_CREDENTIALS: &str = "/run/credentials/@system";

/// The credentials directory: the unit's, or else the system's when it can be read.
pub fn credentials_dir(root: &Root) -> Option<PathBuf> {
    std::env::var_os(CREDENTIALS_ENV)
        .filter(|d| !d.is_empty())
        .map(Into::into)
        .or_else(|| {
            std::fs::read_dir(root.path(SYSTEM_CREDENTIALS))
                .is_ok()
                .then(|| PathBuf::from(SYSTEM_CREDENTIALS))
        })
}

/// The proxy settings from the agent's environment (`https_proxy`, `no_proxy`), as a layer.
pub fn environment() -> Option<settings::Layer> {
    Some(settings::env::layer(|name| std::env::var(name).ok()))
}

/// Collects the settings from every source, with the flags on top.
pub fn load(root: &Root, args: &SettingsArgs) -> Collected {
    let (flags, flag_problems) = args.to_layer();
    let inputs = Inputs {
        flags: Some(flags),
        flag_problems,
        credentials_dir: credentials_dir(root),
        env: environment(),
    };
    settings::collect(root, inputs)
}
