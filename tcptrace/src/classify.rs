//! Classifier: says in plain words how a [`SocketLife`] opened and closed,
//! who closed it and why.
//!
//! # JSON schema of a [`Verdict`] (stable; snake_case)
//!
//! ```text
//! {
//!   "open": {"kind": "active", "established": true, "handshake_ns": 62000 | null}
//!         | {"kind": "passive", "established": true, "handshake_ns": 2000 | null,
//!            "listener": "0.0.0.0:8099" | null}
//!         | {"kind": "listen"} | {"kind": "no_socket"} | {"kind": "unknown"},
//!   "close": {"kind": "active", "time_wait": true} | {"kind": "passive"}
//!          | {"kind": "simultaneous"}
//!          | {"kind": "refused", "side": "client" | "server", "reason": <reason> | null}
//!          | {"kind": "reset_received", "state": "ESTABLISHED" | null}
//!          | {"kind": "reset_sent", "state": "ESTABLISHED" | null, "reason": <reason>}
//!          | {"kind": "handshake_timeout", "syn_retransmits": 3}
//!          | {"kind": "handshake_failed"} | {"kind": "aborted"}
//!          | {"kind": "stopped_listening"}
//!          | {"kind": "still_open", "state": "ESTABLISHED" | null}
//!          | {"kind": "closed_unseen", "state": "FIN_WAIT1" | null}  // gone at exit
//!          | {"kind": "no_socket_reset", "segment_flags": 17}  // RST for a late FIN|ACK
//!          | {"kind": "peer_never_closed"}  // FIN acked, no FIN back (CLOSE_WAIT leak?)
//!          | {"kind": "unknown"},
//!   "incomplete": ["started_mid_life" | "evicted" | "events_lost", ...],
//!   "summary": "active open (3-way) · active close (4-way)",
//!   "attribution": "closed by python3[2251] → FIN" | null
//! }
//! <reason> = {"code": 11 | null, "name": "TCP_ABORT_ON_CLOSE" | null,
//!             "text": "application closed with unread data"}
//! ```
//! `handshake_ns` of a passive open runs from the child socket's creation
//! (the final ACK: the SYN and SYN/ACK belong to a request sock that reports
//! no state change) to ESTABLISHED, so it is usually tiny.
//! `summary` and `attribution` hold raw process names: escape them
//! ([`crate::render::escape`]) before printing to a terminal.

use std::fmt::Write as _;

use serde::Serialize;

use crate::decode::{Proc, ResetReason, TcpState};
use crate::model::{ExitInfo, ResetSent, Role, SocketLife};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub open: Open,
    pub close: Close,
    /// Why the account may be partial; empty when complete.
    pub incomplete: Vec<Incomplete>,
    /// One line: open path · close path (· incomplete: ...).
    pub summary: String,
    /// Who closed the socket and what it sent, when known.
    pub attribution: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Open {
    /// Client 3-way: CLOSE→SYN_SENT→ESTABLISHED.
    Active {
        established: bool,
        /// SYN_SENT→ESTABLISHED.
        handshake_ns: Option<u64>,
    },
    /// Server 3-way: LISTEN→SYN_RECV→ESTABLISHED.
    Passive {
        established: bool,
        handshake_ns: Option<u64>,
        listener: Option<String>,
    },
    Listen,
    /// An RST sent with no socket: nothing was opened.
    NoSocket,
    /// Tracing began mid-life.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Server,
}

