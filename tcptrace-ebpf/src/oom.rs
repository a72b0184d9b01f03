//! `oom:mark_victim`: the OOM killer chose a process. Its SIGKILL was
//! generated just before (in the context of whoever needed the memory,
//! often the victim itself): this record tells userspace that the kill was
//! the OOM killer's, not that process's. Rare; one per victim.

use core::mem::MaybeUninit;

use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use tcptrace_common::{counter, filter, kind, oddity};

use crate::{Args, PID_FILTER, config, count, new_event, odd, read::read_kernel, submit};

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
