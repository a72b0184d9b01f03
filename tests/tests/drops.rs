//! Segments this host drops itself, against the real kernel: a connect
//! whose SYNs its own firewall drops on their way out, and a listener that
//! never accepts, whose full accept queue drops the ACKs completing its
//! handshakes. Each runs in a network namespace of its own (created and
//! removed by the test), on a port also held in the test's namespace so
//! that no other test's socket carries it.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use tcptrace::{
    classify::Close,
    decode::Record,
    model::{Direction, JoinedBy, SegmentKind},
    render::words,
    tracker::Role,
};
use tcptrace_tests::{
    DEADLINE, ladder, listen_backlog, netns::Netns, paths::assert_syns_dropped_here, reserve_port,
    trace,
};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn syns_dropped_on_the_way_out(ip: IpAddr) {
    let (_reserved, port) = reserve_port(ip);
    let mut trace = trace(port);
    let ns = Netns::dropping_outgoing_syns("synout", port);
    let target = SocketAddr::new(ip, port);
    let err = ns.enter(move || {
        // The cap only bounds the test should the sysctl not apply.
        TcpStream::connect_timeout(&target, Duration::from_secs(9)).unwrap_err()
    });
    assert_eq!(err.raw_os_error(), Some(libc::ETIMEDOUT), "{err}");
    let (c, cv) = trace.wait_life_where("the client whose SYNs never left", &[port], |l| {
        l.role == Role::Client && l.remote == target
    });

    // The first SYN and each retransmit, all dropped here.
    let dropped = assert_syns_dropped_here(&c, &cv);
    assert!(dropped <= c.syn_retransmits + 1, "{c:#?}");
    // Each was still owned by the client's socket (skb->sk): tied exactly,
    // even the first, sent before the socket's port was known.
    for d in &c.drops {
        assert_eq!(
            (d.kind(), d.direction, d.joined_by),
            (SegmentKind::Syn, Direction::Outgoing, JoinedBy::Socket),
            "{c:#?}"
        );
    }
    let text = ladder(&c, &cv);
    assert!(
        text.contains("SYN dropped on this host: NETFILTER_DROP"),
        "{text}"
    );
    let summary = words::summary(&c, &cv);
    assert!(
        summary.contains("SYNs dropped on this host (NETFILTER_DROP)"),
        "{summary}"
    );
}

#[test]
fn an_ipv4_connect_whose_syns_its_own_firewall_drops_says_so() {
    syns_dropped_on_the_way_out(V4);
}

#[test]
fn an_ipv6_connect_whose_syns_its_own_firewall_drops_says_so() {
    syns_dropped_on_the_way_out(V6);
}

/// Just enough of a socket to bind before connecting (std cannot).
mod raw {
    use std::{
        net::{IpAddr, SocketAddr, TcpStream},
        os::fd::{AsRawFd, FromRawFd, OwnedFd},
    };

    pub struct Socket(OwnedFd);

    impl Socket {
        /// A TCP socket bound to an ephemeral port of `ip`, and that port.
        pub fn bound(ip: IpAddr) -> (Socket, u16) {
            let family = if ip.is_ipv4() {
                libc::AF_INET
            } else {
                libc::AF_INET6
            };
            // SAFETY: plain syscall; the fd is owned at once.
            let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            // SAFETY: a fresh fd nobody else owns.
            let s = Socket(unsafe { OwnedFd::from_raw_fd(fd) });
            let (ss, len) = tcptrace_tests::sockaddr(SocketAddr::new(ip, 0));
            // SAFETY: a valid sockaddr of the length given.
            let rc = unsafe { libc::bind(fd, (&raw const ss).cast(), len) };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let port = TcpStream::from(s.0.try_clone().unwrap())
                .local_addr()
                .unwrap()
                .port();
            (s, port)
        }

        /// Starts connecting without waiting: the SYN is sent.
        pub fn connect_nowait(self, to: SocketAddr) -> TcpStream {
            let stream = TcpStream::from(self.0);
            stream.set_nonblocking(true).unwrap();
            let (ss, len) = tcptrace_tests::sockaddr(to);
            // SAFETY: a valid sockaddr of the length given.
            let rc = unsafe { libc::connect(stream.as_raw_fd(), (&raw const ss).cast(), len) };
            let err = std::io::Error::last_os_error();
            assert!(
                rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
                "connect: {err}"
            );
            stream
        }
    }
}

