//! `check`: offline validation, every problem at once, each with its origin and fix.

use crate::cli::CheckArgs;
use crate::exit;
use crate::failure::Failure;
use crate::primary::{Endpoint, Validated, connect_and_validate};
use crate::problem::{Problem, Severity};
use crate::root::Root;
use crate::settings::{self, Settings};
use std::io::Write;

pub async fn run(root: &Root, args: &CheckArgs) -> anyhow::Result<u8> {
    let collected = super::load(root, &args.settings);
    let (settings, mut problems) = settings::validate(root, &collected);
    if !collected.has_seed() {
        // With nothing given at all, one message says it better than one per missing setting.
        problems.retain(|p| !p.code.is_missing());
    }
    let mut code = match (&settings, collected.has_seed()) {
        (Some(_), _) => exit::OK,
        (None, false) => exit::NOINPUT,
        (None, true) => exit::DATAERR,
    };
    let online = match (&settings, args.online) {
        (Some(s), true) => Some(online(root, s).await),
        _ => None,
    };
    if let Some(Err(f)) = &online {
        code = f.exit_code();
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let report = serde_json::json!({
            "valid": settings.is_some(),
            "settings_found": collected.has_seed(),
            "errors": problems.iter().filter(|p| p.is_error()).count(),
            "warnings": problems.iter().filter(|p| !p.is_error()).count(),
            "problems": problems,
            "online": online.as_ref().map(|r| match r {
                Ok(text) => serde_json::json!({ "ok": true, "message": text }),
                Err(f) => serde_json::json!({ "ok": false, "code": f.code, "message": f.message, "fix": f.fix }),
            }),
        });
        serde_json::to_writer_pretty(&mut out, &report)?;
        writeln!(out)?;
        return Ok(code);
    }
    print_problems(&mut out, &problems)?;
    match &settings {
        Some(s) => {
            writeln!(out, "{}", summary(s))?;
            match &online {
                Some(Ok(text)) => writeln!(out, "{text}")?,
                Some(Err(f)) => writeln!(out, "error: {f}")?,
                None => {}
            }
        }
        // The same words as `provision`'s no-settings failure, the installer included.
        None if code == exit::NOINPUT => writeln!(
            out,
            "no provisioning settings found: {}",
            crate::failure::Code::NoSettings.fix().unwrap_or_default()
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

/// `--online`: reach the primary (DNS, TCP, TLS, clock) and validate the account domain and
/// the key, once, without registering.
async fn online(root: &Root, s: &Settings) -> Result<String, Failure> {
    let endpoint = Endpoint::from_settings(s);
    let validated = connect_and_validate(root, &endpoint, &s.account, &s.api_key).await?;
    Ok(format!("online: {}", confirmed(s, &validated)))
}

/// What the primary confirmed, as `check --online` and the installer say it.
pub fn confirmed(s: &Settings, v: &Validated) -> String {
    format!(
        "connected to {} over TLS; account {} exists; API key accepted ({}{})",
        s.primary,
        v.info.account,
        v.key_kind(),
        if v.info.auto_trust {
            ", trusts servers automatically"
        } else {
            ""
        }
    )
}
