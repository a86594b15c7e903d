//! gateway-firstboot: the first-boot provisioning agent of the print-management gateway
//! appliance. A library with a thin binary (`src/main.rs`); see docs/ for the design.

pub mod blockdev;
pub mod cli;
pub(crate) mod code;
pub mod commands;
pub mod disk;
pub mod dns;
pub mod exit;
pub mod failure;
pub mod fsutil;
pub mod handoff;
pub mod identity;
pub mod lock;
pub mod logging;
pub mod primary;
pub mod problem;
pub mod progress;
pub mod retry;
pub mod root;
pub mod seedwatch;
pub mod settings;
pub mod state;
pub mod tty;
pub(crate) mod wrap;

// The wire types and the secret string live in their own crate, shared with the simulator.
pub(crate) use gateway_protocol as protocol;
pub(crate) use gateway_protocol::secret;

use cli::{Cli, Command};

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: &Cli) -> anyhow::Result<u8> {
    let root = root::Root::new(&cli.root);
    match &cli.command {
        Command::ShowConfig(args) => commands::show_config::run(&root, args),
        Command::Check(args) => runtime()?.block_on(commands::check::run(&root, args)),
        Command::Provision(args) => runtime()?.block_on(commands::provision::run(&root, args)),
        Command::AwaitTrust(args) => runtime()?.block_on(commands::await_trust::run(&root, args)),
        Command::Status(args) => runtime()?.block_on(commands::status::run(&root, args)),
        Command::Seed(args) => commands::seed::run(args),
        Command::Install(args) => runtime()?.block_on(commands::install::run(&root, args)),
    }
}

/// One thread is plenty: the agent waits on the network, it does not compute.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
