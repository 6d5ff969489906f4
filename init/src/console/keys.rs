//! Keys from the bytes a terminal sends: the Linux VT (TERM=linux), VT100/VT220 and xterm-like
//! serial terminals. Unknown escape sequences are dropped whole; nothing here can panic on input.

/// One key press.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    /// Ctrl and a letter (`Ctrl('l')`), other than Tab, Enter and Backspace.
    Ctrl(char),
    Enter,
    Backspace,
    Delete,
    Tab,
    BackTab,
    Esc,
    Up,
    Down,
    Left,
    Right,
    Home,
    End,
    PageUp,
    PageDown,
    /// F1 to F12.
    F(u8),
}

/// What a byte sequence starting with ESC is.
enum Parse {
    /// A whole sequence of this length; `None` when it is one we do not know.
    Done(usize, Option<Key>),
    /// Needs more bytes.
    Incomplete,
}

fn tilde_key(n: u32) -> Option<Key> {
    Some(match n {
        1 | 7 => Key::Home,
        3 => Key::Delete,
        4 | 8 => Key::End,
        5 => Key::PageUp,
        6 => Key::PageDown,
        11..=15 => Key::F((n - 10) as u8),
        17..=21 => Key::F((n - 11) as u8),
        23 | 24 => Key::F((n - 12) as u8),
        _ => return None,
    })
}

fn letter_key(b: u8) -> Option<Key> {
    Some(match b {
        b'A' => Key::Up,
        b'B' => Key::Down,
        b'C' => Key::Right,
        b'D' => Key::Left,
        b'H' => Key::Home,
        b'F' => Key::End,
        b'Z' => Key::BackTab,
        b'P'..=b'S' => Key::F(b - b'P' + 1),
        _ => return None,
    })
}

/// Parses an escape sequence; `bytes[0]` is ESC.
fn parse_escape(bytes: &[u8]) -> Parse {
    match bytes.get(1) {
        None => Parse::Incomplete,
        Some(b'O') => match bytes.get(2) {
            None => Parse::Incomplete,
            Some(&b) => Parse::Done(3, letter_key(b)),
        },
        Some(b'[') => {
            // The Linux console's F1-F5: ESC [ [ A..E.
            if bytes.get(2) == Some(&b'[') {
                return match bytes.get(3) {
                    None => Parse::Incomplete,
                    Some(&b @ b'A'..=b'E') => Parse::Done(4, Some(Key::F(b - b'A' + 1))),
                    Some(_) => Parse::Done(4, None),
                };
            }
            // CSI: parameter bytes 0x30-0x3f, then one final byte 0x40-0x7e.
            for (i, &b) in bytes.iter().enumerate().skip(2) {
                match b {
                    0x30..=0x3f if i < 16 => {}
                    0x40..=0x7e => {
                        let params = std::str::from_utf8(&bytes[2..i]).unwrap_or_default();
                        let first: Option<u32> =
                            params.split(';').next().and_then(|p| p.parse().ok());
                        let key = match b {
                            b'~' => first.and_then(tilde_key),
                            _ => letter_key(b),
                        };
                        return Parse::Done(i + 1, key);
                    }
                    // Not a CSI after all: drop what we have.
                    _ => return Parse::Done(i, None),
                }
            }
            Parse::Incomplete
        }
        // ESC and another key: Alt+key, or Esc typed right before it. Report the Esc.
        Some(_) => Parse::Done(1, Some(Key::Esc)),
    }
}

/// Turns terminal input into keys, keeping an incomplete sequence for the next read.
#[derive(Debug, Default)]
pub struct Decoder {
    pending: Vec<u8>,
    after_cr: bool,
}

