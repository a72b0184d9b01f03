//! Words for what the classifier found: every English sentence tcptrace
//! prints about a socket is made here, from the codes and fields of a
//! [`Verdict`] and its [`SocketLife`]. The text renderers print these
//! words; the JSON renderer adds them beside the codes (`summary`,
//! `attribution`, a reason's `text`).
//!
//! Process names are written raw: a text renderer escapes what it writes.

use std::fmt::Write as _;

use crate::{
    decode::{DropReason, Proc, TcpState},
    model::{
        Close, Direction, ExitInfo, Incomplete, Open, RstReason, SegmentKind, Side, SockError,
        SocketLife, Verdict,
    },
};

use super::push_u64;

mod listener;
pub use self::listener::{requests_expired_into, synack_retransmits_into};

/// One line: open path · close path (· error) (· incomplete: ...).
pub fn summary(life: &SocketLife, verdict: &Verdict) -> String {
    let mut s = String::with_capacity(96);
    summary_into(&mut s, life, verdict);
    s
}

/// [`summary`], appended to `out`.
pub fn summary_into(out: &mut String, life: &SocketLife, verdict: &Verdict) {
    // The non-empty parts, joined by " · ".
    let start = out.len();
    push_part(out, start, |s| open_into(s, &verdict.open));
    push_part(out, start, |s| {
        close_into(s, &verdict.close, Some(life.unaccepted))
    });
    if let Some(e) = &life.error {
        push_part(out, start, |s| error_into(s, e));
    }
    if !verdict.incomplete.is_empty() {
        push_part(out, start, |s| {
            s.push_str("incomplete: ");
            for (n, &i) in verdict.incomplete.iter().enumerate() {
                if n > 0 {
                    s.push_str(", ");
                }
                s.push_str(incomplete(i));
            }
        });
    }
}

/// Appends what `write` writes, after " · " unless nothing was written
/// since `start`; nothing when `write` writes nothing.
fn push_part(out: &mut String, start: usize, write: impl FnOnce(&mut String)) {
    let mark = out.len();
    if mark > start {
        out.push_str(" · ");
    }
    let body = out.len();
    write(out);
    if out.len() == body {
        out.truncate(mark);
    }
}

/// `active open (3-way)`, `listening`, ...; nothing for [`Open::NoSocket`].
pub fn open_into(out: &mut String, open: &Open) {
    let (what, established) = match open {
        Open::Active { established, .. } => ("active", *established),
        Open::Passive { established, .. } => ("passive", *established),
        Open::Listen => return out.push_str("listening"),
        Open::NoSocket => return,
        Open::Unknown => return out.push_str("open not seen"),
    };
    out.push_str(what);
    out.push_str(match established {
        true => " open (3-way)",
        false => " open (not established)",
    });
}

