//! deploy/: the systemd unit and the Kubernetes DaemonSet, exercised as far
//! as a machine without systemd as PID 1 or a cluster allows:
//! - `systemd-analyze verify` accepts the unit (skipped, with a note, where
//!   the tool is absent);
//! - tcptrace runs as a user that is not root with exactly the unit's
//!   capabilities (as DynamicUser= and AmbientCapabilities= give them) and
//!   still traces, names owners from the start-up snapshot, and serves
//!   metrics;
//! - every system call of a traced run is allowed by the unit's
//!   SystemCallFilter (with strace; skipped, with a note, without);
//! - the DaemonSet is valid YAML with the fields a cluster requires and the
//!   same capabilities as the unit;
//! - the alerting rules pass `promtool check rules` (the metrics test has a
//!   real Prometheus evaluate them).

use std::{
    collections::BTreeSet,
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tcptrace_tests::{Cli, daemon_args, prometheus, tcptrace_binary};

fn deploy_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name)
}

fn unit_text() -> String {
    std::fs::read_to_string(deploy_file("tcptrace.service")).unwrap()
}

/// Every value of `key=` in the unit, split at spaces.
fn unit_values(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .flat_map(|v| v.split_whitespace().map(str::to_owned))
        .collect()
}

fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The unit with its ExecStart pointing at the tcptrace under test.
fn unit_for_test(dir: &Path) -> PathBuf {
    let text = unit_text().replace(
        "/usr/local/bin/tcptrace",
        tcptrace_binary().to_str().unwrap(),
    );
    let path = dir.join("tcptrace.service");
    std::fs::write(&path, text).unwrap();
    path
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcptrace-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_systemd_unit_verifies() {
    if !have("systemd-analyze") {
        println!("note: systemd-analyze not found: the unit is not verified here");
        return;
    }
    let dir = scratch("unit");
    let unit = unit_for_test(&dir);
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "systemd-analyze verify: {said}");
    // No warning either (an unknown key is only a warning).
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    let exec = unit_values("ExecStart").join(" ");
    assert!(
        exec.contains("--view none") && exec.contains("--metrics 127.0.0.1:"),
        "{exec}"
    );
    assert_eq!(
        unit_values("CapabilityBoundingSet"),
        unit_values("AmbientCapabilities")
    );
}

/// The unit's capabilities, as numbers.
fn unit_caps() -> Vec<u32> {
    unit_values("CapabilityBoundingSet")
        .iter()
        .map(|name| match name.as_str() {
            "CAP_DAC_READ_SEARCH" => 2,
            "CAP_NET_BIND_SERVICE" => 10,
            "CAP_SYS_PTRACE" => 19,
            "CAP_SYS_ADMIN" => 21,
            "CAP_SYS_RESOURCE" => 24,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("add {other} to this test's table"),
        })
        .collect()
}

/// Makes `cmd` run as nobody with `caps` only, as systemd's DynamicUser=
/// with CapabilityBoundingSet= and AmbientCapabilities= does: the bounding
/// set cut to them, uid and gid changed keeping them, raised as ambient
/// (so that the exec'd program has them effective), no new privileges.
fn as_nobody_with(cmd: &mut Command, caps: Vec<u32>) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut mask = [0u32; 2];
    for &c in &caps {
        mask[(c / 32) as usize] |= 1 << (c % 32);
    }
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // The failing step (1 ids, 2 capset, 3 ambient, 4 no new
            // privileges) x 1000 + errno: allocation-free, said in the panic.
            let fail = |step: i32| {
                let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
                Err(std::io::Error::from_raw_os_error(step * 1000 + errno))
            };
            // CAP_SETPCAP (8), which dropping needs, goes last.
            for cap in (0..64u32).filter(|&c| c != 8).chain([8]) {
                if !caps.contains(&cap) {
                    // EINVAL: a capability this kernel does not have.
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0);
                }
            }
            if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                return fail(1);
            }
            let header = Header {
                version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
                pid: 0,
            };
            let data = [0, 1].map(|i| Data {
                effective: mask[i],
                permitted: mask[i],
                inheritable: mask[i],
            });
            if libc::syscall(libc::SYS_capset, &raw const header, data.as_ptr()) != 0 {
                return fail(2);
            }
            for &cap in &caps {
                let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                if libc::prctl(libc::PR_CAP_AMBIENT, raise, cap as libc::c_ulong, 0, 0) != 0 {
                    return fail(3);
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return fail(4);
            }
            Ok(())
        });
    }
}

