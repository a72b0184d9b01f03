//! One socket's life as the tracker reports it.
//!
//! # JSON schema of a [`SocketLife`] (stable; snake_case)
//!
//! ```text
//! {
//!   "skaddr": "0xffff888123456000",   // kernel struct sock address; "0x0" when socketless
//!   "family": "ipv4" | "ipv6",
//!   "local": "127.0.0.1:45126",       // IPv6 as "[::1]:8099"
//!   "remote": "127.0.0.1:8099",
//!   "role": "client" | "server" | "listener" | "unknown",
//!   "owner": {"pid","tgid","comm","cgroup_id"} | null,
//!   "listener": "0.0.0.0:8099" | null, // server child: the listening address it came from
//!   "children": 0,                     // listener: children seen accepted
//!   "start_ns": 0, "end_ns": 0,        // CLOCK_MONOTONIC; end = the →CLOSE, else the last event
//!   "duration_ns": 0, "last_ns": 0,    // last_ns: the last event of any kind
//!   "state": "CLOSE" | null,           // last known state; null for a socketless reset
//!   "steps": [{"offset_ns", "old", "new", "context"}],
//!   "resets_sent": [{"offset_ns", "state", "reason": {"code","name"} | null, "context"}],
//!   "resets_received": [{"offset_ns", "state", "context"}],
//!   "retransmits": [{"offset_ns", "kind": "syn" | "synack" | "data", "number"}],
//!   "drops": [{"offset_ns", "reason": {"code": 12, "name": "NETFILTER_DROP" | null},
//!              "segment_flags": 2,            // the dropped segment's TCP flags
//!              "direction": "outgoing" | "incoming", // sent by this socket, or to it
//!              "joined_by": "socket" | "tuple" | "listener_port"}],
//!   "drop_counts": [{"reason": {"code","name"}, "segment": "syn" | "syn_ack" | "fin"
//!                    | "rst" | "ack", "count": 18}], // every drop, past the rows' cap
//!   "syn_retransmits": 0, "synack_retransmits": 0, "data_retransmits": 0,
//!   "self_transitions": 0,             // folded X→X transitions
//!   "time_wait": false,                // handed to the TIME_WAIT minisock
//!   "closed_by": {"pid","tgid","comm","cgroup_id"} | null,
//!   "exit": {"pid","tgid","comm","exit_code","status",
//!            "signal": {"number","name","sender","killed",
//!                       "oom_kill"} | null,  // oom_kill: the OOM killer chose it
//!            "core_dumped"} | null,   // the closer was exiting
//!   "unread": 13 | null,               // bytes never read, from the →CLOSE
//!   "peer_reset": <resets_sent item> | null, // the socketless RST that refused this connect
//!   "socketless": false, "destroyed": false,
//!   "netns": 4026531840 | null,          // network namespace inode
//!   "workload": {"unit": "nginx.service" | null, "container": "<64 hex>" | null} | null,
//!   "fin_wait2_orphan": false,          // FIN acked, then handed to a FIN_WAIT2 mini-socket
//!   "peer_fin_after_handoff_ns": null,  // …whose peer's FIN came then (else: CLOSE_WAIT leak?)
//!   "unaccepted": false,                // reset by its listener's close, never accepted
//!   "error": {"offset_ns", "errno": 110, "retransmits": 3, "probes": 0} | null,
//!   "started_mid_life": false, "evicted": false, "still_open": false,
//!   "gone_unseen": false,               // open as far as seen, gone from the kernel at exit
//!   "events_lost": false,
//!   "gap": false                        // a transition never reached tcptrace
//! }
//! ```
//! `context` is `{"kind":"process","pid","tgid","comm","cgroup_id"}` or
//! `{"kind":"softirq","on_cpu":{"pid","tgid","comm","cgroup_id"}}` (a
//! bystander: socket events leave it zero).
//! States use the kernel's names (`"SYN_SENT"`); offsets are ns from `start_ns`.

use std::{fmt::Display, net::SocketAddr};

use serde::{Serialize, Serializer};

use crate::decode::{Comm, Context, DropReason, Proc, ResetReason, TcpState};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Client,
    Server,
    Listener,
    Unknown,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Server => "server",
            Role::Listener => "listener",
            Role::Unknown => "unknown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One state transition of a life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Step {
    /// ns since the life's start.
    pub offset_ns: u64,
    pub old: TcpState,
    pub new: TcpState,
    pub context: Context,
}