/// `active close (4-way)`, `reset by peer in ESTABLISHED`, ...
/// `unaccepted`: whether the socket was a child reset by its listener's
/// close (what an RST's TCP_STATE reason then means); `None` when unknown.
pub fn close_into(out: &mut String, close: &Close, unaccepted: Option<bool>) {
    let state = |s: &Option<TcpState>| s.map_or("an unknown state", TcpState::name);
    let fixed = match close {
        Close::Active { time_wait: true } => "active close (4-way)",
        Close::Active { time_wait: false } => "active close (not completed)",
        Close::Passive => "passive close (4-way)",
        Close::Simultaneous => "simultaneous close",
        Close::Refused {
            side: Side::Client,
            reason,
        } => match reason {
            Some(r) => {
                out.push_str("refused (RST received in SYN_SENT; peer: ");
                reason_text_into(out, r);
                return out.push(')');
            }
            None => "refused (RST received in SYN_SENT)",
        },
        Close::Refused {
            side: Side::Server, ..
        } => "refused at start (server side: RST sent, no socket)",
        Close::ResetReceived { state: s } => {
            out.push_str("reset by peer in ");
            return out.push_str(state(s));
        }
        Close::ResetSent { state: s, reason } => {
            out.push_str("RST sent in ");
            out.push_str(state(s));
            out.push_str(": ");
            return reason_long_in(out, reason, unaccepted);
        }
        Close::HandshakeTimeout {
            syn_retransmits,
            syns_dropped,
        } => {
            let _ = write!(
                out,
                "handshake timeout ({syn_retransmits} SYN retransmits, no RST)"
            );
            if let Some(d) = syns_dropped {
                // Nothing was lost on the way: they never left this host.
                let _ = write!(out, ": {} SYN", d.count);
                if d.count != 1 {
                    out.push('s');
                }
                out.push_str(" dropped on this host (");
                drop_reason_into(out, &d.reason);
                out.push(')');
            }
            return;
        }
        Close::HandshakeFailed => "handshake failed (no RST, no retransmit: ICMP error?)",
        Close::Aborted => "connect abandoned by the application",
        Close::StoppedListening => "stopped listening",
        Close::StillOpen { state: s } => {
            out.push_str("still open (");
            out.push_str(state(s));
            return out.push(')');
        }
        Close::PeerNeverClosed => {
            "active close: FIN sent and acknowledged; peer has not closed \
             (orphan kept by the kernel for tcp_fin_timeout)"
        }
        Close::NoSocketReset { segment_flags } => {
            out.push_str("RST sent for a segment (");
            push_tcp_flags(out, *segment_flags);
            out.push_str(") of a connection this host no longer has (no socket)");
            return;
        }
        Close::ClosedUnseen { state: s } => {
            out.push_str("closed, its close unseen (last seen in ");
            out.push_str(state(s));
            return out.push_str("; gone from the kernel at exit)");
        }
        Close::Unknown => "close not seen",
    };
    out.push_str(fixed);
}

/// Why a verdict may be partial, in words.
pub fn incomplete(i: Incomplete) -> &'static str {
    match i {
        Incomplete::StartedMidLife => "started mid-life",
        Incomplete::Evicted => "evicted (table full)",
        Incomplete::EventsLost => "events lost",
        Incomplete::Gap => "a transition went unseen",
    }
}

/// The socket's error in the kernel's words, with what the counts say
/// about which timeout it was: `ETIMEDOUT: retransmission timeout, gave up
/// after 3 retransmits`.
pub fn error_into(out: &mut String, e: &SockError) {
    let timed_out = e.errno.unsigned_abs() as i32 == libc::ETIMEDOUT;
    if let (true, Some(ms)) = (timed_out, e.user_timeout_ms) {
        let _ = write!(out, "ETIMEDOUT: TCP_USER_TIMEOUT ({ms} ms) expired");
        if e.probes > 0 {
            let _ = write!(out, " ({} probes)", e.probes);
        } else if e.retransmits > 0 {
            let _ = write!(out, ", after {} retransmits", e.retransmits);
        }
        return;
    }
    let (name, what) = match e.errno.unsigned_abs() as i32 {
        libc::ETIMEDOUT if e.probes > 0 => {
            ("ETIMEDOUT", "probes unanswered (keepalive or zero window)")
        }
        libc::ETIMEDOUT if e.retransmits > 0 => ("ETIMEDOUT", "retransmission timeout"),
        libc::ETIMEDOUT => ("ETIMEDOUT", "timed out (no answer)"),
        libc::EHOSTUNREACH => ("EHOSTUNREACH", "ICMP host unreachable"),
        libc::ENETUNREACH => ("ENETUNREACH", "ICMP network unreachable"),
        libc::ECONNREFUSED => ("ECONNREFUSED", "connection refused"),
        libc::ECONNRESET => ("ECONNRESET", "connection reset by peer"),
        libc::EPIPE => ("EPIPE", "reset after this side closed"),
        libc::EPROTO => ("EPROTO", "protocol error"),
        libc::EMSGSIZE => ("EMSGSIZE", "message too long for the path"),
        _ => ("", ""),
    };
    if name.is_empty() {
        let _ = write!(out, "error {}", e.errno.unsigned_abs());
        return;
    }
    out.push_str(name);
    out.push_str(": ");
    out.push_str(what);
    if e.icmp_queued {
        out.push_str(" (ICMP error for this socket)");
    }
    if e.probes > 0 && e.errno.unsigned_abs() as i32 == libc::ETIMEDOUT {
        let _ = write!(out, " ({} probes)", e.probes);
    } else if e.retransmits > 0 {
        let _ = write!(out, ", gave up after {} retransmits", e.retransmits);
    }
}

