//! Mass-close workload for `cargo xtask bench` (std + libc, blocking).
//!
//! `massclose [--conns N] [--port P] [--unread-every K] [--unread-bytes B]
//!            [--timeout S]`
//!
//! A child process opens N loopback connections (20000 by default) to a
//! listener that accepts them all and holds them, then the child is killed
//! with SIGKILL: the kernel closes its N sockets at once in the dying
//! process, each sending a FIN, or an RST where data was left unread. Then
//! the listening side closes its N sockets too, and every socket of the
//! scenario is gone (or in TIME_WAIT, which is no longer a full socket).
//!
//! Some connections carry unread bytes: on every K-th one (default 4; 0 for
//! none) the listening side writes B bytes (default 1000) that the child
//! never reads, and on every K-th one half-way between, the child writes B
//! bytes that the listening side never reads.
//!
//! Every socket needs a file descriptor on its side, so the limit
//! (RLIMIT_NOFILE) is raised to what N needs, as far as the hard limit
//! allows (raising the hard limit needs CAP_SYS_RESOURCE). When one process
//! cannot hold N sockets, the connections are split into shards: shard i is
//! a listening process on port P+i and a child connecting to it, and all the
//! children are killed together. This process only coordinates: it starts
//! the listening processes and the children (running this same binary with
//! the hidden `--role server|client`), waits for them, kills the children,
//! tells the listening processes to close, and prints one JSON line:
//! `{"connections":…,"shards":…,"ports":[…],"killed_pids":[…],
//!   "unread_in_killed":…,"unread_in_listener":…,"nofile":…,
//!   "connect_s":…,"kill_s":…,"close_s":…}`.
//! Every wait is bounded by `--timeout` seconds per phase; on any failure
//! every process it started is killed and reaped, and it exits 1 (2 on a
//! usage error). Its helpers die with it (PR_SET_PDEATHSIG).

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::process::{Child, ChildStdin, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// File descriptors kept for everything but the sockets.
const FD_SLACK: u64 = 64;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The environment variable that gives the helpers their parent's pid.
const PARENT_ENV: &str = "MASSCLOSE_PARENT";

/// Which process of the scenario this is.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Role {
    Coordinator,
    Server,
    Client,
}

/// A process holding many loopback connections SIGKILLed, for `cargo xtask
/// bench`.
#[derive(clap::Parser)]
#[command(name = "massclose")]
struct Args {
    /// Internal: which process this is.
    #[arg(long, value_enum, default_value_t = Role::Coordinator, hide = true)]
    role: Role,
    /// Connections the child opens (1 to 1000000).
    #[arg(long, value_name = "N", default_value_t = 20000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    conns: u64,
    /// First listening port; shard i listens on P+i.
    #[arg(long, value_name = "P", default_value_t = 23900, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Leave B unread bytes on every K-th connection, on each side in turn;
    /// 0 for none.
    #[arg(long, value_name = "K", default_value_t = 4)]
    unread_every: u64,
    /// Bytes left unread (1 to 65536).
    #[arg(long, value_name = "B", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=65536))]
    unread_bytes: u32,
    /// Seconds each phase may take.
    #[arg(long, value_name = "S", default_value = "60", value_parser = positive_duration)]
    timeout: Duration,
}

fn positive_duration(s: &str) -> Result<Duration, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(Duration::from_secs_f64(v)),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// Raises RLIMIT_NOFILE towards `wanted` (the hard limit too, which only
/// works with CAP_SYS_RESOURCE) and returns the soft limit now in force.
fn raise_nofile(wanted: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return 1024;
    }
    if lim.rlim_max < wanted {
        let more = libc::rlimit {
            rlim_cur: wanted,
            rlim_max: wanted,
        };
        // SAFETY: valid pointer; failure (no CAP_SYS_RESOURCE) is fine.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &more) } == 0 {
            return wanted;
        }
    }
    let soft = libc::rlimit {
        rlim_cur: lim.rlim_max.min(wanted.max(lim.rlim_cur)),
        rlim_max: lim.rlim_max,
    };
    // SAFETY: valid pointer; raising the soft limit up to the hard one is
    // always allowed.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        soft.rlim_cur
    } else {
        lim.rlim_cur
    }
}

/// The helpers end with the coordinator, however it ends.
fn die_with_parent() -> Result<(), String> {
    // SAFETY: plain prctl/getppid calls.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let expected: Option<i32> = std::env::var(PARENT_ENV).ok().and_then(|p| p.parse().ok());
    // SAFETY: as above.
    let ppid = unsafe { libc::getppid() };
    match expected {
        Some(p) if p == ppid => Ok(()),
        _ => Err("the coordinator is gone (or this role was started by hand)".into()),
    }
}

