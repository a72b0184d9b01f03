//! The kernel's socket list (inet_diag over netlink) and the socket owners
//! from /proc, on the real kernel: our own sockets, a listener in a named
//! namespace (`ip netns`), and one in a namespace that only a process holds
//! (`unshare -n`).

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::MetadataExt,
    },
    process::{Child, Command, Stdio},
    time::Instant,
};

use tcptrace::sockdiag::{
    AF_INET, DiagSocket, scan_socket_owners, socket_owners, state, tcp_sockets,
    tcp_sockets_all_netns,
};
use tcptrace_tests::{lines_of, netns::Netns, wait_line};

fn require_root() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        panic!("these tests create network namespaces: run them as root (`cargo xtask test`)");
    }
}

fn inode_of(path: &str) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {path}: {e}"))
        .ino()
}

/// The kernel's cookie for a socket of ours (SO_COOKIE).
fn so_cookie(fd: RawFd) -> u64 {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid fd and an out-buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "SO_COOKIE: {}", std::io::Error::last_os_error());
    cookie
}

/// The inode of a socket of ours (what `socket:[INODE]` shows).
fn fd_inode(fd: RawFd) -> u64 {
    inode_of(&format!("/proc/self/fd/{fd}"))
}

fn find<'a>(
    all: &'a [DiagSocket],
    what: &str,
    pick: impl Fn(&DiagSocket) -> bool,
) -> &'a DiagSocket {
    let found: Vec<&DiagSocket> = all.iter().filter(|s| pick(s)).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one {what} among {} sockets, found {}: {found:#?}",
            all.len(),
            found.len()
        ),
    }
}

#[test]
fn lists_our_listener_and_both_ends_with_their_owner() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    let client = TcpStream::connect(("127.0.0.1", lport)).unwrap();
    let cport = client.local_addr().unwrap().port();
    let (server, _) = listener.accept().unwrap();

    let own_ns = inode_of("/proc/self/ns/net");
    let all = tcp_sockets().expect("tcp_sockets");

    let listen = find(&all, "LISTEN socket", |s| {
        s.state == state::LISTEN && s.sport == lport && s.family == AF_INET
    });
    let client_end = find(&all, "client end", |s| s.sport == cport && s.dport == lport);
    let server_end = find(&all, "server end", |s| s.sport == lport && s.dport == cport);

    let ours = [
        (listen, listener.as_raw_fd()),
        (client_end, client.as_raw_fd()),
        (server_end, server.as_raw_fd()),
    ];
    for (s, fd) in ours {
        assert_eq!(s.family, AF_INET, "{s:?}");
        assert_eq!(
            s.src,
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            "{s:?}"
        );
        assert_ne!(s.inode, 0, "{s:?}");
        assert_ne!(s.cookie, 0, "{s:?}");
        assert_eq!(s.inode, fd_inode(fd), "inode of {s:?}");
        assert_eq!(s.cookie, so_cookie(fd), "cookie of {s:?}");
        assert_eq!(s.netns_inode, own_ns, "{s:?}");
        // SAFETY: plain syscall.
        assert_eq!(s.uid, unsafe { libc::geteuid() }, "{s:?}");
    }
    assert_eq!(client_end.state, state::ESTABLISHED, "{client_end:?}");
    assert_eq!(server_end.state, state::ESTABLISHED, "{server_end:?}");
    assert_eq!(client_end.dst, server_end.src);

    let owners = socket_owners();
    let pid = std::process::id();
    for (s, fd) in ours {
        let held = owners
            .get(&s.inode)
            .unwrap_or_else(|| panic!("no owner for {s:?}"));
        assert!(
            held.iter()
                .any(|o| o.pid == pid && o.fd == fd as u32 && !o.comm.is_empty()),
            "{s:?} is held by {held:?}, not by fd {fd} of pid {pid}"
        );
    }
}

/// A child process, killed and reaped on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Listens on an ephemeral port of any address, prints it, and waits.
const LISTENER: &str = "
import socket, sys
s = socket.socket()
s.bind(('0.0.0.0', 0))
s.listen()
print(s.getsockname()[1], flush=True)
sys.stdin.read()
";

