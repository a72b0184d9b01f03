//! Who owns and who closed each socket, on the real kernel, with real child
//! processes: owners across softirq, kills by signal, exits with a code, and
//! the kernel-side `--pid` filter.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    process::{Child, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

use clap::Parser as _;
use tcptrace::{
    classify::Close,
    cli::Args,
    decode::{Context, Record},
    loader::TraceOptions,
    render::words,
};
use tcptrace_tests::{DEADLINE, State, Trace, netns::Netns, touches};

/// A Python child that names itself `name` (its kernel comm) and runs `body`.
/// It prints lines on stdout to say where it is.
struct Program {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

const PRELUDE: &str = "
import os, socket, sys, time
open('/proc/self/comm', 'w').write(sys.argv[1])
def say(*words):
    print(*words, flush=True)
";

impl Program {
    fn spawn(name: &str, body: &str, args: &[&str]) -> Program {
        Program::spawn_in(None, name, body, args)
    }

    fn spawn_in(netns: Option<&Netns>, name: &str, body: &str, args: &[&str]) -> Program {
        let script = format!("{PRELUDE}\n{body}");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name, "python3"]);
                c
            }
            None => Command::new("python3"),
        };
        let mut child = cmd
            .arg("-c")
            .arg(script)
            .arg(name)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (installed by `cargo xtask setup`)");
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Program { child, stdout }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line the program prints (bounded: the program prints it
    /// right after a syscall, or has died and the read ends).
    fn line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("reading child stdout");
        assert!(!line.is_empty(), "child {} ended early", self.pid());
        line.trim().to_owned()
    }

    /// Tells the program to go on (it waits on a line of stdin).
    fn go(&mut self) {
        let stdin = self.child.stdin.as_mut().expect("piped stdin");
        stdin.write_all(b"go\n").expect("writing child stdin");
        stdin.flush().expect("flushing child stdin");
    }

    fn kill(&self, sig: i32) {
        // SAFETY: plain kill(2) of our own child.
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// Waits (bounded) for the program to end; its exit status.
    fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "child {} did not end",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago.
fn free_port(addr: &str) -> u16 {
    TcpListener::bind(addr)
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const SERVER: &str = "
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind((sys.argv[2], int(sys.argv[3]))); l.listen()
say('listening')
c, _ = l.accept()
while c.recv(4096): pass
c.close(); l.close()
say('done')
";

const CLIENT: &str = "
c = socket.create_connection((sys.argv[2], int(sys.argv[3])))
say('connected', c.getsockname()[1])
c.sendall(b'hello')
c.close()
";

/// Runs a named server and a named client; checks every transition of both
/// sockets carries the right owner, even those that ran in softirq.
fn owners_are_right(server_ns: Option<&Netns>, client_ns: Option<&Netns>, server_ip: &str) {
    let port = free_port("127.0.0.1:0");
    let mut trace = Trace::start(&[port]);
    let mut server = Program::spawn_in(
        server_ns,
        "tt-server",
        SERVER,
        &[server_ip, &port.to_string()],
    );
    assert_eq!(server.line(), "listening");
    let mut client = Program::spawn_in(
        client_ns,
        "tt-client",
        CLIENT,
        &[server_ip, &port.to_string()],
    );
    let client_port: u16 = client.line().split(' ').nth(1).unwrap().parse().unwrap();
    assert_eq!(server.line(), "done");
    client.wait();

    let (client_life, _) = trace.wait_life(client_port, port);
    let (child_life, _) = trace.wait_life(port, client_port);
    let owner_tgid = |life: &tcptrace::tracker::SocketLife| life.owner.as_ref().map(|o| o.tgid);
    // `ip netns exec` execs python3 in place: the pid is the child's.
    assert_eq!(owner_tgid(&client_life), Some(client.pid()));
    assert_eq!(client_life.owner.as_ref().unwrap().comm, "tt-client");
    assert_eq!(
        child_life.owner.as_ref().unwrap().comm,
        "tt-server",
        "the accepted socket belongs to the server"
    );

    let mut softirq_transitions = 0;
    for r in &trace.records {
        let Record::State { sock, .. } = r else {
            continue;
        };
        if !(touches(r, client_port) && touches(r, port)) {
            continue;
        }
        let expected = if sock.local.port() == port {
            "tt-server"
        } else {
            "tt-client"
        };
        let owner = sock.owner.as_ref().map(|o| o.comm.as_str());
        assert_eq!(owner, Some(expected), "wrong owner on {r:?}");
        if matches!(sock.context, Context::Softirq { .. }) {
            softirq_transitions += 1;
        }
    }
    assert!(
        softirq_transitions > 0,
        "no transition ran in softirq: {:#?}",
        trace.records
    );
}

#[test]
fn every_transition_carries_its_owner_on_loopback_even_in_softirq() {
    owners_are_right(None, None, "127.0.0.1");
}

#[test]
fn every_transition_carries_its_owner_across_a_veth_pair() {
    let (a, b) = (Netns::new("cli"), Netns::new("srv"));
    a.link(&b, "192.0.2.1/24", "192.0.2.2/24");
    owners_are_right(Some(&b), Some(&a), "192.0.2.2");
}

/// A victim connects to the test's listener, says so, then waits forever
/// without reading anything.
const VICTIM: &str = "
c = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
say('connected', c.getsockname()[1])
sys.stdin.readline()
time.sleep(60)
";

/// Starts a victim, accepts its connection and sends it `unread` bytes.
fn victim(port: u16, listener: &TcpListener, unread: usize) -> (Program, u16, TcpStream) {
    let mut victim = Program::spawn("tt-victim", VICTIM, &[&port.to_string()]);
    let victim_port: u16 = victim.line().split(' ').nth(1).unwrap().parse().unwrap();
    let (mut served, _) = listener.accept().unwrap();
    served.write_all(&vec![b'x'; unread]).unwrap();
    (victim, victim_port, served)
}

#[test]
fn sigkill_with_unread_data_is_an_rst_attributed_to_the_kill() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut trace = Trace::start(&[port]);
    let (victim, victim_port, mut served) = victim(port, &listener, 1000);
    victim.kill(libc::SIGKILL);

    let (life, verdict) = trace.wait_life(victim_port, port);
    let mut rest = Vec::new();
    let _ = served.read_to_end(&mut rest); // the peer sees the reset
    let reason = life
        .resets_sent
        .first()
        .and_then(|r| r.reason.as_ref())
        .and_then(|r| r.name.clone());
    assert_eq!(reason.as_deref(), Some("TCP_ABORT_ON_CLOSE"), "{life:#?}");
    assert_eq!(life.unread, Some(1000), "{life:#?}");
    assert_eq!(
        life.closed_by.as_ref().map(|p| p.tgid),
        Some(victim.pid()),
        "{life:#?}"
    );
    let exit = life
        .exit
        .as_ref()
        .unwrap_or_else(|| panic!("no exit attribution: {life:#?}"));
    let signal = exit
        .signal
        .as_ref()
        .unwrap_or_else(|| panic!("no signal: {exit:#?}"));
    assert_eq!(signal.number, libc::SIGKILL as u32);
    assert_eq!(
        signal.sender.as_ref().map(|s| s.tgid),
        Some(std::process::id()),
        "{signal:#?}"
    );
    assert!(
        matches!(verdict.close, Close::ResetSent { .. }),
        "{verdict:#?}"
    );
    let said = words::attribution(&life, &verdict).unwrap_or_default();
    assert!(
        said.contains("killed by SIGKILL") && said.contains("tt-victim"),
        "{said}"
    );
}

#[test]
fn sigterm_with_nothing_unread_closes_with_a_fin_attributed_to_the_kill() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut trace = Trace::start(&[port]);
    let (victim, victim_port, _served) = victim(port, &listener, 0);
    victim.kill(libc::SIGTERM);

    let (life, verdict) = trace.wait_life(victim_port, port);
    assert!(life.resets_sent.is_empty(), "{life:#?}");
    assert!(
        life.steps
            .iter()
            .any(|s| s.old == State::Established && s.new == State::FinWait1),
        "no FIN: {life:#?}"
    );
    assert_eq!(
        life.closed_by.as_ref().map(|p| p.tgid),
        Some(victim.pid()),
        "{life:#?}"
    );
    let signal = life
        .exit
        .as_ref()
        .and_then(|e| e.signal.as_ref())
        .unwrap_or_else(|| panic!("{life:#?}"));
    assert_eq!(signal.number, libc::SIGTERM as u32);
    assert_eq!(
        signal.sender.as_ref().map(|s| s.tgid),
        Some(std::process::id())
    );
    let said = words::attribution(&life, &verdict).unwrap_or_default();
    assert!(said.contains("SIGTERM") && said.contains("FIN"), "{said}");
}