/// Blocks until stdin reaches EOF: the coordinator closed it, or died.
fn wait_for_eof() {
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin();
    loop {
        match stdin.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The listening side of one shard: accept `--conns`, leave bytes unread in
/// the peer on every K-th, hold them all until stdin closes, then close.
fn server(args: &Args) -> Result<(), String> {
    die_with_parent()?;
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    // std listens with a short backlog; the child connects back to back.
    // SAFETY: listen on our own listening socket only resizes its queue.
    unsafe {
        libc::listen(listener.as_raw_fd(), 4096);
    }
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    say("listening");
    let payload = vec![b'u'; args.unread_bytes as usize];
    let deadline = Instant::now() + args.timeout;
    let n = usize::try_from(args.conns).map_err(|_| "--conns too large")?;
    let mut streams = Vec::with_capacity(n);
    let mut wrote = 0u64;
    while streams.len() < n {
        match listener.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)
                    .map_err(|e| format!("accepted socket: {e}"))?;
                let i = streams.len() as u64;
                if args.unread_every > 0 && i.is_multiple_of(args.unread_every) {
                    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
                    s.write_all(&payload)
                        .map_err(|e| format!("writing to connection {i}: {e}"))?;
                    wrote += 1;
                }
                streams.push(s);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return Err(format!(
                        "accepted {} of {n} connections within {:?}",
                        streams.len(),
                        args.timeout
                    ));
                }
                thread::sleep(Duration::from_millis(1));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(format!(
                    "accept failed after {} connections: {e}",
                    streams.len()
                ));
            }
        }
    }
    say(&format!("accepted {n} {wrote}"));
    wait_for_eof();
    drop(streams);
    drop(listener);
    say("closed");
    Ok(())
}

/// The child of one shard: open `--conns` connections, leave bytes unread in
/// the listening side on every K-th (half-way between the server's), then
/// hold them until killed.
fn client(args: &Args) -> Result<(), String> {
    die_with_parent()?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.port));
    let payload = vec![b'c'; args.unread_bytes as usize];
    let deadline = Instant::now() + args.timeout;
    let n = usize::try_from(args.conns).map_err(|_| "--conns too large")?;
    let mut streams = Vec::with_capacity(n);
    let mut wrote = 0u64;
    let k = args.unread_every;
    for i in 0..args.conns {
        if Instant::now() >= deadline {
            return Err(format!(
                "opened {i} of {n} connections within {:?}",
                args.timeout
            ));
        }
        let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
            .map_err(|e| format!("connection {i} to {addr}: {e}"))?;
        if k >= 2 && i % k == k / 2 {
            let _ = s.set_write_timeout(Some(IO_TIMEOUT));
            s.write_all(&payload)
                .map_err(|e| format!("writing to connection {i}: {e}"))?;
            wrote += 1;
        }
        streams.push(s);
    }
    say(&format!("connected {n} {wrote}"));
    // Killed here; EOF means the coordinator is gone, so stop too.
    wait_for_eof();
    Ok(())
}

/// A helper process, SIGKILLed and reaped on drop unless already reaped.
struct Helper {
    child: Child,
    stdin: Option<ChildStdin>,
    shard: usize,
    role: &'static str,
    reaped: bool,
}

impl Helper {
    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Waits up to `deadline` for the process to end.
    fn reap(&mut self, deadline: Instant) -> Result<std::process::ExitStatus, String> {
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.reaped = true;
                    return Ok(st);
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(2)),
                Ok(None) => {
                    return Err(format!("{} {} did not end in time", self.role, self.shard));
                }
                Err(e) => return Err(format!("waiting for {} {}: {e}", self.role, self.shard)),
            }
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A line from a helper's stdout, or None at its EOF.
type Line = (usize, &'static str, Option<String>);

fn spawn(
    args: &Args,
    role: &'static str,
    shard: usize,
    conns: u64,
    tx: &mpsc::Sender<Line>,
) -> Result<Helper, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding this binary: {e}"))?;
    let port = args.port + u16::try_from(shard).map_err(|_| "too many shards")?;
    let mut child = Command::new(exe)
        .args(["--role", role])
        .args(["--conns", &conns.to_string()])
        .args(["--port", &port.to_string()])
        .args(["--unread-every", &args.unread_every.to_string()])
        .args(["--unread-bytes", &args.unread_bytes.to_string()])
        .args(["--timeout", &args.timeout.as_secs_f64().to_string()])
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {role} {shard}: {e}"))?;
    let stdout = child.stdout.take();
    let stdin = child.stdin.take();
    let helper = Helper {
        child,
        stdin,
        shard,
        role,
        reaped: false,
    };
    let tx = tx.clone();
    if let Some(out) = stdout {
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send((shard, role, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((shard, role, None));
        });
    }
    Ok(helper)
}

