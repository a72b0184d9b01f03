//! What the tests of TCP paths share (`orderly_closes.rs`, `resets.rs` and
//! `connect_failures.rs` in `tests/tests/`): network namespaces whose
//! child processes close none of the test's sockets, the test's thread as
//! the owner and closer the tracer must name, checks on the lives tcptrace
//! reports, and repeating the scenarios whose kernel events escaped it.
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
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    sync::{PoisonError, RwLock},
};

use tcptrace::{
    classify::{Close, Open, Verdict},
    decode::{Proc, Record},
    tracker::{Role, SocketLife},
};

use crate::{DEADLINE, State as S, Trace, netns::Netns};

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

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
pub fn closing<T>(f: impl FnOnce() -> T) -> T {
    let _no_spawn = SPAWNS.write().unwrap_or_else(PoisonError::into_inner);
    f()
}

/// A [`Netns`] whose commands (and removal) are [`spawning`].
pub struct Ns(Option<Netns>);

impl Ns {
    pub fn new(label: &str) -> Ns {
        Ns(Some(spawning(|| Netns::new(label))))
    }

    fn netns(&self) -> &Netns {
        self.0.as_ref().expect("removed only on drop")
    }

    pub fn exec(&self, program: &str, args: &[&str]) {
        spawning(|| self.netns().exec(program, args));
    }

    pub fn nft(&self, ruleset: &str) {
        spawning(|| self.netns().nft(ruleset));
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        spawning(|| self.netns().sysctl(key, value));
    }

    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
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
pub struct Me {
    pid: u32,
    tgid: u32,
    comm: String,
}

pub fn me() -> Me {
    let comm = std::fs::read_to_string("/proc/thread-self/comm").unwrap();
    Me {
        // SAFETY: plain syscall.
        pid: unsafe { libc::gettid() } as u32,
        tgid: std::process::id(),
        comm: comm.trim_end().to_owned(),
    }
}

impl Me {
    pub fn assert_is(&self, p: Option<&Proc>, what: &str, life: &SocketLife) {
        let p = p.unwrap_or_else(|| panic!("no {what}: {life:#?}"));
        assert_eq!(
            (p.pid, p.tgid, p.comm.as_str()),
            (self.pid, self.tgid, self.comm.as_str()),
            "{what} is not this test's thread: {life:#?}"
        );
    }
}

/// Reads give up after [`DEADLINE`] rather than hang the test.
pub fn bounded(stream: TcpStream) -> TcpStream {
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
}

pub fn path(life: &SocketLife) -> Vec<(S, S)> {
    life.steps.iter().map(|s| (s.old, s.new)).collect()
}

/// What every complete, established life must show.
pub fn assert_complete(life: &SocketLife, verdict: &Verdict, role: Role) {
    assert_eq!(life.role, role, "{life:#?}");
    assert!(verdict.incomplete.is_empty(), "{verdict:#?}\n{life:#?}");
    assert_eq!(life.state, Some(S::Close), "{life:#?}");
}

pub fn assert_active_open(life: &SocketLife, verdict: &Verdict) {
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

/// A connect that timed out because this host's own firewall rule dropped
/// its SYNs (NETFILTER_DROP), the first and at least one retransmit, each
/// drop tied to the client. Returns how many were dropped.
pub fn assert_syns_dropped_here(life: &SocketLife, verdict: &Verdict) -> u32 {
    assert!(life.syn_retransmits >= 1, "{life:#?}");
    let Close::HandshakeTimeout {
        syn_retransmits,
        syns_dropped,
    } = &verdict.close
    else {
        panic!("not a handshake timeout: {verdict:#?}\n{life:#?}");
    };
    assert_eq!(*syn_retransmits, life.syn_retransmits, "{life:#?}");
    let dropped = syns_dropped.as_ref().unwrap_or_else(|| panic!("{life:#?}"));
    assert_eq!(
        dropped.reason.name.as_deref(),
        Some("NETFILTER_DROP"),
        "{life:#?}"
    );
    assert!(
        dropped.count >= 2,
        "the first SYN and a retransmit: {life:#?}"
    );
    dropped.count
}

pub fn assert_passive_open(life: &SocketLife, verdict: &Verdict, listener: SocketAddr) {
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

/// A run of a scenario: its lives, or why kernel events it needed never
/// reached any tracer (see [`retrying`]).
pub type Run = Result<Vec<(SocketLife, Verdict)>, String>;

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
pub fn whole(trace: &Trace, lives: Vec<(SocketLife, Verdict)>) -> Run {
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

/// Most runs of a scenario that kernel events escaped.
pub const ATTEMPTS: u32 = 3;

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
pub fn retrying(what: &str, mut scenario: impl FnMut() -> Run) -> Vec<(SocketLife, Verdict)> {
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

/// An established connection on the namespace's loopback to `port`:
/// (listener, client, server child), all living in `ns`.
pub fn connect_in(ns: &Ns, ip: IpAddr, port: u16) -> (TcpListener, TcpStream, TcpStream) {
    ns.enter(move || {
        let listener = TcpListener::bind((ip, port)).unwrap();
        let client = bounded(TcpStream::connect((ip, port)).unwrap());
        let (served, _) = listener.accept().unwrap();
        (listener, client, bounded(served))
    })
}

/// An inet table `tt` with one rule on the input hook.
pub fn input_rule(ns: &Ns, rule: &str) {
    ns.nft(&format!(
        "add table inet tt; \
         add chain inet tt in {{ type filter hook input priority 0; }}; \
         add rule inet tt in {rule}"
    ));
}