const EXITS_WITH_3: &str = "
c = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
say('connected', c.getsockname()[1])
sys.stdin.readline()
os._exit(3)
";

#[test]
fn a_normal_exit_closes_gracefully_and_shows_its_exit_code() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut trace = Trace::start(&[port]);
    let mut program = Program::spawn("tt-exit3", EXITS_WITH_3, &[&port.to_string()]);
    let program_port: u16 = program.line().split(' ').nth(1).unwrap().parse().unwrap();
    let (_served, _) = listener.accept().unwrap();
    program.go();
    assert_eq!(program.wait().code(), Some(3));

    let (life, verdict) = trace.wait_life(program_port, port);
    assert!(life.resets_sent.is_empty(), "{life:#?}");
    let exit = life
        .exit
        .as_ref()
        .unwrap_or_else(|| panic!("no exit attribution: {life:#?}"));
    assert_eq!(exit.status, Some(3), "{exit:#?}");
    assert!(exit.signal.is_none(), "{exit:#?}");
    let said = words::attribution(&life, &verdict).unwrap_or_default();
    assert!(
        said.contains("exit code 3") && said.contains("FIN"),
        "{said}"
    );
}

/// Connects `n` times to the port, once told to go.
const BUSY: &str = "
sys.stdin.readline()
for _ in range(int(sys.argv[3])):
    c = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
    c.close()
