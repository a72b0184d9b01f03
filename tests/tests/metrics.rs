//! `--metrics` against the real kernel: a real Prometheus server scrapes
//! tcptrace every second while the test makes real connections (refused,
//! SO_LINGER 0, closed unread, a killed child, processes with hostile
//! names) and its query API must show them; the per-process series stay
//! bounded with 200 process names; bad addresses fail before anything is
//! loaded; and the headless daemon runs until SIGTERM.
//!
//! Each tcptrace here traces only a port of the test's own (`--port`), so
//! other tests' traffic never reaches its counters.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tcptrace_tests::{
    Cli, as_nobody, daemon_args,
    prometheus::{self, Prometheus},
    tcptrace_binary,
};

/// A loopback port held by a socket that is bound but not listening: a
/// SYN to it is refused (the kernel's NO_SOCKET reset), and no one else can
/// take the port until it listens.
struct Reserved {
    fd: OwnedFd,
    port: u16,
}

impl Reserved {
    fn new() -> Reserved {
        // SAFETY: plain socket calls on a descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from(Ipv4Addr::LOCALHOST).to_be();
            let len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len), 0);
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut got_len = len;
            assert_eq!(
                libc::getsockname(fd.as_raw_fd(), (&raw mut got).cast(), &mut got_len),
                0
            );
            Reserved {
                fd,
                port: u16::from_be(got.sin_port),
            }
        }
    }

    fn listen(self) -> TcpListener {
        // SAFETY: listen on our own bound socket.
        assert_eq!(unsafe { libc::listen(self.fd.as_raw_fd(), 128) }, 0);
        TcpListener::from(self.fd)
    }
}

fn linger_zero(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid `linger` of the size given, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
}

/// tcptrace as a headless daemon on `port`, serving metrics on a port the
/// kernel picks. Every tcptrace these tests start ends by itself within
/// `--duration`, should a failed test leave it behind.
fn daemon(port: u16, extra: &[&str]) -> Cli {
    let port = port.to_string();
    let mut args = daemon_args("127.0.0.1:0", &port).to_vec();
    args.extend_from_slice(extra);
    Cli::start(&args, Stdio::null())
}

/// A direct scrape in the text format (what curl and promtool see).
fn scrape(addr: SocketAddr) -> String {
    let r = prometheus::get(addr, "/metrics", None).expect("scraping tcptrace");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain; version=0.0.4")),
        "{r:?}"
    );
    r.body
}

/// Process names that try to break the exposition format, as bytes for
/// prctl(PR_SET_NAME) (at most 15: the kernel keeps no more).
const HOSTILE: [&[u8]; 6] = [
    b"q\"uote\"",
    b"back\\slash\\",
    b"new\nline",
    b"\x1b[31mred\x1b[0m",
    b"{x=\"1\"} 2 #",
    b"\xff\xfebad-utf8",
];

/// A child that renames itself `name`, connects to `port`, and exits.
fn connect_as(name: &[u8], port: u16) -> std::process::Child {
    let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
    Command::new("python3")
        .args([
            "-c",
            "import ctypes,socket,sys\n\
             ctypes.CDLL(None).prctl(15, ctypes.c_char_p(bytes.fromhex(sys.argv[1])), 0, 0, 0)\n\
             socket.create_connection(('127.0.0.1', int(sys.argv[2]))).close()",
            &hex,
            &port.to_string(),
        ])
        .spawn()
        .unwrap()
}

