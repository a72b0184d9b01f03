//! Bulk-traffic workload for `cargo xtask bench` (std only, blocking).
//!
//! `bulk --seconds S [--connections C] [--port P] [--chunk BYTES]`
//!
//! Listens on 127.0.0.1:P, opens C long-lived loopback connections to itself
//! (1 by default) and, once all are up, has one sender thread per connection
//! write `--chunk` bytes at a time as fast as it can for S seconds while one
//! receiver thread per connection reads and discards. Throughput is the
//! bytes the receivers read between the common start and the deadline,
//! divided by that interval (the drain after the deadline is not counted).
//! Prints one JSON line:
//! `{"bytes":…,"seconds":…,"rate":…,"connections":…,"errors":…,"total_bytes":…}`
//! (`rate` in bytes/s). Exits 1 when a connection failed or nothing was
//! received, 2 on a usage or setup error.
//!
//! Almost no TCP state changes happen during the transfer, so a tracer's
//! state-change programs barely run: what it costs here is the programs that
//! fire on every softirq (loopback delivers each segment in a softirq).

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

/// A peer that stops reading or writing must not hang the workload.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long setting up the connections may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Long-lived loopback streams at full speed, for `cargo xtask bench`.
#[derive(clap::Parser)]
#[command(name = "bulk")]
struct Args {
    /// Send for S seconds.
    #[arg(long, value_name = "S", default_value_t = 4.0, value_parser = positive_seconds)]
    seconds: f64,
    /// Parallel TCP streams (1 to 64).
    #[arg(long, value_name = "C", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    connections: u16,
    /// Listen on 127.0.0.1:P.
    #[arg(long, value_name = "P", default_value_t = 23990, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// Bytes per write (1 byte to 16 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = 128 * 1024, value_parser = clap::value_parser!(u32).range(1..=16 << 20))]
    chunk: u32,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

#[derive(Default)]
struct Counters {
    /// Bytes the receivers have read so far.
    received: AtomicU64,
    /// Reads or writes that failed.
    errors: AtomicU64,
}

fn receive(mut stream: TcpStream, counters: &Counters) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                counters.received.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

fn send(mut stream: TcpStream, chunk: usize, seconds: f64, start: &Barrier, counters: &Counters) {
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let buf = vec![0x5au8; chunk];
    start.wait();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < deadline {
        if stream.write_all(&buf).is_err() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

fn run(args: &Args) -> Result<(f64, f64, u64, u64), String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
        .map_err(|e| format!("cannot listen on 127.0.0.1:{}: {e}", args.port))?;
    let addr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, args.port));
    let counters = Arc::new(Counters::default());
    // The senders and this thread start the clock together.
    let start = Arc::new(Barrier::new(usize::from(args.connections) + 1));

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..args.connections {
        let out = TcpStream::connect_timeout(&addr, SETUP_TIMEOUT)
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        // Our own connect is the only one in the queue; a stray client
        // could take its place, so accept with a deadline all the same.
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("listener: {e}"))?;
        let deadline = Instant::now() + SETUP_TIMEOUT;
        let inbound = loop {
            match listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    thread::sleep(Duration::from_millis(1));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("accepting connection {i}: {e}")),
            }
        };
        inbound
            .set_nonblocking(false)
            .map_err(|e| format!("accepted socket: {e}"))?;
        let c = Arc::clone(&counters);
        receivers.push(
            thread::Builder::new()
                .name(format!("recv-{i}"))
                .spawn(move || receive(inbound, &c))
                .map_err(|e| format!("cannot start a receiver thread: {e}"))?,
        );
        let (c, b, chunk, secs) = (
            Arc::clone(&counters),
            Arc::clone(&start),
            args.chunk as usize,
            args.seconds,
        );
        senders.push(
            thread::Builder::new()
                .name(format!("send-{i}"))
                .spawn(move || send(out, chunk, secs, &b, &c))
                .map_err(|e| format!("cannot start a sender thread: {e}"))?,
        );
    }

    start.wait();
    let t0 = Instant::now();
    let b0 = counters.received.load(Ordering::Relaxed);
    thread::sleep(Duration::from_secs_f64(args.seconds));
    let b1 = counters.received.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();

    for s in senders {
        let _ = s.join();
    }
    for r in receivers {
        let _ = r.join();
    }
    let bytes = b1 - b0;
    Ok((
        bytes as f64,
        elapsed,
        counters.errors.load(Ordering::Relaxed),
        counters.received.load(Ordering::Relaxed),
    ))
}

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let (bytes, seconds, errors, total) = match run(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bulk: {e}");
            return ExitCode::from(2);
        }
    };
    let rate = if seconds > 0.0 { bytes / seconds } else { 0.0 };
    println!(
        "{{\"bytes\":{bytes:.0},\"seconds\":{seconds:.3},\"rate\":{rate:.0},\"connections\":{},\"errors\":{errors},\"total_bytes\":{total}}}",
        args.connections
    );
    if errors == 0 && bytes > 0.0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("bulk: {errors} connection errors, {bytes:.0} bytes received");
        ExitCode::from(1)
    }
}