/// `SYN`, `FIN|ACK`, ...: the names of the set flags, joined by `|`.
pub fn push_tcp_flags(out: &mut String, flags: u8) {
    const NAMES: [(u8, &str); 8] = [
        (0x01, "FIN"),
        (0x02, "SYN"),
        (0x04, "RST"),
        (0x08, "PSH"),
        (0x10, "ACK"),
        (0x20, "URG"),
        (0x40, "ECE"),
        (0x80, "CWR"),
    ];
    let mut first = true;
    for (bit, name) in NAMES {
        if flags & bit != 0 {
            if !first {
                out.push('|');
            }
            out.push_str(name);
            first = false;
        }
    }
    if first {
        out.push_str("no flags");
    }
}

/// A drop reason as the kernel names it (`NETFILTER_DROP`), or its number.
pub fn drop_reason_into(out: &mut String, r: &DropReason) {
    match &r.name {
        Some(name) => out.push_str(name),
        None => {
            out.push_str("reason ");
            push_u64(out, u64::from(r.code));
        }
    }
}

/// What a segment is called in a sentence: `SYN`, `SYN/ACK`, `FIN`,
/// `RST`; `handshake ACK` for the one an accept-queue overflow drops.
pub fn segment_name(kind: SegmentKind, overflow: bool) -> &'static str {
    match kind {
        SegmentKind::Syn => "SYN",
        SegmentKind::SynAck => "SYN/ACK",
        SegmentKind::Fin => "FIN",
        SegmentKind::Rst => "RST",
        SegmentKind::Ack if overflow => "handshake ACK",
        SegmentKind::Ack => "ACK",
    }
}

/// Was the segment dropped because the accept queue was full?
pub fn is_listen_overflow(r: &DropReason) -> bool {
    r.is_listen_overflow()
}

/// One dropped segment in a sentence, seen from `life`:
/// `SYN dropped on this host: NETFILTER_DROP`, `RST ignored:
/// TCP_INVALID_SEQUENCE`, `handshake ACK dropped: accept queue of
/// nginx[4311] full (TCP_LISTEN_OVERFLOW)`. `count` above 1 is put first
/// (`18 × handshake ACK dropped: …`).
pub fn drop_into(
    out: &mut String,
    kind: SegmentKind,
    reason: &DropReason,
    direction: Direction,
    count: u32,
    life: &SocketLife,
) {
    if count > 1 {
        push_u64(out, u64::from(count));
        out.push_str(" × ");
    }
    let overflow = is_listen_overflow(reason);
    out.push_str(segment_name(kind, overflow));
    if overflow {
        out.push_str(" dropped: accept queue of ");
        match &life.owner {
            Some(p) => proc_label_into(out, p),
            None => out.push_str("the listener"),
        }
        out.push_str(" full (");
        drop_reason_into(out, reason);
        return out.push(')');
    }
    // A segment the TCP stack itself turned away (its reasons are TCP_*)
    // reached the socket and was ignored by it; anything else (a firewall,
    // routing, a qdisc) dropped it on this host.
    let by_tcp = reason
        .name
        .as_deref()
        .is_some_and(|n| n.starts_with("TCP_"));
    out.push_str(match (direction, by_tcp) {
        (Direction::Incoming, true) => " ignored: ",
        (Direction::Incoming, false) => " received, dropped on this host: ",
        (Direction::Outgoing, _) => " dropped on this host: ",
    });
    drop_reason_into(out, reason);
}

/// `5 more drops (counted, not listed)`.
pub fn more_drops_into(out: &mut String, n: u64) {
    push_u64(out, n);
    out.push_str(" more dropped segments (counted, not listed)");
}