#[test]
fn prometheus_scrapes_the_paths_the_test_makes() {
    let reserved = Reserved::new();
    let port = reserved.port;
    let cli = daemon(port, &[]);
    let addr = cli.metrics_addr();
    let alerts =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tcptrace-alerts.yml");
    let rules = std::fs::read_to_string(&alerts).unwrap();
    let Some(prom) = Prometheus::start(addr, &[alerts]) else {
        return;
    };
    prom.wait_value(r#"up{job="tcptrace"}"#, Duration::from_secs(30), |v| {
        v == 1.0
    });

    // Refused: nobody listens on the port yet.
    const REFUSED: usize = 5;
    let no_socket = r#"tcptrace_resets_sent_total{reason="NO_SOCKET"}"#;
    let before = prom.value(no_socket);
    for _ in 0..REFUSED {
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
    }
    let grown = prom.wait_value(no_socket, Duration::from_secs(30), |v| {
        v >= before + REFUSED as f64
    });
    assert_eq!(
        grown - before,
        REFUSED as f64,
        "one NO_SOCKET reset per refused connect"
    );
    let refused = r#"tcptrace_sockets_total{open="no_socket",close="refused"}"#;
    assert_eq!(prom.value(refused), REFUSED as f64);

    let listener = reserved.listen();
    let mut buf = [0u8; 1];
    // SO_LINGER 0: the server aborts with an RST (TCP_STATE).
    let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (s, _) = listener.accept().unwrap();
    linger_zero(&s);
    drop(s);
    let _ = (&c).read(&mut buf);
    drop(c);
    // Closed with unread data: TCP_ABORT_ON_CLOSE.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (s, _) = listener.accept().unwrap();
    c.write_all(b"never read").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    drop(s);
    let _ = (&c).read(&mut buf);
    drop(c);
    // A child connected to us, SIGKILLed.
    let mut child = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,time\ns=socket.create_connection(('127.0.0.1',{port}))\n\
                 print('up',flush=True)\ntime.sleep(30)"
            ),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (s, _) = listener.accept().unwrap();
    let mut up = [0u8; 3];
    child.stdout.take().unwrap().read_exact(&mut up).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = (&s).read(&mut buf);
    drop(s);
    // Processes whose names try to break the format.
    for name in HOSTILE {
        let mut child = connect_as(name, port);
        let (s, _) = listener.accept().unwrap();
        assert!(child.wait().unwrap().success());
        drop(s);
    }

    let limit = Duration::from_secs(30);
    let sent = |reason: &str| format!(r#"tcptrace_resets_sent_total{{reason="{reason}"}}"#);
    prom.wait_value(&sent("TCP_STATE"), limit, |v| v == 1.0);
    prom.wait_value(&sent("TCP_ABORT_ON_CLOSE"), limit, |v| v == 1.0);
    prom.wait_value(
        r#"tcptrace_resets_received_total{state="ESTABLISHED"}"#,
        limit,
        |v| v >= 2.0,
    );
    prom.wait_value(
        r#"tcptrace_closes_by_signal_total{signal="SIGKILL"}"#,
        limit,
        |v| v == 1.0,
    );
    prom.wait_value(
        r#"sum(tcptrace_handshake_seconds_count{side="client"})"#,
        limit,
        |v| v >= 3.0 + HOSTILE.len() as f64,
    );
    // Prometheus ingested every hostile name, byte for byte as the kernel
    // keeps it (invalid UTF-8 replaced, as everywhere in tcptrace).
    let expected: Vec<String> = HOSTILE
        .iter()
        .map(|n| String::from_utf8_lossy(&n[..n.len().min(15)]).into_owned())
        .collect();
    let deadline = Instant::now() + limit;
    loop {
        let seen: Vec<String> = prom
            .query("tcptrace_process_sockets_total")
            .into_iter()
            .filter_map(|(labels, _)| Some(labels.get("process")?.as_str()?.to_owned()))
            .collect();
        let missing: Vec<&String> = expected.iter().filter(|e| !seen.contains(e)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "names missing in Prometheus: {missing:?}; seen {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Health: produced = received + lost, all of it received here.
    let produced = prom.value("tcptrace_events_produced_total");
    assert!(produced > 0.0);
    assert_eq!(prom.value("tcptrace_events_lost_total"), 0.0);
    // The rings' merge exports its out-of-order count from the start.
    assert_eq!(
        prom.query("tcptrace_events_late_total").len(),
        1,
        "no tcptrace_events_late_total series"
    );
    // Records are only as long as what they hold: below 152 bytes each.
    let received = prom.value("tcptrace_events_received_total");
    let bytes = prom.value("tcptrace_events_received_bytes_total");
    assert!(
        received > 0.0 && bytes >= 32.0 * received && bytes < 152.0 * received,
        "{bytes} bytes in {received} events"
    );
    assert!(prom.value("tcptrace_cpu_seconds_total") > 0.0);
    assert!(prom.value("tcptrace_ring_size_bytes") > 0.0);

    // deploy/'s alerting rules evaluate against what tcptrace exports.
    let deadline = Instant::now() + limit;
    loop {
        let rules = prom.rules();
        let ok = !rules.is_empty() && rules.iter().all(|(_, health, _)| health == "ok");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "alerting rules: {rules:?}");
        std::thread::sleep(Duration::from_millis(250));
    }

    // The text format passes promtool, hostile names and all.
    let text = scrape(addr);
    // And the rules name metrics that exist (an absent one would evaluate
    // "ok" to nothing).
    for name in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if name.starts_with("tcptrace_") {
            assert!(
                !prometheus::samples(&text, name).is_empty(),
                "the alerting rules use {name}, which tcptrace does not export"
            );
        }
    }
    if let Some(problems) = prometheus::promtool_problems(&text) {
        panic!("promtool check metrics: {problems}\n{text}");
    }
    // OpenMetrics, as Prometheus asked for it, ends as the format says.
    let om = prometheus::get(addr, "/metrics", Some("application/openmetrics-text")).unwrap();
    assert!(om.body.ends_with("# EOF\n"));
    assert!(prom.log().contains("Server is ready"), "{}", prom.log());
    drop(prom);
    cli.signal(libc::SIGTERM);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert_eq!(summary["lost"], 0);
}

