//! Closes told exactly: cases people debug, against the real kernel.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use tcptrace::render::words;
use tcptrace_tests::Trace;

#[test]
fn a_server_that_never_closes_leaves_the_client_a_fin_wait2_orphan_not_a_4_way_close() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut trace = Trace::start(&[addr.port()]);
    let client = TcpStream::connect(addr).unwrap();
    let local = client.local_addr().unwrap().port();
    // The server accepts and never closes: the classic CLOSE_WAIT leak.
    let (server, _) = listener.accept().unwrap();
    drop(client);
    let (life, verdict) = trace.wait_life(local, addr.port());
    assert!(life.fin_wait2_orphan, "{life:#?}");
    assert!(!life.time_wait, "no TIME_WAIT: the peer's FIN never came");
    let summary = words::summary(&life, &verdict);
    assert_eq!(verdict.close.kind(), "peer_never_closed", "{summary}");
    assert!(summary.contains("peer has not closed"), "{summary}");
    // The server's end sits in CLOSE_WAIT; once it closes, nothing changes
    // for the client's report (already given).
    let mut buf = [0u8; 1];
    let mut server = server;
    server
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    assert_eq!(
        server.read(&mut buf).unwrap(),
        0,
        "the server saw the client's FIN"
    );
}

#[test]
fn a_peer_gone_silent_ends_in_a_retransmission_timeout_named_etimedout() {
    use std::io::Write;
    use tcptrace_tests::netns::Netns;
    let ns = Netns::new("rto");
    // Give up after 2 retransmissions (about a second), in this namespace.
    ns.sysctl("net.ipv4.tcp_retries2", "2");
    let (addr, server) = ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, listener)
    });
    let mut trace = Trace::start(&[addr.port()]);
    let (client, _held) = ns.enter(move || {
        let client = TcpStream::connect(addr).unwrap();
        let (held, _) = server.accept().unwrap();
        (client, held)
    });
    let local = client.local_addr().unwrap().port();
    // The peer goes silent: every segment reaching it is dropped on input
    // from now on (sent, so really retransmitted; never acknowledged).
    ns.nft(&format!(
        "add table inet tt_rto; \
         add chain inet tt_rto in {{ type filter hook input priority 0; }}; \
         add rule inet tt_rto in tcp dport {} drop",
        addr.port()
    ));
    let mut client = client;
    client.write_all(b"hello?").unwrap();
    let (life, verdict) = trace.wait_life(local, addr.port());
    let error = life
        .error
        .unwrap_or_else(|| panic!("no error recorded: {life:#?}"));
    assert_eq!(error.errno, libc::ETIMEDOUT, "{error:?}");
    assert!(error.retransmits >= 2, "{error:?}");
    let summary = words::summary(&life, &verdict);
    assert!(
        summary.contains("ETIMEDOUT: retransmission timeout, gave up after"),
        "{summary}"
    );
}

/// An integer socket option; panics with the errno if the kernel refuses.
fn set_int(stream: &TcpStream, level: i32, name: i32, value: i32) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: a valid int of the size given, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}

/// A connection inside a namespace of its own, traced, whose server then
/// goes silent: every segment reaching its port is dropped. Returns the
/// trace, the client, the server's end (held open) and the ports.
fn connection_to_a_silent_peer(
    ns: &tcptrace_tests::netns::Netns,
    set_up_client: impl FnOnce(&TcpStream) + Send + 'static,
) -> (Trace, TcpStream, TcpStream, u16, u16) {
    let (addr, server) = ns.enter(|| {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        (listener.local_addr().unwrap(), listener)
    });
    let trace = Trace::start(&[addr.port()]);
    let (client, held) = ns.enter(move || {
        let client = TcpStream::connect(addr).unwrap();
        set_up_client(&client);
        let (held, _) = server.accept().unwrap();
        (client, held)
    });
    ns.nft(&format!(
        "add table inet tt_silent; \
         add chain inet tt_silent in {{ type filter hook input priority 0; }}; \
         add rule inet tt_silent in tcp dport {} drop",
        addr.port()
    ));
    let local = client.local_addr().unwrap().port();
    (trace, client, held, local, addr.port())
}

