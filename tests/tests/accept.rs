//! The owner of an accepted socket is the process that accepted it: a
//! pre-fork server (the master listens, a worker accepts) and two processes
//! sharing a port with SO_REUSEPORT (the kernel picks the listener). Each
//! test runs the real CLI against real processes and reads its JSON.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::TcpStream,
    process::{Command, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use serde_json::Value;
use tcptrace_tests::{
    DEADLINE,
    json_run::{KillOnDrop, port_of, traced},
    lines_of,
};

/// Starts `python3 -c script`; its first line is returned, the rest stream.
fn python(script: &str) -> (KillOnDrop, String, Receiver<String>) {
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    out.read_line(&mut first).unwrap();
    (KillOnDrop(child), first.trim().to_owned(), lines_of(out))
}

/// A listener on `port` (0: any) that accepts in a loop, prints
/// `<pid> <client port>` for each connection and closes it when the client
/// does. `fork`: the listening process forks one worker that accepts.
fn server_script(ip: &str, port: u16, reuseport: bool, fork: bool) -> String {
    let family = if ip.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    format!(
        "import ctypes, os, socket\n\
         l = socket.socket(socket.{family})\n\
         l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, {reuseport})\n\
         l.bind(('{ip}', {port})); l.listen(64)\n\
         print(l.getsockname()[1], os.getpid(), flush=True)\n\
         if {fork} and os.fork() != 0:\n\
         \x20   os.wait(); raise SystemExit\n\
         if {fork}: ctypes.CDLL(None).prctl(1, 9)  # dies with the master\n\
         while True:\n\
         \x20   c, peer = l.accept()\n\
         \x20   print(os.getpid(), peer[1], flush=True)\n\
         \x20   while c.recv(4096): pass\n\
         \x20   c.close()\n",
        reuseport = u8::from(reuseport),
        fork = if fork { "True" } else { "False" },
    )
}

/// Connects `n` times to `port`, one connection at a time, each closed by
/// this side after a moment; returns the client ports.
fn connect_times(ip: &str, port: u16, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let c = TcpStream::connect((ip, port)).unwrap();
            let local = c.local_addr().unwrap().port();
            std::thread::sleep(Duration::from_millis(20));
            drop(c);
            local
        })
        .collect()
}

/// `<pid> <client port>` lines the servers printed, until `n` or the deadline.
fn accepted_ports(servers: &[&Receiver<String>], n: usize) -> HashMap<u16, u64> {
    let mut by_port = HashMap::new();
    let start = Instant::now();
    while by_port.len() < n && start.elapsed() < DEADLINE {
        for rx in servers {
            while let Ok(line) = rx.recv_timeout(Duration::from_millis(10)) {
                let mut parts = line.split_whitespace().map(|p| p.parse::<u64>().unwrap());
                let (pid, port) = (parts.next().unwrap(), parts.next().unwrap());
                by_port.insert(port as u16, pid);
            }
        }
    }
    by_port
}

/// The server-side socket lines of connections to `port`, by client port.
fn server_sockets(lines: &[Value], port: u16) -> HashMap<u16, &Value> {
    lines
        .iter()
        .filter(|l| l["type"] == "socket" && port_of(&l["socket"]["local"]) == port)
        .filter(|l| l["socket"]["role"] == "server")
        .map(|l| (port_of(&l["socket"]["remote"]), &l["socket"]))
        .collect()
}

fn tgid(v: &Value) -> Option<u64> {
    v["tgid"].as_u64()
}

#[test]
fn a_worker_that_accepts_owns_the_socket_its_master_listened_for() {
    for ip in ["127.0.0.1", "::1"] {
        worker_accepts(ip);
    }
}

fn worker_accepts(ip: &str) {
    let (server, first, out) = python(&server_script(ip, 0, false, true));
    let mut first = first.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    let (port, master) = (first.next().unwrap() as u16, first.next().unwrap());
    let (lines, summary) = traced(&["--view", "both", "--port", &port.to_string()], || {
        connect_times(ip, port, 2);
    });
    let accepted = accepted_ports(&[&out], 2);
    drop(server);
    let sockets = server_sockets(&lines, port);
    assert_eq!(accepted.len(), 2, "{ip}: the worker printed {accepted:?}");
    for (client_port, worker) in &accepted {
        assert_ne!(*worker, master, "the worker is a forked process");
        let s = sockets.get(client_port).unwrap_or_else(|| {
            panic!("no server socket for client port {client_port}; saw {sockets:#?}; {summary}")
        });
        assert_eq!(
            tgid(&s["owner"]),
            Some(*worker),
            "owner: the acceptor: {s:#}"
        );
        assert_eq!(tgid(&s["accepted"]["by"]), Some(*worker), "{s:#}");
        assert_eq!(
            tgid(&s["listener_owner"]),
            Some(master),
            "the master listened: {s:#}"
        );
        assert!(
            s["accepted"]["queued_ns"].is_u64(),
            "time in the accept queue: {s:#}"
        );
        assert_eq!(tgid(&s["closed_by"]), Some(*worker), "{s:#}");
    }
    // The stream says it as it happens.
    let accepts = lines
        .iter()
        .filter(|l| l["event"] == "accept" && port_of(&l["local"]) == port)
        .count();
    assert_eq!(
        accepts, 2,
        "{ip}: accept events in the stream; summary {summary}"
    );
}

