//! gateway-firstboot: the first-boot provisioning agent of the print-management gateway
//! appliance. A library with a thin binary (`src/main.rs`); see docs/ for the design.

pub mod cli;
pub mod commands;
pub mod dns;
pub mod exit;
pub mod failure;
pub mod fsutil;
pub mod identity;
pub mod logging;
pub mod problem;
pub mod progress;
pub mod protocol;
pub mod root;
pub mod secret;
pub mod settings;
pub mod state;

use cli::{Cli, Command};

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: &Cli) -> anyhow::Result<u8> {
    let root = root::Root::new(&cli.root);
    match &cli.command {
        Command::ShowConfig(args) => commands::show_config::run(&root, args),
        Command::Check(args) => commands::check::run(&root, args),
    }
}
