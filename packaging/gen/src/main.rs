//! `gateway-firstboot-gen OUTDIR`: writes man pages (OUTDIR/man/*.1) and shell completions
//! (OUTDIR/completions/) for the Debian package, from the agent's own clap definitions.

use clap::CommandFactory;
use clap_complete::Shell;
use gateway_firstboot::cli::Cli;
use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "packaging/out".into()),
    );
    let man = out.join("man");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = Cli::command();
    // One page for the tool and one per subcommand (gateway-firstboot-provision.1, ...).
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "gateway-firstboot", &completions)?;
    }
    println!("wrote {} and {}", man.display(), completions.display());
    Ok(())
}
