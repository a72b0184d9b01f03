//! Render: the last step of the pipeline. Turns records into a tcpstates-like
//! stream ([`View::Stream`]) and finished socket lives into ladders
//! ([`View::Sockets`]), as text or as JSON lines (schema: [`json`]), and
//! writes the exit [`Summary`].
//!
//! Every process name printed as text goes through [`escape()`]: names are
//! untrusted. JSON carries raw names, escaped by serde.

mod escape;
pub mod json;
mod ladder;
mod stream;
mod summary;

use std::io::{self, Write};

pub use self::{escape::escape, summary::Summary};
use crate::{classify::Verdict, decode::Record, tracker::SocketLife};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum View {
    /// One ladder per socket, when it ends.
    #[default]
    Sockets,
    /// One line per state transition, as it happens (like bcc's tcpstates).
    Stream,
    Both,
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
}

pub struct Renderer<W: Write> {
    out: W,
    opts: RenderOptions,
    stream: stream::Stream,
}

impl<W: Write> Renderer<W> {
    pub fn new(out: W, opts: RenderOptions) -> Self {
        Renderer {
            out,
            opts,
            stream: stream::Stream::default(),
        }
    }

    /// A record as it arrives (stream view; ignored in the sockets view).
    pub fn transition(&mut self, rec: &Record) -> io::Result<()> {
        match (self.opts.view, self.opts.json) {
            (View::Sockets, _) => Ok(()),
            (_, true) => writeln!(self.out, "{}", json::record_line(rec)?),
            (_, false) => self.stream.write(&mut self.out, rec, &self.opts),
        }
    }

    /// A finished socket (sockets view; ignored in the stream view).
    pub fn socket(&mut self, life: &SocketLife, verdict: &Verdict) -> io::Result<()> {
        match (self.opts.view, self.opts.json) {
            (View::Stream, _) => Ok(()),
            (_, true) => writeln!(self.out, "{}", json::socket_line(life, verdict)?),
            (_, false) => ladder::write(&mut self.out, life, verdict, &self.opts),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// The writer back (tests read what was rendered).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Milliseconds with 3 decimals, rounded to the microsecond: "0.062".
pub(crate) fn fmt_ms(ns: u64) -> String {
    let us = ns.saturating_add(500) / 1000;
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// Subtle ANSI colour, only when the session asked for it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Tone {
    Plain,
    Bold,
    Red,
    Yellow,
    Dim,
}

pub(crate) fn paint(on: bool, tone: Tone, text: &str) -> String {
    let code = match tone {
        Tone::Plain => return text.to_owned(),
        Tone::Bold => "1",
        Tone::Red => "31",
        Tone::Yellow => "33",
        Tone::Dim => "2",
    };
    if on {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Local wall-clock time of a monotonic timestamp: "HH:MM:SS.mmm".
pub(crate) fn wall_clock(ts_ns: u64, wall_offset_ns: i128) -> String {
    let wall = i128::from(ts_ns) + wall_offset_ns;
    let secs = i64::try_from(wall.div_euclid(1_000_000_000)).unwrap_or(0);
    let millis = (wall.rem_euclid(1_000_000_000) / 1_000_000) as i64;
    hms(secs.saturating_add(utc_offset_secs(secs)), millis)
}

/// "HH:MM:SS.mmm" of a count of seconds, local time already applied.
fn hms(secs: i64, millis: i64) -> String {
    let day = secs.rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}.{millis:03}",
        day / 3600,
        day % 3600 / 60,
        day % 60
    )
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
