//! JSON output (`--json`): one object per line, each with a `type`.
//!
//! # Schema (stable; snake_case; new fields may be added)
//!
//! **Sockets view** — one line per finished socket:
//!
//! ```text
//! {"type": "socket", "socket": <SocketLife>, "verdict": <Verdict>}
//! ```
//!
//! * `<SocketLife>`: see [`crate::model`] (skaddr, family, local, remote,
//!   role, owner, start/end/duration ns, steps, resets sent and received,
//!   retransmits, time_wait, closed_by, exit, unread and the incomplete flags).
//! * `<Verdict>`: see [`crate::classify`] (open, close, incomplete as codes;
//!   summary, attribution and a reason's text worded by [`super::words`]).
//!
//! **Stream view** — one line per record, as it arrives:
//!
//! ```text
//! {"type": "transition", "skaddr_hex": "0xffff888123456000", "event": "state",
//!  "ts_ns": 5001000000, "cpu": 3, "skaddr": 18446612687504465920,
//!  "local": "127.0.0.1:0", "remote": "127.0.0.1:8099",
//!  "context": {"kind": "process", "pid": 2251, "tgid": 2251, "comm": "python3", "cgroup_id": 4242},
//!  "owner": {"pid": 2251, "tgid": 2251, "comm": "python3", "cgroup_id": 4242} | null,
//!  "old": "CLOSE", "new": "SYN_SENT", "unread": null}
//! {"type": "event", "event": "send_reset", ...sock fields..., "state": "CLOSE" | null,
//!  "reason": {"code": 11, "name": "TCP_ABORT_ON_CLOSE" | null} | null,
//!  "segment_flags": 2 | null}   (TCP flags of the answered segment, no full socket)
//! {"type": "event", "event": "receive_reset" | "retransmit" | "retransmit_syn_ack" | "destroy", ...}
//! {"type": "event", "event": "accept", ...sock fields...}   (context and owner: the process
//!   accept(2) returned the socket to; sock fields of a child of an SO_REUSEPORT address
//!   not accepted yet carry "shared_listener": true and "owner": null)
//! {"type": "event", "event": "process_exit", "ts_ns", "task": {...}, "exit_code": 9 | null, "group_dead": true}
//! {"type": "event", "event": "signal", "ts_ns", "sig": 9, "target_pid": 4311, "sender": {...}, "delivered": true}
//!   (only signals that kill their target are reported: delivered is always true)
//! {"type": "event", "event": "oom_victim", "ts_ns", "victim_pid": 4311, "context": {...}}
//!   (the OOM killer chose this process; context: the task that needed the memory)
//! {"type": "event", "event": "drop", "ts_ns", "cpu",
//!  "rx_sk": "0xffff888123458000" | null,   // the socket the kernel matched it to
//!  "skb_sk": "0xffff888123456000" | null,  // the socket still owning it (its sender)
//!  "source": "127.0.0.1:45126", "destination": "127.0.0.1:8099", // the segment's own
//!  "context": {...}, "owner": {...} | null, "netns": null,
//!  "reason": {"code": 12, "name": "NETFILTER_DROP" | null}, "segment_flags": 2,
//!  "answered_by_time_wait": true}   (only when so: the peer's FIN, answered by the
//!   TIME_WAIT/FIN_WAIT2 mini-socket one of ours was handed to, which the kernel frees as a
//!   drop; not a loss)
//!   (only SYN, SYN/ACK, FIN and RST segments, and those dropped for accept-queue overflow)
//! ```
//!
//! State changes are `"type": "transition"`; every other record is
//! `"type": "event"`. Records of a socket carry `skaddr_hex`, the hex string
//! that socket lines use as `skaddr` (the raw number `skaddr` exceeds 2^53:
//! parsers that read numbers as doubles lose its low bits). `context` is `{"kind": "process", ...proc}`
//! or `{"kind": "softirq", "on_cpu": {...proc}}`. Process names (`comm`) are
//! the raw bytes the kernel reported (lossy UTF-8), escaped only as JSON
//! requires.
//!
//! The lines are written directly, not through serde: measured with
//! `cargo run --release -p tcptrace --example replay -- --only json-paths`
//! (200k churn events, 2 vCPU), serde's derives cost 0.37–0.49 s more reader
//! CPU per million events in the sockets view and 0.65–0.71 s more in the
//! stream view than this writer — over the 0.1 s/M the project allows for
//! the convenience. They are written byte for byte as `serde_json` writes the types' `Serialize` derives, with
//! the verdict's words beside its codes: [`reference`] is that, with serde,
//! and `tests::direct_json_matches_serde` compares the two over every
//! fixture. A field added to a type must be added here too.

