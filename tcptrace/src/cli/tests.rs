use super::*;

fn parse(args: &[&str]) -> Result<Args, clap::Error> {
    Args::try_parse_from(std::iter::once("tcptrace").chain(args.iter().copied()))
}

#[test]
fn a_port_out_of_range_is_refused_with_the_range() {
    let err = parse(&["--port", "70000"]).unwrap_err().to_string();
    assert!(err.contains("70000") && err.contains("65535"), "{err}");
    assert!(parse(&["--lport", "0"]).is_err());
}

#[test]
fn filters_become_kernel_flags() {
    let me = std::process::id().to_string();
    let args = parse(&[
        "--pid",
        &me,
        "--pid",
        "1",
        "--rport",
        "443",
        "-6",
        "--comm",
        "a-very-long-daemon-name",
    ])
    .unwrap();
    let o = args.trace_options().unwrap();
    assert_eq!(o.pids, vec![std::process::id(), 1]);
    assert_eq!(o.filter.rport, 443);
    assert_eq!(o.filter.family, AF_INET6);
    assert_eq!(
        o.filter.flags,
        filter::RPORT | filter::FAMILY | filter::COMM
    );
    assert_eq!(&o.filter.comm[..15], b"a-very-long-dae");
    assert_eq!(o.filter.comm[15], 0);
}

#[test]
fn a_pid_that_does_not_exist_is_refused() {
    // pid_max is at most 2^22.
    let args = parse(&["--pid", "4194305"]).unwrap();
    assert_eq!(
        args.trace_options().unwrap_err(),
        ArgsError::NoSuchPid(4194305)
    );
}

#[test]
fn a_missing_cgroup_is_refused_before_loading() {
    let args = parse(&["--cgroup", "/nonexistent/cgroup"]).unwrap();
    let err = args.trace_options().unwrap_err();
    assert!(err.to_string().contains("/nonexistent/cgroup"), "{err}");
}

#[test]
fn cgroups_resolve_on_the_cgroup2_mount_and_nowhere_else() {
    // Hosts without cgroup v2 have nothing to resolve.
    let Some(root) = cgroup2_root() else { return };
    let args = parse(&["--cgroup", root.to_str().unwrap()]).unwrap();
    assert_ne!(args.trace_options().unwrap().filter.cgroup_id, 0);
    // Relative paths are under the cgroup2 mount: "." is its root.
    let args = parse(&["--cgroup", "."]).unwrap();
    assert_ne!(args.trace_options().unwrap().filter.cgroup_id, 0);
    let err = parse(&["--cgroup", "/tmp"])
        .unwrap()
        .trace_options()
        .unwrap_err();
    assert!(
        err.to_string().contains("not a cgroup v2 directory"),
        "{err}"
    );
}

#[test]
fn bad_ring_sizes_and_conflicting_families_are_refused() {
    assert!(parse(&["--ring-size", "5000"]).is_err());
    assert!(parse(&["--ring-size", "x"]).is_err());
    assert!(parse(&["--ring-size", "65536"]).is_err());
    assert_eq!(parse(&["--ring-size", "524288"]).unwrap().ring_size, 524288);
    assert!(parse(&["-4", "-6"]).is_err());
}

#[test]
fn sizes_and_durations_are_bounded_with_the_range_in_the_message() {
    let err = parse(&["--ring-size", "1099511627776"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("out of range") && err.contains("1073741824"),
        "{err}"
    );
    let err = parse(&["--ring-size", "2147483648"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("out of range"), "{err}");
    let err = parse(&["--ring-size", "-1"]).unwrap_err().to_string();
    assert!(err.contains("`-1` is not a number of bytes"), "{err}");
    assert_eq!(parse(&["--ring-size", "262144"]).unwrap().ring_size, 262144);
    for small in ["4096", "16384", "131072"] {
        let err = parse(&["--ring-size", small]).unwrap_err().to_string();
        assert!(err.contains("from 262144"), "{small}: {err}");
    }
    for bad in ["18446744073709551615", "0", "-5", "1.5"] {
        let err = parse(&["--duration", bad]).unwrap_err().to_string();
        assert!(err.contains("31536000"), "{bad}: {err}");
    }
    assert_eq!(
        parse(&["--duration", "31536000"]).unwrap().duration,
        Some(31536000)
    );
    let err = parse(&["--port", "-1"]).unwrap_err().to_string();
    assert!(
        err.contains("-1") && !err.contains("unexpected argument"),
        "{err}"
    );
}

#[test]
fn a_name_that_is_not_utf8_is_kept_as_bytes() {
    use std::os::unix::ffi::OsStringExt;
    let name = OsString::from_vec(vec![0xff, b'x', 0xfe]);
    let args = Args::try_parse_from([OsString::from("tcptrace"), "--comm".into(), name]).unwrap();
    let o = args.trace_options().unwrap();
    assert_eq!(&o.filter.comm[..4], &[0xff, b'x', 0xfe, 0]);
}

#[test]
fn netns_is_a_namespace_file_or_an_inode() {
    let ours = std::fs::metadata("/proc/self/ns/net").unwrap().ino();
    let args = parse(&["--netns", "/proc/self/ns/net"]).unwrap();
    let o = args.trace_options().unwrap();
    assert_eq!(u64::from(o.filter.netns), ours);
    assert_ne!(o.filter.flags & filter::NETNS, 0);
    let o = parse(&["--netns", "4026531840"])
        .unwrap()
        .trace_options()
        .unwrap();
    assert_eq!(o.filter.netns, 4026531840);
    for bad in ["/nonexistent/netns", "/tmp", "0"] {
        let err = parse(&["--netns", bad])
            .unwrap()
            .trace_options()
            .unwrap_err();
        assert!(err.to_string().contains(bad), "{err}");
    }
}

#[test]
fn a_thread_id_stands_for_its_process() {
    let (tx, rx) = std::sync::mpsc::channel();
    let t = std::thread::spawn(move || {
        // SAFETY: plain syscall.
        tx.send(unsafe { libc::gettid() } as u32).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
    });
    let tid = rx.recv().unwrap();
    assert_ne!(tid, std::process::id());
    let o = parse(&["--pid", &tid.to_string()])
        .unwrap()
        .trace_options()
        .unwrap();
    assert_eq!(o.pids, vec![std::process::id()]);
    t.join().unwrap();
}

#[test]
fn follow_needs_a_pid_and_adds_the_children() {
    assert!(parse(&["--follow"]).is_err());
    let me = std::process::id();
    let mut child = std::process::Command::new("sleep")
        .arg("5")
        .spawn()
        .unwrap();
    let o = parse(&["--pid", &me.to_string(), "--follow"])
        .unwrap()
        .trace_options()
        .unwrap();
    assert!(o.pids.contains(&me) && o.pids.contains(&child.id()));
    assert_ne!(o.filter.flags & filter::FOLLOW, 0);
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn a_command_must_exist_before_anything_is_loaded() {
    let args = parse(&["--", "sh", "-c", "exit 3"]).unwrap();
    assert_eq!(args.command.len(), 3);
    assert!(args.trace_options().is_ok());
    let err = parse(&["--", "no-such-command-tt"])
        .unwrap()
        .trace_options()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no-such-command-tt: command not found"),
        "{err}"
    );
    assert!(parse(&["--duration", "3", "--", "true"]).is_err());
}

#[test]
fn colour_follows_the_flag_then_the_terminal() {
    assert!(!parse(&[]).unwrap().color(false));
    assert!(parse(&["--color", "always"]).unwrap().color(false));
    assert!(!parse(&["--color", "never"]).unwrap().color(true));
}
