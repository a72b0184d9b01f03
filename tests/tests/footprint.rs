//! What tcptrace leaves on the host: its loader hides the kernel's BTF
//! from aya in a private mount namespace of one short-lived thread (aya's
//! parse of it set tcptrace's peak memory; see `loader/limits.rs`). Nothing
//! of that may show outside: not in the host's mount table, not in
//! tcptrace's own once it traces, and the BTF file must read as before.

use std::{process::Stdio, time::Duration};

use tcptrace_tests::{
    Cli,
    bpf_objects::{Kind, held_by},
};

const BTF: &str = "/sys/kernel/btf/vmlinux";

/// Mount points in a mountinfo text (the fifth field).
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .collect()
}

#[test]
fn hiding_the_kernel_btf_from_the_loader_leaves_no_mount_behind() {
    let btf_before = std::fs::metadata(BTF).unwrap().len();
    let host_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let cli = Cli::start(&["--json"], Stdio::null());
    let pid = cli.child.id();

    let tcptrace_mounts =
        mount_points(&std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap());
    let host_now = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let btf_now = std::fs::read(BTF).unwrap();
    cli.signal(libc::SIGINT);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr:#?}");

    assert!(
        !tcptrace_mounts.iter().any(|m| m == BTF),
        "tcptrace's main thread sees a mount on {BTF}: {tcptrace_mounts:#?}"
    );
    assert_eq!(
        mount_points(&host_before),
        mount_points(&host_now),
        "the host's mounts changed while tcptrace started"
    );
    assert_eq!(
        btf_now.len() as u64,
        btf_before,
        "{BTF} no longer reads whole"
    );
    assert!(
        btf_now.starts_with(&[0x9f, 0xeb]),
        "{BTF} is not BTF any more"
    );
}

/// Telling softirq from process context costs the host nothing outside
/// tcptrace's own events: on a kernel where the programs read the CPU's
/// `preempt_count`, no program of tcptrace's is on the softirq tracepoints
/// (each would run on every softirq of the host: every packet batch,
/// timer and RCU callback).
#[test]
fn nothing_runs_on_the_hosts_softirqs() {
    let layout = tcptrace::kernel::KernelLayout::read_running().expect("the kernel's layout");
    let cli = Cli::start(&["--json"], Stdio::null());
    let programs = held_by(cli.child.id(), Kind::Program);
    cli.signal(libc::SIGINT);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr:#?}");

    let names: Vec<&str> = programs.iter().map(|p| p.name.as_str()).collect();
    assert!(
        names.contains(&"inet_sock_set_state"),
        "tcptrace's state program is not among what it holds: {names:?}"
    );
    let on_softirqs: Vec<&&str> = names.iter().filter(|n| n.starts_with("softirq_")).collect();
    if layout.config.context.reads_preempt_count() {
        assert!(
            on_softirqs.is_empty(),
            "programs on every softirq: {on_softirqs:?}"
        );
    } else {
        assert_eq!(on_softirqs.len(), 2, "{names:?}");
    }
}
