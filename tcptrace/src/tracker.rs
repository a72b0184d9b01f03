//! Tracker: folds the record stream into one [`SocketLife`] per socket, from
//! its first event to its end, and hands each life over once it is complete.
//!
//! A life is keyed by `skaddr`. It starts at `CLOSE→SYN_SENT` (client),
//! `CLOSE→LISTEN` (listener) or `LISTEN→SYN_RECV` (server child); any other
//! first event means tracing began mid-life. A life is not reported at its
//! `→CLOSE`: on loopback the sender's own `tcp_send_reset` event arrives after
//! the peer has already reacted to it, so a closed life lingers until its
//! `Destroy` record or until [`TrackerOptions::linger_ns`] has passed.
//!
//! Memory is bounded everywhere: at most [`TrackerOptions::max_sockets`] lives
//! (the least recently active is evicted), at most [`AUX_CAP`] entries no
//! older than [`AUX_MAX_AGE_NS`] in each auxiliary table, and at most
//! [`MAX_ROWS`] rows in each list of a life.
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
//!   "syn_retransmits": 0, "synack_retransmits": 0, "data_retransmits": 0,
//!   "self_transitions": 0,             // folded X→X transitions
//!   "time_wait": false,                // handed to the TIME_WAIT minisock
//!   "closed_by": {"pid","tgid","comm","cgroup_id"} | null,
//!   "exit": {"pid","tgid","comm","exit_code","status",
//!            "signal": {"number","name","sender","killed"} | null,
//!            "core_dumped"} | null,   // the closer was exiting
//!   "unread": 13 | null,               // bytes never read, from the →CLOSE
//!   "peer_reset": <resets_sent item> | null, // the socketless RST that refused this connect
//!   "socketless": false, "destroyed": false,
//!   "netns": 4026531840 | null,          // network namespace inode
//!   "workload": {"unit": "nginx.service" | null, "container": "<64 hex>" | null} | null,
//!   "fin_wait2_orphan": false,          // FIN acked, peer never closed (CLOSE_WAIT leak?)
//!   "error": {"offset_ns", "errno": 110, "retransmits": 3, "probes": 0} | null,
//!   "started_mid_life": false, "evicted": false, "still_open": false,
//!   "gone_unseen": false,               // open as far as seen, gone from the kernel at exit
//!   "events_lost": false,
//!   "gap": false                        // a transition never reached tcptrace
//! }
//! ```
//! `context` is `{"kind":"process","pid","tgid","comm","cgroup_id"}` or
//! `{"kind":"softirq","on_cpu":{"pid","tgid","comm","cgroup_id"}}`.
//! States use the kernel's names (`"SYN_SENT"`); offsets are ns from `start_ns`.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    fmt::Display,
    hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState},
    net::SocketAddr,
};

use serde::{Serialize, Serializer};

use crate::decode::{Comm, Context, Proc, Record, ResetReason, SockInfo, TcpState};

/// Most entries in each auxiliary table (exits, signals, pending resets).
pub const AUX_CAP: usize = 4096;
/// Auxiliary entries older than this (event time) are forgotten.
pub const AUX_MAX_AGE_NS: u64 = 10_000_000_000;
/// Most rows kept in each list of a life (counters keep counting past it).
pub const MAX_ROWS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct TrackerOptions {
    /// Most sockets tracked at once; the oldest is evicted (and marked) past it.
    pub max_sockets: usize,
    /// How long a closed socket waits for its late events (RST sent,
    /// destroy) before it is reported, in monotonic ns.
    pub linger_ns: u64,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            max_sockets: 65536,
            linger_ns: 200_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    /// Lives started (socketless resets not included).
    pub sockets_seen: u64,
    /// Lives tracked right now.
    pub tracked: u64,
    /// Lives reported before they closed because the table was full.
    pub evicted: u64,
    /// Most lives tracked at once.
    pub peak_tracked: u64,
    /// RSTs sent with no socket (e.g. a SYN to a closed port).
    pub socketless_resets: u64,
    /// RSTs sent by a socket never seen before (TIME_WAIT or request socks).
    pub orphan_resets: u64,
    /// Records that belonged to no life (e.g. a destroy after expiry).
    pub ignored: u64,
    /// Records of sockets already reported because the table was full
    /// (evicted while open): counted here, never reported twice.
    pub after_eviction: u64,
    /// Folded X→X transitions.
    pub self_transitions: u64,
}

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
    /// by the session, which knows the host's cgroups).
    pub workload: Option<crate::cgroups::Workload>,
    /// Server child: the listening address it was accepted from.
    #[serde(serialize_with = "ser_opt_display")]
    pub listener: Option<SocketAddr>,
    /// Listener: children seen accepted from it.
    pub children: u32,
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
    pub syn_retransmits: u32,
    pub synack_retransmits: u32,
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
    /// The socket's error, when the kernel set one (the last).
    pub error: Option<SockError>,
    /// Not closed as far as tcptrace saw, but gone from the kernel when
    /// tracing stopped: its closing transitions never reached tcptrace.
    pub gone_unseen: bool,
    /// Set by the session when the ring buffer lost events during this life.
    pub events_lost: bool,
    /// A transition did not start where the previous one ended: the kernel
    /// made one that never reached tcptrace.
    pub gap: bool,
}

