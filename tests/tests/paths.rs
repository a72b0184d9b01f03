//! Every TCP path reproduced for real on the running kernel, and the
//! classification tcptrace gives each side: the 4-way closes in both
//! directions, a simultaneous close, a refused connect, the RST paths
//! (SO_LINGER 0, unread data, a firewall's reset) and a handshake timeout,
//! over IPv4 and IPv6.
//!
//! Each test traces only its own server port (the filter runs in the kernel,
//! so traffic elsewhere on the machine cannot crowd the test's events out of
//! the ring buffer) and picks its sockets out by their ports. Tests that need
//! firewall rules, qdiscs, sysctls or a TIME_WAIT table of their own run
//! their sockets in a network namespace they create, and reserve the same
//! port number in the test's namespace so that no other test's socket can
//! carry it. Scenarios whose kernel events a busy machine can hide from
//! every tracer are repeated a bounded number of times (see [`retrying`]).

use std::{
    io::{ErrorKind, Read, Write},
    mem::size_of,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{PoisonError, RwLock},
    time::{Duration, Instant},
};

use tcptrace::{
    classify::{Close, Open, Side, Verdict},
    decode::{Proc, Record},
    render::words,
    tracker::{Role, SocketLife},
};
use tcptrace_tests::{DEADLINE, State as S, Trace, linger_zero, netns::Netns, reserve_port, trace};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Held for reading while this binary starts a child process, for writing
/// while a test closes a socket whose closer it checks.
///
/// A child (`ip`, `nft`, `tc`, `sysctl`: all started through [`Ns`]) holds a
/// copy of every fd of this process from its fork until its exec. A socket
/// the test closes in that window is really closed by the child's exec
/// (close-on-exec drops the last reference), and the tracer rightly names
/// the child as the closer.
static SPAWNS: RwLock<()> = RwLock::new(());

/// Runs `f`, which starts child processes.
fn spawning<T>(f: impl FnOnce() -> T) -> T {
    let _no_close = SPAWNS.read().unwrap_or_else(PoisonError::into_inner);
    f()
}

/// Runs `f`, which closes sockets, while no child process holds their fds.
fn closing<T>(f: impl FnOnce() -> T) -> T {
    let _no_spawn = SPAWNS.write().unwrap_or_else(PoisonError::into_inner);
    f()
}

/// A [`Netns`] whose commands (and removal) are [`spawning`].
struct Ns(Option<Netns>);

impl Ns {
    fn new(label: &str) -> Ns {
        Ns(Some(spawning(|| Netns::new(label))))
    }

    fn netns(&self) -> &Netns {
        self.0.as_ref().expect("removed only on drop")
    }

    fn exec(&self, program: &str, args: &[&str]) {
        spawning(|| self.netns().exec(program, args));
    }

    fn nft(&self, ruleset: &str) {
        spawning(|| self.netns().nft(ruleset));
    }

    fn sysctl(&self, key: &str, value: &str) {
        spawning(|| self.netns().sysctl(key, value));
    }

    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.netns().enter(f)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        spawning(|| drop(self.0.take()));
    }
}

/// The calling thread as the kernel names it: the owner and closer the
/// tracer must report for sockets this thread opens and closes.
struct Me {
    pid: u32,
    tgid: u32,
    comm: String,
}

fn me() -> Me {
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    Me {
        // SAFETY: plain syscall.
        pid: unsafe { libc::gettid() } as u32,
        tgid: std::process::id(),
        comm: comm.trim_end().to_owned(),
    }
}

impl Me {
    fn assert_is(&self, p: Option<&Proc>, what: &str, life: &SocketLife) {
        let p = p.unwrap_or_else(|| panic!("no {what}: {life:#?}"));
        assert_eq!(
            (p.pid, p.tgid, p.comm.as_str()),
            (self.pid, self.tgid, self.comm.as_str()),
            "{what} is not this test's thread: {life:#?}"
        );
    }
}

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