say('done')
";

/// Two busy processes, `tt-kept` and `tt-dropped`, connect N times each;
/// the filter (built once both exist) must keep exactly tt-kept's sockets,
/// and the kernel's counters must show the rest dropped there.
fn only_the_kept_process_passes(filter: impl FnOnce(&Program) -> TraceOptions) {
    const N: usize = 20;
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let n = N.to_string();
    let mut kept = Program::spawn("tt-kept", BUSY, &[&port.to_string(), &n]);
    let mut dropped = Program::spawn("tt-dropped", BUSY, &[&port.to_string(), &n]);
    let mut trace = Trace::start_with(filter(&kept), &[port]);
    let acceptor = std::thread::spawn(move || {
        for _ in 0..2 * N {
            let _ = listener.accept().unwrap();
        }
    });
    kept.go();
    dropped.go();
    assert_eq!(kept.line(), "done");
    assert_eq!(dropped.line(), "done");
    acceptor.join().unwrap();

    let kept_pid = kept.pid();
    trace.wait_for(
        &format!("{N} client sockets of tt-kept to finish"),
        |r| touches(r, port),
        |t| {
            let n = t
                .lives
                .iter()
                .filter(|(l, _)| l.remote.port() == port)
                .count();
            (n >= N).then_some(n)
        },
    );
    let counters = trace.stop();
    let clients = trace
        .lives
        .iter()
        .filter(|(l, _)| l.remote.port() == port)
        .count();
    assert_eq!(clients, N, "exactly the kept process's connections");
    for r in &trace.records {
        if let Some(sock) = r.sock() {
            let by = sock
                .owner
                .as_ref()
                .or(sock.context.process())
                .map(|p| p.tgid);
            assert_eq!(
                by,
                Some(kept_pid),
                "an event of another process passed the filter: {r:?}"
            );
        }
    }
    assert!(
        counters.filtered > 0,
        "nothing dropped in the kernel: {counters:?}"
    );
    assert_eq!(counters.produced, counters.received + counters.lost);
}

/// Kernel-side options exactly as the CLI builds them from flags.
fn cli_options(flags: &[&str]) -> TraceOptions {
    let args = Args::try_parse_from(std::iter::once("tcptrace").chain(flags.iter().copied()))
        .unwrap_or_else(|e| panic!("{flags:?}: {e}"));
    args.trace_options()
        .unwrap_or_else(|e| panic!("{flags:?}: {e}"))
}

#[test]
fn the_pid_filter_keeps_one_process_and_drops_the_other_in_the_kernel() {
    only_the_kept_process_passes(|kept| TraceOptions {
        pids: vec![kept.pid()],
        ..TraceOptions::default()
    });
}