/// Kernel reason name → (plain words, short form for the attribution line).
const REASONS: &[(&str, &str, &str)] = &[
    (
        "TCP_ABORT_ON_CLOSE",
        "application closed with unread data",
        "unread data",
    ),
    // Sent by an abortive close: SO_LINGER {1, 0}, or a listener closing
    // with connections it never accepted (no linger involved there).
    (
        "TCP_STATE",
        "abortive close (SO_LINGER 0, or a listener closed before accepting it)",
        "abortive close",
    ),
    (
        "TCP_ABORT_ON_LINGER",
        "linger timeout in FIN_WAIT2",
        "FIN_WAIT2 linger timeout",
    ),
    (
        "TCP_ABORT_ON_DATA",
        "data arrived after close",
        "data after close",
    ),
    (
        "TCP_KEEPALIVE_TIMEOUT",
        "keepalive timeout",
        "keepalive timeout",
    ),
    ("TCP_ABORT_ON_MEMORY", "out of memory", "out of memory"),
    ("NO_SOCKET", "no socket (port closed)", "no socket"),
    (
        "TCP_TIMEWAIT_SOCKET",
        "segment for a TIME_WAIT socket",
        "TIME_WAIT socket",
    ),
    (
        "TCP_DISCONNECT_WITH_DATA",
        "disconnect with unread data",
        "unread data",
    ),
];

fn known_reason(r: &RstReason) -> Option<&'static (&'static str, &'static str, &'static str)> {
    let name = r.name.as_deref()?;
    REASONS.iter().find(|(known, ..)| *known == name)
}

/// An RST reason in plain words: "application closed with unread data";
/// the kernel's name when there are no words for it; its number when the
/// kernel gave no name.
pub fn reason_text(r: &RstReason) -> String {
    let mut s = String::new();
    reason_text_into(&mut s, r);
    s
}

/// [`reason_text`], appended to `out`.
pub fn reason_text_into(out: &mut String, r: &RstReason) {
    reason_text_in(out, r, None);
}

/// What a reason means from who sent it, where the kernel's one name
/// covers several causes: (words, short form). TCP_STATE is sent both by
/// an abortive close (SO_LINGER 0) and to the children a listener never
/// accepted when it closes — no linger there.
fn reason_in_context(
    r: &RstReason,
    unaccepted: Option<bool>,
) -> Option<(&'static str, &'static str)> {
    match (r.name.as_deref(), unaccepted) {
        (Some("TCP_STATE"), Some(true)) => Some((
            "its listener closed before accepting it",
            "listener closed, never accepted",
        )),
        (Some("TCP_STATE"), Some(false)) => {
            Some(("abortive close (SO_LINGER 0)", "abortive close"))
        }
        _ => None,
    }
}

/// [`reason_text_into`] for the reset of a socket that was (`Some(true)`)
/// or was not a never-accepted child; `None` when unknown.
pub fn reason_text_in(out: &mut String, r: &RstReason, unaccepted: Option<bool>) {
    if let Some((text, _)) = reason_in_context(r, unaccepted) {
        return out.push_str(text);
    }
    match (known_reason(r), &r.name, r.code) {
        (Some((_, text, _)), ..) => out.push_str(text),
        (None, Some(name), _) => out.push_str(name),
        (None, None, Some(code)) => {
            out.push_str("reason ");
            push_u64(out, u64::from(code));
        }
        (None, None, None) => out.push_str("reason unknown (kernel < 6.10)"),
    }
}

/// "application closed with unread data (TCP_ABORT_ON_CLOSE)": the words,
/// and the kernel's name when it is not the words already.
pub fn reason_long(r: &RstReason) -> String {
    let mut s = String::new();
    reason_long_into(&mut s, r);
    s
}

/// [`reason_long`], appended to `out`.
pub fn reason_long_into(out: &mut String, r: &RstReason) {
    reason_long_in(out, r, None);
}

/// [`reason_long_into`], in the context [`reason_text_in`] takes.
pub fn reason_long_in(out: &mut String, r: &RstReason, unaccepted: Option<bool>) {
    let start = out.len();
    reason_text_in(out, r, unaccepted);
    match &r.name {
        Some(name) if out[start..] != **name => {
            out.push_str(" (");
            out.push_str(name);
            out.push(')');
        }
        _ => {}
    }
}

/// `closed by exit of nginx[4311], killed by SIGKILL from kill[4390] → RST
/// (unread data, TCP_ABORT_ON_CLOSE) · 5 bytes never read`; `None` when
/// neither the closer nor unread bytes are known.
pub fn attribution(life: &SocketLife, verdict: &Verdict) -> Option<String> {
    let mut s = String::with_capacity(64);
    attribution_into(&mut s, life, verdict).then_some(s)
}

