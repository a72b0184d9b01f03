//! The tracers measured: each configuration's command, starting one and
//! waiting until it has attached, then stopping it and reading what it did
//! (CPU, memory, BPF run time, its own counters).

use std::fs::{self, File};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::run::{create, tail};
use super::{Config, Ctx, Run};
use crate::proc::{self, BpfStats, Proc};
use crate::util::command;

/// tcptrace's `tcptrace-summary {json}` line on stderr at exit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub produced: Option<u64>,
    pub received: Option<u64>,
    pub lost: Option<u64>,
    pub filtered: Option<u64>,
    /// Program runs the kernel skipped, as tcptrace itself counted them.
    pub missed: Option<u64>,
    /// Of the runs the kernel skipped, those whose event tcptrace's second
    /// `inet_sock_set_state` program made instead.
    pub recovered: Option<u64>,
    /// What tcptrace's output queue wrote and dropped.
    pub output: Option<OutputSummary>,
}

/// The `output` part of tcptrace's summary.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OutputSummary {
    /// Lines rendered but dropped because the output could not take them
    /// in time (output never holds up tracing).
    pub dropped_lines: Option<u64>,
}

impl TracerOut {
    /// Runs the kernel skipped whose events are really missing. For
    /// tcptrace, its own count (the same fdinfo counts, less the skipped
    /// runs whose event its backup program made, and not counting the
    /// backup's own skips, which lose nothing); for others, every program's
    /// recursion_misses.
    pub fn skipped_runs(&self) -> u64 {
        match self.summary.as_ref().and_then(|s| s.missed) {
            Some(missed) => missed,
            None => self.bpf.recursion_misses,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TracerOut {
    /// Seconds from start until it reported being attached.
    pub ready_s: f64,
    /// CPU seconds from attach until exit (the churn and the final drain).
    pub cpu_s: f64,
    /// CPU seconds over its whole life, start-up included.
    pub cpu_total_s: f64,
    pub maxrss_kib: u64,
    /// Resident memory right after the churn, before stopping: the steady
    /// state, without start-up's one-off peak.
    pub rss_after_kib: u64,
    pub exit: String,
    /// It ignored SIGINT for --stop-timeout and was killed.
    pub killed: bool,
    /// BPF program statistics over the churn, per program and summed.
    pub bpf: BpfStats,
    /// Were the kernel's BPF run-time statistics on during the run? Only
    /// then are `bpf`'s run_time_ns and run_cnt counted.
    pub bpf_stats: bool,
    /// BPF run time per event over the churn: for tcptrace, the run time of
    /// all its programs over the events they produced; for bpftrace, its
    /// program's run time over its runs (each run is an event).
    pub bpf_ns_per_event: Option<f64>,
    pub bpf_basis: &'static str,
    /// Events the CPU figure is divided by, and where the number came from.
    pub events: Option<u64>,
    pub events_basis: &'static str,
    pub summary: Option<Summary>,
    /// bpftrace's "Lost N events" lines, summed.
    pub bpftrace_lost: Option<u64>,
    /// bpftrace-count's final `@c` value.
    pub bpftrace_count: Option<u64>,
    pub output_bytes: u64,
}

const TCPTRACE_READY: &str = "tracing";
const BPFTRACE_READY: &str = "Attaching";
const BPFTRACE_SETTLE: Duration = Duration::from_millis(300);
/// How much of a tracer's output is kept as a sample.
const SAMPLE_BYTES: u64 = 1 << 20;
const BPFTRACE_PRINT: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%llx %d %d\n", args->skaddr, args->oldstate, args->newstate); }"#;
const BPFTRACE_COUNT: &str = "tracepoint:sock:inet_sock_set_state { @c = count(); }";
/// Compiles to `r0 = 0; exit`.
const BPFTRACE_EMPTY: &str = "tracepoint:sock:inet_sock_set_state { }";
/// Compiles to one `bpf_ktime_get_ns` call (bpftrace keeps it: a helper
/// call is never dropped as dead code), then `r0 = 0; exit`.
const BPFTRACE_CLOCK: &str = "tracepoint:sock:inet_sock_set_state { $t = nsecs; }";

/// The bpftrace program a configuration runs; None for the others.
pub(super) fn bpftrace_program(config: Config) -> Option<&'static str> {
    match config {
        Config::BpftracePrint => Some(BPFTRACE_PRINT),
        Config::BpftraceCount => Some(BPFTRACE_COUNT),
        Config::BpftraceEmpty => Some(BPFTRACE_EMPTY),
        Config::BpftraceClock => Some(BPFTRACE_CLOCK),
        Config::None
        | Config::Tcptrace
        | Config::TcptraceJson
        | Config::TcptraceMetrics
        | Config::TcptraceNoAccept
        | Config::Baseline => None,
    }
}

/// A tracer that has attached, with its readings at the start of the
/// measured window.
pub(super) struct Tracing {
    proc: Proc,
    ready_s: f64,
    cpu0: f64,
    bpf0: BpfStats,
    pub(super) out_path: PathBuf,
    err_path: PathBuf,
}

/// Starts the configuration's tracer (None for `none`) writing to
/// `<stem>.out` and `<stem>.err`, and waits until it has attached.
pub(super) fn start_tracer(ctx: &Ctx, config: Config, stem: &Path) -> Result<Option<Tracing>> {
    let Some(mut cmd) = tracer_command(ctx, config)? else {
        return Ok(None);
    };
    let (out_path, err_path) = (stem.with_extension("out"), stem.with_extension("err"));
    cmd.stdin(Stdio::null())
        .stdout(create(&out_path)?)
        .stderr(create(&err_path)?);
    let started = Instant::now();
    let mut p = Proc::spawn(&mut cmd, config.name())?;
    let marker = if config.is_tcptrace() {
        TCPTRACE_READY
    } else {
        BPFTRACE_READY
    };
    wait_ready(&mut p, marker, &out_path, &err_path, ctx.args.ready_timeout)?;
    if config.is_bpftrace() {
        // bpftrace says "Attaching" just before it attaches.
        thread::sleep(BPFTRACE_SETTLE);
    }
    let ready_s = started.elapsed().as_secs_f64();
    let cpu0 = proc::cpu_seconds(p.pid())?;
    let mut bpf0 = proc::bpf_stats(p.pid())?;
    // Names are looked up (bpftool) before the measured window.
    bpf0.name_programs();
    Ok(Some(Tracing {
        proc: p,
        ready_s,
        cpu0,
        bpf0,
        out_path,
        err_path,
    }))
}

/// Ends the measured window, stops the tracer with SIGINT and records what
/// it did in `run.tracer`; fails when it died during `what`, had to be
/// killed or ended badly (after recording what it could).
pub(super) fn stop_tracer(ctx: &Ctx, t: Tracing, run: &mut Run, what: &str) -> Result<()> {
    let Tracing {
        proc: mut p,
        ready_s,
        cpu0,
        bpf0,
        out_path,
        err_path,
    } = t;
    if let Some(e) = p.poll()? {
        bail!("{} exited during {what} ({})", run.config, e.how);
    }
    let bpf = proc::bpf_stats(p.pid())?.since(&bpf0);
    let rss_after_kib = proc::rss_kib(p.pid())?;
    let (exit, killed) = p.stop(Duration::from_secs(ctx.args.stop_timeout))?;
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let stdout_bytes = fs::metadata(&out_path).map(|m| m.len()).unwrap_or(0);
    let summary = parse_summary(&stderr);
    let (bpftrace_lost, bpftrace_count) = if run.config.is_bpftrace() {
        let stdout = if run.config == Config::BpftraceCount {
            fs::read_to_string(&out_path).unwrap_or_default()
        } else {
            String::new()
        };
        (parse_bpftrace_lost(&stderr, &stdout), parse_count(&stdout))
    } else {
        (None, None)
    };
    // bpftrace-print prints a line per event: the count when run_cnt is
    // not kept (statistics off).
    let printed = (run.config == Config::BpftracePrint && bpf.run_cnt == 0)
        .then(|| count_lines(&out_path))
        .flatten();
    let (events, events_basis) = match (&summary, bpf.run_cnt, bpftrace_count.or(printed)) {
        (
            Some(Summary {
                received: Some(n), ..
            }),
            _,
            _,
        ) => (Some(*n), "received"),
        (_, n, _) if n > 0 => (Some(n), "bpf run_cnt"),
        (_, _, Some(n)) if printed.is_some() => (Some(n), "printed lines"),
        (_, _, Some(n)) => (Some(n), "@c"),
        _ => (None, "none"),
    };
    // Run times exist only while the kernel keeps statistics.
    let bpf_stats = proc::bpf_stats_enabled();
    let (bpf_ns_per_event, bpf_basis) = if bpf_stats {
        bpf_per_event(run.config, &bpf, summary.as_ref())
    } else {
        (None, "statistics off")
    };
    run.tracer = Some(TracerOut {
        ready_s,
        cpu_s: (exit.cpu_s - cpu0).max(0.0),
        cpu_total_s: exit.cpu_s,
        maxrss_kib: exit.maxrss_kib,
        rss_after_kib,
        exit: exit.how.clone(),
        killed,
        bpf,
        bpf_stats,
        bpf_ns_per_event,
        bpf_basis,
        events,
        events_basis,
        summary,
        bpftrace_lost,
        bpftrace_count,
        output_bytes: stdout_bytes,
    });
    let sigint_exit = exit.success() || exit.code == Some(130) || exit.how == "signal 2";
    if killed {
        bail!(
            "{} did not exit within {} s of SIGINT",
            run.config,
            ctx.args.stop_timeout
        );
    }
    if !sigint_exit {
        bail!(
            "{} ended with {} (see {})",
            run.config,
            exit.how,
            err_path.display()
        );
    }
    Ok(())
}

/// Lines in the file at `path` (None if unreadable).
fn count_lines(path: &Path) -> Option<u64> {
    let mut file = File::open(path).ok()?;
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(lines),
            Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64,
            Err(_) => return None,
        }
    }
}

