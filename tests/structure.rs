//! The shape of the source: no function in `src/` over 80 lines (docs/architecture.md). Long
//! functions are where copies drift and outcomes go untested; split them by what they decide.

use std::path::{Path, PathBuf};

const LIMIT: usize = 80;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Functions (`fn name`) with a body, and their length in lines from the `fn` line to the
/// closing brace at the same indentation (rustfmt's layout).
fn functions(text: &str) -> Vec<(String, usize, usize)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let indent = line.len() - line.trim_start().len();
        let code = line.trim_start();
        let code = code.strip_prefix("pub(crate) ").unwrap_or(code);
        let code = code.strip_prefix("pub ").unwrap_or(code);
        let code = code.strip_prefix("const ").unwrap_or(code);
        let code = code.strip_prefix("async ").unwrap_or(code);
        let Some(rest) = code.strip_prefix("fn ") else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let close = format!("{}}}", " ".repeat(indent));
        // A declaration without a body (in a trait) ends in `;` before any `{`.
        let body_start = lines[n..]
            .iter()
            .position(|l| l.contains('{') || l.trim_end().ends_with(';'));
        if body_start.is_none_or(|b| !lines[n + b].contains('{')) {
            continue;
        }
        if line.trim_end().ends_with('}') {
            continue; // one line
        }
        if let Some(end) = lines[n + 1..].iter().position(|l| l.trim_end() == close) {
            found.push((name, n + 1, end + 2));
        }
    }
    found
}

#[test]
fn no_function_in_src_is_longer_than_80_lines() {
    let mut files = Vec::new();
    rust_files(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &mut files,
    );
    assert!(files.len() > 10, "src/ has {} files", files.len());
    let mut long = Vec::new();
    let mut seen = 0;
    for file in &files {
        let text = std::fs::read_to_string(file).expect("reading a source file");
        for (name, line, length) in functions(&text) {
            seen += 1;
            if length > LIMIT {
                long.push(format!("{}:{line} {name}: {length} lines", file.display()));
            }
        }
    }
    assert!(
        seen > 100,
        "found only {seen} functions: the scan is broken"
    );
    assert!(long.is_empty(), "over {LIMIT} lines:\n{}", long.join("\n"));
}

#[test]
fn the_scan_measures_a_function_from_its_signature_to_its_brace() {
    let text = "fn a() {\n    x();\n}\n\n    pub async fn b(\n        y: u8,\n    ) -> u8 {\n        y\n    }\nfn c() {}\n";
    assert_eq!(
        functions(text),
        [("a".to_string(), 1, 3), ("b".to_string(), 5, 5)]
    );
}
