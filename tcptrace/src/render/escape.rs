//! Process names are chosen by whoever runs the process: `prctl(PR_SET_NAME)`
//! accepts any bytes, so a name may carry terminal escapes or newlines that
//! would forge output lines. Every name printed as text goes through
//! [`escape`].

use std::{borrow::Cow, fmt::Write as _};

/// Escapes control characters and other invisible or direction-changing
/// characters as `\n`, `\t`, `\r`, `\xNN` or `\u{NNNN}`, and doubles
/// backslashes, so that the result is one line that shows what the bytes were.
/// Printable text (including non-ASCII letters) is kept, and borrowed when
/// nothing needs escaping.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| b != b'\\' && (b' '..0x7f).contains(&b)) {
        return Cow::Borrowed(s);
    }
    match s.char_indices().find(|&(_, c)| !is_plain(c)) {
        None => Cow::Borrowed(s),
        Some((i, _)) => {
            let mut out = String::with_capacity(s.len() + 8);
            out.push_str(&s[..i]);
            escape_into(&mut out, &s[i..]);
            Cow::Owned(out)
        }
    }
}

/// [`escape`], appended to `out`.
pub(crate) fn escape_into(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        i += plain_ascii_run(&bytes[i..]);
        let Some(&b) = bytes.get(i) else {
            break;
        };
        let c = if b.is_ascii() {
            if b != b'\\' && !b.is_ascii_control() {
                i += 1;
                continue;
            }
            char::from(b)
        } else {
            let c = s[i..].chars().next().expect("a character at a boundary");
            if is_plain(c) {
                i += c.len_utf8();
                continue;
            }
            c
        };
        out.push_str(&s[start..i]);
        i += c.len_utf8();
        start = i;
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
        }
    }
    out.push_str(&s[start..]);
}

/// [`escape`] of what was written to `buf` since `start`, in place: for
/// text made of parts some of which are names. Costs a scan when nothing
/// needs escaping (the usual case).
pub(crate) fn escape_from(buf: &mut String, start: usize) {
    if let Some(i) = first_to_escape(&buf[start..]) {
        let rest = buf.split_off(start + i);
        escape_into(buf, &rest);
    }
}

/// Where the first character that [`escape_into`] changes starts.
fn first_to_escape(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        i += plain_ascii_run(&bytes[i..]);
        let c = s[i..].chars().next()?;
        if !is_plain(c) {
            return Some(i);
        }
        i += c.len_utf8();
    }
    None
}

/// How many bytes at the start of `bytes` are printable ASCII other than a
/// backslash (never escaped), looked at eight at a time.
fn plain_ascii_run(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let has_zero = |w: u64| w.wrapping_sub(ONES) & !w & HIGH;
    let mut n = 0;
    for chunk in bytes.chunks_exact(8) {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // Flags a byte ≥ 0x80, < 0x20, DEL or a backslash (a flag can only
        // be false above a true one, so no flag means none).
        let special = (w & HIGH)
            | (w.wrapping_sub(0x20 * ONES) & !w & HIGH)
            | has_zero(w ^ (0x7f * ONES))
            | has_zero(w ^ (u64::from(b'\\') * ONES));
        if special != 0 {
            break;
        }
        n += 8;
    }
    n + bytes[n..]
        .iter()
        .take_while(|&&b| b != b'\\' && (b' '..0x7f).contains(&b))
        .count()
}

/// Printed as it is.
fn is_plain(c: char) -> bool {
    if c.is_ascii() {
        return c != '\\' && !c.is_ascii_control();
    }
    !(c.is_control() || is_invisible(c))
}

