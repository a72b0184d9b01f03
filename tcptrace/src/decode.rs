//! Kernel event → typed record. The first step of the pipeline: turns the raw
//! `#[repr(C)]` [`Event`] from the ring buffer into a [`Record`] that the
//! tracker and renderers can use without knowing any kernel layout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;
use tcptrace_common::{COMM_LEN, Event, Task, flag, kind};

use crate::kernel::ResetReasons;

pub use tcptrace_common::{AF_INET, AF_INET6};

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    pub fn from_raw(raw: u8) -> Option<TcpState> {
        use TcpState::*;
        Some(match raw {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            _ => return None,
        })
    }

    /// The name people know from tcpstates and `ss`.
    pub fn name(self) -> &'static str {
        use TcpState::*;
        match self {
            Established => "ESTABLISHED",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            FinWait1 => "FIN_WAIT1",
            FinWait2 => "FIN_WAIT2",
            TimeWait => "TIME_WAIT",
            Close => "CLOSE",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
            Listen => "LISTEN",
            Closing => "CLOSING",
            NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl std::fmt::Display for TcpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.name())
    }
}

/// A process as the kernel program saw it. `comm` is the raw name, untrusted:
/// escape it (see [`crate::render::escape`]) before printing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Proc {
    pub pid: u32,
    pub tgid: u32,
    pub comm: Comm,
    pub cgroup_id: u64,
}

impl Proc {
    fn from_task(task: &Task) -> Proc {
        Proc {
            pid: task.pid,
            tgid: task.tgid,
            comm: Comm::from_task_comm(&task.comm),
            cgroup_id: task.cgroup_id,
        }
    }

    /// The kernel's idle task and kernel threads have no process behind them.
    pub fn is_idle(&self) -> bool {
        self.tgid == 0
    }
}

/// A task's name, inline: the kernel's bytes up to the first NUL, as UTF-8
/// (bytes that are not valid UTF-8 become U+FFFD, as
/// [`String::from_utf8_lossy`] does). `Copy`, so that records and the rows
/// made of them never allocate for names; derefs to `&str`.
#[derive(Clone, Copy)]
pub struct Comm {
    len: u8,
    /// UTF-8; room for every byte of a raw name replaced by U+FFFD.
    bytes: [u8; Comm::CAPACITY],
}

impl Comm {
    /// Most bytes a name holds: [`COMM_LEN`] invalid bytes, 3 bytes each.
    pub const CAPACITY: usize = 3 * COMM_LEN;