/// Two processes listening on one port with SO_REUSEPORT.
fn reuseport_pair() -> (u16, [(KillOnDrop, u64, Receiver<String>); 2]) {
    let (a, first, out_a) = python(&server_script("127.0.0.1", 0, true, false));
    let mut first = first.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    let (port, pid_a) = (first.next().unwrap() as u16, first.next().unwrap());
    let (b, first, out_b) = python(&server_script("127.0.0.1", port, true, false));
    let pid_b: u64 = first.split_whitespace().nth(1).unwrap().parse().unwrap();
    (port, [(a, pid_a, out_a), (b, pid_b, out_b)])
}

const CONNECTIONS: usize = 16;

/// Connects to a reuseport pair in rounds of [`CONNECTIONS`] until both
/// servers accepted at least one (the kernel picks a listener by a hash of
/// the client's port, so one round can, rarely, land on one side only);
/// at most four rounds. Returns what the servers printed.
fn spread_over(port: u16, servers: &[(KillOnDrop, u64, Receiver<String>); 2]) -> HashMap<u16, u64> {
    let mut accepted = HashMap::new();
    for _ in 0..4 {
        connect_times("127.0.0.1", port, CONNECTIONS);
        accepted.extend(accepted_ports(&[&servers[0].2, &servers[1].2], CONNECTIONS));
        let pids: Vec<u64> = accepted.values().copied().collect();
        if pids.contains(&servers[0].1) && pids.contains(&servers[1].1) {
            return accepted;
        }
        eprintln!("after a round, one listener accepted all: {accepted:?}");
    }
    // Never spread: show the failing test what the kernel lists as
    // listening on the port (both listeners, one reuseport group?).
    let listeners = Command::new("ss")
        .args(["-H", "-ltnpe", &format!("sport = :{port}")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    eprintln!("listeners on {port}: {listeners:?}");
    accepted
}

#[test]
fn in_a_reuseport_group_each_child_belongs_to_the_process_that_accepted_it() {
    let (port, servers) = reuseport_pair();
    let mut accepted = HashMap::new();
    let (lines, summary) = traced(&["--port", &port.to_string()], || {
        accepted = spread_over(port, &servers);
    });
    let sockets = server_sockets(&lines, port);
    assert!(
        accepted.len() >= CONNECTIONS && accepted.len() % CONNECTIONS == 0,
        "every connection accepted, in whole rounds of {CONNECTIONS}: {accepted:?}"
    );
    let pids: Vec<u64> = accepted.values().copied().collect();
    assert!(
        pids.contains(&servers[0].1) && pids.contains(&servers[1].1),
        "the kernel spread {CONNECTIONS} connections over both listeners: {accepted:?}"
    );
    for (client_port, pid) in &accepted {
        let s = sockets
            .get(client_port)
            .unwrap_or_else(|| panic!("no server socket for client port {client_port}; {summary}"));
        assert_eq!(tgid(&s["owner"]), Some(*pid), "{s:#}");
        assert_eq!(s["shared_listener"], true, "{s:#}");
        assert_eq!(
            s["listener_owner"],
            Value::Null,
            "no single listener owner: {s:#}"
        );
        assert_eq!(s["steps"].as_array().map(Vec::len), Some(5), "{s:#}");
    }
}

#[test]
fn pid_keeps_every_transition_of_its_reuseport_children_and_none_of_the_others() {
    let (port, servers) = reuseport_pair();
    let (kept, other) = (servers[0].1, servers[1].1);
    let args = ["--view", "both", "--pid", &kept.to_string()];
    let mut accepted = HashMap::new();
    let (lines, summary) = traced(&args, || {
        accepted = spread_over(port, &servers);
    });
    let sockets = server_sockets(&lines, port);
    let mine: Vec<u16> = accepted
        .iter()
        .filter(|(_, pid)| **pid == kept)
        .map(|(port, _)| *port)
        .collect();
    let theirs = accepted.len() - mine.len();
    assert!(
        !mine.is_empty() && theirs > 0,
        "both accepted some: {accepted:?}"
    );
    for client_port in &mine {
        let s = sockets
            .get(client_port)
            .unwrap_or_else(|| panic!("no socket for {client_port}; {summary}"));
        // All five, from LISTEN→SYN_RECV: the kernel let them through
        // before the accept decided whose they were.
        assert_eq!(s["steps"].as_array().map(Vec::len), Some(5), "{s:#}");
        assert!(s["started_mid_life"] == false, "{s:#}");
    }
    let foreign: Vec<&&Value> = sockets
        .values()
        .filter(|s| tgid(&s["owner"]) != Some(kept))
        .collect();
    assert!(
        foreign.is_empty(),
        "--pid {kept} showed {other}'s sockets: {foreign:#?}"
    );
    assert!(
        summary["filtered"].as_u64().unwrap() > 0,
        "the others' events were filtered: {summary}"
    );
}

#[test]
fn without_accept_tracking_a_child_keeps_its_listeners_owner() {
    let (server, first, out) = python(&server_script("127.0.0.1", 0, false, true));
    let mut first = first.split_whitespace().map(|p| p.parse::<u64>().unwrap());
    let (port, master) = (first.next().unwrap() as u16, first.next().unwrap());
    let args = ["--no-accept", "--port", &port.to_string()];
    let (lines, summary) = traced(&args, || {
        connect_times("127.0.0.1", port, 1);
    });
    let accepted = accepted_ports(&[&out], 1);
    drop(server);
    let sockets = server_sockets(&lines, port);
    let (client_port, _) = accepted.iter().next().expect("the worker accepted");
    let s = sockets
        .get(client_port)
        .unwrap_or_else(|| panic!("no socket for {client_port}; {summary}"));
    assert_eq!(tgid(&s["owner"]), Some(master), "{s:#}");
    assert_eq!(s["accepted"], Value::Null, "{s:#}");
}
