//! What the loader tells the kernel program at load time: the [`Config`]
//! (offsets, argument positions, filters, wake-up policy) and its parts.

use crate::{
    ArgPos, COMM_LEN, DropCodes, DropConfig, DropSkbOffsets, NO_REASON, SkbOffsets, SockOffsets,
    TaskOffsets,
};

/// How the kernel program finds the socket an `accept(2)` returned: the
/// returned fd in the task's file table (`task->files->fdt->fd[fd]`), its
/// `struct file`'s socket, and that socket's `sk`. Offsets from the running
/// kernel's BTF; `ret` from the syscall tracepoint's format file. Pairs of
/// fields are read together from a 16-byte window (`*_window`), each then
/// being the 8-byte word `*_word` (0 or 1) of it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct AcceptConfig {
    /// Offset of `ret` in the `sys_exit_accept*` record; 0 = not traced.
    pub ret: u32,
    /// `task_struct::files`.
    pub task_files: u32,
    /// `files_struct::fdt`.
    pub files_fdt: u32,
    /// `fdtable`: `max_fds` (low 32 bits of its word) and `fd`.
    pub fdt_window: u32,
    pub fdt_max_fds_word: u32,
    pub fdt_fd_word: u32,
    /// `file::private_data` (the `struct socket` of a socket file).
    pub file_private_data: u32,
    /// `socket`: `file` (checked against the file found) and `sk`.
    pub socket_window: u32,
    pub socket_file_word: u32,
    pub socket_sk_word: u32,
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
    pub const NETNS: u32 = 1 << 7;
    /// With [`PID`]: processes forked by a kept one are kept too.
    pub const FOLLOW: u32 = 1 << 8;
}

/// Filters applied in the kernel, before an event costs a ring-buffer slot.
/// The process ids to trace live in the `PID_FILTER` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
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
    /// Network namespace inode ([`filter::NETNS`]).
    pub netns: u32,
    pub cgroup_id: u64,
    pub comm: [u8; COMM_LEN],
}

impl Filter {
    /// Does a process filter (`--pid`, `--comm`, `--cgroup`) judge sockets
    /// by their owner? Only then does the kernel program keep owner maps
    /// (it must know owners to filter); otherwise userspace keeps them,
    /// off the traced host's hot path.
    #[inline(always)]
    pub const fn judges_owners(&self) -> bool {
        self.flags & (filter::PID | filter::COMM | filter::CGROUP) != 0
    }
}

/// Everything the kernel program is told at load time (global `CONFIG`, in
/// read-only data: the verifier sees these values as constants and prunes
/// the branches a kernel or a set of filters does not need).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct Config {
    pub set_state: ArgPos,
    pub send_reset: ArgPos,
    pub receive_reset: ArgPos,
    pub retransmit_skb: ArgPos,
    pub retransmit_synack: ArgPos,
    pub destroy_sock: ArgPos,
    pub process_exit: ArgPos,
    pub signal: ArgPos,
    pub process_fork: ArgPos,
    pub error_report: ArgPos,
    pub sock: SockOffsets,
    pub skb: SkbOffsets,
    pub task: TaskOffsets,
    pub filter: Filter,
    /// Signals (bit n = signal n) worth reporting: those that kill by default.
    pub signal_mask: u64,
    /// Slots waiting in a ring past which a submit wakes the reader
    /// ([`crate::ring::wake_at`]); below it, the reader drains on its timer.
    pub wake_at: u64,
    /// log2 of the slots in each ring ([`crate::ring`]): slot `n` of ring
    /// `r` is element `(r << slot_shift) + n` of the kernel's slot array.
    pub slot_shift: u32,
    /// Rings − 1 (a power of two less one): an event goes to ring
    /// `cpu & ring_mask`, so that CPUs do not contend for one ring.
    pub ring_mask: u32,
    pub drop: DropConfig,
    /// `oom:mark_victim`: the victim (task). Appended, like [`DropConfig`].
    pub oom_victim: ArgPos,
    /// `accept(2)`: appended.
    pub accept: AcceptConfig,
    /// How the programs tell softirq from process context: appended.
    pub context: ContextConfig,
    /// How the programs read kernel memory: appended.
    pub reads: ReadConfig,
}