    /// The name in a kernel `comm` buffer: up to the first NUL and at most
    /// [`COMM_LEN`] bytes, lossy UTF-8.
    pub fn from_raw(raw: &[u8]) -> Comm {
        let raw = &raw[..raw.len().min(COMM_LEN)];
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let raw = &raw[..end];
        // Names are nearly always ASCII: copy them whole.
        if raw.is_ascii() {
            let mut c = Comm::default();
            c.bytes[..raw.len()].copy_from_slice(raw);
            c.len = raw.len() as u8;
            return c;
        }
        match std::str::from_utf8(raw) {
            Ok(s) => Comm::truncated(s),
            Err(_) => {
                let mut c = Comm::default();
                for chunk in raw.utf8_chunks() {
                    c.push(chunk.valid());
                    if !chunk.invalid().is_empty() {
                        c.push(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
                    }
                }
                c
            }
        }
    }

    /// [`Comm::from_raw`] of a whole kernel buffer, with a fast path for the
    /// usual ASCII name: the bytes are looked at as one 128-bit word.
    fn from_task_comm(raw: &[u8; COMM_LEN]) -> Comm {
        const LO: u128 = u128::from_le_bytes([0x01; COMM_LEN]);
        const HI: u128 = u128::from_le_bytes([0x80; COMM_LEN]);
        let word = u128::from_le_bytes(*raw);
        // The lowest flagged byte is the first NUL (flags above it can be false).
        let zeros = word.wrapping_sub(LO) & !word & HI;
        let len = (zeros.trailing_zeros() / 8) as usize;
        let name = match len {
            COMM_LEN => word,
            n => word & ((1u128 << (n * 8)) - 1),
        };
        if name & HI != 0 {
            return Comm::from_raw(&raw[..]);
        }
        let mut c = Comm::default();
        c.bytes[..COMM_LEN].copy_from_slice(&name.to_le_bytes());
        c.len = len as u8;
        c
    }

    /// `s`, cut at a character boundary to [`Comm::CAPACITY`] bytes.
    fn truncated(s: &str) -> Comm {
        let mut c = Comm::default();
        c.push(s);
        c
    }

    /// Appends what fits of `s` (whole characters only).
    fn push(&mut self, s: &str) {
        let len = usize::from(self.len);
        let mut n = s.len().min(Comm::CAPACITY - len);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.bytes[len..len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n as u8;
    }

    pub fn as_str(&self) -> &str {
        let bytes = &self.bytes[..usize::from(self.len)];
        // SAFETY: only UTF-8 is ever copied in below `len`: ASCII names
        // (`from_raw`, `from_task_comm`) or whole characters (`push`).
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }
}

impl Default for Comm {
    fn default() -> Self {
        Comm {
            len: 0,
            bytes: [0; Comm::CAPACITY],
        }
    }
}

/// For names that do not come from the kernel (tests, fixtures): cut at a
/// character boundary to [`Comm::CAPACITY`] bytes.
impl From<&str> for Comm {
    fn from(s: &str) -> Comm {
        Comm::truncated(s)
    }
}

impl std::ops::Deref for Comm {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Comm {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Comm {
    fn eq(&self, other: &Comm) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Comm {}

impl std::hash::Hash for Comm {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl PartialEq<str> for Comm {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Comm {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Comm {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<Comm> for str {
    fn eq(&self, other: &Comm) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Comm> for &str {
    fn eq(&self, other: &Comm) -> bool {
        *self == other.as_str()
    }
}

impl std::fmt::Display for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self.as_str(), f)
    }
}

impl std::fmt::Debug for Comm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl Serialize for Comm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Who was running when an event fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Context {
    /// In a process's own context (a syscall, or its exit).
    Process(Proc),
    /// In softirq: `on_cpu` just happened to be running and did not cause it.
    Softirq { on_cpu: Proc },
}

impl Context {
    /// The process that caused the event, if it ran in process context.
    pub fn process(&self) -> Option<&Proc> {
        match self {
            Context::Process(p) => Some(p),
            Context::Softirq { .. } => None,
        }
    }

    pub fn on_cpu(&self) -> &Proc {
        match self {
            Context::Process(p) => p,
            Context::Softirq { on_cpu } => on_cpu,
        }
    }
}

/// What every socket event carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SockInfo {
    /// Monotonic nanoseconds (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub cpu: u32,
    /// Kernel address of the `struct sock`.
    pub skaddr: u64,
    /// Local end; port 0 when the kernel had not chosen one yet.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub context: Context,
    /// The socket's owner, from the kernel's owner map; `None` when unknown
    /// (the socket was opened before tracing began, or its owner was evicted).
    pub owner: Option<Proc>,
    /// Its network namespace (inode number), where the kernel read it: on
    /// the event that starts a life, or with the `--netns` filter on.
    pub netns: Option<u32>,
}

/// An RST reason: the kernel's number and, when the running kernel names it,
/// its name (`TCP_ABORT_ON_CLOSE`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetReason {
    pub code: u32,
    pub name: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    /// `sock:inet_sock_set_state`.
    State {
        #[serde(flatten)]
        sock: SockInfo,
        old: TcpState,
        new: TcpState,
        /// Bytes received but never read, on a transition to CLOSE (BTF).
        unread: Option<u32>,
        /// At FIN_WAIT2→CLOSE: whether the peer's FIN had arrived
        /// (`sk_shutdown & RCV_SHUTDOWN`); `None` elsewhere.
        peer_fin: Option<bool>,
    },
    /// `tcp:tcp_send_reset`: we sent an RST. `skaddr` is 0 when no socket
    /// matched the segment (e.g. a SYN to a closed port).
    SendReset {
        #[serde(flatten)]
        sock: SockInfo,
        state: Option<TcpState>,
        reason: Option<ResetReason>,
        /// TCP flags of the segment this RST answers, when it was sent
        /// without a full socket (`SYN` = a refused connection attempt).
        segment_flags: Option<u8>,
    },
    /// `tcp:tcp_receive_reset`: the peer's RST reached this socket.
    ReceiveReset {
        #[serde(flatten)]
        sock: SockInfo,
    },
    /// `tcp:tcp_retransmit_skb` (a SYN while in SYN_SENT, or data).
    Retransmit {
        #[serde(flatten)]
        sock: SockInfo,
        state: Option<TcpState>,
    },
    /// `tcp:tcp_retransmit_synack`, on the listener's behalf.
    RetransmitSynAck {
        #[serde(flatten)]
        sock: SockInfo,
    },
    /// `tcp:tcp_destroy_sock`: the socket's memory is freed.
    Destroy {
        #[serde(flatten)]
        sock: SockInfo,
    },
    /// `sock:inet_sk_error_report`: the socket's error was set.
    ErrorReport {
        #[serde(flatten)]
        sock: SockInfo,
        /// `sk_err`: an errno (ETIMEDOUT, EHOSTUNREACH, ECONNRESET, ...).
        errno: i32,
        /// Retransmissions of the unacknowledged data when it was set.
        retransmits: u8,
        /// Keepalive (or zero-window) probes sent unanswered.
        probes: u8,
        /// `TCP_USER_TIMEOUT` in ms, when the socket had one set.
        user_timeout_ms: Option<u32>,
        /// No error was set yet: `errno` is that of an ICMP error just
        /// queued on the socket (TCP may then abort it, or keep the error
        /// soft, for a non-blocking connect() or SO_ERROR to report).
        icmp_queued: bool,
    },
    /// `sched:sched_process_exit`.
    ProcessExit {
        ts_ns: u64,
        task: Proc,
        /// The kernel's `exit_code`: a signal number in the low 7 bits, or
        /// the exit status shifted left by 8.
        exit_code: Option<i32>,
        group_dead: bool,
    },
    /// `signal:signal_generate` for a signal that kills by default.
    Signal {
        ts_ns: u64,
        sig: u32,
        target_pid: u32,
        sender: Proc,
        delivered: bool,
    },
}

impl Record {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Record::State { sock, .. }
            | Record::SendReset { sock, .. }
            | Record::ReceiveReset { sock }
            | Record::Retransmit { sock, .. }
            | Record::RetransmitSynAck { sock }
            | Record::Destroy { sock }
            | Record::ErrorReport { sock, .. } => sock.ts_ns,
            Record::ProcessExit { ts_ns, .. } | Record::Signal { ts_ns, .. } => *ts_ns,
        }
    }

    pub fn sock(&self) -> Option<&SockInfo> {
        match self {
            Record::State { sock, .. }
            | Record::SendReset { sock, .. }
            | Record::ReceiveReset { sock }
            | Record::Retransmit { sock, .. }
            | Record::RetransmitSynAck { sock }
            | Record::Destroy { sock }
            | Record::ErrorReport { sock, .. } => Some(sock),
            Record::ProcessExit { .. } | Record::Signal { .. } => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer item of {0} bytes, expected {1}")]
    Size(usize, usize),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("unknown TCP state {0}")]
    State(u8),
}

fn ip(family: u16, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(*raw))
    } else {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    }
}

/// Copies a ring-buffer item into an [`Event`] (items are not guaranteed to be
/// aligned for it).
pub fn event_from_bytes(bytes: &[u8]) -> Result<Event, DecodeError> {
    let size = core::mem::size_of::<Event>();
    if bytes.len() < size {
        return Err(DecodeError::Size(bytes.len(), size));
    }
    // SAFETY: Event is plain #[repr(C)] data valid for any bit pattern, and
    // the length was checked above.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Turns raw events into records, naming RST reasons as the running kernel does.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    reasons: ResetReasons,
}

impl Decoder {
    pub fn new(reasons: ResetReasons) -> Decoder {
        Decoder { reasons }
    }

    pub fn decode_bytes(&self, bytes: &[u8]) -> Result<Record, DecodeError> {
        self.decode(&event_from_bytes(bytes)?)
    }

    pub fn decode(&self, e: &Event) -> Result<Record, DecodeError> {
        let context = Proc::from_task(&e.context);
        let context = if e.flags & flag::SOFTIRQ != 0 {
            Context::Softirq { on_cpu: context }
        } else {
            Context::Process(context)
        };
        let sock = || SockInfo {
            ts_ns: e.ts_ns,
            cpu: e.cpu,
            skaddr: e.skaddr,
            local: SocketAddr::new(ip(e.family, &e.saddr), e.sport),
            remote: SocketAddr::new(ip(e.family, &e.daddr), e.dport),
            context,
            owner: (e.flags & flag::OWNER_KNOWN != 0).then(|| Proc::from_task(&e.owner)),
            netns: (e.netns != 0).then_some(e.netns),
        };
        // Reset and retransmit tracepoints print state 0 as "no socket".
        let state = || TcpState::from_raw(e.newstate);
        Ok(match e.kind {
            kind::STATE => Record::State {
                sock: sock(),
                old: TcpState::from_raw(e.oldstate).ok_or(DecodeError::State(e.oldstate))?,
                new: TcpState::from_raw(e.newstate).ok_or(DecodeError::State(e.newstate))?,
                unread: (e.flags & flag::UNREAD_VALID != 0).then_some(e.unread),
                peer_fin: (e.flags & flag::SHUTDOWN_VALID != 0).then_some(e.seg_flags & 1 != 0),
            },
            kind::SEND_RESET => Record::SendReset {
                sock: sock(),
                state: state(),
                reason: (e.flags & flag::REASON_VALID != 0).then(|| ResetReason {
                    code: e.value,
                    name: self.reasons.name(e.value).map(str::to_owned),
                }),
                segment_flags: (e.flags & flag::SEGMENT_VALID != 0).then_some(e.seg_flags as u8),
            },
            kind::RECEIVE_RESET => Record::ReceiveReset { sock: sock() },
            kind::RETRANSMIT_SKB => Record::Retransmit {
                sock: sock(),
                state: state(),
            },
            kind::RETRANSMIT_SYNACK => Record::RetransmitSynAck { sock: sock() },
            kind::DESTROY_SOCK => Record::Destroy { sock: sock() },
            kind::PROCESS_EXIT => Record::ProcessExit {
                ts_ns: e.ts_ns,
                task: *context.on_cpu(),
                exit_code: (e.flags & flag::EXIT_CODE_VALID != 0).then_some(e.value as i32),
                group_dead: e.flags & flag::GROUP_DEAD != 0,
            },
            kind::ERROR_REPORT => Record::ErrorReport {
                sock: sock(),
                errno: (e.value & 0xffff) as i32,
                retransmits: (e.seg_flags & 0xff) as u8,
                probes: (e.seg_flags >> 8) as u8,
                user_timeout_ms: (e.unread != 0).then_some(e.unread),
                icmp_queued: e.value & tcptrace_common::QUEUED_ERROR != 0,
            },
            kind::SIGNAL => Record::Signal {
                ts_ns: e.ts_ns,
                sig: e.value,
                target_pid: e.aux as u32,
                sender: *context.on_cpu(),
                // The kernel program submits only delivered signals.
                delivered: true,
            },
            other => return Err(DecodeError::Kind(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(pid: u32, comm: &[u8]) -> Task {
        let mut t = Task {
            pid,
            tgid: pid,
            ..Task::default()
        };
        t.comm[..comm.len()].copy_from_slice(comm);
        t
    }

    #[test]
    fn decodes_an_ipv4_state_change_from_raw_bytes() {
        let mut e = Event {
            ts_ns: 5,
            skaddr: 0xffff_0000_1234,
            kind: kind::STATE,
            oldstate: 2,
            newstate: 1,
            flags: flag::OWNER_KNOWN,
            family: AF_INET,
            sport: 45126,
            dport: 8099,
            context: task(7, b"curl"),
            owner: task(7, b"curl"),
            ..Event::default()
        };
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        // SAFETY: viewing plain data as bytes, as the ring buffer delivers it.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&e as *const Event).cast::<u8>(),
                core::mem::size_of::<Event>(),
            )
        };
        let r = Decoder::default().decode_bytes(bytes).unwrap();
        let Record::State {
            sock,
            old,
            new,
            unread,
            ..
        } = r
        else {
            panic!("not a state record: {r:?}")
        };
        assert_eq!(
            (old, new, unread),
            (TcpState::SynSent, TcpState::Established, None)
        );
        assert_eq!(sock.local, "127.0.0.1:45126".parse().unwrap());
        assert_eq!(sock.remote, "127.0.0.2:8099".parse().unwrap());
        assert_eq!(sock.context.process().unwrap().comm, "curl");
        assert_eq!(sock.owner.unwrap().pid, 7);
    }

    #[test]
    fn decodes_ipv6_and_softirq_context() {
        let mut e = Event {
            kind: kind::STATE,
            oldstate: 1,
            newstate: 8,
            flags: flag::SOFTIRQ,
            family: AF_INET6,
            context: task(0, b"swapper/1"),
            ..Event::default()
        };
        e.saddr[15] = 1;
        let r = Decoder::default().decode(&e).unwrap();
        let sock = r.sock().unwrap();
        assert_eq!(sock.local.ip(), "::1".parse::<IpAddr>().unwrap());
        assert!(sock.context.process().is_none());
        assert!(sock.owner.is_none());
    }

    #[test]
    fn comm_is_the_lossy_name_up_to_the_first_nul() {
        let cases: &[&[u8]] = &[
            b"",
            b"ab\0\xff\xfe",
            b"\x7f\x01x",
            b"\x80",
            b"fifteen-chars-x",
            b"curl",
            b"swapper/1\0junk",
            b"0123456789abcdef",
            b"caf\xc3\xa9",
            b"bad\xff\xfeutf8",
            b"\xf0\x9f\x92",
            b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
            b"\xe8\xbf\x9b\xe7\xa8\x8b\xc3",
            b"evil\x1b[31m\n",
        ];
        for &raw in cases {
            let mut t = task(1, b"");
            t.comm[..raw.len()].copy_from_slice(raw);
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            let want = String::from_utf8_lossy(&raw[..end]).into_owned();
            let comm = Proc::from_task(&t).comm;
            assert_eq!(comm, want, "{raw:?}");
            assert_eq!(format!("{comm}|{comm:?}"), format!("{want}|{want:?}"));
            assert_eq!(
                serde_json::to_string(&comm).unwrap(),
                serde_json::to_string(&want).unwrap()
            );
        }
        assert_eq!(Comm::from("x".repeat(60).as_str()).len(), Comm::CAPACITY);
        assert_eq!(Comm::from("é".repeat(30).as_str()).len(), Comm::CAPACITY);
        assert_eq!(format!("[{:<6}]", Comm::from("ab")), "[ab    ]");
    }

    #[test]
    fn rejects_short_items_and_unknown_kinds_and_states() {
        assert!(matches!(
            Decoder::default().decode_bytes(&[0; 10]),
            Err(DecodeError::Size(10, _))
        ));
        let e = Event {
            kind: 99,
            ..Event::default()
        };
        assert_eq!(Decoder::default().decode(&e), Err(DecodeError::Kind(99)));
        let e = Event {
            kind: kind::STATE,
            oldstate: 40,
            newstate: 1,
            ..Event::default()
        };
        assert_eq!(Decoder::default().decode(&e), Err(DecodeError::State(40)));
    }

    #[test]
    fn names_reset_reasons_from_the_kernel_table() {
        let reasons = ResetReasons::from_pairs([(11, "TCP_ABORT_ON_CLOSE")]);
        let e = Event {
            kind: kind::SEND_RESET,
            newstate: 7,
            flags: flag::REASON_VALID,
            value: 11,
            ..Event::default()
        };
        let Record::SendReset { reason, state, .. } = Decoder::new(reasons).decode(&e).unwrap()
        else {
            panic!()
        };
        assert_eq!(state, Some(TcpState::Close));
        assert_eq!(reason.unwrap().name.as_deref(), Some("TCP_ABORT_ON_CLOSE"));
    }
}
