//! Connects that fail, reproduced for real on the running kernel, and the
//! classification tcptrace gives them: a connect refused (with the host's
//! socketless RST that refused it) and a handshake timeout, over IPv4 and
//! IPv6. The listener's side of failed handshakes: `handshake_failures.rs`.
//!
//! The helpers it shares with `orderly_closes.rs` and `resets.rs`, and how
//! each test keeps to its own sockets: `tcptrace_tests::paths`.

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use tcptrace::{
    classify::{Close, Open, Side, Verdict},
    tracker::{Role, SocketLife},
};
use tcptrace_tests::{
    State as S,
    paths::{Ns, V4, V6, assert_syns_dropped_here, input_rule, path, retrying, whole},
    reserve_port, trace,
};

/// A connect that never established, every event of it seen.
fn assert_connect_failed(life: &SocketLife, verdict: &Verdict) {
    assert!(verdict.incomplete.is_empty(), "{verdict:#?}");
    assert_eq!(
        verdict.open,
        Open::Active {
            established: false,
            handshake_ns: None
        },
        "{life:#?}"
    );
}

fn refused(ip: IpAddr) {
    // A port nobody listens on: bind one, note it, close it.
    let target = TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap();
    let port = target.port();
    let mut trace = trace(port);
    let err = TcpStream::connect(target).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");

    let (c, cv) = trace.wait_life_where("the refused client to finish", &[port], |l| {
        l.role == Role::Client && l.remote == target
    });
    assert_connect_failed(&c, &cv);
    match &cv.close {
        Close::Refused {
            side: Side::Client,
            reason: Some(r),
        } => assert_eq!(r.name.as_deref(), Some("NO_SOCKET"), "{cv:#?}"),
        other => panic!("not refused with the peer's NO_SOCKET: {other:?}\n{c:#?}"),
    }
    assert_eq!(
        path(&c),
        [(S::Close, S::SynSent), (S::SynSent, S::Close)],
        "{c:#?}"
    );
    assert_eq!(c.resets_received.len(), 1, "{c:#?}");
    assert_eq!(c.resets_received[0].state, Some(S::SynSent), "{c:#?}");
    assert!(
        c.closed_by.is_none(),
        "an RST closed it, not a process: {c:#?}"
    );
    assert_ne!(c.local.port(), 0, "{c:#?}");

    // The host's answer to the SYN: an RST sent with no socket.
    let (r, rv) = trace.wait_life_where("the socketless RST", &[port], |l| {
        l.socketless && l.local == target
    });
    assert_eq!(r.remote, c.local, "the RST went to another client: {r:#?}");
    assert_eq!(r.skaddr, 0, "{r:#?}");
    assert_eq!(rv.open, Open::NoSocket, "{rv:#?}");
    match &rv.close {
        Close::Refused {
            side: Side::Server,
            reason: Some(reason),
        } => assert_eq!(reason.name.as_deref(), Some("NO_SOCKET"), "{rv:#?}"),
        other => panic!("not a socketless refusal: {other:?}\n{r:#?}"),
    }
    assert_eq!(r.resets_sent.len(), 1, "{r:#?}");
}

#[test]
fn a_connect_to_a_closed_ipv4_port_is_refused_on_both_sides() {
    refused(V4);
}

#[test]
fn a_connect_to_a_closed_ipv6_port_is_refused_on_both_sides() {
    refused(V6);
}

fn handshake_timeout(ip: IpAddr) {
    let lives = retrying("handshake timeout", || {
        let (_reserved, port) = reserve_port(ip);
        let mut trace = trace(port);
        let ns = Ns::new("synto");
        // One SYN retransmit, then give up: about 3 s.
        ns.sysctl("net.ipv4.tcp_syn_retries", "1");
        input_rule(&ns, &format!("tcp dport {port} drop"));
        let target = SocketAddr::new(ip, port);
        let (err, took) = ns.enter(move || {
            let start = Instant::now();
            // The cap only bounds the test should the sysctl not apply; the
            // kernel gives up first, and says so with ETIMEDOUT.
            let err = TcpStream::connect_timeout(&target, Duration::from_secs(9)).unwrap_err();
            (err, start.elapsed())
        });
        assert_eq!(
            err.raw_os_error(),
            Some(libc::ETIMEDOUT),
            "the kernel did not give up by itself ({err}, after {took:?})"
        );
        // Freed by the failed connect, in this process: its Destroy ends the
        // life even if its transition to CLOSE escaped the tracer.
        let life = trace.wait_life_where("the unanswered client to finish", &[port], |l| {
            l.role == Role::Client && l.remote == target
        });
        whole(&trace, vec![life])
    });
    let [(c, cv)] = &lives[..] else {
        unreachable!()
    };

    assert_connect_failed(c, cv);
    // The kernel's own count (TcpExtTCPSynRetrans) is 2 here: the retry
    // limit is a time budget, and the second retransmit fits in it.
    // The SYNs met this host's own input rule (loopback): each was dropped
    // here, none lost on the way. No socket held them, so the drops were
    // tied to the client by their addresses.
    assert_syns_dropped_here(c, cv);
    assert_eq!(
        path(c),
        [(S::Close, S::SynSent), (S::SynSent, S::Close)],
        "{c:#?}"
    );
    assert!(c.resets_received.is_empty(), "{c:#?}");
    assert!(
        c.closed_by.is_none(),
        "the kernel gave up, not a process: {c:#?}"
    );
}

#[test]
fn an_ipv4_syn_nobody_answers_ends_in_a_handshake_timeout() {
    handshake_timeout(V4);
}

#[test]
fn an_ipv6_syn_nobody_answers_ends_in_a_handshake_timeout() {
    handshake_timeout(V6);
}