/// Format characters (Unicode category Cf), line/paragraph separators, and
/// non-characters: invisible, or able to reorder what follows on the line.
fn is_invisible(c: char) -> bool {
    matches!(c as u32,
        0x00ad
        | 0x0600..=0x0605
        | 0x061c
        | 0x06dd
        | 0x070f
        | 0x08e2
        | 0x180e
        | 0x200b..=0x200f
        | 0x2028..=0x202e
        | 0x2060..=0x2064
        | 0x2066..=0x206f
        | 0xfdd0..=0xfdef
        | 0xfeff
        | 0xfff9..=0xfffb
        | 0xe_0001
        | 0xe_0020..=0xe_007f
    ) || (c as u32) & 0xfffe == 0xfffe
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::{escape, escape_from, escape_into};

    #[test]
    fn escapes_terminal_escapes_newlines_and_backslashes() {
        assert_eq!(escape("evil\x1b[31m\n"), "evil\\x1b[31m\\n");
        assert_eq!(escape("a\\b"), "a\\\\b");
        assert_eq!(escape("tab\there\r"), "tab\\there\\r");
        assert_eq!(escape("\u{7f}\u{0}"), "\\x7f\\x00");
        assert_eq!(escape("\u{9b}"), "\\x9b", "C1 CSI");
    }

    #[test]
    fn escapes_invisible_and_bidi_characters() {
        assert_eq!(escape("ab\u{202e}cd"), "ab\\u{202e}cd");
        assert_eq!(escape("x\u{200b}"), "x\\u{200b}");
        assert_eq!(escape("\u{feff}"), "\\u{feff}");
        assert_eq!(escape("\u{2028}"), "\\u{2028}");
        assert_eq!(escape("\u{e0041}"), "\\u{e0041}");
        assert_eq!(escape("\u{1fffe}"), "\\u{1fffe}");
    }

    #[test]
    fn keeps_printable_text() {
        for s in [
            "python3",
            "nginx: worker",
            "kworker/0:1",
            "café",
            "进程",
            "\u{fffd}x",
        ] {
            assert_eq!(escape(s), s);
        }
    }

    #[test]
    fn borrows_when_nothing_needs_escaping_and_appends_the_same() {
        assert!(matches!(escape("nginx: worker"), Cow::Borrowed(_)));
        assert!(matches!(escape("进程"), Cow::Borrowed(_)));
        assert!(matches!(escape("a\\b"), Cow::Owned(_)));
        let all: String = (0u32..0x3000)
            .chain(0xe_0000..0xe_0100)
            .chain([0x1fffe, 0x10_ffff])
            .filter_map(char::from_u32)
            .collect();
        let mut out = String::from("x");
        escape_into(&mut out, &all);
        assert_eq!(out[1..], *escape(&all));
        // Each character on its own, as the old per-character escape did.
        let mut one_by_one = String::new();
        for c in all.chars() {
            one_by_one.push_str(&escape(c.encode_utf8(&mut [0; 4])));
        }
        assert_eq!(one_by_one, escape(&all));
        // In place, after what was written before.
        for s in [
            all.as_str(),
            "active open · closed by nginx[1] → FIN",
            "a\\b",
        ] {
            let mut out = String::from("\x1b kept ");
            let start = out.len();
            out.push_str(s);
            escape_from(&mut out, start);
            assert_eq!(out, format!("\x1b kept {}", escape(s)));
        }
    }

    #[test]
    fn plain_ascii_runs_stop_at_the_first_special_byte() {
        let plain = |b: u8| b != b'\\' && (b' '..0x7f).contains(&b);
        for special in [0u8, 0x1f, 0x7f, b'\\', 0x80, 0xff] {
            for at in 0..20 {
                let mut bytes = vec![b'a'; 20];
                bytes[at] = special;
                assert_eq!(super::plain_ascii_run(&bytes), at, "{special:#x} at {at}");
            }
        }
        let all: Vec<u8> = (0..=255).collect();
        for start in 0..256 {
            let want = all[start..].iter().take_while(|&&b| plain(b)).count();
            assert_eq!(super::plain_ascii_run(&all[start..]), want);
        }
        assert_eq!(super::plain_ascii_run(b"0123456789abcdef~ "), 18);
    }

    #[test]
    fn the_result_never_contains_a_control_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(char::is_control));
    }
}
