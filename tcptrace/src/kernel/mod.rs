//! Everything that depends on the running kernel's version lives here, and
//! all of it is read from the kernel's own BTF (`/sys/kernel/btf/vmlinux`):
//! which tracepoints exist and where each passes its arguments
//! (`btf_trace_<name>`), struct offsets (`struct sock`, `sk_buff`,
//! `task_struct`), and RST reason names (`enum sk_rst_reason`). A new kernel
//! means one place to look. The event orders this kernel produces per TCP
//! path are written down in `docs/kernel-behaviour.md`.

pub mod btf;

use std::collections::BTreeMap;

use tcptrace_common::{
    ABSENT, ArgPos, Config, NO_ARG, SOCK_HEAD_BYTES, SkbOffsets, SockOffsets, TaskOffsets,
};

pub use self::btf::{ArgType, Btf};

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

/// RST reason names as the running kernel names them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetReasons(BTreeMap<u32, String>);

impl ResetReasons {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u32, &'a str)>) -> ResetReasons {
        ResetReasons(pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect())
    }

    pub fn name(&self, code: u32) -> Option<&str> {
        self.0.get(&code).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Every code and its name.
    pub fn pairs(&self) -> &BTreeMap<u32, String> {
        &self.0
    }

    /// `enum sk_rst_reason` without its `SK_RST_REASON_` prefix, the names
    /// the tracepoint itself prints.
    fn from_btf(btf: &Btf) -> ResetReasons {
        ResetReasons(
            btf.enum_values("sk_rst_reason")
                .into_iter()
                .map(|(value, name)| {
                    let short = name.strip_prefix("SK_RST_REASON_").unwrap_or(&name);
                    (value, short.to_owned())
                })
                .collect(),
        )
    }
}

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
    /// Optional tracepoints this kernel lacks, with what is lost.
    pub missing: Vec<Missing>,
    /// Present tracepoints (attach these).
    pub present: Vec<Tracepoint>,
    /// Optional struct fields not found: unread bytes, exit codes and the
    /// signal-handler check are left out.
    pub missing_fields: Vec<&'static str>,
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

/// The head fields of `struct sock_common`, as offsets the kernel program can
/// load from its copy: inside [`SOCK_HEAD_BYTES`] and aligned to their size.
fn head_field(btf: &Btf, member: &str, size: u32) -> Option<u16> {
    let (offset, actual) = btf.member("sock_common", member)?;
    let fits = offset + size <= SOCK_HEAD_BYTES as u32;
    let aligned = offset % size.min(8) == 0;
    (actual == size && fits && aligned).then_some(offset as u16)
}

