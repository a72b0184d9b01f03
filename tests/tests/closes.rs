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
