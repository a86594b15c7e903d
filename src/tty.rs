//! A small line editor for the installer's questions, on the terminal that is standard input
//! and output: the answer can be edited in place (arrows, Home/End, Backspace, Delete, Ctrl-U,
//! Ctrl-W), a previous answer is offered as editable text, and a secret is shown as `*` only.
//! Plain ANSI sequences (carriage return, erase to end of line, cursor left), so it works on a
//! VGA console, a serial console and any terminal emulator.

use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
use std::io::{self, IsTerminal, Read, Write};

/// True when both standard input and standard output are a terminal.
pub fn interactive() -> bool {
    io::stdin().is_terminal() && io::stdout().is_terminal()
}

/// What one key press does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Backspace,
    Delete,
    Left,
    Right,
    Home,
    End,
    /// Ctrl-U: erase to the start of the line.
    KillStart,
    /// Ctrl-K: erase to the end of the line.
    KillEnd,
    /// Ctrl-W: erase the word before the cursor.
    KillWord,
    /// Ctrl-C.
    Interrupt,
    /// Ctrl-D.
    Eof,
    /// Anything else (unknown escape sequences, other control keys).
    Ignored,
}

/// Turns the bytes a terminal sends into keys: UTF-8 text, control keys, and the escape
/// sequences of the usual terminals (`ESC [ D`, `ESC O H`, `ESC [ 3 ~`, ...).
#[derive(Default)]
pub struct Decoder {
    pending: Vec<u8>,
}

impl Decoder {
    /// Feeds one byte; returns a key once the bytes so far make one.
    pub fn feed(&mut self, byte: u8) -> Option<Key> {
        self.pending.push(byte);
        let p = &self.pending;
        let key = match p[0] {
            0x1b => match p.get(1) {
                None => return None,
                Some(b'[') | Some(b'O') => {
                    let last = *p.last()?;
                    if p.len() < 3 || !(0x40..=0x7e).contains(&last) {
                        if p.len() > 16 {
                            Key::Ignored
                        } else {
                            return None;
                        }
                    } else {
                        match &p[2..] {
                            b"D" => Key::Left,
                            b"C" => Key::Right,
                            b"H" | b"1~" | b"7~" => Key::Home,
                            b"F" | b"4~" | b"8~" => Key::End,
                            b"3~" => Key::Delete,
                            _ => Key::Ignored,
                        }
                    }
                }
                Some(_) => Key::Ignored,
            },
            b'\r' | b'\n' => Key::Enter,
            0x7f | 0x08 => Key::Backspace,
            0x01 => Key::Home,
            0x05 => Key::End,
            0x02 => Key::Left,
            0x06 => Key::Right,
            0x15 => Key::KillStart,
            0x0b => Key::KillEnd,
            0x17 => Key::KillWord,
            0x03 => Key::Interrupt,
            0x04 => Key::Eof,
            b if b < 0x20 => Key::Ignored,
            _ => match std::str::from_utf8(p) {
                Ok(s) => Key::Char(s.chars().next()?),
                Err(e) if e.error_len().is_none() && p.len() < 4 => return None,
                Err(_) => Key::Ignored,
            },
        };
        self.pending.clear();
        Some(key)
    }
}

/// What an edit did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Editing,
    Done,
    Cancelled,
}

/// The line being edited and the cursor in it (in characters).
#[derive(Debug, Default, Clone)]
pub struct Line {
    pub chars: Vec<char>,
    pub cursor: usize,
}

impl Line {
    pub fn new(initial: &str) -> Line {
        let chars: Vec<char> = initial.chars().collect();
        Line {
            cursor: chars.len(),
            chars,
        }
    }

    pub fn text(&self) -> String {
        self.chars.iter().collect()
    }

    pub fn apply(&mut self, key: Key) -> Outcome {
        match key {
            Key::Char(c) => {
                self.chars.insert(self.cursor, c);
                self.cursor += 1;
            }
            Key::Enter => return Outcome::Done,
            Key::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.chars.remove(self.cursor);
            }
            Key::Delete if self.cursor < self.chars.len() => {
                self.chars.remove(self.cursor);
            }
            Key::Left => self.cursor = self.cursor.saturating_sub(1),
            Key::Right => self.cursor = (self.cursor + 1).min(self.chars.len()),
            Key::Home => self.cursor = 0,
            Key::End => self.cursor = self.chars.len(),
            Key::KillStart => {
                self.chars.drain(..self.cursor);
                self.cursor = 0;
            }
            Key::KillEnd => self.chars.truncate(self.cursor),
            Key::KillWord => {
                let mut start = self.cursor;
                while start > 0 && self.chars[start - 1].is_whitespace() {
                    start -= 1;
                }
                while start > 0 && !self.chars[start - 1].is_whitespace() {
                    start -= 1;
                }
                self.chars.drain(start..self.cursor);
                self.cursor = start;
            }
            Key::Interrupt => return Outcome::Cancelled,
            Key::Eof if self.chars.is_empty() => return Outcome::Cancelled,
            _ => {}
        }
        Outcome::Editing
    }
}

/// Most `*` a masked answer shows; longer answers show the count instead of more stars.
const MASK_SHOWN: usize = 40;