impl Decoder {
    /// Decodes `bytes`; an unfinished escape sequence or UTF-8 character waits for more.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<Key> {
        self.pending.extend_from_slice(bytes);
        let mut keys = Vec::new();
        let mut at = 0;
        while at < self.pending.len() {
            let rest = &self.pending[at..];
            let b = rest[0];
            let (used, key) = match b {
                0x1b => match parse_escape(rest) {
                    Parse::Done(n, key) => (n, key),
                    Parse::Incomplete => break,
                },
                b'\r' => (1, Some(Key::Enter)),
                // A terminal sending CR LF for Enter gives one Enter.
                b'\n' if self.after_cr => (1, None),
                b'\n' => (1, Some(Key::Enter)),
                b'\t' => (1, Some(Key::Tab)),
                0x7f | 0x08 => (1, Some(Key::Backspace)),
                0x01..=0x1a => (1, Some(Key::Ctrl(char::from(b - 1 + b'a')))),
                0x00..=0x1f => (1, None),
                _ => {
                    let len = match b {
                        0xc0..=0xdf => 2,
                        0xe0..=0xef => 3,
                        0xf0..=0xf7 => 4,
                        _ => 1,
                    };
                    if rest.len() < len {
                        break;
                    }
                    let key = std::str::from_utf8(&rest[..len])
                        .ok()
                        .and_then(|s| s.chars().next())
                        .map(Key::Char);
                    (len, key)
                }
            };
            self.after_cr = b == b'\r';
            keys.extend(key);
            at += used;
        }
        self.pending.drain(..at);
        keys
    }

    /// Called when no more input came for a moment: a lone ESC was the Esc key.
    pub fn flush(&mut self) -> Vec<Key> {
        let keys = if self.pending == [0x1b] {
            vec![Key::Esc]
        } else {
            Vec::new()
        };
        self.pending.clear();
        keys
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use Key::*;

    #[test]
    fn sequences() {
        let cases: &[(&[u8], &[Key])] = &[
            (b"ab", &[Char('a'), Char('b')]),
            (b"\r", &[Enter]),
            (b"\r\n", &[Enter]),
            (b"\n\n", &[Enter, Enter]),
            (b"\x7f\x08\t", &[Backspace, Backspace, Tab]),
            (b"\x1b[A\x1b[B\x1b[C\x1b[D", &[Up, Down, Right, Left]),
            (b"\x1bOA\x1bOD", &[Up, Left]),
            (b"\x1b[5~\x1b[6~\x1b[3~", &[PageUp, PageDown, Delete]),
            (
                b"\x1b[1~\x1b[4~\x1b[H\x1b[F\x1bOH",
                &[Home, End, Home, End, Home],
            ),
            (
                b"\x1bOP\x1b[[A\x1b[[E\x1b[11~\x1b[15~",
                &[F(1), F(1), F(5), F(1), F(5)],
            ),
            (b"\x1b[17~\x1b[21~\x1b[24~", &[F(6), F(10), F(12)]),
            (b"\x1b[Z", &[BackTab]),
            (b"\x1b[1;5A", &[Up]),
            (b"\x1b[99~x", &[Char('x')]),
            (b"\x1b[?1;2c", &[]),
            (b"\x1bx", &[Esc, Char('x')]),
            (b"\x0c\x15", &[Ctrl('l'), Ctrl('u')]),
            ("é".as_bytes(), &[Char('é')]),
            (b"\xff\x00", &[Char('\u{ff}')][..0]),
        ];
        for (bytes, want) in cases {
            let mut d = Decoder::default();
            assert_eq!(d.feed(bytes), *want, "{bytes:?}");
        }
    }

    #[test]
    fn split_reads_and_a_lone_escape() {
        let mut d = Decoder::default();
        assert_eq!(d.feed(b"\x1b"), []);
        assert_eq!(d.feed(b"["), []);
        assert_eq!(d.feed(b"A"), [Up]);
        assert_eq!(d.feed(&"é".as_bytes()[..1]), []);
        assert_eq!(d.feed(&"é".as_bytes()[1..]), [Char('é')]);
        assert_eq!(d.feed(b"\x1b"), []);
        assert_eq!(d.flush(), [Esc]);
        assert_eq!(d.flush(), []);
        assert_eq!(d.feed(b"\x1b[12"), []);
        assert!(
            d.flush().is_empty(),
            "a cut-off sequence is dropped, not typed"
        );
        assert_eq!(d.feed(b"q"), [Char('q')]);
    }

    #[test]
    fn random_input_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut d = Decoder::default();
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let bytes = state.to_le_bytes();
            let n = (state % 9) as usize;
            d.feed(&bytes[..n]);
            if state.is_multiple_of(7) {
                d.flush();
            }
        }
        assert!(d.pending.len() < 32);
    }
}
