//! Hostile conditions: a stalled reader, floods from unprivileged users, a
//! tiny ring, a table too small, odd privileges, silly flags and stray
//! signals never break tcptrace or its accounting. Each test runs the real
//! CLI against the real kernel, on its own ports, with bounded waits.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tcptrace_tests::{
    Cli, as_nobody,
    json_run::{port_of, traced_as},
    lines_of, tcptrace_binary, wait_line,
};

/// Tests that make load take turns: the smallest ring's loss bound is about
/// this test's own traffic, not the neighbours'.
static LOAD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    LOAD.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn n(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no `{key}` in {v}"))
}

/// Each line of `out` parsed: all of it must be whole lines of JSON (the
/// last one ending in its newline).
fn json_lines(out: &[u8]) -> Vec<serde_json::Value> {
    let tail = String::from_utf8_lossy(&out[out.len().saturating_sub(200)..]);
    assert!(
        out.is_empty() || out.ends_with(b"\n"),
        "expected whole lines, saw the output end in a cut one: …{tail}"
    );
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// What is left in a pipe whose writers are all gone (without waiting, should
/// one still hold it).
fn read_left(mut pipe: impl Read + std::os::fd::AsRawFd) -> Vec<u8> {
    // SAFETY: plain fcntl on our own fd.
    unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut left = Vec::new();
    if let Err(e) = pipe.read_to_end(&mut left) {
        panic!(
            "expected the end of the pipe, saw {e} after {} bytes",
            left.len()
        );
    }
    left
}

fn assert_balanced(summary: &serde_json::Value) {
    assert_eq!(
        n(summary, "produced"),
        n(summary, "received") + n(summary, "lost"),
        "events unaccounted for: {summary}"
    );
}

/// `count` loopback connections to `listener`, each closed at once; the
/// server side is accepted and closed on a thread. Bounded in time.
fn churn(listener: &TcpListener, count: usize, per_second: Option<u32>) {
    let addr = listener.local_addr().unwrap();
    let server = listener.try_clone().unwrap();
    let acceptor = std::thread::spawn(move || {
        for _ in 0..count {
            match server.accept() {
                Ok((s, _)) => drop(s),
                Err(_) => break,
            }
        }
    });
    let start = Instant::now();
    for i in 0..count {
        if let Some(rate) = per_second {
            let due = start + Duration::from_secs_f64(i as f64 / f64::from(rate));
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        drop(TcpStream::connect(addr).unwrap());
        assert!(start.elapsed() < Duration::from_secs(30), "churn too slow");
    }
    acceptor.join().unwrap();
}

#[test]
fn a_stalled_reader_does_not_stop_the_drain_and_sigterm_ends_it_promptly() {
    let _turn = take_turn();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // stdout is a pipe whose reader takes 8 KiB and stalls: it fills after
    // 64 KiB, then has room for 8 KiB more.
    let mut cli = Cli::start(
        &["--view", "stream", "--json", "--port", &port],
        Stdio::piped(),
    );
    let mut stdout = cli.child.stdout.take().unwrap();
    churn(&listener, 3000, None);
    let mut taken = vec![0; 8192];
    stdout.read_exact(&mut taken).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    cli.signal(libc::SIGTERM);
    let started = Instant::now();
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(2));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_balanced(&summary);
    assert_eq!(n(&summary, "lost"), 0, "the drain went on: {summary}");
    let dropped = n(&summary["output"], "dropped_lines");
    assert!(
        dropped > 0,
        "a stalled reader must cost output lines: {summary}"
    );
    let written = n(&summary["output"], "written_lines");
    let reported = format!("output:     {written} lines written, {dropped} lines");
    assert!(
        stderr.iter().any(|l| l.contains(&reported)),
        "expected `{reported}` in the summary, saw {stderr:#?}"
    );
    // What the reader finds once tcptrace is gone: whole lines of JSON, as
    // many as tcptrace says it wrote.
    taken.extend(read_left(stdout));
    let lines = json_lines(&taken);
    assert_eq!(
        lines.len() as u64,
        written,
        "lines in the pipe (left) against output.written_lines (right): {summary}"
    );
}

#[test]
fn an_unprivileged_signal_flood_writes_nothing() {
    let cli = Cli::start(&["--view", "stream", "--json"], Stdio::piped());
    let mut child = cli.child;
    let stdout = lines_of(child.stdout.take().unwrap());
    let cli = Cli {
        child,
        stderr: cli.stderr,
        stderr_lines: cli.stderr_lines,
    };
    // As nobody: an ignored SIGUSR1, then a handled one, sent to itself in a
    // loop for a second each.
    let script = "import os, signal, time\n\
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)\n\
        t = time.time()\n\
        while time.time() - t < 1: os.kill(os.getpid(), signal.SIGUSR1)\n\
        signal.signal(signal.SIGUSR1, lambda *a: None)\n\
        t = time.time()\n\
        while time.time() - t < 1: os.kill(os.getpid(), signal.SIGUSR1)\n\
        print(os.getpid())\n";
    let out = as_nobody(Command::new("python3").args(["-c", script]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let flooder: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    cli.signal(libc::SIGINT);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert_balanced(&summary);
    let mut signals_to_flooder = 0;
    let mut lines = 0;
    for line in stdout.iter() {
        lines += 1;
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["event"] == "signal" && v["target_pid"].as_u64() == Some(flooder) {
            signals_to_flooder += 1;
        }
    }
    assert_eq!(
        signals_to_flooder, 0,
        "signals that could not kill were reported ({lines} lines in all)"
    );
}

#[test]
fn the_smallest_ring_wakes_its_reader_in_time_at_a_thousand_connections_a_second() {
    // One ring of the smallest size, then (on two CPUs or more) one such
    // ring per CPU: each ring wakes the reader on its own.
    let min = tcptrace_common::MIN_RING_BYTES;
    for ring in [min, 2 * min] {
        smallest_rings_keep_up(ring);
    }
}

fn smallest_rings_keep_up(ring_bytes: u32) {
    let _turn = take_turn();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let ring = ring_bytes.to_string();
    let cli = Cli::start(
        &["--ring-size", &ring, "--port", &port, "--json"],
        Stdio::null(),
    );
    churn(&listener, 2000, Some(1000));
    std::thread::sleep(Duration::from_millis(300));
    cli.signal(libc::SIGINT);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert_balanced(&summary);
    let (produced, lost) = (n(&summary, "produced"), n(&summary, "lost"));
    assert!(produced >= 2000 * 8, "{summary}");
    // The smallest ring holds about a tenth of a second of this: the
    // kernel wakes the reader when an eighth of it is waiting, and the
    // reader thread's scheduling delay on a loaded 2-vCPU machine (this
    // test, its server and a debug build share it) must fit in the rest.
    // (16 KiB, the old minimum, lost a few percent here under load.)
    assert!(
        lost * 100 < produced,
        "expected under 1 % lost with --ring-size {ring}, saw {lost} of {produced}: {summary}"
    );
}

#[test]
fn a_full_table_reports_each_socket_once() {
    let _turn = take_turn();
    const HELD: usize = 1000;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let cli = Cli::start(
        &["--max-sockets", "64", "--port", &port, "--json"],
        Stdio::null(),
    );
    // Hold HELD connections open, then close them all.
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..HELD {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        held.push((c, s));
    }
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    cli.signal(libc::SIGINT);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert_balanced(&summary);
    let seen = stderr
        .iter()
        .find_map(|l| l.trim().strip_prefix("sockets:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no sockets line: {stderr:#?}"));
    // Both ends of each connection, each exactly once (the listener began
    // listening before tcptrace started and is still open: no event).
    assert_eq!(seen, 2 * HELD, "{stderr:#?}");
}

/// tcptrace as `nobody` with only the capabilities `caps` (`+bpf,+perfmon`).
fn as_nobody_with(caps: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={caps}"))
        .arg(format!("--ambient-caps={caps}"))
        .arg("--")
        .arg(tcptrace_binary());
    cmd
}

const NOT_FOLLOWED: &str = "accept(2) is not followed";

#[test]
fn bpf_and_perfmon_capabilities_are_enough_without_root() {
    let out = as_nobody_with("+bpf,+perfmon")
        .args(["--duration", "1", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tracing TCP"), "{stderr}");
    assert!(stderr.contains("tcptrace-summary"), "{stderr}");
    json_lines(&out.stdout);
    // tracefs is mounted, but root's alone: the warning names what is
    // missing, not a mount that is there.
    let warning = stderr
        .lines()
        .find(|l| l.contains(NOT_FOLLOWED))
        .unwrap_or_else(|| panic!("expected `{NOT_FOLLOWED}` (tracefs is root's), saw {stderr}"));
    assert!(
        warning.contains("CAP_DAC_READ_SEARCH") && !warning.contains("not mounted"),
        "expected the missing CAP_DAC_READ_SEARCH named (and no `not mounted`), saw {warning}"
    );
}

#[test]
fn with_dac_read_search_too_a_user_that_is_not_root_follows_accept() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cmd = as_nobody_with("+bpf,+perfmon,+dac_read_search");
    cmd.args(["--view", "both", "--port", &port.to_string()]);
    let mut client_port = 0;
    let (lines, summary, stderr) = traced_as(&mut cmd, || {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client_port = client.local_addr().unwrap().port();
        let (server, _) = listener.accept().unwrap();
        drop((client, server));
    });
    assert!(
        !stderr.iter().any(|l| l.contains(NOT_FOLLOWED)),
        "expected accept(2) followed, saw {stderr:#?}"
    );
    // This process accepted: the stream's accept event and the server
    // socket's `accepted` say so.
    let me = u64::from(std::process::id());
    let ours = |s: &serde_json::Value| {
        port_of(&s["local"]) == port && port_of(&s["remote"]) == client_port
    };
    let accept = lines
        .iter()
        .find(|l| l["event"] == "accept" && ours(l))
        .unwrap_or_else(|| {
            panic!("expected an accept event for :{port} ← :{client_port}; {summary}")
        });
    assert_eq!(accept["owner"]["tgid"].as_u64(), Some(me), "{accept}");
    let socket = lines
        .iter()
        .find(|l| l["type"] == "socket" && ours(&l["socket"]))
        .unwrap_or_else(|| {
            panic!("expected the server socket :{port} ← :{client_port}; {summary}")
        });
    assert_eq!(
        socket["socket"]["accepted"]["by"]["tgid"].as_u64(),
        Some(me),
        "expected accepted by this process ({me}), saw {socket}"
    );
}

#[test]
fn silly_flags_get_a_clear_error_and_no_panic() {
    for (args, expect) in [
        (&["--duration", "18446744073709551615"][..], "31536000"),
        (&["--duration", "-1"][..], "31536000"),
        (&["--ring-size", "1099511627776"][..], "1073741824"),
        (&["--ring-size", "-1"][..], "not a number of bytes"),
        (&["--max-sockets", "-3"][..], "-3"),
        (
            &["--write", "x.rec", "--rotate-count", "3"][..],
            "--rotate-size",
        ),
        (&["--write", "x.rec", "--rotate-size", "0"][..], "0"),
        (
            &["--read", "a.rec", "--write", "b.rec"][..],
            "cannot be used with",
        ),
        (
            &["--read", "a.rec", "--follow", "--pid", "1"][..],
            "cannot be used with",
        ),
    ] {
        let out = Command::new(tcptrace_binary()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}: stdout");
    }
}

#[test]
fn recordings_that_cannot_be_written_or_read_get_a_clear_error_before_tracing() {
    for (args, expect) in [
        (
            &["--write", "/proc/tcptrace.rec"][..],
            "--write: cannot create the recording",
        ),
        (&["--read", "/nonexistent/t.rec"][..], "No such file"),
        (&["--read", "/etc/hostname"][..], "not a tcptrace recording"),
        (&["--read", "/etc/hostname", "-"][..], "stdin"),
    ] {
        let out = Command::new(tcptrace_binary()).args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expect), "{args:?}: {stderr}");
        assert!(!stderr.contains("tracing TCP"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{args:?}: stdout");
    }
}

#[test]
fn connections_accepted_while_it_stops_leave_its_counts_balanced() {
    let _turn = take_turn();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // Every program must be detached before the last drain, the accept
    // program on the syscall tracepoints too: accepts that go on while it
    // stops must not make events that nobody reads.
    let cli = Cli::start(&["--json"], Stdio::null());
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (code, summary, stderr) = std::thread::scope(|s| {
        s.spawn(|| {
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(10)
            {
                churn(&listener, 20, None);
            }
        });
        std::thread::sleep(Duration::from_millis(200));
        cli.signal(libc::SIGINT);
        let exit = cli.exit_within(Duration::from_secs(5));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        exit
    });
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert_balanced(&summary);
}

#[test]
fn sighup_and_sigquit_stop_it_cleanly_with_a_summary_and_sigusr1_does_not() {
    for sig in [libc::SIGHUP, libc::SIGQUIT] {
        let cli = Cli::start(&["--json"], Stdio::null());
        cli.signal(sig);
        let (code, summary, stderr) = cli.exit_within(Duration::from_secs(5));
        assert_eq!(code, Some(0), "signal {sig}: {stderr:#?}");
        assert_balanced(&summary);
    }
    let mut cli = Cli::start(&["--json"], Stdio::null());
    cli.signal(libc::SIGUSR1);
    assert!(
        wait_line(&cli.stderr, &mut cli.stderr_lines, |l| l
            .contains("summary so far")),
        "{:#?}",
        cli.stderr_lines
    );
    assert!(
        cli.child.try_wait().unwrap().is_none(),
        "SIGUSR1 stopped it"
    );
    cli.signal(libc::SIGINT);
    let (code, _, stderr) = cli.exit_within(Duration::from_secs(5));
    assert_eq!(code, Some(0), "{stderr:#?}");
}

#[test]
fn a_closed_pipe_ends_it_even_on_a_quiet_host() {
    // `tcptrace --json | head -1` on a host where nothing happens.
    let mut cli = Cli::start(&["--json", "--port", "9"], Stdio::piped());
    let mut stdout = cli.child.stdout.take().unwrap();
    let mut buf = [0u8; 1];
    // Nothing to read: close our end as `head` would.
    let _ = stdout.read(&mut buf[..0]);
    drop(stdout);
    let (code, summary, stderr) = cli.exit_within(Duration::from_secs(3));
    assert_eq!(code, Some(0), "{stderr:#?}");
    assert_balanced(&summary);
}

#[test]
fn too_few_file_descriptors_get_a_clear_message() {
    for limit in [16u64, 40] {
        let mut cmd = Command::new(tcptrace_binary());
        cmd.args(["--duration", "1"]);
        // SAFETY: only async-signal-safe syscalls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{limit}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "", "{limit}: stdout");
        assert!(
            stderr.contains("ran out of file descriptors"),
            "{limit}: {stderr}"
        );
        assert!(stderr.contains("ulimit -n"), "{limit}: {stderr}");
        assert!(!stderr.contains("verifier"), "{limit}: {stderr}");
        assert_eq!(
            stderr.matches("Too many open files").count(),
            1,
            "each cause once: {stderr}"
        );
    }
}