/// Waits until every helper in `from` has said a line starting with its
/// word; returns the second number on each such line (or 0), summed by role.
/// Lines the helpers say meanwhile that nobody waits for are dropped.
fn expect(
    rx: &mpsc::Receiver<Line>,
    from: &[(&Helper, &'static str)],
    deadline: Instant,
) -> Result<Vec<(&'static str, u64)>, String> {
    let mut pending: Vec<(usize, &str, &str)> =
        from.iter().map(|(h, w)| (h.shard, h.role, *w)).collect();
    let mut totals: Vec<(&'static str, u64)> = Vec::new();
    while !pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (shard, role, line) = match rx.recv_timeout(left) {
            Ok(m) => m,
            Err(_) => {
                let who: Vec<String> = pending
                    .iter()
                    .map(|(s, r, w)| format!("{w:?} from {r} {s}"))
                    .collect();
                return Err(format!("no {} in time", who.join(", ")));
            }
        };
        let Some(at) = pending.iter().position(|p| (p.0, p.1) == (shard, role)) else {
            continue;
        };
        let word = pending[at].2;
        let Some(line) = line else {
            return Err(format!("{role} {shard} ended before saying {word:?}"));
        };
        let mut words = line.split_whitespace();
        if words.next() == Some(word) {
            let n: u64 = words.nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
            match totals.iter_mut().find(|(r, _)| *r == role) {
                Some((_, t)) => *t += n,
                None => totals.push((role, n)),
            }
            pending.remove(at);
        }
    }
    Ok(totals)
}

/// The total [`expect`] returned for `role`.
fn total(totals: &[(&str, u64)], role: &str) -> u64 {
    totals
        .iter()
        .find(|(r, _)| *r == role)
        .map_or(0, |(_, n)| *n)
}

fn coordinate(args: &Args) -> Result<String, String> {
    let nofile = raise_nofile(args.conns + FD_SLACK);
    let per = nofile.saturating_sub(FD_SLACK).max(1);
    let shards = args.conns.div_ceil(per);
    if u64::from(args.port) + shards > 65536 || shards > 1024 {
        return Err(format!(
            "{shards} shards from port {} do not fit (RLIMIT_NOFILE {nofile})",
            args.port
        ));
    }
    let shards = shards as usize;
    let share =
        |i: usize| args.conns / shards as u64 + u64::from((i as u64) < args.conns % shards as u64);
    let (tx, rx) = mpsc::channel::<Line>();

    let mut servers = Vec::new();
    for i in 0..shards {
        servers.push(spawn(args, "server", i, share(i), &tx)?);
    }
    let listening: Vec<_> = servers.iter().map(|h| (h, "listening")).collect();
    expect(&rx, &listening, Instant::now() + args.timeout)?;

    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..shards {
        clients.push(spawn(args, "client", i, share(i), &tx)?);
    }
    let deadline = Instant::now() + args.timeout;
    // A child says how many connections it left unread bytes in, a server
    // how many it wrote unread bytes to.
    let ready: Vec<_> = clients
        .iter()
        .map(|h| (h, "connected"))
        .chain(servers.iter().map(|h| (h, "accepted")))
        .collect();
    let totals = expect(&rx, &ready, deadline)?;
    let unread_in_listener = total(&totals, "client");
    let unread_in_killed = total(&totals, "server");
    let connect_s = started.elapsed().as_secs_f64();

    // The mass close: every child at once.
    let killed = Instant::now();
    for c in &clients {
        // SAFETY: plain syscall on our unreaped child.
        unsafe {
            libc::kill(c.pid(), libc::SIGKILL);
        }
    }
    let deadline = killed + args.timeout;
    for c in &mut clients {
        let st = c.reap(deadline)?;
        if st.code().is_some() {
            return Err(format!("client {} ended by itself ({st})", c.shard));
        }
    }
    let kill_s = killed.elapsed().as_secs_f64();

    // Then the listening side closes everything it holds.
    for s in &mut servers {
        s.stdin = None;
    }
    let closed: Vec<_> = servers.iter().map(|h| (h, "closed")).collect();
    expect(&rx, &closed, deadline)?;
    for s in &mut servers {
        let st = s.reap(deadline)?;
        if !st.success() {
            return Err(format!("server {} ended with {st}", s.shard));
        }
    }
    let close_s = killed.elapsed().as_secs_f64();

    let ports: Vec<String> = (0..shards)
        .map(|i| (u64::from(args.port) + i as u64).to_string())
        .collect();
    let pids: Vec<String> = clients.iter().map(|c| c.child.id().to_string()).collect();
    Ok(format!(
        "{{\"connections\":{},\"shards\":{shards},\"ports\":[{}],\"killed_pids\":[{}],\
         \"unread_in_killed\":{unread_in_killed},\"unread_in_listener\":{unread_in_listener},\
         \"nofile\":{nofile},\"connect_s\":{connect_s:.3},\"kill_s\":{kill_s:.3},\
         \"close_s\":{close_s:.3}}}",
        args.conns,
        ports.join(","),
        pids.join(","),
    ))
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let result = match args.role {
        Role::Coordinator => coordinate(&args).map(|json| say(&json)),
        Role::Server => {
            raise_nofile(args.conns + FD_SLACK);
            server(&args)
        }
        Role::Client => {
            raise_nofile(args.conns + FD_SLACK);
            client(&args)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let who = match args.role {
                Role::Coordinator => "massclose",
                Role::Server => "massclose server",
                Role::Client => "massclose client",
            };
            eprintln!("{who}: {e}");
            ExitCode::from(1)
        }
    }
}
