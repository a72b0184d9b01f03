//! The RST paths reproduced for real on the running kernel, and the
//! classification tcptrace gives each side: a server closing with SO_LINGER
//! 0, a server closing with data left unread, and a firewall's reset
//! midway, over IPv4 and IPv6.
//!
//! The helpers it shares with `orderly_closes.rs` and `connect_failures.rs`,
//! and how each test keeps to its own sockets: `tcptrace_tests::paths`.

use std::{
    io::{ErrorKind, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use tcptrace::{
    classify::{Close, Verdict},
    render::words,
    tracker::SocketLife,
};
use tcptrace_tests::{
    DEADLINE, State as S, Trace, linger_zero,
    paths::{
        Me, Ns, V4, V6, assert_active_open, assert_passive_open, bounded, closing, connect_in,
        input_rule, me, path,
    },
    reserve_port, trace,
};

/// A TCP socket bound to `addr` (port 0: an ephemeral one) but not yet
/// listening, so that the tracer can start before its CLOSE→LISTEN and
/// learn who owns the listener and its children.
fn bound(addr: SocketAddr) -> TcpListener {
    let family = match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (sa, len) = tcptrace_tests::sockaddr(addr);
    // SAFETY: a valid socket address of the length given.
    let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), len) };
    assert_eq!(rc, 0, "bind {addr}: {}", std::io::Error::last_os_error());
    TcpListener::from(fd)
}