/// An RST this socket (or, when socketless, this host) sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetSent {
    pub offset_ns: u64,
    /// The tracepoint's `state`: usually CLOSE, as the kernel closes first.
    pub state: Option<TcpState>,
    /// `None` before Linux 6.10 (no `reason` field).
    pub reason: Option<ResetReason>,
    pub context: Context,
    /// TCP flags of the segment answered, for an RST sent without a full
    /// socket (`None` otherwise): a SYN means a refused connection.
    pub segment_flags: Option<u8>,
}

/// The error the kernel set on the socket (`sk_err`), and the counts that
/// tell which timeout it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SockError {
    pub offset_ns: u64,
    pub errno: i32,
    /// Unacknowledged-data retransmissions (a retransmission timeout).
    pub retransmits: u8,
    /// Keepalive or zero-window probes unanswered (a keepalive timeout).
    pub probes: u8,
    /// `TCP_USER_TIMEOUT` in ms, when set: the limit that gave up.
    pub user_timeout_ms: Option<u32>,
    /// The errno of an ICMP error just queued on the socket, reported
    /// before TCP set `sk_err` (it may keep it soft, for connect() or
    /// SO_ERROR to return).
    pub icmp_queued: bool,
}

/// An RST from the peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetReceived {
    pub offset_ns: u64,
    /// The socket's state when it arrived (the state it then left).
    pub state: Option<TcpState>,
    pub context: Context,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RetransmitKind {
    Syn,
    Synack,
    Data,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retransmit {
    pub offset_ns: u64,
    pub kind: RetransmitKind,
    /// 1 for the first retransmit of this kind.
    pub number: u32,
}

/// Which way a dropped segment was going, seen from the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Sent by this socket; dropped before it left the host.
    Outgoing,
    /// Sent to this socket; dropped on its way in, or ignored by it.
    Incoming,
}

/// How tcptrace tied a drop to a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinedBy {
    /// The kernel named the socket (`rx_sk`, or the buffer's owner).
    Socket,
    /// By the segment's addresses.
    Tuple,
    /// A SYN to, or SYN/ACK from, a listener's port and address.
    ListenerPort,
}

/// What kind of segment was dropped, from its TCP flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SegmentKind {
    Syn,
    SynAck,
    Fin,
    Rst,
    /// Neither of the above: an ACK (or data), e.g. the one completing a
    /// handshake, dropped when the accept queue is full.
    Ack,
}

impl SegmentKind {
    pub fn of(flags: u8) -> SegmentKind {
        const FIN: u8 = 0x01;
        const SYN: u8 = 0x02;
        const RST: u8 = 0x04;
        const ACK: u8 = 0x10;
        match flags {
            f if f & RST != 0 => SegmentKind::Rst,
            f if f & SYN != 0 && f & ACK != 0 => SegmentKind::SynAck,
            f if f & SYN != 0 => SegmentKind::Syn,
            f if f & FIN != 0 => SegmentKind::Fin,
            _ => SegmentKind::Ack,
        }
    }
}

/// A segment of this socket's connection that the kernel dropped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentDropped {
    pub offset_ns: u64,
    pub reason: DropReason,
    pub segment_flags: u8,
    pub direction: Direction,
    pub joined_by: JoinedBy,
}

impl SegmentDropped {
    pub fn kind(&self) -> SegmentKind {
        SegmentKind::of(self.segment_flags)
    }
}

/// Drops of one reason and kind of segment: every one, past the rows' cap
/// (a listener under a SYN flood or with a full accept queue has many).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DropCount {
    pub reason: DropReason,
    pub segment: SegmentKind,
    pub count: u32,
}

/// A fatal signal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SignalInfo {
    pub number: u32,
    /// `SIGKILL`, `SIGRTMIN+3`, or `signal 99`.
    pub name: String,
    /// Who sent it, when `signal_generate` saw it.
    pub sender: Option<Proc>,
    /// The exit code proves the signal killed the process; false when the
    /// exit code is unknown and the signal was only seen being sent.
    pub killed: bool,
    /// The OOM killer chose the process (`oom:mark_victim`) and sent it.
    pub oom_kill: bool,
}

