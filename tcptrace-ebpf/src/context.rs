//! Who is on the CPU when an event fires, and whether it is only a
//! bystander (a softirq runs on its time).
//!
//! Both come from the CPU's own per-CPU variables where the loader found
//! the way to them ([`tcptrace_common::ContextConfig`]): `__preempt_count`
//! says whether a softirq is being served, and `current_task`, in the same
//! cache line, is the on-CPU task, whose ids and name are then plain loads
//! (with direct reads). Elsewhere, helpers say who is on the CPU and two
//! programs on the softirq tracepoints keep a per-CPU mark.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{map, raw_tracepoint},
    maps::PerCpuArray,
    programs::RawTracePointContext,
};
use tcptrace_common::{SOFTIRQ_OFFSET, Task, oddity};

use core::ptr::addr_of_mut;

use crate::{config, odd, read, zero8, zero16};

/// Non-zero while this CPU runs a softirq: the on-CPU task is then a
/// bystander. Kept by the softirq programs, on kernels where [`in_softirq`]
/// cannot read `preempt_count`.
#[map]
static IN_SOFTIRQ: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Per CPU: the address of its `__preempt_count`, once found.
#[map]
static PREEMPT_COUNT_AT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A CPU's `PREEMPT_COUNT_AT` once the search failed: not tried again on
/// every event (three reads and a log line each), and never an address.
const PREEMPT_COUNT_NOT_FOUND: u64 = 1;

/// This CPU's `__preempt_count` address, found the first time the CPU
/// needs it; [`PREEMPT_COUNT_NOT_FOUND`] when it cannot be.
#[inline(always)]
fn preempt_count_at() -> u64 {
    let Some(slot) = PREEMPT_COUNT_AT.get_ptr_mut(0) else {
        return PREEMPT_COUNT_NOT_FOUND;
    };
    // SAFETY: per-CPU slot; a nested run on this CPU writes the same value.
    let mut at = unsafe { *slot };
    if at == 0 {
        at = find_preempt_count();
        // SAFETY: as above.
        unsafe { *slot = at };
    }
    at
}

/// Is this CPU serving a softirq (the on-CPU task then a bystander)?
///
/// From the kernel's own `preempt_count` where the loader found the way to
/// it: one 4-byte read per event, and nothing on the host's other
/// softirqs. Otherwise from the mark the softirq programs keep, which costs
/// two program runs on every softirq.
#[inline(always)]
pub fn in_softirq() -> bool {
    if !config().context.reads_preempt_count() {
        return IN_SOFTIRQ.get(0).is_some_and(|depth| *depth != 0);
    }
    let at = preempt_count_at();
    // Not found (counted once): the on-CPU task is taken as a bystander,
    // no attribution rather than a wrong one.
    at == PREEMPT_COUNT_NOT_FOUND
        || read::read_kernel::<u32>(at).is_none_or(|count| count & SOFTIRQ_OFFSET != 0)
}

/// This CPU's `__preempt_count`, the first time a CPU needs it: the on-CPU
/// task's runqueue (`current->se.cfs_rq->rq`, this CPU's per-CPU
/// `runqueues`, checked by its `cpu`), moved by the two variables' distance
/// in the per-CPU area. [`PREEMPT_COUNT_NOT_FOUND`] (and an oddity) when
/// not found.
#[inline(never)]
fn find_preempt_count() -> u64 {
    let c = &config().context;
    // SAFETY: plain helper call.
    let task = unsafe { aya_ebpf::helpers::bpf_get_current_task() };
    let rq = read::read_kernel::<u64>(task + u64::from(c.task_cfs_rq))
        .filter(|&cfs_rq| cfs_rq != 0)
        .and_then(|cfs_rq| read::read_kernel::<u64>(cfs_rq + u64::from(c.cfs_rq_rq)))
        .filter(|&rq| rq != 0);
    // SAFETY: plain helper call (inlined by the verifier).
    let cpu = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() };
    match rq {
        Some(rq) if read::read_kernel::<u32>(rq + u64::from(c.rq_cpu)) == Some(cpu) => {
            rq.wrapping_add_signed(i64::from(c.preempt_count_from_rq))
        }
        _ => {
            odd::oddity(oddity::CONTEXT_READ, task);
            PREEMPT_COUNT_NOT_FOUND
        }
    }
}

