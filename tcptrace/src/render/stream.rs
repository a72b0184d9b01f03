//! The stream view: one line per state transition as it happens, with the
//! columns of bcc's tcpstates, plus a line per RST, retransmit and dropped
//! segment (whose LADDR and RADDR are its own source and destination).

use hashlink::LruCache;

use super::{
    RenderOptions, Tone,
    escape::{escape_from, escape_into},
    pad_ascii, pad_from, paint_end, paint_start, push_addr, push_hex, push_ms, push_u64,
    push_wall_clock, push_zero_padded, trim_end_from, words,
};
use crate::{
    decode::{Context, Proc, Record, SegmentDrop, TcpState},
    model::SegmentKind,
};

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
    /// skaddr → time of its last transition (the view's own: it sees every
    /// record as it comes, before the tracker). Bounded, the least recently
    /// updated forgotten first; forgotten at CLOSE, as tcpstates does, so a
    /// reused skaddr starts again at 0.
    last: LruCache<u64, u64, foldhash::fast::FixedState>,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            t0: None,
            header_done: false,
            last: LruCache::with_hasher(MS_SOCKETS, Default::default()),
        }
    }
}

/// The event column of a line.
enum What<'a> {
    /// `OLDSTATE -> NEWSTATE`, then the MS column.
    State(TcpState, TcpState, u64),
    SendReset(Option<&'a crate::decode::ResetReason>),
    ReceiveReset,
    Retransmit(Option<TcpState>),
    RetransmitSynAck,
    /// accept() returned the socket (to the owner column's process).
    Accept,
    /// A dropped segment (its addresses are the segment's own).
    Drop(&'a SegmentDrop),
}

impl Stream {
    /// Appends the line of `rec` (and the header before the first) to `buf`.
    pub(crate) fn write(&mut self, buf: &mut String, rec: &Record, opts: &RenderOptions) {
        let ts = rec.ts_ns();
        let t0 = *self.t0.get_or_insert(ts);
        let (what, tone) = match rec {
            Record::State { sock, old, new, .. } => {
                let ms = self.ms_in_old_state(sock.skaddr, ts, *new);
                (What::State(*old, *new, ms), Tone::Plain)
            }
            Record::SendReset { reason, .. } => (What::SendReset(reason.as_ref()), Tone::Red),
            Record::ReceiveReset { .. } => (What::ReceiveReset, Tone::Yellow),
            Record::Retransmit { state, .. } => (What::Retransmit(*state), Tone::Plain),
            Record::RetransmitSynAck { .. } => (What::RetransmitSynAck, Tone::Plain),
            Record::Accept { .. } => (What::Accept, Tone::Plain),
            Record::Drop(d) if d.answered_by_time_wait => (What::Drop(d), Tone::Plain),
            Record::Drop(d) => (What::Drop(d), Tone::Red),
            // Exits and signals only feed attribution; a destroy says nothing new.
            // Errors are told in the socket's verdict.
            Record::Destroy { .. }
            | Record::ErrorReport { .. }
            | Record::ProcessExit { .. }
            | Record::Signal { .. }
            | Record::OomVictim { .. } => {
                return;
            }
        };
        // The columns: the socket, whose it is, and its two ends (a
        // dropped segment's own source and destination).
        let (skaddr, owner, context, local, remote) = match (rec.sock(), &what) {
            (Some(s), _) => (s.skaddr, s.owner.as_ref(), &s.context, s.local, s.remote),
            (None, What::Drop(d)) => (
                d.rx_sk.or(d.skb_sk).unwrap_or(0),
                d.owner.as_ref(),
                &d.context,
                d.source,
                d.destination,
            ),
            (None, _) => return,
        };
        if !self.header_done {
            self.header_done = true;
            header(buf, opts);
            buf.push('\n');
        }
        let painted = paint_start(buf, opts.color, tone);
        let line = buf.len();
        let (w, aw) = (time_width(opts), addr_width(opts));
        if opts.timestamp {
            push_wall_clock(buf, ts, opts.wall_offset_ns);
        } else {
            let rel = ts.saturating_sub(t0);
            push_u64(buf, rel / 1_000_000_000);
            buf.push('.');
            push_zero_padded(buf, rel % 1_000_000_000 / 1000, 6);
        }
        pad_ascii(buf, line, w);
        buf.push(' ');
        let col = buf.len();
        match skaddr {
            0 => buf.push('-'),
            sk => push_hex(buf, sk, 16),
        }
        pad_ascii(buf, col, 16);
        buf.push(' ');
        who(buf, owner, context);
        let col = buf.len();
        push_addr(buf, &local);
        pad_ascii(buf, col, aw);
        buf.push(' ');
        let col = buf.len();
        push_addr(buf, &remote);
        pad_ascii(buf, col, aw);
        buf.push(' ');
        let col = buf.len();
        let ms = match what {
            What::State(old, new, ms) => {
                buf.push_str(old.name());
                pad_ascii(buf, col, 11);
                buf.push_str(" -> ");
                let col = buf.len();
                buf.push_str(new.name());
                pad_ascii(buf, col, 11);
                Some(ms)
            }
            What::SendReset(reason) => {
                buf.push_str("RST sent");
                if let Some(r) = reason {
                    buf.push_str(" reason=");
                    match &r.name {
                        Some(name) => escape_into(buf, name),
                        None => push_u64(buf, u64::from(r.code)),
                    }
                }
                None
            }
            What::ReceiveReset => {
                buf.push_str("RST received");
                None
            }
            What::Retransmit(state) => {
                match state {
                    Some(TcpState::SynSent) => buf.push_str("SYN retransmit"),
                    Some(s) => {
                        buf.push_str("retransmit in ");
                        buf.push_str(s.name());
                    }
                    None => buf.push_str("retransmit"),
                }
                None
            }
            What::RetransmitSynAck => {
                buf.push_str("SYN/ACK retransmit");
                None
            }
            What::Accept => {
                buf.push_str("accept()");
                None
            }
            What::Drop(d) if d.answered_by_time_wait => {
                buf.push_str("FIN answered by a TIME_WAIT socket");
                None
            }
            What::Drop(d) => {
                let kind = SegmentKind::of(d.segment_flags);
                let overflow = words::is_listen_overflow(&d.reason);
                buf.push_str(words::segment_name(kind, overflow));
                buf.push_str(" dropped reason=");
                let reason = buf.len();
                words::drop_reason_into(buf, &d.reason);
                escape_from(buf, reason);
                None
            }
        };
        pad_from(buf, col, 26);
        buf.push(' ');
        if let Some(ms) = ms {
            push_ms(buf, ms);
        }
        trim_end_from(buf, line);
        paint_end(buf, painted);
        buf.push('\n');
    }

    /// ms the socket spent in the state it leaves now; 0 for its first.
    fn ms_in_old_state(&mut self, skaddr: u64, ts: u64, new: TcpState) -> u64 {
        // A look that does not make the entry newer: only updates do.
        let since = self.last.peek(&skaddr).copied();
        if new == TcpState::Close {
            self.last.remove(&skaddr);
        } else {
            self.last.insert(skaddr, ts);
        }
        since.map_or(0, |t| ts.saturating_sub(t))
    }
}

fn header(buf: &mut String, opts: &RenderOptions) {
    let time = if opts.timestamp { "TIME" } else { "TIME(s)" };
    let (w, aw) = (time_width(opts), addr_width(opts));
    let columns = [
        (time, w),
        ("SKADDR", 16),
        ("PID", 7),
        ("COMM", 16),
        ("LADDR:LPORT", aw),
        ("RADDR:RPORT", aw),
        ("OLDSTATE", 11),
    ];
    for (name, width) in columns {
        let col = buf.len();
        buf.push_str(name);
        pad_from(buf, col, width);
        buf.push(' ');
    }
    let col = buf.len();
    buf.push_str("-> NEWSTATE");
    pad_from(buf, col, 3 + 11);
    buf.push_str(" MS");
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

/// PID and COMM, padded, each with the space after it: the owner if known,
/// else the process whose own context the event ran in; never the
/// bystander a softirq interrupted.
fn who(buf: &mut String, owner: Option<&Proc>, context: &Context) {
    let col = buf.len();
    match (owner, context) {
        (Some(p), _) | (None, Context::Process(p)) if !p.is_idle() => {
            push_u64(buf, u64::from(p.tgid));
            pad_ascii(buf, col, 7);
            buf.push(' ');
            let col = buf.len();
            escape_into(buf, &p.comm);
            pad_from(buf, col, 16);
        }
        (None, Context::Process(p)) => {
            buf.push_str("-       [");
            let col = buf.len() - 1;
            escape_into(buf, &p.comm);
            buf.push(']');
            pad_from(buf, col, 16);
        }
        _ => buf.push_str("-       [softirq]       "),
    }
    buf.push(' ');
}
