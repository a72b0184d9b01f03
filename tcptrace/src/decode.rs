//! Kernel event → typed record. The first step of the pipeline: turns the raw
//! `#[repr(C)]` [`Event`] from the event rings into a [`Record`] that the
//! tracker and renderers can use without knowing any kernel layout.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;
use tcptrace_common::{Event, Task, flag, kind, more_flags, record_len};

use crate::kernel::{DropReasons, ResetReasons};

mod comm;

pub use self::comm::Comm;

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

/// Who was running when an event fired.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Context {
    /// In a process's own context (a syscall, or its exit).
    Process(Proc),
    /// In softirq: the task on the CPU just happened to be running and did
    /// not cause it. The kernel program does not read it (pid 0, no name:
    /// a helper call saved per event).
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
    /// A child of an address several processes listen on (SO_REUSEPORT),
    /// not accepted yet: its owner is unknown until one accepts it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shared_listener: bool,
}

impl SockInfo {
    /// A record whose tuple the kernel did not read (a destroy without
    /// filters): port 0 at both ends and no owner.
    pub fn is_bare(&self) -> bool {
        self.local.port() == 0 && self.remote.port() == 0 && self.owner.is_none()
    }
}

/// An RST reason: the kernel's number and, when the running kernel names it,
/// its name (`TCP_ABORT_ON_CLOSE`, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ResetReason {
    pub code: u32,
    pub name: Option<String>,
}

/// A drop reason: the kernel's number (`enum skb_drop_reason`) and, when
/// the running kernel names it, its name (`NETFILTER_DROP`, ...).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DropReason {
    pub code: u32,
    pub name: Option<String>,
}

impl DropReason {
    /// The segment completing a handshake met a full accept queue.
    pub fn is_listen_overflow(&self) -> bool {
        self.name.as_deref() == Some("TCP_LISTEN_OVERFLOW")
    }
}

/// A TCP segment the kernel dropped (`skb:kfree_skb`): only SYN, SYN/ACK,
/// FIN and RST segments, and any dropped for accept-queue overflow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SegmentDrop {
    pub ts_ns: u64,
    pub cpu: u32,
    /// The socket the kernel had matched the segment to (`rx_sk`).
    #[serde(serialize_with = "ser_opt_hex")]
    pub rx_sk: Option<u64>,
    /// The socket that still owned the buffer (`skb->sk`): its sender for
    /// a segment dropped on its way out, its receiver when early demux had
    /// found one.
    #[serde(serialize_with = "ser_opt_hex")]
    pub skb_sk: Option<u64>,
    /// The segment's own addresses: it went from `source` to `destination`.
    pub source: SocketAddr,
    pub destination: SocketAddr,
    pub context: Context,
    /// The owner of `rx_sk` (else `skb_sk`), from the kernel's owner map.
    pub owner: Option<Proc>,
    /// Read only with the `--netns` filter on.
    pub netns: Option<u32>,
    pub reason: DropReason,
    /// The segment's TCP flags.
    pub segment_flags: u8,
    /// Not a loss: `rx_sk` was a TIME_WAIT (or FIN_WAIT2) mini-socket,
    /// which answered this segment (a peer's FIN) and freed it so.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub answered_by_time_wait: bool,
}

