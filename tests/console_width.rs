//! `install` on a console of a given size: a pseudo-terminal whose window size is set (24x80,
//! as a VGA or serial console; 24x40 for a prompt wider than the row), its output rendered by
//! a terminal emulator (vt100), and the screen compared. No row is wrapped by the terminal (a
//! word split across rows), failure codes and fingerprints stay whole on one row, and typing a
//! long masked key redraws the same row without moving the cursor to a new one.

use gateway_test_support::sim::Sim;
use gateway_test_support::{Tree, acme_appliance, appliance_tree, wait_exit};
use nix::pty::{Winsize, openpty};
use std::fs::File;
use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every wait's deadline (the primary answers in milliseconds).
const WAIT: Duration = Duration::from_secs(30);

const SITE: &str = "primary-ca = \"/etc/gateway/primary-ca.pem\"\ndns-check = \"off\"\n\
                    connect-timeout = \"2s\"\nrequest-timeout = \"3s\"\ndeadline = \"10s\"\n";

const HOME: &str = "\x1b[H";
const DELETE: &str = "\x1b[3~";

/// What the terminal received, and the screen it makes.
struct Term {
    parser: vt100::Parser,
    raw: Vec<u8>,
}

impl Term {
    fn screen(&self) -> &vt100::Screen {
        self.parser.screen()
    }

    /// The visible rows.
    fn rows(&self) -> Vec<String> {
        let cols = self.screen().size().1.get();
        self.screen().rows(0, cols).collect()
    }

    /// Every row since the start (scrollback, then the screen), and whether the terminal
    /// wrapped it onto the next row because it was full.
    fn history(&mut self) -> Vec<(String, bool)> {
        let cols = self.screen().size().1.get();
        let rows = self.screen().size().0.get();
        let screen = self.parser.screen_mut();
        screen.set_scrollback(usize::MAX);
        let back = screen.scrollback();
        let mut out = Vec::new();
        for i in 0..back + usize::from(rows) {
            let (offset, row) = if i < back {
                (back - i, 0)
            } else {
                (0, (i - back) as u16)
            };
            screen.set_scrollback(offset);
            let text = screen
                .rows(0, cols)
                .nth(usize::from(row))
                .unwrap_or_default();
            out.push((text, screen.row_wrapped(row)));
        }
        screen.set_scrollback(0);
        while out.last().is_some_and(|(t, _)| t.is_empty()) {
            out.pop();
        }
        out
    }

    /// How many times the line editor has drawn its row (each drawing erases to the end).
    fn drawings(&self) -> usize {
        self.raw.windows(3).filter(|w| w == b"\x1b[K").count()
    }
}

