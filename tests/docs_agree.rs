//! Tables in the docs that mirror the code list exactly what the code has.

use std::collections::BTreeSet;

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR")))
        .unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

/// The names in the first column of the table under `heading` (`| \`name\` | … |`).
fn table_names(doc: &str, heading: &str) -> BTreeSet<String> {
    let section = doc
        .split(heading)
        .nth(1)
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_string()))
        .collect()
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
