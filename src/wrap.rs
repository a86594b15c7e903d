//! Console text that fits the terminal: lines broken at word boundaries to the terminal's
//! width, so that an 80-column VGA or serial console never splits a word, a failure code, a
//! fingerprint or a DNS record across two rows.
//!
//! **Where a line may break.** Only at an ASCII space. Everything between two spaces is one
//! token and is never cut: a fingerprint (`3F7A-91C2-0B4E`, `SHA256:` and 64 hex digits), a
//! URL, a `[failure-code]`. A token wider than the row goes on a row of its own, whole (the
//! terminal then wraps it, which is still better than cutting it where it would not be
//! found again).
//!
//! **Keeping words together.** Some text has spaces that must not break:
//! - a DNS record (`gw01.acme.test. IN A 10.77.5.10`) is recognised by its shape — a name with
//!   a dot, `IN`, a record type, the data — and kept on one row without the caller doing
//!   anything, wherever it appears in a message;
//! - anything else is glued by writing a no-break space ([`GLUE`], U+00A0) in place of the
//!   space; [`glue`] does that. It prints as an ordinary space, on a terminal or not.
//!
//! **Hanging indent.** The rows a line continues on are indented to its text, past its
//! leading spaces and label (`  error: `, `  fix: `, `gateway-firstboot: `: a word of letters,
//! digits and hyphens ending in a colon), so an error block reads as one; the indent is
//! dropped when it would take more than half the row.
//!
//! **Only on a terminal.** Text that goes to the journal, a pipe or a file is printed one line
//! a message as before ([`say`]): wrapping is for people reading a screen.
//!
//! Widths are counted in characters (not bytes): right for the ASCII, Latin and box text this
//! agent prints, approximate for double-width scripts.

use std::io::IsTerminal;

/// The width of a console that does not say (a serial console reports 0x0).
pub const DEFAULT_WIDTH: usize = 80;

/// The no-break space: a space a line is never broken at. Printed as an ordinary space.
pub const GLUE: char = '\u{a0}';

/// `text` with its spaces made no-break spaces: it stays on one row.
pub fn glue(text: &str) -> String {
    text.replace(' ', &GLUE.to_string())
}

/// The terminal's width from its window size (`TIOCGWINSZ`, 0 when unknown) and the `COLUMNS`
/// variable: the first that is a positive number, else [`DEFAULT_WIDTH`].
pub fn width_from(window_columns: Option<u16>, columns_var: Option<&str>) -> usize {
    window_columns
        .map(usize::from)
        .filter(|w| *w > 0)
        .or_else(|| {
            columns_var
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|w| *w > 0)
        })
        .unwrap_or(DEFAULT_WIDTH)
}

/// The width of the terminal standard output is, or `None` when it is not a terminal.
pub fn stdout_width() -> Option<usize> {
    let stdout = std::io::stdout();
    if !stdout.is_terminal() {
        return None;
    }
    let window = terminal_size::terminal_size_of(&stdout).map(|(w, _)| w.0);
    Some(width_from(window, std::env::var("COLUMNS").ok().as_deref()))
}

/// Prints one message (it may have several lines) on standard output: wrapped to the
/// terminal's width on a terminal, one line as given otherwise.
pub fn say(text: &str) {
    println!("{}", for_stdout(text));
}

/// `text` as [`say`] prints it.
pub fn for_stdout(text: &str) -> String {
    match stdout_width() {
        Some(width) => fill(text, width),
        None => text.replace(GLUE, " "),
    }
}

/// Every line of `text` wrapped to `width` columns (see the module documentation).
pub fn fill(text: &str, width: usize) -> String {
    text.split('\n')
        .flat_map(|line| wrap_line(line, width))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The width of `s` on a terminal, in columns (approximately: characters).
pub fn columns(s: &str) -> usize {
    s.chars().filter(|c| !c.is_control()).count()
}

/// One line (no `\n`) broken into rows of at most `width` columns, except a row that holds a
/// single token wider than that.
pub fn wrap_line(line: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let body = line.trim_start_matches(' ');
    // Leading spaces wider than the row are as good as a full row of them.
    let lead = (line.len() - body.len()).min(width);
    let tokens = glue_records(tokens(body));
    let hang = hanging_indent(lead, &tokens, width);
    let mut rows = Vec::new();
    let mut row = " ".repeat(lead);
    let mut used = lead;
    let mut empty = true;
    for token in &tokens {
        let (gap, word) = (columns(&token.gap), columns(&token.word));
        if word == 0 {
            // Trailing spaces: kept if they fit.
            if used + gap <= width {
                row.push_str(&token.gap);
                used += gap;
            }
            continue;
        }
        if empty || used + gap + word <= width {
            if !empty {
                row.push_str(&token.gap);
                used += gap;
            } else if used + word > width {
                // A token that does not fit after the indent: less indent, or none.
                used = width.saturating_sub(word).min(used);
                row = " ".repeat(used);
            }
            row.push_str(&token.word);
            used += word;
            empty = false;
            continue;
        }
        rows.push(row);
        used = hang.min(width.saturating_sub(word));
        row = " ".repeat(used);
        row.push_str(&token.word);
        used += word;
    }
    rows.push(row);
    rows.into_iter().map(|r| r.replace(GLUE, " ")).collect()
}

/// A word and the spaces before it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Token {
    gap: String,
    word: String,
}

