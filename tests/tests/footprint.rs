//! What tcptrace leaves on the host: its loader hides the kernel's BTF
//! from aya in a private mount namespace of one short-lived thread (aya's
//! parse of it set tcptrace's peak memory; see `loader/limits.rs`). Nothing
//! of that may show outside: not in the host's mount table, not in
//! tcptrace's own once it traces, and the BTF file must read as before.

use std::{process::Stdio, time::Duration};

use tcptrace_tests::Cli;

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
