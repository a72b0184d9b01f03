use super::*;
use tcptrace_common::SOCK_HEAD_BYTES;

fn spec(name: &str) -> &'static Tracepoint {
    TRACEPOINTS.iter().find(|tp| tp.name == name).unwrap()
}

fn ptr(name: &str) -> ArgType {
    ArgType::StructPtr(name.to_owned())
}

#[test]
fn arguments_are_found_by_type_not_by_position() {
    // 6.10+: (sk, skb, reason).
    let now = [ptr("sock"), ptr("sk_buff"), ArgType::Integer];
    let pos = arg_positions(spec("tcp_send_reset"), &now).unwrap();
    assert_eq!((pos.sk, pos.skb, pos.int0), (0, 1, 2));
    // 5.x: (sk, skb), no reason: the reason slot is simply absent.
    let older = [ptr("sock"), ptr("sk_buff")];
    let pos = arg_positions(spec("tcp_send_reset"), &older).unwrap();
    assert_eq!((pos.sk, pos.skb, pos.int0), (0, 1, NO_ARG));
    // signal_generate: the signal is the first integer, result the third.
    let signal = [
        ArgType::Integer,
        ptr("kernel_siginfo"),
        ptr("task_struct"),
        ArgType::Integer,
        ArgType::Integer,
    ];
    let pos = arg_positions(spec("signal_generate"), &signal).unwrap();
    assert_eq!((pos.int0, pos.task, pos.int1), (0, 2, 4));
}

#[test]
fn a_prototype_without_a_required_argument_is_not_used() {
    let odd = [ptr("inet_sock"), ArgType::Integer, ArgType::Integer];
    assert_eq!(arg_positions(spec("inet_sock_set_state"), &odd), None);
    // Past the fifth argument the kernel program cannot reach it.
    let far = [
        ArgType::Other,
        ArgType::Other,
        ArgType::Other,
        ArgType::Other,
        ArgType::Other,
        ptr("sock"),
    ];
    assert_eq!(arg_positions(spec("tcp_destroy_sock"), &far), None);
    assert_eq!(
        describe(&[ptr("sock"), ArgType::Integer, ArgType::Other]),
        "struct sock *, int, ?"
    );
}

/// The running kernel's own BTF: every tracepoint tcptrace uses is there,
/// with the arguments and offsets the kernel program relies on.
#[test]
fn the_running_kernel_is_read_from_its_btf() {
    let Some(btf) = Btf::from_sys_fs().expect("the kernel's BTF parses") else {
        return; // a kernel without BTF: nothing to check here
    };
    // 6.18 has BPF's atomic compare-and-exchange, and says so in BTF.
    assert!(offsets::has_bpf_atomics(&btf));
    let layout = KernelLayout::from_btf(&btf).unwrap();
    let c = layout.config;
    assert_eq!(
        (c.set_state.sk, c.set_state.int0, c.set_state.int1),
        (0, 1, 2)
    );
    assert_ne!(c.sock.family, ABSENT);
    assert_ne!(c.sock.v6_saddr, ABSENT);
    for offset in [c.sock.daddr, c.sock.saddr, c.sock.dport, c.sock.num] {
        assert!(usize::from(offset) < SOCK_HEAD_BYTES, "{offset}");
    }
    assert_eq!(c.sock.v6_daddr % 4, 0);
    assert_ne!(c.sock.protocol, ABSENT);
    assert!(c.sock.inet_sport > 0);
    assert_ne!(c.sock.net, ABSENT);
    assert!(c.sock.net_inum > 0);
    assert_ne!(c.sock.flags, ABSENT);
    assert_eq!(c.sock.done_bit, 1);
    assert!(c.sock.tcp_rcv_nxt > 0 && c.sock.tcp_copied_seq > 0);
    assert!(c.task.exit_code > 0 && c.task.tgid > 0 && c.task.sighand > 0);
    assert!(c.task.sigaction_size >= 24, "{:?}", c.task);
    assert!(c.skb.head > 0 && c.skb.data > 0 && c.skb.network_header > 0);
    assert!(layout.missing.is_empty(), "{:?}", layout.missing);
    assert!(
        layout.missing_fields.is_empty(),
        "{:?}",
        layout.missing_fields
    );
    if c.send_reset.int0 != NO_ARG {
        assert_eq!(layout.reasons.name(1), Some("NO_SOCKET"));
        assert_eq!(layout.reasons.name(11), Some("TCP_ABORT_ON_CLOSE"));
    }
    // skb:kfree_skb(skb, location, reason, rx_sk) and the codes it needs.
    // oom:mark_victim(task, uid).
    assert_eq!(c.oom_victim.task, 0);
    let d = c.drop;
    assert_eq!((d.args.skb, d.args.int0, d.args.sk), (0, 2, 3));
    assert!(
        d.skb.window > 0 && d.skb.sk > 0 && d.skb.tail > 0,
        "{:?}",
        d.skb
    );
    let overflow = layout.drop_reasons.code("TCP_LISTEN_OVERFLOW").unwrap();
    assert_eq!(d.codes.listen_overflow, overflow);
    assert_eq!(
        layout
            .drop_reasons
            .code("NETFILTER_DROP")
            .map(|code| layout.drop_reasons.name(code)),
        Some(Some("NETFILTER_DROP"))
    );
    for not_a_reason in ["NOT_DROPPED_YET", "CONSUMED", "MAX", "SUBSYS_MASK"] {
        assert_eq!(
            layout.drop_reasons.code(not_a_reason),
            None,
            "{not_a_reason}"
        );
    }
}

