use clap::Parser;
use clap::error::ErrorKind;
use gateway_firstboot::{cli::Cli, exit};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => exit::OK,
                _ => exit::USAGE,
            });
        }
    };
    gateway_firstboot::logging::init(cli.verbose);
    match gateway_firstboot::run(&cli) {
        Ok(code) => ExitCode::from(code),
        // A reader that went away (`show-config | head`) is not an error of ours.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::from(exit::OK)
        }
        // Under systemd, stderr is the journal; no need to log the same line twice.
        Err(e) => {
            eprintln!("gateway-firstboot: error: {e:#}");
            ExitCode::from(exit::SOFTWARE)
        }
    }
}
