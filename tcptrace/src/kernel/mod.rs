//! Everything that depends on the running kernel's version lives here, and
//! all of it is read from the kernel's own BTF (`/sys/kernel/btf/vmlinux`):
//! which tracepoints exist and where each passes its arguments
//! (`btf_trace_<name>`), struct offsets (`struct sock`, `sk_buff`,
//! `task_struct`), and RST and drop reason names (`enum sk_rst_reason`,
//! `enum skb_drop_reason`). A new kernel
//! means one place to look. The event orders this kernel produces per TCP
//! path are written down in `docs/kernel-behaviour.md`.

pub mod accept;
pub mod btf;
mod offsets;
mod reasons;

use tcptrace_common::{ABSENT, ArgPos, Config, NO_ARG};

use self::accept::accept_offsets;
use self::offsets::{context_offsets, drop_skb_offsets, skb_offsets, sock_offsets, task_offsets};
pub use self::{
    btf::{ArgType, Btf},
    reasons::{DropReasons, Reasons, ResetReasons},
};

/// Where the kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The most arguments the kernel program's `arg()` reaches (0..=4).
const MAX_ARG: u8 = 4;

/// What a raw tracepoint argument is, to find it by type in `TP_PROTO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// The first pointer to `struct <name>`.
    Ptr(&'static str),
    /// The second pointer to `struct <name>`.
    SecondPtr(&'static str),
    /// The n-th integer-like argument (int, enum, bool).
    Int(u8),
}

/// Which argument fills which [`ArgPos`] slot; `required` ones must exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    Sk,
    Skb,
    Req,
    Task,
    Task2,
    Int0,
    Int1,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ArgSpec {
    slot: Slot,
    role: Role,
    required: bool,
}

const fn need(slot: Slot, role: Role) -> ArgSpec {
    ArgSpec {
        slot,
        role,
        required: true,
    }
}

const fn may(slot: Slot, role: Role) -> ArgSpec {
    ArgSpec {
        slot,
        role,
        required: false,
    }
}

/// A tracepoint tcptrace can use, and what is lost without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    pub group: &'static str,
    pub name: &'static str,
    /// Name of the program in the kernel object.
    pub program: &'static str,
    /// Kernel version that introduced it, for error messages.
    pub since: &'static str,
    /// Without it tcptrace cannot run at all.
    pub required: bool,
    /// What the output lacks without it.
    pub purpose: &'static str,
    /// More programs attached to the same tracepoint.
    pub also: &'static [&'static str],
    args: &'static [ArgSpec],
}

/// Programs that only stand in for another's skipped runs (see
/// `inet_sock_set_state_nested` in the kernel program).
pub fn is_backup_program(name: &str) -> bool {
    TRACEPOINTS.iter().any(|tp| tp.also.contains(&name))
}

/// Programs that make socket events (a skipped run of theirs can leave a
/// socket's account incomplete); the others make exits, signals, forks
/// and softirq marks.
pub fn is_socket_program(name: &str) -> bool {
    TRACEPOINTS
        .iter()
        .any(|tp| tp.program == name && matches!(tp.group, "sock" | "tcp"))
}

impl Tracepoint {
    /// Every program attached to this tracepoint.
    pub fn programs(&self) -> impl Iterator<Item = &'static str> + use<> {
        std::iter::once(self.program).chain(self.also.iter().copied())
    }
}

const SK: Role = Role::Ptr("sock");

pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint {
        group: "sock",
        name: "inet_sock_set_state",
        program: "inet_sock_set_state",
        since: "4.16",
        required: true,
        purpose: "TCP state transitions",
        // Makes the events of runs the kernel skips for recursion.
        also: &["inet_sock_set_state_nested"],
        args: &[
            need(Slot::Sk, SK),
            need(Slot::Int0, Role::Int(0)),
            need(Slot::Int1, Role::Int(1)),
        ],
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_send_reset",
        program: "tcp_send_reset",
        since: "4.15 (reason since 6.10)",
        required: false,
        purpose: "resets sent, with the kernel's reason",
        also: &[],
        args: &[
            need(Slot::Sk, SK),
            may(Slot::Skb, Role::Ptr("sk_buff")),
            may(Slot::Int0, Role::Int(0)),
        ],
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_receive_reset",
        program: "tcp_receive_reset",
        since: "4.15",
        required: false,
        purpose: "resets received",
        also: &[],
        args: &[need(Slot::Sk, SK)],
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_retransmit_skb",
        program: "tcp_retransmit_skb",
        since: "4.15",
        required: false,
        purpose: "SYN retransmissions (handshake timeouts)",
        also: &[],
        args: &[need(Slot::Sk, SK), may(Slot::Int0, Role::Int(0))],
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_retransmit_synack",
        program: "tcp_retransmit_synack",
        since: "4.15",
        required: false,
        purpose: "SYN/ACK retransmissions",
        also: &[],
        args: &[
            need(Slot::Sk, SK),
            need(Slot::Req, Role::Ptr("request_sock")),
        ],
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_destroy_sock",
        program: "tcp_destroy_sock",
        since: "4.15",
        required: false,
        purpose: "the end of a socket's life",
        also: &[],
        args: &[need(Slot::Sk, SK)],
    },
    Tracepoint {
        group: "sched",
        name: "sched_process_exit",
        program: "sched_process_exit",
        since: "2.6.32",
        required: false,
        purpose: "closes caused by a process exiting",
        also: &[],
        args: &[
            need(Slot::Task, Role::Ptr("task_struct")),
            may(Slot::Int0, Role::Int(0)),
        ],
    },
    Tracepoint {
        group: "signal",
        name: "signal_generate",
        program: "signal_generate",
        since: "3.2",
        required: false,
        purpose: "which signal killed a process, and who sent it",
        also: &[],
        // (int sig, struct kernel_siginfo *, struct task_struct *, int group,
        // int result): the signal is the first integer, the result the third.
        args: &[
            need(Slot::Int0, Role::Int(0)),
            need(Slot::Task, Role::Ptr("task_struct")),
            need(Slot::Int1, Role::Int(2)),
        ],
    },
    Tracepoint {
        group: "oom",
        name: "mark_victim",
        program: "mark_victim",
        since: "6.x with a task argument (older kernels pass only a pid)",
        required: false,
        purpose: "telling a process killed by the OOM killer from one killed by another",
        also: &[],
        // (struct task_struct *, uid_t) on 6.18; older kernels passed only
        // the victim's pid, which tcptrace does not use.
        args: &[need(Slot::Task, Role::Ptr("task_struct"))],
    },
    Tracepoint {
        group: "sock",
        name: "inet_sk_error_report",
        program: "inet_sk_error_report",
        since: "5.15",
        required: false,
        purpose: "why a connection failed (its error: timeouts, ICMP errors)",
        also: &[],
        args: &[need(Slot::Sk, SK)],
    },
    Tracepoint {
        group: "skb",
        name: "kfree_skb",
        program: "kfree_skb",
        since: "5.17 (drop reasons; rx_sk since 6.11)",
        required: false,
        purpose: "segments of handshakes and closes dropped on this host, with the kernel's reason",
        also: &[],
        // (struct sk_buff *, void *location, enum skb_drop_reason,
        // struct sock *rx_sk): without the reason a drop says too little.
        args: &[
            need(Slot::Skb, Role::Ptr("sk_buff")),
            need(Slot::Int0, Role::Int(0)),
            may(Slot::Sk, SK),
        ],
    },
    Tracepoint {
        group: "sched",
        name: "sched_process_fork",
        program: "sched_process_fork",
        since: "2.6.32",
        required: false,
        purpose: "--follow (processes forked by a --pid one)",
        also: &[],
        // (struct task_struct *parent, struct task_struct *child)
        args: &[
            need(Slot::Task, Role::Ptr("task_struct")),
            need(Slot::Task2, Role::SecondPtr("task_struct")),
        ],
    },
    Tracepoint {
        group: "irq",
        name: "softirq_entry",
        program: "softirq_entry",
        since: "2.6.32",
        required: false,
        purpose: "telling softirq from process context",
        also: &[],
        args: &[],
    },
    Tracepoint {
        group: "irq",
        name: "softirq_exit",
        program: "softirq_exit",
        since: "2.6.32",
        required: false,
        purpose: "telling softirq from process context",
        also: &[],
        args: &[],
    },
];

/// A tracepoint this kernel lacks, or whose arguments tcptrace does not
/// recognise, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    pub tracepoint: Tracepoint,
    /// Present, but its `TP_PROTO` is not what tcptrace knows.
    pub unexpected_args: bool,
}

/// What the running kernel looks like to tcptrace.
#[derive(Clone, Debug)]
pub struct KernelLayout {
    /// Argument positions and offsets for the kernel program.
    pub config: Config,
    pub reasons: ResetReasons,
    /// `enum skb_drop_reason`'s names (empty without the drop tracepoint).
    pub drop_reasons: DropReasons,
    /// Optional tracepoints this kernel lacks, with what is lost.
    pub missing: Vec<Missing>,
    /// Present tracepoints (attach these).
    pub present: Vec<Tracepoint>,
    /// Optional struct fields not found: unread bytes, exit codes and the
    /// signal-handler check are left out.
    pub missing_fields: Vec<&'static str>,
    /// Why accept(2) is not followed, when it is not (set by the loader:
    /// it depends on tracefs and on `--no-accept`, not only on BTF).
    pub accept_unavailable: Option<String>,
    /// `bpf_rdonly_cast`'s BTF id, where it casts to `void *` (reads are
    /// then plain loads: [`tcptrace_common::ReadConfig`]).
    pub rdonly_cast: Option<u32>,
}

