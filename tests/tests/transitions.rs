//! The live transition stream on the real kernel: exact state sequences of
//! real loopback sockets, refused connects, ring-buffer overflow accounting,
//! and the CLI's behaviour without privileges.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
};

use tcptrace::loader::TraceOptions;
use tcptrace_tests::{
    State::*, Trace, as_nobody, find_state, life_from, lines_of, tcptrace_binary, touches,
    wait_line,
};

/// `n` connections to `listener`, each accepted and closed at once.
fn open_and_close(listener: &TcpListener, n: usize) {
    let addr = listener.local_addr().unwrap();
    for _ in 0..n {
        let c = TcpStream::connect(addr).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop(c);
        drop(s);
    }
}

/// A client that closes first, a server that closes after reading EOF.
fn client_closes_first(listener: TcpListener) -> (u16, u16) {
    let server_port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (mut served, _) = listener.accept().unwrap();
    client.write_all(b"ping").unwrap();
    drop(client);
    let mut sink = Vec::new();
    served.read_to_end(&mut sink).unwrap();
    assert_eq!(sink, b"ping");
    drop(served);
    drop(listener);
    (client_port, server_port)
}

fn expect_handshake_and_close(listen_on: &str) {
    // The listener's own CLOSE → LISTEN must be seen: trace a port that was
    // free a moment ago, then listen on it.
    let port = closed_port(listen_on);
    let mut trace = Trace::start(&[port.port()]);
    let listener = TcpListener::bind(port).unwrap();
    let (client, server) = client_closes_first(listener);
    let is_client = |l: SocketAddr, r: SocketAddr| r.port() == server && l.port() != server;
    let is_child = |l: SocketAddr, r: SocketAddr| l.port() == server && r.port() == client;
    let is_listener = |l: SocketAddr, _| l.port() == server;

    let (client_life, child_life, listener_life) = trace.wait_for(
        "client, server child and listener to reach CLOSE",
        |r| touches(r, server),
        |t| {
            let lives = [
                find_state(&t.records, Close, SynSent, is_client),
                find_state(&t.records, Listen, SynRecv, is_child),
                find_state(&t.records, Close, Listen, is_listener),
            ]
            .map(|start| start.map(|i| life_from(&t.records, i)));
            match lives {
                [Some(c), Some(s), Some(l)]
                    if [&c, &s, &l]
                        .iter()
                        .all(|life| life.last().is_some_and(|t| t.1 == Close)) =>
                {
                    Some((c, s, l))
                }
                _ => None,
            }
        },
    );
    assert_eq!(
        client_life,
        [
            (Close, SynSent),
            (SynSent, Established),
            (Established, FinWait1),
            (FinWait1, FinWait2),
            (FinWait2, Close)
        ]
    );
    assert_eq!(
        child_life,
        [
            (Listen, SynRecv),
            (SynRecv, Established),
            (Established, CloseWait),
            (CloseWait, LastAck),
            (LastAck, Close)
        ]
    );
    assert_eq!(listener_life, [(Close, Listen), (Listen, Close)]);
}

#[test]
fn ipv4_client_closes_first_shows_both_exact_sequences() {
    expect_handshake_and_close("127.0.0.1:0");
}

#[test]
fn ipv6_client_closes_first_shows_both_exact_sequences() {
    expect_handshake_and_close("[::1]:0");
}

/// A port nobody listens on: bind one, note it, close it.
fn closed_port(addr: &str) -> SocketAddr {
    let l = TcpListener::bind(addr).unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

#[test]
fn a_refused_connect_goes_syn_sent_to_close() {
    let target = closed_port("127.0.0.1:0");
    let mut trace = Trace::start(&[target.port()]);
    let err = TcpStream::connect(target).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    let port = target.port();
    let life = trace.wait_for(
        "the refused client to reach CLOSE",
        |r| touches(r, port),
        |t| {
            let start = find_state(&t.records, Close, SynSent, |_, r| r.port() == port)?;
            let life = life_from(&t.records, start);
            (life.last()?.1 == Close).then_some(life)
        },
    );
    assert_eq!(life, [(Close, SynSent), (SynSent, Close)]);
}

#[test]
fn a_full_ring_buffer_counts_every_lost_event() {
    // The smallest ring (256 KiB) holds at most 6,500 records (the
    // shortest, 40 bytes; about 2,400 of this mix): a burst of 400
    // connections (some 5,000 events, 550 KB) without draining overflows it.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut trace = Trace::start_with(
        TraceOptions {
            ring_bytes: tcptrace_common::MIN_RING_BYTES,
            ..TraceOptions::default()
        },
        &[addr.port()],
    );
    open_and_close(&listener, 400);
    let c = trace.stop();
    assert!(c.lost > 0, "expected losses with the smallest ring: {c:?}");
    assert!(c.received > 0, "{c:?}");
    assert_eq!(
        c.produced,
        c.received + c.lost,
        "events unaccounted for: {c:?}"
    );
    assert_eq!(c.undecodable, 0, "{c:?}");
}

