//! Seed documents: TOML with kebab-case keys, every key a setting, unknown keys an error.
//!
//! The document is parsed into a spanned table and taken apart here rather than through
//! serde's derive, so that every problem names its line, all problems are reported at once,
//! and no parser message can quote the API key back.

use super::{Entry, Key, Kind, Layer, Origin, RawValue, Source};
use crate::problem::{Code, Problem, closest};
use toml::de::{DeTable, DeValue};

/// Largest seed accepted; a seed is a handful of lines, a bigger file is a mistake.
pub const MAX_SEED_BYTES: usize = 64 * 1024;

/// 1-based line of a byte offset.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn toml_type(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a date-time",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

fn convert(key: Key, value: &DeValue<'_>) -> RawValue {
    match (key.kind(), value) {
        (Kind::Secret, DeValue::String(s)) => RawValue::Secret(key.secret(s.as_ref())),
        (Kind::Secret, other) => RawValue::Other(toml_type(other)),
        (_, DeValue::String(s)) => RawValue::Text(s.to_string()),
        (_, DeValue::Boolean(b)) => RawValue::Bool(*b),
        (_, DeValue::Integer(i)) => i64::from_str_radix(i.as_str(), i.radix())
            .map(RawValue::Int)
            .unwrap_or(RawValue::Other("an integer out of range")),
        (_, DeValue::Array(items)) => {
            let texts: Option<Vec<String>> = items
                .iter()
                .map(|item| match item.get_ref() {
                    DeValue::String(s) => Some(s.to_string()),
                    _ => None,
                })
                .collect();
            texts
                .map(RawValue::List)
                .unwrap_or(RawValue::Other("an array of non-strings"))
        }
        (_, other) => RawValue::Other(toml_type(other)),
    }
}

/// Parses a seed document from `source`. Syntax errors and unknown keys come back as problems;
/// whatever could be read is kept.
pub fn parse(text: &str, source: Source) -> (Layer, Vec<Problem>) {
    let mut layer = Layer::new(source.clone());
    let mut problems = Vec::new();
    let (table, errors) = DeTable::parse_recoverable(text);
    for error in &errors {
        let origin = match error.span() {
            Some(span) => Origin::at_line(source.clone(), line_of(text, span.start)),
            None => Origin::new(source.clone()),
        };
        problems.push(
            Problem::error(
                Code::SeedSyntax,
                origin.describe(),
                format!("not valid TOML: {}", error.message().trim()),
            )
            .fix("correct the TOML syntax; see docs/seed.md for the format"),
        );
    }
    if !errors.is_empty() {
        // Recovery may have made up values; trust nothing from a document that did not parse.
        return (layer, problems);
    }
    for (name, value) in table.get_ref() {
        let origin = Origin::at_line(source.clone(), line_of(text, name.span().start));
        let Some(key) = Key::from_seed_name(name.get_ref()) else {
            problems.push(unknown_key(name.get_ref(), &origin));
            continue;
        };
        layer.entries.push(Entry {
            key,
            value: convert(key, value.get_ref()),
            origin,
        });
    }
    (layer, problems)
}