/// Kernel addresses as the socket lines print them (`"0xffff…"`): the raw
/// number exceeds 2^53, which parsers that read doubles cannot hold.
fn ser_opt_hex<S: serde::Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(&format_args!("{v:#x}")),
        None => s.serialize_none(),
    }
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
    /// `accept(2)`/`accept4(2)` returned this socket to the context task,
    /// its owner from now on.
    Accept {
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
    /// `skb:kfree_skb`: a segment of a handshake or a close dropped.
    Drop(SegmentDrop),
    /// `signal:signal_generate` for a signal that kills by default.
    Signal {
        ts_ns: u64,
        sig: u32,
        target_pid: u32,
        sender: Proc,
        delivered: bool,
    },
    /// `oom:mark_victim`: the OOM killer chose `victim_pid` (a process id),
    /// just after generating its SIGKILL.
    OomVictim {
        ts_ns: u64,
        victim_pid: u32,
        /// The task on the CPU: whoever needed the memory, often the victim.
        context: Proc,
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
            | Record::Accept { sock }
            | Record::ErrorReport { sock, .. } => sock.ts_ns,
            Record::ProcessExit { ts_ns, .. }
            | Record::Signal { ts_ns, .. }
            | Record::OomVictim { ts_ns, .. } => *ts_ns,
            Record::Drop(d) => d.ts_ns,
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
            | Record::Accept { sock }
            | Record::ErrorReport { sock, .. } => Some(sock),
            Record::ProcessExit { .. }
            | Record::Signal { .. }
            | Record::OomVictim { .. }
            | Record::Drop(_) => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {0} bytes, shorter than the {1} every record has")]
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
/// aligned for it). An item is a prefix of an event, at least
/// [`record_len::BARE`] bytes: what it leaves off is zero ("unknown"); bytes
/// past the event (a newer kernel program's) are ignored.
pub fn event_from_bytes(bytes: &[u8]) -> Result<Event, DecodeError> {
    if let Some(whole) = bytes.get(..record_len::FULL) {
        // SAFETY: Event is plain #[repr(C)] data valid for any bit pattern,
        // and `whole` is exactly its size.
        return Ok(unsafe { core::ptr::read_unaligned(whole.as_ptr().cast::<Event>()) });
    }
    // A prefix, into a zeroed event. The kernel's own cut lengths are
    // copied with constant sizes, which compile to a few moves; a length
    // left to run time is a call into memcpy, which made decoding 10 %
    // slower in the replay benchmark.
    let mut padded = [0u8; record_len::FULL];
    let len = bytes.len();
    match len {
        record_len::BARE => padded[..record_len::BARE].copy_from_slice(&bytes[..record_len::BARE]),
        record_len::TO_CONTEXT => {
            padded[..record_len::TO_CONTEXT].copy_from_slice(&bytes[..record_len::TO_CONTEXT]);
        }
        record_len::TO_OWNER => {
            padded[..record_len::TO_OWNER].copy_from_slice(&bytes[..record_len::TO_OWNER]);
        }
        record_len::TO_TAIL => {
            padded[..record_len::TO_TAIL].copy_from_slice(&bytes[..record_len::TO_TAIL]);
        }
        _ if len < record_len::BARE => {
            return Err(DecodeError::Size(len, record_len::BARE));
        }
        _ => padded[..len].copy_from_slice(bytes),
    }
    // SAFETY: as above; `padded` is exactly the event's size.
    Ok(unsafe { core::ptr::read_unaligned(padded.as_ptr().cast::<Event>()) })
}

/// Turns raw events into records, naming RST and drop reasons as the
/// running kernel (or the recording's) does.
#[derive(Clone, Debug, Default)]
pub struct Decoder {
    reasons: ResetReasons,
    drop_reasons: DropReasons,
}

impl Decoder {
    pub fn new(reasons: ResetReasons) -> Decoder {
        Decoder {
            reasons,
            drop_reasons: DropReasons::default(),
        }
    }

    pub fn with_drop_reasons(mut self, drop_reasons: DropReasons) -> Decoder {
        self.drop_reasons = drop_reasons;
        self
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
            shared_listener: e.more_flags & more_flags::SHARED_LISTENER != 0,
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
            kind::ACCEPT => Record::Accept { sock: sock() },
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
            kind::DROP => Record::Drop(SegmentDrop {
                ts_ns: e.ts_ns,
                cpu: e.cpu,
                rx_sk: (e.skaddr != 0).then_some(e.skaddr),
                skb_sk: (e.aux != 0).then_some(e.aux),
                source: SocketAddr::new(ip(e.family, &e.saddr), e.sport),
                destination: SocketAddr::new(ip(e.family, &e.daddr), e.dport),
                context,
                owner: (e.flags & flag::OWNER_KNOWN != 0).then(|| Proc::from_task(&e.owner)),
                netns: (e.netns != 0).then_some(e.netns),
                reason: DropReason {
                    code: e.value,
                    name: self.drop_reasons.name(e.value).map(str::to_owned),
                },
                segment_flags: e.seg_flags as u8,
                answered_by_time_wait: e.newstate == tcptrace_common::tcp_state::TIME_WAIT,
            }),
            kind::OOM_VICTIM => Record::OomVictim {
                ts_ns: e.ts_ns,
                victim_pid: e.aux as u32,
                context: *context.on_cpu(),
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
mod tests;