/// The on-CPU task's address from this CPU's `current_task`: one load,
/// where reads are direct and the variable was found. `None`: ask a helper.
#[inline(always)]
fn current_task_by_load() -> Option<u64> {
    let c = &config().context;
    if !read::direct() || !c.finds_current_task() {
        return None;
    }
    let at = preempt_count_at();
    if at == PREEMPT_COUNT_NOT_FOUND {
        return None;
    }
    let current = at.wrapping_add_signed(i64::from(c.current_task_from_preempt_count));
    read::read_kernel::<u64>(current).filter(|&task| task != 0)
}

/// The on-CPU task's address: a load where possible, else a helper call.
#[inline(always)]
pub fn current_task() -> u64 {
    current_task_by_load().unwrap_or_else(|| {
        // SAFETY: plain helper call.
        unsafe { aya_ebpf::helpers::bpf_get_current_task() }
    })
}

/// Writes the on-CPU task's ids (when `ids`) and name (when `name`) into
/// `task`, zeroing what is not asked for; the cgroup id is left alone.
/// Plain loads from the task where possible (no helper call at all);
/// otherwise `bpf_get_current_pid_tgid` and `bpf_get_current_comm`.
///
/// A bystander's (neither asked for) costs two stores, inline; the rest
/// is not inlined: its stack would add to every program's, and the state
/// programs are near the verifier's 512 bytes.
///
/// # Safety
/// `task` is valid for writes and 8-byte aligned.
#[inline(always)]
pub unsafe fn on_cpu_into(task: *mut Task, ids: bool, name: bool) {
    if !ids && !name {
        // SAFETY: as the caller promises.
        unsafe {
            zero8(addr_of_mut!((*task).pid).cast());
            zero16(addr_of_mut!((*task).comm));
        }
        return;
    }
    // SAFETY: as the caller promises.
    unsafe { read_on_cpu_into(task, ids, name) }
}

/// [`on_cpu_into`] for a task that is not a bystander: one call, where a
/// bystander (most events: softirq, destroys) makes none.
///
/// # Safety
/// As [`on_cpu_into`].
#[inline(never)]
unsafe fn read_on_cpu_into(task: *mut Task, ids: bool, name: bool) {
    let c = &config().context;
    let loaded = current_task_by_load();
    // SAFETY: as the caller promises; the casts keep 8-byte alignment.
    unsafe {
        match loaded {
            Some(current) if ids => {
                let field = |offset: u32| read::read_kernel::<u32>(current + u64::from(offset));
                addr_of_mut!((*task).pid).write(field(c.task_pid).unwrap_or(0));
                addr_of_mut!((*task).tgid).write(field(config().task.tgid).unwrap_or(0));
            }
            None if ids => {
                let pid_tgid = bpf_get_current_pid_tgid();
                addr_of_mut!((*task).pid).write(pid_tgid as u32);
                addr_of_mut!((*task).tgid).write((pid_tgid >> 32) as u32);
            }
            _ => zero8(addr_of_mut!((*task).pid).cast()),
        }
        let comm = addr_of_mut!((*task).comm);
        match loaded {
            Some(current) if name => {
                let at = current + u64::from(c.task_comm);
                let words = comm.cast::<u64>();
                let (low, high) = tcptrace_common::comm_words_up_to_nul(
                    read::read_kernel::<u64>(at).unwrap_or(0),
                    read::read_kernel::<u64>(at + 8).unwrap_or(0),
                );
                words.write_volatile(low);
                words.add(1).write_volatile(high);
            }
            None if name => read::current_comm_into(comm),
            _ => zero16(comm),
        }
    }
}

#[raw_tracepoint(tracepoint = "softirq_entry")]
pub fn softirq_entry(_ctx: RawTracePointContext) -> i32 {
    if let Some(depth) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *depth = 1 };
    }
    0
}

#[raw_tracepoint(tracepoint = "softirq_exit")]
pub fn softirq_exit(_ctx: RawTracePointContext) -> i32 {
    if let Some(depth) = IN_SOFTIRQ.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *depth = 0 };
    }
    0
}