impl Config {
    pub const EMPTY: Config = Config {
        set_state: ArgPos::NONE,
        send_reset: ArgPos::NONE,
        receive_reset: ArgPos::NONE,
        retransmit_skb: ArgPos::NONE,
        retransmit_synack: ArgPos::NONE,
        destroy_sock: ArgPos::NONE,
        process_exit: ArgPos::NONE,
        signal: ArgPos::NONE,
        process_fork: ArgPos::NONE,
        error_report: ArgPos::NONE,
        sock: SockOffsets::NONE,
        skb: SkbOffsets {
            head: 0,
            data: 0,
            network_header: 0,
            _pad: 0,
        },
        task: TaskOffsets {
            exit_code: 0,
            tgid: 0,
            sighand: 0,
            sa_handler: 0,
            sigaction_size: 0,
            _pad: 0,
        },
        filter: Filter {
            flags: 0,
            family: 0,
            port: 0,
            lport: 0,
            rport: 0,
            netns: 0,
            cgroup_id: 0,
            comm: [0; COMM_LEN],
        },
        signal_mask: 0,
        wake_at: 1,
        slot_shift: 6,
        ring_mask: 0,
        drop: DropConfig {
            args: ArgPos::NONE,
            skb: DropSkbOffsets {
                protocol: 0,
                tail: 0,
                sk: 0,
                dev: 0,
                window: 0,
                _pad: 0,
                nd_net: 0,
            },
            codes: DropCodes {
                listen_overflow: NO_REASON,
                queue_purge: NO_REASON,
                not_specified: NO_REASON,
                _pad: 0,
            },
        },
        oom_victim: ArgPos::NONE,
        accept: AcceptConfig {
            ret: 0,
            task_files: 0,
            files_fdt: 0,
            fdt_window: 0,
            fdt_max_fds_word: 0,
            fdt_fd_word: 0,
            file_private_data: 0,
            socket_window: 0,
            socket_file_word: 0,
            socket_sk_word: 0,
        },
        context: ContextConfig {
            task_cfs_rq: 0,
            cfs_rq_rq: 0,
            rq_cpu: 0,
            preempt_count_from_rq: 0,
            current_task_from_preempt_count: 0,
            task_pid: 0,
            task_comm: 0,
            _pad: 0,
        },
        reads: ReadConfig { direct: 0, _pad: 0 },
    };
}

/// Reading kernel memory with plain loads instead of
/// `bpf_probe_read_kernel` calls, where the kernel allows it: a pointer
/// cast by the `bpf_rdonly_cast(addr, 0)` kfunc (Linux 6.17+, announced by
/// BTF's `enum bpf_features`) is an untrusted read-only pointer the
/// verifier lets a program load from at any offset. The JIT makes each
/// load a probe load (a fault reads 0) and the cast itself a register
/// move, so a field costs an instruction where the helper cost a call.
/// The program calls the helper id [`RDONLY_CAST_MARKER`]; the loader
/// rewrites those calls into the kfunc's, or, where the kfunc is not
/// there, into a harmless helper the verifier never reaches (`direct` 0
/// keeps every read on the helper).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct ReadConfig {
    /// Non-zero: plain loads through `bpf_rdonly_cast`.
    pub direct: u32,
    pub _pad: u32,
}

/// The helper id the program calls for `bpf_rdonly_cast`: no helper has
/// it (they number in the hundreds), and the loader rewrites every call
/// to it before the kernel sees the program.
pub const RDONLY_CAST_MARKER: i32 = 0x7c0a_5701;

/// Telling softirq from process context from the kernel's own per-CPU
/// `preempt_count`, whose softirq bits the scheduler's data leads to: the
/// on-CPU task's `se.cfs_rq->rq` is this CPU's runqueue, a per-CPU variable
/// like `__preempt_count`, so the two lie a fixed distance apart (both
/// offsets from BTF's `.data..percpu` section). A program finds the address
/// once per CPU (checking the runqueue's `cpu`) and reads 4 bytes per event,
/// where the `softirq_entry`/`softirq_exit` programs cost two runs on every
/// softirq of the host. All 0 (a kernel without these in BTF): those
/// programs are attached instead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "user", derive(serde::Serialize))]
pub struct ContextConfig {
    /// `task_struct::se` + `sched_entity::cfs_rq`.
    pub task_cfs_rq: u32,
    /// `cfs_rq::rq`.
    pub cfs_rq_rq: u32,
    /// `rq::cpu`.
    pub rq_cpu: u32,
    /// `__preempt_count`'s offset in the per-CPU area minus `runqueues`'.
    pub preempt_count_from_rq: i32,
    /// `current_task`'s offset in the per-CPU area minus
    /// `__preempt_count`'s (0: unknown). With direct reads the on-CPU task
    /// is then one load away, and its ids and name four more: no helper
    /// call for who is on the CPU.
    pub current_task_from_preempt_count: i32,
    /// `task_struct::pid` and `task_struct::comm` (16 bytes).
    pub task_pid: u32,
    pub task_comm: u32,
    pub _pad: u32,
}

impl ContextConfig {
    /// Is softirq context read from `preempt_count`?
    #[inline(always)]
    pub const fn reads_preempt_count(&self) -> bool {
        self.task_cfs_rq != 0
    }

    /// Is the on-CPU task found from its per-CPU variable (given direct
    /// reads)?
    #[inline(always)]
    pub const fn finds_current_task(&self) -> bool {
        self.reads_preempt_count() && self.current_task_from_preempt_count != 0
    }
}

/// `SOFTIRQ_OFFSET` of the kernel's `preempt_count` (include/linux/preempt.h,
/// unchanged since 2.6.x; not in BTF): set while a softirq is being served,
/// and only then (`local_bh_disable` adds twice it).
pub const SOFTIRQ_OFFSET: u32 = 1 << 8;