fn sock_offsets(btf: &Btf) -> Result<SockOffsets, LayoutError> {
    let required = |member: &'static str, size: u32| {
        head_field(btf, member, size).ok_or(LayoutError::Field("sock_common", member))
    };
    let optional = |member: &str, size: u32| head_field(btf, member, size).unwrap_or(ABSENT);
    let mut o = SockOffsets::NONE;
    o.daddr = required("skc_daddr", 4)?;
    o.saddr = required("skc_rcv_saddr", 4)?;
    o.dport = required("skc_dport", 2)?;
    o.num = required("skc_num", 2)?;
    o.family = required("skc_family", 2)?;
    o.state = required("skc_state", 1)?;
    o.v6_daddr = optional("skc_v6_daddr", 16);
    o.v6_saddr = optional("skc_v6_rcv_saddr", 16);
    o.cookie = optional("skc_cookie", 8);
    // possible_net_t: a struct net pointer (kernels with network namespaces).
    o.net = optional("skc_net", 8);
    o.net_inum = btf
        .member_offset("net", "ns")
        .zip(btf.member_offset("ns_common", "inum"))
        .map_or(0, |(ns, inum)| ns + inum);
    // A bitfield before Linux 5.6: then the kernel program skips the check.
    o.protocol = btf
        .member("sock", "sk_protocol")
        .filter(|&(_, size)| size == 2)
        .and_then(|(offset, _)| u16::try_from(offset).ok())
        .unwrap_or(ABSENT);
    o.inet_sport = btf
        .member("inet_sock", "inet_sport")
        .filter(|&(_, size)| size == 2)
        .and_then(|(offset, _)| u16::try_from(offset).ok())
        .unwrap_or(0);
    o.flags = optional("skc_flags", 8);
    let sized = |st: &str, member: &str, size: u32| {
        btf.member(st, member)
            .filter(|&(_, s)| s == size)
            .and_then(|(offset, _)| u16::try_from(offset).ok())
            .unwrap_or(ABSENT)
    };
    o.sk_err = sized("sock", "sk_err", 4);
    o.retransmits = sized("inet_connection_sock", "icsk_retransmits", 1);
    o.probes = sized("inet_connection_sock", "icsk_probes_out", 1);
    o.user_timeout = sized("inet_connection_sock", "icsk_user_timeout", 4);
    // An ICMP error: the newest skb on the socket's error queue, and the
    // errno in its control block (struct sock_exterr_skb in skb->cb).
    let queue = btf.member("sock", "sk_error_queue").map(|(at, _)| at);
    let tail = btf.member("sk_buff_head", "prev").filter(|&(_, s)| s == 8);
    let cb = btf.member("sk_buff", "cb").map(|(at, _)| at);
    let ee = btf.member("sock_exterr_skb", "ee").map(|(at, _)| at);
    let errno = btf
        .member("sock_extended_err", "ee_errno")
        .filter(|&(_, s)| s == 4);
    if let (Some(q), Some((t, _)), Some(cb), Some(ee), Some((e, _))) = (queue, tail, cb, ee, errno)
        && let (Ok(q), Ok(t), Ok(errno)) = (
            u16::try_from(q),
            u16::try_from(t),
            u16::try_from(cb + ee + e),
        )
    {
        (o.error_queue, o.queue_prev, o.queued_errno) = (q, t, errno);
    }
    o.done_bit = btf
        .enum_values("sock_flags")
        .into_iter()
        .find(|(_, name)| name == "SOCK_DONE")
        .and_then(|(bit, _)| u16::try_from(bit).ok())
        .filter(|&bit| bit < 64)
        .unwrap_or(ABSENT);
    let tcp = |member: &str| btf.member_offset("tcp_sock", member).unwrap_or(0);
    o.tcp_rcv_nxt = tcp("rcv_nxt");
    o.tcp_copied_seq = tcp("copied_seq");
    Ok(o)
}

fn skb_offsets(btf: &Btf) -> SkbOffsets {
    let at = |member: &str, size: u32| {
        btf.member("sk_buff", member)
            .filter(|&(_, s)| s == size)
            .and_then(|(offset, _)| u16::try_from(offset).ok())
            .unwrap_or(0)
    };
    SkbOffsets {
        head: at("head", 8),
        data: at("data", 8),
        network_header: at("network_header", 2),
        _pad: 0,
    }
}

fn task_offsets(btf: &Btf) -> TaskOffsets {
    let at = |st: &str, member: &str| btf.member_offset(st, member).unwrap_or(0);
    // sighand->action[sig - 1].sa.sa_handler
    let handler = btf
        .member("sighand_struct", "action")
        .zip(btf.member_offset("k_sigaction", "sa"))
        .zip(btf.member_offset("sigaction", "sa_handler"));
    let (sa_handler, sigaction_size) = match (handler, btf.struct_size("k_sigaction")) {
        (Some((((action, _), sa), h)), Some(size)) => (action + sa + h, size),
        _ => (0, 0),
    };
    TaskOffsets {
        exit_code: at("task_struct", "exit_code"),
        tgid: at("task_struct", "tgid"),
        sighand: at("task_struct", "sighand"),
        sa_handler,
        sigaction_size,
        _pad: 0,
    }
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
                _ => {}
            }
            present.push(*tp);
        }
        config.sock = sock_offsets(btf)?;
        config.skb = skb_offsets(btf);
        config.task = task_offsets(btf);
        config.signal_mask = default_fatal_signals();
        let mut missing_fields = Vec::new();
        if config.sock.tcp_rcv_nxt == 0 || config.sock.tcp_copied_seq == 0 {
            missing_fields.push("unread bytes at close (tcp_sock.rcv_nxt/copied_seq)");
        }
        if config.task.exit_code == 0 {
            missing_fields.push("exit codes (task_struct.exit_code)");
        }
        if config.sock.net == ABSENT || config.sock.net_inum == 0 {
            missing_fields.push("network namespaces (sock_common.skc_net, net.ns.inum)");
        }
        if config.task.tgid == 0 {
            // Without the target's tgid a signal cannot be attributed.
            config.signal = ArgPos::NONE;
            missing_fields.push("signal senders (task_struct.tgid)");
        }
        Ok(KernelLayout {
            config,
            reasons: ResetReasons::from_btf(btf),
            missing,
            present,
            missing_fields,
        })
    }
}

#[cfg(test)]
mod tests;
