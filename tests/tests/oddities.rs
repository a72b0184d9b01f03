//! The kernel program's rare paths, end to end: one that userspace can
//! trigger for real (a full `--follow` pid filter) is counted in the
//! `odd` counter and logged, in words, through aya-log and the `log` crate.
//!
//! The others (a failed kernel read, a socket of neither IPv4 nor IPv6, a
//! reset answering a segment that is neither) cannot be caused from
//! userspace on a healthy kernel; they share this path (one kernel
//! function counts and logs them all) and their words are unit-tested in
//! `kernel_log`.
//!
//! Its own test binary: it installs the process's logger.

use std::{
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use log::{Level, LevelFilter, Log, Metadata, Record};
use tcptrace::loader::TraceOptions;
use tcptrace_common::{filter, oddity};
use tcptrace_tests::{DEADLINE, Trace};

/// The kernel's `PID_FILTER` map holds this many processes.
const PID_FILTER_ENTRIES: u32 = 16384;

/// Keeps every record of the kernel's log target.
struct Capture(Mutex<Vec<(Level, String)>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if record.target() == oddity::LOG_TARGET {
            let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
            seen.push((record.level(), record.args().to_string()));
        }
    }

    fn flush(&self) {}
}

static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

#[test]
fn a_full_follow_filter_is_counted_and_logged_in_words() {
    log::set_logger(&CAPTURE).expect("the only logger of this test binary");
    // Warnings reach the kernel program; its debug messages are compiled
    // out by the verifier (the level the loader hands it).
    log::set_max_level(LevelFilter::Warn);

    // Fill the pid filter: this process, then pids no kernel hands out
    // (above PID_MAX_LIMIT, 4194304), so that the next fork finds no room.
    let mut pids = vec![std::process::id()];
    pids.extend((1..PID_FILTER_ENTRIES).map(|i| u32::MAX - i));
    let mut opts = TraceOptions {
        pids,
        ..TraceOptions::default()
    };
    opts.filter.flags |= filter::FOLLOW;
    let mut trace = Trace::start_with(opts, &[]);
    assert_eq!(trace.counters().odd, 0, "an oddity before the fork");

    let mut child = Command::new("true").spawn().expect("running true");
    let child_pid = child.id();
    child.wait().expect("waiting for true");

    let expected = format!("the pid filter is full: process {child_pid} is not followed");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let logged = CAPTURE.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let found = logged
            .iter()
            .any(|(level, text)| *level == Level::Warn && text.contains(&expected));
        let odd = trace.counters().odd;
        if found && odd >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no oddity for the fork of {child_pid} within {DEADLINE:?}: odd counter {odd}, \
             kernel log {logged:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let counters = trace.stop();
    // This process forked once while tracing.
    assert_eq!(counters.odd, 1, "{counters:?}");
}