/// Runs the Python listener with `prefix` (e.g. `ip netns exec NAME`) and
/// returns it with its port.
fn python_listener(prefix: &[&str]) -> (Killed, u16) {
    let mut cmd = Command::new(prefix[0]);
    cmd.args(&prefix[1..])
        .args(["python3", "-c", LISTENER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut child = Killed(
        cmd.spawn()
            .expect("python3 (installed by `cargo xtask setup`)"),
    );
    let lines = lines_of(child.0.stdout.take().expect("piped stdout"));
    let mut seen = Vec::new();
    let ok = wait_line(&lines, &mut seen, |l| l.trim().parse::<u16>().is_ok());
    assert!(ok, "{prefix:?}: the listener printed no port: {seen:?}");
    let port = seen.last().unwrap().trim().parse().unwrap();
    (child, port)
}

fn assert_found_in(all: &[DiagSocket], port: u16, netns: u64, own_ns: u64) {
    let listen = find(all, "LISTEN socket in the namespace", |s| {
        s.state == state::LISTEN && s.sport == port && s.netns_inode == netns
    });
    assert_ne!(listen.inode, 0, "{listen:?}");
    assert_ne!(netns, own_ns);
    // The same socket is not in our own namespace's list.
    let here = tcp_sockets().unwrap();
    assert!(
        here.iter().all(|s| s.cookie != listen.cookie),
        "{listen:?} also listed in our namespace"
    );
    // Our own namespace is listed too.
    assert!(all.iter().any(|s| s.netns_inode == own_ns));
}

#[test]
fn finds_a_listener_in_a_named_namespace() {
    require_root();
    let ns = Netns::new("diag");
    let path = format!("/run/netns/{}", ns.name);
    let (child, port) = python_listener(&["ip", "netns", "exec", &ns.name]);

    let own_ns = inode_of("/proc/self/ns/net");
    let all = tcp_sockets_all_netns().expect("tcp_sockets_all_netns");
    assert_found_in(&all, port, inode_of(&path), own_ns);

    // The owner scan sees the listener through the Python process's fds.
    let listen = all
        .iter()
        .find(|s| s.sport == port && s.netns_inode == inode_of(&path))
        .unwrap();
    let owners = socket_owners();
    let held = owners.get(&listen.inode).expect("an owner");
    assert!(
        held.iter().any(|o| o.pid == child.0.id()),
        "{held:?}, expected pid {}",
        child.0.id()
    );
    drop(child);
}

#[test]
fn the_sampler_keeps_one_probe_per_namespace_and_reads_listeners_through_it() {
    require_root();
    let ns = Netns::new("probe");
    let path = format!("/run/netns/{}", ns.name);
    let (child, port) = python_listener(&["ip", "netns", "exec", &ns.name]);
    let mut probes = tcptrace::sockdiag::NetnsProbes::new();
    // Twice through the same probes: the second sample reuses the sockets
    // opened inside the namespace by the first (no rediscovery within
    // REDISCOVER), and still sees the listener and the namespace's counters.
    for round in 0..2 {
        let sampled = probes.listeners_with_drops().expect("sampling");
        let there = sampled
            .iter()
            .find(|n| n.netns_inode == inode_of(&path))
            .unwrap_or_else(|| panic!("round {round}: namespace {path} not sampled"));
        let l = there
            .listeners
            .iter()
            .find(|l| l.sport == port)
            .unwrap_or_else(|| panic!("round {round}: no listener on {port}: {there:?}"));
        assert_eq!(l.drops, Some(0), "round {round}: its drop counter");
        assert!(
            there.tcp_ext.is_some(),
            "round {round}: its TcpExt counters"
        );
    }
    assert!(probes.len() >= 2, "this namespace and the test's");
    drop(child);
}

#[test]
fn finds_a_listener_in_a_namespace_only_a_process_holds() {
    require_root();
    // No /run/netns entry: found through /proc/<pid>/ns/net only.
    let (child, port) = python_listener(&["unshare", "--net"]);
    let child_ns = inode_of(&format!("/proc/{}/ns/net", child.0.id()));
    let own_ns = inode_of("/proc/self/ns/net");
    let all = tcp_sockets_all_netns().expect("tcp_sockets_all_netns");
    assert_found_in(&all, port, child_ns, own_ns);
    drop(child);
}

/// Sockets in a namespace of their own: `open` established pairs held open,
/// and `time_wait` connections closed by the client first (TIME_WAIT
/// minisocks, inode 0, no descriptor).
struct Crowd {
    ns: Netns,
    _held: Vec<TcpStream>,
    _listener: TcpListener,
    port: u16,
}

fn crowd(open: usize, time_wait: usize) -> Crowd {
    let ns = Netns::new("crowd");
    let (listener, held) = ns.enter(move || {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let mut held = Vec::with_capacity(2 * open);
        for i in 0..open + time_wait {
            let client = TcpStream::connect(addr).unwrap();
            let (server, _) = listener.accept().unwrap();
            if i < open {
                held.push(client);
                held.push(server);
            } else {
                // The client closes first and keeps TIME_WAIT: the server
                // closes only once it has read the client's FIN (else the
                // two can cross and both end in TIME_WAIT).
                drop(client);
                let mut server = server;
                let _ = std::io::Read::read(&mut server, &mut [0u8; 1]);
                drop(server);
            }
        }
        (listener, held)
    });
    let port = listener.local_addr().unwrap().port();
    Crowd {
        ns,
        _held: held,
        _listener: listener,
        port,
    }
}

/// Every socket of a crowd is listed, minisocks included, with the owners
/// of the ones that have descriptors.
#[test]
fn lists_established_and_time_wait_sockets_of_a_crowd() {
    require_root();
    let (open, time_wait) = (200, 100);
    let c = crowd(open, time_wait);
    let ns_inode = inode_of(&format!("/run/netns/{}", c.ns.name));
    // The server ends close second and go through LAST_ACK to CLOSE: wait
    // for the client ends to reach TIME_WAIT, bounded.
    let deadline = Instant::now() + tcptrace_tests::DEADLINE;
    let (ours, tw) = loop {
        let all = tcp_sockets_all_netns().expect("tcp_sockets_all_netns");
        let ours: Vec<DiagSocket> = all
            .into_iter()
            .filter(|s| s.netns_inode == ns_inode)
            .collect();
        let tw = ours.iter().filter(|s| s.state == state::TIME_WAIT).count();
        if tw >= time_wait || Instant::now() > deadline {
            break (ours, tw);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(tw, time_wait, "TIME_WAIT sockets");
    let established: Vec<&DiagSocket> = ours
        .iter()
        .filter(|s| s.state == state::ESTABLISHED)
        .collect();
    assert_eq!(established.len(), 2 * open);
    for s in ours.iter().filter(|s| s.state == state::TIME_WAIT) {
        assert_eq!(s.inode, 0, "a minisock has no inode: {s:?}");
        assert_ne!(s.cookie, 0, "{s:?}");
        assert_eq!(s.dport, c.port, "the client end keeps TIME_WAIT: {s:?}");
    }
    let scan = scan_socket_owners();
    let pid = std::process::id();
    for s in &established {
        let held = scan.owners.get(&s.inode).map(Vec::as_slice).unwrap_or(&[]);
        assert!(held.iter().any(|o| o.pid == pid), "{s:?}: {held:?}");
    }
}

/// A pending connection (the server's final ACK dropped by a firewall) is a
/// NEW_SYN_RECV request minisock: listed, in SYN_RECV, with inode 0.
#[test]
fn lists_a_pending_connection_as_a_syn_recv_minisock() {
    require_root();
    let ns = Netns::new("synrecv");
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let port = listener.local_addr().unwrap().port();
    ns.nft(&format!(
        "add table inet tt; \
         add chain inet tt in {{ type filter hook input priority 0; }}; \
         add rule inet tt in tcp dport {port} tcp flags & (syn | ack) == ack drop"
    ));
    // The client gets the SYN-ACK and is established; the server never
    // sees the ACK.
    let client = ns.enter(move || TcpStream::connect(("127.0.0.1", port)).unwrap());
    let cport = client.local_addr().unwrap().port();
    let deadline = Instant::now() + tcptrace_tests::DEADLINE;
    let (pending, client_end) = loop {
        let all = ns.enter(|| tcp_sockets().unwrap());
        let pick = |pick: &dyn Fn(&DiagSocket) -> bool| all.iter().find(|s| pick(s)).cloned();
        let pending = pick(&|s| s.sport == port && s.dport == cport);
        let client_end = pick(&|s| s.sport == cport && s.dport == port);
        if let (Some(p), Some(c)) = (&pending, &client_end) {
            break (p.clone(), c.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no pending connection :{port} ← :{cport} among {all:#?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(pending.state, state::SYN_RECV, "{pending:?}");
    assert_eq!(
        pending.inode, 0,
        "a request minisock has no inode: {pending:?}"
    );
    assert_ne!(pending.cookie, 0, "{pending:?}");
    assert_eq!(client_end.state, state::ESTABLISHED, "{client_end:?}");
    assert_ne!(client_end.inode, 0, "{client_end:?}");
    drop((client, listener));
}

/// Times a dump of ~20k sockets and the owner scan; prints, asserts
/// nothing about speed. As root (these tests load no eBPF):
/// `AYA_BUILD_SKIP=1 cargo test -p tcptrace-tests --test sockdiag -- --ignored --nocapture`
#[test]
#[ignore = "a measurement: run it by hand"]
fn timing_of_20k_sockets() {
    require_root();
    // 7000 pairs held open (14k descriptors, under the 20k fd limit) and
    // 6000 TIME_WAIT minisocks.
    let c = crowd(7000, 6000);
    let ns_inode = inode_of(&format!("/run/netns/{}", c.ns.name));
    std::thread::sleep(std::time::Duration::from_millis(500));
    for _ in 0..3 {
        let t = Instant::now();
        let all = tcp_sockets_all_netns().unwrap();
        let all_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let here = c.ns.enter(|| tcp_sockets().unwrap());
        let one_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let scan = scan_socket_owners();
        let owners_ms = t.elapsed().as_secs_f64() * 1e3;
        let in_ns = all.iter().filter(|s| s.netns_inode == ns_inode).count();
        println!(
            "tcp_sockets in the crowd's namespace: {} sockets in {one_ms:.1} ms; \
             tcp_sockets_all_netns: {} sockets ({in_ns} in the crowd) in {all_ms:.1} ms; \
             scan_socket_owners: {} socket inodes over {} processes in {owners_ms:.1} ms",
            here.len(),
            all.len(),
            scan.owners.len(),
            scan.processes,
        );
    }
}
