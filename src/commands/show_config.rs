//! `show-config`: the effective settings, each with its origin, secrets redacted.
//! The text form is itself a valid seed (values as TOML, origins as comments).

use crate::cli::ShowConfigArgs;
use crate::exit;
use crate::root::Root;
use crate::settings::validate::builtin_default;
use crate::settings::{Key, RawValue, Source};
use std::io::Write;

pub fn run(root: &Root, args: &ShowConfigArgs) -> anyhow::Result<u8> {
    let collected = super::load(root, &args.settings);
    let rows: Vec<(Key, Option<(RawValue, String)>)> = Key::ALL
        .iter()
        .map(|&key| {
            let shown = match collected.effective(key) {
                Some(entry) => Some((entry.value.clone(), entry.origin.source.tag())),
                None => builtin_default(key).map(|v| (v, Source::BuiltIn.tag())),
            };
            (key, shown)
        })
        .collect();

    let mut out = std::io::stdout().lock();
    if args.json {
        let mut map = serde_json::Map::new();
        for (key, shown) in rows {
            let (value, origin) = match shown {
                Some((v, o)) => (v.to_json(), serde_json::Value::String(o)),
                None => (serde_json::Value::Null, serde_json::Value::Null),
            };
            map.insert(
                key.name().into(),
                serde_json::json!({ "value": value, "origin": origin }),
            );
        }
        serde_json::to_writer_pretty(&mut out, &map)?;
        writeln!(out)?;
    } else {
        for (key, shown) in rows {
            match shown {
                Some((value, origin)) => {
                    let line = format!("{key} = {}", toml_value(&value));
                    writeln!(out, "{line:<48} # {origin}")?;
                }
                None => writeln!(out, "# {key} is not set")?,
            }
        }
    }
    let errors = collected.problems.iter().filter(|p| p.is_error()).count();
    let warnings = collected.problems.len() - errors;
    if !collected.problems.is_empty() {
        let mut err = std::io::stderr().lock();
        writeln!(
            err,
            "{errors} error(s), {warnings} warning(s) while reading the sources; \
             run `gateway-firstboot check` for details"
        )?;
    }
    Ok(exit::OK)
}

/// A value in TOML syntax, secrets redacted.
fn toml_value(value: &RawValue) -> String {
    match value {
        RawValue::Text(s) => toml::Value::String(s.clone()).to_string(),
        RawValue::Secret(s) => toml::Value::String(s.to_string()).to_string(),
        RawValue::Int(i) => i.to_string(),
        RawValue::Bool(b) => b.to_string(),
        RawValue::List(items) => {
            toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect()).to_string()
        }
        RawValue::Other(name) => format!("\"({name})\""),
    }
}
