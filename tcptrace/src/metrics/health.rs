//! tcptrace's own health as metrics: its event accounting, the kernel's
//! skipped runs, what outputs dropped, the socket table, the BPF programs'
//! run time, how full the ring and the input backlog are, and its CPU and
//! memory.
//!
//! The values live in atomics that the session (once a second), the
//! pipeline's ticks and the scrape itself fill in; the scrape encodes
//! whatever they hold then. Nothing here runs per event.

use std::{
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Unit,
};

use crate::{input::InputGauge, loader::Tracer, output::OutputStats, tracker::TrackerStats};

/// The tracer's counters and programs are read at most this often (a file
/// read per program).
pub const HEALTH_EVERY: Duration = Duration::from_secs(1);

/// One BPF program's counts.
#[derive(Debug, Default)]
struct Program {
    name: String,
    run_time_ns: u64,
    run_cnt: u64,
}

#[derive(Debug, Default)]
pub struct Health {
    produced: AtomicU64,
    received: AtomicU64,
    received_bytes: AtomicU64,
    lost: AtomicU64,
    filtered: AtomicU64,
    undecodable: AtomicU64,
    late: AtomicU64,
    skipped: AtomicU64,
    recovered: AtomicU64,
    stdout_dropped: AtomicU64,
    recording_dropped: AtomicU64,
    tracked: AtomicU64,
    seen: AtomicU64,
    evicted: AtomicU64,
    /// Filled once, then only updated in place.
    programs: Mutex<Vec<Program>>,
    ring_bytes: AtomicU64,
    input: OnceLock<InputGauge>,
    last_read: Mutex<Option<Instant>>,
}

fn set(a: &AtomicU64, v: u64) {
    a.store(v, Ordering::Relaxed);
}