/// [`attribution`], appended to `out`; false (nothing appended) when there
/// is nothing to say.
pub fn attribution_into(out: &mut String, life: &SocketLife, verdict: &Verdict) -> bool {
    let unread = life.unread.filter(|&n| n > 0);
    if life.closed_by.is_none() && unread.is_none() {
        return false;
    }
    let start = out.len();
    if let Some(by) = &life.closed_by {
        out.push_str("closed by ");
        match &life.exit {
            Some(e) => exit_into(out, e, life),
            None => process_label_into(out, by.tgid, &by.comm, life),
        }
        match &verdict.close {
            Close::ResetSent { reason, .. } => match (
                reason_in_context(reason, Some(life.unaccepted))
                    .map(|(_, short)| short)
                    .or_else(|| known_reason(reason).map(|(.., short)| *short)),
                &reason.name,
            ) {
                (Some(short), Some(name)) if short != name => {
                    out.push_str(" → RST (");
                    out.push_str(short);
                    out.push_str(", ");
                    out.push_str(name);
                    out.push(')');
                }
                (_, Some(name)) => {
                    out.push_str(" → RST (");
                    out.push_str(name);
                    out.push(')');
                }
                (_, None) => out.push_str(" → RST"),
            },
            Close::Active { .. }
            | Close::PeerNeverClosed
            | Close::Passive
            | Close::Simultaneous => {
                out.push_str(" → FIN");
                if life.exit.is_some() {
                    out.push_str(" (graceful)");
                }
            }
            Close::Aborted => out.push_str(" → connect abandoned"),
            _ => {}
        }
    }
    if let Some(n) = unread {
        push_part(out, start, |s| {
            push_u64(s, u64::from(n));
            s.push_str(" bytes never read");
        });
    }
    true
}

/// `exit of nginx[4311], killed by SIGKILL from kill[4390] (core dumped)`;
/// `exit of hog[77], killed by the OOM killer (SIGKILL)`.
fn exit_into(out: &mut String, e: &ExitInfo, life: &SocketLife) {
    out.push_str("exit of ");
    process_label_into(out, e.tgid, &e.comm, life);
    match (&e.signal, e.status) {
        (Some(sig), _) if sig.oom_kill => {
            // Its sender is only whoever needed the memory (often the
            // victim itself): the OOM killer chose it.
            out.push_str(", killed by the OOM killer (");
            out.push_str(&sig.name);
            out.push(')');
        }
        (Some(sig), _) => {
            out.push_str(if sig.killed {
                ", killed by "
            } else {
                ", after "
            });
            out.push_str(&sig.name);
            if let Some(p) = &sig.sender {
                out.push_str(" from ");
                proc_label_into(out, p);
            }
            if e.core_dumped {
                out.push_str(" (core dumped)");
            }
        }
        (None, Some(status)) => {
            let _ = write!(out, " (exit code {status})");
        }
        (None, None) => {}
    }
}

/// `process[tgid]` for a task of process `tgid` named `comm`: a thread with
/// a name of its own (redis-server's `jemalloc_bg_thd`) is named after the
/// socket's owner when that is its process, the thread after it.
fn process_label_into(out: &mut String, tgid: u32, comm: &str, life: &SocketLife) {
    match life
        .owner
        .as_ref()
        .filter(|o| o.tgid == tgid && *o.comm != *comm)
    {
        // Pushed piece by piece: `write!` cost a few hundred instructions
        // per closed socket here.
        Some(owner) => {
            out.push_str(&owner.comm);
            out.push('[');
            push_u64(out, u64::from(tgid));
            out.push_str("] (thread ");
            out.push_str(comm);
            out.push(')');
        }
        None => {
            out.push_str(comm);
            out.push('[');
            push_u64(out, u64::from(tgid));
            out.push(']');
        }
    }
}

/// `comm[tgid]`, raw: escape before printing.
pub fn proc_label(p: &Proc) -> String {
    let mut s = String::new();
    proc_label_into(&mut s, p);
    s
}

/// [`proc_label`], appended to `out`.
pub fn proc_label_into(out: &mut String, p: &Proc) {
    out.push_str(&p.comm);
    out.push('[');
    push_u64(out, u64::from(p.tgid));
    out.push(']');
}

#[cfg(test)]
mod tests;
