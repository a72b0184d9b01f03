//! The sockets view: one ladder per finished socket, rows in time order with
//! what each transition put on the wire, then the verdict and who closed it.
//!
//! ```text
//! 127.0.0.1:45126 → 127.0.0.1:8099  client  python3[2251]  0.948 ms  sk 0xffff888123456000
//!   +0.000    CLOSE → SYN_SENT           SYN →
//!   +0.062    SYN_SENT → ESTABLISHED     ← SYN/ACK  ACK →   handshake 0.062 ms
//!   +0.911    ESTABLISHED → FIN_WAIT1    FIN →
//!   +0.930    FIN_WAIT1 → FIN_WAIT2      ← ACK              in softirq
//!   +0.948    FIN_WAIT2 → CLOSE          ← FIN  ACK →       (TIME_WAIT) in softirq
//!   = active open (3-way) · active close (4-way)
//!   closed by python3[2251] → FIN
//! ```

use super::{
    RenderOptions, Tone, const_chars,
    escape::{escape_from, escape_into},
    pad_ascii, pad_from, pad_known, paint_end, paint_start, push_addr, push_hex, push_ms, push_u64,
    push_wall_clock, trim_end_from, words,
};
use crate::decode::{Context, Proc, TcpState};
use crate::model::{
    Direction, RetransmitKind, Role, RstReason, SegmentKind, SocketLife, Step, Verdict,
};

/// One row of a ladder: where it comes from, in time order once sorted.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowRef {
    offset_ns: u64,
    kind: RowKind,
    /// Index into the life's list of that kind.
    index: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RowKind {
    Step,
    ResetSent,
    ResetReceived,
    Retransmit,
    Drop,
    Accept,
}

/// Appends the ladder of `life` to `buf` (`rows` is scratch).
pub(crate) fn write(
    buf: &mut String,
    rows: &mut Vec<RowRef>,
    life: &SocketLife,
    verdict: &Verdict,
    opts: &RenderOptions,
) {
    header(buf, life, opts);
    buf.push('\n');
    collect_rows(rows, life);
    let close_step = life.close_step();
    for row in rows.iter() {
        let i = row.index as usize;
        let tone = match row.kind {
            RowKind::ResetSent | RowKind::Drop => Tone::Red,
            RowKind::ResetReceived => Tone::Yellow,
            RowKind::Step | RowKind::Retransmit | RowKind::Accept => Tone::Plain,
        };
        let painted = paint_start(buf, opts.color, tone);
        let line = buf.len();
        buf.push_str("  ");
        let col = buf.len();
        buf.push('+');
        push_ms(buf, row.offset_ns);
        pad_ascii(buf, col, 9);
        buf.push(' ');
        match row.kind {
            RowKind::Step => {
                let step = &life.steps[i];
                const ARROW: &str = " → ";
                const ARROW_CHARS: usize = const_chars(ARROW);
                let (old, new) = (step.old.name(), step.new.name());
                debug_assert!(old.is_ascii() && new.is_ascii());
                buf.push_str(old);
                buf.push_str(ARROW);
                buf.push_str(new);
                pad_known(buf, old.len() + ARROW_CHARS + new.len(), 26);
                buf.push(' ');
                let (wire, wire_chars) = wire(step, life);
                buf.push_str(wire);
                let bare = buf.len();
                pad_known(buf, wire_chars, 18);
                buf.push(' ');
                let note = buf.len();
                step_note(buf, step, life, verdict, close_step);
                if buf.len() == note {
                    // No note: no padding to trim off again.
                    buf.truncate(bare);
                }
            }
            RowKind::ResetSent => {
                let r = &life.resets_sent[i];
                columns(buf, "RST sent", "RST →");
                let start = buf.len();
                let reason = RstReason::from_kernel(r.reason.as_ref());
                words::reason_long_in(buf, &reason, Some(life.unaccepted));
                escape_from(buf, start);
                let note = buf.len();
                buf.push(' ');
                if !context_note(buf, &r.context, life, false) {
                    buf.truncate(note);
                }
            }
            RowKind::ResetReceived => {
                columns(buf, "RST received", "← RST");
            }
            RowKind::Retransmit => {
                let r = &life.retransmits[i];
                let (label, seg) = match r.kind {
                    RetransmitKind::Syn => ("SYN retransmit", "SYN"),
                    RetransmitKind::Synack => ("SYN/ACK retransmit", "SYN/ACK"),
                    RetransmitKind::Data => unreachable!("data retransmits have no row"),
                };
                let col = buf.len();
                buf.push_str(label);
                pad_ascii(buf, col, 26);
                buf.push(' ');
                buf.push_str(seg);
                buf.push_str(" → (retransmit #");
                push_u64(buf, u64::from(r.number));
                buf.push(')');
            }
            RowKind::Accept => {
                if let Some(a) = &life.accepted {
                    columns(buf, "accept()", "");
                    buf.push_str("by ");
                    push_proc_label(buf, &a.by);
                    if let Some(ns) = a.queued_ns {
                        buf.push_str(" after ");
                        push_ms(buf, ns);
                        buf.push_str(" ms in the accept queue");
                    }
                    if let Some(l) = &life.listener_owner {
                        buf.push_str(" (listener: ");
                        push_proc_label(buf, l);
                        buf.push(')');
                    }
                }
            }
            RowKind::Drop => {
                let d = &life.drops[i];
                let words = buf.len();
                words::drop_into(buf, d.kind(), &d.reason, d.direction, 1, life);
                escape_from(buf, words);
            }
        }
        trim_end_from(buf, line);
        paint_end(buf, painted);
        buf.push('\n');
    }
    if life.data_retransmits > 0 {
        buf.push_str("  · ");
        push_u64(buf, u64::from(life.data_retransmits));
        buf.push_str(" data retransmits\n");
    }
    counted_lines(buf, life, opts);
    let painted = paint_start(buf, opts.color, Tone::Bold);
    buf.push_str("  = ");
    let summary = buf.len();
    words::summary_into(buf, life, verdict);
    escape_from(buf, summary);
    paint_end(buf, painted);
    buf.push('\n');
    let mark = buf.len();
    buf.push_str("  ");
    let attribution = buf.len();
    if words::attribution_into(buf, life, verdict) {
        // Only process names in it can need escaping; the rest is our text.
        escape_from(buf, attribution);
        buf.push('\n');
    } else {
        buf.truncate(mark);
    }
    buf.push('\n');
}