/// Keeps the start of the first repetition's output as a sample; the rest
/// (up to hundreds of MiB a run) only fills the disk.
pub(super) fn keep_sample(out_path: &Path, rep: u32) {
    if rep == 0 {
        let len = fs::metadata(out_path).map(|m| m.len()).unwrap_or(0);
        if let Ok(f) = File::options().write(true).open(out_path) {
            let _ = f.set_len(len.min(SAMPLE_BYTES));
        }
    } else {
        let _ = fs::remove_file(out_path);
    }
}

/// BPF ns per event and what it was divided by (see [`TracerOut`]).
fn bpf_per_event(
    config: Config,
    bpf: &BpfStats,
    summary: Option<&Summary>,
) -> (Option<f64>, &'static str) {
    let per = |n: u64| (n > 0).then(|| bpf.run_time_ns as f64 / n as f64);
    if config.is_tcptrace() {
        match summary.and_then(|s| s.produced) {
            Some(n) => (per(n), BASIS_PRODUCED),
            None => (None, "no produced count"),
        }
    } else {
        (per(bpf.run_cnt), BASIS_RUNS)
    }
}

/// The basis of tcptrace's BPF ns / event.
pub const BASIS_PRODUCED: &str = "all programs' run time / events produced";
/// The basis of bpftrace's.
pub const BASIS_RUNS: &str = "run time / runs (each run is an event)";

