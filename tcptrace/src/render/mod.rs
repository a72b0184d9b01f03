//! Render: the last step of the pipeline. Turns records into a tcpstates-like
//! stream ([`View::Stream`]) and finished socket lives into ladders
//! ([`View::Sockets`]), as text or as JSON lines (schema: [`json`]), and
//! writes the exit summary ([`summary`]). The sentences about a socket come
//! from [`words`]: the stages before only hand over codes and fields.
//!
//! Every process name printed as text goes through [`escape()`]: names are
//! untrusted. JSON carries raw names, escaped by serde.

mod escape;
pub mod json;
mod ladder;
mod snapshot;
mod stream;
pub mod summary;
pub mod words;

use std::{
    fmt::Write as _,
    io::{self, Write},
    net::SocketAddr,
};

pub use self::{
    escape::escape,
    summary::{summary_json, write_summary},
};
use crate::{
    decode::Record,
    model::{SocketLife, Verdict},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum View {
    /// One ladder per socket, when it ends.
    #[default]
    Sockets,
    /// One line per state transition, as it happens (like bcc's tcpstates).
    Stream,
    Both,
    /// Nothing on stdout: for `--metrics` and `--write` (a daemon).
    None,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct RenderOptions {
    pub view: View,
    pub json: bool,
    pub color: bool,
    /// Print wall-clock times (-T).
    pub timestamp: bool,
    /// Wide address columns (IPv6).
    pub wide: bool,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, ns: turns event times into wall time.
    pub wall_offset_ns: i128,
    /// tcptrace's own network namespace: sockets in another one say which.
    pub own_netns: Option<u32>,
}

pub use self::snapshot::write_snapshot;

pub struct Renderer<W: Write> {
    out: W,
    opts: RenderOptions,
    stream: stream::Stream,
    /// Scratch for one item (a ladder, a line), reused.
    text: String,
    /// Scratch for a ladder's row order, reused.
    rows: Vec<ladder::RowRef>,
}

impl<W: Write> Renderer<W> {
    pub fn new(out: W, opts: RenderOptions) -> Self {
        Renderer {
            out,
            opts,
            stream: stream::Stream::default(),
            text: String::with_capacity(4096),
            rows: Vec::new(),
        }
    }

    /// A record as it arrives (stream view; ignored in the sockets view).
    pub fn transition(&mut self, rec: &Record) -> io::Result<()> {
        match (self.opts.view, self.opts.json) {
            (View::Sockets | View::None, _) => Ok(()),
            (_, true) => {
                self.text.clear();
                json::push_record_line(&mut self.text, rec);
                self.text.push('\n');
                self.out.write_all(self.text.as_bytes())
            }
            (_, false) => {
                self.text.clear();
                self.stream.write(&mut self.text, rec, &self.opts);
                self.out.write_all(self.text.as_bytes())
            }
        }
    }

    /// A finished socket (sockets view; ignored in the stream view).
    pub fn socket(&mut self, life: &SocketLife, verdict: &Verdict) -> io::Result<()> {
        match (self.opts.view, self.opts.json) {
            (View::Stream | View::None, _) => Ok(()),
            (_, true) => {
                self.text.clear();
                json::push_socket_line(&mut self.text, life, verdict);
                self.text.push('\n');
                self.out.write_all(self.text.as_bytes())
            }
            (_, false) => {
                self.text.clear();
                ladder::write(&mut self.text, &mut self.rows, life, verdict, &self.opts);
                self.out.write_all(self.text.as_bytes())
            }
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer back (tests read what was rendered).
    /// The output, e.g. to ask an [`crate::output::OutputQueue`] how it fares.
    pub fn output(&mut self) -> &mut W {
        &mut self.out
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Milliseconds with 3 decimals, rounded to the microsecond: "0.062".
pub(crate) fn fmt_ms(ns: u64) -> String {
    let mut s = String::new();
    push_ms(&mut s, ns);
    s
}

/// [`fmt_ms`], appended to `buf`.
pub(crate) fn push_ms(buf: &mut String, ns: u64) {
    let us = ns.saturating_add(500) / 1000;
    push_u64(buf, us / 1000);
    // Always three decimals: one 4-byte append (every ladder row has one).
    let frac = (us % 1000) as u32;
    let digit = |n: u32| b'0' + (n % 10) as u8;
    let text = [b'.', digit(frac / 100), digit(frac / 10), digit(frac)];
    // SAFETY: ASCII only.
    buf.push_str(unsafe { std::str::from_utf8_unchecked(&text) });
}

/// `n` in decimal (`{n}`).
pub(crate) fn push_u64(buf: &mut String, n: u64) {
    const PAIRS: &[u8; 200] = b"\
        0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let len = n.checked_ilog10().unwrap_or(0) as usize + 1;
    // SAFETY: only ASCII digits are written, into reserved capacity, before
    // the length takes them in.
    unsafe {
        let v = buf.as_mut_vec();
        v.reserve(len);
        let start = v.len();
        let out = v.as_mut_ptr().add(start);
        let (mut i, mut n) = (len, n);
        while n >= 100 {
            let pair = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            *out.add(i) = PAIRS[pair];
            *out.add(i + 1) = PAIRS[pair + 1];
        }
        if n >= 10 {
            let pair = n as usize * 2;
            i -= 2;
            *out.add(i) = PAIRS[pair];
            *out.add(i + 1) = PAIRS[pair + 1];
        } else {
            i -= 1;
            *out.add(i) = b'0' + n as u8;
        }
        debug_assert_eq!(i, 0);
        v.set_len(start + len);
    }
}

/// `n` with at least `width` digits, zeros in front (`{n:0width$}`).
pub(crate) fn push_zero_padded(buf: &mut String, n: u64, width: usize) {
    let len = n.checked_ilog10().unwrap_or(0) as usize + 1;
    for _ in len..width {
        buf.push('0');
    }
    push_u64(buf, n);
}

/// `n` in lower-case hex, at least `width` digits, zeros in front
/// (`{n:0width$x}`; with `0x` in front, `{n:#x}` for width 0).
pub(crate) fn push_hex(buf: &mut String, n: u64, width: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    let mut rest = n;
    loop {
        i -= 1;
        digits[i] = HEX[(rest & 0xf) as usize];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    for _ in digits.len() - i..width {
        buf.push('0');
    }
    // SAFETY: ASCII hex digits only.
    buf.push_str(unsafe { std::str::from_utf8_unchecked(&digits[i..]) });
}

/// An address as `Display` writes it (`127.0.0.1:80`, `[::1]:80`).
pub(crate) fn push_addr(buf: &mut String, addr: &SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            // At most "255.255.255.255:" before the port.
            let mut text = [0u8; 16];
            let mut n = 0;
            for octet in a.ip().octets() {
                if octet >= 100 {
                    text[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    text[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                text[n] = b'0' + octet % 10;
                text[n + 1] = b'.';
                n += 2;
            }
            text[n - 1] = b':';
            // SAFETY: ASCII digits, dots and a colon only.
            buf.push_str(unsafe { std::str::from_utf8_unchecked(&text[..n]) });
            push_u64(buf, u64::from(a.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(buf, "{addr}");
        }
    }
}

/// Pads what was written since `start` with spaces to `width` characters
/// (`{:<width$}` of it).
pub(crate) fn pad_from(buf: &mut String, start: usize, width: usize) {
    let chars = char_count(&buf.as_bytes()[start..]);
    if chars < width {
        push_spaces(buf, width - chars);
    }
}

/// Pads text of `chars` characters, just written, to `width` (for text
/// whose width is known without counting it).
pub(crate) fn pad_known(buf: &mut String, chars: usize, width: usize) {
    if chars < width {
        push_spaces(buf, width - chars);
    }
}

/// Characters in `s`, at compile time (for fixed column texts).
pub(crate) const fn const_chars(s: &str) -> usize {
    let bytes = s.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        if bytes[i] & 0xc0 != 0x80 {
            n += 1;
        }
        i += 1;
    }
    n
}

/// [`pad_from`] for ASCII text, where characters are bytes.
pub(crate) fn pad_ascii(buf: &mut String, start: usize, width: usize) {
    debug_assert!(buf[start..].is_ascii());
    let chars = buf.len() - start;
    if chars < width {
        push_spaces(buf, width - chars);
    }
}

/// Characters in UTF-8 `bytes`: the bytes that do not continue a sequence
/// (`10xxxxxx`), counted eight at a time.
fn char_count(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_le_bytes([0x80; 8]);
    let mut chunks = bytes.chunks_exact(8);
    let mut continuations = 0;
    for chunk in &mut chunks {
        let w = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        // 1 in each byte with bit 7 set and bit 6 (shifted into its place)
        // clear; the multiply sums the eight bytes into the top one.
        let flags = (w & !(w << 1) & HIGH) >> 7;
        continuations += (flags.wrapping_mul(ONES) >> 56) as usize;
    }
    let rest = chunks.remainder();
    continuations += rest.iter().filter(|&&b| b & 0xc0 == 0x80).count();
    bytes.len() - continuations
}

fn push_spaces(buf: &mut String, n: usize) {
    const CHUNK: usize = 64;
    const SPACES: [u8; CHUNK] = [b' '; CHUNK];
    let mut n = n;
    while n > 0 {
        let k = n.min(CHUNK);
        // SAFETY: a whole chunk of ASCII spaces is copied into reserved
        // capacity (a fixed size: no call to memcpy), and the length takes
        // in only `k` of them.
        unsafe {
            let v = buf.as_mut_vec();
            v.reserve(CHUNK);
            let len = v.len();
            std::ptr::copy_nonoverlapping(SPACES.as_ptr(), v.as_mut_ptr().add(len), CHUNK);
            v.set_len(len + k);
        }
        n -= k;
    }
}

/// Drops trailing whitespace written since `start` (`str::trim_end` of it).
pub(crate) fn trim_end_from(buf: &mut String, start: usize) {
    let spaces = buf.as_bytes()[start..]
        .iter()
        .rev()
        .take_while(|&&b| b == b' ')
        .count();
    buf.truncate(buf.len() - spaces);
    // Past the spaces, a visible ASCII character ends it; else look closer.
    if buf.len() > start && !buf.as_bytes()[buf.len() - 1].is_ascii_graphic() {
        let kept = buf[start..].trim_end().len();
        buf.truncate(start + kept);
    }
}

/// Subtle ANSI colour, only when the session asked for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tone {
    Plain,
    Bold,
    Red,
    Yellow,
    Dim,
}

impl Tone {
    fn code(self) -> Option<&'static str> {
        match self {
            Tone::Plain => None,
            Tone::Bold => Some("\x1b[1m"),
            Tone::Red => Some("\x1b[31m"),
            Tone::Yellow => Some("\x1b[33m"),
            Tone::Dim => Some("\x1b[2m"),
        }
    }
}

/// Starts painting in `tone` (when `on`); returns whether
/// [`paint_end`] must close it.
pub(crate) fn paint_start(buf: &mut String, on: bool, tone: Tone) -> bool {
    match tone.code().filter(|_| on) {
        Some(code) => {
            buf.push_str(code);
            true
        }
        None => false,
    }
}

pub(crate) fn paint_end(buf: &mut String, painted: bool) {
    if painted {
        buf.push_str("\x1b[0m");
    }
}

/// Local wall-clock time of a monotonic timestamp: "HH:MM:SS.mmm".
#[cfg(test)]
pub(crate) fn wall_clock(ts_ns: u64, wall_offset_ns: i128) -> String {
    let mut s = String::new();
    push_wall_clock(&mut s, ts_ns, wall_offset_ns);
    s
}

/// [`wall_clock`], appended to `buf`.
pub(crate) fn push_wall_clock(buf: &mut String, ts_ns: u64, wall_offset_ns: i128) {
    let wall = i128::from(ts_ns) + wall_offset_ns;
    let secs = i64::try_from(wall.div_euclid(1_000_000_000)).unwrap_or(0);
    let millis = (wall.rem_euclid(1_000_000_000) / 1_000_000) as i64;
    push_hms(buf, secs.saturating_add(utc_offset_secs(secs)), millis);
}

/// "HH:MM:SS.mmm" of a count of seconds, local time already applied.
#[cfg(test)]
fn hms(secs: i64, millis: i64) -> String {
    let mut s = String::new();
    push_hms(&mut s, secs, millis);
    s
}

fn push_hms(buf: &mut String, secs: i64, millis: i64) {
    let day = secs.rem_euclid(86_400) as u64;
    push_zero_padded(buf, day / 3600, 2);
    buf.push(':');
    push_zero_padded(buf, day % 3600 / 60, 2);
    buf.push(':');
    push_zero_padded(buf, day % 60, 2);
    buf.push('.');
    push_zero_padded(buf, millis as u64, 3);
}

/// The local time zone's offset from UTC at `secs` since the epoch.
fn utc_offset_secs(secs: i64) -> i64 {
    let t = secs as libc::time_t;
    // SAFETY: `libc::tm` is plain data (a null `tm_zone` is valid), and
    // localtime_r only writes through the two valid pointers it is given.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            0
        } else {
            tm.tm_gmtoff
        }
    }
}

#[cfg(test)]
mod tests;