#[test]
fn a_silent_peer_under_keepalive_ends_in_etimedout_with_its_probes_counted() {
    let ns = tcptrace_tests::netns::Netns::new("keepalive");
    // Idle 1 s, then a probe a second, giving up after 2 unanswered.
    let (mut trace, _client, _held, local, port) = connection_to_a_silent_peer(&ns, |c| {
        set_int(c, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
        set_int(c, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 1);
        set_int(c, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1);
        set_int(c, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 2);
    });
    let (life, verdict) = trace.wait_life(local, port);
    let error = life
        .error
        .unwrap_or_else(|| panic!("no error recorded: {life:#?}"));
    assert_eq!(error.errno, libc::ETIMEDOUT, "{error:?}");
    assert_eq!(error.probes, 2, "{error:?}");
    assert_eq!(error.user_timeout_ms, None, "{error:?}");
    let summary = words::summary(&life, &verdict);
    assert!(
        summary.contains("ETIMEDOUT: probes unanswered (keepalive"),
        "{summary}"
    );
}

#[test]
fn a_silent_peer_past_tcp_user_timeout_is_named_so() {
    use std::io::Write;
    let ns = tcptrace_tests::netns::Netns::new("usertimeout");
    let (mut trace, mut client, _held, local, port) = connection_to_a_silent_peer(&ns, |c| {
        set_int(c, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 800);
    });
    client.write_all(b"anyone?").unwrap();
    let (life, verdict) = trace.wait_life(local, port);
    let error = life
        .error
        .unwrap_or_else(|| panic!("no error recorded: {life:#?}"));
    assert_eq!(error.errno, libc::ETIMEDOUT, "{error:?}");
    assert_eq!(error.user_timeout_ms, Some(800), "{error:?}");
    let summary = words::summary(&life, &verdict);
    assert!(
        summary.contains("ETIMEDOUT: TCP_USER_TIMEOUT (800 ms) expired"),
        "{summary}"
    );
}

#[test]
fn a_syn_answered_by_icmp_host_unreachable_fails_with_ehostunreach() {
    use tcptrace_tests::netns::Netns;
    // client ─veth─ router, whose route to 198.51.100.0/24 is unreachable:
    // it answers the SYN with ICMP host unreachable.
    let client = Netns::new("unreach-c");
    let router = Netns::new("unreach-r");
    client.link(&router, "192.0.2.1/24", "192.0.2.2/24");
    client.ip(&["route", "add", "198.51.100.0/24", "via", "192.0.2.2"]);
    router.sysctl("net.ipv4.ip_forward", "1");
    router.ip(&["route", "add", "unreachable", "198.51.100.0/24"]);
    // A port number of our own, for the trace to pick our socket out.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut trace = Trace::start(&[port]);
    let result = client.enter(move || {
        TcpStream::connect_timeout(
            &std::net::SocketAddr::from(([198, 51, 100, 7], port)),
            Duration::from_secs(5),
        )
        .map(drop)
        .map_err(|e| e.raw_os_error())
    });
    assert_eq!(result, Err(Some(libc::EHOSTUNREACH)));
    let (life, verdict) = trace.wait_life_where(
        &format!("the connect to 198.51.100.7:{port} to fail"),
        &[port],
        |l| l.remote.port() == port,
    );
    let error = life
        .error
        .unwrap_or_else(|| panic!("no error recorded: {life:#?}"));
    // Soft (sk_err_soft) when the ICMP met the socket while connect() held
    // it, hard when it aborted the socket: EHOSTUNREACH either way.
    assert_eq!(error.errno, libc::EHOSTUNREACH, "{life:#?}");
    let summary = words::summary(&life, &verdict);
    assert!(
        summary.contains("EHOSTUNREACH: ICMP host unreachable"),
        "{summary}"
    );
}