impl SocketLife {
    fn new(sock: &SockInfo) -> SocketLife {
        SocketLife {
            skaddr: sock.skaddr,
            family: if sock.local.is_ipv6() {
                Family::Ipv6
            } else {
                Family::Ipv4
            },
            local: sock.local,
            remote: sock.remote,
            role: Role::Unknown,
            owner: sock.owner,
            netns: sock.netns,
            workload: None,
            listener: None,
            children: 0,
            start_ns: sock.ts_ns,
            end_ns: sock.ts_ns,
            duration_ns: 0,
            last_ns: sock.ts_ns,
            state: None,
            steps: Vec::new(),
            resets_sent: Vec::new(),
            resets_received: Vec::new(),
            retransmits: Vec::new(),
            syn_retransmits: 0,
            synack_retransmits: 0,
            data_retransmits: 0,
            self_transitions: 0,
            time_wait: false,
            closed_by: None,
            exit: None,
            unread: None,
            peer_reset: None,
            socketless: false,
            destroyed: false,
            started_mid_life: false,
            evicted: false,
            still_open: false,
            fin_wait2_orphan: false,
            error: None,
            gone_unseen: false,
            events_lost: false,
            gap: false,
        }
    }

    /// Marks the life incomplete because the ring buffer lost events.
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

    /// Takes what a later event knows about the socket: a first owner, the
    /// local port chosen after `CLOSE→SYN_SENT`, an address learnt later.
    fn absorb(&mut self, sock: &SockInfo) {
        if self.owner.is_none() {
            self.owner = sock.owner;
        }
        if self.netns.is_none() {
            self.netns = sock.netns;
        }
        if self.local.port() == 0 && sock.local.port() != 0 {
            self.local = sock.local;
        }
        if self.local.ip().is_unspecified() && !sock.local.ip().is_unspecified() {
            self.local.set_ip(sock.local.ip());
        }
        if self.remote.port() == 0 && sock.remote.port() != 0 {
            self.remote = sock.remote;
        }
        self.last_ns = self.last_ns.max(sock.ts_ns);
    }

    fn infer_role(&mut self, old: TcpState, new: TcpState) {
        if self.role != Role::Unknown {
            return;
        }
        use TcpState::*;
        self.role = match (old, new) {
            (SynSent, _) | (_, SynSent) => Role::Client,
            (SynRecv, _) | (_, SynRecv) => Role::Server,
            (Listen, _) | (_, Listen) => Role::Listener,
            _ => Role::Unknown,
        };
    }

    fn set_closer(&mut self, closer: Closer) {
        self.closed_by = Some(closer.by);
        self.exit = closer.exit;
    }
}

fn push_capped<T>(rows: &mut Vec<T>, row: T) {
    if rows.len() < MAX_ROWS {
        rows.push(row);
    }
}

/// A step of `life`: most lives make 5 or 6, so room for 8 is made at
/// once (one allocation, no regrowth).
fn push_step(life: &mut SocketLife, step: Step) {
    if life.steps.capacity() == 0 {
        life.steps.reserve_exact(8);
    }
    push_capped(&mut life.steps, step);
}

fn ser_hex<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:#x}"))
}

