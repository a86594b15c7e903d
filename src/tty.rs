//! A small line editor for the installer's questions, on the terminal that is standard input
//! and output: the answer can be edited in place (arrows, Home/End, Backspace, Delete, Ctrl-U,
//! Ctrl-W), a previous answer is offered as editable text, and a secret is shown as `*` only.
//! Plain ANSI sequences (carriage return, erase to end of line, cursor left), so it works on a
//! VGA console, a serial console and any terminal emulator.
//!
//! Prompt and answer stay on one row of the terminal, whatever its width: an answer longer
//! than the room after the prompt scrolls horizontally around the cursor, with `<` (or `>`)
//! at the edge where text is hidden, so every key press redraws the same row. A prompt that
//! leaves too little room is printed on rows of its own, wrapped at words, and the answer is
//! edited on the row below.

use crate::wrap;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, LocalFlags, SetArg, SpecialCharacterIndices, Termios};
use std::io::{self, IsTerminal, Write};
use std::os::fd::AsFd;
use std::time::Duration;

/// True when both standard input and standard output are a terminal.
pub fn interactive() -> bool {
    io::stdin().is_terminal() && io::stdout().is_terminal()
}

/// Waits (at most `limit`) until what was written to standard output has left the terminal.
/// A write to a serial console returns once the text is in the driver's buffer, and at 115200
/// baud a screenful takes a tenth of a second to go out; the setup unit's `TTYReset=` then
/// flushes what is still buffered when the process ends. So the setup's last words (what to do
/// next) would be cut off mid-sentence on a slow line, and on QEMU's emulated UART they were.
/// Bounded: a line held by flow control (Ctrl-S) must not keep the setup from ending.
pub fn drain_stdout(limit: Duration) {
    if !io::stdout().is_terminal() {
        return;
    }
    let _ = io::stdout().flush();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = termios::tcdrain(io::stdout().as_fd());
        let _ = done.send(());
    });
    let _ = wait.recv_timeout(limit);
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

/// Fewer columns than this left for the answer after the prompt: the prompt goes on rows of
/// its own and the answer is edited on the row below.
const MIN_ROOM: usize = 20;

/// What the answer looks like on screen, and where the cursor is in it: the text, or one `*`
/// a character (the count beyond [`MASK_SHOWN`], the cursor then at the end).
fn shown(line: &Line, masked: bool) -> (Vec<char>, usize) {
    if !masked {
        return (line.chars.clone(), line.cursor);
    }
    let n = line.chars.len();
    if n <= MASK_SHOWN {
        return (vec!['*'; n], line.cursor);
    }
    let text: Vec<char> = format!("{} ({n})", "*".repeat(MASK_SHOWN))
        .chars()
        .collect();
    let end = text.len();
    (text, end)
}

/// The part of an answer of `len` characters that is on screen, in `room` columns: from
/// `start` to `end`, with `<` before it when text is hidden on the left and `>` after it when
/// text is hidden on the right.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    start: usize,
    end: usize,
    left: bool,
    right: bool,
}

/// Scrolls an answer horizontally so that the cursor is on screen: the window stays where it
/// was (`start`) while the cursor is inside it, and moves as little as needed when it is not.
/// The cursor may sit one past the end, so the answer gets `room - 1` columns when it is all
/// shown. `room` is at least 3 (a marker, a character, a marker).
fn window(len: usize, cursor: usize, room: usize, start: usize) -> Window {
    let room = room.max(3);
    let cursor = cursor.min(len);
    if len < room {
        return Window {
            start: 0,
            end: len,
            left: false,
            right: false,
        };
    }
    // The text from `s` on fits, with the cursor cell after it, once `<` takes a column.
    let tail_fits = |s: usize| len - s < room - usize::from(s > 0);
    let mut start = start.min(cursor);
    if !tail_fits(start) && cursor + usize::from(start > 0) + 2 > start + room {
        // The cursor is past the right edge: `<`, text up to the cursor, the cursor, `>`.
        start = cursor + 3 - room;
    }
    // No empty columns at the end while text is hidden on the left.
    start = start.min(len + 2 - room);
    let left = start > 0;
    if tail_fits(start) {
        Window {
            start,
            end: len,
            left,
            right: false,
        }
    } else {
        Window {
            start,
            end: start + room - usize::from(left) - 1,
            left,
            right: true,
        }
    }
}

