//! The stream view: one line per state transition as it happens, with the
//! columns of bcc's tcpstates, plus a line per RST and retransmit.

use std::io::{self, Write};

use super::{RenderOptions, Tone, escape, fmt_ms, paint, wall_clock};
use crate::decode::{Context, Record, SockInfo, TcpState};
use crate::tracker::RecentMap;

/// Sockets whose last transition time is remembered for the MS column.
const MS_SOCKETS: usize = 65536;
/// `255.255.255.255:65535`.
const ADDR_WIDTH: usize = 21;
/// `[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535`.
const WIDE_ADDR_WIDTH: usize = 47;

pub(crate) struct Stream {
    /// The first record's time: the origin of relative times.
    t0: Option<u64>,
    header_done: bool,
    /// skaddr → time of its last transition (bounded; forgotten at CLOSE,
    /// as tcpstates does, so a reused skaddr starts again at 0).
    last: RecentMap<u64, u64>,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            t0: None,
            header_done: false,
            last: RecentMap::new(MS_SOCKETS, None),
        }
    }
}

impl Stream {
    pub(crate) fn write(
        &mut self,
        out: &mut dyn Write,
        rec: &Record,
        opts: &RenderOptions,
    ) -> io::Result<()> {
        let ts = rec.ts_ns();
        let t0 = *self.t0.get_or_insert(ts);
        let (what, ms, tone) = match rec {
            Record::State { sock, old, new, .. } => {
                let ms = self.ms_in_old_state(sock.skaddr, ts, *new);
                (format!("{old:<11} -> {new:<11}"), fmt_ms(ms), Tone::Plain)
            }
            Record::SendReset { reason, .. } => {
                let what = match reason {
                    Some(r) => match &r.name {
                        Some(name) => format!("RST sent reason={}", escape(name)),
                        None => format!("RST sent reason={}", r.code),
                    },
                    None => "RST sent".to_owned(),
                };
                (what, String::new(), Tone::Red)
            }
            Record::ReceiveReset { .. } => ("RST received".to_owned(), String::new(), Tone::Yellow),
            Record::Retransmit { state, .. } => {
                let what = match state {
                    Some(TcpState::SynSent) => "SYN retransmit".to_owned(),
                    Some(s) => format!("retransmit in {s}"),
                    None => "retransmit".to_owned(),
                };
                (what, String::new(), Tone::Plain)
            }
            Record::RetransmitSynAck { .. } => {
                ("SYN/ACK retransmit".to_owned(), String::new(), Tone::Plain)
            }
            // Exits and signals only feed attribution; a destroy says nothing new.
            Record::Destroy { .. } | Record::ProcessExit { .. } | Record::Signal { .. } => {
                return Ok(());
            }
        };
        let Some(sock) = rec.sock() else {
            return Ok(());
        };
        if !self.header_done {
            self.header_done = true;
            writeln!(out, "{}", header(opts))?;
        }
        let time = match opts.timestamp {
            true => wall_clock(ts, opts.wall_offset_ns),
            false => {
                let rel = ts.saturating_sub(t0);
                format!("{}.{:06}", rel / 1_000_000_000, rel % 1_000_000_000 / 1000)
            }
        };
        let line = columns(opts, &time, sock, &what, &ms);
        writeln!(out, "{}", paint(opts.color, tone, line.trim_end()))
    }

    /// ms the socket spent in the state it leaves now; 0 for its first.
    fn ms_in_old_state(&mut self, skaddr: u64, ts: u64, new: TcpState) -> u64 {
        let since = self.last.get(&skaddr, ts).copied();
        if new == TcpState::Close {
            self.last.remove(&skaddr);
        } else {
            self.last.insert(skaddr, ts, ts);
        }
        since.map_or(0, |t| ts.saturating_sub(t))
    }
}

fn header(opts: &RenderOptions) -> String {
    let time = if opts.timestamp { "TIME" } else { "TIME(s)" };
    let (w, aw) = (time_width(opts), addr_width(opts));
    format!(
        "{time:<w$} {:<16} {:<7} {:<16} {:<aw$} {:<aw$} {:<11} -> {:<11} MS",
        "SKADDR", "PID", "COMM", "LADDR:LPORT", "RADDR:RPORT", "OLDSTATE", "NEWSTATE"
    )
}

fn time_width(opts: &RenderOptions) -> usize {
    if opts.timestamp { 12 } else { 10 }
}

fn addr_width(opts: &RenderOptions) -> usize {
    if opts.wide {
        WIDE_ADDR_WIDTH
    } else {
        ADDR_WIDTH
    }
}

fn columns(opts: &RenderOptions, time: &str, sock: &SockInfo, what: &str, ms: &str) -> String {
    let skaddr = match sock.skaddr {
        0 => "-".to_owned(),
        sk => format!("{sk:016x}"),
    };
    let (pid, comm) = who(sock);
    let (w, aw) = (time_width(opts), addr_width(opts));
    format!(
        "{time:<w$} {skaddr:<16} {pid:<7} {comm:<16} {:<aw$} {:<aw$} {what:<26} {ms}",
        sock.local.to_string(),
        sock.remote.to_string(),
    )
}

/// PID and COMM: the owner if known, else the process whose own context
/// the event ran in; never the bystander a softirq interrupted.
fn who(sock: &SockInfo) -> (String, String) {
    match (&sock.owner, &sock.context) {
        (Some(p), _) | (None, Context::Process(p)) if !p.is_idle() => {
            (p.tgid.to_string(), escape(&p.comm))
        }
        (None, Context::Process(p)) => ("-".to_owned(), format!("[{}]", escape(&p.comm))),
        _ => ("-".to_owned(), "[softirq]".to_owned()),
    }
}
