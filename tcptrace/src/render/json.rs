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
//! * `<SocketLife>`: see [`crate::tracker`] (skaddr, family, local, remote,
//!   role, owner, start/end/duration ns, steps, resets sent and received,
//!   retransmits, time_wait, closed_by, exit, unread and the incomplete flags).
//! * `<Verdict>`: see [`crate::classify`] (open, close, incomplete, summary,
//!   attribution).
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
//!  "reason": {"code": 11, "name": "TCP_ABORT_ON_CLOSE" | null} | null}
//! {"type": "event", "event": "receive_reset" | "retransmit" | "retransmit_syn_ack" | "destroy", ...}
//! {"type": "event", "event": "process_exit", "ts_ns", "task": {...}, "exit_code": 9 | null, "group_dead": true}
//! {"type": "event", "event": "signal", "ts_ns", "sig": 9, "target_pid": 4311, "sender": {...}, "delivered": true}
//! ```
//!
//! State changes are `"type": "transition"`; every other record is
//! `"type": "event"`. Records of a socket carry `skaddr_hex`, the hex string
//! that socket lines use as `skaddr` (the raw number `skaddr` exceeds 2^53:
//! parsers that read numbers as doubles lose its low bits). `context` is `{"kind": "process", ...proc}`
//! or `{"kind": "softirq", "on_cpu": {...proc}}`. Process names (`comm`) are
//! the raw bytes the kernel reported (lossy UTF-8), escaped only as JSON
//! requires.

use std::io;

use serde::Serialize;

use crate::{classify::Verdict, decode::Record, tracker::SocketLife};

#[derive(Serialize)]
struct SocketLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    socket: &'a SocketLife,
    verdict: &'a Verdict,
}

#[derive(Serialize)]
struct RecordLine<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    /// The skaddr as sockets print it: the raw number exceeds 2^53, which
    /// JSON parsers that use doubles cannot hold exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    skaddr_hex: Option<String>,
    #[serde(flatten)]
    record: &'a Record,
}

/// `{"type":"socket","socket":…,"verdict":…}`, without the newline.
pub fn socket_line(life: &SocketLife, verdict: &Verdict) -> io::Result<String> {
    let line = SocketLine {
        kind: "socket",
        socket: life,
        verdict,
    };
    serde_json::to_string(&line).map_err(io::Error::other)
}

/// `{"type":"transition",…}` for a state change, `{"type":"event",…}` otherwise.
pub fn record_line(record: &Record) -> io::Result<String> {
    let kind = match record {
        Record::State { .. } => "transition",
        _ => "event",
    };
    let line = RecordLine {
        kind,
        skaddr_hex: record.sock().map(|s| format!("{:#x}", s.skaddr)),
        record,
    };
    serde_json::to_string(&line).map_err(io::Error::other)
}