/// How the process that closed a socket ended: the close was part of its exit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExitInfo {
    pub pid: u32,
    pub tgid: u32,
    pub comm: Comm,
    /// The kernel's raw `exit_code`.
    pub exit_code: Option<i32>,
    /// `exit(status)` when it exited on its own.
    pub status: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<SignalInfo>,
    pub core_dumped: bool,
}

/// Everything tcptrace learned about one socket, from its first event to its end.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SocketLife {
    #[serde(serialize_with = "ser_hex")]
    pub skaddr: u64,
    pub family: Family,
    #[serde(serialize_with = "ser_display")]
    pub local: SocketAddr,
    #[serde(serialize_with = "ser_display")]
    pub remote: SocketAddr,
    pub role: Role,
    /// The first owner the kernel reported; never guessed from context.
    pub owner: Option<Proc>,
    /// Network namespace (inode number, as `lsns`/`ip netns identify` show).
    pub netns: Option<u32>,
    /// The owner's systemd unit or container, from its cgroup (filled in
    /// by the session, which knows the host's cgroups). Shared: every life
    /// of a unit names the same one, and a clone per life was two small
    /// allocations on every busy systemd host.
    pub workload: Option<std::sync::Arc<crate::cgroups::Workload>>,
    /// Server child: the listening address it was accepted from.
    #[serde(serialize_with = "ser_opt_display")]
    pub listener: Option<SocketAddr>,
    /// Listener: children seen accepted from it.
    pub children: u32,
    /// Server child: the process that accepted it, when, and how long it
    /// had waited in the accept queue (since its handshake completed).
    pub accepted: Option<Accepted>,
    /// Server child: its listener's owner, when another process accepted
    /// it (`owner` is then the acceptor).
    pub listener_owner: Option<Proc>,
    /// Server child of an address several processes listen on
    /// (SO_REUSEPORT): its owner was unknown until one accepted it.
    pub shared_listener: bool,
    pub start_ns: u64,
    /// The `→CLOSE`, else the last event.
    pub end_ns: u64,
    pub duration_ns: u64,
    /// The last event of any kind (late RSTs come after `end_ns`).
    pub last_ns: u64,
    /// Last known state; `None` for a socketless reset.
    pub state: Option<TcpState>,
    pub steps: Vec<Step>,
    pub resets_sent: Vec<ResetSent>,
    pub resets_received: Vec<ResetReceived>,
    pub retransmits: Vec<Retransmit>,
    /// Its segments the kernel dropped (the first [`crate::tracker::MAX_ROWS`]).
    pub drops: Vec<SegmentDropped>,
    /// Every drop, by reason and kind of segment.
    pub drop_counts: Vec<DropCount>,
    pub syn_retransmits: u32,
    pub synack_retransmits: u32,
    /// Listener: requests whose SYN/ACK retransmits ran out without the
    /// handshake completing (inferred: see `tracker/requests.rs`).
    pub requests_expired: u32,
    pub data_retransmits: u32,
    pub self_transitions: u32,
    /// Ended FIN_WAIT2→CLOSE or CLOSING→CLOSE without an RST: the TIME_WAIT
    /// minisock took over (the full socket never reports TIME_WAIT).
    pub time_wait: bool,
    /// The process whose own syscall (or exit) closed the socket.
    pub closed_by: Option<Proc>,
    /// Set when `closed_by` was exiting.
    pub exit: Option<ExitInfo>,
    /// Bytes the application never read, from the `→CLOSE` record.
    pub unread: Option<u32>,
    /// The socketless RST (seen on this host) that refused this connect.
    pub peer_reset: Option<ResetSent>,
    /// A reset sent with no socket: the life has that one event only.
    pub socketless: bool,
    pub destroyed: bool,
    pub started_mid_life: bool,
    /// Reported early, still open, because the table was full.
    pub evicted: bool,
    /// Still open when tracing stopped.
    pub still_open: bool,
    /// Ended FIN_WAIT2→CLOSE although the peer had not sent its FIN: the
    /// kernel keeps the orphan in a FIN_WAIT2 mini-socket for
    /// tcp_fin_timeout while the peer may sit in CLOSE_WAIT (a leak there).
    pub fin_wait2_orphan: bool,
    /// After that hand-off, the peer's FIN reached the mini-socket (which
    /// answered it) this many ns after the life's start: the peer did
    /// close, later. Seen while the life lingered, else never known.
    pub peer_fin_after_handoff_ns: Option<u64>,
    /// A server child reset as its listener closed, in the same process
    /// within moments: a connection the listener never accepted.
    pub unaccepted: bool,
    /// The socket's error, when the kernel set one (the last).
    pub error: Option<SockError>,
    /// Not closed as far as tcptrace saw, but gone from the kernel when
    /// tracing stopped: its closing transitions never reached tcptrace.
    pub gone_unseen: bool,
    /// Set by the session when its event ring lost events during this life.
    pub events_lost: bool,
    /// A transition did not start where the previous one ended: the kernel
    /// made one that never reached tcptrace.
    pub gap: bool,
}
/// accept(2) returned a server child to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Accepted {
    pub offset_ns: u64,
    pub by: Proc,
    /// From SYN_RECV→ESTABLISHED to the accept: time in the accept queue.
    pub queued_ns: Option<u64>,
}

