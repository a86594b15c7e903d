//! `show-config`: the effective settings, each with its origin, secrets redacted.
//! The text form is itself a valid seed (values as TOML, origins as comments).

use crate::cli::ShowConfigArgs;
use crate::exit;
use crate::root::Root;
use crate::settings::{Collected, Key, RawValue};
use std::io::Write;

/// Each setting with the value in effect and its source's tag; `None` when nothing gives it.
/// The built-in defaults are a layer too: they show with their tag, `built-in`.
fn rows(collected: &Collected) -> Vec<(Key, Option<(RawValue, String)>)> {
    Key::ALL
        .iter()
        .map(|&key| {
            let shown = collected
                .effective(key)
                .map(|entry| (entry.value.clone(), entry.origin.source.tag()));
            (key, shown)
        })
        .collect()
}

pub fn run(root: &Root, args: &ShowConfigArgs) -> anyhow::Result<u8> {
    let collected = super::load(root, &args.settings);
    let rows = rows(&collected);

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{Source, builtin_layer, seed};

    fn shown(seed_text: &str) -> Vec<(Key, Option<(RawValue, String)>)> {
        let (layer, problems) =
            seed::parse(seed_text, Source::Seed("/etc/gateway/seed.toml".into()));
        assert!(problems.is_empty(), "{problems:?}");
        rows(&Collected {
            layers: vec![layer, builtin_layer()],
            problems,
            given: true,
            gwseed: None,
        })
    }

    fn row(rows: &[(Key, Option<(RawValue, String)>)], key: Key) -> Option<(String, String)> {
        let (_, shown) = rows.iter().find(|(k, _)| *k == key)?;
        shown
            .as_ref()
            .map(|(value, origin)| (toml_value(value), origin.clone()))
    }

    #[test]
    fn defaults_show_with_the_built_in_tag_and_give_way_to_a_seed() {
        let rows = shown("deadline = \"1h\"\n");
        let builtin = |value: &str| Some((value.to_string(), "built-in".to_string()));
        assert_eq!(row(&rows, Key::ConnectTimeout), builtin("\"10s\""));
        assert_eq!(row(&rows, Key::RequestTimeout), builtin("\"30s\""));
        assert_eq!(row(&rows, Key::DnsCheck), builtin("\"warn\""));
        assert_eq!(row(&rows, Key::InsecureHttp), builtin("false"));
        assert_eq!(
            row(&rows, Key::Deadline),
            Some((
                "\"1h\"".to_string(),
                "seed:/etc/gateway/seed.toml".to_string()
            ))
        );
        // No default: not set.
        assert_eq!(row(&rows, Key::Primary), None);
        assert_eq!(row(&rows, Key::Nameservers), None);
    }
}