use std::{io, net::SocketAddr};

pub(crate) use self::record::push_record_line;
use self::verdict::push_verdict;
use super::{push_addr, push_hex, push_u64};
use crate::{
    decode::{Context, DropReason, Proc, Record, ResetReason, TcpState},
    model::{
        Direction, DropCount, ExitInfo, Family, JoinedBy, ResetReceived, ResetSent, Retransmit,
        RetransmitKind, SegmentDropped, SegmentKind, SignalInfo, SocketLife, Step, Verdict,
    },
};

mod record;
mod verdict;

/// `{"type":"socket","socket":…,"verdict":…}`, without the newline.
pub fn socket_line(life: &SocketLife, verdict: &Verdict) -> io::Result<String> {
    let mut out = String::with_capacity(2048);
    push_socket_line(&mut out, life, verdict);
    Ok(out)
}

/// `{"type":"transition",…}` for a state change, `{"type":"event",…}` otherwise.
pub fn record_line(record: &Record) -> io::Result<String> {
    let mut out = String::with_capacity(512);
    push_record_line(&mut out, record);
    Ok(out)
}

/// [`socket_line`], appended to `out`.
pub(crate) fn push_socket_line(out: &mut String, life: &SocketLife, verdict: &Verdict) {
    out.push_str(r#"{"type":"socket","socket":"#);
    push_life(out, life);
    out.push_str(r#","verdict":"#);
    push_verdict(out, life, verdict);
    out.push('}');
}

/// `,"errno":N,"retransmits":N,"probes":N,"user_timeout_ms":N|null,
/// "icmp_queued":B` of a socket error.
fn push_error_fields(
    out: &mut String,
    errno: i32,
    retransmits: u8,
    probes: u8,
    user_timeout_ms: Option<u32>,
    icmp_queued: bool,
) {
    out.push_str(r#","errno":"#);
    push_u64(out, u64::from(errno.unsigned_abs()));
    out.push_str(r#","retransmits":"#);
    push_u64(out, u64::from(retransmits));
    out.push_str(r#","probes":"#);
    push_u64(out, u64::from(probes));
    out.push_str(r#","user_timeout_ms":"#);
    push_opt_u64(out, user_timeout_ms.map(u64::from));
    out.push_str(r#","icmp_queued":"#);
    push_bool(out, icmp_queued);
}

fn push_life(out: &mut String, l: &SocketLife) {
    out.push_str(r#"{"skaddr":"0x"#);
    push_hex(out, l.skaddr, 0);
    out.push_str(match l.family {
        Family::Ipv4 => r#"","family":"ipv4","local":""#,
        Family::Ipv6 => r#"","family":"ipv6","local":""#,
    });
    push_addr(out, &l.local);
    out.push_str(r#"","remote":""#);
    push_addr(out, &l.remote);
    out.push_str(r#"","role":""#);
    out.push_str(l.role.name());
    out.push_str(r#"","owner":"#);
    push_opt_proc(out, l.owner.as_ref());
    out.push_str(r#","netns":"#);
    push_opt_u64(out, l.netns.map(u64::from));
    out.push_str(r#","workload":"#);
    match &l.workload {
        Some(w) => {
            out.push_str(r#"{"unit":"#);
            push_opt_str(out, w.unit.as_deref());
            out.push_str(r#","container":"#);
            push_opt_str(out, w.container.as_deref());
            out.push('}');
        }
        None => out.push_str("null"),
    }
    out.push_str(r#","listener":"#);
    push_opt_addr(out, l.listener.as_ref());
    out.push_str(r#","children":"#);
    push_u64(out, u64::from(l.children));
    out.push_str(r#","accepted":"#);
    match &l.accepted {
        Some(a) => {
            out.push_str(r#"{"offset_ns":"#);
            push_u64(out, a.offset_ns);
            out.push_str(r#","by":"#);
            push_opt_proc(out, Some(&a.by));
            out.push_str(r#","queued_ns":"#);
            push_opt_u64(out, a.queued_ns);
            out.push('}');
        }
        None => out.push_str("null"),
    }
    out.push_str(r#","listener_owner":"#);
    push_opt_proc(out, l.listener_owner.as_ref());
    out.push_str(r#","shared_listener":"#);
    push_bool(out, l.shared_listener);
    out.push_str(r#","start_ns":"#);
    push_u64(out, l.start_ns);
    out.push_str(r#","end_ns":"#);
    push_u64(out, l.end_ns);
    out.push_str(r#","duration_ns":"#);
    push_u64(out, l.duration_ns);
    out.push_str(r#","last_ns":"#);
    push_u64(out, l.last_ns);
    out.push_str(r#","state":"#);
    push_opt_state(out, l.state);
    out.push_str(r#","steps":"#);
    push_list(out, &l.steps, push_step);
    out.push_str(r#","resets_sent":"#);
    push_list(out, &l.resets_sent, push_reset_sent);
    out.push_str(r#","resets_received":"#);
    push_list(out, &l.resets_received, push_reset_received);
    out.push_str(r#","retransmits":"#);
    push_list(out, &l.retransmits, push_retransmit);
    out.push_str(r#","drops":"#);
    push_list(out, &l.drops, push_segment_dropped);
    out.push_str(r#","drop_counts":"#);
    push_list(out, &l.drop_counts, push_drop_count);
    out.push_str(r#","syn_retransmits":"#);
    push_u64(out, u64::from(l.syn_retransmits));
    out.push_str(r#","synack_retransmits":"#);
    push_u64(out, u64::from(l.synack_retransmits));
    out.push_str(r#","requests_expired":"#);
    push_u64(out, u64::from(l.requests_expired));
    out.push_str(r#","data_retransmits":"#);
    push_u64(out, u64::from(l.data_retransmits));
    out.push_str(r#","self_transitions":"#);
    push_u64(out, u64::from(l.self_transitions));
    out.push_str(r#","time_wait":"#);
    push_bool(out, l.time_wait);
    out.push_str(r#","closed_by":"#);
    push_opt_proc(out, l.closed_by.as_ref());
    out.push_str(r#","exit":"#);
    match &l.exit {
        Some(e) => push_exit(out, e),
        None => out.push_str("null"),
    }
    out.push_str(r#","unread":"#);
    push_opt_u64(out, l.unread.map(u64::from));
    out.push_str(r#","peer_reset":"#);
    match &l.peer_reset {
        Some(r) => push_reset_sent(out, r),
        None => out.push_str("null"),
    }
    out.push_str(r#","socketless":"#);
    push_bool(out, l.socketless);
    out.push_str(r#","destroyed":"#);
    push_bool(out, l.destroyed);
    out.push_str(r#","started_mid_life":"#);
    push_bool(out, l.started_mid_life);
    out.push_str(r#","evicted":"#);
    push_bool(out, l.evicted);
    out.push_str(r#","still_open":"#);
    push_bool(out, l.still_open);
    out.push_str(r#","fin_wait2_orphan":"#);
    push_bool(out, l.fin_wait2_orphan);
    out.push_str(r#","peer_fin_after_handoff_ns":"#);
    push_opt_u64(out, l.peer_fin_after_handoff_ns);
    out.push_str(r#","unaccepted":"#);
    push_bool(out, l.unaccepted);
    out.push_str(r#","error":"#);
    match &l.error {
        Some(e) => {
            out.push_str(r#"{"offset_ns":"#);
            push_u64(out, e.offset_ns);
            push_error_fields(
                out,
                e.errno,
                e.retransmits,
                e.probes,
                e.user_timeout_ms,
                e.icmp_queued,
            );
            out.push('}');
        }
        None => out.push_str("null"),
    }
    out.push_str(r#","gone_unseen":"#);
    push_bool(out, l.gone_unseen);
    out.push_str(r#","events_lost":"#);
    push_bool(out, l.events_lost);
    out.push_str(r#","gap":"#);
    push_bool(out, l.gap);
    out.push('}');
}

fn push_step(out: &mut String, s: &Step) {
    out.push_str(r#"{"offset_ns":"#);
    push_u64(out, s.offset_ns);
    out.push_str(r#","old":"#);
    push_state(out, s.old);
    out.push_str(r#","new":"#);
    push_state(out, s.new);
    out.push_str(r#","context":"#);
    push_context(out, &s.context);
    out.push('}');
}

fn push_reset_sent(out: &mut String, r: &ResetSent) {
    out.push_str(r#"{"offset_ns":"#);
    push_u64(out, r.offset_ns);
    out.push_str(r#","state":"#);
    push_opt_state(out, r.state);
    out.push_str(r#","reason":"#);
    push_opt_reset_reason(out, r.reason.as_ref());
    out.push_str(r#","context":"#);
    push_context(out, &r.context);
    out.push_str(r#","segment_flags":"#);
    push_opt_u64(out, r.segment_flags.map(u64::from));
    out.push('}');
}

fn push_reset_received(out: &mut String, r: &ResetReceived) {
    out.push_str(r#"{"offset_ns":"#);
    push_u64(out, r.offset_ns);
    out.push_str(r#","state":"#);
    push_opt_state(out, r.state);
    out.push_str(r#","context":"#);
    push_context(out, &r.context);
    out.push('}');
}

fn push_retransmit(out: &mut String, r: &Retransmit) {
    out.push_str(r#"{"offset_ns":"#);
    push_u64(out, r.offset_ns);
    out.push_str(match r.kind {
        RetransmitKind::Syn => r#","kind":"syn","number":"#,
        RetransmitKind::Synack => r#","kind":"synack","number":"#,
        RetransmitKind::Data => r#","kind":"data","number":"#,
    });
    push_u64(out, u64::from(r.number));
    out.push('}');
}

fn push_segment_dropped(out: &mut String, d: &SegmentDropped) {
    out.push_str(r#"{"offset_ns":"#);
    push_u64(out, d.offset_ns);
    out.push_str(r#","reason":"#);
    push_drop_reason(out, &d.reason);
    out.push_str(r#","segment_flags":"#);
    push_u64(out, u64::from(d.segment_flags));
    out.push_str(match d.direction {
        Direction::Outgoing => r#","direction":"outgoing","joined_by":""#,
        Direction::Incoming => r#","direction":"incoming","joined_by":""#,
    });
    out.push_str(match d.joined_by {
        JoinedBy::Socket => "socket",
        JoinedBy::Tuple => "tuple",
        JoinedBy::ListenerPort => "listener_port",
    });
    out.push_str("\"}");
}

fn push_drop_count(out: &mut String, c: &DropCount) {
    out.push_str(r#"{"reason":"#);
    push_drop_reason(out, &c.reason);
    out.push_str(r#","segment":""#);
    out.push_str(match c.segment {
        SegmentKind::Syn => "syn",
        SegmentKind::SynAck => "syn_ack",
        SegmentKind::Fin => "fin",
        SegmentKind::Rst => "rst",
        SegmentKind::Ack => "ack",
    });
    out.push_str(r#"","count":"#);
    push_u64(out, u64::from(c.count));
    out.push('}');
}

/// `{"code":12,"name":"NETFILTER_DROP"}`.
fn push_drop_reason(out: &mut String, r: &DropReason) {
    out.push_str(r#"{"code":"#);
    push_u64(out, u64::from(r.code));
    out.push_str(r#","name":"#);
    push_opt_str(out, r.name.as_deref());
    out.push('}');
}

fn push_exit(out: &mut String, e: &ExitInfo) {
    out.push_str(r#"{"pid":"#);
    push_u64(out, u64::from(e.pid));
    out.push_str(r#","tgid":"#);
    push_u64(out, u64::from(e.tgid));
    out.push_str(r#","comm":"#);
    push_str(out, &e.comm);
    out.push_str(r#","exit_code":"#);
    push_opt_i64(out, e.exit_code.map(i64::from));
    out.push_str(r#","status":"#);
    push_opt_i64(out, e.status.map(i64::from));
    out.push_str(r#","signal":"#);
    match &e.signal {
        Some(s) => push_signal(out, s),
        None => out.push_str("null"),
    }
    out.push_str(r#","core_dumped":"#);
    push_bool(out, e.core_dumped);
    out.push('}');
}

fn push_signal(out: &mut String, s: &SignalInfo) {
    out.push_str(r#"{"number":"#);
    push_u64(out, u64::from(s.number));
    out.push_str(r#","name":"#);
    push_str(out, &s.name);
    out.push_str(r#","sender":"#);
    push_opt_proc(out, s.sender.as_ref());
    out.push_str(r#","killed":"#);
    push_bool(out, s.killed);
    out.push_str(r#","oom_kill":"#);
    push_bool(out, s.oom_kill);
    out.push('}');
}

fn push_opt_reset_reason(out: &mut String, r: Option<&ResetReason>) {
    match r {
        Some(r) => {
            out.push_str(r#"{"code":"#);
            push_u64(out, u64::from(r.code));
            out.push_str(r#","name":"#);
            push_opt_str(out, r.name.as_deref());
            out.push('}');
        }
        None => out.push_str("null"),
    }
}

fn push_context(out: &mut String, c: &Context) {
    match c {
        Context::Process(p) => {
            out.push_str(r#"{"kind":"process","#);
            push_proc_fields(out, p);
            out.push('}');
        }
        Context::Softirq { on_cpu } => {
            out.push_str(r#"{"kind":"softirq","on_cpu":"#);
            push_proc(out, on_cpu);
            out.push('}');
        }
    }
}

fn push_proc(out: &mut String, p: &Proc) {
    out.push('{');
    push_proc_fields(out, p);
    out.push('}');
}

fn push_proc_fields(out: &mut String, p: &Proc) {
    out.push_str(r#""pid":"#);
    push_u64(out, u64::from(p.pid));
    out.push_str(r#","tgid":"#);
    push_u64(out, u64::from(p.tgid));
    out.push_str(r#","comm":"#);
    push_str(out, &p.comm);
    out.push_str(r#","cgroup_id":"#);
    push_u64(out, p.cgroup_id);
}

fn push_opt_addr(out: &mut String, a: Option<&SocketAddr>) {
    match a {
        Some(a) => {
            out.push('"');
            push_addr(out, a);
            out.push('"');
        }
        None => out.push_str("null"),
    }
}

fn push_opt_proc(out: &mut String, p: Option<&Proc>) {
    match p {
        Some(p) => push_proc(out, p),
        None => out.push_str("null"),
    }
}

fn push_list<T>(out: &mut String, items: &[T], push: fn(&mut String, &T)) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push(out, item);
    }
    out.push(']');
}

fn push_state(out: &mut String, s: TcpState) {
    out.push('"');
    out.push_str(s.name());
    out.push('"');
}

fn push_opt_state(out: &mut String, s: Option<TcpState>) {
    match s {
        Some(s) => push_state(out, s),
        None => out.push_str("null"),
    }
}

fn push_bool(out: &mut String, b: bool) {
    out.push_str(if b { "true" } else { "false" });
}

fn push_opt_u64(out: &mut String, n: Option<u64>) {
    match n {
        Some(n) => push_u64(out, n),
        None => out.push_str("null"),
    }
}

fn push_opt_i64(out: &mut String, n: Option<i64>) {
    match n {
        Some(n) if n < 0 => {
            out.push('-');
            push_u64(out, n.unsigned_abs());
        }
        Some(n) => push_u64(out, n as u64),
        None => out.push_str("null"),
    }
}

/// Bytes that go into a JSON string as they are.
fn json_plain(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// A JSON string, escaped exactly as `serde_json` escapes it.
fn push_str(out: &mut String, s: &str) {
    if json_plain(s.as_bytes()) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        // Rare (a hostile name): let serde_json escape it.
        out.push_str(&serde_json::to_string(s).expect("a string serialises"));
    }
}

fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// The serde derives that the direct writer must match (public for the
/// `replay` example, which measures the two against each other).
#[doc(hidden)]
pub mod reference;

#[cfg(test)]
mod tests;