/// This process's name (its main thread's) as the kernel has it.
/// The calling thread's name (a test runs on a thread named after it).
fn own_comm() -> String {
    std::fs::read_to_string("/proc/thread-self/comm")
        .unwrap()
        .trim_end()
        .to_owned()
}

#[test]
fn the_units_capabilities_are_enough_without_root() {
    // Opened by root before tcptrace starts: only the start-up snapshot
    // (reading root's /proc/PID/fd as nobody) can name its owner.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut cmd = Command::new(tcptrace_binary());
    cmd.args(daemon_args("127.0.0.1:0", &port))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // A sandbox may withhold some from root itself: those cannot be given.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ours = status
        .lines()
        .find_map(|l| l.strip_prefix("CapPrm:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap();
    let (caps, withheld): (Vec<u32>, Vec<u32>) =
        unit_caps().into_iter().partition(|c| ours & (1 << c) != 0);
    if !withheld.is_empty() {
        println!(
            "note: this machine withholds capabilities {withheld:?} from root: run without them"
        );
    }
    as_nobody_with(&mut cmd, caps.clone());
    let cli = Cli::start_with(&mut cmd);
    let status = std::fs::read_to_string(format!("/proc/{}/status", cli.child.id())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(field("Uid:"), "65534", "{status}");
    let effective = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    let wanted: u64 = caps.iter().map(|c| 1u64 << c).sum();
    assert_eq!(effective, wanted, "{status}");
    assert!(
        !cli.stderr_lines.iter().any(|l| l.contains("cannot list")),
        "the start-up listing failed: {:#?}",
        cli.stderr_lines
    );

    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    drop(server);
    let me = own_comm();
    let addr = cli.metrics_addr();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = prometheus::get(addr, "/metrics", None).unwrap().body;
        let sockets = prometheus::samples(&text, "tcptrace_process_sockets_total");
        // The accepted socket's owner is the thread that accepted it (the
        // accept(2) tracepoint works with the unit's capabilities), as the
        // client's is the thread that connected.
        let accepted = format!(r#"{{process="{me}",close="passive"}}"#);
        if sockets.iter().any(|(l, v)| *l == accepted && *v == 1.0) {
            assert!(
                !sockets
                    .iter()
                    .any(|(l, _)| l.contains(r#"process="unknown""#)),
                "{text}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sockets of {me:?} not both named:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cli.signal(libc::SIGTERM);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");
}

/// The system calls the unit's SystemCallFilter allows.
fn allowed_syscalls() -> BTreeSet<String> {
    fn expand(item: &str, out: &mut BTreeSet<String>) {
        if !item.starts_with('@') {
            out.insert(item.to_owned());
            return;
        }
        let listed = Command::new("systemd-analyze")
            .args(["syscall-filter", item])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&listed.stdout).into_owned();
        for line in text.lines().skip(1).map(str::trim) {
            if !line.is_empty() && !line.starts_with('#') {
                expand(line, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for item in unit_values("SystemCallFilter") {
        expand(&item, &mut out);
    }
    out
}

#[test]
fn the_units_syscall_filter_allows_every_call_of_a_run() {
    if !have("strace") || !have("systemd-analyze") {
        println!("note: strace or systemd-analyze not found: the syscall filter is not checked");
        return;
    }
    let dir = scratch("syscalls");
    let log = dir.join("strace.log");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut cmd = Command::new("strace");
    cmd.args(["-f", "-qq", "-o"])
        .arg(&log)
        .arg(tcptrace_binary())
        .args(daemon_args("127.0.0.1:0", &port))
        .args(["--write", dir.join("run.rec").to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    let cli = Cli::start_with(&mut cmd);
    // Everything a daemon does while it runs: a scrape, a socket, a stop.
    let _ = prometheus::get(cli.metrics_addr(), "/metrics", None).unwrap();
    drop(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    drop(listener.accept().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM to tcptrace itself, strace's child.
    let children = format!("/proc/{0}/task/{0}/children", cli.child.id());
    let tracee: i32 = std::fs::read_to_string(children)
        .unwrap()
        .split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .expect("tcptrace under strace");
    // SAFETY: kill(2) of our own grandchild.
    unsafe { libc::kill(tracee, libc::SIGTERM) };
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(20));
    assert_eq!(code, Some(0), "{stderr:#?}");
    let trace = std::fs::read_to_string(&log).unwrap();
    let called: BTreeSet<&str> = trace
        .lines()
        .filter_map(|l| {
            let call = l.split_whitespace().nth(1)?;
            let name = call.split('(').next()?;
            (call.contains('(')
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
            .then_some(name)
        })
        .collect();
    let allowed = allowed_syscalls();
    assert!(called.contains("bpf") && called.len() > 20, "{called:?}");
    // execve is strace's own launch of tcptrace (systemd's happens before
    // the filter applies). mount comes only after unshare(CLONE_NEWNS)
    // succeeded, which the unit's RestrictNamespaces=net refuses: tcptrace
    // then loads with the kernel's BTF visible to aya (a higher start-up
    // memory peak, nothing lost; see loader/limits.rs).
    let refused: Vec<&&str> = called
        .iter()
        .filter(|c| !allowed.contains(**c) && !["execve", "mount"].contains(*c))
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        refused.is_empty(),
        "SystemCallFilter= refuses {refused:?} that tcptrace calls"
    );
}

#[test]
fn the_daemonset_has_what_tcptrace_needs() {
    use serde_yaml::Value;
    let text = std::fs::read_to_string(deploy_file("tcptrace-daemonset.yaml")).unwrap();
    let docs: Vec<Value> = text
        .split("\n---\n")
        .map(|d| serde_yaml::from_str(d).expect("valid YAML"))
        .collect();
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k);
    let ds = kind("DaemonSet").expect("a DaemonSet");
    assert_eq!(ds["apiVersion"], "apps/v1");
    let namespace = ds["metadata"]["namespace"].as_str().unwrap();
    assert!(!ds["metadata"]["name"].as_str().unwrap().is_empty());
    assert_eq!(
        kind("Namespace").expect("its namespace")["metadata"]["name"],
        namespace
    );
    // The selector must match the pod template's labels.
    let selector = ds["spec"]["selector"]["matchLabels"].as_mapping().unwrap();
    let template = &ds["spec"]["template"];
    let labels = template["metadata"]["labels"].as_mapping().unwrap();
    assert!(!selector.is_empty());
    for (k, v) in selector {
        assert_eq!(
            labels.get(k),
            Some(v),
            "selector {k:?} not in the pod labels"
        );
    }
    let pod = &template["spec"];
    assert_eq!(pod["hostPID"], true, "hostPID: every process's /proc");
    assert_eq!(pod["hostNetwork"], true, "hostNetwork: the node's sockets");
    let containers = pod["containers"].as_sequence().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert!(!c["name"].as_str().unwrap().is_empty());
    assert!(!c["image"].as_str().unwrap().is_empty());
    let args: Vec<&str> = c["args"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let joined = args.join(" ");
    assert!(joined.contains("--view none"), "{joined}");
    let metrics = args[args.iter().position(|a| *a == "--metrics").unwrap() + 1];
    let port: u64 = metrics.rsplit(':').next().unwrap().parse().unwrap();
    assert!(
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|p| p["containerPort"].as_u64() == Some(port)),
        "port {port} not declared"
    );
    // The env it expands is declared.
    if let Some(var) = metrics.strip_prefix("$(").and_then(|m| m.split(')').next()) {
        assert!(
            c["env"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|e| e["name"] == var),
            "{var} not in env"
        );
    }
    // The unit's capabilities, no more, not privileged.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let drop: Vec<&str> = sc["capabilities"]["drop"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(drop, ["ALL"]);
    let added: BTreeSet<String> = sc["capabilities"]["add"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|a| format!("CAP_{}", a.as_str().unwrap()))
        .collect();
    let unit: BTreeSet<String> = unit_values("CapabilityBoundingSet").into_iter().collect();
    assert_eq!(
        added, unit,
        "the DaemonSet and the unit grant different capabilities"
    );
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    // Mounts name declared volumes, and the host paths tcptrace reads.
    let volumes: BTreeSet<&str> = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    for m in mounts {
        assert!(volumes.contains(m["name"].as_str().unwrap()), "{m:?}");
    }
    for path in ["/sys/fs/cgroup", "/sys/kernel/btf"] {
        assert!(
            mounts.iter().any(|m| m["mountPath"] == path),
            "{path} not mounted"
        );
    }
}

#[test]
fn the_alerting_rules_check() {
    if !have("promtool") {
        println!("note: promtool not found (`cargo xtask setup` installs it): rules not checked");
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(deploy_file("tcptrace-alerts.yml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