fn ser_display<S: Serializer, T: Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn ser_opt_display<S: Serializer, T: Display>(v: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

/// A fast hasher for keys that no remote peer chooses (kernel addresses,
/// pids, local ports): a multiply that folds the 128-bit product, so that
/// every input bit reaches the low bits the table indexes with (`skaddr`s
/// are aligned: their low bits are zero). Tuples of remote addresses keep
/// the std's keyed SipHash.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastHasher(u64);

impl FastHasher {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;

    fn add(&mut self, word: u64) {
        let product = u128::from(self.0 ^ word) * u128::from(Self::K);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Builds [`FastHasher`]s.
pub type FastHash = BuildHasherDefault<FastHasher>;

type FastMap<K, V> = HashMap<K, V, FastHash>;

/// A map that forgets: at most `cap` entries, and none older than `max_age_ns`
/// of event time, so that no input can grow it without bound. The oldest
/// inserted entry goes first.
#[derive(Debug)]
pub struct RecentMap<K, V, S = RandomState> {
    map: HashMap<K, Entry<V>, S>,
    /// Insertion order; an item is stale once its key was re-inserted.
    order: VecDeque<(u64, K)>,
    seq: u64,
    cap: usize,
    max_age_ns: Option<u64>,
}

#[derive(Debug)]
struct Entry<V> {
    ts_ns: u64,
    seq: u64,
    value: V,
}

impl<K: Hash + Eq + Clone, V, S: BuildHasher + Default> RecentMap<K, V, S> {
    pub fn new(cap: usize, max_age_ns: Option<u64>) -> Self {
        RecentMap {
            map: HashMap::default(),
            order: VecDeque::new(),
            seq: 0,
            cap: cap.max(1),
            max_age_ns,
        }
    }

    pub fn insert(&mut self, key: K, ts_ns: u64, value: V) {
        self.seq += 1;
        let seq = self.seq;
        self.map.insert(key.clone(), Entry { ts_ns, seq, value });
        self.order.push_back((seq, key));
        self.prune(ts_ns);
    }

    /// The entry for `key`, unless it is too old at `now_ns`.
    pub fn get(&self, key: &K, now_ns: u64) -> Option<&V> {
        // Skips hashing the key when there is nothing to find (the usual case).
        if self.map.is_empty() {
            return None;
        }
        self.map
            .get(key)
            .filter(|e| !self.too_old(e.ts_ns, now_ns))
            .map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        if self.map.is_empty() {
            return None;
        }
        self.map.get_mut(key).map(|e| &mut e.value)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        if self.map.is_empty() {
            return None;
        }
        self.map.remove(key).map(|e| e.value)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn too_old(&self, ts_ns: u64, now_ns: u64) -> bool {
        self.max_age_ns
            .is_some_and(|age| now_ns.saturating_sub(ts_ns) > age)
    }

    /// Drops entries past the cap or too old at `now_ns`, oldest first.
    pub fn prune(&mut self, now_ns: u64) {
        while let Some((seq, key)) = self.order.front() {
            if let Some(e) = self.map.get(key).filter(|e| e.seq == *seq) {
                if self.map.len() <= self.cap && !self.too_old(e.ts_ns, now_ns) {
                    break;
                }
                self.map.remove(key);
            }
            self.order.pop_front();
        }
        // Re-inserted keys leave stale items behind: keep `order` bounded too.
        if self.order.len() > 2 * self.cap + 16 {
            let map = &self.map;
            self.order
                .retain(|(seq, key)| map.get(key).is_some_and(|e| e.seq == *seq));
        }
    }
}

/// Who closed a socket, before it is confirmed.
#[derive(Clone, Debug)]
struct Closer {
    by: Proc,
    exit: Option<ExitInfo>,
}

#[derive(Clone, Debug)]
struct ExitRecord {
    ts_ns: u64,
    task: Proc,
    exit_code: Option<i32>,
}

#[derive(Clone, Debug)]
struct SignalRecord {
    ts_ns: u64,
    sig: u32,
    sender: Proc,
}

/// Recently exited tasks and fatal signals, to say why a process closed.
struct ProcessTable {
    /// By pid.
    exits: RecentMap<u32, ExitRecord, FastHash>,
    /// By tgid, for exits that ended the whole thread group.
    group_exits: RecentMap<u32, ExitRecord, FastHash>,
    /// Latest fatal signal by target pid (a kill(2) targets the tgid).
    signals: RecentMap<u32, SignalRecord, FastHash>,
}

impl ProcessTable {
    fn new() -> Self {
        ProcessTable {
            exits: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            group_exits: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            signals: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
        }
    }

    fn on_exit(&mut self, ts_ns: u64, task: &Proc, exit_code: Option<i32>, group_dead: bool) {
        let rec = ExitRecord {
            ts_ns,
            task: *task,
            exit_code,
        };
        if group_dead {
            self.group_exits.insert(task.tgid, ts_ns, rec.clone());
        }
        self.exits.insert(task.pid, ts_ns, rec);
    }

    fn on_signal(&mut self, ts_ns: u64, sig: u32, target_pid: u32, sender: &Proc) {
        let rec = SignalRecord {
            ts_ns,
            sig,
            sender: *sender,
        };
        self.signals.insert(target_pid, ts_ns, rec);
    }

    fn prune(&mut self, now_ns: u64) {
        self.exits.prune(now_ns);
        self.group_exits.prune(now_ns);
        self.signals.prune(now_ns);
    }

    /// How `p` ended, if a close it made at `ts_ns` was part of its exit.
    fn exit_of(&self, p: &Proc, ts_ns: u64) -> Option<ExitInfo> {
        let before = |e: &&ExitRecord| e.ts_ns <= ts_ns && e.task.tgid == p.tgid;
        let exit = self
            .exits
            .get(&p.pid, ts_ns)
            .filter(before)
            .or_else(|| self.group_exits.get(&p.tgid, ts_ns).filter(before))?;
        let recorded = self
            .signals
            .get(&p.pid, ts_ns)
            .or_else(|| self.signals.get(&p.tgid, ts_ns))
            .filter(|s| s.ts_ns <= ts_ns);
        let killed_by = exit
            .exit_code
            .map(|c| (c & 0x7f) as u32)
            .filter(|&s| s != 0);
        let signal = match (killed_by, recorded) {
            (Some(sig), Some(r)) if r.sig == sig => Some((sig, Some(r.sender), true)),
            (Some(sig), _) => Some((sig, None, true)),
            // No exit code (no BTF): the signal may have been handled.
            (None, Some(r)) if exit.exit_code.is_none() => Some((r.sig, Some(r.sender), false)),
            (None, _) => None,
        };
        Some(ExitInfo {
            pid: exit.task.pid,
            tgid: exit.task.tgid,
            comm: exit.task.comm,
            exit_code: exit.exit_code,
            status: exit
                .exit_code
                .filter(|c| c & 0x7f == 0)
                .map(|c| (c >> 8) & 0xff),
            core_dumped: killed_by.is_some() && exit.exit_code.is_some_and(|c| c & 0x80 != 0),
            signal: signal.map(|(number, sender, killed)| SignalInfo {
                number,
                name: signal_name(number),
                sender,
                killed,
            }),
        })
    }
}

/// `SIGKILL` for 9; `SIGRTMIN+n` for real-time signals; `signal N` otherwise.
pub fn signal_name(sig: u32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGSTKFLT, "SIGSTKFLT"),
        (libc::SIGCHLD, "SIGCHLD"),
        (libc::SIGCONT, "SIGCONT"),
        (libc::SIGSTOP, "SIGSTOP"),
        (libc::SIGTSTP, "SIGTSTP"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
        (libc::SIGURG, "SIGURG"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGWINCH, "SIGWINCH"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGSYS, "SIGSYS"),
    ];
    // Real-time signals named as `kill -l` does: glibc keeps 32 and 33 for
    // itself, so its SIGRTMIN is 34; the upper half counts down from SIGRTMAX.
    const RTMIN: u32 = 34;
    const RTMAX: u32 = 64;
    const RTMID: u32 = (RTMIN + RTMAX) / 2;
    match NAMES.iter().find(|(n, _)| i64::from(*n) == i64::from(sig)) {
        Some((_, name)) => (*name).to_owned(),
        None if sig == RTMIN => "SIGRTMIN".to_owned(),
        None if sig == RTMAX => "SIGRTMAX".to_owned(),
        None if sig > RTMIN && sig <= RTMID => format!("SIGRTMIN+{}", sig - RTMIN),
        None if sig > RTMID && sig < RTMAX => format!("SIGRTMAX-{}", RTMAX - sig),
        None => format!("signal {sig}"),
    }
}

/// What a transition made in process context says about who closed the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CloseHow {
    /// Only a close()/shutdown() (or an exit) makes this transition.
    Direct,
    /// X→CLOSE: an abortive close by the process only if an RST follows
    /// (on loopback a peer's reaction can run in the sender's context).
    Abortive,
}

fn closing(old: TcpState, new: TcpState) -> Option<CloseHow> {
    use TcpState::*;
    match (old, new) {
        (Established | SynRecv, FinWait1) | (CloseWait, LastAck) | (Listen, Close) => {
            Some(CloseHow::Direct)
        }
        // connect() abandoned: no RST is sent from SYN_SENT.
        (SynSent, Close) => Some(CloseHow::Direct),
        (Established | CloseWait | SynRecv | FinWait1 | FinWait2, Close) => {
            Some(CloseHow::Abortive)
        }
        _ => None,
    }
}

fn starts_life(old: TcpState, new: TcpState) -> Option<Role> {
    use TcpState::*;
    match (old, new) {
        (Close, SynSent) => Some(Role::Client),
        (Close, Listen) => Some(Role::Listener),
        (Listen, SynRecv) => Some(Role::Server),
        _ => None,
    }
}

/// A life being tracked, with what only the tracker needs.
struct Tracked {
    life: SocketLife,
    /// Position in the LRU (`Tracker::lru`).
    tick: u64,
    /// When a closed life is reported if nothing else ends it.
    deadline: Option<u64>,
    /// FIN_WAIT2→CLOSE or CLOSING→CLOSE seen; TIME_WAIT unless an RST went out.
    handoff: bool,
    /// An X→CLOSE in process context waiting for its RST.
    abort_candidate: Option<Closer>,
}

/// A socketless RST, kept briefly to annotate the connect it refused.
#[derive(Clone, Debug)]
struct PendingReset {
    ts_ns: u64,
    state: Option<TcpState>,
    reason: Option<ResetReason>,
    context: Context,
    segment_flags: Option<u8>,
}

type Tuple = (SocketAddr, SocketAddr);

pub struct Tracker {
    opts: TrackerOptions,
    lives: FastMap<u64, Tracked>,
    /// (tick, skaddr) of every activity, oldest first, for eviction. An
    /// item is stale once its life moved on to a later tick (or ended);
    /// stale items are dropped at the front and by [`Tracker::compact_lru`].
    lru: VecDeque<(u64, u64)>,
    tick: u64,
    /// (deadline, skaddr) of closed lives.
    lingering: BTreeSet<(u64, u64)>,
    /// Listening port → listener skaddrs (from CLOSE→LISTEN).
    listeners: FastMap<u16, Vec<u64>>,
    procs: ProcessTable,
    /// Socketless RSTs by (their local, their remote).
    socketless: RecentMap<Tuple, PendingReset>,
    /// SYN/ACK retransmits by request (local, remote), for the child to come.
    synacks: RecentMap<Tuple, u32>,
    /// Sockets evicted while open (skaddr), so that their later events are
    /// counted, not started again as new mid-life lives: each socket is
    /// reported once. Bounded like the table itself.
    evicted_open: RecentMap<u64, ()>,
    stats: TrackerStats,
}

impl Tracker {
    pub fn new(opts: TrackerOptions) -> Tracker {
        // Evicted sockets can outnumber the table many times over (its
        // point is to be small); a tombstone is a few dozen bytes.
        let evicted_cap = (4 * opts.max_sockets).max(16 * 1024);
        Tracker {
            opts,
            lives: FastMap::default(),
            lru: VecDeque::new(),
            tick: 0,
            lingering: BTreeSet::new(),
            listeners: FastMap::default(),
            procs: ProcessTable::new(),
            socketless: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            synacks: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            evicted_open: RecentMap::new(evicted_cap, None),
            stats: TrackerStats::default(),
        }
    }

    /// Feeds one record; returns the lives it completed (in order).
    pub fn observe(&mut self, rec: &Record) -> Vec<SocketLife> {
        let mut out = Vec::new();
        // Record time moves the linger clock too, so replays need no timer.
        self.expire_into(rec.ts_ns(), &mut out);
        match rec {
            Record::State {
                sock,
                old,
                new,
                unread,
                peer_fin,
            } => {
                self.on_state(sock, *old, *new, *unread, &mut out);
                if *peer_fin == Some(false)
                    && let Some(t) = self.lives.get_mut(&sock.skaddr)
                {
                    // FIN sent and acknowledged, the peer's never came: the
                    // kernel handed the orphan to a FIN_WAIT2 mini-socket.
                    t.handoff = false;
                    t.life.fin_wait2_orphan = true;
                }
            }
            Record::SendReset {
                sock,
                state,
                reason,
                segment_flags,
            } => self.on_send_reset(sock, *state, reason, *segment_flags, &mut out),
            Record::ReceiveReset { sock } => self.on_receive_reset(sock, &mut out),
            Record::Retransmit { sock, state } => self.on_retransmit(sock, *state, &mut out),
            Record::RetransmitSynAck { sock } => self.on_synack_retransmit(sock),
            Record::ErrorReport {
                sock,
                errno,
                retransmits,
                probes,
            } => {
                self.enter(sock, &mut out);
                if let Some(t) = self.lives.get_mut(&sock.skaddr) {
                    let life = &mut t.life;
                    life.error = Some(SockError {
                        offset_ns: life.offset(sock.ts_ns),
                        errno: *errno,
                        retransmits: *retransmits,
                        probes: *probes,
                    });
                }
            }
            Record::Destroy { sock } if self.evicted_open.remove(&sock.skaddr).is_some() => {
                // The end of a socket reported early (evicted).
                self.stats.after_eviction += 1;
            }
            Record::Destroy { sock } => match self.take(sock.skaddr) {
                Some(mut t) => {
                    t.life.destroyed = true;
                    t.life.last_ns = t.life.last_ns.max(sock.ts_ns);
                    out.push(finalize(t));
                }
                None => self.stats.ignored += 1,
            },
            Record::ProcessExit {
                ts_ns,
                task,
                exit_code,
                group_dead,
            } => self.procs.on_exit(*ts_ns, task, *exit_code, *group_dead),
            Record::Signal {
                ts_ns,
                sig,
                target_pid,
                sender,
                delivered,
            } => {
                if *delivered {
                    self.procs.on_signal(*ts_ns, *sig, *target_pid, sender);
                }
            }
        }
        out
    }

    /// Reports closed lives whose linger time has passed at `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<SocketLife> {
        let mut out = Vec::new();
        self.expire_into(now_ns, &mut out);
        self.socketless.prune(now_ns);
        self.synacks.prune(now_ns);
        self.procs.prune(now_ns);
        out
    }

    /// Reports every life left, oldest first; open ones are marked `still_open`.
    pub fn finish(&mut self) -> Vec<SocketLife> {
        self.finish_against(None)
    }

    /// Lives that tcptrace believes open at exit, checked against the
    /// kernel's own list of sockets (`alive`: local and remote address of
    /// each, from socket diagnostics): one the kernel no longer has was
    /// closed, its closing transitions unseen, and is marked `gone_unseen`
    /// instead of `still_open`. With `None` (no list) every open life is
    /// reported still open.
    pub fn finish_against(
        &mut self,
        alive: Option<&HashSet<(SocketAddr, SocketAddr)>>,
    ) -> Vec<SocketLife> {
        let mut skaddrs: Vec<(u64, u64)> = self
            .lives
            .iter()
            .map(|(&sk, t)| (t.life.start_ns, sk))
            .collect();
        skaddrs.sort_unstable();
        skaddrs
            .into_iter()
            .filter_map(|(_, sk)| self.take(sk))
            .map(|mut t| {
                let open = t.life.state != Some(TcpState::Close);
                let gone = alive.is_some_and(|a| !a.contains(&(t.life.local, t.life.remote)));
                t.life.still_open = open && !gone;
                t.life.gone_unseen = open && gone;
                finalize(t)
            })
            .collect()
    }

    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            tracked: self.lives.len() as u64,
            ..self.stats
        }
    }

    /// Marks every life tracked now as having missed events (the session
    /// calls this when the ring buffer reports a loss).
    pub fn mark_events_lost(&mut self) {
        for t in self.lives.values_mut() {
            t.life.mark_lost_events();
        }
    }

    fn expire_into(&mut self, now_ns: u64, out: &mut Vec<SocketLife>) {
        while let Some(&(deadline, sk)) = self.lingering.first() {
            if deadline > now_ns {
                break;
            }
            self.lingering.pop_first();
            if let Some(t) = self.take(sk) {
                out.push(finalize(t));
            }
        }
    }

    /// Stops tracking `skaddr`.
    fn take(&mut self, skaddr: u64) -> Option<Tracked> {
        // Its LRU items go stale.
        let t = self.lives.remove(&skaddr)?;
        if let Some(d) = t.deadline {
            self.lingering.remove(&(d, skaddr));
        }
        if t.life.role == Role::Listener
            && let Some(list) = self.listeners.get_mut(&t.life.local.port())
        {
            list.retain(|&sk| sk != skaddr);
            if list.is_empty() {
                self.listeners.remove(&t.life.local.port());
            }
        }
        Some(t)
    }

    /// Starts tracking `life`, evicting the least recently active if full.
    fn insert(&mut self, life: SocketLife, out: &mut Vec<SocketLife>) {
        while self.lives.len() >= self.opts.max_sockets.max(1) {
            let Some((tick, sk)) = self.lru.pop_front() else {
                break;
            };
            if self.lives.get(&sk).is_none_or(|t| t.tick != tick) {
                continue;
            }
            if let Some(mut t) = self.take(sk) {
                // A closed life only waited for late events: it is complete.
                if t.life.state != Some(TcpState::Close) {
                    t.life.evicted = true;
                    self.stats.evicted += 1;
                    self.evicted_open.insert(sk, t.life.last_ns, ());
                }
                out.push(finalize(t));
            }
        }
        self.tick += 1;
        let sk = life.skaddr;
        self.lives.insert(
            sk,
            Tracked {
                life,
                tick: self.tick,
                deadline: None,
                handoff: false,
                abort_candidate: None,
            },
        );
        self.touch(self.tick, sk);
        self.stats.sockets_seen += 1;
        self.stats.peak_tracked = self.stats.peak_tracked.max(self.lives.len() as u64);
    }

    /// Makes sure `sock` has a life (created mid-life when unknown), marks
    /// it active and takes what the record knows about the socket.
    fn enter(&mut self, sock: &SockInfo, out: &mut Vec<SocketLife>) {
        if !self.lives.contains_key(&sock.skaddr) {
            if self.evicted_open.get(&sock.skaddr, sock.ts_ns).is_some() {
                // Already reported (evicted): count, don't start it again.
                self.stats.after_eviction += 1;
                return;
            }
            let mut life = SocketLife::new(sock);
            life.started_mid_life = true;
            self.insert(life, out);
        }
        self.tick += 1;
        if let Some(t) = self.lives.get_mut(&sock.skaddr) {
            t.tick = self.tick;
            t.life.absorb(sock);
            self.touch(self.tick, sock.skaddr);
        }
    }

    /// Records activity of `skaddr` at `tick` in the LRU.
    fn touch(&mut self, tick: u64, skaddr: u64) {
        self.lru.push_back((tick, skaddr));
        if self.lru.len() > 2 * self.lives.len() + 64 {
            self.compact_lru();
        }
    }

    /// Drops stale LRU items, so that the LRU holds at most about two items
    /// per life (amortised O(1) per activity).
    fn compact_lru(&mut self) {
        let lives = &self.lives;
        self.lru
            .retain(|(tick, sk)| lives.get(sk).is_some_and(|t| t.tick == *tick));
    }

    fn on_state(
        &mut self,
        sock: &SockInfo,
        old: TcpState,
        new: TcpState,
        unread: Option<u32>,
        out: &mut Vec<SocketLife>,
    ) {
        let unread = unread.and_then(|raw| unread_at_close(old, raw));
        let start = starts_life(old, new);
        if let Some(role) = start {
            // A new socket at this address: whatever was evicted is gone.
            self.evicted_open.remove(&sock.skaddr);
            // skaddr reuse: the old life is over.
            if let Some(t) = self.take(sock.skaddr) {
                out.push(finalize(t));
            }
            let mut life = SocketLife::new(sock);
            life.role = role;
            match role {
                Role::Server => self.adopt_child(&mut life),
                Role::Listener => self
                    .listeners
                    .entry(sock.local.port())
                    .or_default()
                    .push(sock.skaddr),
                Role::Client | Role::Unknown => {}
            }
            self.insert(life, out);
        }
        let ts = sock.ts_ns;
        let kind = closing(old, new).filter(|_| old != new);
        let closer = kind.and(sock.context.process()).map(|p| Closer {
            by: *p,
            exit: self.procs.exit_of(p, ts),
        });
        let pending_synacks = (old, new) == (TcpState::SynRecv, TcpState::Established);
        let pending_synacks =
            pending_synacks.then(|| self.synacks.remove(&(sock.local, sock.remote)));
        let refusal = ((old, new) == (TcpState::SynSent, TcpState::Close))
            .then(|| self.refusal_for(sock))
            .flatten();
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(&sock.skaddr) else {
            return;
        };
        let life = &mut t.life;
        if old == new {
            life.self_transitions += 1;
            self.stats.self_transitions += 1;
            return;
        }
        if life.state.is_some_and(|current| current != old) {
            // A transition the kernel made never reached us (ring buffer
            // full, or a run the kernel skipped): say so, don't guess.
            life.gap = true;
        }
        if (old, new) == (TcpState::SynRecv, TcpState::Established) {
            // Older kernels report the listener's tuple at LISTEN→SYN_RECV.
            life.local = sock.local;
            life.remote = sock.remote;
        }
        if let Some(Some(n)) = pending_synacks {
            life.synack_retransmits += n;
        }
        if let Some(r) = refusal
            && life.peer_reset.is_none()
        {
            life.peer_reset = Some(pending_to_sent(life, r));
        }
        let step = Step {
            offset_ns: life.offset(ts),
            old,
            new,
            context: sock.context,
        };
        push_step(life, step);
        life.state = Some(new);
        life.infer_role(old, new);
        if let (Some(kind), Some(closer)) = (kind, closer)
            && life.closed_by.is_none()
            && life.resets_received.is_empty()
        {
            match kind {
                CloseHow::Direct => life.set_closer(closer),
                // tcp_close() with unread data sends an RST itself; only a
                // peer's RST (excluded above) closes these states otherwise.
                CloseHow::Abortive
                    if unread.is_some_and(|n| n > 0)
                        && matches!(old, TcpState::Established | TcpState::CloseWait) =>
                {
                    life.set_closer(closer)
                }
                CloseHow::Abortive => t.abort_candidate = Some(closer),
            }
        }
        if let Some(d) = t.deadline.take() {
            self.lingering.remove(&(d, sock.skaddr));
        }
        if new == TcpState::Close {
            life.end_ns = ts;
            if unread.is_some() {
                life.unread = unread;
            }
            t.handoff = matches!(old, TcpState::FinWait2 | TcpState::Closing);
            let deadline = ts.saturating_add(self.opts.linger_ns);
            t.deadline = Some(deadline);
            self.lingering.insert((deadline, sock.skaddr));
        } else {
            t.handoff |= new == TcpState::TimeWait;
            life.end_ns = life.last_ns;
        }
    }

    /// Links a new server child to its listener (when exactly one matches)
    /// and to SYN/ACK retransmits of its request.
    fn adopt_child(&mut self, child: &mut SocketLife) {
        child.listener = Some(child.local);
        if let Some(n) = self.synacks.remove(&(child.local, child.remote)) {
            child.synack_retransmits += n;
        }
        let candidates: Vec<u64> = self
            .listeners
            .get(&child.local.port())
            .into_iter()
            .flatten()
            .copied()
            .filter(|sk| {
                self.lives.get(sk).is_some_and(|l| {
                    l.life.local.ip().is_unspecified() || l.life.local.ip() == child.local.ip()
                })
            })
            .collect();
        if let [sk] = candidates[..]
            && let Some(l) = self.lives.get_mut(&sk)
        {
            l.life.children += 1;
            child.listener = Some(l.life.local);
            // The kernel's owner map hands the listener's owner to children;
            // fill it in when the child's records lack it.
            if child.owner.is_none() {
                child.owner = l.life.owner;
            }
        }
    }

    /// The socketless RST that answered this connecting socket's SYN.
    fn refusal_for(&self, sock: &SockInfo) -> Option<PendingReset> {
        self.socketless
            .get(&(sock.remote, sock.local), sock.ts_ns)
            .cloned()
    }

    fn on_send_reset(
        &mut self,
        sock: &SockInfo,
        state: Option<TcpState>,
        reason: &Option<ResetReason>,
        segment_flags: Option<u8>,
        out: &mut Vec<SocketLife>,
    ) {
        let pending = PendingReset {
            ts_ns: sock.ts_ns,
            state,
            reason: reason.clone(),
            context: sock.context,
            segment_flags,
        };
        if sock.skaddr == 0 || !self.lives.contains_key(&sock.skaddr) {
            // Nothing to attach to: report it alone, now.
            let mut life = SocketLife::new(sock);
            life.state = state;
            life.resets_sent
                .push(pending_to_sent(&life, pending.clone()));
            if sock.skaddr == 0 {
                life.socketless = true;
                life.role = Role::Server;
                self.stats.socketless_resets += 1;
                self.socketless
                    .insert((sock.local, sock.remote), sock.ts_ns, pending);
            } else {
                life.started_mid_life = true;
                self.stats.orphan_resets += 1;
            }
            out.push(life);
            return;
        }
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(&sock.skaddr) else {
            return;
        };
        let row = pending_to_sent(&t.life, pending);
        push_capped(&mut t.life.resets_sent, row);
        if let Some(closer) = t.abort_candidate.take() {
            t.life.set_closer(closer);
        }
    }

    fn on_receive_reset(&mut self, sock: &SockInfo, out: &mut Vec<SocketLife>) {
        let refusal = self.refusal_for(sock);
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(&sock.skaddr) else {
            return;
        };
        let life = &mut t.life;
        let row = ResetReceived {
            offset_ns: life.offset(sock.ts_ns),
            state: life.state,
            context: sock.context,
        };
        push_capped(&mut life.resets_received, row);
        if life.state == Some(TcpState::SynSent)
            && life.peer_reset.is_none()
            && let Some(r) = refusal
        {
            life.peer_reset = Some(pending_to_sent(life, r));
        }
    }

    fn on_retransmit(
        &mut self,
        sock: &SockInfo,
        state: Option<TcpState>,
        out: &mut Vec<SocketLife>,
    ) {
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(&sock.skaddr) else {
            return;
        };
        let life = &mut t.life;
        let offset_ns = life.offset(sock.ts_ns);
        let (kind, count) = match state.or(life.state) {
            Some(TcpState::SynSent) => (RetransmitKind::Syn, &mut life.syn_retransmits),
            Some(TcpState::SynRecv) => (RetransmitKind::Synack, &mut life.synack_retransmits),
            _ => (RetransmitKind::Data, &mut life.data_retransmits),
        };
        *count = count.saturating_add(1);
        let row = Retransmit {
            offset_ns,
            kind,
            number: *count,
        };
        push_capped(&mut life.retransmits, row);
    }

    /// Counted on the listener (or TFO child) and remembered by the request's
    /// tuple, for the child socket created when the handshake completes.
    fn on_synack_retransmit(&mut self, sock: &SockInfo) {
        let key = (sock.local, sock.remote);
        match self.synacks.get_mut(&key) {
            Some(n) => *n = n.saturating_add(1),
            None => self.synacks.insert(key, sock.ts_ns, 1),
        }
        if let Some(t) = self.lives.get_mut(&sock.skaddr) {
            let life = &mut t.life;
            life.synack_retransmits = life.synack_retransmits.saturating_add(1);
            life.last_ns = life.last_ns.max(sock.ts_ns);
            let row = Retransmit {
                offset_ns: life.offset(sock.ts_ns),
                kind: RetransmitKind::Synack,
                number: life.synack_retransmits,
            };
            push_capped(&mut life.retransmits, row);
            if life.role != Role::Listener {
                // A TFO child counts its own; no child is to come.
                self.synacks.remove(&key);
            }
        }
    }
}