#[test]
fn drops_need_their_reason_and_not_their_socket() {
    let now = [
        ptr("sk_buff"),
        ArgType::Other,
        ArgType::Integer,
        ptr("sock"),
    ];
    let pos = arg_positions(spec("kfree_skb"), &now).unwrap();
    assert_eq!((pos.skb, pos.int0, pos.sk, pos.nargs), (0, 2, 3, 4));
    // 5.17 to 6.10: no rx_sk.
    let no_rx_sk = [ptr("sk_buff"), ArgType::Other, ArgType::Integer];
    let pos = arg_positions(spec("kfree_skb"), &no_rx_sk).unwrap();
    assert_eq!((pos.int0, pos.sk), (2, NO_ARG));
    // Before 5.17: no reason, no drops.
    let old = [ptr("sk_buff"), ArgType::Other];
    assert_eq!(arg_positions(spec("kfree_skb"), &old), None);
}

#[test]
fn btf_member_sizes_and_struct_sizes() {
    let Some(btf) = Btf::from_sys_fs().expect("the kernel's BTF parses") else {
        return;
    };
    assert_eq!(
        btf.member("sock_common", "skc_family").map(|m| m.1),
        Some(2)
    );
    assert_eq!(
        btf.member("sock_common", "skc_v6_daddr").map(|m| m.1),
        Some(16)
    );
    // skc_reuse is a bitfield: not something a load can read.
    assert_eq!(btf.member("sock_common", "skc_reuse"), None);
    assert!(btf.struct_size("sock_common").unwrap() >= SOCK_HEAD_BYTES as u32);
    assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
}

#[test]
fn only_socket_programs_can_leave_a_socket_incomplete() {
    for p in ["inet_sock_set_state", "tcp_send_reset", "tcp_destroy_sock"] {
        assert!(is_socket_program(p), "{p}");
    }
    for p in [
        "softirq_entry",
        "sched_process_exit",
        "signal_generate",
        "sched_process_fork",
    ] {
        assert!(!is_socket_program(p), "{p}");
    }
    // The backup only stands in for inet_sock_set_state.
    assert!(is_backup_program("inet_sock_set_state_nested"));
    assert!(!is_socket_program("inet_sock_set_state_nested"));
}

#[test]
fn preempt_count_is_found_from_the_runqueue_on_this_kernel() {
    let Some(btf) = Btf::from_sys_fs().expect("the kernel's BTF parses") else {
        return;
    };
    // Per-CPU variables are found in `.data..percpu` only with their size.
    let preempt_count = btf.percpu_offset("__preempt_count", 4);
    assert_eq!(btf.percpu_offset("__preempt_count", 8), None);
    assert_eq!(btf.percpu_offset("no_such_variable", 4), None);
    let layout = KernelLayout::from_btf(&btf).unwrap();
    let context = layout.config.context;
    let irq_attached = layout.present.iter().any(|tp| tp.group == "irq");
    if preempt_count.is_none() {
        // Another kernel: the softirq programs stand in.
        assert!(!context.reads_preempt_count() && irq_attached);
        return;
    }
    assert!(context.reads_preempt_count(), "{context:?}");
    assert!(!irq_attached, "softirq programs attached needlessly");
    let runqueues = btf
        .percpu_offset("runqueues", btf.struct_size("rq").unwrap())
        .unwrap();
    assert_eq!(
        i64::from(context.preempt_count_from_rq),
        i64::from(preempt_count.unwrap()) - i64::from(runqueues)
    );
    assert_eq!(btf.member("rq", "cpu"), Some((context.rq_cpu, 4)));
    assert!(context.cfs_rq_rq > 0 && context.task_cfs_rq > 0);
    // The on-CPU task's variable, where this kernel has it per CPU.
    if let Some(current_task) = btf.percpu_offset("current_task", 8) {
        assert!(context.finds_current_task(), "{context:?}");
        assert_eq!(
            i64::from(context.current_task_from_preempt_count),
            i64::from(current_task) - i64::from(preempt_count.unwrap())
        );
        assert_eq!(
            btf.member("task_struct", "pid"),
            Some((context.task_pid, 4))
        );
        assert_eq!(
            btf.member("task_struct", "comm"),
            Some((context.task_comm, 16))
        );
    }
}