/// An RST reason in plain words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RstReason {
    pub code: Option<u32>,
    pub name: Option<String>,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Close {
    /// We sent FIN first: ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE.
    Active {
        time_wait: bool,
    },
    /// The peer's FIN first: ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE.
    Passive,
    /// FIN_WAIT1→CLOSING→CLOSE.
    Simultaneous,
    /// Client: SYN_SENT→CLOSE on an RST (`reason`: the peer's, when seen
    /// locally). Server: an RST sent with no socket.
    Refused {
        side: Side,
        reason: Option<RstReason>,
    },
    /// The peer's RST, in the state the socket was in when it arrived.
    ResetReceived {
        state: Option<TcpState>,
    },
    /// We sent an RST, in the state before the close.
    ResetSent {
        state: Option<TcpState>,
        reason: RstReason,
    },
    /// SYN_SENT→CLOSE with no RST, after SYN retransmits.
    HandshakeTimeout {
        syn_retransmits: u32,
    },
    /// SYN_SENT→CLOSE with neither RST nor retransmit (e.g. an ICMP error).
    HandshakeFailed,
    /// The application closed a socket still connecting.
    Aborted,
    /// A listener closed.
    StoppedListening,
    StillOpen {
        state: Option<TcpState>,
    },
    /// We sent FIN, it was acknowledged, the peer never sent its own: the
    /// orphan was handed to a FIN_WAIT2 mini-socket (kept for
    /// tcp_fin_timeout) while the peer may still hold its end (CLOSE_WAIT).
    PeerNeverClosed,
    /// An RST sent with no socket for a segment that was not a SYN: a late
    /// segment of a connection this host no longer has (nothing refused).
    NoSocketReset {
        /// The answered segment's TCP flags.
        segment_flags: u8,
    },
    /// Gone from the kernel at exit, its closing transitions unseen; the
    /// last state tcptrace saw.
    ClosedUnseen {
        state: Option<TcpState>,
    },
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Incomplete {
    StartedMidLife,
    Evicted,
    EventsLost,
    /// A transition did not follow from the previous state.
    Gap,
}

impl Open {
    /// The JSON `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Open::Active { .. } => "active",
            Open::Passive { .. } => "passive",
            Open::Listen => "listen",
            Open::NoSocket => "no_socket",
            Open::Unknown => "unknown",
        }
    }

    pub fn handshake_ns(&self) -> Option<u64> {
        match self {
            Open::Active { handshake_ns, .. } | Open::Passive { handshake_ns, .. } => *handshake_ns,
            _ => None,
        }
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        self.describe_into(&mut s);
        s
    }

    /// [`Open::describe`], appended to `out` (nothing for [`Open::NoSocket`]).
    pub fn describe_into(&self, out: &mut String) {
        let (what, established) = match self {
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
}

impl Close {
    /// The JSON `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Close::Active { .. } => "active",
            Close::Passive => "passive",
            Close::Simultaneous => "simultaneous",
            Close::Refused { .. } => "refused",
            Close::ResetReceived { .. } => "reset_received",
            Close::ResetSent { .. } => "reset_sent",
            Close::HandshakeTimeout { .. } => "handshake_timeout",
            Close::HandshakeFailed => "handshake_failed",
            Close::Aborted => "aborted",
            Close::StoppedListening => "stopped_listening",
            Close::StillOpen { .. } => "still_open",
            Close::ClosedUnseen { .. } => "closed_unseen",
            Close::NoSocketReset { .. } => "no_socket_reset",
            Close::PeerNeverClosed => "peer_never_closed",
            Close::Unknown => "unknown",
        }
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        self.describe_into(&mut s);
        s
    }

    /// [`Close::describe`], appended to `out`.
    pub fn describe_into(&self, out: &mut String) {
        let state = |s: &Option<TcpState>| s.map_or("an unknown state", TcpState::name);
        let fixed = match self {
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
                    out.push_str(&r.text);
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
                return reason.long_into(out);
            }
            Close::HandshakeTimeout { syn_retransmits } => {
                let _ = write!(
                    out,
                    "handshake timeout ({syn_retransmits} SYN retransmits, no RST)"
                );
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
}

/// The socket's error in the kernel's words, with what the counts say
/// about which timeout it was: `ETIMEDOUT: retransmission timeout, gave up
/// after 3 retransmits`.
pub fn error_into(out: &mut String, e: &crate::model::SockError) {
    let (name, what) = match e.errno.unsigned_abs() as i32 {
        libc::ETIMEDOUT if e.probes > 0 => {
            ("ETIMEDOUT", "probes unanswered (keepalive or zero window)")
        }
        libc::ETIMEDOUT if e.retransmits > 0 => ("ETIMEDOUT", "retransmission timeout"),
        libc::ETIMEDOUT => ("ETIMEDOUT", "timed out (TCP_USER_TIMEOUT or no answer)"),
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
    if e.probes > 0 && e.errno.unsigned_abs() as i32 == libc::ETIMEDOUT {
        let _ = write!(out, " ({} probes)", e.probes);
    } else if e.retransmits > 0 {
        let _ = write!(out, ", gave up after {} retransmits", e.retransmits);
    }
}

/// TCP header flag bits.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

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

impl Incomplete {
    pub fn describe(self) -> &'static str {
        match self {
            Incomplete::StartedMidLife => "started mid-life",
            Incomplete::Evicted => "evicted (table full)",
            Incomplete::EventsLost => "events lost",
            Incomplete::Gap => "a transition went unseen",
        }
    }
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

impl RstReason {
    pub fn from_kernel(reason: Option<&ResetReason>) -> RstReason {
        let Some(r) = reason else {
            return RstReason {
                code: None,
                name: None,
                text: "reason unknown (kernel < 6.10)".to_owned(),
            };
        };
        let known = r
            .name
            .as_deref()
            .and_then(|n| REASONS.iter().find(|(name, ..)| *name == n));
        let text = match (known, &r.name) {
            (Some((_, text, _)), _) => (*text).to_owned(),
            (None, Some(name)) => name.clone(),
            (None, None) => format!("reason {}", r.code),
        };
        RstReason {
            code: Some(r.code),
            name: r.name.clone(),
            text,
        }
    }

    fn short(&self) -> &str {
        self.name
            .as_deref()
            .and_then(|n| REASONS.iter().find(|(name, ..)| *name == n))
            .map_or(&self.text, |(.., short)| short)
    }

    /// "application closed with unread data (TCP_ABORT_ON_CLOSE)".
    pub fn long(&self) -> String {
        let mut s = String::new();
        self.long_into(&mut s);
        s
    }

    /// [`RstReason::long`], appended to `out`.
    pub fn long_into(&self, out: &mut String) {
        out.push_str(&self.text);
        match &self.name {
            Some(name) if *name != self.text => {
                out.push_str(" (");
                out.push_str(name);
                out.push(')');
            }
            _ => {}
        }
    }
}

/// `comm[tgid]`, raw: escape before printing.
pub fn proc_label(p: &Proc) -> String {
    let mut s = String::new();
    proc_label_into(&mut s, p);
    s
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
        Some(owner) => {
            let _ = write!(out, "{}[{tgid}] (thread {comm})", &*owner.comm);
        }
        None => {
            let _ = write!(out, "{comm}[{tgid}]");
        }
    }
}

/// [`proc_label`], appended to `out`.
fn proc_label_into(out: &mut String, p: &Proc) {
    out.push_str(&p.comm);
    out.push('[');
    crate::render::push_u64(out, u64::from(p.tgid));
    out.push(']');
}

pub fn classify(life: &SocketLife) -> Verdict {
    let open = open_of(life);
    let close = close_of(life);
    let incomplete: Vec<Incomplete> = [
        (life.started_mid_life, Incomplete::StartedMidLife),
        (life.evicted, Incomplete::Evicted),
        (life.events_lost, Incomplete::EventsLost),
        (life.gap || life.gone_unseen, Incomplete::Gap),
    ]
    .into_iter()
    .filter_map(|(on, what)| on.then_some(what))
    .collect();
    // The non-empty parts, joined by " · ".
    let mut summary = String::with_capacity(96);
    push_part(&mut summary, |s| open.describe_into(s));
    push_part(&mut summary, |s| close.describe_into(s));
    if let Some(e) = &life.error {
        push_part(&mut summary, |s| error_into(s, e));
    }
    if !incomplete.is_empty() {
        push_part(&mut summary, |s| {
            s.push_str("incomplete: ");
            for (n, i) in incomplete.iter().enumerate() {
                if n > 0 {
                    s.push_str(", ");
                }
                s.push_str(i.describe());
            }
        });
    }
    Verdict {
        attribution: attribution(life, &close),
        summary,
        open,
        close,
        incomplete,
    }
}

/// Appends what `write` writes, after " · " unless `out` is empty; nothing
/// when `write` writes nothing.
fn push_part(out: &mut String, write: impl FnOnce(&mut String)) {
    let mark = out.len();
    if mark > 0 {
        out.push_str(" · ");
    }
    let body = out.len();
    write(out);
    if out.len() == body {
        out.truncate(mark);
    }
}

/// Time from the `a` transition to the `b` transition.
fn between(life: &SocketLife, a: (TcpState, TcpState), b: (TcpState, TcpState)) -> Option<u64> {
    let a = life.step(a.0, a.1)?;
    let b = life.step(b.0, b.1)?;
    Some(b.offset_ns.saturating_sub(a.offset_ns))
}

fn open_of(life: &SocketLife) -> Open {
    use TcpState::*;
    if life.socketless {
        return Open::NoSocket;
    }
    if life.started_mid_life {
        return Open::Unknown;
    }
    match life.role {
        Role::Client => Open::Active {
            established: life.step(SynSent, Established).is_some(),
            handshake_ns: between(life, (Close, SynSent), (SynSent, Established)),
        },
        Role::Server => Open::Passive {
            established: life.step(SynRecv, Established).is_some(),
            handshake_ns: between(life, (Listen, SynRecv), (SynRecv, Established)),
            listener: life.listener.as_ref().map(crate::render::addr_string),
        },
        Role::Listener => Open::Listen,
        Role::Unknown => Open::Unknown,
    }
}

/// The state a reset row names, or the state left at the close when the
/// row says CLOSE (the kernel closes before it sends).
fn state_before(row: Option<TcpState>, life: &SocketLife) -> Option<TcpState> {
    match row {
        Some(TcpState::Close) | None => life.close_step().map(|s| s.old).or(row),
        other => other,
    }
}

fn close_of(life: &SocketLife) -> Close {
    use TcpState::{Close as Closed, CloseWait, Closing, FinWait1, Listen, SynSent};
    let sent: Option<&ResetSent> = life.resets_sent.first();
    if life.socketless {
        let reason = Some(RstReason::from_kernel(sent.and_then(|r| r.reason.as_ref())));
        // Only a SYN answered with no socket is a refused connection; a
        // late FIN or ACK of a connection this host already dropped is not.
        // (No flags: a kernel that does not say; it was called refused.)
        return match sent.and_then(|r| r.segment_flags) {
            Some(flags) if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 => Close::NoSocketReset {
                segment_flags: flags,
            },
            _ => Close::Refused {
                side: Side::Server,
                reason,
            },
        };
    }
    let closed = life.state == Some(Closed);
    let before = life.close_step().map(|s| s.old);
    let received = life.resets_received.first();
    if closed && before == Some(Listen) {
        return Close::StoppedListening;
    }
    if closed && before == Some(SynSent) {
        return match () {
            _ if received.is_some() => Close::Refused {
                side: Side::Client,
                reason: life
                    .peer_reset
                    .as_ref()
                    .map(|r| RstReason::from_kernel(r.reason.as_ref())),
            },
            _ if life.closed_by.is_some() => Close::Aborted,
            _ if life.syn_retransmits > 0 => Close::HandshakeTimeout {
                syn_retransmits: life.syn_retransmits,
            },
            _ => Close::HandshakeFailed,
        };
    }
    // Our own abortive close wins; otherwise whichever RST came first.
    let we_aborted = sent.is_some() && life.closed_by.is_some();
    match (sent, received) {
        (Some(s), Some(r)) if !we_aborted && r.offset_ns < s.offset_ns => {
            return Close::ResetReceived {
                state: state_before(r.state, life),
            };
        }
        (Some(s), _) => {
            return Close::ResetSent {
                state: state_before(s.state, life),
                reason: RstReason::from_kernel(s.reason.as_ref()),
            };
        }
        (None, Some(r)) => {
            return Close::ResetReceived {
                state: state_before(r.state, life),
            };
        }
        (None, None) => {}
    }
    let went = |old: Option<TcpState>, new: TcpState| {
        life.steps
            .iter()
            .any(|s| s.new == new && old.is_none_or(|o| s.old == o))
    };
    match () {
        _ if !closed && life.still_open => Close::StillOpen { state: life.state },
        _ if !closed && life.gone_unseen => Close::ClosedUnseen { state: life.state },
        _ if !closed => Close::Unknown,
        _ if went(Some(FinWait1), Closing) => Close::Simultaneous,
        _ if life.fin_wait2_orphan => Close::PeerNeverClosed,
        _ if went(None, FinWait1) => Close::Active {
            time_wait: life.time_wait,
        },
        _ if went(None, CloseWait) => Close::Passive,
        _ => Close::Unknown,
    }
}

fn exit_text(out: &mut String, e: &ExitInfo, life: &SocketLife) {
    out.push_str("exit of ");
    process_label_into(out, e.tgid, &e.comm, life);
    match (&e.signal, e.status) {
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

/// `closed by exit of nginx[4311], killed by SIGKILL from kill[4390] → RST
/// (unread data, TCP_ABORT_ON_CLOSE) · 5 bytes never read`.
fn attribution(life: &SocketLife, close: &Close) -> Option<String> {
    let unread = life.unread.filter(|&n| n > 0);
    if life.closed_by.is_none() && unread.is_none() {
        return None;
    }
    let mut out = String::with_capacity(64);
    if let Some(by) = &life.closed_by {
        out.push_str("closed by ");
        match &life.exit {
            Some(e) => exit_text(&mut out, e, life),
            None => process_label_into(&mut out, by.tgid, &by.comm, life),
        }
        match close {
            Close::ResetSent { reason, .. } => match &reason.name {
                Some(name) if reason.short() != name => {
                    out.push_str(" → RST (");
                    out.push_str(reason.short());
                    out.push_str(", ");
                    out.push_str(name);
                    out.push(')');
                }
                Some(name) => {
                    out.push_str(" → RST (");
                    out.push_str(name);
                    out.push(')');
                }
                None => out.push_str(" → RST"),
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
        push_part(&mut out, |s| {
            let _ = write!(s, "{n} bytes never read");
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_are_told_with_what_the_counts_say() {
        use crate::model::SockError;
        let text = |errno, retransmits, probes| {
            let mut s = String::new();
            error_into(
                &mut s,
                &SockError {
                    offset_ns: 0,
                    errno,
                    retransmits,
                    probes,
                },
            );
            s
        };
        assert_eq!(
            text(libc::ETIMEDOUT, 15, 0),
            "ETIMEDOUT: retransmission timeout, gave up after 15 retransmits"
        );
        assert_eq!(
            text(libc::ETIMEDOUT, 0, 9),
            "ETIMEDOUT: probes unanswered (keepalive or zero window) (9 probes)"
        );
        assert_eq!(
            text(libc::EHOSTUNREACH, 0, 0),
            "EHOSTUNREACH: ICMP host unreachable"
        );
        assert_eq!(text(4242, 0, 0), "error 4242");
    }

    use super::*;
    use crate::tracker::fixtures::*;

    fn verdict_of(records: &[crate::decode::Record], skaddr: u64) -> Verdict {
        classify(&life_of(&run(records), skaddr))
    }

    #[test]
    fn client_closing_first() {
        let lives = run(&client_closes_first());
        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(
            c.open,
            Open::Active {
                established: true,
                handshake_ns: Some(62_000)
            }
        );
        assert_eq!(c.close, Close::Active { time_wait: true });
        assert_eq!(c.summary, "active open (3-way) · active close (4-way)");
        assert_eq!(
            c.attribution.as_deref(),
            Some("closed by python3[2251] → FIN")
        );
        assert!(c.incomplete.is_empty());

        let s = classify(&life_of(&lives, SERVER_SK));
        assert_eq!(
            s.open,
            Open::Passive {
                established: true,
                handshake_ns: Some(2_000),
                listener: Some("0.0.0.0:8099".to_owned())
            }
        );
        assert_eq!(s.close, Close::Passive);
        assert_eq!(s.summary, "passive open (3-way) · passive close (4-way)");
        assert_eq!(
            s.attribution.as_deref(),
            Some("closed by nginx[4311] → FIN")
        );

        let l = classify(&life_of(&lives, LISTENER_SK));
        assert_eq!(
            (l.open.clone(), l.close.clone()),
            (Open::Listen, Close::StoppedListening)
        );
        assert_eq!(l.summary, "listening · stopped listening");
        assert_eq!(l.attribution.as_deref(), Some("closed by nginx[4311]"));
    }

    #[test]
    fn server_closing_first() {
        let lives = run(&server_closes_first());
        let s = classify(&life_of(&lives, SERVER_SK));
        assert_eq!(s.close, Close::Active { time_wait: true });
        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(c.close, Close::Passive);
        assert_eq!(
            c.attribution.as_deref(),
            Some("closed by python3[2251] → FIN")
        );
    }

    #[test]
    fn refused_on_both_sides() {
        let lives = run(&refused());
        let rst = classify(&life_of(&lives, 0));
        assert_eq!(rst.open, Open::NoSocket);
        assert_eq!(
            rst.close,
            Close::Refused {
                side: Side::Server,
                reason: Some(RstReason {
                    code: Some(1),
                    name: Some("NO_SOCKET".into()),
                    text: "no socket (port closed)".into()
                })
            }
        );
        assert_eq!(
            rst.summary,
            "refused at start (server side: RST sent, no socket)"
        );
        assert_eq!(rst.attribution, None);

        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(c.close.kind(), "refused");
        assert_eq!(
            c.summary,
            "active open (not established) · refused (RST received in SYN_SENT; peer: no socket (port closed))"
        );
        assert_eq!(c.open.handshake_ns(), None);
        assert_eq!(c.attribution, None);
    }

    #[test]
    fn linger0_is_a_reset_sent_on_one_side_and_received_on_the_other() {
        let lives = run(&linger0());
        let s = classify(&life_of(&lives, SERVER_SK));
        assert_eq!(
            s.close,
            Close::ResetSent {
                state: Some(TcpState::Established),
                reason: RstReason {
                    code: Some(14),
                    name: Some("TCP_STATE".into()),
                    text: "abortive close (SO_LINGER 0, or a listener closed before accepting it)"
                        .into()
                }
            }
        );
        assert_eq!(
            s.attribution.as_deref(),
            Some("closed by nginx[4311] → RST (abortive close, TCP_STATE)")
        );
        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(
            c.close,
            Close::ResetReceived {
                state: Some(TcpState::Established)
            }
        );
        assert_eq!(
            c.summary,
            "active open (3-way) · reset by peer in ESTABLISHED"
        );
    }

    #[test]
    fn unread_close_names_the_reason_and_the_bytes() {
        let s = verdict_of(&unread_close(), SERVER_SK);
        assert_eq!(
            s.summary,
            "passive open (3-way) · RST sent in ESTABLISHED: application closed with unread data (TCP_ABORT_ON_CLOSE)"
        );
        assert_eq!(
            s.attribution.as_deref(),
            Some(
                "closed by nginx[4311] → RST (unread data, TCP_ABORT_ON_CLOSE) · 13 bytes never read"
            )
        );
    }

    #[test]
    fn sigkill_attribution() {
        let s = verdict_of(&killed(), SERVER_SK);
        assert_eq!(
            s.attribution.as_deref(),
            Some(
                "closed by exit of nginx[4311], killed by SIGKILL from kill[4390] → RST (unread data, TCP_ABORT_ON_CLOSE) · 5 bytes never read"
            )
        );
        assert_eq!(s.close.kind(), "reset_sent");
    }

    #[test]
    fn a_signal_not_proven_fatal_is_worded_as_such() {
        let (s, ng) = (server(), nginx());
        let mut recs = handshake();
        recs.extend([
            signal(1990, 15, 4311, &killer()),
            crate::decode::Record::ProcessExit {
                ts_ns: us(2000),
                task: ng,
                exit_code: None,
                group_dead: true,
            },
            s.by(2010, &ng).st(1, 4),
            s.irq(2020).st(4, 5),
            s.irq(2030).close(5, 0),
        ]);
        assert_eq!(
            verdict_of(&recs, SERVER_SK).attribution.as_deref(),
            Some("closed by exit of nginx[4311], after SIGTERM from kill[4390] → FIN (graceful)")
        );
    }

    #[test]
    fn exit_code_3_closes_gracefully() {
        let s = verdict_of(&exit_code_3(), SERVER_SK);
        assert_eq!(s.close, Close::Active { time_wait: true });
        assert_eq!(
            s.attribution.as_deref(),
            Some("closed by exit of nginx[4311] (exit code 3) → FIN (graceful)")
        );
    }

    #[test]
    fn simultaneous_close_on_both_sides() {
        let lives = run(&simultaneous());
        for sk in [CLIENT_SK, SERVER_SK] {
            assert_eq!(classify(&life_of(&lives, sk)).close, Close::Simultaneous);
        }
    }

    #[test]
    fn handshake_timeout_and_failure() {
        let c = verdict_of(&handshake_timeout(), CLIENT_SK);
        assert_eq!(c.close, Close::HandshakeTimeout { syn_retransmits: 3 });
        assert_eq!(
            c.summary,
            "active open (not established) · handshake timeout (3 SYN retransmits, no RST)"
        );
        let no_retransmit: Vec<_> = handshake_timeout()
            .into_iter()
            .filter(|r| !matches!(r, crate::decode::Record::Retransmit { .. }))
            .collect();
        assert_eq!(
            verdict_of(&no_retransmit, CLIENT_SK).close,
            Close::HandshakeFailed
        );
        // python3 gives up connecting itself.
        let c0 = client();
        let aborted = [
            c0.by(0, &python()).st(7, 2),
            c0.by(900, &python()).close(2, 0),
        ];
        let v = verdict_of(&aborted, CLIENT_SK);
        assert_eq!(v.close, Close::Aborted);
        assert_eq!(
            v.attribution.as_deref(),
            Some("closed by python3[2251] → connect abandoned")
        );
    }

    #[test]
    fn incomplete_lives_say_why() {
        let c = client();
        let mut life = life_of(&run(&[c.by(10, &python()).st(1, 4)]), CLIENT_SK);
        life.mark_lost_events();
        let v = classify(&life);
        assert_eq!(v.open, Open::Unknown);
        assert_eq!(
            v.close,
            Close::StillOpen {
                state: Some(TcpState::FinWait1)
            }
        );
        assert_eq!(
            v.incomplete,
            [Incomplete::StartedMidLife, Incomplete::EventsLost]
        );
        assert_eq!(
            v.summary,
            "open not seen · still open (FIN_WAIT1) · incomplete: started mid-life, events lost"
        );
        life.still_open = false;
        life.evicted = true;
        assert_eq!(classify(&life).close, Close::Unknown);
        assert!(classify(&life).incomplete.contains(&Incomplete::Evicted));
    }

    #[test]
    fn reason_words() {
        let r = |code, name: Option<&str>| {
            RstReason::from_kernel(Some(&ResetReason {
                code,
                name: name.map(str::to_owned),
            }))
        };
        assert_eq!(
            r(12, Some("TCP_ABORT_ON_LINGER")).text,
            "linger timeout in FIN_WAIT2"
        );
        assert_eq!(
            r(8, Some("TCP_ABORT_ON_DATA")).text,
            "data arrived after close"
        );
        assert_eq!(
            r(15, Some("TCP_KEEPALIVE_TIMEOUT")).text,
            "keepalive timeout"
        );
        assert_eq!(r(13, Some("TCP_ABORT_ON_MEMORY")).text, "out of memory");
        assert_eq!(r(3, Some("TCP_RFC7323_PAWS")).text, "TCP_RFC7323_PAWS");
        assert_eq!(r(3, Some("TCP_RFC7323_PAWS")).long(), "TCP_RFC7323_PAWS");
        assert_eq!(r(77, None).text, "reason 77");
        assert_eq!(
            RstReason::from_kernel(None).text,
            "reason unknown (kernel < 6.10)"
        );
    }

    #[test]
    fn json_schema_of_a_verdict() {
        let v = serde_json::to_value(verdict_of(&killed(), SERVER_SK)).unwrap();
        assert_eq!(v["open"]["kind"], "passive");
        assert_eq!(v["open"]["handshake_ns"], 2000);
        assert_eq!(v["open"]["listener"], "0.0.0.0:8099");
        assert_eq!(v["close"]["kind"], "reset_sent");
        assert_eq!(v["close"]["state"], "ESTABLISHED");
        assert_eq!(v["close"]["reason"]["code"], 11);
        assert_eq!(v["close"]["reason"]["name"], "TCP_ABORT_ON_CLOSE");
        assert_eq!(
            v["close"]["reason"]["text"],
            "application closed with unread data"
        );
        assert_eq!(v["incomplete"], serde_json::json!([]));
        assert!(
            v["attribution"]
                .as_str()
                .unwrap()
                .starts_with("closed by exit of nginx[4311]")
        );
        let v = serde_json::to_value(verdict_of(&refused(), CLIENT_SK)).unwrap();
        assert_eq!(v["close"]["side"], "client");
        assert_eq!(v["open"]["established"], false);
        assert_eq!(v["attribution"], serde_json::Value::Null);
    }

    #[test]
    fn kinds_match_the_json_tags() {
        let closes = [
            Close::Active { time_wait: true },
            Close::Refused {
                side: Side::Client,
                reason: None,
            },
            Close::HandshakeTimeout { syn_retransmits: 1 },
            Close::StoppedListening,
            Close::StillOpen { state: None },
        ];
        for c in closes {
            assert_eq!(serde_json::to_value(&c).unwrap()["kind"], c.kind());
        }
        for o in [Open::Listen, Open::NoSocket, Open::Unknown] {
            assert_eq!(serde_json::to_value(&o).unwrap()["kind"], o.kind());
        }
    }
}
