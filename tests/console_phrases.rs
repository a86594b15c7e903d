//! The boot harness waits for phrases on the serial console (the one live channel of a running
//! guest) and keeps them in one table, `CONSOLE` in tests/boot/harness.py. This test checks,
//! without booting, that every phrase of the agent's in that table still occurs in the agent's
//! source (outside its unit tests): a reworded message fails `cargo test` here rather than a
//! boot scenario after minutes of waiting. A `{name}` placeholder in a phrase must stand where
//! the source has a format argument (`{}`, `{id}`, `{:?}`).
//!
//! It also checks that the harness's `MESSAGE_IDS` (what scenarios read the agent's steps from
//! in the journal) are the agent's `MSG_*` constants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const HARNESS: &str = "tests/boot/harness.py";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The lines of the Python dict literal `NAME = {` … `}` in `text`, without blanks and comments.
fn dict_lines<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    let start = format!("{name} = {{");
    let mut lines = text.lines().skip_while(|l| l.trim_end() != start);
    assert!(lines.next().is_some(), "{HARNESS} has no `{start}`");
    lines
        .take_while(|l| l.trim_end() != "}")
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect()
}

/// `"name": "value",` entries; any other line fails (the table must stay this simple).
fn entries(text: &str, name: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for line in dict_lines(text, name) {
        let parsed = line
            .strip_prefix('"')
            .and_then(|l| l.strip_suffix("\","))
            .and_then(|l| l.split_once("\": \""))
            .filter(|(k, v)| !k.contains('"') && !v.contains('"') && !v.contains('\\'));
        let Some((key, value)) = parsed else {
            panic!(
                "{HARNESS}: {name}: write one `\"name\": \"value\",` a line, no backslash: {line}"
            );
        };
        assert!(
            map.insert(key.to_string(), value.to_string()).is_none(),
            "{HARNESS}: {name}: {key} twice"
        );
    }
    assert!(!map.is_empty(), "{HARNESS}: {name} is empty");
    map
}

/// The names in `NOT_THE_AGENT = {"a", "b"}`.
fn not_the_agent(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("NOT_THE_AGENT = {"))
        .unwrap_or_else(|| panic!("{HARNESS} has no NOT_THE_AGENT"));
    line.trim_end_matches('}')
        .split(',')
        .map(|n| n.trim().trim_matches('"').to_string())
        .filter(|n| !n.is_empty())
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Source text as a string literal's content reads: a `\` line continuation joined, the
/// escapes `\n`, `\t`, `\x20` made spaces, every run of whitespace one space (the console
/// wraps lines; the harness compares with whitespace runs made single spaces too).
fn normalize(source: &str) -> String {
    let mut joined = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(at) = rest.find("\\\n") {
        joined.push_str(&rest[..at]);
        rest = rest[at + 2..].trim_start_matches([' ', '\t']);
    }
    joined.push_str(rest);
    let spaced = joined
        .replace("\\n", " ")
        .replace("\\t", " ")
        .replace("\\x20", " ");
    spaced.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The agent's source without its unit tests (a `#[cfg(test)] mod` runs to the end of its
/// file here), normalized, all files joined.
fn agent_source() -> String {
    let mut files = Vec::new();
    rust_files(&repo().join("src"), &mut files);
    assert!(
        files.len() > 10,
        "found only {} files under src/",
        files.len()
    );
    let mut all = String::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let code = match text.find("#[cfg(test)]\nmod ") {
            Some(at) => &text[..at],
            None => &text[..],
        };
        all.push_str(&normalize(code));
        all.push('\n');
    }
    all
}

#[derive(Debug, PartialEq)]
enum Piece {
    Text(String),
    Hole,
}

/// A phrase as literal text and placeholders (`{name}`), its whitespace runs single spaces.
fn pieces(phrase: &str) -> Vec<Piece> {
    let flat = phrase.split_whitespace().collect::<Vec<_>>().join(" ");
    // Keep a leading or trailing space: the phrase may end in a prompt's "…: ".
    let flat = match (phrase.starts_with(' '), phrase.ends_with(' ')) {
        (true, true) => format!(" {flat} "),
        (true, false) => format!(" {flat}"),
        (false, true) => format!("{flat} "),
        (false, false) => flat,
    };
    let mut out = Vec::new();
    let mut rest = flat.as_str();
    while let Some(open) = rest.find('{') {
        let close = rest[open..]
            .find('}')
            .unwrap_or_else(|| panic!("unclosed placeholder in {phrase:?}"))
            + open;
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_string()));
        }
        out.push(Piece::Hole);
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    out
}

