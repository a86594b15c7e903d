//! systemd credentials (`ImportCredential=gateway.*`): `gateway.seed` holds a whole seed,
//! `gateway.primary`, `gateway.api_key`, … one setting each. They arrive over SMBIOS type 11,
//! fw_cfg, `systemd.set_credential=` or the credstore, and the unit finds them in
//! `$CREDENTIALS_DIRECTORY`.

use super::{Entry, Key, Layer, Origin, PARAM_PREFIX, RawValue, SEED_CREDENTIAL, Source, seed};
use crate::problem::{Code, Problem};
use std::path::Path;

/// Reads the credentials in `dir` (a real path). Returns the per-setting layer and, if there is
/// a `gateway.seed`, its layer below it.
pub fn read_dir(dir: &Path, shown_as: &str) -> (Layer, Option<Layer>, Vec<Problem>) {
    let mut layer = Layer::new(Source::Credential("gateway.*".into()));
    let mut seed_layer = None;
    let mut problems = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (layer, None, problems),
        Err(e) => {
            problems.push(
                Problem::error(
                    Code::CredentialsUnreadable,
                    shown_as,
                    format!("reading credentials directory: {e}"),
                )
                .fix("check that the unit has ImportCredential=gateway.* and runs as root"),
            );
            return (layer, None, problems);
        }
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(PARAM_PREFIX))
        .collect();
    names.sort();
    for name in names {
        let bytes = match read_capped(&dir.join(&name)) {
            Ok(b) => b,
            Err(e) => {
                problems.push(Problem::error(
                    Code::CredentialUnreadable,
                    format!("credential {name}"),
                    format!("reading credential: {e}"),
                ));
                continue;
            }
        };
        let (one, seed_doc, mut found) = parse(&name, &bytes);
        problems.append(&mut found);
        layer.entries.extend(one);
        if seed_doc.is_some() {
            seed_layer = seed_doc;
        }
    }
    (layer, seed_layer, problems)
}

fn read_capped(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(seed::MAX_SEED_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() > seed::MAX_SEED_BYTES {
        return Err(std::io::Error::other(format!(
            "larger than {} bytes",
            seed::MAX_SEED_BYTES
        )));
    }
    Ok(bytes)
}

/// Interprets one credential's content. The value is the whole content with surrounding
/// whitespace removed (tools that write credentials often add a newline).
pub fn parse(name: &str, content: &[u8]) -> (Option<Entry>, Option<Layer>, Vec<Problem>) {
    let source = Source::Credential(name.to_string());
    let subject = format!("credential {name}");
    let Ok(text) = std::str::from_utf8(content) else {
        let problem = Problem::error(Code::CredentialNotText, subject, "is not UTF-8 text")
            .fix("store the value as plain text (systemd-creds encrypt keeps it that way once decrypted)");
        return (None, None, vec![problem]);
    };
    if name == SEED_CREDENTIAL {
        let (layer, problems) = seed::parse(text, source);
        return (None, Some(layer), problems);
    }
    let short = &name[PARAM_PREFIX.len()..];
    let Some(key) = Key::from_param_name(short) else {
        let fix = Key::suggest_param(short).unwrap_or_else(|| {
            format!("remove it; known names are {SEED_CREDENTIAL} and the gateway.* parameters in docs/seed.md")
        });
        let problem =
            Problem::error(Code::UnknownCredential, subject, "unknown credential name").fix(fix);
        return (None, None, vec![problem]);
    };
    let entry = Entry {
        key,
        value: RawValue::from_text(key, text.trim()),
        origin: Origin::new(source),
    };
    (Some(entry), None, Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_setting_per_credential() {
        let (entry, seed, problems) = parse("gateway.api_key", b"abcdefghijklmnop\n");
        let entry = entry.unwrap();
        assert!(seed.is_none() && problems.is_empty());
        assert_eq!(entry.key, Key::ApiKey);
        assert!(matches!(&entry.value, RawValue::Secret(s) if s.expose() == "abcdefghijklmnop"));
        assert_eq!(entry.origin.source.tag(), "credential:gateway.api_key");
        assert_eq!(
            entry.subject(),
            "gateway.api_key from credential gateway.api_key"
        );
    }

    #[test]
    fn a_whole_seed_in_one_credential() {
        let (entry, seed, problems) = parse(
            "gateway.seed",
            b"primary = \"p.example\"\naccount = \"a.example\"\n",
        );
        assert!(entry.is_none() && problems.is_empty());
        let seed = seed.unwrap();
        assert_eq!(
            seed.get(Key::Account).unwrap().subject(),
            "account from credential gateway.seed line 2"
        );
    }

    #[test]
    fn bad_credentials_are_named() {
        let (_, _, problems) = parse("gateway.acount", b"x");
        assert_eq!(problems[0].code, Code::UnknownCredential);
        assert_eq!(
            problems[0].fix.as_deref(),
            Some("did you mean gateway.account?")
        );
        let (_, _, problems) = parse("gateway.primary", b"\xff\xfe");
        assert_eq!(problems[0].code, Code::CredentialNotText);
    }
}
