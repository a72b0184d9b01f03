//! Connection-churn workload for `cargo xtask bench` (std only, blocking).
//!
//! `churn --seconds S --ports N --base-port P [--conns C] [--clients K]`
//!
//! Starts N listener threads on 127.0.0.1:P..P+N (accept, read until EOF,
//! close) and K client threads (1 by default) that each loop
//! connect / write 1 byte / shutdown(write) / read to EOF / close, round-robin
//! across the ports, for S seconds or C completed connections, whichever comes
//! first. At the end it checks that the servers accepted exactly as many
//! connections as the clients completed and prints one JSON line:
//! `{"connections":…,"seconds":…,"rate":…,"errors":…,"accepted":…,…}`.
//! It exits 1 when the counts disagree and 2 on a usage or setup error.
//!
//! The client closes first, so its side of each connection ends in TIME_WAIT.
//! Rotating over N destination ports multiplies the usable 4-tuples by N, and
//! Linux reuses loopback TIME_WAIT ports by default (tcp_tw_reuse=2). A
//! connect failing with EADDRNOTAVAIL (ports exhausted) counts as an error and
//! the client backs off briefly.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// A peer that stops talking must not hang the workload.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the end-of-run check waits for the servers to catch up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection churn on loopback for `cargo xtask bench`.
#[derive(clap::Parser)]
#[command(name = "churn")]
struct Args {
    /// Run the clients for at most S seconds.
    #[arg(long, value_name = "S", default_value_t = 10.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Number of listening ports.
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..))]
    ports: u16,
    /// First port; listeners use 127.0.0.1:P..P+N.
    #[arg(long, value_name = "P", default_value_t = 24000, value_parser = clap::value_parser!(u16).range(1..))]
    base_port: u16,
    /// Stop after C completed connections (default: no limit).
    #[arg(long, value_name = "C")]
    conns: Option<u64>,
    /// Client threads.
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    clients: u16,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[derive(Default)]
struct Counters {
    /// Connections the servers saw through to EOF and closed.
    accepted: AtomicU64,
    /// Accepted connections whose read failed (reset, timeout).
    server_errors: AtomicU64,
    /// Client round trips that completed.
    completed: AtomicU64,
    /// Client round trips that failed anywhere (connect, write, read).
    errors: AtomicU64,
    /// Slots taken against `--conns` (released again on error).
    claimed: AtomicU64,
}

fn serve(listener: TcpListener, stop: &AtomicBool, counters: &Counters) {
    let mut buf = [0u8; 256];
    loop {
        match listener.accept() {
            Ok((mut stream, _)) => {
                if stop.load(Ordering::Acquire) {
                    return; // the wake-up connection from main
                }
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                let ok = loop {
                    match stream.read(&mut buf) {
                        Ok(0) => break true,
                        Ok(_) => {}
                        Err(e) if e.kind() == ErrorKind::Interrupted => {}
                        Err(_) => break false,
                    }
                };
                // Count before closing: the client sees EOF only after this
                // close, so a completed client round trip is already counted.
                if ok {
                    counters.accepted.fetch_add(1, Ordering::AcqRel);
                } else {
                    counters.server_errors.fetch_add(1, Ordering::AcqRel);
                }
                drop(stream);
            }
            Err(e) => {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                if e.kind() != ErrorKind::Interrupted {
                    counters.server_errors.fetch_add(1, Ordering::AcqRel);
                    thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }
}

fn round_trip(addr: SocketAddr) -> io::Result<()> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.write_all(b"x")?;
    stream.shutdown(Shutdown::Write)?;
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

fn client(index: usize, args: &Args, deadline: Instant, counters: &Counters) {
    let ports = usize::from(args.ports);
    let mut next = index % ports;
    loop {
        if Instant::now() >= deadline {
            return;
        }
        if let Some(limit) = args.conns
            && counters.claimed.fetch_add(1, Ordering::AcqRel) >= limit
        {
            return;
        }
        // `next < ports <= u16::MAX` and base + ports <= 65536 (checked).
        let port = args.base_port + next as u16;
        next = (next + 1) % ports;
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
        match round_trip(addr) {
            Ok(()) => {
                counters.completed.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::AcqRel);
                if args.conns.is_some() {
                    counters.claimed.fetch_sub(1, Ordering::AcqRel);
                }
                let pause = if e.kind() == ErrorKind::AddrNotAvailable {
                    Duration::from_millis(5)
                } else {
                    Duration::from_micros(200)
                };
                thread::sleep(pause);
            }
        }
    }
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    if u32::from(args.base_port) + u32::from(args.ports) > 65536 {
        eprintln!("churn: --base-port + --ports must stay within 1..=65535");
        return ExitCode::from(2);
    }

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));

    // std's TcpListener::bind sets SO_REUSEADDR on Unix, so the ports can be
    // bound again while earlier runs' connections sit in TIME_WAIT.
    let mut servers = Vec::new();
    for i in 0..args.ports {
        let port = args.base_port + i;
        let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("churn: cannot listen on 127.0.0.1:{port}: {e}");
                return ExitCode::from(2);
            }
        };
        let (stop, counters) = (Arc::clone(&stop), Arc::clone(&counters));
        let spawned = thread::Builder::new()
            .name(format!("srv-{port}"))
            .spawn(move || serve(listener, &stop, &counters));
        match spawned {
            Ok(h) => servers.push(h),
            Err(e) => {
                eprintln!("churn: cannot start a server thread: {e}");
                return ExitCode::from(2);
            }
        }
    }

    let args = Arc::new(args);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.seconds);
    let mut clients = Vec::new();
    for i in 0..args.clients {
        let (args, counters) = (Arc::clone(&args), Arc::clone(&counters));
        let spawned = thread::Builder::new()
            .name(format!("client-{i}"))
            .spawn(move || client(usize::from(i), &args, deadline, &counters));
        match spawned {
            Ok(h) => clients.push(h),
            Err(e) => {
                eprintln!("churn: cannot start a client thread: {e}");
                stop.store(true, Ordering::Release);
                break;
            }
        }
    }
    for c in clients {
        let _ = c.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let completed = counters.completed.load(Ordering::Acquire);

    // Give the servers a moment to finish anything still in flight.
    let settle = Instant::now();
    while counters.accepted.load(Ordering::Acquire) < completed && settle.elapsed() < SETTLE_TIMEOUT
    {
        thread::sleep(Duration::from_millis(1));
    }
    let accepted = counters.accepted.load(Ordering::Acquire);

    // Wake the blocked accept() calls so the threads end; the process exits
    // right after, so a thread that does not wake is harmless.
    stop.store(true, Ordering::Release);
    for i in 0..args.ports {
        let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.base_port + i));
        let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
    }
    let join_deadline = Instant::now() + Duration::from_secs(1);
    for s in servers {
        while !s.is_finished() && Instant::now() < join_deadline {
            thread::sleep(Duration::from_millis(1));
        }
        if s.is_finished() {
            let _ = s.join();
        }
    }

    let errors = counters.errors.load(Ordering::Acquire);
    let server_errors = counters.server_errors.load(Ordering::Acquire);
    let rate = if elapsed > 0.0 {
        completed as f64 / elapsed
    } else {
        0.0
    };
    println!(
        "{{\"connections\":{completed},\"seconds\":{elapsed:.3},\"rate\":{rate:.1},\"errors\":{errors},\"accepted\":{accepted},\"server_errors\":{server_errors},\"clients\":{},\"ports\":{}}}",
        args.clients, args.ports
    );
    if accepted == completed {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "churn: servers accepted {accepted} connections but clients completed {completed}"
        );
        ExitCode::from(1)
    }
}
