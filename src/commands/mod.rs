//! One file per subcommand.

pub mod await_trust;
pub mod check;
pub mod install;
pub mod provision;
pub mod seed;
pub mod show_config;
pub mod status;

use crate::cli::SettingsArgs;
use crate::root::Root;
use crate::settings::{self, Collected, collect::Inputs};

/// Where systemd puts the unit's credentials.
pub const CREDENTIALS_ENV: &str = "CREDENTIALS_DIRECTORY";

/// Collects the settings from every source, with the flags on top.
pub fn load(root: &Root, args: &SettingsArgs) -> Collected {
    let (flags, flag_problems) = args.to_layer();
    let inputs = Inputs {
        flags: Some(flags),
        flag_problems,
        credentials_dir: std::env::var_os(CREDENTIALS_ENV)
            .filter(|d| !d.is_empty())
            .map(Into::into),
    };
    settings::collect(root, inputs)
}