/// Reads give up after [`DEADLINE`] rather than hang the test.
fn bounded(stream: TcpStream) -> TcpStream {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// A connection to `listener`: (client, server child, client's port).
fn connect(listener: &TcpListener) -> (TcpStream, TcpStream, u16) {
    let client = bounded(TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    let (served, _) = listener.accept().unwrap();
    let port = client.local_addr().unwrap().port();
    (client, bounded(served), port)
}

fn path(life: &SocketLife) -> Vec<(S, S)> {
    life.steps.iter().map(|s| (s.old, s.new)).collect()
}

/// What every complete, established life must show.
fn assert_complete(life: &SocketLife, verdict: &Verdict, role: Role) {
    assert_eq!(life.role, role, "{life:#?}");
    assert!(verdict.incomplete.is_empty(), "{verdict:#?}\n{life:#?}");
    assert_eq!(life.state, Some(S::Close), "{life:#?}");
}

fn assert_active_open(life: &SocketLife, verdict: &Verdict) {
    assert_complete(life, verdict, Role::Client);
    assert!(
        matches!(
            verdict.open,
            Open::Active {
                established: true,
                handshake_ns: Some(_)
            }
        ),
        "{verdict:#?}"
    );
}

fn assert_passive_open(life: &SocketLife, verdict: &Verdict, listener: SocketAddr) {
    assert_complete(life, verdict, Role::Server);
    assert_eq!(life.listener, Some(listener), "{life:#?}");
    match &verdict.open {
        Open::Passive {
            established: true,
            handshake_ns: Some(_),
            listener: Some(l),
        } => assert_eq!(*l, listener, "{verdict:#?}"),
        other => panic!("not a passive open from {listener}: {other:?}\n{life:#?}"),
    }
}

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

/// A run of a scenario: its lives, or why kernel events it needed never
/// reached any tracer (see [`retrying`]).
type Run = Result<Vec<(SocketLife, Verdict)>, String>;

/// The socket's transitions as the ring buffer carried them during the
/// life, self-transitions left out as the tracker folds them.
fn raw_path(trace: &Trace, life: &SocketLife) -> Vec<(S, S)> {
    trace
        .records
        .iter()
        .filter_map(|r| match r {
            Record::State { sock, old, new, .. }
                if sock.skaddr == life.skaddr
                    && (life.start_ns..=life.last_ns).contains(&sock.ts_ns)
                    && old != new =>
            {
                Some((*old, *new))
            }
            _ => None,
        })
        .collect()
}

/// Checks that each life is the kernel's whole account. A step that does
/// not start where the previous one ended, or a socket freed before it
/// reached CLOSE, is a transition no tracer saw (an `Err`) when the ring
/// buffer did not carry it either; when it did, the tracker lost it: a bug.
fn whole(trace: &Trace, lives: Vec<(SocketLife, Verdict)>) -> Run {
    let mut gaps = Vec::new();
    for (life, _) in &lives {
        let steps = path(life);
        let raw = raw_path(trace, life);
        assert_eq!(
            steps, raw,
            "the tracker's steps differ from the ring buffer's records: {life:#?}"
        );
        if let Some(w) = steps.windows(2).find(|w| w[0].1 != w[1].0) {
            gaps.push(format!(
                "{} → {} went {:?}→{:?}, then {:?}→{:?}",
                life.local, life.remote, w[0].0, w[0].1, w[1].0, w[1].1
            ));
        } else if life.destroyed && life.state != Some(S::Close) {
            gaps.push(format!(
                "{} → {} freed in {:?} with no transition to CLOSE",
                life.local, life.remote, life.state
            ));
        }
    }
    if gaps.is_empty() {
        Ok(lives)
    } else {
        Err(gaps.join("; "))
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

/// Most runs of a scenario that kernel events escaped.
const ATTEMPTS: u32 = 3;

/// Runs `scenario` again (up to [`ATTEMPTS`] in all) while transitions the
/// kernel made never reached the tracer.
///
/// Transitions made in a softirq that a timer starts (TCP's retransmit or
/// delayed-ACK timer, a qdisc's watchdog) can run nested inside whatever
/// eBPF program that CPU was running, any tracer's: the kernel then skips
/// every tracepoint program of the nested softirq (the recursion guard of
/// tracepoint programs; only each program's `recursion_misses` counts it),
/// and no tracer sees the transition. That is a limit of the tracer, not of
/// the path under test, and it shows on a busy machine: such a run is
/// repeated. [`whole`] still fails the test if the tracker itself lost one.
fn retrying(what: &str, mut scenario: impl FnMut() -> Run) -> Vec<(SocketLife, Verdict)> {
    let mut missed = Vec::new();
    for attempt in 1..=ATTEMPTS {
        match scenario() {
            Ok(lives) => return lives,
            Err(why) => {
                eprintln!("{what}, run {attempt}: transitions escaped the tracer: {why}");
                missed.push(why);
            }
        }
    }
    panic!(
        "{what}: in each of {ATTEMPTS} runs, transitions escaped the tracer \
         (eBPF recursion misses on a busy machine?):\n{}",
        missed.join("\n")
    );
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

/// An established connection on the namespace's loopback to `port`:
/// (listener, client, server child), all living in `ns`.
fn connect_in(ns: &Ns, ip: IpAddr, port: u16) -> (TcpListener, TcpStream, TcpStream) {
    ns.enter(move || {
        let listener = TcpListener::bind((ip, port)).unwrap();
        let client = bounded(TcpStream::connect((ip, port)).unwrap());
        let (served, _) = listener.accept().unwrap();
        (listener, client, bounded(served))
    })
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
    assert!(cv.incomplete.is_empty(), "{cv:#?}");
    assert_eq!(
        cv.open,
        Open::Active {
            established: false,
            handshake_ns: None
        },
        "{c:#?}"
    );
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
    assert_active_open(&c, &cv);
    assert_eq!(
        cv.close,
        Close::ResetReceived {
            state: Some(S::Established)
        },
        "{c:#?}"
    );
    assert_eq!(path(&c).last(), Some(&(S::Established, S::Close)), "{c:#?}");
    assert!(c.resets_sent.is_empty(), "{c:#?}");
    assert!(c.closed_by.is_none(), "the peer's RST closed it: {c:#?}");
    (s, sv)
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

/// An inet table `tt` with one rule on the input hook.
fn input_rule(ns: &Ns, rule: &str) {
    ns.nft(&format!(
        "add table inet tt; \
         add chain inet tt in {{ type filter hook input priority 0; }}; \
         add rule inet tt in {rule}"
    ));
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
    assert_active_open(&c, &cv);
    assert_eq!(
        cv.close,
        Close::ResetReceived {
            state: Some(S::Established)
        },
        "{c:#?}"
    );
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
    // netfilter's RST is not the TCP stack's: no tcp_send_reset anywhere.
    assert!(c.resets_sent.is_empty(), "{c:#?}");
    assert!(
        c.closed_by.is_none(),
        "the firewall's RST closed it: {c:#?}"
    );
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

    assert!(cv.incomplete.is_empty(), "{cv:#?}");
    assert_eq!(
        cv.open,
        Open::Active {
            established: false,
            handshake_ns: None
        },
        "{c:#?}"
    );
    // The kernel's own count (TcpExtTCPSynRetrans) is 2 here: the retry
    // limit is a time budget, and the second retransmit fits in it.
    assert!(c.syn_retransmits >= 1, "{c:#?}");
    let Close::HandshakeTimeout {
        syn_retransmits,
        syns_dropped,
    } = &cv.close
    else {
        panic!("not a handshake timeout: {cv:#?}\n{c:#?}");
    };
    assert_eq!(*syn_retransmits, c.syn_retransmits, "{c:#?}");
    // The SYNs met this host's own input rule (loopback): each was dropped
    // here, none lost on the way. No socket held them, so the drops were
    // tied to the client by their addresses.
    let dropped = syns_dropped.as_ref().unwrap_or_else(|| panic!("{c:#?}"));
    assert_eq!(
        dropped.reason.name.as_deref(),
        Some("NETFILTER_DROP"),
        "{c:#?}"
    );
    assert!(dropped.count >= 2, "the first SYN and a retransmit: {c:#?}");
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
