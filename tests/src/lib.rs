//! Helpers for tcptrace's integration tests: a live tracer on the real
//! kernel, and bounded waits for what it must report about one socket.
//!
//! Tests run concurrently and every tracer sees all of the machine's TCP
//! traffic, so each test picks out its own sockets by their ports.

pub mod bpf_objects;
pub mod json_run;
pub mod netns;
pub mod paths;
pub mod prometheus;

use std::{
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use tcptrace::{
    classify::{Verdict, classify},
    counters::Counters,
    decode::{Record, TcpState},
    loader::{TraceOptions, Tracer},
    model::Tally,
    tracker::{SocketLife, Tracker, TrackerOptions},
};

/// How long a test waits for the kernel's events before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Between drains of the ring buffer while waiting.
const POLL: Duration = Duration::from_millis(10);

/// A tracer running in the test, with everything it has reported so far.
pub struct Trace {
    tracer: Tracer,
    tracker: Tracker,
    /// Records kept (those `keep` selects), in ring-buffer order.
    pub records: Vec<Record>,
    /// Socket lives the tracker finished that `keep_life` selects.
    pub lives: Vec<(SocketLife, Verdict)>,
    /// What the tracker counted beside lives (expired requests) about
    /// listeners on the test's ports.
    pub tallies: Vec<Tally>,
    /// The test's own ports: what it keeps of the machine's traffic, so
    /// that memory stays bounded however busy the machine is.
    ports: Vec<u16>,
}

fn require_root() {
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        panic!(
            "tcptrace's integration tests load eBPF programs: run them as root (`cargo xtask test`)"
        );
    }
}

impl Trace {
    /// A tracer that sees all of the machine's TCP traffic and keeps what
    /// touches `ports` (plus every process exit and signal).
    pub fn start(ports: &[u16]) -> Trace {
        // A roomy ring: the test drains between its own steps, and a busy
        // machine must not make it lose the events it waits for.
        let opts = TraceOptions {
            ring_bytes: 16 << 20,
            ..TraceOptions::default()
        };
        Trace::start_with(opts, ports)
    }

    pub fn start_with(opts: TraceOptions, ports: &[u16]) -> Trace {
        require_root();
        let tracer = match Tracer::start(&opts) {
            Ok(t) => t,
            Err(e) => panic!("starting the tracer: {e}"),
        };
        Trace {
            tracer,
            tracker: Tracker::new(TrackerOptions {
                // Short, so that lives whose Destroy comes late are reported soon.
                linger_ns: 100_000_000,
                ..TrackerOptions::default()
            }),
            records: Vec::new(),
            lives: Vec::new(),
            tallies: Vec::new(),
            ports: ports.to_vec(),
        }
    }

    fn keeps(&self, record: &Record) -> bool {
        match record {
            Record::ProcessExit { .. } | Record::Signal { .. } | Record::OomVictim { .. } => true,
            _ => self.ports.iter().any(|&p| touches(record, p)),
        }
    }

    fn keep_life(&mut self, life: Box<SocketLife>) {
        let ours = |p: u16| life.local.port() == p || life.remote.port() == p;
        if self.ports.iter().any(|&p| ours(p)) {
            let verdict = classify(&life);
            self.lives.push((*life, verdict));
        }
    }

    /// Reads what the kernel has produced so far.
    pub fn drain(&mut self) {
        let mut fresh = Vec::new();
        self.tracer.drain(|r| fresh.push(r));
        for record in fresh {
            for life in self.tracker.observe(&record) {
                self.keep_life(life);
            }
            if self.keeps(&record) {
                self.records.push(record);
            }
        }
        for life in self.tracker.expire(tcptrace::session::monotonic_ns()) {
            self.keep_life(life);
        }
        for t in self.tracker.take_tallies() {
            if let Tally::RequestExpired(l) = &t
                && self.ports.contains(&l.listener.port())
            {
                self.tallies.push(t);
            }
        }
    }