impl KernelLayout {
    /// What a recording keeps of the kernel it was made on: the tracepoints
    /// used and missing, argument positions and struct offsets.
    pub fn facts(&self) -> serde_json::Value {
        let name = |tp: &Tracepoint| format!("{}:{}", tp.group, tp.name);
        serde_json::json!({
            "tracepoints": self.present.iter().map(name).collect::<Vec<_>>(),
            "missing": self.missing.iter().map(|m| name(&m.tracepoint)).collect::<Vec<_>>(),
            "missing_fields": self.missing_fields,
            "accept_unavailable": self.accept_unavailable,
            "config": self.config,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "this kernel publishes no BTF at {VMLINUX_BTF} (it needs CONFIG_DEBUG_INFO_BTF=y, \
         Linux 5.5 or later): tcptrace reads every struct offset and tracepoint argument from it"
    )]
    NoBtf,
    #[error("reading {VMLINUX_BTF}: {0}")]
    Read(std::io::Error),
    #[error(
        "this kernel has no {group}:{name} tracepoint (added in Linux {since}); \
         tcptrace needs it for {purpose}"
    )]
    MissingTracepoint {
        group: &'static str,
        name: &'static str,
        since: &'static str,
        purpose: &'static str,
    },
    #[error(
        "the {group}:{name} tracepoint's arguments on this kernel are not ones tcptrace \
         knows ({found}); tcptrace needs it for {purpose}"
    )]
    UnexpectedArgs {
        group: &'static str,
        name: &'static str,
        found: String,
        purpose: &'static str,
    },
    #[error("struct {0} has no usable field `{1}` in this kernel's BTF")]
    Field(&'static str, &'static str),
    #[error(
        "this kernel's BPF has no atomic compare-and-exchange (Linux 5.12 and later have it): \
         tcptrace's kernel program reserves its event ring slots with it"
    )]
    NoAtomics,
}

/// Finds each argument of `tp` by its type in the kernel's `TP_PROTO`.
fn arg_positions(tp: &Tracepoint, args: &[ArgType]) -> Option<ArgPos> {
    let mut pos = ArgPos::NONE;
    pos.nargs = u8::try_from(args.len()).unwrap_or(u8::MAX);
    for spec in tp.args {
        let found = match spec.role {
            Role::Ptr(name) => args
                .iter()
                .position(|a| matches!(a, ArgType::StructPtr(n) if n == name)),
            Role::SecondPtr(name) => args
                .iter()
                .enumerate()
                .filter(|(_, a)| matches!(a, ArgType::StructPtr(n) if n == name))
                .nth(1)
                .map(|(i, _)| i),
            Role::Int(nth) => args
                .iter()
                .enumerate()
                .filter(|(_, a)| **a == ArgType::Integer)
                .nth(usize::from(nth))
                .map(|(i, _)| i),
        };
        let index = match found.and_then(|i| u8::try_from(i).ok()) {
            Some(i) if i <= MAX_ARG => i,
            _ if spec.required => return None,
            _ => NO_ARG,
        };
        match spec.slot {
            Slot::Sk => pos.sk = index,
            Slot::Skb => pos.skb = index,
            Slot::Req => pos.req = index,
            Slot::Task => pos.task = index,
            Slot::Task2 => pos.task2 = index,
            Slot::Int0 => pos.int0 = index,
            Slot::Int1 => pos.int1 = index,
        }
    }
    Some(pos)
}

fn describe(args: &[ArgType]) -> String {
    let names: Vec<String> = args
        .iter()
        .map(|a| match a {
            ArgType::StructPtr(n) => format!("struct {n} *"),
            ArgType::Integer => "int".to_owned(),
            ArgType::Other => "?".to_owned(),
        })
        .collect();
    names.join(", ")
}

/// Signals whose default action ends the process (term or core dump).
pub fn default_fatal_signals() -> u64 {
    [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGKILL,
        libc::SIGUSR1,
        libc::SIGSEGV,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSYS,
    ]
    .iter()
    .fold(0u64, |mask, &sig| mask | (1u64 << sig))
}

impl KernelLayout {
    /// Reads the running kernel's BTF.
    pub fn read_running() -> Result<KernelLayout, LayoutError> {
        let btf = Btf::from_sys_fs()
            .map_err(LayoutError::Read)?
            .ok_or(LayoutError::NoBtf)?;
        KernelLayout::from_btf(&btf)
    }