/// The installer on a fresh pseudo-terminal of `rows` x `cols`.
struct Console {
    child: Child,
    master: File,
    term: Arc<Mutex<Term>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Console {
    fn start(tree: &Tree, args: &[&str], rows: u16, cols: u16) -> Console {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = openpty(Some(&size), None).expect("openpty");
        let slave = || Stdio::from(pty.slave.try_clone().expect("dup"));
        let mut cmd = tree.command(&[&["install"], args].concat());
        cmd.env("TERM", "vt100")
            .env_remove("COLUMNS")
            .stdin(slave())
            .stdout(slave())
            .stderr(slave());
        let child = cmd.spawn().expect("spawning the installer on the pty");
        // Only the installer holds the terminal now: reading ends when it exits.
        drop(cmd);
        drop(pty.slave);
        let master = File::from(pty.master);
        let term = Arc::new(Mutex::new(Term {
            parser: vt100::Parser::new(
                NonZeroU16::new(rows).unwrap(),
                NonZeroU16::new(cols).unwrap(),
                1000,
            ),
            raw: Vec::new(),
        }));
        let mut input = master.try_clone().expect("dup");
        let shared = Arc::clone(&term);
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = input.read(&mut buf) {
                let mut t = shared.lock().unwrap();
                t.raw.extend_from_slice(&buf[..n]);
                t.parser.process(&buf[..n]);
            }
        });
        Console {
            child,
            master,
            term,
            reader: Some(reader),
        }
    }

    fn send(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).expect("typing");
    }

    /// Waits until `done` holds for the terminal; fails showing the screen if it does not.
    fn wait(&self, what: &str, done: impl Fn(&Term) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            {
                let t = self.term.lock().unwrap();
                if done(&t) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!("waiting for {what}; the screen:\n{}", t.rows().join("\n"));
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `text` is on the screen.
    fn expect(&self, text: &str) {
        self.wait(&format!("{text:?} on the screen"), |t| {
            t.rows().iter().any(|r| r.contains(text))
        });
    }

    /// Waits for the exit status; then the whole output is rendered.
    fn finish(mut self) -> (i32, Term) {
        let code = wait_exit(&mut self.child, WAIT).expect("the installer did not exit");
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        let term = Arc::try_unwrap(self.term)
            .ok()
            .expect("reader done")
            .into_inner()
            .unwrap();
        (code, term)
    }
}

/// Every row where the terminal had to wrap: a word split across two rows.
fn wrapped_rows(history: &[(String, bool)]) -> Vec<String> {
    history
        .windows(2)
        .filter(|w| w[0].1)
        .map(|w| format!("{:?} / {:?}", w[0].0, w[1].0))
        .collect()
}

fn dump(history: &[(String, bool)]) -> String {
    history
        .iter()
        .map(|(t, wrapped)| format!("{}|{t}", if *wrapped { '~' } else { ' ' }))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Types `answer` key by key at a masked prompt: each key redraws the prompt's row, the cursor
/// stays on it, nothing else on the screen moves, and the row shows no character of the key.
fn type_masked(console: &mut Console, prompt: &str, answer: &str) {
    let (row, others, scrolled) = {
        let t = console.term.lock().unwrap();
        let (row, _) = t.screen().cursor_position();
        let mut rows = t.rows();
        rows.remove(usize::from(row));
        (row, rows, t.screen().scrollback())
    };
    for (i, key) in answer.chars().enumerate() {
        let before = console.term.lock().unwrap().drawings();
        console.send(&key.to_string());
        console.wait(&format!("key {} redrawn on row {row}", i + 1), |t| {
            let mut rows = t.rows();
            let now = rows.remove(usize::from(row));
            t.drawings() > before
                && t.screen().cursor_position().0 == row
                && rows == others
                && t.screen().scrollback() == scrolled
                && now.starts_with(prompt)
        });
        let t = console.term.lock().unwrap();
        let now = &t.rows()[usize::from(row)];
        let shown = &now[prompt.len()..];
        assert!(
            shown.contains('*')
                && shown
                    .chars()
                    .all(|c| "*<> ()".contains(c) || c.is_ascii_digit()),
            "key {}: the row shows {now:?}",
            i + 1
        );
    }
}

#[test]
fn on_an_80_column_console_no_word_is_split_and_a_long_key_stays_on_its_row() {
    let sim = Sim::start();
    let mut tree = acme_appliance(&sim);
    tree.file("/etc/gateway/seed.toml", SITE);
    let key = sim.ok(&["key", "add", "acme.example", "--kind", "restricted"]);
    // 60 characters: with the 48-character prompt, more than the row holds.
    let wrong_key = "Wrong-Key-0123456789-abcdefghij-0123456789-ABCDEFGHIJ-012345";
    assert_eq!(wrong_key.len(), 60);

    let mut console = Console::start(&tree, &[], 24, 80);
    console.expect("Primary server address: ");
    console.send(&format!("127.0.0.1:{}\r", sim.port));
    console.expect("Account domain name: ");
    console.send("nosuch.example\r");
    let prompt = "API key (Enter for the default restricted key): ";
    console.expect(prompt);
    type_masked(&mut console, prompt, wrong_key);
    console.expect("(60)");
    console.send("\r");
    console.expect("[key-rejected]");
    console.wait("the key asked again", |t| {
        let (row, _) = t.screen().cursor_position();
        t.rows()[usize::from(row)].starts_with(prompt)
    });
    console.send(&format!("{key}\r"));
    console.expect("[account-unknown]");
    console.expect("Account domain name: nosuch.example");
    console.send(&format!("{HOME}{}acme\r", DELETE.repeat(6)));
    let (code, mut term) = console.finish();
    let history = term.history();
    let screen = dump(&history);
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("Done: this server is registered as"),
        "{screen}"
    );

    // Nothing wrapped by the terminal: every line was broken at a space, within 80 columns.
    let wrapped = wrapped_rows(&history);
    assert!(
        wrapped.is_empty(),
        "rows split by the terminal:\n{}\n--- screen\n{screen}",
        wrapped.join("\n")
    );
    // Whole on one row: the introduction's words, failure codes, both fingerprints.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(tree.path("/var/lib/gateway-firstboot/state.json")).unwrap(),
    )
    .unwrap();
    let fingerprint = state["key_fingerprint"].as_str().unwrap().to_string();
    let short = fingerprint[7..19]
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-");
    let on_a_row = |text: &str| history.iter().any(|(row, _)| row.contains(text));
    for whole in [
        "changing anything.",
        "[key-rejected]",
        "[account-unknown]",
        fingerprint.as_str(),
        short.as_str(),
    ] {
        assert!(on_a_row(whole), "{whole:?} is not on one row:\n{screen}");
    }
    // The error's continuation rows line up under its text, the fix's under its own.
    let error = history
        .iter()
        .position(|(row, _)| row.starts_with("  error: the primary has no account"))
        .unwrap_or_else(|| panic!("no account-unknown error:\n{screen}"));
    let fix = error
        + history[error..]
            .iter()
            .position(|(row, _)| row.starts_with("  fix: "))
            .unwrap_or_else(|| panic!("no fix after the error:\n{screen}"));
    assert!(fix > error + 1, "the error fits one row?\n{screen}");
    for (row, _) in &history[error + 1..fix] {
        assert!(
            row.starts_with(&" ".repeat(9)) && !row.starts_with(&" ".repeat(10)),
            "{row:?} is not under the error's text:\n{screen}"
        );
    }
    // The key was never shown.
    for secret in [key.as_str(), wrong_key, &wrong_key[..10]] {
        assert!(!screen.contains(secret), "key shown:\n{screen}");
    }
}

#[test]
fn a_prompt_wider_than_the_row_is_on_its_own_rows_and_the_answer_edits_below() {
    let tree = appliance_tree("Default-Key-0123456789", "");
    let mut console = Console::start(
        &tree,
        &["--primary", "primary.example", "--account", "acme.example"],
        24,
        40,
    );
    // "API key (Enter for the default restricted key): " is 48 columns.
    console.expect("restricted key):");
    console.wait("the cursor at the start of the row below the prompt", |t| {
        let (row, col) = t.screen().cursor_position();
        row > 0 && col == 0 && t.rows()[usize::from(row - 1)].ends_with("restricted key):")
    });
    type_masked(&mut console, "", &"k".repeat(50));
    console.send("\x03");
    let (code, mut term) = console.finish();
    let history = term.history();
    let screen = dump(&history);
    assert_eq!(code, 130, "{screen}");
    let wrapped = wrapped_rows(&history);
    assert!(
        wrapped.is_empty(),
        "rows split by the terminal:\n{}\n--- screen\n{screen}",
        wrapped.join("\n")
    );
    assert!(
        history
            .iter()
            .any(|(row, _)| row.starts_with("API key (Enter for the default")),
        "{screen}"
    );
}
