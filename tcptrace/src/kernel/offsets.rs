//! Struct offsets the kernel program reads at, from the running kernel's
//! BTF: `struct sock` (its `sock_common` head and a few fields past it),
//! `struct sk_buff`, `struct task_struct`, and the path from the on-CPU
//! task to this CPU's `preempt_count`.

use tcptrace_common::{
    ABSENT, ContextConfig, DropSkbOffsets, SKB_WINDOW_BYTES, SOCK_HEAD_BYTES, SkbOffsets,
    SockOffsets, TaskOffsets,
};

use super::{Btf, LayoutError};

/// The head fields of `struct sock_common`, as offsets the kernel program can
/// load from its copy: inside [`SOCK_HEAD_BYTES`] and aligned to their size.
fn head_field(btf: &Btf, member: &str, size: u32) -> Option<u16> {
    let (offset, actual) = btf.member("sock_common", member)?;
    let fits = offset + size <= SOCK_HEAD_BYTES as u32;
    let aligned = offset % size.min(8) == 0;
    (actual == size && fits && aligned).then_some(offset as u16)
}

pub(super) fn sock_offsets(btf: &Btf) -> Result<SockOffsets, LayoutError> {
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
    o.prot = optional("skc_prot", 8);
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

pub(super) fn skb_offsets(btf: &Btf) -> SkbOffsets {
    SkbOffsets {
        head: skb_field(btf, "head", 8),
        data: skb_field(btf, "data", 8),
        network_header: skb_field(btf, "network_header", 2),
        _pad: 0,
    }
}

/// `sk_buff.member`'s offset when it has `size` bytes, else 0.
fn skb_field(btf: &Btf, member: &str, size: u32) -> u16 {
    btf.member("sk_buff", member)
        .filter(|&(_, s)| s == size)
        .and_then(|(offset, _)| u16::try_from(offset).ok())
        .unwrap_or(0)
}

/// The `sk_buff` fields only the drop program reads.
pub(super) fn drop_skb_offsets(btf: &Btf, skb: &SkbOffsets) -> DropSkbOffsets {
    let mut o = DropSkbOffsets {
        protocol: skb_field(btf, "protocol", 2),
        // An offset from `head` (u32) on 64-bit kernels.
        tail: skb_field(btf, "tail", 4),
        sk: skb_field(btf, "sk", 8),
        dev: skb_field(btf, "dev", 8),
        window: 0,
        _pad: 0,
        nd_net: btf.member_offset("net_device", "nd_net").unwrap_or(0),
    };
    o.window = skb_window(skb, &o).unwrap_or(0);
    o
}

/// Where one read of [`SKB_WINDOW_BYTES`] covers every `sk_buff` field the
/// drop program needs before it knows whether a drop matters (they sit
/// side by side on 6.x kernels: 24 bytes from `protocol` to the end of
/// `head`); `None` when they do not fit.
fn skb_window(skb: &SkbOffsets, o: &DropSkbOffsets) -> Option<u16> {
    let fields = [
        (o.protocol, 2),
        (skb.network_header, 2),
        (o.tail, 4),
        (skb.head, 8),
    ];
    if fields.iter().any(|&(offset, _)| offset == 0) {
        return None;
    }
    let start = fields.iter().map(|&(offset, _)| offset).min()? & !7;
    let fits = fields.iter().all(|&(offset, size)| {
        offset % size == 0 && usize::from(offset - start) + usize::from(size) <= SKB_WINDOW_BYTES
    });
    // The program reads the window at `skb + start`: 0 means "none".
    (fits && start > 0).then_some(start)
}

pub(super) fn task_offsets(btf: &Btf) -> TaskOffsets {
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

/// Where the programs find this CPU's `preempt_count` (see
/// [`ContextConfig`]); all 0 when any piece is missing from BTF (kernels
/// whose count is not a per-CPU `int __preempt_count`, or without group
/// scheduling's `se.cfs_rq`), and the softirq programs are used instead.
pub(super) fn context_offsets(btf: &Btf) -> ContextConfig {
    let found = || -> Option<ContextConfig> {
        let pointer = |st: &str, member: &str| {
            btf.member(st, member)
                .and_then(|(offset, size)| (size == 8).then_some(offset))
        };
        let se = btf.member_offset("task_struct", "se")?;
        let cfs_rq = pointer("sched_entity", "cfs_rq")?;
        let rq = pointer("cfs_rq", "rq")?;
        let (rq_cpu, 4) = btf.member("rq", "cpu")? else {
            return None;
        };
        let preempt_count = btf.percpu_offset("__preempt_count", 4)?;
        let runqueues = btf.percpu_offset("runqueues", btf.struct_size("rq")?)?;
        let distance = |from: u32, to: u32| i32::try_from(i64::from(to) - i64::from(from)).ok();
        // Optional: without them, who is on the CPU comes from helpers.
        let current = || {
            let current_task = btf.percpu_offset("current_task", 8)?;
            let (pid, 4) = btf.member("task_struct", "pid")? else {
                return None;
            };
            let (comm, 16) = btf.member("task_struct", "comm")? else {
                return None;
            };
            Some((distance(preempt_count, current_task)?, pid, comm))
        };
        let (current_task_from_preempt_count, task_pid, task_comm) = current().unwrap_or_default();
        Some(ContextConfig {
            task_cfs_rq: se.checked_add(cfs_rq)?,
            cfs_rq_rq: rq,
            rq_cpu,
            preempt_count_from_rq: distance(runqueues, preempt_count)?,
            current_task_from_preempt_count,
            task_pid,
            task_comm,
            _pad: 0,
        })
    };
    found().unwrap_or_default()
}

/// `bpf_rdonly_cast`'s BTF id (the id a program calls a kfunc by), on a
/// kernel whose `enum bpf_features` says it casts to `void *` (Linux 6.17
/// and later): reads are then plain loads. `None` keeps them on
/// `bpf_probe_read_kernel`.
pub(super) fn rdonly_cast_id(btf: &Btf) -> Option<u32> {
    let casts_to_void = btf
        .enum_values("bpf_features")
        .iter()
        .any(|(_, name)| name == "BPF_FEAT_RDONLY_CAST_TO_VOID");
    casts_to_void
        .then(|| btf.func_id("bpf_rdonly_cast"))
        .flatten()
}

/// Does this kernel's verifier take BPF's atomic compare-and-exchange
/// (Linux 5.12), which reserves a slot in the event rings? BTF has no
/// entry for an instruction; `BPF_FUNC_check_mtu` came in the same
/// release, and its presence in `enum bpf_func_id` says the kernel is that
/// new (or has that release's BPF backported with it).
pub(super) fn has_bpf_atomics(btf: &Btf) -> bool {
    btf.enum_values("bpf_func_id")
        .iter()
        .any(|(_, name)| name == "BPF_FUNC_check_mtu")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(protocol: u16, network_header: u16, tail: u16, head: u16) -> Option<u16> {
        let skb = SkbOffsets {
            network_header,
            head,
            ..SkbOffsets::default()
        };
        let drop = DropSkbOffsets {
            protocol,
            tail,
            ..DropSkbOffsets::default()
        };
        skb_window(&skb, &drop)
    }

    #[test]
    fn the_drop_programs_skb_fields_are_read_in_one_window_or_not_at_all() {
        // Linux 6.18: protocol 176, network_header 180, tail 184, head 192.
        assert_eq!(window(176, 180, 184, 192), Some(176));
        // Unaligned start: the window starts at the 8-byte boundary below.
        assert_eq!(window(178, 180, 184, 192), Some(176));
        // Too far apart, a field unknown, or misaligned: no window.
        assert_eq!(window(176, 180, 184, 208), None);
        assert_eq!(window(176, 0, 184, 192), None);
        assert_eq!(window(176, 181, 184, 192), None);
    }
}