/// The accept queue of a listener that never accepts, made to overflow:
/// three clients' handshakes are answered while the queue has room, but
/// their final ACKs are held back (a rule drops them) until four other
/// connections have filled it; then each of the three sends a byte, its
/// ACK, which completes a handshake that no longer fits:
/// TCP_LISTEN_OVERFLOW, the listener named as `rx_sk`.
fn accept_queue_overflow(ip: IpAddr) {
    let (_reserved, port) = reserve_port(ip);
    let mut trace = trace(port);
    let ns = Netns::new("accq");
    let addr = SocketAddr::new(ip, port);
    let (listener, held, late, lister) = ns.enter(move || {
        let listener = listen_backlog(addr, 3);
        let mut held = vec![TcpStream::connect(addr).unwrap()];
        let late: Vec<_> = (0..3).map(|_| raw::Socket::bound(ip)).collect();
        let ports: Vec<String> = late.iter().map(|(_, p)| p.to_string()).collect();
        // Their handshake ACKs (no SYN, FIN or RST) do not reach the listener.
        let rule = format!(
            "add table inet tt; \
             add chain inet tt in {{ type filter hook input priority 0; }}; \
             add rule inet tt in tcp dport {port} tcp sport {{ {} }} \
             tcp flags & (syn | rst | fin) == 0 drop",
            ports.join(", ")
        );
        let nft = |args: &[&str]| {
            let out = std::process::Command::new("nft")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "nft: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        nft(&[&rule]);
        let late: Vec<TcpStream> = late
            .into_iter()
            .map(|(s, _)| s.connect_nowait(addr))
            .collect();
        // Each client is ESTABLISHED once its SYN/ACK is in: wait for it.
        let start = Instant::now();
        for s in &late {
            while s.peer_addr().is_err() || s.take_error().unwrap().is_some() {
                assert!(start.elapsed() < DEADLINE, "a late client never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // The queue fills: 1 + 3 = 4 children, one more than its backlog.
        held.extend((0..3).map(|_| TcpStream::connect(addr).unwrap()));
        nft(&["delete table inet tt"]);
        let me = std::process::id();
        (listener, held, late, me)
    });
    for mut s in &late {
        s.set_nonblocking(false).unwrap();
        s.write_all(b"x").unwrap();
    }
    // Each late client's byte (and each retransmit of it) is dropped on the
    // listener: wait until the kernel has said so three times.
    trace.wait_for(
        "three accept-queue overflows",
        |r| matches!(r, Record::Drop(_)),
        |t| {
            let n = t
                .records
                .iter()
                .filter(|r| {
                    matches!(r, Record::Drop(d)
                        if d.reason.name.as_deref() == Some("TCP_LISTEN_OVERFLOW"))
                })
                .count();
            (n >= 3).then_some(n)
        },
    );
    // The requests stay half-open: the listener resends their SYN/ACKs
    // after a second.
    trace.wait_for(
        "a SYN/ACK retransmit",
        |r| matches!(r, Record::RetransmitSynAck { .. }),
        |t| {
            t.records
                .iter()
                .any(|r| matches!(r, Record::RetransmitSynAck { .. }))
                .then_some(())
        },
    );
    drop(listener);
    let (l, lv) = trace.wait_life_where("the listener", &[port], |l| {
        l.role == Role::Listener && l.local.port() == port
    });
    drop((held, late));

    let owner = l.owner.unwrap_or_else(|| panic!("no owner: {l:#?}"));
    assert_eq!(owner.tgid, lister, "{l:#?}");
    let overflows: Vec<_> = l
        .drop_counts
        .iter()
        .filter(|c| c.reason.name.as_deref() == Some("TCP_LISTEN_OVERFLOW"))
        .collect();
    assert_eq!(overflows.len(), 1, "{l:#?}");
    assert!(overflows[0].count >= 3, "{l:#?}");
    assert_eq!(overflows[0].segment, SegmentKind::Ack, "{l:#?}");
    for d in l
        .drops
        .iter()
        .filter(|d| words::is_listen_overflow(&d.reason))
    {
        assert_eq!(
            (d.direction, d.joined_by),
            (Direction::Incoming, JoinedBy::Socket),
            "the kernel named the listener (rx_sk): {l:#?}"
        );
    }
    assert!(l.synack_retransmits >= 1, "{l:#?}");
    let text = ladder(&l, &lv);
    assert!(text.contains("SYN/ACK retransmit"), "{text}");
    let want = format!(
        "handshake ACK dropped: accept queue of {}[{}] full (TCP_LISTEN_OVERFLOW)",
        &*owner.comm, owner.tgid
    );
    assert!(text.contains(&want), "{want}\n{text}");
}

#[test]
fn a_listener_that_never_accepts_over_ipv4_counts_its_accept_queue_overflows() {
    accept_queue_overflow(V4);
}

#[test]
fn a_listener_that_never_accepts_over_ipv6_counts_its_accept_queue_overflows() {
    accept_queue_overflow(V6);
}

/// The client closes first and its orphan goes to a FIN_WAIT2 mini-socket;
/// the server's FIN then reaches that mini-socket, which acknowledges it
/// and frees it "dropped" with NOT_SPECIFIED, as the kernel frees every
/// segment a TIME_WAIT socket handled. That is the end of a close, not a
/// loss: the server's ladder must show no dropped FIN.
fn a_fin_a_time_wait_socket_answered(ip: IpAddr) {
    let (listener, port) = reserve_port(ip);
    let mut t = trace(port);
    let client = TcpStream::connect((ip, port)).unwrap();
    let client_port = client.local_addr().unwrap().port();
    let (server, _) = listener.accept().unwrap();
    drop(client);
    std::thread::sleep(Duration::from_millis(30));
    drop(server);
    let (life, verdict) = t.wait_life(port, client_port);
    assert!(
        life.drops.is_empty() && life.drop_counts.is_empty(),
        "no drop on the server side, seen:\n{}",
        ladder(&life, &verdict)
    );
    assert_eq!(
        life.state,
        Some(tcptrace::decode::TcpState::Close),
        "it closed"
    );
    // The client's side: handed to the mini-socket, and the server's FIN
    // seen reaching it: an ordinary active close, not a peer that never
    // closed.
    let (client, verdict) = t.wait_life(client_port, port);
    let text = ladder(&client, &verdict);
    assert!(client.fin_wait2_orphan, "{text}");
    assert!(client.peer_fin_after_handoff_ns.is_some(), "{text}");
    assert_eq!(verdict.close, Close::Active { time_wait: true }, "{text}");
    assert!(text.contains("the peer's FIN reached it"), "{text}");
}

#[test]
fn an_ipv4_fin_answered_by_a_time_wait_socket_is_not_a_drop() {
    a_fin_a_time_wait_socket_answered(V4);
}

#[test]
fn an_ipv6_fin_answered_by_a_time_wait_socket_is_not_a_drop() {
    a_fin_a_time_wait_socket_answered(V6);
}
