//! Syscall workload for `cargo xtask bench` (std + libc only).
//!
//! `syscalls --seconds S`
//!
//! Calls getppid(2), the cheapest syscall there is, in a loop for S seconds
//! and prints one JSON line `{"syscalls":…,"seconds":…,"rate":…}` (`rate` in
//! syscalls/s). What it measures is the price of the syscall path itself:
//! while any syscall tracepoint is attached (tcptrace's accept program), the
//! kernel sends every syscall of the host through its tracing path, whether
//! or not a program is attached to that syscall.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

/// getppid(2) in a loop, for `cargo xtask bench`.
#[derive(clap::Parser)]
#[command(name = "syscalls")]
struct Args {
    /// Run for S seconds (0.1 to 600).
    #[arg(long, value_name = "S", default_value_t = 4.0, value_parser = seconds)]
    seconds: f64,
}

fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds from 0.1 to 600")),
    }
}

/// Syscalls between two looks at the clock (itself a vDSO call, no syscall).
const BATCH: u64 = 10_000;

fn main() -> ExitCode {
    let args = <Args as clap::Parser>::parse();
    let limit = Duration::from_secs_f64(args.seconds);
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < limit {
        for _ in 0..BATCH {
            // SAFETY: getppid has no arguments and cannot fail.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        calls += BATCH;
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{{\"syscalls\":{calls},\"seconds\":{elapsed:.6},\"rate\":{:.1}}}",
        calls as f64 / elapsed
    );
    ExitCode::SUCCESS
}