fn unknown_key(name: &str, origin: &Origin) -> Problem {
    let names = Key::ALL.iter().map(|k| k.name());
    let fix = match closest(name, names) {
        Some(near) => format!("did you mean \"{near}\"? see docs/seed.md for the keys"),
        None => format!(
            "remove it; known keys: {}",
            Key::ALL
                .iter()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    // A section header (`[gateway]`) shows up here as a table-valued key.
    Problem::error(
        Code::UnknownKey,
        origin.describe(),
        format!("unknown key \"{}\"", name.escape_debug()),
    )
    .fix(fix)
}

/// Byte ranges of the whole lines assigning `name` at the top level of `text`; `None` if the
/// text is not valid TOML.
fn assignment_lines(text: &str, names: &[&str]) -> Option<Vec<std::ops::Range<usize>>> {
    let (table, errors) = DeTable::parse_recoverable(text);
    if !errors.is_empty() {
        return None;
    }
    let mut ranges: Vec<_> = table
        .get_ref()
        .iter()
        .filter(|(k, _)| names.contains(&k.get_ref().as_ref()))
        .map(|(k, v)| {
            let start = text[..k.span().start].rfind('\n').map_or(0, |i| i + 1);
            let end = text[v.span().end..]
                .find('\n')
                .map_or(text.len(), |i| v.span().end + i + 1);
            start..end
        })
        .collect();
    ranges.sort_by_key(|r| r.start);
    Some(ranges)
}

/// `text` without its top-level assignments of `names`, every other byte kept; `None` if the
/// text is not valid TOML.
pub fn without_keys(text: &str, names: &[&str]) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for range in assignment_lines(text, names)? {
        out.push_str(&text[at..range.start.max(at)]);
        at = at.max(range.end);
    }
    out.push_str(&text[at..]);
    Some(out)
}

/// A value as TOML source text.
fn toml_literal(value: &RawValue) -> Option<String> {
    let v = match value {
        RawValue::Text(s) => toml::Value::String(s.clone()),
        RawValue::Secret(s) => toml::Value::String(s.expose().to_string()),
        RawValue::Int(i) => toml::Value::Integer(*i),
        RawValue::Bool(b) => toml::Value::Boolean(*b),
        RawValue::List(items) => {
            toml::Value::Array(items.iter().cloned().map(toml::Value::String).collect())
        }
        RawValue::Other(_) => return None,
    };
    Some(v.to_string())
}

/// The seed document `existing` with `entries` set: their old assignments removed, the new ones
/// written first under `comment`; every other line (settings, comments) kept as it was.
/// `None` if `existing` is not valid TOML (the caller says so rather than lose it).
pub fn with_entries(existing: &str, entries: &[Entry], comment: &str) -> Option<String> {
    // A byte order mark is valid TOML only at the very start, which the new lines take.
    let existing = existing.strip_prefix('\u{feff}').unwrap_or(existing);
    let names: Vec<&str> = entries.iter().map(|e| e.key.name()).collect();
    let rest = without_keys(existing, &names)?;
    let mut out = String::new();
    for line in comment.lines() {
        out.push_str(&format!("# {line}\n"));
    }
    for entry in entries {
        if let Some(literal) = toml_literal(&entry.value) {
            out.push_str(&format!("{} = {literal}\n", entry.key.name()));
        }
    }
    if !rest.trim().is_empty() {
        out.push('\n');
        out.push_str(rest.trim_start_matches('\n'));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn src() -> Source {
        Source::Seed("/etc/gateway/seed.toml".into())
    }

    #[test]
    fn reads_keys_with_their_lines() {
        let text = "# comment\nprimary = \"pri.example\"\n\naccount = 'acme.example'\ndeadline = 600\ninsecure-http = false\nnameservers = [\"10.0.0.1\"]\n";
        let (layer, problems) = parse(text, src());
        assert!(problems.is_empty(), "{problems:?}");
        let got: Vec<_> = layer
            .entries
            .iter()
            .map(|e| (e.key, e.origin.line.unwrap()))
            .collect();
        assert_eq!(
            got,
            [
                (Key::Account, 4),
                (Key::Deadline, 5),
                (Key::InsecureHttp, 6),
                (Key::Nameservers, 7),
                (Key::Primary, 2)
            ]
        );
        assert_eq!(layer.get(Key::Deadline).unwrap().value, RawValue::Int(600));
    }

    #[test]
    fn unknown_keys_are_errors_with_a_hint() {
        let (layer, problems) = parse(
            "primary = \"p.example\"\nacount = \"a.example\"\n[server]\n",
            src(),
        );
        assert_eq!(layer.entries.len(), 1);
        let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text[0],
            "/etc/gateway/seed.toml line 2: unknown key \"acount\"\n  fix: did you mean \"account\"? see docs/seed.md for the keys"
        );
        assert!(
            text[1].starts_with("/etc/gateway/seed.toml line 3: unknown key \"server\""),
            "{}",
            text[1]
        );
    }

    #[test]
    fn syntax_errors_never_quote_the_key() {
        for text in [
            "api-key = \"SuperSecretKey12345\n",
            "api-key = SuperSecretKey12345\n",
            "api-key = \"SuperSecretKey12345\" x\n",
            "api-key = 'SuperSecretKey12345\"\n",
            "api-key = \"SuperSecretKey12345\"\napi-key = \"SuperSecretKey12345\"\n",
        ] {
            let (layer, problems) = parse(text, src());
            assert!(layer.entries.is_empty());
            assert!(!problems.is_empty(), "{text:?} should fail");
            for p in &problems {
                let shown = format!("{p} {p:?}");
                assert!(!shown.contains("SuperSecret"), "{shown}");
                assert!(
                    shown.contains("line 1") || shown.contains("line 2"),
                    "{shown}"
                );
            }
        }
    }

    #[test]
    fn a_key_of_the_wrong_type_keeps_only_its_type() {
        let (layer, _) = parse("api-key = 12345678901234567\n", src());
        assert_eq!(
            layer.get(Key::ApiKey).unwrap().value,
            RawValue::Other("an integer")
        );
    }

    #[test]
    fn writing_keeps_every_other_line_and_reads_back() {
        let existing = "# site settings\nprimary = \"old.example\"  # old\ndns-check = \"off\"\napi-key = \"\"\"\nOldKeyOldKeyOldKey0\"\"\"\naccount = 'old.example'\n";
        let entries = [
            (
                Key::Primary,
                RawValue::Text("https://p.example:8443/".into()),
            ),
            (Key::Account, RawValue::Text("acme \"quoted\"\\".into())),
            (
                Key::ApiKey,
                RawValue::Secret(Secret::new("NewKeyNewKeyNewKey1")),
            ),
            (Key::Nameservers, RawValue::List(vec!["192.0.2.53".into()])),
        ]
        .map(|(key, value)| Entry {
            key,
            value,
            origin: Origin::new(Source::Flag),
        });
        let text = with_entries(existing, &entries, "written by a test").unwrap();
        assert!(text.starts_with("# written by a test\n"), "{text}");
        assert!(
            text.contains("# site settings\n") && text.contains("dns-check = \"off\"\n"),
            "{text}"
        );
        assert!(
            !text.contains("old.example") && !text.contains("OldKey"),
            "{text}"
        );
        let (layer, problems) = parse(&text, src());
        assert!(problems.is_empty(), "{problems:?}");
        let value = |k| layer.get(k).map(|e| e.value.clone());
        assert_eq!(value(Key::Primary), Some(entries[0].value.clone()));
        assert_eq!(value(Key::Account), Some(entries[1].value.clone()));
        assert_eq!(value(Key::ApiKey), Some(entries[2].value.clone()));
        assert_eq!(value(Key::Nameservers), Some(entries[3].value.clone()));
        assert_eq!(value(Key::DnsCheck), Some(RawValue::Text("off".into())));
        assert_eq!(
            with_entries("primary = [", &entries, "x"),
            None,
            "broken TOML overwritten"
        );
    }

    #[test]
    fn writing_over_a_seed_saved_with_a_byte_order_mark_keeps_it_valid() {
        // Notepad saves UTF-8 with a BOM; TOML allows it at the start only.
        let existing = "\u{feff}# from a laptop\nprimary = \"old.example\"\n";
        let entries = [Entry {
            key: Key::Account,
            value: RawValue::Text("acme.example".into()),
            origin: Origin::new(Source::Flag),
        }];
        let text = with_entries(existing, &entries, "written by a test").unwrap();
        let (layer, problems) = parse(&text, src());
        assert!(problems.is_empty(), "{text:?}: {problems:?}");
        assert_eq!(layer.entries.len(), 2, "{text:?}");
    }
}