/// `listen(2)` on a socket from [`bound`].
fn listen(listener: &TcpListener) {
    // SAFETY: plain syscall on a socket we own.
    let rc = unsafe { libc::listen(listener.as_raw_fd(), 16) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
}

/// A listener on an ephemeral port of `ip`, with a tracer of that port
/// started before it listens.
fn traced_listener(ip: IpAddr) -> (TcpListener, SocketAddr, Trace) {
    let listener = bound(SocketAddr::new(ip, 0));
    let addr = listener.local_addr().unwrap();
    let trace = trace(addr.port());
    listen(&listener);
    (listener, addr, trace)
}

/// A connection to `listener`: (client, server child, client's port).
fn connect(listener: &TcpListener) -> (TcpStream, TcpStream, u16) {
    let client = bounded(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    let (served, _) = listener.accept().unwrap();
    let port = client.local_addr().unwrap().port();
    (client, bounded(served), port)
}

/// The server (listening at `laddr`) closed its child abortively in
/// ESTABLISHED: it sent one RST with the kernel's `reason`, `unread` bytes
/// were left, this thread closed it; the client (`cport`) received the RST.
fn expect_abortive_server_close(
    trace: &mut Trace,
    laddr: SocketAddr,
    cport: u16,
    me: &Me,
    reason: &str,
    unread: u32,
) -> (SocketLife, Verdict) {
    let port = laddr.port();
    let (s, sv) = trace.wait_life(port, cport);
    assert_passive_open(&s, &sv, laddr);
    match &sv.close {
        Close::ResetSent {
            state: Some(S::Established),
            reason: sent,
        } => assert_eq!(sent.name.as_deref(), Some(reason), "{sv:#?}"),
        other => panic!("not an RST sent in ESTABLISHED: {other:?}\n{s:#?}"),
    }
    assert_eq!(path(&s).last(), Some(&(S::Established, S::Close)), "{s:#?}");
    assert_eq!(s.resets_sent.len(), 1, "{s:#?}");
    assert!(s.resets_received.is_empty(), "{s:#?}");
    assert!(!s.time_wait, "{s:#?}");
    assert_eq!(s.unread, Some(unread), "{s:#?}");
    me.assert_is(s.closed_by.as_ref(), "the server's closer", &s);

    let (c, cv) = trace.wait_life(cport, port);
    assert_reset_while_established(&c, &cv, "the peer's");
    (s, sv)
}

/// A client, opened actively, that an RST received in ESTABLISHED closed
/// (`by`: whose RST), sending none itself.
fn assert_reset_while_established(c: &SocketLife, cv: &Verdict, by: &str) {
    assert_active_open(c, cv);
    assert_eq!(
        cv.close,
        Close::ResetReceived {
            state: Some(S::Established)
        },
        "{c:#?}"
    );
    assert_eq!(path(c).last(), Some(&(S::Established, S::Close)), "{c:#?}");
    assert!(c.resets_sent.is_empty(), "{c:#?}");
    assert!(c.closed_by.is_none(), "{by} RST closed it: {c:#?}");
}

fn linger_zero_close(ip: IpAddr) {
    let me = me();
    let (listener, laddr, mut trace) = traced_listener(ip);
    let (mut client, mut served, cport) = connect(&listener);
    client.write_all(b"ping").unwrap();
    let mut got = [0; 4];
    served.read_exact(&mut got).unwrap();
    linger_zero(&served);
    closing(|| drop(served));
    let err = client.read(&mut [0; 16]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    expect_abortive_server_close(&mut trace, laddr, cport, &me, "TCP_STATE", 0);
    drop((client, listener));
}

#[test]
fn a_server_closing_with_linger_zero_over_ipv4_sends_an_rst_the_client_receives() {
    linger_zero_close(V4);
}

#[test]
fn a_server_closing_with_linger_zero_over_ipv6_sends_an_rst_the_client_receives() {
    linger_zero_close(V6);
}

fn unread_close(ip: IpAddr) {
    const SENT: &[u8] = b"never read by anyone";
    let me = me();
    let (listener, laddr, mut trace) = traced_listener(ip);
    let (mut client, served, cport) = connect(&listener);
    client.write_all(SENT).unwrap();
    // Wait until all of it sits in the server's receive queue, unread:
    // MSG_PEEK leaves it there.
    let start = Instant::now();
    let mut peek = [0; 64];
    while served.peek(&mut peek).unwrap() < SENT.len() {
        assert!(start.elapsed() < DEADLINE, "the data never arrived");
        std::thread::sleep(Duration::from_millis(1));
    }
    closing(|| drop(served));
    let err = client.read(&mut [0; 16]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    let (s, sv) = expect_abortive_server_close(
        &mut trace,
        laddr,
        cport,
        &me,
        "TCP_ABORT_ON_CLOSE",
        SENT.len() as u32,
    );
    let attribution = words::attribution(&s, &sv).unwrap_or_default();
    assert!(
        attribution.ends_with(&format!("· {} bytes never read", SENT.len())),
        "{sv:#?}"
    );
    drop((client, listener));
}

#[test]
fn a_server_closing_with_unread_data_over_ipv4_sends_an_rst_naming_the_unread_bytes() {
    unread_close(V4);
}

#[test]
fn a_server_closing_with_unread_data_over_ipv6_sends_an_rst_naming_the_unread_bytes() {
    unread_close(V6);
}

fn firewall_reset(ip: IpAddr) {
    let (_reserved, port) = reserve_port(ip);
    let mut trace = trace(port);
    let ns = Ns::new("reject");
    let (listener, mut client, served) = connect_in(&ns, ip, port);
    let cport = client.local_addr().unwrap().port();
    input_rule(&ns, &format!("tcp dport {port} reject with tcp reset"));
    // Sending succeeds locally; the segment meets the rule, which answers RST.
    client.write_all(b"rejected").unwrap();

    let (c, cv) = trace.wait_life(cport, port);
    // netfilter's RST is not the TCP stack's: no tcp_send_reset anywhere.
    assert_reset_while_established(&c, &cv, "the firewall's");
    assert_eq!(
        path(&c),
        [
            (S::Close, S::SynSent),
            (S::SynSent, S::Established),
            (S::Established, S::Close)
        ],
        "{c:#?}"
    );
    assert_eq!(c.resets_received.len(), 1, "{c:#?}");
    let err = client.read(&mut [0; 16]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");

    // Let the server's FIN through so that it ends before the namespace does.
    ns.nft("delete table inet tt");
    drop((served, client, listener));
}

#[test]
fn a_firewall_rejecting_an_ipv4_connection_midway_resets_it_in_established() {
    firewall_reset(V4);
}

#[test]
fn a_firewall_rejecting_an_ipv6_connection_midway_resets_it_in_established() {
    firewall_reset(V6);
}