/// The words of a line (no leading spaces) with the spaces before each; trailing spaces are a
/// token with an empty word.
fn tokens(body: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let word_start = rest.len() - rest.trim_start_matches(' ').len();
        let after_gap = &rest[word_start..];
        let word_len = after_gap.find(' ').unwrap_or(after_gap.len());
        out.push(Token {
            gap: rest[..word_start].to_string(),
            word: after_gap[..word_len].to_string(),
        });
        rest = &after_gap[word_len..];
    }
    out
}

/// The DNS record types a record line may name.
const RECORD_TYPES: [&str; 8] = ["A", "AAAA", "PTR", "CNAME", "TXT", "MX", "NS", "SRV"];

/// Joins the four words of a DNS record (`NAME IN TYPE DATA`) into one token.
fn glue_records(tokens: Vec<Token>) -> Vec<Token> {
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut i = 0;
    while i < tokens.len() {
        let is_record = i + 3 < tokens.len()
            && tokens[i].word.contains('.')
            && tokens[i + 1].word == "IN"
            && RECORD_TYPES.contains(&tokens[i + 2].word.as_str())
            && !tokens[i + 3].word.is_empty();
        if is_record {
            let mut word = tokens[i].word.clone();
            for t in &tokens[i + 1..i + 4] {
                word.push_str(&glue(&t.gap));
                word.push_str(&t.word);
            }
            out.push(Token {
                gap: tokens[i].gap.clone(),
                word,
            });
            i += 4;
        } else {
            out.push(tokens[i].clone());
            i += 1;
        }
    }
    out
}