/// The prompt line as drawn: carriage return, prompt, answer (or stars), erase the rest, and
/// the cursor moved back to its place.
fn render(prompt: &str, line: &Line, masked: bool) -> String {
    let (shown, back) = if masked {
        let n = line.chars.len();
        let stars = "*".repeat(n.min(MASK_SHOWN));
        let shown = if n > MASK_SHOWN {
            format!("{stars} ({n})")
        } else {
            stars
        };
        (shown, 0)
    } else {
        (line.text(), line.chars.len() - line.cursor)
    };
    let mut out = format!("\r{prompt}{shown}\x1b[K");
    if back > 0 {
        out.push_str(&format!("\x1b[{back}D"));
    }
    out
}

/// The terminal in character-at-a-time mode without echo until dropped.
struct RawMode {
    saved: Termios,
}

impl RawMode {
    fn enter() -> io::Result<RawMode> {
        let stdin = io::stdin();
        let saved = termios::tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        // ISIG off: Ctrl-C arrives as a key, so the terminal is always put back.
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG | LocalFlags::IEXTEN);
        raw.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        raw.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Asks one question. `initial` is offered as editable text. `Ok(None)`: the person pressed
/// Ctrl-C (or Ctrl-D on an empty line).
pub fn ask(prompt: &str, initial: &str, masked: bool) -> io::Result<Option<String>> {
    let mut line = Line::new(if masked { "" } else { initial });
    let mut out = io::stdout().lock();
    let raw = RawMode::enter()?;
    write!(out, "{}", render(prompt, &line, masked))?;
    out.flush()?;
    let mut decoder = Decoder::default();
    let mut input = io::stdin().lock();
    let mut byte = [0u8; 1];
    let outcome = loop {
        if input.read(&mut byte)? == 0 {
            break Outcome::Cancelled;
        }
        let Some(key) = decoder.feed(byte[0]) else {
            continue;
        };
        match line.apply(key) {
            Outcome::Editing => {
                write!(out, "{}", render(prompt, &line, masked))?;
                out.flush()?;
            }
            done => break done,
        }
    };
    drop(raw);
    writeln!(out)?;
    out.flush()?;
    Ok((outcome == Outcome::Done).then(|| line.text()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(bytes: &[u8]) -> Vec<Key> {
        let mut d = Decoder::default();
        bytes.iter().filter_map(|b| d.feed(*b)).collect()
    }

    fn edit(initial: &str, bytes: &[u8]) -> (String, Outcome) {
        let mut line = Line::new(initial);
        for key in keys(bytes) {
            match line.apply(key) {
                Outcome::Editing => {}
                done => return (line.text(), done),
            }
        }
        (line.text(), Outcome::Editing)
    }

    #[test]
    fn decodes_text_control_keys_and_escape_sequences() {
        assert_eq!(
            keys("aé€\x1b[D\x1bOC\x1b[3~\x1b[1~\x1b[F\x7f\x15\r\x03".as_bytes()),
            vec![
                Key::Char('a'),
                Key::Char('é'),
                Key::Char('€'),
                Key::Left,
                Key::Right,
                Key::Delete,
                Key::Home,
                Key::End,
                Key::Backspace,
                Key::KillStart,
                Key::Enter,
                Key::Interrupt
            ]
        );
        assert_eq!(keys(b"\x1b[5~\xff"), vec![Key::Ignored, Key::Ignored]);
    }

    #[test]
    fn typos_are_corrected_in_place() {
        // "primray" -> move left over "ray", delete the "r", retype it after the "a".
        let (text, outcome) = edit(
            "",
            b"primray.example\x01\x1b[C\x1b[C\x1b[C\x1b[C\x1b[3~\x1b[Cr\r",
        );
        assert_eq!((text.as_str(), outcome), ("primary.example", Outcome::Done));
        let (text, _) = edit(
            "acme..example",
            b"\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x1b[D\x7f\r",
        );
        assert_eq!(text, "acme.example");
        let (text, _) = edit("old value", b"\x17\x17new\r");
        assert_eq!(text, "new");
        let (text, _) = edit("keep", b"\r");
        assert_eq!(text, "keep");
    }

    #[test]
    fn cancelling() {
        assert_eq!(edit("x", b"ab\x03").1, Outcome::Cancelled);
        assert_eq!(edit("", b"\x04").1, Outcome::Cancelled);
        assert_eq!(edit("x", b"\x04").1, Outcome::Editing, "Ctrl-D on text");
    }

    #[test]
    fn a_masked_answer_shows_only_stars() {
        let line = Line::new("SecretKey-0123456789");
        let drawn = render("API key: ", &line, true);
        assert!(
            !drawn.contains("Secret") && drawn.contains(&"*".repeat(20)),
            "{drawn:?}"
        );
        let long = Line::new(&"k".repeat(100));
        assert!(render("", &long, true).contains("(100)"));
        let plain = render(
            "P: ",
            &Line {
                chars: "abc".chars().collect(),
                cursor: 1,
            },
            false,
        );
        assert_eq!(plain, "\rP: abc\x1b[K\x1b[2D");
    }
}
