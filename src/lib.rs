//! gateway-firstboot: the first-boot provisioning agent of the print-management gateway
//! appliance. A library with a thin binary (`src/main.rs`); see docs/ for the design.

pub(crate) mod blockdev;
pub mod cli;
pub(crate) mod code;
pub(crate) mod commands;
pub mod disk;
pub(crate) mod dns;
pub mod exit;
pub mod failure;
pub(crate) mod fsutil;
pub(crate) mod handoff;
pub(crate) mod identity;
pub(crate) mod lock;
pub mod logging;
pub(crate) mod netwatch;
pub(crate) mod network;
pub(crate) mod primary;
pub(crate) mod problem;
pub(crate) mod progress;
pub(crate) mod proxy;
pub(crate) mod retry;
pub mod root;
pub(crate) mod seedwatch;
pub mod settings;
pub(crate) mod state;
pub(crate) mod tty;
pub(crate) mod validity;
pub(crate) mod wrap;

// The wire types and the secret string live in their own crate, shared with the simulator.
pub(crate) use gateway_protocol as protocol;
pub(crate) use gateway_protocol::secret;

/// For the integration tests, which compare DNS answers with what the agent takes for its own
/// addresses.
pub use dns::own_addresses;

use cli::{Cli, Command};

/// Runs a parsed command line; returns the exit code.
pub fn run(cli: &Cli) -> anyhow::Result<u8> {
    let root = root::Root::new(&cli.root);
    match &cli.command {
        Command::ShowConfig(args) => commands::show_config::run(&root, args),
        Command::Check(args) => runtime()?.block_on(commands::check::run(&root, args)),
        Command::Provision(args) => runtime()?.block_on(commands::provision::run(&root, args)),
        Command::AwaitTrust(args) => runtime()?.block_on(commands::await_trust::run(&root, args)),
        Command::Renew(args) => runtime()?.block_on(commands::renew::run(&root, args)),
        Command::Status(args) => runtime()?.block_on(commands::status::run(&root, args)),
        Command::Seed(args) => commands::seed::run(args),
        Command::Install(args) => runtime()?.block_on(commands::install::run(&root, args)),
        Command::ApplyNetwork(args) => commands::apply_network::run(&root, args),
        Command::Reset(args) => runtime()?.block_on(commands::reset::run(&root, args)),
        Command::CheckIdentity => commands::check_identity::run(&root),
    }
}

/// One thread is plenty: the agent waits on the network, it does not compute.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}