/// The indent of a line's continuation rows: its leading spaces and label (`error:`), or
/// just the spaces when that is more than half the row.
fn hanging_indent(lead: usize, tokens: &[Token], width: usize) -> usize {
    let is_label = |w: &str| {
        w.strip_suffix(':').is_some_and(|name| {
            name.starts_with(|c: char| c.is_ascii_alphabetic())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
    };
    let hang = match tokens {
        [label, next, ..] if is_label(&label.word) && !next.word.is_empty() => {
            lead + columns(&label.word) + columns(&next.gap)
        }
        _ => lead,
    };
    if hang * 2 <= width {
        hang
    } else if lead * 2 <= width {
        lead
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn width_from_the_window_then_columns_then_80() {
        let table: [(Option<u16>, Option<&str>, usize); 7] = [
            (Some(100), Some("60"), 100),
            (Some(0), Some("60"), 60),
            (None, Some(" 132 "), 132),
            (Some(0), None, 80),
            (None, Some("0"), 80),
            (None, Some("wide"), 80),
            (None, None, 80),
        ];
        for (window, var, want) in table {
            assert_eq!(width_from(window, var), want, "{window:?} {var:?}");
        }
    }

    #[test]
    fn breaks_at_spaces_only_and_keeps_a_short_line_as_it_is() {
        let intro = "Edit an answer with the arrow keys; Enter accepts it; Ctrl-C quits without \
                     changing anything.";
        assert_eq!(
            wrap_line(intro, 80),
            [
                "Edit an answer with the arrow keys; Enter accepts it; Ctrl-C quits without",
                "changing anything."
            ]
        );
        assert_eq!(wrap_line("status:      ok  ", 80), ["status:      ok  "]);
        assert_eq!(wrap_line("", 80), [""]);
        assert_eq!(fill("a\n\nb", 80), "a\n\nb");
    }

    #[test]
    fn an_error_block_hangs_under_its_text() {
        let text = "  error: the primary has no account with the domain name nosuch.example \
                    [account-unknown]\n  fix: check the account domain name (Account settings on \
                    the primary show it) and try again";
        assert_eq!(
            fill(text, 80),
            "  error: the primary has no account with the domain name nosuch.example\n\
             \x20        [account-unknown]\n\
             \x20 fix: check the account domain name (Account settings on the primary show it)\n\
             \x20      and try again"
        );
        let line = "gateway-firstboot: warning: the DNS name gw01.acme.test does not resolve";
        assert_eq!(
            wrap_line(line, 58),
            [
                "gateway-firstboot: warning: the DNS name gw01.acme.test",
                "                   does not resolve"
            ]
        );
        // Too deep for the row: no hanging indent.
        assert_eq!(
            wrap_line(line, 36)[1],
            "name gw01.acme.test does not resolve"
        );
    }

    #[test]
    fn fingerprints_records_and_codes_stay_whole() {
        let fp = format!("SHA256:{}", "3f7a91c2".repeat(8));
        let rows = wrap_line(&format!("  key fingerprint: {fp}"), 80);
        assert_eq!(rows, ["  key fingerprint:".to_string(), format!("  {fp}")]);
        // Wider than the row: alone on a row, not cut, no indent.
        let rows = wrap_line(&format!("  fix: pin {fp} please"), 40);
        assert_eq!(
            rows,
            ["  fix: pin".to_string(), fp.clone(), "       please".into()]
        );

        let line = "gateway-firstboot: create this DNS record: gw01.acme.test. IN A 10.77.5.10";
        let rows = wrap_line(line, 60);
        assert_eq!(
            rows,
            [
                "gateway-firstboot: create this DNS record:",
                "                   gw01.acme.test. IN A 10.77.5.10"
            ]
        );
        let ptr = "delete 10.5.77.10.in-addr.arpa. IN PTR old.acme.test. now";
        assert!(
            wrap_line(ptr, 20)
                .iter()
                .any(|r| r == "10.5.77.10.in-addr.arpa. IN PTR old.acme.test."),
            "{:?}",
            wrap_line(ptr, 20)
        );
        // Not a record: words that merely contain IN.
        assert_eq!(wrap_line("log IN A moment", 8), ["log IN A", "moment"]);

        let glued = format!("press {} now", glue("Ctrl Alt Del"));
        assert_eq!(wrap_line(&glued, 12), ["press", "Ctrl Alt Del", "now"]);
        assert_eq!(fill(&glued, 80), "press Ctrl Alt Del now");
    }

    #[test]
    fn odd_widths_and_text_do_not_panic() {
        for width in [0, 1, 2, 5] {
            let rows = wrap_line("  error: ü€ 漢字 [x] aaaaaaaaaaaa  ", width);
            assert!(rows.iter().all(|r| !r.is_empty()), "{width}: {rows:?}");
        }
        assert_eq!(wrap_line("héllo wörld", 5), ["héllo", "wörld"]);
        assert_eq!(wrap_line("    ", 2), ["  "]);
    }

    fn words() -> impl Strategy<Value = Vec<String>> {
        let word = prop_oneof![
            "[a-zA-Z0-9äé€:\\[\\]().-]{1,12}",
            "[a-f0-9]{30,100}",
            Just("error:".to_string()),
            Just("IN".to_string()),
            Just("A".to_string()),
            Just("a.b.".to_string()),
            "[a-z]{1,5}\u{a0}[a-z]{1,5}",
        ];
        prop::collection::vec(word, 0..30)
    }

    proptest! {
        #[test]
        fn rows_fit_and_keep_every_word_in_order(
            lead in 0usize..12,
            words in words(),
            gaps in prop::collection::vec(1usize..4, 30),
            width in 0usize..100,
        ) {
            let mut line = " ".repeat(lead);
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    line.push_str(&" ".repeat(gaps[i]));
                }
                line.push_str(w);
            }
            let rows = wrap_line(&line, width);
            // What may not be broken: the words, DNS records and glued groups.
            let units: Vec<String> = glue_records(tokens(line.trim_start_matches(' ')))
                .iter()
                .map(|t| t.word.replace(GLUE, " "))
                .collect();
            for row in &rows {
                prop_assert!(
                    columns(row) <= width.max(1) || units.contains(row),
                    "{:?} is wider than {} and not one unit: {:?}", row, width, rows
                );
            }
            let given: Vec<String> = line.replace(GLUE, " ").split_whitespace().map(String::from).collect();
            let back: Vec<String> = rows.join(" ").split_whitespace().map(String::from).collect();
            prop_assert_eq!(given, back);
            if columns(&line) <= width {
                prop_assert_eq!(rows, vec![line.replace(GLUE, " ")]);
            }
        }
    }
}