/// What a ladder counts rather than lists: a listener's handshake failures
/// (its SYN/ACK retransmits, its drops by reason), and the drops of other
/// sockets past their rows.
fn counted_lines(buf: &mut String, life: &SocketLife, opts: &RenderOptions) {
    let listener = life.role == Role::Listener;
    if listener && life.synack_retransmits > 0 {
        buf.push_str("  · ");
        words::synack_retransmits_into(buf, life.synack_retransmits);
        buf.push('\n');
    }
    if listener && life.requests_expired > 0 {
        let painted = paint_start(buf, opts.color, Tone::Red);
        buf.push_str("  · ");
        words::requests_expired_into(buf, life.requests_expired);
        paint_end(buf, painted);
        buf.push('\n');
    }
    if listener {
        for c in &life.drop_counts {
            let painted = paint_start(buf, opts.color, Tone::Red);
            buf.push_str("  · ");
            let line = buf.len();
            let direction = match c.segment {
                SegmentKind::SynAck => Direction::Outgoing,
                _ => Direction::Incoming,
            };
            words::drop_into(buf, c.segment, &c.reason, direction, c.count, life);
            escape_from(buf, line);
            paint_end(buf, painted);
            buf.push('\n');
        }
        return;
    }
    let total: u64 = life.drop_counts.iter().map(|c| u64::from(c.count)).sum();
    let unlisted = total.saturating_sub(life.drops.len() as u64);
    if unlisted > 0 {
        buf.push_str("  · ");
        words::more_drops_into(buf, unlisted);
        buf.push('\n');
    }
}

/// The label and wire columns, padded, and the space before the note.
fn columns(buf: &mut String, label: &str, wire: &str) {
    let col = buf.len();
    buf.push_str(label);
    pad_from(buf, col, 26);
    buf.push(' ');
    let col = buf.len();
    buf.push_str(wire);
    pad_from(buf, col, 18);
    buf.push(' ');
}

