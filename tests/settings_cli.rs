//! The real binary, run with `--root` on fixture trees: every source, every precedence pair,
//! every validation error, and the redaction rule.

use gateway_test_support::{Tree, problem_codes, repo_path};

/// The sources, highest precedence first.
#[derive(Debug, Clone, Copy)]
enum Src {
    Flag,
    Cmdline,
    Credential,
    SeedCredential,
    EtcSeed,
    BootSeed,
    Gwseed,
    Defaults,
}

const ALL: [Src; 8] = [
    Src::Flag,
    Src::Cmdline,
    Src::Credential,
    Src::SeedCredential,
    Src::EtcSeed,
    Src::BootSeed,
    Src::Gwseed,
    Src::Defaults,
];

impl Src {
    fn tag(self) -> &'static str {
        match self {
            Src::Flag => "flag",
            Src::Cmdline => "cmdline",
            Src::Credential => "credential:gateway.account",
            Src::SeedCredential => "credential:gateway.seed",
            Src::EtcSeed => "seed:/etc/gateway/seed.toml",
            Src::BootSeed => "seed:/boot/gateway-seed.toml",
            Src::Gwseed => "seed:/dev/vdb1:seed.toml",
            Src::Defaults => "default:/usr/lib/gateway-firstboot/defaults.toml",
        }
    }

    /// Gives `account = value` through this source; returns flags to pass, if any.
    fn put(self, tree: &mut Tree, value: &str) -> Vec<String> {
        let doc = format!("account = \"{value}\"\n");
        match self {
            Src::Flag => return vec!["--account".into(), value.into()],
            Src::Cmdline => {
                tree.cmdline(&format!(
                    "BOOT_IMAGE=/vmlinuz quiet gateway.account={value}"
                ));
            }
            Src::Credential => {
                tree.credential("gateway.account", &format!("{value}\n"));
            }
            Src::SeedCredential => {
                tree.credential("gateway.seed", &doc);
            }
            Src::EtcSeed => {
                tree.file("/etc/gateway/seed.toml", &doc);
            }
            Src::BootSeed => {
                tree.file("/boot/gateway-seed.toml", &doc);
            }
            Src::Gwseed => {
                tree.gwseed(&[("seed.toml", doc.as_bytes())]);
            }
            Src::Defaults => {
                tree.file("/usr/lib/gateway-firstboot/defaults.toml", &doc);
            }
        }
        Vec::new()
    }
}

#[test]
fn each_source_is_read_and_named() {
    for src in ALL {
        let mut tree = Tree::new();
        let flags = src.put(&mut tree, "only.example");
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let (value, origin) = tree.effective("account", &flags);
        assert_eq!(value, "only.example", "{src:?}");
        assert_eq!(origin, src.tag(), "{src:?}");
    }
}

#[test]
fn every_precedence_pair() {
    for (i, &high) in ALL.iter().enumerate() {
        for &low in &ALL[i + 1..] {
            let mut tree = Tree::new();
            let mut flags = low.put(&mut tree, "low.example");
            flags.extend(high.put(&mut tree, "high.example"));
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            let (value, origin) = tree.effective("account", &flags);
            assert_eq!(value, "high.example", "{high:?} over {low:?}");
            assert_eq!(origin, high.tag(), "{high:?} over {low:?}");
        }
    }
}

#[test]
fn a_per_key_credential_beats_the_seed_credential_and_sources_mix() {
    let mut tree = Tree::new();
    tree.credential(
        "gateway.seed",
        "primary = \"seed.example\"\naccount = \"seed.example\"\n",
    )
    .credential("gateway.primary", "cred.example")
    .cmdline("gateway.dns_check=off")
    .file("/etc/gateway/seed.toml", "hostname = \"gw01\"\n");
    let json = tree.run(&["show-config", "--json"]).json();
    assert_eq!(json["primary"]["origin"], "credential:gateway.primary");
    assert_eq!(json["account"]["origin"], "credential:gateway.seed");
    assert_eq!(json["dns-check"]["value"], "off");
    assert_eq!(json["dns-check"]["origin"], "cmdline");
    assert_eq!(json["hostname"]["origin"], "seed:/etc/gateway/seed.toml");
    assert_eq!(
        json["deadline"],
        serde_json::json!({"value": "30m", "origin": "built-in"})
    );
    assert_eq!(
        json["primary-ca"],
        serde_json::json!({"value": null, "origin": null})
    );
}