    pub fn from_btf(btf: &Btf) -> Result<KernelLayout, LayoutError> {
        let mut config = Config::EMPTY;
        let mut missing = Vec::new();
        let mut present = Vec::new();
        for tp in TRACEPOINTS {
            let args = btf.tracepoint_args(tp.name);
            let positions = args.as_deref().map(|a| arg_positions(tp, a));
            let pos = match (positions, &args) {
                (Some(Some(pos)), _) => pos,
                (_, Some(found)) if tp.required => {
                    return Err(LayoutError::UnexpectedArgs {
                        group: tp.group,
                        name: tp.name,
                        found: describe(found),
                        purpose: tp.purpose,
                    });
                }
                (_, None) if tp.required => {
                    return Err(LayoutError::MissingTracepoint {
                        group: tp.group,
                        name: tp.name,
                        since: tp.since,
                        purpose: tp.purpose,
                    });
                }
                (_, found) => {
                    missing.push(Missing {
                        tracepoint: *tp,
                        unexpected_args: found.is_some(),
                    });
                    continue;
                }
            };
            match tp.name {
                "inet_sock_set_state" => config.set_state = pos,
                "tcp_send_reset" => config.send_reset = pos,
                "tcp_receive_reset" => config.receive_reset = pos,
                "tcp_retransmit_skb" => config.retransmit_skb = pos,
                "tcp_retransmit_synack" => config.retransmit_synack = pos,
                "tcp_destroy_sock" => config.destroy_sock = pos,
                "sched_process_exit" => config.process_exit = pos,
                "signal_generate" => config.signal = pos,
                "sched_process_fork" => config.process_fork = pos,
                "inet_sk_error_report" => config.error_report = pos,
                "kfree_skb" => config.drop.args = pos,
                "mark_victim" => config.oom_victim = pos,
                _ => {}
            }
            present.push(*tp);
        }
        config.sock = sock_offsets(btf)?;
        config.skb = skb_offsets(btf);
        let drop_reasons = DropReasons::drops_from_btf(btf);
        config.drop.skb = drop_skb_offsets(btf, &config.skb);
        config.drop.codes = drop_reasons.drop_codes();
        config.task = task_offsets(btf);
        config.signal_mask = default_fatal_signals();
        // `ret` comes later, from tracefs, when the loader attaches.
        let accept = accept_offsets(btf);
        config.accept = accept.unwrap_or_default();
        let mut missing_fields = Vec::new();
        if config.sock.tcp_rcv_nxt == 0 || config.sock.tcp_copied_seq == 0 {
            missing_fields.push("unread bytes at close (tcp_sock.rcv_nxt/copied_seq)");
        }
        if config.task.exit_code == 0 {
            missing_fields.push("exit codes (task_struct.exit_code)");
        }
        if accept.is_none() {
            missing_fields
                .push("the process that accepted a socket (task_struct.files, fdtable, socket)");
        }
        if config.sock.net == ABSENT || config.sock.net_inum == 0 {
            missing_fields.push("network namespaces (sock_common.skc_net, net.ns.inum)");
        }
        if config.task.tgid == 0 {
            // Without the target's tgid a signal cannot be attributed.
            config.signal = ArgPos::NONE;
            config.oom_victim = ArgPos::NONE;
            present.retain(|tp| tp.name != "mark_victim");
            missing_fields.push("signal senders and OOM victims (task_struct.tgid)");
        }
        if config.drop.args != ArgPos::NONE && config.drop.skb.window == 0 {
            // The drop program reads sk_buff's head fields in one go; a
            // layout where they lie apart gets no drops (not a slow program).
            config.drop.args = ArgPos::NONE;
            present.retain(|tp| tp.name != "kfree_skb");
            missing_fields
                .push("drops (sk_buff.protocol, network_header, tail, head not together)");
        }
        // One read per event instead of two program runs on every softirq of
        // the host; kernels without the way there keep the softirq programs.
        config.context = context_offsets(btf);
        if config.context.reads_preempt_count() {
            present.retain(|tp| tp.group != "irq");
        }
        if !offsets::has_bpf_atomics(btf) {
            return Err(LayoutError::NoAtomics);
        }
        let rdonly_cast = offsets::rdonly_cast_id(btf);
        config.reads.direct = u32::from(rdonly_cast.is_some());
        Ok(KernelLayout {
            config,
            rdonly_cast,
            reasons: ResetReasons::resets_from_btf(btf),
            drop_reasons,
            missing,
            present,
            missing_fields,
            accept_unavailable: None,
        })
    }
}

#[cfg(test)]
mod tests;