/// `comm[tgid]`, escaped.
fn push_proc_label(buf: &mut String, p: &Proc) {
    escape_into(buf, &p.comm);
    buf.push('[');
    push_u64(buf, u64::from(p.tgid));
    buf.push(']');
}

fn header(buf: &mut String, life: &SocketLife, opts: &RenderOptions) {
    if opts.timestamp {
        push_wall_clock(buf, life.start_ns, opts.wall_offset_ns);
        buf.push_str("  ");
    }
    push_addr(buf, &life.local);
    if life.socketless {
        buf.push_str(" ← ");
        push_addr(buf, &life.remote);
        buf.push_str("  server (no socket)");
        return;
    }
    match life.role {
        Role::Listener => buf.push_str("  listener  "),
        role => {
            // The arrow points from the side that opened the connection.
            buf.push_str(match role {
                Role::Server => " ← ",
                Role::Client => " → ",
                _ => " — ",
            });
            push_addr(buf, &life.remote);
            buf.push_str("  ");
            buf.push_str(role.name());
            buf.push_str("  ");
        }
    }
    match &life.owner {
        Some(p) => push_proc_label(buf, p),
        None if life.shared_listener => {
            buf.push_str("owner unknown (SO_REUSEPORT group, not accepted)");
        }
        None => buf.push_str("owner unknown"),
    }
    if let Some(w) = &life.workload {
        // Unit and container names come from cgroup paths anyone can
        // create: escaped like process names.
        if let Some(unit) = &w.unit {
            buf.push_str(" (");
            escape_into(buf, unit);
            buf.push(')');
        }
        if let Some(id) = &w.container {
            buf.push_str(" (container ");
            buf.push_str(&id[..id.len().min(12)]);
            buf.push(')');
        }
    }
    buf.push_str("  ");
    // Only a namespace other than tcptrace's own is worth a word.
    if let Some(ns) = life.netns.filter(|&ns| Some(ns) != opts.own_netns) {
        buf.push_str("netns ");
        push_u64(buf, u64::from(ns));
        buf.push_str("  ");
    }
    push_ms(buf, life.duration_ns);
    buf.push_str(" ms  ");
    if life.role == Role::Listener {
        match life.children {
            1 => buf.push_str("1 child"),
            n => {
                push_u64(buf, u64::from(n));
                buf.push_str(" children");
            }
        }
        buf.push_str("  ");
    }
    let painted = paint_start(buf, opts.color, Tone::Dim);
    buf.push_str("sk 0x");
    push_hex(buf, life.skaddr, 0);
    paint_end(buf, painted);
}

/// The segments a step puts on the wire, from this socket's point of view,
/// and their width in characters (an arrow is three bytes), counted at
/// compile time.
fn wire(step: &Step, life: &SocketLife) -> (&'static str, usize) {
    use TcpState::*;
    const fn w(text: &'static str) -> (&'static str, usize) {
        (text, const_chars(text))
    }
    const SYN: (&str, usize) = w("SYN →");
    const SYNACK_ACK: (&str, usize) = w("← SYN/ACK  ACK →");
    const SYN_SYNACK: (&str, usize) = w("← SYN  SYN/ACK →");
    const ACK: (&str, usize) = w("← ACK");
    const FIN: (&str, usize) = w("FIN →");
    const FIN_ACK: (&str, usize) = w("← FIN  ACK →");
    match (step.old, step.new) {
        (Close, SynSent) => SYN,
        (SynSent, Established) => SYNACK_ACK,
        (Listen, SynRecv) => SYN_SYNACK,
        (SynRecv, Established) => ACK,
        (Established | SynRecv, FinWait1) => FIN,
        (FinWait1, FinWait2) => ACK,
        (FinWait1, Closing) | (Established, CloseWait) | (_, TimeWait) => FIN_ACK,
        (FinWait2, Close) if life.time_wait => FIN_ACK,
        (Closing, Close) | (LastAck, Close) => ACK,
        (CloseWait, LastAck) => FIN,
        _ => ("", 0),
    }
}