/// The prompt row as drawn: carriage return, prompt, the visible part of the answer (or of the
/// stars) between its scroll markers, erase the rest, and the cursor moved back to its place.
/// `room`: the columns left for the answer; `start`: where the window was, updated.
fn render(prompt: &str, line: &Line, masked: bool, room: usize, start: &mut usize) -> String {
    let (text, cursor) = shown(line, masked);
    let w = window(text.len(), cursor, room, *start);
    *start = w.start;
    let mut out = format!("\r{prompt}");
    if w.left {
        out.push('<');
    }
    out.extend(&text[w.start..w.end]);
    if w.right {
        out.push('>');
    }
    out.push_str("\x1b[K");
    let back = (w.end - cursor.min(w.end)) + usize::from(w.right);
    if back > 0 {
        out.push_str(&format!("\x1b[{back}D"));
    }
    out
}

/// The columns the answer has after `prompt` on a row of `width`, the last column kept free
/// (a character there makes some terminals wrap before the next one is even written).
fn room(prompt: &str, width: usize) -> usize {
    width.saturating_sub(1 + wrap::columns(prompt))
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

/// Why [`ask_unless`] stopped without an answer: `stop` said so (the error's inner value).
#[derive(Debug)]
pub struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the question was withdrawn")
    }
}

impl std::error::Error for Stopped {}

/// Whether an error is [`ask_unless`]'s [`Stopped`].
pub fn is_stopped(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<io::Error>()
        .and_then(|e| e.get_ref())
        .is_some_and(|inner| inner.is::<Stopped>())
}

/// Asks one question. `initial` is offered as editable text. `Ok(None)`: the person pressed
/// Ctrl-C (or Ctrl-D on an empty line). Calls `stop` about every second while it waits for a
/// key: when it returns true, the question is withdrawn (the line left as it is) with an error
/// holding [`Stopped`].
pub fn ask_unless(
    prompt: &str,
    initial: &str,
    masked: bool,
    stop: &mut dyn FnMut() -> bool,
) -> io::Result<Option<String>> {
    let width = || wrap::stdout_width().unwrap_or(wrap::DEFAULT_WIDTH);
    let mut line = Line::new(if masked { "" } else { initial });
    let mut out = io::stdout().lock();
    // A prompt too wide to leave room for the answer: on rows of its own, the answer below.
    let prompt = if room(prompt, width()) < MIN_ROOM {
        writeln!(out, "{}", wrap::fill(prompt.trim_end(), width()))?;
        ""
    } else {
        prompt
    };
    let raw = RawMode::enter()?;
    let mut start = 0;
    let mut draw = |out: &mut io::StdoutLock<'_>, line: &Line| {
        let drawn = render(prompt, line, masked, room(prompt, width()), &mut start);
        write!(out, "{drawn}")?;
        out.flush()
    };
    draw(&mut out, &line)?;
    let mut decoder = Decoder::default();
    // Unbuffered: a byte read ahead into a buffer would be invisible to poll().
    let input = io::stdin();
    let mut byte = [0u8; 1];
    let outcome = loop {
        if !key_within(&input, Duration::from_secs(1))? {
            if stop() {
                drop(raw);
                writeln!(out)?;
                out.flush()?;
                return Err(io::Error::other(Stopped));
            }
            continue;
        }
        let n = match nix::unistd::read(input.as_fd(), &mut byte) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        if n == 0 {
            break Outcome::Cancelled;
        }
        let Some(key) = decoder.feed(byte[0]) else {
            continue;
        };
        match line.apply(key) {
            Outcome::Editing => draw(&mut out, &line)?,
            done => break done,
        }
    };
    drop(raw);
    writeln!(out)?;
    out.flush()?;
    Ok((outcome == Outcome::Done).then(|| line.text()))
}