/// Whether `pieces` match `text` at `at`: the literal text exactly, each placeholder a format
/// argument (`{` … `}` with no brace inside).
fn matches_at(text: &str, at: usize, pieces: &[Piece]) -> bool {
    let Some((first, rest)) = pieces.split_first() else {
        return true;
    };
    let here = &text[at..];
    match first {
        Piece::Text(t) => here.starts_with(t.as_str()) && matches_at(text, at + t.len(), rest),
        Piece::Hole => {
            let Some(inner) = here.strip_prefix('{') else {
                return false;
            };
            match inner.find(['{', '}']) {
                Some(end) if inner.as_bytes()[end] == b'}' => {
                    matches_at(text, at + 1 + end + 1, rest)
                }
                _ => false,
            }
        }
    }
}

/// Whether `phrase` occurs in `source` (normalized), placeholders where format arguments are.
fn occurs(phrase: &str, source: &str) -> bool {
    let pieces = pieces(phrase);
    assert!(
        pieces
            .iter()
            .any(|p| matches!(p, Piece::Text(t) if !t.trim().is_empty())),
        "{phrase:?} has no text of its own to look for"
    );
    // Start where the first literal text is found (backing up over leading placeholders).
    let lead = pieces.iter().take_while(|p| **p == Piece::Hole).count();
    let Piece::Text(anchor) = &pieces[lead] else {
        unreachable!()
    };
    source.match_indices(anchor.as_str()).any(|(at, _)| {
        // The leading placeholders must end right before the anchor: step back over them.
        let mut start = at;
        for _ in 0..lead {
            let before = &source[..start];
            let Some(inner) = before.strip_suffix('}') else {
                return false;
            };
            match inner.rfind(['{', '}']) {
                Some(open) if inner.as_bytes()[open] == b'{' => start = open,
                _ => return false,
            }
        }
        matches_at(source, start, &pieces)
    })
}

#[test]
fn every_console_phrase_of_the_agent_is_in_its_source() {
    let harness = std::fs::read_to_string(repo().join(HARNESS)).unwrap();
    let table = entries(&harness, "CONSOLE");
    let others = not_the_agent(&harness);
    for name in &others {
        assert!(
            table.contains_key(name),
            "NOT_THE_AGENT names {name:?}, which CONSOLE has not"
        );
    }
    let source = agent_source();
    let missing: Vec<String> = table
        .iter()
        .filter(|(name, _)| !others.contains(name))
        .filter(|(_, phrase)| !occurs(phrase, &source))
        .map(|(name, phrase)| format!("{name}: {phrase:?}"))
        .collect();
    assert!(
        missing.is_empty(),
        "console phrases of {HARNESS} that the agent's source (src/, without unit tests) no \
         longer has; reword them there, or put the wording back:\n  {}",
        missing.join("\n  ")
    );
    assert!(
        table.len() - others.len() >= 15,
        "only {} phrases checked",
        table.len() - others.len()
    );
}

#[test]
fn the_harness_reads_the_agents_message_ids() {
    let harness = std::fs::read_to_string(repo().join(HARNESS)).unwrap();
    let table = entries(&harness, "MESSAGE_IDS");
    let progress = std::fs::read_to_string(repo().join("src/progress.rs")).unwrap();
    let consts: BTreeMap<String, String> = progress
        .lines()
        .filter_map(|l| l.strip_prefix("pub const MSG_"))
        .filter_map(|l| l.split_once(": &str = \""))
        .map(|(name, rest)| {
            (
                name.to_lowercase(),
                rest.trim_end_matches("\";").to_string(),
            )
        })
        .collect();
    assert!(
        consts.len() >= 10,
        "found only {consts:?} in src/progress.rs"
    );
    assert_eq!(
        table, consts,
        "{HARNESS} MESSAGE_IDS against src/progress.rs MSG_*"
    );
}

#[test]
fn the_matching_can_fail() {
    let source = normalize(
        r#"say(&format!("handed off to the gateway (server {id}, key {})", short));
        let t = "waiting for DNS \
                 (dns-check = require)\n  fix: {}";
        format!("{} [{}]; attempt {attempt} failed")"#,
    );
    assert!(occurs(
        "handed off to the gateway (server {id}, key {short})",
        &source
    ));
    assert!(occurs(
        "waiting for DNS (dns-check = require) fix: {fix}",
        &source
    ));
    assert!(occurs("{message} [{code}]; attempt {n} failed", &source));
    // Reworded, a placeholder where the source has text, text where it has a placeholder.
    assert!(!occurs("handed over to the gateway", &source));
    assert!(!occurs("handed off to the {what} (server", &source));
    assert!(!occurs(
        "handed off to the gateway (server srv_1, key",
        &source
    ));
    assert!(!occurs("{message} ({code}); attempt", &source));
    // Test code does not count.
    let with_test = "fn a() {}\n#[cfg(test)]\nmod tests { const S: &str = \"only in a test\"; }";
    let code = &with_test[..with_test.find("#[cfg(test)]\nmod ").unwrap()];
    assert!(!occurs("only in a test", &normalize(code)));
}
