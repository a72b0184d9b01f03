//! Types shared by tcptrace's kernel program and its userspace loader.
//!
//! Everything here is `#[repr(C)]` plain data: the kernel program writes
//! [`Event`]s into the ring buffer and reads its [`Config`] from global data
//! that the loader fills in before loading. Nothing in this crate knows a
//! kernel version: offsets arrive at run time, read from the running kernel.
#![no_std]

/// Length of a task's `comm`, as in the kernel (`TASK_COMM_LEN`).
pub const COMM_LEN: usize = 16;

/// A field that the running kernel's tracepoint does not have.
pub const ABSENT: u16 = u16::MAX;

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
}

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
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    /// Kind-specific: reset reason, signal number, exit code, retransmit error.
    pub value: u32,
    /// Bytes received but not read by the application, on a close.
    pub unread: u32,
    /// Kind-specific: the socket cookie; for a signal, the pid it was sent
    /// to in the low half and signal_generate's `result` in the high half.
    pub aux: u64,
    /// The task on the CPU when the event fired (the signal's sender, for
    /// [`kind::SIGNAL`]).
    pub context: Task,
    /// The socket's owner, from the kernel's owner map ([`flag::OWNER_KNOWN`]).
    pub owner: Task,
}

/// Where a tracepoint keeps each field, as offsets into its record;
/// [`ABSENT`] for a field this kernel's tracepoint does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockFields {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    /// `state` of reset/retransmit tracepoints (an `int`).
    pub state: u16,
    pub protocol: u16,
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// `saddr`/`daddr` are `struct sockaddr_in6`-sized sockaddrs that carry
    /// family and port (tcp_send_reset since Linux 6.10): byte offsets of
    /// both, else [`ABSENT`].
    pub saddr_sockaddr: u16,
    pub daddr_sockaddr: u16,
    pub reason: u16,
    pub cookie: u16,
    pub err: u16,
    /// Bytes of the record to copy in one read (the end of its last
    /// field), at most [`RECORD_MAX`]; 0 when the tracepoint is absent.
    pub record_len: u16,
}

/// Largest tracepoint record the kernel program copies (one helper call per
/// event instead of one per field).
pub const RECORD_MAX: usize = 128;

impl SockFields {
    pub const NONE: SockFields = SockFields {
        skaddr: ABSENT,
        oldstate: ABSENT,
        newstate: ABSENT,
        state: ABSENT,
        protocol: ABSENT,
        family: ABSENT,
        sport: ABSENT,
        dport: ABSENT,
        saddr: ABSENT,
        daddr: ABSENT,
        saddr_v6: ABSENT,
        daddr_v6: ABSENT,
        saddr_sockaddr: ABSENT,
        daddr_sockaddr: ABSENT,
        reason: ABSENT,
        cookie: ABSENT,
        err: ABSENT,
        record_len: 0,
    };
}

/// Offsets into the `sched:sched_process_exit` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitFields {
    pub group_dead: u16,
    /// As [`SockFields::record_len`].
    pub record_len: u16,
    pub _pad: [u16; 2],
}

/// Offsets into the `signal:signal_generate` record.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SignalFields {
    pub sig: u16,
    pub pid: u16,
    pub result: u16,
    /// As [`SockFields::record_len`].
    pub record_len: u16,
}

/// Offsets of kernel struct fields, from the running kernel's BTF; 0 when
/// unknown (no BTF), in which case the kernel program leaves them out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StructOffsets {
    /// `struct tcp_sock::rcv_nxt`.
    pub tcp_rcv_nxt: u32,
    /// `struct tcp_sock::copied_seq`.
    pub tcp_copied_seq: u32,
    /// `struct task_struct::exit_code`.
    pub task_exit_code: u32,
    pub _pad: u32,
}

/// Bits of [`Filter::flags`]: which filters are on.
pub mod filter {
    pub const PID: u32 = 1 << 0;
    pub const COMM: u32 = 1 << 1;
    pub const PORT: u32 = 1 << 2;
    pub const LPORT: u32 = 1 << 3;
    pub const RPORT: u32 = 1 << 4;
    pub const FAMILY: u32 = 1 << 5;
    pub const CGROUP: u32 = 1 << 6;
}

/// Filters applied in the kernel, before an event costs a ring-buffer slot.
/// The process ids to trace live in the `PID_FILTER` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Bits of [`filter`].
    pub flags: u32,
    /// `AF_INET` or `AF_INET6` when [`filter::FAMILY`] is set.
    pub family: u16,
    /// Either end's port ([`filter::PORT`]).
    pub port: u16,
    /// Local port ([`filter::LPORT`]).
    pub lport: u16,
    /// Remote port ([`filter::RPORT`]).
    pub rport: u16,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

/// Everything the kernel program is told at load time (global `CONFIG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    pub set_state: SockFields,
    pub send_reset: SockFields,
    pub receive_reset: SockFields,
    pub retransmit_skb: SockFields,
    pub retransmit_synack: SockFields,
    pub destroy_sock: SockFields,
    pub process_exit: ExitFields,
    pub signal: SignalFields,
    pub offsets: StructOffsets,
    pub filter: Filter,
    /// Signals (bit n = signal n) worth reporting: those that kill by default.
    pub signal_mask: u64,
    /// Bytes waiting in the ring buffer past which a submit wakes the reader;
    /// below it, the reader drains on its timer.
    pub wakeup_bytes: u64,
}

impl Config {
    pub const EMPTY: Config = Config {
        set_state: SockFields::NONE,
        send_reset: SockFields::NONE,
        receive_reset: SockFields::NONE,
        retransmit_skb: SockFields::NONE,
        retransmit_synack: SockFields::NONE,
        destroy_sock: SockFields::NONE,
        process_exit: ExitFields {
            group_dead: ABSENT,
            record_len: 0,
            _pad: [0; 2],
        },
        signal: SignalFields {
            sig: ABSENT,
            pid: ABSENT,
            result: ABSENT,
            record_len: 0,
        },
        offsets: StructOffsets {
            tcp_rcv_nxt: 0,
            tcp_copied_seq: 0,
            task_exit_code: 0,
            _pad: 0,
        },
        filter: Filter {
            flags: 0,
            family: 0,
            port: 0,
            lport: 0,
            rport: 0,
            _pad: 0,
            cgroup_id: 0,
            comm: [0; COMM_LEN],
        },
        signal_mask: 0,
        wakeup_bytes: 0,
    };
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events that passed the filters and were offered to the ring buffer.
    pub const PRODUCED: u32 = 0;
    /// Of those, events that found no room in the ring buffer.
    pub const LOST: u32 = 1;
    /// Events dropped by a filter in the kernel.
    pub const FILTERED: u32 = 2;
    /// Non-TCP `inet_sock_set_state` events (MPTCP, SCTP) ignored.
    pub const NOT_TCP: u32 = 3;
    pub const COUNT: u32 = 4;
}

/// Ring buffer size used when the user does not choose one.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

// The loader and the kernel program must agree on these layouts byte for
// byte, with no implicit padding (it would reach the kernel uninitialised).
const _: () = assert!(core::mem::size_of::<Task>() == 32);
const _: () = assert!(core::mem::size_of::<Event>() == 144);
const _: () = assert!(core::mem::size_of::<SockFields>() == 36);
const _: () = assert!(core::mem::size_of::<Config>() == 304);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] data, every bit pattern valid, padding explicit.
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::Task {}
}
