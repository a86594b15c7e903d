//! Tables in the docs that mirror the code list exactly what the code has.

use gateway_firstboot::exit;
use gateway_firstboot::failure::{Class, Code};
use std::collections::{BTreeMap, BTreeSet};

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The text under `heading`, up to the next `## ` heading.
fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    section.split("\n## ").next().unwrap_or_default()
}

/// The names in the first column of the table under `heading` (`| \`name\` | … |`).
fn table_names(doc: &str, heading: &str) -> BTreeSet<String> {
    section(doc, heading)
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_string()))
        .collect()
}

/// The rows of the table under `heading` whose first cell is a \`name\`, by name: the other
/// cells, trimmed. A name twice is an error.
fn table_rows(doc: &str, heading: &str) -> BTreeMap<String, Vec<String>> {
    let mut rows = BTreeMap::new();
    for line in section(doc, heading).lines() {
        let Some(row) = line.strip_prefix("| `") else {
            continue;
        };
        let mut cells = row.trim_end().trim_end_matches('|').split(" | ");
        let name = cells.next().unwrap_or_default().trim_end_matches('`');
        let cells = cells.map(|c| c.trim().to_string()).collect();
        assert!(
            rows.insert(name.to_string(), cells).is_none(),
            "{name} twice"
        );
    }
    rows
}

/// The exit statuses in a cell such as `69 / 75`.
fn statuses(cell: &str) -> BTreeSet<u8> {
    cell.split('/')
        .map(|s| s.trim().parse().unwrap_or_else(|e| panic!("{cell:?}: {e}")))
        .collect()
}

#[test]
fn the_failure_table_in_docs_provisioning_md_has_every_code_with_its_class_and_exit() {
    let rows = table_rows(&read("docs/provisioning.md"), "## Failures");
    let documented: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
    let codes: BTreeSet<&str> = Code::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        documented, codes,
        "docs/provisioning.md's failure table and failure::Code"
    );
    for &code in Code::ALL {
        let cells = &rows[code.as_str()];
        let [class, _meaning, exit] = cells.as_slice() else {
            panic!("{code}: {cells:?}");
        };
        assert_eq!(class, code.class().as_str(), "{code}'s class");
        let exits = statuses(exit);
        match code.class() {
            // The exit when it ends a command; nothing else.
            Class::Permanent => assert_eq!(exits, [code.exit_code()].into(), "{code}'s exit"),
            // Retried until the deadline (75); `check --online` ends at once, with exit_code.
            Class::Transient => assert!(
                exits.contains(&exit::TEMPFAIL)
                    && exits.is_subset(&[code.exit_code(), exit::TEMPFAIL].into()),
                "{code}'s exit: {exit:?}, not {} / {}",
                code.exit_code(),
                exit::TEMPFAIL
            ),
        }
    }
}

#[test]
fn docs_exit_codes_md_and_help_list_the_statuses_the_codes_give() {
    let given: BTreeSet<u8> = [exit::OK, exit::USAGE, exit::CANCELLED]
        .into_iter()
        .chain(Code::ALL.iter().map(|c| c.exit_code()))
        .collect();
    let doc = read("docs/exit-codes.md");
    let documented: BTreeSet<u8> = section(&doc, "# Exit status")
        .lines()
        .filter_map(|l| l.strip_prefix("| "))
        .filter_map(|l| l.split_once(" |").and_then(|(n, _)| n.parse().ok()))
        .collect();
    assert_eq!(documented, given, "docs/exit-codes.md's table");
    let help: BTreeSet<u8> = exit::HELP
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("status:"))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(help, given, "the exit status table of --help");
}

