//! Process names are chosen by whoever runs the process: `prctl(PR_SET_NAME)`
//! accepts any bytes, so a name may carry terminal escapes or newlines that
//! would forge output lines. Every name printed as text goes through
//! [`escape`].

use std::fmt::Write as _;

/// Escapes control characters and other invisible or direction-changing
/// characters as `\n`, `\t`, `\r`, `\xNN` or `\u{NNNN}`, and doubles
/// backslashes, so that the result is one line that shows what the bytes were.
/// Printable text (including non-ASCII letters) is kept.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if c.is_control() || is_invisible(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
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
    use super::escape;

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
    fn the_result_never_contains_a_control_character() {
        let all: String = (0u32..0x3000).filter_map(char::from_u32).collect();
        assert!(!escape(&all).chars().any(char::is_control));
    }
}