    /// Drains until `found` returns something, or panics after [`DEADLINE`]
    /// showing the records that `relevant` selects.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        relevant: impl Fn(&Record) -> bool,
        found: impl Fn(&Trace) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        loop {
            self.drain();
            if let Some(t) = found(self) {
                return t;
            }
            if start.elapsed() > DEADLINE {
                let seen: Vec<String> = self
                    .records
                    .iter()
                    .filter(|r| relevant(r))
                    .map(describe)
                    .collect();
                panic!(
                    "waited {DEADLINE:?} for {what}; counters {:?}; relevant events seen ({}):\n{}",
                    self.tracer.counters(),
                    seen.len(),
                    seen.join("\n")
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the finished life of the socket whose local port is `local`
    /// and whose remote port is `remote`.
    pub fn wait_life(&mut self, local: u16, remote: u16) -> (SocketLife, Verdict) {
        self.wait_life_where(
            &format!("the socket :{local} → :{remote} to finish"),
            &[local, remote],
            |life| life.local.port() == local && life.remote.port() == remote,
        )
    }

    /// Waits for the first finished life that `pick` selects; on failure,
    /// shows the events that touched `ports`.
    pub fn wait_life_where(
        &mut self,
        what: &str,
        ports: &[u16],
        pick: impl Fn(&SocketLife) -> bool,
    ) -> (SocketLife, Verdict) {
        self.wait_for(
            what,
            |r| ports.iter().any(|&p| touches(r, p)),
            |t| t.lives.iter().find(|(life, _)| pick(life)).cloned(),
        )
    }

    /// Stops the programs, drains the rest: counters then add up exactly.
    pub fn stop(&mut self) -> Counters {
        self.tracer.detach();
        self.drain();
        self.tracer.counters()
    }

    pub fn counters(&self) -> Counters {
        self.tracer.counters()
    }
}

/// Does this record concern a socket (or a dropped segment) with `port`
/// at either end?
pub fn touches(r: &Record, port: u16) -> bool {
    match r {
        Record::Drop(d) => d.source.port() == port || d.destination.port() == port,
        _ => r
            .sock()
            .is_some_and(|s| s.local.port() == port || s.remote.port() == port),
    }
}

/// A one-line description of a record, for failure messages.
pub fn describe(r: &Record) -> String {
    match r {
        Record::State { sock, old, new, .. } => format!(
            "{:#x} {} → {}  {old} → {new}  ctx={:?} owner={:?}",
            sock.skaddr,
            sock.local,
            sock.remote,
            sock.context,
            sock.owner.as_ref().map(|o| (&o.comm, o.pid))
        ),
        other => format!("{other:?}"),
    }
}

/// The state transitions of one socket life: from the record at `start`
/// (which must be a state record) through its first transition to CLOSE.
pub fn life_from(records: &[Record], start: usize) -> Vec<(TcpState, TcpState)> {
    let Some(skaddr) = records.get(start).and_then(Record::sock).map(|s| s.skaddr) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in &records[start..] {
        if let Record::State { sock, old, new, .. } = r
            && sock.skaddr == skaddr
        {
            out.push((*old, *new));
            if *new == TcpState::Close {
                break;
            }
        }
    }
    out
}

/// Index of the first state record `old → new` matching `pick`.
pub fn find_state(
    records: &[Record],
    old: TcpState,
    new: TcpState,
    pick: impl Fn(SocketAddr, SocketAddr) -> bool,
) -> Option<usize> {
    records.iter().position(|r| match r {
        Record::State {
            sock,
            old: o,
            new: n,
            ..
        } => *o == old && *n == new && pick(sock.local, sock.remote),
        _ => false,
    })
}

/// Makes `cmd` run as `nobody`, which drops every capability.
pub fn as_nobody(cmd: &mut std::process::Command) -> &mut std::process::Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setresgid(65534, 65534, 65534) != 0
                || libc::setresuid(65534, 65534, 65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The tcptrace binary, built by `cargo xtask test` before the tests run.
pub fn tcptrace_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/tcptrace
    let path = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("tcptrace"))
        .expect("test binary lives under target/<profile>/deps");
    assert!(
        path.exists(),
        "{} not built: run the tests with `cargo xtask test`",
        path.display()
    );
    path
}

pub use tcptrace::decode::TcpState as State;

/// The lines of a child's output, read on a thread of their own.
pub fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stream)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Collects lines into `seen` until one satisfies `done`; false after
/// [`DEADLINE`] or when the stream ends.
pub fn wait_line(
    lines: &std::sync::mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    mut done: impl FnMut(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let hit = done(&line);
                seen.push(line);
                if hit {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
}

/// A running tcptrace CLI and its stderr lines.
pub struct Cli {
    pub child: std::process::Child,
    pub stderr: std::sync::mpsc::Receiver<String>,
    pub stderr_lines: Vec<String>,
}

impl Cli {
    /// Starts tcptrace with `args` and waits until it is tracing.
    pub fn start(args: &[&str], stdout: std::process::Stdio) -> Cli {
        Cli::start_with(
            std::process::Command::new(tcptrace_binary())
                .args(args)
                .stdout(stdout),
        )
    }

    pub fn start_with(cmd: &mut std::process::Command) -> Cli {
        let mut child = cmd.stderr(std::process::Stdio::piped()).spawn().unwrap();
        let stderr = lines_of(child.stderr.take().unwrap());
        let mut stderr_lines = Vec::new();
        if !wait_line(&stderr, &mut stderr_lines, |l| l.contains("tracing TCP")) {
            let _ = child.kill();
            panic!("tcptrace never said it was tracing: {stderr_lines:#?}");
        }
        Cli {
            child,
            stderr,
            stderr_lines,
        }
    }

    /// Where `--metrics` serves, as tcptrace said when it started.
    pub fn metrics_addr(&self) -> SocketAddr {
        self.stderr_lines
            .iter()
            .find_map(|l| {
                let rest = l.split("metrics at http://").nth(1)?;
                rest.split("/metrics").next()?.parse().ok()
            })
            .unwrap_or_else(|| panic!("no metrics address said: {:#?}", self.stderr_lines))
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits at most `limit` for the exit; panics (after killing it) if it
    /// takes longer. Returns the exit code and the summary's JSON.
    pub fn exit_within(
        mut self,
        limit: std::time::Duration,
    ) -> (Option<i32>, serde_json::Value, Vec<String>) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "tcptrace did not exit within {limit:?}; stderr: {:#?}",
                    self.stderr_lines
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let _ = self.child.wait();
        self.stderr_lines.extend(self.stderr.iter());
        let summary = self
            .stderr_lines
            .iter()
            .find_map(|l| l.strip_prefix("tcptrace-summary "))
            .unwrap_or_else(|| panic!("no summary line: {:#?}", self.stderr_lines));
        let summary = serde_json::from_str(summary).unwrap();
        (status.code(), summary, self.stderr_lines)
    }
}

/// SO_LINGER {on, 0 s}: close() then aborts the connection with an RST.
pub fn linger_zero(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid `linger` of the size given, on a socket we own.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// A tracer that sees only sockets with `port` at either end (filtered in
/// the kernel), keeping what touches it.
pub fn trace(port: u16) -> Trace {
    let mut opts = TraceOptions::default();
    opts.filter.flags |= tcptrace_common::filter::PORT;
    opts.filter.port = port;
    Trace::start_with(opts, &[port])
}

/// A port number free on `ip`, held (by the listener returned) until the
/// test ends, so that no other test takes it meanwhile.
pub fn reserve_port(ip: std::net::IpAddr) -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind((ip, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// The ladder tcptrace prints for a life.
pub fn ladder(life: &SocketLife, verdict: &Verdict) -> String {
    let opts = tcptrace::render::RenderOptions {
        view: tcptrace::render::View::Sockets,
        ..Default::default()
    };
    let mut r = tcptrace::render::Renderer::new(Vec::new(), opts);
    r.socket(life, verdict).unwrap();
    String::from_utf8(r.into_inner()).unwrap()
}

/// The flags of a headless daemon serving metrics at `metrics`, traced on
/// `port` only; it ends by itself within `--duration`, should a failed test
/// leave it behind.
pub fn daemon_args<'a>(metrics: &'a str, port: &'a str) -> [&'a str; 8] {
    [
        "--view",
        "none",
        "--duration",
        "180",
        "--metrics",
        metrics,
        "--port",
        port,
    ]
}

/// `addr` as the sockets API takes it, with its length (for a raw
/// `bind`/`connect` where std has no way to say what the test needs).
pub fn sockaddr(addr: std::net::SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        std::net::SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut ss).cast::<libc::sockaddr_in>().write(sa) };
            size_of::<libc::sockaddr_in>()
        }
        std::net::SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { (&raw mut ss).cast::<libc::sockaddr_in6>().write(sa) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// `listen(2)` on `addr` with `backlog` (std listens with 128): the accept
/// queue then holds `backlog + 1`, and the request queue `backlog`.
pub fn listen_backlog(addr: std::net::SocketAddr, backlog: i32) -> std::net::TcpListener {
    use std::os::fd::AsRawFd as _;
    let socket = std::net::TcpListener::bind(addr).unwrap();
    // SAFETY: plain syscall on a socket we own.
    let rc = unsafe { libc::listen(socket.as_raw_fd(), backlog) };
    assert_eq!(rc, 0, "listen: {}", std::io::Error::last_os_error());
    socket
}

/// Starts connecting to `to` without waiting: the SYN is sent, and the
/// stream is non-blocking.
pub fn connect_nowait(to: std::net::SocketAddr) -> std::net::TcpStream {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let family = if to.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd nobody else owns.
    let stream = std::net::TcpStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
    stream.set_nonblocking(true).unwrap();
    let (ss, len) = sockaddr(to);
    // SAFETY: a valid sockaddr of the length given.
    let rc = unsafe { libc::connect(stream.as_raw_fd(), (&raw const ss).cast(), len) };
    let err = std::io::Error::last_os_error();
    assert!(
        rc == 0 || err.raw_os_error() == Some(libc::EINPROGRESS),
        "connect: {err}"
    );
    stream
}
