//! Types shared by tcptrace's kernel program and its userspace loader.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel program writes
//! [`Event`]s into the ring buffer and reads its [`Config`] from global data
//! that the loader fills in before loading. Nothing in this crate knows a
//! kernel version: offsets arrive at run time, read from the running kernel.
#![no_std]

/// Length of a task's `comm`, as in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// A task name's two little-endian words (a `comm` read as two loads) with
/// every byte after its first NUL zeroed, as `bpf_get_current_comm` pads
/// it: the `--comm` filter compares all 16 bytes. Word arithmetic, no
/// loop, for the kernel program.
#[inline(always)]
pub const fn comm_words_up_to_nul(low: u64, high: u64) -> (u64, u64) {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Flags the zero bytes; the lowest flag is always the first NUL (a
    // byte above it may be flagged falsely by the borrow, and is masked
    // off anyway).
    const fn zero_bytes(w: u64) -> u64 {
        w.wrapping_sub(ONES) & !w & HIGHS
    }
    // All ones below the lowest flagged byte.
    const fn below_first(flags: u64) -> u64 {
        ((flags & flags.wrapping_neg()) >> 7).wrapping_sub(1)
    }
    let in_low = zero_bytes(low);
    if in_low != 0 {
        return (low & below_first(in_low), 0);
    }
    let in_high = zero_bytes(high);
    if in_high != 0 {
        return (low, high & below_first(in_high));
    }
    (low, high)
}

/// A field the running kernel does not have, or that lies outside what the
/// kernel program reads (see [`SockOffsets`]).
pub const ABSENT: u16 = u16::MAX;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`; BPF's
/// UAPI mirrors them as `BPF_TCP_*`, so they are stable across versions).
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// Address families and the protocol number, as in the UAPI headers.
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// What produced an [`Event`]; stored as a `u8` so that no kernel value can be
/// an invalid Rust enum.
pub mod kind {
    /// `sock:inet_sock_set_state`.
    pub const STATE: u8 = 1;
    /// `tcp:tcp_send_reset`.
    pub const SEND_RESET: u8 = 2;
    /// `tcp:tcp_receive_reset`.
    pub const RECEIVE_RESET: u8 = 3;
    /// `tcp:tcp_retransmit_skb`.
    pub const RETRANSMIT_SKB: u8 = 4;
    /// `tcp:tcp_retransmit_synack`.
    pub const RETRANSMIT_SYNACK: u8 = 5;
    /// `tcp:tcp_destroy_sock`.
    pub const DESTROY_SOCK: u8 = 6;
    /// `sched:sched_process_exit`.
    pub const PROCESS_EXIT: u8 = 7;
    /// `signal:signal_generate` for a signal in [`super::Config::signal_mask`].
    pub const SIGNAL: u8 = 8;
    /// `sock:inet_sk_error_report`: a TCP socket's error was set
    /// ([`super::Event::value`] = `sk_err`; [`super::Event::seg_flags`] =
    /// retransmits | keepalive probes << 8; [`super::Event::value`] has
    /// [`super::QUEUED_ERROR`] set when `sk_err` was 0 and it holds the
    /// errno of the ICMP error just queued; [`super::Event::unread`] =
    /// `icsk_user_timeout` in ms, 0 when not set or unknown).
    pub const ERROR_REPORT: u8 = 9;
    /// `skb:kfree_skb` for a TCP segment that matters to a handshake or a
    /// close (SYN, SYN/ACK, FIN, RST) or one dropped for accept-queue
    /// overflow. The tuple is the segment's own (source → destination);
    /// [`super::Event::value`] = drop reason; [`super::Event::seg_flags`] =
    /// its TCP flags; [`super::Event::skaddr`] = `rx_sk` (the socket it was
    /// matched to, 0 if none); [`super::Event::aux`] = `skb->sk` (the socket
    /// still owning it: its sender, or its receiver found by early demux).
    pub const DROP: u8 = 10;
    /// `oom:mark_victim`: the OOM killer chose a process ([`super::Event::aux`]
    /// = its tgid); the SIGKILL it sent came just before.
    pub const OOM_VICTIM: u8 = 11;
    /// `syscalls:sys_exit_accept4`/`sys_exit_accept`: the context task took
    /// this socket off its listener's accept queue. [`super::Event::owner`]
    /// is that task from now on.
    pub const ACCEPT: u8 = 12;
}

/// In an error report's [`Event::value`]: the errno is that of an ICMP
/// error just queued (TCP has not set `sk_err` yet, and may never).
pub const QUEUED_ERROR: u32 = 1 << 16;

/// Bits of [`Event::flags`].
pub mod flag {
    /// The event ran in softirq context: the on-CPU task is a bystander.
    pub const SOFTIRQ: u8 = 1 << 0;
    /// [`super::Event::owner`] holds the socket's owner.
    pub const OWNER_KNOWN: u8 = 1 << 1;
    /// [`super::Event::unread`] holds the bytes unread when the socket closed.
    pub const UNREAD_VALID: u8 = 1 << 2;
    /// [`super::Event::value`] holds the exiting task's exit code.
    pub const EXIT_CODE_VALID: u8 = 1 << 3;
    /// A process exit that ends the whole thread group.
    pub const GROUP_DEAD: u8 = 1 << 4;
    /// [`super::Event::value`] holds the tracepoint's `reason` field.
    pub const REASON_VALID: u8 = 1 << 5;
    /// [`super::Event::seg_flags`] holds the answered segment's TCP flags.
    pub const SEGMENT_VALID: u8 = 1 << 6;
    /// A FIN_WAIT2→CLOSE: bit 0 of [`super::Event::seg_flags`] says
    /// whether the peer's FIN had arrived (the socket's `SOCK_DONE`).
    pub const SHUTDOWN_VALID: u8 = 1 << 7;
}

/// A task as the kernel program sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Thread id (the kernel's `pid`).
    pub pid: u32,
    /// Process id (the kernel's `tgid`).
    pub tgid: u32,
    /// cgroup v2 id (inode number of the cgroup directory).
    pub cgroup_id: u64,
    /// Raw, untrusted, NUL-padded process name.
    pub comm: [u8; COMM_LEN],
}

/// One kernel event, as written into the ring buffer.
///
/// Fields that a kind does not use are zero. Addresses are raw network-order
/// bytes (IPv4 in the first four); ports are host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC, nanoseconds.
    pub ts_ns: u64,
    /// Address of the `struct sock`; a socket's identity while it lives.
    pub skaddr: u64,
    /// One of [`kind`].
    pub kind: u8,
    /// Old TCP state (state events).
    pub oldstate: u8,
    /// New TCP state (state events), or the tracepoint's `state` field.
    pub newstate: u8,
    /// Bits of [`flag`].
    pub flags: u8,
    /// CPU the event ran on.
    pub cpu: u32,
    /// `AF_INET` (2) or `AF_INET6` (10); 0 when unknown.
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    /// Kind-specific: TCP flags of the segment a socketless reset answers
    /// ([`flag::SEGMENT_VALID`]); at a FIN_WAIT2→CLOSE, whether the peer's
    /// FIN came ([`flag::SHUTDOWN_VALID`]).
    pub seg_flags: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Kind-specific: reset reason, signal number, exit code, retransmit error.
    pub value: u32,
    /// Bytes received but not read by the application, on a close.
    pub unread: u32,
    /// Kind-specific: the socket cookie (0 when the kernel has not assigned
    /// one); for a signal, the process it was sent to.
    pub aux: u64,
    /// The task on the CPU when the event fired (the signal's sender, for
    /// [`kind::SIGNAL`]).
    pub context: Task,
    /// The socket's owner, from the kernel's owner map ([`flag::OWNER_KNOWN`]).
    pub owner: Task,
    /// The socket's network namespace (its inode number, as `lsns` shows
    /// it), read where a socket's life starts (connect, listen, a child of
    /// a listener) and whenever the `--netns` filter is on; 0 elsewhere.
    pub netns: u32,
    /// Bits of [`more_flags`] ([`Event::flags`] is full).
    pub more_flags: u32,
}

/// Lengths of the records the kernel writes. A record is a prefix of an
/// [`Event`]: the kernel leaves off the trailing sections it left all zero,
/// and a reader fills them back in with zeros, which every field reads as
/// "unknown". Every ring entry costs its length in the ring and in the
/// reader; without filters most state changes leave the owner and the tail
/// off, and a socket's destroy is its first 32 bytes.
pub mod record_len {
    use super::Event;
    use core::mem::{offset_of, size_of};

    /// Time, socket, kind, states, flags, CPU, family and ports: the
    /// shortest record (a destroy without filters).
    pub const BARE: usize = offset_of!(Event, saddr);
    /// Up to the addresses, value, unread bytes and cookie.
    pub const TO_CONTEXT: usize = offset_of!(Event, context);
    /// Up to the task that made the event.
    pub const TO_OWNER: usize = offset_of!(Event, owner);
    /// Up to the socket's owner.
    pub const TO_TAIL: usize = offset_of!(Event, netns);
    /// The whole event.
    pub const FULL: usize = size_of::<Event>();
}

impl Event {
    /// The shortest prefix of this event that holds every non-zero byte,
    /// cut at a section boundary of [`record_len`]. Word loads and ORs
    /// (about 30 BPF instructions, no helper call).
    #[inline(always)]
    pub fn record_len(&self) -> usize {
        const WORDS: usize = record_len::FULL / 8;
        // SAFETY: Event is #[repr(C)], 8-byte aligned, 152 bytes without
        // padding: exactly WORDS initialised words.
        let w = unsafe { &*core::ptr::from_ref(self).cast::<[u64; WORDS]>() };
        let any = |from: usize, to: usize| {
            let mut bits = 0;
            let mut i = from / 8;
            while i < to / 8 {
                bits |= w[i];
                i += 1;
            }
            bits != 0
        };
        if any(record_len::TO_TAIL, record_len::FULL) {
            record_len::FULL
        } else if any(record_len::TO_OWNER, record_len::TO_TAIL) {
            record_len::TO_TAIL
        } else if any(record_len::TO_CONTEXT, record_len::TO_OWNER) {
            record_len::TO_OWNER
        } else if any(record_len::BARE, record_len::TO_CONTEXT) {
            record_len::TO_CONTEXT
        } else {
            record_len::BARE
        }
    }

    /// What the kernel program writes for this event: its first
    /// [`Event::record_len`] bytes.
    #[inline(always)]
    pub fn record(&self) -> &[u8] {
        // SAFETY: Event is plain #[repr(C)] data without padding, and
        // record_len() is at most its size.
        unsafe {
            core::slice::from_raw_parts(core::ptr::from_ref(self).cast::<u8>(), self.record_len())
        }
    }
}

/// Bits of [`Event::more_flags`].
pub mod more_flags {
    /// The socket is a child of a listening address that several processes
    /// listen on (`SO_REUSEPORT`): which of them owns it is known only when
    /// one accepts it, so its owner is left unknown until then.
    pub const SHARED_LISTENER: u32 = 1 << 0;
}

/// Key of the listener map: a listening socket's namespace, family, port
/// and bound address (all zero for a wildcard bind), so that two listeners
/// on one port in two containers, or on two addresses, stay apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenerKey {
    pub netns: u32,
    pub family: u16,
    pub port: u16,
    /// Network order; IPv4 in the first word.
    pub addr: [u32; 4],
}

impl ListenerKey {
    /// The key of a listener bound to `addr` (network-order bytes, IPv4 in
    /// the first four; all zero for a wildcard bind), as the kernel program
    /// builds it from the socket's own bytes.
    pub fn new(netns: u32, family: u16, port: u16, addr: &[u8; 16]) -> ListenerKey {
        let mut words = [0u32; 4];
        for (word, bytes) in words.iter_mut().zip(addr.chunks_exact(4)) {
            *word = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        }
        ListenerKey {
            netns,
            family,
            port,
            addr: words,
        }
    }
}

/// An argument a raw tracepoint does not have (see [`ArgPos`]).
pub const NO_ARG: u8 = u8::MAX;

/// Where a raw tracepoint passes each argument the kernel program reads:
/// indices into its `TP_PROTO` arguments, as the loader found them in the
/// running kernel's BTF (`btf_trace_<name>`), or [`NO_ARG`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct ArgPos {
    /// `struct sock *`.
    pub sk: u8,
    /// `struct sk_buff *`.
    pub skb: u8,
    /// `struct request_sock *` (its head is a `struct sock_common`).
    pub req: u8,
    /// `struct task_struct *`.
    pub task: u8,
    /// First integer argument: oldstate, reset reason, retransmit error,
    /// signal number, or process_exit's `group_dead`.
    pub int0: u8,
    /// Second integer argument: newstate, or signal_generate's `result`.
    pub int1: u8,
    /// How many arguments the tracepoint has: the program never reads past
    /// them (the kernel refuses to attach a program that might).
    pub nargs: u8,
    /// A second `struct task_struct *` (sched_process_fork's child).
    pub task2: u8,
}

impl ArgPos {
    pub const NONE: ArgPos = ArgPos {
        sk: NO_ARG,
        skb: NO_ARG,
        req: NO_ARG,
        task: NO_ARG,
        int0: NO_ARG,
        int1: NO_ARG,
        nargs: 0,
        task2: NO_ARG,
    };
}

/// Bytes of `struct sock_common` the kernel program copies with one read:
/// addresses, ports, family, state, netns and cookie all sit in its head.
pub const SOCK_HEAD_BYTES: usize = 104;

/// Offsets of `struct sock` fields, from the running kernel's BTF. The head
/// fields are offsets into the first [`SOCK_HEAD_BYTES`] bytes, each aligned
/// to its size; any that is not is [`ABSENT`] and reads as zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct SockOffsets {
    /// `skc_daddr` / `skc_rcv_saddr` (IPv4, network order).
    pub daddr: u16,
    pub saddr: u16,
    /// `skc_dport` (network order) / `skc_num` (host order).
    pub dport: u16,
    pub num: u16,
    pub family: u16,
    /// `skc_state` (a byte).
    pub state: u16,
    pub v6_daddr: u16,
    pub v6_saddr: u16,
    /// `skc_cookie` (0 until something asked the kernel for it).
    pub cookie: u16,
    /// `sk_protocol` (a u16, outside the head: its own read).
    pub protocol: u16,
    /// `inet_sock::inet_sport` (network order): the local port, kept after
    /// a closing socket gives its `skc_num` back (0 when unknown).
    pub inet_sport: u16,
    /// `skc_net` (a `struct net *`), in the head.
    pub net: u16,
    /// `struct tcp_sock::rcv_nxt` / `copied_seq`: unread bytes at close.
    pub tcp_rcv_nxt: u32,
    pub tcp_copied_seq: u32,
    /// `struct net::ns.inum`: the namespace's inode number (0 = unknown).
    pub net_inum: u32,
    /// `skc_flags` (sk_flags) in the head, and the bit of `SOCK_DONE` in
    /// it (set when the peer's FIN arrived); ABSENT when unknown.
    pub flags: u16,
    pub done_bit: u16,
    /// `sk_err` (an int), `icsk_retransmits` and `icsk_probes_out` (bytes);
    /// ABSENT when unknown.
    pub sk_err: u16,
    pub retransmits: u16,
    pub probes: u16,
    /// `icsk_user_timeout` (u32, ms; 0 = not set), ABSENT when unknown.
    pub user_timeout: u16,
    /// `sk_error_queue` in `struct sock`, `prev` in its `sk_buff_head` (the
    /// newest skb; the head itself when empty), and `ee.ee_errno` of the
    /// `sock_exterr_skb` in an skb's `cb` (an offset in `struct sk_buff`):
    /// an ICMP error is queued and reported before TCP sets `sk_err`.
    /// ABSENT when unknown.
    pub error_queue: u16,
    pub queue_prev: u16,
    pub queued_errno: u16,
    /// `skc_prot` (a `struct proto *`) in the head: which protocol a socket
    /// is, without reading `sk_protocol` (see the kernel program's
    /// `is_tcp`); ABSENT when unknown.
    pub prot: u16,
}

impl SockOffsets {
    pub const NONE: SockOffsets = SockOffsets {
        daddr: ABSENT,
        saddr: ABSENT,
        dport: ABSENT,
        num: ABSENT,
        family: ABSENT,
        state: ABSENT,
        v6_daddr: ABSENT,
        v6_saddr: ABSENT,
        cookie: ABSENT,
        protocol: ABSENT,
        inet_sport: 0,
        net: ABSENT,
        tcp_rcv_nxt: 0,
        tcp_copied_seq: 0,
        net_inum: 0,
        flags: ABSENT,
        done_bit: ABSENT,
        sk_err: ABSENT,
        retransmits: ABSENT,
        probes: ABSENT,
        user_timeout: ABSENT,
        error_queue: ABSENT,
        queue_prev: ABSENT,
        queued_errno: ABSENT,
        prot: ABSENT,
    };
}

/// Offsets of `struct sk_buff` fields (a reset sent with no full socket
/// takes its addresses from the segment it answers); 0 when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct SkbOffsets {
    pub head: u16,
    pub data: u16,
    pub network_header: u16,
    pub _pad: u16,
}

/// More `struct sk_buff` fields, which only the drop program reads (it
/// also reads [`SkbOffsets::head`] and [`SkbOffsets::network_header`]);
/// 0 when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct DropSkbOffsets {
    /// `protocol` (the ethertype, network order).
    pub protocol: u16,
    /// `tail` (an offset from `head` on 64-bit kernels, a u32).
    pub tail: u16,
    /// `sk`: the socket that owns the buffer.
    pub sk: u16,
    /// `dev`: the device it came in on or goes out of.
    pub dev: u16,
    /// Where the drop program's one read of the buffer starts (8-aligned):
    /// `protocol`, `network_header`, `tail` and `head` all lie within
    /// [`SKB_WINDOW_BYTES`] of it. 0 when they do not: no drops then.
    pub window: u16,
    pub _pad: u16,
    /// `net_device.nd_net` (a `struct net *`).
    pub nd_net: u32,
}

/// Bytes of `struct sk_buff` the drop program reads in one go.
pub const SKB_WINDOW_BYTES: usize = 32;

/// Drop reasons the drop program tells apart, as numbered by the running
/// kernel's `enum skb_drop_reason` ([`NO_REASON`] when it lacks one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct DropCodes {
    /// `SKB_DROP_REASON_TCP_LISTEN_OVERFLOW`: the segment completing a
    /// handshake met a full accept queue; kept whatever its flags.
    pub listen_overflow: u32,
    /// `SKB_DROP_REASON_QUEUE_PURGE`: a socket's own queues freed at its
    /// end (an unacknowledged FIN among them), not a segment lost on its
    /// way: never reported.
    pub queue_purge: u32,
    /// `SKB_DROP_REASON_NOT_SPECIFIED`: among others, every segment a
    /// TIME_WAIT (or FIN_WAIT2) mini-socket handled is freed with it,
    /// acknowledged or not: those are not reported (see `kfree_skb`).
    pub not_specified: u32,
    pub _pad: u32,
}

/// A drop reason the running kernel does not have.
pub const NO_REASON: u32 = u32::MAX;

/// What the drop program is told. Appended to [`Config`], so that the
/// other programs read their fields at the offsets they always had (their
/// code is the same, instruction for instruction).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct DropConfig {
    /// `skb:kfree_skb`: skb, the reason (int0), `rx_sk` (sk).
    pub args: ArgPos,
    pub skb: DropSkbOffsets,
    pub codes: DropCodes,
}

/// Offsets of `struct task_struct` and signal-handler fields; 0 when unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct TaskOffsets {
    pub exit_code: u32,
    pub tgid: u32,
    /// `task_struct::sighand`.
    pub sighand: u32,
    /// `sighand_struct::action[0].sa.sa_handler`, and the size of one
    /// `struct k_sigaction` (the array's stride).
    pub sa_handler: u32,
    pub sigaction_size: u32,
    pub _pad: u32,
}

/// Indices of the per-CPU `COUNTERS` array. Events produced are not
/// counted here: they are the slots the rings' heads have reserved
/// ([`ring::RingPos::head`]) plus those lost, which saves every event a
/// locked add.
pub mod counter {
    /// Events that passed the filters and found no room in their ring.
    pub const LOST: u32 = 0;
    /// Events dropped by a filter in the kernel.
    pub const FILTERED: u32 = 1;
    /// Non-TCP `inet_sock_set_state` events (MPTCP, SCTP) ignored.
    pub const NOT_TCP: u32 = 2;
    /// Events made by `inet_sock_set_state_nested` for runs the kernel
    /// skipped (each is also one of the programs' `recursion_misses`).
    pub const RECOVERED: u32 = 3;
    /// Rare paths the kernel program met ([`super::oddity`]): a kernel read
    /// that failed, an address family or IP version it does not know, a full
    /// map. Each is also logged through aya-log, saying which.
    pub const ODD: u32 = 4;
    pub const COUNT: u32 = 5;
}

pub mod netstat;
pub mod oddity;
pub mod ring;

mod config;
pub use config::{
    AcceptConfig, Config, ContextConfig, Filter, RDONLY_CAST_MARKER, ReadConfig, SOFTIRQ_OFFSET,
    filter,
};

/// The smallest `--ring-size`: 256 KiB, 2,048 events ([`ring`]: one per
/// 128 bytes), about 0.15 s at a thousand connections a second (13 events
/// each). The reader is woken once an eighth of a ring is waiting; on a
/// loaded machine it may then wait tens of milliseconds for a CPU, and a
/// smaller ring loses events meanwhile: measured (with the kernel's BPF
/// ring buffer, whose 256 KiB held about 2,400 churn events) with a debug
/// build on 2 vCPUs at 1,000 connections/s, 16 KiB lost 2-4 % beside 8
/// busy loops, 64 KiB and 128 KiB up to 1-2 % beside 16, 256 KiB nothing
/// beside 16 (and under 2 % beside 32).
pub const MIN_RING_BYTES: u32 = 256 << 10;

/// `--ring-size` when the user does not choose one (all rings together):
/// 32,768 events.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Most event rings ([`ring`]): one per CPU up to this, then CPUs share
/// them by `cpu & (rings - 1)`. When two CPUs produced into one BPF ring
/// buffer, each event cost 100-140 ns more on a 2-CPU VM (the ring's lock
/// and producer position bounced between the CPUs; a shared slot ring's
/// head would too); eight rings keep a large host's sharing to a few CPUs
/// per ring.
pub const MAX_RINGS: u32 = 8;

// The loader and the kernel program must agree on these layouts byte for
// byte, with no implicit padding (it would reach the kernel uninitialised).
const _: () = assert!(core::mem::size_of::<Task>() == 32);
const _: () = assert!(core::mem::size_of::<Event>() == 152);
const _: () = assert!(core::mem::align_of::<Event>() == 8);
// Record lengths are whole words, in order.
const _: () = assert!(
    record_len::BARE == 32
        && record_len::TO_CONTEXT == 80
        && record_len::TO_OWNER == 112
        && record_len::TO_TAIL == 144
);
const _: () = assert!(core::mem::size_of::<ListenerKey>() == 24);
const _: () = assert!(core::mem::size_of::<ArgPos>() == 8);
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 56);
const _: () = assert!(core::mem::size_of::<DropConfig>() == 40);
const _: () = assert!(core::mem::size_of::<AcceptConfig>() == 40);
const _: () = assert!(core::mem::size_of::<Config>() == 360);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data, every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Task {}
    unsafe impl aya::Pod for super::ListenerKey {}
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The name the helper would give: bytes up to the first NUL, then 0.
    fn padded(raw: [u8; COMM_LEN]) -> [u8; COMM_LEN] {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
        let mut out = [0; COMM_LEN];
        out[..end].copy_from_slice(&raw[..end]);
        out
    }

    fn masked(raw: [u8; COMM_LEN]) -> [u8; COMM_LEN] {
        let low = u64::from_le_bytes(raw[..8].try_into().unwrap());
        let high = u64::from_le_bytes(raw[8..].try_into().unwrap());
        let (low, high) = comm_words_up_to_nul(low, high);
        let mut out = [0; COMM_LEN];
        out[..8].copy_from_slice(&low.to_le_bytes());
        out[8..].copy_from_slice(&high.to_le_bytes());
        out
    }

    #[test]
    fn a_name_read_as_two_words_is_cut_at_its_first_nul_like_the_helpers() {
        // Every NUL position, behind bytes that provoke the borrow trick's
        // false flags (0x01 after a NUL, 0x80 and 0xff), and a name left
        // over from a longer one after the NUL.
        for nul in 0..=COMM_LEN {
            for fill in [b'a', 0x01, 0x80, 0xff] {
                let mut raw = [fill; COMM_LEN];
                if nul < COMM_LEN {
                    raw[nul] = 0;
                }
                assert_eq!(masked(raw), padded(raw), "NUL at {nul}, fill {fill:#x}");
            }
        }
        let renamed = *b"nginx\0-worker-42";
        assert_eq!(&masked(renamed), b"nginx\0\0\0\0\0\0\0\0\0\0\0");
    }
}
