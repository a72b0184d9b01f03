//! Closes told exactly: cases people debug, against the real kernel.

use std::{
    io::Read,
    net::{TcpListener, TcpStream},
    time::Duration,
};

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
    assert_eq!(
        verdict.close.kind(),
        "peer_never_closed",
        "{}",
        verdict.summary
    );
    assert!(
        verdict.summary.contains("peer has not closed"),
        "{}",
        verdict.summary
    );
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