#[test]
fn the_comm_filter_keeps_one_process_name_and_drops_the_other_in_the_kernel() {
    only_the_kept_process_passes(|_| cli_options(&["--comm", "tt-kept"]));
}

/// A cgroup v2 of the test's own, removed on drop (once its processes end).
struct Cgroup(std::path::PathBuf);

impl Cgroup {
    fn new() -> Cgroup {
        let root = tcptrace::cli::cgroup2_root().expect("a cgroup v2 mount");
        let dir = root.join(format!("tt-test-{}", std::process::id()));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Cgroup(dir)
    }

    fn adopt(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn the_cgroup_filter_keeps_one_cgroup_and_drops_the_rest_in_the_kernel() {
    let cgroup = Cgroup::new();
    only_the_kept_process_passes(|kept| {
        cgroup.adopt(kept.pid());
        cli_options(&["--cgroup", cgroup.0.to_str().unwrap()])
    });
}

/// Listens with room for a few connections it never accepts.
const NEVER_ACCEPTS: &str = "
l = socket.socket()
l.bind(('127.0.0.1', 0))
l.listen(8)
say('listening', l.getsockname()[1])
time.sleep(60)
";

#[test]
fn a_listener_killed_with_unaccepted_children_resets_them_and_no_linger_is_blamed() {
    let mut server = Program::spawn("tt-backlog", NEVER_ACCEPTS, &[]);
    let port: u16 = server.line().split(' ').nth(1).unwrap().parse().unwrap();
    let mut trace = Trace::start(&[port]);
    // Two connections complete their handshake into the accept queue.
    let clients: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let client_port = clients[0].local_addr().unwrap().port();
    server.kill(libc::SIGKILL);
    server.wait();
    // The server-side child of the first connection.
    let (life, verdict) = trace.wait_life(port, client_port);
    let seen: Vec<String> = trace.records.iter().map(tcptrace_tests::describe).collect();
    assert!(life.unaccepted, "{life:#?}\nrecords: {seen:#?}");
    let reason = life.resets_sent.first().and_then(|r| r.reason.as_ref());
    assert_eq!(
        reason.and_then(|r| r.name.as_deref()),
        Some("TCP_STATE"),
        "{life:#?}"
    );
    let told = format!(
        "{} / {}",
        words::summary(&life, &verdict),
        words::attribution(&life, &verdict).unwrap_or_default()
    );
    assert!(!told.contains("SO_LINGER"), "{told}");
    assert!(
        told.contains("listener closed before accepting it"),
        "{told}"
    );
    assert!(told.contains("tt-backlog["), "{told}");
}

/// Connects; a second thread named `bgworker` takes a file table of its
/// own (so the socket's last reference is its), then the main thread
/// closes its copy: the socket is closed by the worker's exit.
const THREADED: &str = "
import ctypes, threading
libc = ctypes.CDLL(None, use_errno=True)
c = socket.create_connection(('127.0.0.1', int(sys.argv[2])))
ready = threading.Event()
def worker():
    open('/proc/self/task/%d/comm' % threading.get_native_id(), 'w').write('bgworker')
    assert libc.unshare(0x400) == 0  # CLONE_FILES
    ready.set()
    time.sleep(60)
threading.Thread(target=worker, daemon=True).start()
ready.wait()
port = c.getsockname()[1]
c.close()
say('connected', port)
time.sleep(60)
";

#[test]
fn a_multithreaded_process_killed_is_named_first_and_its_thread_after() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut trace = Trace::start(&[port]);
    let mut victim = Program::spawn("tt-threaded", THREADED, &[&port.to_string()]);
    let (_served, _) = listener.accept().unwrap();
    let victim_port: u16 = victim.line().split(' ').nth(1).unwrap().parse().unwrap();
    victim.kill(libc::SIGKILL);
    victim.wait();
    let (life, verdict) = trace.wait_life(victim_port, port);
    let said = words::attribution(&life, &verdict).unwrap_or_default();
    let expect = format!(
        "closed by exit of tt-threaded[{}] (thread bgworker)",
        victim.pid()
    );
    assert!(
        said.starts_with(&expect),
        "expected {expect:?}, got {said:?}"
    );
    assert!(said.contains("killed by SIGKILL"), "{said}");
}
