//! `check`: offline validation, every problem at once, each with its origin and fix.

use crate::cli::CheckArgs;
use crate::exit;
use crate::problem::{Problem, Severity};
use crate::root::Root;
use crate::settings::{self, Settings};
use std::io::Write;

pub fn run(root: &Root, args: &CheckArgs) -> anyhow::Result<u8> {
    let collected = super::load(root, &args.settings);
    let (settings, mut problems) = settings::validate(root, &collected);
    if !collected.has_seed() {
        // With nothing given at all, one message says it better than one per missing setting.
        problems.retain(|p| !p.code.ends_with("-missing"));
    }
    let code = match (&settings, collected.has_seed()) {
        (Some(_), _) => exit::OK,
        (None, false) => exit::NOINPUT,
        (None, true) => exit::DATAERR,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = serde_json::json!({
            "valid": settings.is_some(),
            "settings_found": collected.has_seed(),
            "errors": problems.iter().filter(|p| p.is_error()).count(),
            "warnings": problems.iter().filter(|p| !p.is_error()).count(),
            "problems": problems,
        });
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(code);
    }
    print_problems(&mut out, &problems)?;
    match &settings {
        Some(s) => writeln!(out, "{}", summary(s))?,
        None if code == exit::NOINPUT => writeln!(
            out,
            "no provisioning settings found: give gateway.primary= and gateway.account= on the kernel \
             command line, write /etc/gateway/seed.toml, put seed.toml on a FAT stick labelled GWSEED, \
             or pass gateway.* credentials"
        )?,
        None => {
            let errors = problems.iter().filter(|p| p.is_error()).count();
            writeln!(
                out,
                "{errors} error(s): the settings cannot be used until they are fixed"
            )?;
        }
    }
    Ok(code)
}

pub fn print_problems(out: &mut impl Write, problems: &[Problem]) -> std::io::Result<()> {
    for p in problems {
        let label = match p.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        writeln!(out, "{label}: {p}")?;
    }
    Ok(())
}

fn summary(s: &Settings) -> String {
    let key = if s.api_key_is_default {
        "the default restricted key"
    } else {
        "a key from the settings"
    };
    format!(
        "settings are valid: primary {}, account {}, API key: {key}, DNS check: {}",
        s.primary,
        s.account,
        serde_json::to_value(s.dns_check)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    )
}
