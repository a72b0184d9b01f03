//! Telling softirq from process context: where the kernel runs softirqs
//! (on x86-64, the CPU's IRQ stack, else ksoftirqd) and the facts the
//! kernel program needs to check it per event (see
//! [`tcptrace_common::ContextConfig`]).

use std::path::Path;

use tcptrace_common::ContextConfig;

use super::Btf;

/// The offsets for the stack check, or zeros (use the softirq programs)
/// where it does not hold: not x86-64, a PREEMPT_RT kernel (softirqs run
/// in the task that raised them), or a BTF without the fields.
pub(super) fn context_config(btf: &Btf) -> ContextConfig {
    if !cfg!(target_arch = "x86_64") || preempt_rt() {
        return ContextConfig::default();
    }
    // x86-64 sizes its IRQ stacks as its task stacks (IRQ_STACK_ORDER ==
    // THREAD_SIZE_ORDER, KASAN included); `struct irq_stack` is one.
    match (
        btf.member_offset("task_struct", "stack"),
        btf.struct_size("irq_stack"),
    ) {
        (Some(task_stack), Some(thread_size)) if thread_size.is_power_of_two() => ContextConfig {
            task_stack,
            thread_size,
        },
        _ => ContextConfig::default(),
    }
}

/// A PREEMPT_RT kernel says so in /sys/kernel/realtime.
fn preempt_rt() -> bool {
    std::fs::read_to_string("/sys/kernel/realtime").is_ok_and(|s| s.trim() == "1")
}

/// The pid of each CPU's ksoftirqd, indexed by CPU: the kernel threads
/// named `ksoftirqd/N` whose parent is kthreadd (pid 2; a user process may
/// take the name, never that parent). They run softirqs on their own stack.
pub fn ksoftirqd_pids(proc: &Path) -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir(proc) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some(cpu) = ksoftirqd_cpu(&stat) {
            found.push((cpu, pid));
        }
    }
    found
}

/// `/proc/PID/stat` of a ksoftirqd: `12 (ksoftirqd/1) S 2 …` → 1.
fn ksoftirqd_cpu(stat: &str) -> Option<u32> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let cpu = stat.get(open + 1..close)?.strip_prefix("ksoftirqd/")?;
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let parent = rest.next()?;
    (parent == "2").then(|| cpu.parse().ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_kthreadds_children_named_ksoftirqd_count() {
        assert_eq!(ksoftirqd_cpu("15 (ksoftirqd/1) S 2 0 0 0 -1"), Some(1));
        // A user process may call itself that; its parent is not kthreadd.
        assert_eq!(ksoftirqd_cpu("4242 (ksoftirqd/0) S 4000 4242 0"), None);
        assert_eq!(ksoftirqd_cpu("16 (kworker/1:0) I 2 0 0"), None);
        assert_eq!(ksoftirqd_cpu("17 (a) b) S 2 0"), None);
    }

    #[test]
    fn this_machine_has_a_ksoftirqd_per_cpu() {
        let pids = ksoftirqd_pids(Path::new("/proc"));
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for cpu in 0..cpus as u32 {
            assert!(pids.iter().any(|&(c, _)| c == cpu), "CPU {cpu}: {pids:?}");
        }
        assert!(pids.iter().all(|&(_, pid)| pid > 2), "{pids:?}");
    }
}
