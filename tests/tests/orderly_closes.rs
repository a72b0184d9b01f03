//! The orderly closes reproduced for real on the running kernel, and the
//! classification tcptrace gives each side: the 4-way closes in both
//! directions and a simultaneous close, over IPv4 and IPv6.
//!
//! The helpers it shares with `resets.rs` and `connect_failures.rs`, and how
//! each test keeps to its own sockets: `tcptrace_tests::paths`.

use std::{
    io::{Read, Write},
    mem::size_of,
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use tcptrace::{
    classify::{Close, Open},
    decode::Record,
    tracker::Role,
};
use tcptrace_tests::{
    DEADLINE, State as S, Trace,
    paths::{
        Me, Ns, Run, V4, V6, assert_active_open, assert_complete, assert_passive_open, bounded,
        closing, connect_in, me, path, retrying, whole,
    },
    reserve_port, trace,
};

/// The kernel's own view of a socket's state (`tcpi_state`).
fn kernel_state(stream: &TcpStream) -> u8 {
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: a valid buffer of `len` bytes, on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    info.tcpi_state
}

/// `TCP_CLOSE` in the kernel's numbering.
const KERNEL_TCP_CLOSE: u8 = 7;

/// Waits (bounded) until the kernel itself has closed every one of `streams`.
fn wait_kernel_closed(streams: &[&TcpStream]) {
    let start = Instant::now();
    while let Some(open) = streams.iter().find(|s| kernel_state(s) != KERNEL_TCP_CLOSE) {
        assert!(
            start.elapsed() < DEADLINE,
            "the kernel never closed {:?} (state {})",
            open.local_addr(),
            kernel_state(open)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The finished lives of the sockets `(local port, remote port)`, all on
/// their way to CLOSE. A life that does not finish within [`DEADLINE`] is an
/// `Err` when no transition of it to CLOSE ever reached the tracer, and a
/// tracker bug when one did.
fn finished_lives(trace: &mut Trace, sockets: &[(u16, u16)]) -> Run {
    let find = |t: &Trace, (local, remote): (u16, u16)| {
        t.lives
            .iter()
            .find(|(l, _)| l.local.port() == local && l.remote.port() == remote)
            .cloned()
    };
    let start = Instant::now();
    loop {
        trace.drain();
        let found: Vec<_> = sockets.iter().map(|&s| find(trace, s)).collect();
        if found.iter().all(Option::is_some) {
            return whole(trace, found.into_iter().flatten().collect());
        }
        if start.elapsed() > DEADLINE {
            let (local, remote) = sockets[found.iter().position(Option::is_none).unwrap()];
            let closed = trace.records.iter().any(|r| {
                matches!(r, Record::State { sock, new: S::Close, .. }
                    if sock.local.port() == local && sock.remote.port() == remote)
            });
            assert!(
                !closed,
                "the tracker never finished :{local} → :{remote}, whose CLOSE it was given"
            );
            return Err(format!(
                ":{local} → :{remote} closed with no transition to CLOSE seen"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The handshake as each end sees it, then each end's half of a 4-way close.
const OPEN_ACTIVE: [(S, S); 2] = [(S::Close, S::SynSent), (S::SynSent, S::Established)];
const OPEN_PASSIVE: [(S, S); 2] = [(S::Listen, S::SynRecv), (S::SynRecv, S::Established)];
const CLOSE_ACTIVE: [(S, S); 3] = [
    (S::Established, S::FinWait1),
    (S::FinWait1, S::FinWait2),
    (S::FinWait2, S::Close),
];
const CLOSE_PASSIVE: [(S, S); 3] = [
    (S::Established, S::CloseWait),
    (S::CloseWait, S::LastAck),
    (S::LastAck, S::Close),
];

/// A connection in a namespace of its own (whose TIME_WAIT table no busy
/// neighbour can fill), traced from its listener's start: (listener address,
/// listener, client, server child, the thread that opened them).
fn connect_traced(
    ns: &Ns,
    ip: IpAddr,
    port: u16,
) -> (SocketAddr, TcpListener, TcpStream, TcpStream, Me) {
    let addr = SocketAddr::new(ip, port);
    let (listener, client, served, opener) = ns.enter(move || {
        let listener = TcpListener::bind(addr).unwrap();
        let client = bounded(TcpStream::connect(addr).unwrap());
        let (served, _) = listener.accept().unwrap();
        (listener, client, bounded(served), me())
    });
    (addr, listener, client, served, opener)
}

/// Which end of a connection closes first.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum First {
    Client,
    Server,
}

/// One end writes and closes first; the other reads to EOF, then closes.
/// The first closer's life is an active 4-way close handed to TIME_WAIT, the
/// other's a passive one; both closed by this thread, owned by the opener.
fn four_way_close(ip: IpAddr, first: First) {
    let me = me();
    let mut seen = None;
    let lives = retrying(&format!("{first:?} closes first"), || {
        let (_reserved, port) = reserve_port(ip);
        let mut trace = trace(port);
        let ns = Ns::new("fourway");
        let (laddr, listener, client, served, opener) = connect_traced(&ns, ip, port);
        let cport = client.local_addr().unwrap().port();
        seen = Some((laddr, opener));
        let (mut closer, mut peer) = match first {
            First::Client => (client, served),
            First::Server => (served, client),
        };
        closer.write_all(b"bye").unwrap();
        closing(|| drop(closer));
        let mut got = Vec::new();
        peer.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
        closing(|| drop((peer, listener)));
        finished_lives(&mut trace, &[(cport, port), (port, cport), (port, 0)])
    });
    let (laddr, opener) = seen.unwrap();
    let [(c, cv), (s, sv), (l, lv)] = &lives[..] else {
        unreachable!()
    };

    assert_active_open(c, cv);
    assert_passive_open(s, sv, laddr);
    let client_first = first == First::Client;
    for (life, verdict, open, active) in [
        (c, cv, OPEN_ACTIVE, client_first),
        (s, sv, OPEN_PASSIVE, !client_first),
    ] {
        let (close, tail) = if active {
            (Close::Active { time_wait: true }, CLOSE_ACTIVE)
        } else {
            (Close::Passive, CLOSE_PASSIVE)
        };
        assert_eq!(verdict.close, close, "{life:#?}");
        assert_eq!(life.time_wait, active, "{life:#?}");
        assert_eq!(path(life), [&open[..], &tail[..]].concat(), "{life:#?}");
        // A child belongs to whoever listens.
        opener.assert_is(life.owner.as_ref(), "owner", life);
        me.assert_is(life.closed_by.as_ref(), "closer", life);
        assert!(
            life.resets_sent.is_empty() && life.resets_received.is_empty(),
            "{life:#?}"
        );
    }

    assert_eq!(l.role, Role::Listener, "{l:#?}");
    assert_eq!(
        (&lv.open, &lv.close),
        (&Open::Listen, &Close::StoppedListening),
        "{l:#?}"
    );
    assert_eq!(l.children, 1, "the child was not adopted: {l:#?}");
    opener.assert_is(l.owner.as_ref(), "listener owner", l);
}

#[test]
fn a_client_that_closes_first_over_ipv4_closes_actively_and_its_server_passively() {
    four_way_close(V4, First::Client);
}

#[test]
fn a_client_that_closes_first_over_ipv6_closes_actively_and_its_server_passively() {
    four_way_close(V6, First::Client);
}

#[test]
fn a_server_that_closes_first_over_ipv4_shows_a_passive_close_on_the_client() {
    four_way_close(V4, First::Server);
}

#[test]
fn a_server_that_closes_first_over_ipv6_shows_a_passive_close_on_the_client() {
    four_way_close(V6, First::Server);
}

/// Both ends shut down their sending side while each one's FIN is still on
/// its way to the other, so that each receives a FIN that does not yet
/// acknowledge its own: both go FIN_WAIT1→CLOSING→CLOSE.
///
/// Loopback delivers a segment inside the send call, so the FINs can only
/// cross if they wait somewhere: a token bucket on the namespace's loopback
/// holds them. Two filler datagrams empty it, so that both FINs queue behind
/// the second one (which would wait ~7 s at 1 kbit/s), each carrying the
/// acknowledgement number of the moment it was sent. A fast bucket then
/// keeps the queue, and the next datagram sent drains it in order: the
/// whole crossing runs inside that send call, in this thread, with no timer
/// involved. (Retransmits of a segment still queued on the host are
/// suppressed by the kernel, so the wait changes nothing else.)
fn simultaneous_close(ip: IpAddr) {
    let lives = retrying("simultaneous close", || {
        let (_reserved, port) = reserve_port(ip);
        let mut trace = trace(port);
        let ns = Ns::new("simclose");
        let (listener, a, b) = connect_in(&ns, ip, port);
        let filler = ns.enter(move || UdpSocket::bind((ip, 0)).unwrap());
        let to = filler.local_addr().unwrap();
        let aport = a.local_addr().unwrap().port();
        let tbf = |change: &str, rate: &str, burst: &str| {
            let args = ["qdisc", change, "dev", "lo", "root", "tbf", "rate", rate];
            ns.exec(
                "tc",
                &[&args[..], &["burst", burst, "limit", "10000"]].concat(),
            );
        };
        tbf("add", "1kbit", "1000");
        // ~950 bytes on the wire each: the first takes the bucket's 1000, the
        // second waits for tokens, and everything sent after it queues behind.
        for _ in 0..2 {
            filler.send_to(&[0; 900], to).unwrap();
        }
        a.shutdown(Shutdown::Write).unwrap();
        b.shutdown(Shutdown::Write).unwrap();
        tbf("change", "1gbit", "100000");
        filler.send_to(&[0; 1], to).unwrap();
        wait_kernel_closed(&[&a, &b]);
        let run = finished_lives(&mut trace, &[(aport, port), (port, aport)]);
        drop((a, b, listener));
        run
    });
    let [(c, cv), (s, sv)] = &lives[..] else {
        unreachable!()
    };

    let crossing = [
        (S::Established, S::FinWait1),
        (S::FinWait1, S::Closing),
        (S::Closing, S::Close),
    ];
    assert_active_open(c, cv);
    assert_eq!(cv.close, Close::Simultaneous, "{c:#?}");
    assert_eq!(path(c)[2..], crossing, "{c:#?}");
    assert!(c.time_wait, "CLOSING→CLOSE hands over to TIME_WAIT: {c:#?}");
    assert_complete(s, sv, Role::Server);
    assert_eq!(sv.close, Close::Simultaneous, "{s:#?}");
    assert_eq!(path(s)[2..], crossing, "{s:#?}");
    assert!(s.time_wait, "{s:#?}");
    assert!(
        c.resets_sent.is_empty() && s.resets_sent.is_empty(),
        "{c:#?}\n{s:#?}"
    );
}

#[test]
fn both_ends_closing_at_once_over_ipv4_is_a_simultaneous_close_on_each() {
    simultaneous_close(V4);
}

#[test]
fn both_ends_closing_at_once_over_ipv6_is_a_simultaneous_close_on_each() {
    simultaneous_close(V6);
}