impl SocketLife {
    /// Marks the life incomplete because an event ring lost events.
    pub fn mark_lost_events(&mut self) {
        self.events_lost = true;
    }

    /// ns from the life's start (records may arrive slightly out of order).
    pub fn offset(&self, ts_ns: u64) -> u64 {
        ts_ns.saturating_sub(self.start_ns)
    }

    /// The transition `old → new`, if the life made it.
    pub fn step(&self, old: TcpState, new: TcpState) -> Option<&Step> {
        self.steps.iter().find(|s| s.old == old && s.new == new)
    }

    /// The last transition into CLOSE.
    pub fn close_step(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.new == TcpState::Close)
    }
}

pub(crate) fn ser_hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

pub(crate) fn ser_display<S: Serializer, T: Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

pub(crate) fn ser_opt_display<S: Serializer, T: Display>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use crate::tracker::fixtures::*;

    #[test]
    fn json_schema_of_a_life() {
        let lives = run(&killed());
        let v = serde_json::to_value(life_of(&lives, SERVER_SK)).unwrap();
        assert_eq!(v["skaddr"], "0xffff888123457000");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["local"], "127.0.0.1:8099");
        assert_eq!(v["remote"], "127.0.0.1:45126");
        assert_eq!(v["role"], "server");
        assert_eq!(v["listener"], "0.0.0.0:8099");
        assert_eq!(v["owner"]["comm"], "nginx");
        assert_eq!(v["owner"]["tgid"], 4311);
        assert_eq!(v["state"], "CLOSE");
        assert_eq!(v["steps"][0]["old"], "LISTEN");
        assert_eq!(v["steps"][0]["new"], "SYN_RECV");
        assert_eq!(v["steps"][0]["offset_ns"], 0);
        assert_eq!(v["steps"][0]["context"]["kind"], "softirq");
        assert_eq!(v["steps"][2]["context"]["kind"], "process");
        assert_eq!(v["steps"][2]["context"]["comm"], "nginx");
        assert_eq!(v["resets_sent"][0]["reason"]["code"], 11);
        assert_eq!(v["resets_sent"][0]["reason"]["name"], "TCP_ABORT_ON_CLOSE");
        assert_eq!(v["resets_sent"][0]["state"], "CLOSE");
        assert_eq!(v["closed_by"]["pid"], 4311);
        assert_eq!(v["exit"]["signal"]["name"], "SIGKILL");
        assert_eq!(v["exit"]["signal"]["sender"]["comm"], "kill");
        assert_eq!(v["exit"]["exit_code"], 9);
        assert_eq!(v["unread"], 5);
        assert_eq!(v["duration_ns"], us(2020) - us(1064));
        for flag in [
            "started_mid_life",
            "evicted",
            "still_open",
            "events_lost",
            "socketless",
        ] {
            assert_eq!(v[flag], false, "{flag}");
        }
        assert_eq!(v["destroyed"], true);

        let v6 = S::new(CLIENT_SK, "[::1]:45126", "[::1]:8099").owner(&python());
        let lives = run(&[v6.by(0, &python()).st(2, 1)]);
        let v = serde_json::to_value(&lives[0]).unwrap();
        assert_eq!(
            (v["family"].as_str(), v["remote"].as_str()),
            (Some("ipv6"), Some("[::1]:8099"))
        );
        assert_eq!(v["listener"], serde_json::Value::Null);
    }
}