fn get(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Health {
    /// The socket table, at every tick.
    pub fn tracker(&self, t: &TrackerStats) {
        set(&self.tracked, t.tracked);
        set(&self.seen, t.sockets_seen);
        set(&self.evicted, t.evicted);
    }

    /// The ring and the input thread's backlog, watched from now on.
    pub fn watch_input(&self, gauge: InputGauge, ring_bytes: u32) {
        set(&self.ring_bytes, u64::from(ring_bytes));
        let _ = self.input.set(gauge);
    }

    /// Reads the tracer's counters and programs, and the outputs' drops,
    /// unless they were read less than [`HEALTH_EVERY`] ago. The program
    /// list is built at the first read; later reads allocate nothing.
    pub fn read(&self, tracer: &Tracer, stdout: &OutputStats, recording_dropped: u64) {
        {
            let mut last = self.last_read.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < HEALTH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let c = tracer.counters();
        set(&self.produced, c.produced);
        set(&self.received, c.received);
        set(&self.received_bytes, c.received_bytes);
        set(&self.lost, c.lost);
        set(&self.filtered, c.filtered);
        set(&self.undecodable, c.undecodable);
        set(&self.late, c.late);
        set(&self.skipped, c.missed);
        set(&self.recovered, c.recovered);
        set(&self.stdout_dropped, stdout.dropped_lines);
        set(&self.recording_dropped, recording_dropped);
        let mut programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
        tracer.program_stats(|name, stats| {
            // Kept in name order: the exposition lists them so.
            let i = match programs.binary_search_by(|p| p.name.as_str().cmp(name)) {
                Ok(i) => i,
                Err(i) => {
                    let name = name.to_owned();
                    programs.insert(
                        i,
                        Program {
                            name,
                            ..Program::default()
                        },
                    );
                    i
                }
            };
            let row = &mut programs[i];
            row.run_time_ns = stats.run_time_ns;
            row.run_cnt = stats.run_cnt;
        });
    }
}

/// user + system CPU time of the whole process (every thread: the ring
/// reader, the pipeline, the writers, the HTTP server), in seconds.
fn cpu_seconds() -> f64 {
    // SAFETY: a zeroed rusage for getrusage to fill.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

/// Resident memory, from /proc/self/statm (pages).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * crate::host::page_size() as u64
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(e.encode_descriptor(name, help, unit, c.metric_type())?)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for Health {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        let events: [(&str, &str, &AtomicU64); 7] = [
            (
                "events_produced",
                "Events that passed the kernel filters and were offered to the event rings \
                 (produced = received + lost).",
                &self.produced,
            ),
            (
                "events_received",
                "Events read from the event rings.",
                &self.received,
            ),
            (
                "events_received_bytes",
                "Bytes of the events read from the event rings, as the kernel wrote them \
                 (each takes a slot, 128 bytes of --ring-size, whatever its length).",
                &self.received_bytes,
            ),
            (
                "events_lost",
                "Events that found their event ring full (--ring-size raises it); the sockets \
                 they concern are marked incomplete.",
                &self.lost,
            ),
            (
                "events_filtered",
                "Events dropped by tcptrace's filters in the kernel.",
                &self.filtered,
            ),
            (
                "events_undecodable",
                "Events that could not be decoded (a kernel/loader mismatch).",
                &self.undecodable,
            ),
            (
                "events_late",
                "Events that reached tcptrace after later ones from other CPUs' ring \
                 buffers (delayed in the kernel past the merge's hold-back): passed on out \
                 of time order.",
                &self.late,
            ),
        ];
        for (name, help, value) in events {
            counter(e, name, help, None, get(value))?;
        }
        counter(
            e,
            "bpf_runs_skipped",
            "BPF program runs the kernel skipped (its recursion guard: an interrupt \
             re-entered a running program on that CPU), less those recovered: their events \
             never existed.",
            None,
            get(&self.skipped),
        )?;
        counter(
            e,
            "bpf_runs_recovered",
            "Skipped runs of inet_sock_set_state whose event a second program made: nothing \
             lost.",
            None,
            get(&self.recovered),
        )?;
        {
            let programs = self.programs.lock().unwrap_or_else(|e| e.into_inner());
            let help_note = "per program, from its fdinfo; 0 unless kernel.bpf_stats_enabled=1 \
                             (sysctl; it adds some 20 ns to every run)";
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "bpf_run_time",
                &format!("Time tcptrace's BPF programs ran in the kernel, {help_note}."),
                Some(&Unit::Seconds),
                c.metric_type(),
            )?;
            for p in programs.iter() {
                let labels = [("program", p.name.as_str())];
                ConstCounter::new(p.run_time_ns as f64 / 1e9).encode(m.encode_family(&labels)?)?;
            }
            let mut m = e.encode_descriptor(
                "bpf_runs",
                &format!("Runs of tcptrace's BPF programs, {help_note}."),
                None,
                c.metric_type(),
            )?;
            for p in programs.iter() {
                let labels = [("program", p.name.as_str())];
                ConstCounter::new(p.run_cnt).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let c = ConstCounter::new(0u64);
            let mut m = e.encode_descriptor(
                "output_dropped",
                "Records an output could not take in time and dropped: stdout (rendered \
                 lines: its reader did not keep up) and recording (kernel records: the disk \
                 did not keep up). Tracing and metrics go on meanwhile.",
                None,
                c.metric_type(),
            )?;
            for (output, value) in [
                ("stdout", &self.stdout_dropped),
                ("recording", &self.recording_dropped),
            ] {
                ConstCounter::new(get(value)).encode(m.encode_family(&[("output", output)])?)?;
            }
        }
        gauge(
            e,
            "sockets_tracked",
            "Sockets tracked right now (at most --max-sockets).",
            None,
            get(&self.tracked) as i64,
        )?;
        counter(
            e,
            "sockets_seen",
            "Socket lives started (socketless resets not included).",
            None,
            get(&self.seen),
        )?;
        counter(
            e,
            "sockets_evicted",
            "Sockets reported early, still open, because the table was full (--max-sockets).",
            None,
            get(&self.evicted),
        )?;
        if let Some(input) = self.input.get() {
            gauge(
                e,
                "ring_size",
                "Size of the kernel's event rings, all together (--ring-size: 128 bytes per \
                 event slot; one ring per CPU up to 8, sharing it).",
                Some(&Unit::Bytes),
                get(&self.ring_bytes) as i64,
            )?;
            if let Some(used) = input.ring_used_bytes() {
                gauge(
                    e,
                    "ring_used",
                    "Part of --ring-size holding events not yet read (128 bytes per slot \
                     reserved and not yet read, from the rings' positions, which the reader \
                     maps). The reader drains them every 50 ms or once an eighth of a ring \
                     is waiting.",
                    Some(&Unit::Bytes),
                    used as i64,
                )?;
            }
            gauge(
                e,
                "input_backlog",
                "Bytes of records taken out of the rings by the input thread and not yet \
                 processed (at most 64 MiB; past it the rings fill and lose events).",
                Some(&Unit::Bytes),
                input.backlog_bytes() as i64,
            )?;
        }
        let c = ConstCounter::new(cpu_seconds());
        c.encode(e.encode_descriptor(
            "cpu",
            "CPU time (user + system) of the tcptrace process, every thread included.",
            Some(&Unit::Seconds),
            c.metric_type(),
        )?)?;
        gauge(
            e,
            "resident_memory",
            "Resident memory of the tcptrace process (the event rings included).",
            Some(&Unit::Bytes),
            resident_bytes() as i64,
        )?;
        let g = ConstGauge::new(1i64);
        let mut m = e.encode_descriptor(
            "build_info",
            "tcptrace's version (always 1).",
            None,
            g.metric_type(),
        )?;
        g.encode(m.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)
    }
}