#[test]
fn per_process_series_stay_within_the_bound_with_200_names() {
    const PROCESSES: usize = 200;
    const K: usize = tcptrace::metrics::DEFAULT_MAX_SERIES;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cli = daemon(port, &[]);
    let addr = cli.metrics_addr();
    // The kernel names a process after the file it executed: a symlink to
    // bash named n000 … n199 runs as n000 … n199.
    let dir = std::env::temp_dir().join(format!("tcptrace-names-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let server = listener.try_clone().unwrap();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..PROCESSES {
            if server.accept().is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    for batch in (0..PROCESSES).collect::<Vec<_>>().chunks(25) {
        let children: Vec<_> = batch
            .iter()
            .map(|i| {
                let link = dir.join(format!("n{i:03}"));
                std::os::unix::fs::symlink("/bin/bash", &link).unwrap();
                Command::new(&link)
                    .args(["-c", &format!("exec 3<>/dev/tcp/127.0.0.1/{port}")])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success());
        }
        assert!(start.elapsed() < Duration::from_secs(60), "too slow");
    }
    acceptor.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);

    // Every client and server socket counted once, under at most K + 1
    // process names.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(addr);
        let counted: f64 = prometheus::samples(&text, "tcptrace_process_sockets_total")
            .iter()
            .map(|(_, v)| v)
            .sum();
        if counted >= (2 * PROCESSES) as f64 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{counted} sockets counted:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    for family in [
        "tcptrace_process_sockets_total",
        "tcptrace_process_resets_sent_total",
    ] {
        let names: std::collections::BTreeSet<&str> = prometheus::samples(&text, family)
            .into_iter()
            .filter_map(|(labels, _)| labels.split('"').nth(1))
            .collect();
        assert!(names.len() <= K + 1, "{family}: {} names", names.len());
    }
    let other: f64 = prometheus::samples(&text, "tcptrace_process_sockets_total")
        .iter()
        .filter(|(l, _)| l.contains(r#"process="other""#))
        .map(|(_, v)| v)
        .sum();
    assert!(
        other >= (PROCESSES - K) as f64,
        "{other} under other:\n{text}"
    );
    let overflow = prometheus::samples(&text, "tcptrace_metrics_label_overflow_total");
    assert!(
        overflow
            .iter()
            .any(|(l, v)| l.contains(r#"label="process""#) && *v == other),
        "{overflow:?}"
    );
    if let Some(problems) = prometheus::promtool_problems(&text) {
        panic!("promtool check metrics: {problems}");
    }
    cli.signal(libc::SIGTERM);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");
}

/// Runs tcptrace to its exit (at most 10 s): exit code and stderr.
fn fails(args: &[&str], nobody: bool) -> (Option<i32>, String) {
    let mut cmd = Command::new(tcptrace_binary());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    if nobody {
        as_nobody(&mut cmd);
    }
    let mut child = cmd.stderr(Stdio::piped()).spawn().unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("tcptrace {args:?} did not fail within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Nothing was attached: it never said it was tracing.
    assert!(!stderr.contains("tracing TCP"), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    (out.status.code(), stderr)
}

#[test]
fn bad_metrics_addresses_fail_before_anything_is_loaded() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let in_use = taken.local_addr().unwrap().to_string();
    let (code, err) = fails(&["--view", "none", "--metrics", &in_use], false);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("in use") && err.contains(&in_use), "{err}");

    for bad in ["127.0.0.1", "nonsense:9464", "127.0.0.1:99999", "localhost"] {
        let (code, err) = fails(&["--metrics", bad], false);
        assert_eq!(code, Some(2), "{bad}: {err}");
        assert!(err.contains("127.0.0.1:9464"), "{bad}: {err}");
    }

    let (code, err) = fails(&["--view", "none"], false);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("--metrics") && err.contains("--write"),
        "{err}"
    );

    // A privileged port, as a user: refused for the port, before the
    // missing BPF privileges are even looked at.
    let first: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    if first <= 1 {
        println!("note: ip_unprivileged_port_start is {first}: no privileged port to try");
    } else {
        let addr = format!("127.0.0.1:{}", first.min(81) - 1);
        let (code, err) = fails(&["--view", "none", "--metrics", &addr], true);
        assert_eq!(code, Some(1), "{err}");
        assert!(
            err.contains("privileged") && err.contains("CAP_NET_BIND_SERVICE"),
            "{err}"
        );
        assert!(!err.contains("CAP_BPF"), "the port is checked first: {err}");
    }

    // A non-loopback address given explicitly is served, with a warning.
    let port = Reserved::new().port.to_string();
    let cli = Cli::start(&daemon_args("0.0.0.0:0", &port), Stdio::null());
    assert!(
        cli.stderr_lines
            .iter()
            .any(|l| l.contains("warning") && l.contains("beyond this host")),
        "{:#?}",
        cli.stderr_lines
    );
    let served = SocketAddr::from((Ipv4Addr::LOCALHOST, cli.metrics_addr().port()));
    assert!(scrape(served).contains("tcptrace_build_info"));
    cli.signal(libc::SIGTERM);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");
}

#[test]
fn the_daemon_needs_no_terminal_and_runs_until_sigterm() {
    let port = Reserved::new().port.to_string();
    // As `nohup setsid tcptrace … </dev/null >/dev/null &` leaves it: no
    // terminal, SIGHUP ignored.
    let mut cmd = Command::new(tcptrace_binary());
    cmd.args(daemon_args("127.0.0.1:0", &port))
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    // SAFETY: async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut cli = Cli::start_with(&mut cmd);
    let addr = cli.metrics_addr();
    cli.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        cli.child.try_wait().unwrap().is_none(),
        "SIGHUP ignored at start must stay ignored"
    );
    assert!(scrape(addr).contains("tcptrace_sockets_tracked"));
    cli.signal(libc::SIGTERM);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert!(summary["produced"].is_u64(), "{summary}");

    // Without nohup, SIGHUP stops it cleanly, as INT and TERM do.
    let cli = daemon(Reserved::new().port, &[]);
    cli.signal(libc::SIGHUP);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");

    // Recording only, no metrics: a daemon too.
    let file = std::env::temp_dir().join(format!("tcptrace-daemon-{}.rec", std::process::id()));
    let port = Reserved::new().port.to_string();
    let cli = Cli::start(
        &[
            "--view",
            "none",
            "--duration",
            "180",
            "--write",
            file.to_str().unwrap(),
            "--port",
            &port,
        ],
        Stdio::null(),
    );
    cli.signal(libc::SIGTERM);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert!(
        summary["recording"]["bytes"].as_u64() > Some(0),
        "{summary}"
    );
    let _ = std::fs::remove_file(&file);
}
