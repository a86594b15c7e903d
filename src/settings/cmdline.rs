//! The kernel command line: `gateway.primary=… gateway.account=… gateway.api_key=…`.
//!
//! Splitting follows the kernel's own parser (`next_arg()` in `lib/cmdline.c`), so a value is
//! read exactly as the kernel and systemd read it: whitespace separates parameters except
//! inside double quotes; a leading quote of the value (or of the whole parameter) and the
//! matching trailing quote are removed; quotes elsewhere stay; a lone `--` ends the kernel's
//! parameters (what follows belongs to init). When a parameter repeats, the last one wins.

use super::{
    Entry, Key, Layer, Origin, PARAM_PREFIX, PROC_CMDLINE, RawValue, SEED_CREDENTIAL, Source,
};
use crate::problem::{Code, Problem};

/// One parameter: its name and, if it had `=`, its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub value: Option<String>,
}

fn is_kernel_space(b: u8) -> bool {
    // The kernel's isspace(): the C locale's six whitespace characters.
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Splits a kernel command line into parameters, as the kernel does.
pub fn split(cmdline: &[u8]) -> Vec<Param> {
    let mut params = Vec::new();
    let mut rest = cmdline;
    loop {
        while let Some((&b, tail)) = rest.split_first() {
            if !is_kernel_space(b) {
                break;
            }
            rest = tail;
        }
        if rest.is_empty() {
            break;
        }
        let quoted = rest[0] == b'"';
        let arg = if quoted { &rest[1..] } else { rest };
        let mut in_quote = quoted;
        let mut equals = None;
        let mut end = arg.len();
        for (i, &b) in arg.iter().enumerate() {
            if is_kernel_space(b) && !in_quote {
                end = i;
                break;
            }
            if equals.is_none() && b == b'=' {
                equals = Some(i);
            }
            if b == b'"' {
                in_quote = !in_quote;
            }
        }
        let token = &arg[..end];
        rest = &arg[end..];
        let ends_in_quote = token.last() == Some(&b'"');
        let param = match equals {
            None => {
                let name = if quoted && ends_in_quote {
                    &token[..token.len() - 1]
                } else {
                    token
                };
                if name == b"--" {
                    break;
                }
                Param {
                    name: String::from_utf8_lossy(name).into_owned(),
                    value: None,
                }
            }
            Some(eq) => {
                let mut value_start = eq + 1;
                let mut value_end = token.len();
                let value_quoted = token.get(value_start) == Some(&b'"');
                if value_quoted {
                    value_start += 1;
                }
                if (value_quoted || quoted) && ends_in_quote {
                    value_end -= 1;
                }
                let value = token
                    .get(value_start..value_end.max(value_start))
                    .unwrap_or_default();
                Param {
                    name: String::from_utf8_lossy(&token[..eq]).into_owned(),
                    value: Some(String::from_utf8_lossy(value).into_owned()),
                }
            }
        };
        params.push(param);
    }
    params
}

/// Reads our settings out of a kernel command line. Unknown `gateway.*` parameters are errors
/// (a typo must not be silently ignored); an API key there is a warning, because
/// `/proc/cmdline` is readable by every user and the kernel prints it at boot.
pub fn parse(cmdline: &[u8]) -> (Layer, Vec<Problem>) {
    let mut layer = Layer::new(Source::Cmdline);
    let mut problems = Vec::new();
    let origin = Origin::new(Source::Cmdline);
    for param in split(cmdline) {
        if let Some(name) = param.name.strip_prefix("systemd.set_credential") {
            warn_on_credential_in_cmdline(name, param.value.as_deref(), &mut problems);
            continue;
        }
        let Some(name) = param.name.strip_prefix(PARAM_PREFIX) else {
            continue;
        };
        let Some(key) = Key::from_param_name(name) else {
            let fix = Key::suggest_param(name).unwrap_or_else(|| {
                "remove it; docs/seed.md lists the gateway.* parameters".to_string()
            });
            problems.push(
                Problem::error(
                    Code::UnknownParameter,
                    format!("{PARAM_PREFIX}{name} on {PROC_CMDLINE}"),
                    "unknown parameter",
                )
                .fix(fix),
            );
            continue;
        };
        let Some(value) = param.value else {
            problems.push(
                Problem::error(Code::MissingValue, origin.subject(key), "has no value").fix(
                    format!("write it as {PARAM_PREFIX}{}=VALUE", key.param_name()),
                ),
            );
            continue;
        };
        if key.holds_secret(&value) {
            problems.push(secret_on_cmdline(origin.subject(key), key));
        }
        layer.entries.push(Entry {
            key,
            value: RawValue::from_text(key, &value),
            origin: origin.clone(),
        });
    }
    (layer, problems)
}

fn secret_on_cmdline(subject: String, key: Key) -> Problem {
    let what = key.secret_name();
    Problem::warning(
        Code::SecretOnCmdline,
        subject,
        format!("{what} is on the kernel command line, which every local user can read and the kernel prints at boot"),
    )
    .fix(format!("pass {} as a systemd credential (SMBIOS type 11 or credstore) or in a seed file readable only by root", key.name()))
}

/// `systemd.set_credential=gateway.api_key:…` puts the key on the command line too.
fn warn_on_credential_in_cmdline(suffix: &str, value: Option<&str>, problems: &mut Vec<Problem>) {
    if !matches!(suffix, "" | "_binary") {
        return;
    }
    let Some((name, content)) = value.and_then(|v| v.split_once(':')) else {
        return;
    };
    let key = if name == SEED_CREDENTIAL {
        Some(Key::ApiKey)
    } else {
        // A binary credential's content is base64: whether it holds a password cannot be seen.
        name.strip_prefix(PARAM_PREFIX)
            .and_then(Key::from_param_name)
            .filter(|k| k.is_secret() && (suffix == "_binary" || k.holds_secret(content)))
    };
    if let Some(key) = key {
        problems.push(secret_on_cmdline(
            format!("systemd.set_credential{suffix}={name} on {PROC_CMDLINE}"),
            key,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, value: Option<&str>) -> Param {
        Param {
            name: name.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn splits_like_the_kernel() {
        let cases: &[(&str, &[Param])] = &[
            ("", &[]),
            ("   \n", &[]),
            ("quiet", &[p("quiet", None)]),
            ("a=1 b=2\n", &[p("a", Some("1")), p("b", Some("2"))]),
            ("a=", &[p("a", Some(""))]),
            ("a==b", &[p("a", Some("=b"))]),
            (
                "\ta=1\t\tb\x0b c",
                &[p("a", Some("1")), p("b", None), p("c", None)],
            ),
            (r#"a="x y" b"#, &[p("a", Some("x y")), p("b", None)]),
            (r#""a=x y" b"#, &[p("a", Some("x y")), p("b", None)]),
            (
                r#""quoted flag" b"#,
                &[p("quoted flag", None), p("b", None)],
            ),
            (r#"a=x"y z"w"#, &[p("a", Some(r#"x"y z"w"#))]),
            (r#"a="""#, &[p("a", Some(""))]),
            (r#"a=""#, &[p("a", Some(""))]),
            (r#"a="x"#, &[p("a", Some("x"))]),
            (
                r#"a="unterminated b=c"#,
                &[p("a", Some("unterminated b=c"))],
            ),
            ("a=1 a=2", &[p("a", Some("1")), p("a", Some("2"))]),
            ("a=1 -- b=2", &[p("a", Some("1"))]),
            (r#""--" b=2"#, &[]),
            ("a=--", &[p("a", Some("--"))]),
        ];
        for (input, want) in cases {
            assert_eq!(split(input.as_bytes()), *want, "input {input:?}");
        }
    }

    fn values(cmdline: &str) -> Vec<(Key, String)> {
        let (layer, _) = parse(cmdline.as_bytes());
        layer
            .entries
            .iter()
            .map(|e| (e.key, e.value.to_string()))
            .collect()
    }

    #[test]
    fn reads_our_parameters_only() {
        let cases: &[(&str, &[(Key, &str)])] = &[
            ("BOOT_IMAGE=/vmlinuz root=/dev/vda2 quiet", &[]),
            (
                "gateway.primary=pri.example gateway.account=acme.example",
                &[
                    (Key::Primary, "\"pri.example\""),
                    (Key::Account, "\"acme.example\""),
                ],
            ),
            ("gateway.dns-check=off", &[(Key::DnsCheck, "\"off\"")]),
            ("gateway.dns_check=off", &[(Key::DnsCheck, "\"off\"")]),
            (
                "gateway.api_key=s3cretvalue0123456",
                &[(Key::ApiKey, "[redacted]")],
            ),
            (
                "gateway.nameservers=10.0.0.1,10.0.0.2:5353",
                &[(Key::Nameservers, r#"["10.0.0.1", "10.0.0.2:5353"]"#)],
            ),
            (r#"gateway.hostname="gw01""#, &[(Key::Hostname, "\"gw01\"")]),
        ];
        for (input, want) in cases {
            let want: Vec<(Key, String)> = want.iter().map(|(k, v)| (*k, v.to_string())).collect();
            assert_eq!(values(input), want, "input {input:?}");
        }
    }

    #[test]
    fn last_parameter_wins() {
        let (layer, _) = parse(b"gateway.account=a.example gateway.account=b.example");
        assert_eq!(
            layer.get(Key::Account).unwrap().value,
            RawValue::Text("b.example".into())
        );
    }

    #[test]
    fn reports_unknown_and_valueless_parameters() {
        let (_, problems) = parse(b"gateway.acount=x gateway.primary");
        let codes: Vec<_> = problems.iter().map(|p| p.code.as_str()).collect();
        assert_eq!(codes, ["unknown-parameter", "missing-value"]);
        assert_eq!(
            problems[0].fix.as_deref(),
            Some("did you mean gateway.account?")
        );
        assert_eq!(problems[1].subject, "gateway.primary from /proc/cmdline");
    }

    #[test]
    fn warns_about_keys_on_the_command_line() {
        for cmdline in [
            "gateway.api_key=abcdefabcdefabcdef",
            "systemd.set_credential=gateway.api_key:abcdefabcdefabcdef",
            "systemd.set_credential_binary=gateway.seed:YWJj",
        ] {
            let (_, problems) = parse(cmdline.as_bytes());
            assert_eq!(problems.len(), 1, "{cmdline}");
            assert_eq!(problems[0].code, Code::SecretOnCmdline);
            assert!(!problems[0].to_string().contains("abcdefabcdef"));
        }
        let (_, problems) =
            parse(b"systemd.set_credential=gateway.primary:p.example gateway.api_key=");
        assert!(problems.is_empty(), "no key, no warning: {problems:?}");
    }
}
