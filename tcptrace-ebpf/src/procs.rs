//! Processes: exits, fatal signals, forks (`--follow`) and the OOM
//! killer's victims, so that userspace can say which exit closed a socket
//! and what ended that process.

use core::mem::MaybeUninit;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tcptrace_common::{NO_ARG, counter, filter, flag, kind, oddity};

use crate::{
    Args, PID_FILTER, cgroup_id, config, count, new_event, odd,
    read::{self, read_kernel},
    submit, task_matches,
};

/// signal_generate's `result` for a signal that was delivered.
const TRACE_SIGNAL_DELIVERED: i32 = 0;
const SIGKILL: i32 = 9;

/// A task exits: its sockets are closed after this, in its own context.
/// One record per task exit (bounded by how fast tasks can be created).
#[raw_tracepoint(tracepoint = "sched_process_exit")]
pub fn sched_process_exit(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let pos = &cfg.process_exit;
    let args = Args::of(&ctx, pos);
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::PROCESS_EXIT, 0);
    if cfg.filter.judges_owners() {
        if cfg.filter.flags & filter::CGROUP != 0 {
            event.context.cgroup_id = cgroup_id();
        }
        if !task_matches(&cfg.filter, &event.context) {
            count(counter::FILTERED);
            return 0;
        }
    }
    if pos.int0 != NO_ARG && args.get(pos.int0) as u8 != 0 {
        event.flags |= flag::GROUP_DEAD;
    }
    let task = args.get(pos.task);
    if cfg.task.exit_code != 0 {
        match read_kernel::<i32>(task + u64::from(cfg.task.exit_code)) {
            Some(code) => {
                event.value = code as u32;
                event.flags |= flag::EXIT_CODE_VALID;
            }
            None => odd::oddity(oddity::EXIT_CODE_READ, task),
        }
    }
    submit(event);
    0
}

/// A signal that will kill its target is generated: remember who sent it.
/// Only signals that were delivered, kill by default and meet no handler
/// are submitted, so no process can make tcptrace write more than one
/// record per process it kills.
#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let pos = &cfg.signal;
    let args = Args::of(&ctx, pos);
    let sig = args.get(pos.int0) as i32;
    if !(1..64).contains(&sig) || cfg.signal_mask & (1u64 << sig) == 0 {
        return 0;
    }
    if args.get(pos.int1) as i32 != TRACE_SIGNAL_DELIVERED {
        return 0;
    }
    let task = args.get(pos.task);
    if sig != SIGKILL && read::has_handler(task, sig, &cfg.task) {
        return 0;
    }
    let Some(target) = read_kernel::<u32>(task + u64::from(cfg.task.tgid)) else {
        odd::oddity(oddity::SIGNAL_TARGET_READ, task);
        return 0;
    };
    // SAFETY: read-only lookup of a plain value.
    if cfg.filter.flags & filter::PID != 0 && unsafe { PID_FILTER.get(target) }.is_none() {
        count(counter::FILTERED);
        return 0;
    }
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::SIGNAL, 0);
    event.value = sig as u32;
    event.aux = u64::from(target);
    submit(event);
    0
}

/// `--follow`: a process forked by one the pid filter keeps is kept too
/// (threads share their process's tgid, already kept). Returns at once
/// without --follow; a fork costs far more than this program.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn sched_process_fork(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    if cfg.filter.flags & filter::FOLLOW == 0 || cfg.task.tgid == 0 {
        return 0;
    }
    let pos = &cfg.process_fork;
    let args = Args::of(&ctx, pos);
    let tgid = |task: u64| read_kernel::<u32>(task + u64::from(cfg.task.tgid));
    let (Some(parent), Some(child)) = (tgid(args.get(pos.task)), tgid(args.get(pos.task2))) else {
        odd::oddity(oddity::FORK_READ, args.get(pos.task2));
        return 0;
    };
    // SAFETY: read-only lookup of a plain value.
    if parent != child
        && unsafe { PID_FILTER.get(parent) }.is_some()
        && PID_FILTER.insert(child, 1, 0).is_err()
    {
        // A plain hash map: full at 16384 processes.
        odd::oddity(oddity::FOLLOW_FULL, u64::from(child));
    }
    0
}

/// `oom:mark_victim`: the OOM killer chose a process. Its SIGKILL was
/// generated just before (in the context of whoever needed the memory,
/// often the victim itself): this record tells userspace that the kill was
/// the OOM killer's, not that process's. Rare; one per victim.
#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim(ctx: RawTracePointContext) -> i32 {
    let cfg = config();
    let pos = &cfg.oom_victim;
    let args = Args::of(&ctx, pos);
    let task = args.get(pos.task);
    // Helper call: the victim's process id (the kill is matched to its exit).
    let Some(victim) = read_kernel::<u32>(task + u64::from(cfg.task.tgid)) else {
        odd::oddity(oddity::SIGNAL_TARGET_READ, task);
        return 0;
    };
    // SAFETY: read-only lookup of a plain value.
    if cfg.filter.flags & filter::PID != 0 && unsafe { PID_FILTER.get(victim) }.is_none() {
        count(counter::FILTERED);
        return 0;
    }
    // Helper calls: time and pid, in new_event.
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::OOM_VICTIM, 0);
    event.aux = u64::from(victim);
    submit(event);
    0
}