/// Whether `input` has a byte to read within `wait` (or is at its end, or in error: a read
/// then says which).
fn key_within(input: &impl AsFd, wait: Duration) -> io::Result<bool> {
    let millis = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(millis)) {
        Ok(0) => Ok(false),
        Ok(_) => Ok(true),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
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
        let drawn = render("API key: ", &line, true, 70, &mut 0);
        assert!(
            !drawn.contains("Secret") && drawn.contains(&"*".repeat(20)),
            "{drawn:?}"
        );
        let long = Line::new(&"k".repeat(100));
        assert!(render("", &long, true, 70, &mut 0).contains("(100)"));
        let plain = render(
            "P: ",
            &Line {
                chars: "abc".chars().collect(),
                cursor: 1,
            },
            false,
            20,
            &mut 0,
        );
        assert_eq!(plain, "\rP: abc\x1b[K\x1b[2D");
    }

    /// The columns a drawing takes on its row: what follows the carriage return, up to the
    /// erase.
    fn drawn_columns(drawn: &str) -> usize {
        let row = drawn.strip_prefix('\r').unwrap();
        row[..row.find("\x1b[K").unwrap()].chars().count()
    }

    #[test]
    fn a_long_answer_scrolls_within_the_row() {
        // The 48-column key prompt on an 80-column console: 31 columns for the stars.
        let prompt = "API key (Enter for the default restricted key): ";
        let room = room(prompt, 80);
        assert_eq!(room, 31);
        let mut line = Line::new("");
        let mut start = 0;
        for i in 1..=60 {
            line.apply(Key::Char('Z'));
            let drawn = render(prompt, &line, true, room, &mut start);
            assert!(drawn_columns(&drawn) < 80, "key {i}: {drawn:?}");
            assert!(!drawn.contains('\n') && !drawn.contains('Z'), "{drawn:?}");
        }
        let drawn = render(prompt, &line, true, room, &mut start);
        assert!(
            drawn.starts_with(&format!("\r{prompt}<****")) && drawn.contains(" (60)\x1b[K"),
            "{drawn:?}"
        );

        // Plain text: the end in view while typing, the start after Home; the window stays
        // put while the cursor moves inside it.
        let text = "https://primary.example.com:8443/with/a/long/path";
        let mut line = Line::new(text);
        let mut start = 0;
        let drawn = render("P: ", &line, false, 20, &mut start);
        assert_eq!(drawn, "\rP: <3/with/a/long/path\x1b[K");
        line.apply(Key::Left);
        let drawn = render("P: ", &line, false, 20, &mut start);
        assert_eq!(drawn, "\rP: <3/with/a/long/path\x1b[K\x1b[1D");
        line.apply(Key::Home);
        let drawn = render("P: ", &line, false, 20, &mut start);
        assert_eq!(drawn, "\rP: https://primary.exa>\x1b[K\x1b[20D");
        line.apply(Key::Right);
        let drawn = render("P: ", &line, false, 20, &mut start);
        assert_eq!(drawn, "\rP: https://primary.exa>\x1b[K\x1b[19D");
    }

    proptest::proptest! {
        #[test]
        fn the_cursor_is_always_inside_the_row(
            len in 0usize..200,
            cursor in 0usize..200,
            room in 0usize..100,
            start in 0usize..200,
        ) {
            let cursor = cursor.min(len);
            let w = window(len, cursor, room, start);
            let room = room.max(3);
            let drawn = usize::from(w.left) + (w.end - w.start) + usize::from(w.right);
            let column = usize::from(w.left) + cursor - w.start;
            proptest::prop_assert!(drawn <= room && column < room, "{:?}", w);
            proptest::prop_assert!(w.start <= cursor && cursor <= w.end && w.end <= len, "{:?}", w);
            proptest::prop_assert_eq!(w.left, w.start > 0);
            proptest::prop_assert_eq!(w.right, w.end < len);
            if len < room {
                proptest::prop_assert_eq!((w.start, w.end), (0, len));
            } else {
                // No column wasted: the row is full, or the cursor cell ends it.
                proptest::prop_assert!(drawn == room || (w.end == len && drawn == room - 1), "{:?}", w);
            }
            // Drawn again with the cursor where it is, the window does not move.
            proptest::prop_assert_eq!(window(len, cursor, room, w.start), w);
        }
    }
}