fn pending_to_sent(life: &SocketLife, r: PendingReset) -> ResetSent {
    ResetSent {
        offset_ns: life.offset(r.ts_ns),
        state: r.state,
        reason: r.reason,
        context: r.context,
        segment_flags: r.segment_flags,
    }
}

/// The life as reported: durations and the TIME_WAIT verdict settled.
fn finalize(t: Tracked) -> SocketLife {
    let mut life = t.life;
    // FIN_WAIT2→CLOSE followed by an RST is a linger abort, not TIME_WAIT.
    life.time_wait = t.handoff && life.resets_sent.is_empty();
    if life.state != Some(TcpState::Close) {
        life.end_ns = life.last_ns;
    }
    life.duration_ns = life.end_ns.saturating_sub(life.start_ns);
    life
}

/// Bytes the application never read, from the kernel's raw
/// `rcv_nxt - copied_seq` at a transition to CLOSE. A received FIN takes a
/// sequence number too, so it is taken off where the peer's FIN surely
/// arrived; from FIN_WAIT2 nobody can tell whether it did, so nothing is said.
pub fn unread_at_close(old: TcpState, raw: u32) -> Option<u32> {
    match old {
        TcpState::Established | TcpState::SynRecv | TcpState::FinWait1 => Some(raw),
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing => Some(raw.saturating_sub(1)),
        _ => None,
    }
}

/// Recorded event sequences (mirroring KERNEL-NOTES.md), shared by the
/// tracker, classifier and renderer tests.
#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests;