fn tracer_command(ctx: &Ctx, config: Config) -> Result<Option<Command>> {
    Ok(match config {
        Config::None => None,
        Config::Tcptrace => Some(command(&ctx.tcptrace)?),
        Config::Baseline => {
            let baseline = ctx
                .args
                .baseline
                .as_ref()
                .context("--baseline PATH is missing")?;
            Some(command(baseline)?)
        }
        Config::TcptraceJson => {
            let mut c = command(&ctx.tcptrace)?;
            c.arg("--json");
            Some(c)
        }
        Config::TcptraceNoAccept => {
            let mut c = command(&ctx.tcptrace)?;
            c.arg("--no-accept");
            Some(c)
        }
        Config::TcptraceMetrics => {
            // A port of the kernel's choosing: nothing else to collide with.
            let mut c = command(&ctx.tcptrace)?;
            c.args(["--view", "none", "--metrics", "127.0.0.1:0"]);
            Some(c)
        }
        Config::BpftracePrint
        | Config::BpftraceCount
        | Config::BpftraceEmpty
        | Config::BpftraceClock => {
            let prog = bpftrace_program(config).context("a bpftrace configuration's program")?;
            let mut c = command("bpftrace")?;
            c.args(["-e", prog]);
            Some(c)
        }
    })
}