#[test]
fn the_units_do_not_restart_on_the_statuses_docs_exit_codes_md_calls_permanent() {
    let doc = read("docs/exit-codes.md");
    let sentence = doc
        .split("The permanent codes (")
        .nth(1)
        .and_then(|rest| rest.split_once(')'))
        .expect("docs/exit-codes.md names the permanent codes")
        .0;
    let permanent: BTreeSet<u8> = sentence
        .split(", ")
        .map(|n| n.parse().expect("a status"))
        .collect();
    let retried: BTreeSet<u8> = doc
        .split_once(" are retried")
        .expect("docs/exit-codes.md names the retried codes")
        .0
        .rsplit(". ")
        .next()
        .unwrap()
        .split([',', ' '])
        .filter_map(|n| n.parse().ok())
        .collect();
    // Every status a failure can give is either permanent or retried, never both or neither.
    let all: BTreeSet<u8> = Code::ALL.iter().map(|c| c.exit_code()).collect();
    for status in &all {
        assert!(
            permanent.contains(status) != retried.contains(status),
            "exit status {status}: permanent {permanent:?}, retried {retried:?} in docs/exit-codes.md"
        );
    }
    for unit in [
        "systemd/gateway-firstboot.service",
        "systemd/trust/gateway-firstboot-trust.service",
    ] {
        let listed: BTreeSet<u8> = read(unit)
            .lines()
            .find_map(|l| l.strip_prefix("RestartPreventExitStatus="))
            .unwrap_or_else(|| panic!("{unit} has no RestartPreventExitStatus="))
            .split_whitespace()
            .map(|n| n.parse().expect("a status"))
            .collect();
        assert_eq!(listed, permanent, "{unit}'s RestartPreventExitStatus=");
    }
}

#[test]
fn the_boot_scenarios_in_docs_testing_md_are_those_of_tests_boot_run() {
    let run = read("tests/boot/run");
    let table = run
        .split("SCENARIOS = {")
        .nth(1)
        .and_then(|t| t.split("\n}").next())
        .expect("SCENARIOS in tests/boot/run");
    let code: BTreeSet<String> = table
        .lines()
        .filter_map(|l| l.trim().strip_prefix('"'))
        .filter_map(|l| l.split_once('"').map(|(name, _)| name.to_string()))
        .collect();
    assert!(code.len() >= 9, "read {code:?} from tests/boot/run");
    let docs = table_names(&read("docs/testing.md"), "## The boot suite");
    assert_eq!(
        docs, code,
        "docs/testing.md's scenario table and tests/boot/run's SCENARIOS"
    );
}

#[test]
fn the_message_id_table_in_docs_provisioning_md_has_every_message_id_of_the_agent() {
    let source = read("src/progress.rs");
    let in_code: BTreeSet<String> = source
        .lines()
        .filter(|l| l.starts_with("pub const MSG_"))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_string)
        .collect();
    assert!(in_code.len() >= 17, "{in_code:?}");
    for id in &in_code {
        assert!(
            id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{id} is not a 128-bit MESSAGE_ID"
        );
    }
    let doc = read("docs/provisioning.md");
    let documented: BTreeSet<String> = section(&doc, "## Where progress shows")
        .lines()
        .filter(|l| l.trim_start().starts_with('|'))
        .filter_map(|l| l.rsplit('`').nth(1))
        .filter(|id| id.len() == 32)
        .map(str::to_string)
        .collect();
    assert_eq!(
        documented, in_code,
        "docs/provisioning.md's MESSAGE_ID table"
    );
}

#[test]
fn the_settings_table_in_docs_seed_md_has_every_setting() {
    use gateway_firstboot::settings::Key;
    let doc = read("docs/seed.md");
    let documented = table_names(&doc, "## The seed file");
    let keys: BTreeSet<String> = Key::ALL.iter().map(|k| k.name().to_string()).collect();
    assert_eq!(documented, keys, "docs/seed.md's table against Key::ALL");
    let cmdline = section(&doc, "## Kernel command line");
    for key in Key::ALL {
        let param = format!("`gateway.{}=", key.param_name());
        assert!(
            cmdline.contains(&param),
            "docs/seed.md does not name {param}`"
        );
    }
}