#[test]
fn run_by_hand_the_system_credentials_are_read() {
    // Outside the unit there is no $CREDENTIALS_DIRECTORY: `check` and `install` on the
    // console see what the unit gets, from the system's credentials.
    let mut tree = Tree::new();
    tree.file("/run/credentials/@system/gateway.account", "cred.example")
        .file("/run/credentials/@system/other.thing", "ignored");
    let (value, origin) = tree.effective("account", &[]);
    assert_eq!(value, "cred.example");
    assert_eq!(origin, "credential:gateway.account");
}

#[test]
fn a_blank_key_means_the_default_restricted_key() {
    let mut tree = Tree::new();
    tree.file(
        "/usr/lib/gateway-firstboot/defaults.toml",
        "api-key = \"DEFAULTrestrictedKEY0001\"\n",
    )
    .file(
        "/etc/gateway/seed.toml",
        "primary = \"p.example\"\naccount = \"a.example\"\napi-key = \"\"\n",
    );
    let (value, origin) = tree.effective("api-key", &[]);
    assert_eq!(value, "[redacted]");
    assert_eq!(origin, "default:/usr/lib/gateway-firstboot/defaults.toml");
    let run = tree.run(&["check"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("API key: the default restricted key"),
        "{}",
        run.stdout
    );

    // Without a vendor default, a blank key is an error that says so.
    let mut tree = Tree::new();
    tree.file(
        "/etc/gateway/seed.toml",
        "primary = \"p.example\"\naccount = \"a.example\"\n",
    );
    let run = tree.run(&["check"]);
    assert_eq!(run.code, 65);
    assert!(run.stdout.contains(
        "error: api-key: is blank or not set, and this image has no default restricted key"
    ));
}

#[test]
fn the_shipped_example_seed_is_valid() {
    // Its key is blank, so it relies on the image's default restricted key, as shipped.
    let mut tree = Tree::new();
    tree.file(
        "/etc/gateway/seed.toml",
        std::fs::read(repo_path("examples/seed.toml")).unwrap(),
    )
    .file(
        "/usr/lib/gateway-firstboot/defaults.toml",
        "api-key = \"DEFAULTrestrictedKEY0001\"\n",
    );
    let run = tree.run(&["check"]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout
            .starts_with("settings are valid: primary https://primary.example.com/"),
        "{}",
        run.stdout
    );
}

const GOOD: &str = "primary = \"primary.example.com\"\naccount = \"acme.example\"\napi-key = \"gwk_0123456789abcdef\"\n";

/// One validation case: a tree, the expected code, and text the report must contain.
struct Case {
    name: &'static str,
    setup: fn(&mut Tree),
    code: &'static str,
    says: &'static str,
}

fn seed(tree: &mut Tree, extra: &str) {
    tree.file("/etc/gateway/seed.toml", format!("{GOOD}{extra}"));
}

const CASES: &[Case] = &[
    Case {
        name: "account with an empty label, on the kernel command line",
        setup: |t| {
            seed(t, "");
            t.cmdline("gateway.account=acme..example");
        },
        code: "invalid-account",
        says: "error: gateway.account from /proc/cmdline: \"acme..example\" is not a DNS name: empty label\n  fix: give the account's DNS name",
    },
    Case {
        name: "primary with a bad port",
        setup: |t| {
            seed(t, "");
            t.cmdline("gateway.primary=p.example:99999");
        },
        code: "invalid-primary",
        says: "gateway.primary from /proc/cmdline: \"p.example:99999\" is not a primary server address: port \"99999\" is not a number from 1 to 65535",
    },
    Case {
        name: "plain http refused",
        setup: |t| {
            seed(t, "");
            t.cmdline("gateway.primary=http://p.example");
        },
        code: "invalid-primary",
        says: "uses plain http, which would send the API key unencrypted\n  fix: use https://, or set insecure-http = true",
    },
    Case {
        name: "short API key",
        setup: |t| {
            seed(t, "");
            t.credential("gateway.api_key", "abc");
        },
        code: "invalid-api-key",
        says: "error: gateway.api_key from credential gateway.api_key: has 3 characters; an API key has 16 to 512",
    },
    Case {
        name: "API key of the wrong type",
        setup: |t| {
            t.file(
                "/etc/gateway/seed.toml",
                "primary = \"p.example\"\naccount = \"a.example\"\napi-key = 1234567890123456789\n",
            );
        },
        code: "invalid-api-key",
        says: "api-key from /etc/gateway/seed.toml line 3: expected a string, found an integer",
    },
    Case {
        name: "hostname with an underscore",
        setup: |t| seed(t, "hostname = \"gw_01\"\n"),
        code: "invalid-hostname",
        says: "hostname from /etc/gateway/seed.toml line 4: \"gw_01\" is not a host name: label \"gw_01\" contains '_'",
    },
    Case {
        name: "unknown DNS check policy",
        setup: |t| seed(t, "dns-check = \"sometimes\"\n"),
        code: "invalid-dns-check",
        says: "\"sometimes\" is not a DNS check policy\n  fix: use warn, require or off",
    },
    Case {
        name: "nameserver that is not an address",
        setup: |t| seed(t, "nameservers = [\"10.0.0.1\", \"dns.example\"]\n"),
        code: "invalid-nameserver",
        says: "\"dns.example\" is not an IP address or IP:port",
    },
    Case {
        name: "CA that is not PEM",
        setup: |t| {
            seed(
                t,
                "primary-ca = \"-----BEGIN CERTIFICATE-----\\nnot base64!\\n-----END CERTIFICATE-----\\n\"\n",
            )
        },
        code: "invalid-primary-ca",
        says: "primary-ca from /etc/gateway/seed.toml line 4: PEM text is not a PEM certificate",
    },
    Case {
        name: "CA path that does not exist",
        setup: |t| seed(t, "primary-ca = \"/etc/gateway/missing-ca.pem\"\n"),
        code: "invalid-primary-ca",
        says: "reading /etc/gateway/missing-ca.pem: No such file or directory",
    },
    Case {
        name: "CA path that is relative",
        setup: |t| seed(t, "primary-ca = \"ca.pem\"\n"),
        code: "invalid-primary-ca",
        says: "\"ca.pem\" is neither PEM text nor an absolute path",
    },
    Case {
        name: "pin of the wrong length",
        setup: |t| seed(t, "primary-ca-sha256 = \"abcdef\"\n"),
        code: "invalid-primary-ca-sha256",
        says: "\"abcdef\" is not a SHA-256 fingerprint: expected 64 hex digits",
    },
    Case {
        name: "duration that is not one",
        setup: |t| seed(t, "deadline = \"5 minutes\"\n"),
        code: "invalid-duration",
        says: "deadline from /etc/gateway/seed.toml line 4: \"5 minutes\" is not a duration",
    },
    Case {
        name: "timeout out of range",
        setup: |t| seed(t, "connect-timeout = 0\n"),
        code: "invalid-duration",
        says: "0 seconds is outside the allowed 1 to 600 seconds",
    },
    Case {
        name: "boolean that is not one",
        setup: |t| seed(t, "insecure-http = \"perhaps\"\n"),
        code: "invalid-boolean",
        says: "\"perhaps\" is not a boolean",
    },
    Case {
        name: "primary missing",
        setup: |t| {
            t.file(
                "/etc/gateway/seed.toml",
                "account = \"a.example\"\napi-key = \"gwk_0123456789abcdef\"\n",
            );
        },
        code: "primary-missing",
        says: "error: primary: is not set\n  fix: give gateway.primary= on the kernel command line",
    },
    Case {
        name: "account missing",
        setup: |t| {
            t.cmdline("gateway.primary=p.example");
        },
        code: "account-missing",
        says: "error: account: is not set",
    },
    Case {
        name: "TOML syntax error",
        setup: |t| {
            t.file(
                "/etc/gateway/seed.toml",
                "primary = \"p.example\"\naccount = \"a.example\n",
            );
        },
        code: "seed-syntax",
        says: "error: /etc/gateway/seed.toml line 2: not valid TOML",
    },
    Case {
        name: "unknown seed key",
        setup: |t| seed(t, "acount = \"x.example\"\n"),
        code: "unknown-key",
        says: "error: /etc/gateway/seed.toml line 4: unknown key \"acount\"\n  fix: did you mean \"account\"?",
    },
    Case {
        name: "unknown kernel parameter",
        setup: |t| {
            seed(t, "");
            t.cmdline("gateway.primery=p.example");
        },
        code: "unknown-parameter",
        says: "error: gateway.primery on /proc/cmdline: unknown parameter\n  fix: did you mean gateway.primary?",
    },
    Case {
        name: "kernel parameter without a value",
        setup: |t| {
            seed(t, "");
            t.cmdline("gateway.account");
        },
        code: "missing-value",
        says: "gateway.account from /proc/cmdline: has no value",
    },
    Case {
        name: "unknown credential",
        setup: |t| {
            seed(t, "");
            t.credential("gateway.acount", "a.example");
        },
        code: "unknown-credential",
        says: "error: credential gateway.acount: unknown credential name\n  fix: did you mean gateway.account?",
    },
    Case {
        name: "credential that is not text",
        setup: |t| {
            seed(t, "");
            let path = t.path(&format!(
                "{}/gateway.primary",
                gateway_test_support::tree::CREDENTIALS_DIR
            ));
            t.credential("gateway.primary", "");
            std::fs::write(path, [0xff, 0xfe, 0x00]).unwrap();
        },
        code: "credential-not-text",
        says: "credential gateway.primary: is not UTF-8 text",
    },
    Case {
        name: "seed that is a directory",
        setup: |t| {
            seed(t, "");
            std::fs::create_dir_all(t.path("/boot/gateway-seed.toml")).unwrap();
        },
        code: "seed-unreadable",
        says: "error: /boot/gateway-seed.toml: reading: is a directory",
    },
    Case {
        name: "seed that is too large",
        setup: |t| {
            seed(t, "");
            t.file("/boot/gateway-seed.toml", "#".repeat(100 * 1024));
        },
        code: "seed-too-large",
        says: "/boot/gateway-seed.toml: larger than 65536 bytes",
    },
    Case {
        name: "seed that is not UTF-8",
        setup: |t| {
            seed(t, "");
            t.file("/boot/gateway-seed.toml", b"account = \"\xff\"\n");
        },
        code: "seed-not-text",
        says: "/boot/gateway-seed.toml: not UTF-8 text (byte 11)",
    },
    Case {
        name: "GWSEED device that is not FAT",
        setup: |t| {
            seed(t, "");
            t.file("/dev/vdc", vec![0u8; 8192]);
            std::fs::create_dir_all(t.path("/dev/disk/by-label")).unwrap();
            std::os::unix::fs::symlink("../../vdc", t.path("/dev/disk/by-label/GWSEED")).unwrap();
        },
        code: "gwseed-unreadable",
        says: "error: /dev/vdc: reading seed.toml: not a FAT filesystem",
    },
    Case {
        name: "API key on the kernel command line (a warning)",
        setup: |t| {
            seed(t, "");
            t.cmdline("gateway.api_key=gwk_0123456789abcdef");
        },
        code: "secret-on-cmdline",
        says: "warning: gateway.api_key from /proc/cmdline: the API key is on the kernel command line",
    },
    Case {
        name: "seed with a key readable by others (a warning)",
        setup: |t| {
            t.file_mode("/etc/gateway/seed.toml", GOOD, 0o644);
        },
        code: "seed-readable",
        says: "warning: /etc/gateway/seed.toml: holds the API key (line 3) but is readable by other users (mode 0644)\n  fix: chmod 600 /etc/gateway/seed.toml",
    },
    Case {
        name: "two seed files that disagree (a warning)",
        setup: |t| {
            seed(t, "");
            t.gwseed(&[(
                "seed.toml",
                b"account = \"other.example\"\napi-key = \"gwk_fedcba9876543210\"\n",
            )]);
        },
        code: "seeds-disagree",
        says: "warning: account: the seed files disagree on account: /etc/gateway/seed.toml line 2 says \"acme.example\", /dev/vdb1:seed.toml line 1 says \"other.example\"\n  fix: /etc/gateway/seed.toml line 2 wins",
    },
];

#[test]
fn every_validation_problem_is_reported_with_origin_and_fix() {
    for case in CASES {
        let mut tree = Tree::new();
        (case.setup)(&mut tree);
        let text = tree.run(&["check"]);
        assert!(
            text.stdout.contains(case.says),
            "{}: report lacks {:?}:\n{}",
            case.name,
            case.says,
            text.all()
        );
        let json = tree.run(&["check", "--json"]);
        let report = json.json();
        let codes: Vec<&str> = problem_codes(&report);
        assert!(
            codes.contains(&case.code),
            "{}: codes {codes:?} lack {}",
            case.name,
            case.code
        );
        let is_warning = case.says.starts_with("warning:");
        assert_eq!(
            text.code,
            if is_warning { 0 } else { 65 },
            "{}: exit code\n{}",
            case.name,
            text.all()
        );
        assert_eq!(json.code, text.code, "{}", case.name);
        assert_eq!(report["valid"], is_warning, "{}", case.name);
        assert!(
            text.stderr.is_empty(),
            "{}: stderr {:?}",
            case.name,
            text.stderr
        );
    }
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut tree = Tree::new();
    tree.cmdline("gateway.account=acme..example gateway.primery=x")
        .file(
            "/etc/gateway/seed.toml",
            "primary = \"p.example:0\"\ndns-check = \"maybe\"\ncolour = 1\n",
        );
    let run = tree.run(&["check", "--json"]);
    assert_eq!(run.code, 65);
    let report = run.json();
    let mut codes: Vec<&str> = problem_codes(&report);
    codes.sort();
    assert_eq!(
        codes,
        [
            "api-key-missing",
            "invalid-account",
            "invalid-dns-check",
            "invalid-primary",
            "unknown-key",
            "unknown-parameter"
        ]
    );
    assert_eq!(report["errors"], 6);
}

#[test]
fn nothing_given_at_all_exits_66_with_one_clear_message() {
    let tree = Tree::new();
    let run = tree.run(&["check"]);
    assert_eq!(run.code, 66, "{}", run.all());
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(
        run.stdout.starts_with(
            "no provisioning settings found: give gateway.primary= and gateway.account="
        )
    );
    // As `provision` says it: the installer is one of the ways.
    assert!(
        run.stdout
            .trim_end()
            .ends_with("or run `gateway-firstboot install`"),
        "{}",
        run.stdout
    );
    // Vendor defaults alone are not a seed.
    let mut tree = Tree::new();
    tree.file(
        "/usr/lib/gateway-firstboot/defaults.toml",
        "api-key = \"DEFAULTrestrictedKEY0001\"\n",
    );
    assert_eq!(tree.run(&["check"]).code, 66);
}

#[test]
fn usage_errors_exit_64_and_help_documents_exit_codes() {
    let tree = Tree::new();
    assert_eq!(tree.run(&["check", "--no-such-flag"]).code, 64);
    assert_eq!(tree.run(&[]).code, 64);
    let help = tree.run(&["--help"]);
    assert_eq!(help.code, 0);
    for code in [
        "64  usage error",
        "65  invalid settings",
        "66  no settings found",
    ] {
        assert!(help.stdout.contains(code), "--help lacks {code:?}");
    }
}

#[test]
fn flags_override_and_the_key_file_is_read() {
    let mut tree = Tree::new();
    tree.file("/etc/gateway/seed.toml", GOOD)
        .file("/keyfile", "gwk_FROMFLAGFILE000001\n");
    let key_file = tree.path("/keyfile");
    let run = tree.run(&[
        "check",
        "--primary",
        "[2001:db8::1]:8443",
        "--api-key-file",
        key_file.to_str().unwrap(),
        "--nameserver",
        "192.0.2.53",
        "--insecure-http",
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("primary https://[2001:db8::1]:8443/"),
        "{}",
        run.stdout
    );
    // check and install (scripted: no terminal) give the same error and the same status.
    for command in [
        &["check"][..],
        &[
            "install",
            "--primary",
            "p.example",
            "--account",
            "a.example",
        ],
    ] {
        let run = tree.run(&[command, &["--api-key-file", "/nonexistent/key"]].concat());
        assert_eq!(run.code, 65, "{command:?}: {}", run.all());
        assert!(
            run.stdout.contains(
                "error: --api-key-file flag: reading /nonexistent/key: No such file or directory"
            ),
            "{command:?}: {}",
            run.stdout
        );
    }
}

/// The key must not appear in any output of any command, valid or not, at any verbosity.
#[test]
fn the_api_key_never_reaches_any_output() {
    const KEY: &str = "gwkSECRETb64XyZ0123456789";
    const BAD_KEY: &str = "gwk SECRET with spaces 0123";
    let setups: Vec<fn(&mut Tree)> = vec![
        |t| {
            t.file_mode(
                "/etc/gateway/seed.toml",
                format!("primary = \"p.example\"\naccount = \"a.example\"\napi-key = \"{KEY}\"\n"),
                0o644,
            );
        },
        |t| {
            t.file(
                "/etc/gateway/seed.toml",
                format!("api-key = \"{BAD_KEY}\"\n"),
            );
            t.file("/boot/gateway-seed.toml", format!("api-key = \"{KEY}\"\n"));
        },
        |t| {
            t.cmdline(&format!(
                "gateway.api_key={KEY} gateway.api-key=\"{BAD_KEY}\""
            ));
        },
        |t| {
            t.credential("gateway.api_key", KEY);
            t.credential("gateway.seed", &format!("api-key = \"{KEY}\nunterminated"));
        },
        |t| {
            t.gwseed(&[("seed.toml", format!("api-key = {KEY}\n").as_bytes())]);
            t.file(
                "/usr/lib/gateway-firstboot/defaults.toml",
                format!("api-key = [\"{KEY}\"]\n"),
            );
        },
        |t| {
            t.file(
                "/etc/gateway/seed.toml",
                format!("api-key = \"{KEY}\"\napi-key = \"{KEY}\"\n"),
            );
        },
    ];
    for (i, setup) in setups.iter().enumerate() {
        let mut tree = Tree::new();
        setup(&mut tree);
        for args in [
            &["show-config"][..],
            &["show-config", "--json"],
            &["check"],
            &["check", "--json"],
            &["-vvv", "check"],
            &["-vvv", "show-config"],
        ] {
            let run = tree.run(args);
            let all = run.all();
            for secret in [KEY, BAD_KEY, "SECRET"] {
                assert!(
                    !all.contains(secret),
                    "setup {i}, {args:?}: output shows the key:\n{all}"
                );
            }
        }
    }
}