/// Appends who acted, when worth saying; false when nothing was appended.
fn context_note(buf: &mut String, context: &Context, life: &SocketLife, closing: bool) -> bool {
    match context {
        // Worth saying when it is not the owner acting.
        Context::Process(p)
            if !p.is_idle() && life.owner.as_ref().is_none_or(|o| o.tgid != p.tgid) =>
        {
            buf.push_str("by ");
            push_proc_label(buf, p);
            true
        }
        // A close from the network or a timer, not from the application.
        Context::Softirq { .. } if closing => {
            buf.push_str("in softirq");
            true
        }
        _ => false,
    }
}

/// The notes of a step row, separated by spaces.
fn step_note(
    buf: &mut String,
    step: &Step,
    life: &SocketLife,
    verdict: &Verdict,
    close_step: Option<&Step>,
) {
    use TcpState::*;
    let mut first = true;
    let mut sep = |buf: &mut String| {
        if !std::mem::take(&mut first) {
            buf.push(' ');
        }
    };
    if matches!((step.old, step.new), (SynSent | SynRecv, Established))
        && let Some(ns) = verdict.open.handshake_ns()
    {
        sep(buf);
        buf.push_str("handshake ");
        push_ms(buf, ns);
        buf.push_str(" ms");
    }
    let is_last_close = close_step.is_some_and(|c| std::ptr::eq(c, step));
    if is_last_close {
        if life.time_wait {
            sep(buf);
            buf.push_str("(TIME_WAIT)");
        }
        match (life.fin_wait2_orphan, life.peer_fin_after_handoff_ns) {
            (true, None) => {
                sep(buf);
                buf.push_str("(peer's FIN never came: FIN_WAIT2 orphan)");
            }
            (true, Some(at)) => {
                sep(buf);
                buf.push_str("(handed to a FIN_WAIT2 mini-socket; the peer's FIN reached it ");
                push_ms(buf, at.saturating_sub(step.offset_ns));
                buf.push_str(" ms later)");
            }
            _ => {}
        }
        if let Some(n) = life.unread.filter(|&n| n > 0) {
            sep(buf);
            push_u64(buf, u64::from(n));
            buf.push_str(" bytes unread");
        }
    }
    let mark = buf.len();
    sep(buf);
    if !context_note(buf, &step.context, life, step.new == Close) {
        buf.truncate(mark);
    }
}

/// The rows of `life` in time order: steps, RSTs sent and received, and
/// SYN and SYN/ACK retransmits (data retransmits are only counted).
fn collect_rows(rows: &mut Vec<RowRef>, life: &SocketLife) {
    rows.clear();
    for (i, s) in life.steps.iter().enumerate() {
        rows.push(RowRef {
            offset_ns: s.offset_ns,
            kind: RowKind::Step,
            index: i as u32,
        });
    }
    for (i, r) in life.resets_sent.iter().enumerate() {
        rows.push(RowRef {
            offset_ns: r.offset_ns,
            kind: RowKind::ResetSent,
            index: i as u32,
        });
    }
    for (i, r) in life.resets_received.iter().enumerate() {
        rows.push(RowRef {
            offset_ns: r.offset_ns,
            kind: RowKind::ResetReceived,
            index: i as u32,
        });
    }
    let listener = life.role == Role::Listener;
    for (i, r) in life.retransmits.iter().enumerate() {
        // Counted in a line of their own: rows would drown the ladder (a
        // listener's SYN/ACK retransmits are its handshakes', by the dozen).
        let counted = r.kind == RetransmitKind::Data || listener;
        if !counted {
            rows.push(RowRef {
                offset_ns: r.offset_ns,
                kind: RowKind::Retransmit,
                index: i as u32,
            });
        }
    }
    if !listener {
        // A listener counts its drops by reason instead.
        for (i, d) in life.drops.iter().enumerate() {
            rows.push(RowRef {
                offset_ns: d.offset_ns,
                kind: RowKind::Drop,
                index: i as u32,
            });
        }
    }
    if let Some(a) = &life.accepted {
        rows.push(RowRef {
            offset_ns: a.offset_ns,
            kind: RowKind::Accept,
            index: 0,
        });
    }
    // Stable: equal times keep steps before the resets they caused.
    if !rows.is_sorted_by_key(|r| r.offset_ns) {
        rows.sort_by_key(|r| r.offset_ns);
    }
}