#[test]
fn the_kernel_writes_each_record_only_as_long_as_what_it_holds() {
    // Without filters a destroy is its first 32 bytes and a state change
    // leaves the owner (and, once its life has started, the tail) off:
    // 80-112 bytes of the 152. Whole records would average 152.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut trace = Trace::start(&[addr.port()]);
    open_and_close(&listener, 100);
    let c = trace.stop();
    assert_eq!(c.lost, 0, "{c:?}");
    assert!(
        c.received >= 100 * 10,
        "fewer events than 100 connections make: {c:?}"
    );
    let average = c.received_bytes as f64 / c.received as f64;
    let whole = std::mem::size_of::<tcptrace_common::Event>() as f64;
    assert!(
        (32.0..whole * 0.85).contains(&average),
        "records average {average:.1} bytes, expected 32 to {:.0} (whole events are {whole}): {c:?}",
        whole * 0.85
    );
}

#[test]
fn without_privileges_the_cli_exits_non_zero_and_says_why() {
    let binary = tcptrace_binary();
    let mut cmd = Command::new(&binary);
    cmd.args(["--duration", "1"]);
    let out = as_nobody(&mut cmd).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "exited 0 without privileges: {stderr}"
    );
    assert!(stderr.contains("needs root"), "unclear message: {stderr}");
    assert!(stderr.contains("CAP_BPF"), "unclear message: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn the_cli_streams_json_transitions_and_a_balanced_summary() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut child = Command::new(tcptrace_binary())
        .args(["--view", "stream", "--json", "--port", &port.to_string()])
        .args(["--duration", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let stdout = lines_of(child.stdout.take().unwrap());
    let mut stderr_lines = Vec::new();
    let mut stdout_lines = Vec::new();
    let ready = wait_line(&stderr, &mut stderr_lines, |l| l.contains("tracing"));
    if !ready {
        let _ = child.kill();
        panic!("tcptrace never said it was tracing: {stderr_lines:#?}");
    }

    let client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (served, _) = listener.accept().unwrap();
    client.shutdown(Shutdown::Write).unwrap();
    drop(client);
    drop(served);

    // Both ends of our connection reach CLOSE, then stop it as a user would.
    let mut closes = 0;
    let both_closed = wait_line(&stdout, &mut stdout_lines, |l| {
        closes += usize::from(l.contains("\"new\":\"CLOSE\"") && l.contains("\"event\":\"state\""));
        closes >= 2
    });
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    stdout_lines.extend(stdout.iter());
    stderr_lines.extend(stderr.iter());
    assert!(
        both_closed,
        "no CLOSE for both ends; stdout: {stdout_lines:#?}"
    );
    assert!(
        status.success(),
        "exit {status:?}; stderr: {stderr_lines:#?}"
    );
    let stdout = stdout_lines.join("\n");

    let transitions: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let client_path: Vec<(String, String)> = transitions
        .iter()
        .filter(|t| {
            t["event"] == "state"
                && t["remote"]
                    .as_str()
                    .is_some_and(|r| r.ends_with(&format!(":{port}")))
        })
        .map(|t| {
            (
                t["old"].as_str().unwrap().to_owned(),
                t["new"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        client_path.first(),
        Some(&("CLOSE".to_owned(), "SYN_SENT".to_owned())),
        "client transitions: {client_path:?}\nstdout:\n{stdout}"
    );
    assert!(
        client_path.contains(&("SYN_SENT".to_owned(), "ESTABLISHED".to_owned())),
        "{client_path:?}"
    );
    // Every event is for our port: the --port filter ran in the kernel.
    for t in &transitions {
        if let (Some(l), Some(r)) = (t["local"].as_str(), t["remote"].as_str()) {
            let ours = |a: &str| a.ends_with(&format!(":{port}"));
            assert!(ours(l) || ours(r), "event for another port: {t}");
        }
    }
    let summary = stderr_lines
        .iter()
        .find_map(|l| l.strip_prefix("tcptrace-summary "))
        .unwrap_or_else(|| panic!("no summary line: {stderr_lines:#?}"));
    let summary: serde_json::Value = serde_json::from_str(summary).unwrap();
    let n = |k: &str| summary[k].as_u64().unwrap();
    assert_eq!(n("produced"), n("received") + n("lost"), "{summary}");
    assert!(n("received") >= client_path.len() as u64, "{summary}");
}