/// True when `text` holds `word` not embedded in a longer word or a path
/// (so "/sys/kernel/tracing" in an error message does not count).
fn has_word(text: &str, word: &str) -> bool {
    let glued = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '/');
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        !glued(before) && !glued(after)
    })
}

fn wait_ready(p: &mut Proc, marker: &str, out: &Path, err: &Path, timeout_s: u64) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    loop {
        proc::check_interrupted()?;
        for path in [err, out] {
            let text = fs::read_to_string(path).unwrap_or_default();
            if has_word(&text, marker) {
                return Ok(());
            }
        }
        if let Some(e) = p.poll()? {
            let how = e.how.clone();
            bail!(
                "the tracer exited ({how}) before attaching: {}",
                tail(&fs::read_to_string(err).unwrap_or_default(), 5)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the tracer printed no {marker:?} within {timeout_s} s: {}",
                tail(&fs::read_to_string(err).unwrap_or_default(), 5)
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Finds `tcptrace-summary {json}` (the last one) in tcptrace's stderr.
fn parse_summary(stderr: &str) -> Option<Summary> {
    stderr.lines().rev().find_map(|l| {
        let at = l.find("tcptrace-summary")?;
        let rest = &l[at..];
        let brace = rest.find('{')?;
        serde_json::from_str(rest[brace..].trim()).ok()
    })
}

/// Sums bpftrace's "Lost N events" reports.
fn parse_bpftrace_lost(stderr: &str, stdout: &str) -> Option<u64> {
    let mut total = None;
    for line in stderr.lines().chain(stdout.lines()) {
        let Some(at) = line.find("Lost ") else {
            continue;
        };
        let n = line[at + 5..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(n) = n {
            total = Some(total.unwrap_or(0) + n);
        }
    }
    total.or(Some(0))
}

/// bpftrace-count's `@c: N` at exit.
fn parse_count(stdout: &str) -> Option<u64> {
    stdout
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("@c:")?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_marker_is_a_word() {
        assert!(has_word("tcptrace: tracing 4 tracepoints", "tracing"));
        assert!(has_word("tracing", "tracing"));
        assert!(!has_word(
            "mounting tracefs at /sys/kernel/tracing",
            "tracing"
        ));
        assert!(!has_word("no tracefs", "tracing"));
        assert!(has_word("Attaching 1 probe...", "Attaching"));
    }

    #[test]
    fn summary_line() {
        let s = parse_summary(
            "x\n[INFO] tcptrace-summary {\"produced\":10,\"received\":9,\"lost\":1,\"filtered\":0}\n",
        )
        .unwrap();
        assert_eq!(
            (s.produced, s.received, s.lost, s.filtered, s.missed),
            (Some(10), Some(9), Some(1), Some(0), None)
        );
        let s = parse_summary(
            "tcptrace-summary {\"produced\":41,\"lost\":0,\"received\":41,\"filtered\":0,\
             \"not_tcp\":0,\"undecodable\":0,\"missed\":4}",
        )
        .unwrap();
        assert_eq!((s.produced, s.missed), (Some(41), Some(4)));
        assert!(parse_summary("nothing here").is_none());
    }

    #[test]
    fn bpf_ns_per_event_bases() {
        let bpf = BpfStats {
            programs: 3,
            run_cnt: 1000,
            run_time_ns: 50_000,
            ..BpfStats::default()
        };
        let produced = Summary {
            produced: Some(100),
            ..Summary::default()
        };
        // tcptrace: every program's time over the events it produced, not
        // over the (far more numerous) runs.
        assert_eq!(
            bpf_per_event(Config::Tcptrace, &bpf, Some(&produced)),
            (Some(500.0), BASIS_PRODUCED)
        );
        assert_eq!(bpf_per_event(Config::TcptraceJson, &bpf, None).0, None);
        assert_eq!(
            bpf_per_event(Config::BpftraceCount, &bpf, None),
            (Some(50.0), BASIS_RUNS)
        );
    }

    #[test]
    fn bpftrace_outputs() {
        assert_eq!(parse_count("Attaching 1 probe...\n\n\n@c: 4\n"), Some(4));
        assert_eq!(
            parse_bpftrace_lost("Lost 12 events\nLost 3 events\n", ""),
            Some(15)
        );
        assert_eq!(parse_bpftrace_lost("", ""), Some(0));
    }
}
