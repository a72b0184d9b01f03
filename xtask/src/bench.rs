//! `cargo xtask bench`: what tracing costs, in scenarios.
//!
//! - churn: for each mode (workload pinned to CPU 0, or every CPU busy), runs
//!   the configurations interleaved (A B C D E F A B C D E F …): no tracer,
//!   tcptrace to a file (text and --json), tcptrace as a metrics daemon
//!   (`--view none --metrics`: nothing printed, every finished socket
//!   counted), and bpftrace printing or counting the same tracepoint. Each run starts the tracer, waits until it has
//!   attached, runs the `churn` workload, stops the tracer with SIGINT and
//!   collects connections/s, the tracer's CPU time, peak RSS, the BPF
//!   programs' run time and skipped runs (per program) and tcptrace's own
//!   event counters. Then it searches for the highest churn rate tcptrace
//!   follows without losing events.
//! - bulk: the `bulk` workload (long-lived loopback streams at full speed)
//!   with and without tcptrace, interleaved: the throughput ratio is what
//!   tcptrace's programs that fire on every softirq cost traffic it has
//!   nothing to report about.
//! - massclose: under `tcptrace --json`, the `massclose` workload SIGKILLs a
//!   child holding many loopback connections; once every socket of it is
//!   gone, tcptrace is stopped, and its JSON says how many of those sockets
//!   it still thought open. With the runs the kernel skipped (against the
//!   events produced), that is what a burst of closes costs its accuracy.
//!
//! Every wait is bounded and every child is killed if anything fails.

use std::fmt;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::proc::{self, BpfStats, Proc, SysctlGuard};
use crate::report;
use crate::util::{self, command, run};

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated (all by default).
    #[arg(long, value_delimiter = ',', default_values_t = Scenario::ALL)]
    pub scenarios: Vec<Scenario>,
    /// Repetitions of every configuration in every mode (interleaved); also
    /// the bulk scenario's repetitions.
    #[arg(long, default_value_t = 5)]
    pub reps: u32,
    /// Seconds of churn per run.
    #[arg(long, default_value_t = 4.0)]
    pub seconds: f64,
    /// Configurations to run in the churn, comma-separated.
    #[arg(long, alias = "only", value_delimiter = ',', default_values_t = Config::ALL)]
    pub configs: Vec<Config>,
    /// Modes to run the churn in, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [Mode::Pinned, Mode::Saturated])]
    pub modes: Vec<Mode>,
    /// Listening ports the churn rotates over (spreads TIME_WAIT).
    #[arg(long, default_value_t = 32)]
    pub ports: u16,
    /// First listening port of the churn (keep below the ephemeral range,
    /// 32768).
    #[arg(long, default_value_t = 24000)]
    pub base_port: u16,
    /// Most client threads the drop-free ceiling search tries (1, 2, 4, …);
    /// 0 skips the search. It runs only when `tcptrace` is among --configs.
    #[arg(long, default_value_t = 16)]
    pub ceiling_max_clients: u32,
    /// Seconds of transfer per bulk run (none and tcptrace, --reps each).
    #[arg(long, default_value_t = 4.0)]
    pub bulk_seconds: f64,
    /// TCP streams the bulk workload runs at once.
    #[arg(long, default_value_t = 1)]
    pub bulk_connections: u32,
    /// Let the bulk workload use every CPU (by default it is pinned to CPU 0,
    /// sender, receiver and their softirqs together, so that any per-softirq
    /// cost comes straight out of the throughput; the tracer stays free).
    #[arg(long)]
    pub bulk_unpinned: bool,
    /// Listening port of the bulk workload.
    #[arg(long, default_value_t = 23990)]
    pub bulk_port: u16,
    /// Connections the mass-close child opens before it is SIGKILLed (each
    /// needs a file descriptor on both sides; RLIMIT_NOFILE is raised, and
    /// the connections are split over several children and listeners when
    /// the hard limit is lower).
    #[arg(long, default_value_t = 20000)]
    pub massclose_conns: u32,
    /// Mass-close runs, each under its own tcptrace --json (0 skips them).
    #[arg(long, default_value_t = 1)]
    pub massclose_runs: u32,
    /// First listening port of the mass close (one port per shard).
    #[arg(long, default_value_t = 23900)]
    pub massclose_port: u16,
    /// Seconds each phase of a mass close may take (connecting, closing,
    /// the sockets disappearing from /proc/net/tcp).
    #[arg(long, default_value_t = 60)]
    pub massclose_timeout: u64,
    /// Seconds of getppid(2) per syscalls run (none, tcptrace and
    /// tcptrace --no-accept, --reps each).
    #[arg(long, default_value_t = 3.0)]
    pub syscalls_seconds: f64,
    /// Seconds to wait for a tracer to report that it has attached.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout: u64,
    /// Seconds a tracer gets to exit after SIGINT before it is killed.
    #[arg(long, default_value_t = 15)]
    pub stop_timeout: u64,
    /// Leave BENCHMARKS.md alone (results still go to target/bench/).
    #[arg(long)]
    pub no_benchmarks_md: bool,
    /// Use the binaries already in target/release (no cargo build).
    #[arg(long)]
    pub no_build: bool,
    /// Benchmark this tcptrace binary instead of target/release/tcptrace
    /// (which is then not built).
    #[arg(long, value_name = "PATH", hide = true)]
    pub tcptrace: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Connection churn in every --modes x --configs, then the drop-free
    /// ceiling search.
    Churn,
    /// Loopback throughput with and without tcptrace (--bulk-*): what its
    /// programs that run on every softirq cost.
    Bulk,
    /// A child holding many connections SIGKILLed under tcptrace --json
    /// (--massclose-*): runs skipped, sockets wrongly left open.
    Massclose,
    /// The JSON lines written by tcptrace's direct writer against serde's
    /// derives (the `replay` example): reader CPU per million events.
    Json,
    /// getppid(2) in a loop with and without tcptrace, and with
    /// `--no-accept`: what following accept(2) costs every syscall.
    Syscalls,
}

impl Scenario {
    const ALL: [Scenario; 5] = [
        Scenario::Churn,
        Scenario::Bulk,
        Scenario::Massclose,
        Scenario::Json,
        Scenario::Syscalls,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Churn => "churn",
            Scenario::Bulk => "bulk",
            Scenario::Massclose => "massclose",
            Scenario::Json => "json",
            Scenario::Syscalls => "syscalls",
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    None,
    Tcptrace,
    TcptraceJson,
    /// `tcptrace --view none --metrics 127.0.0.1:0`: the daemon's cost.
    TcptraceMetrics,
    /// `tcptrace --no-accept`: without the syscall tracepoint (the
    /// syscalls scenario; not in the churn's defaults).
    TcptraceNoAccept,
    BpftracePrint,
    BpftraceCount,
}

impl Config {
    const ALL: [Config; 6] = [
        Config::None,
        Config::Tcptrace,
        Config::TcptraceJson,
        Config::TcptraceMetrics,
        Config::BpftracePrint,
        Config::BpftraceCount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Config::None => "none",
            Config::Tcptrace => "tcptrace",
            Config::TcptraceJson => "tcptrace-json",
            Config::TcptraceMetrics => "tcptrace-metrics",
            Config::TcptraceNoAccept => "tcptrace-no-accept",
            Config::BpftracePrint => "bpftrace-print",
            Config::BpftraceCount => "bpftrace-count",
        }
    }

    pub fn is_tcptrace(self) -> bool {
        matches!(
            self,
            Config::Tcptrace
                | Config::TcptraceJson
                | Config::TcptraceMetrics
                | Config::TcptraceNoAccept
        )
    }

    pub fn is_bpftrace(self) -> bool {
        matches!(self, Config::BpftracePrint | Config::BpftraceCount)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Workload pinned to CPU 0 (`taskset -c 0`), one client; tracer free.
    Pinned,
    /// Workload unpinned with two client threads: every CPU busy.
    Saturated,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Pinned => "pinned",
            Mode::Saturated => "saturated",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Mode::Pinned => "workload pinned to CPU 0 with taskset, 1 client thread; tracer free",
            Mode::Saturated => "workload unpinned, 2 client threads: every CPU busy",
        }
    }

    fn clients(self) -> u32 {
        match self {
            Mode::Pinned => 1,
            Mode::Saturated => 2,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// churn's JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnOut {
    pub connections: u64,
    pub seconds: f64,
    pub rate: f64,
    pub errors: u64,
    pub accepted: u64,
}

/// bulk's JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkOut {
    /// Bytes received between the common start and the deadline.
    pub bytes: f64,
    pub seconds: f64,
    /// Bytes per second.
    pub rate: f64,
    pub connections: u32,
    pub errors: u64,
}

/// massclose's JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MasscloseOut {
    pub connections: u64,
    pub shards: u32,
    /// The listening ports: every socket of the scenario has one at an end.
    pub ports: Vec<u16>,
    pub killed_pids: Vec<u32>,
    /// Connections where the killed side had bytes unread (it sends RST).
    pub unread_in_killed: u64,
    /// Connections where the listening side had bytes unread.
    pub unread_in_listener: u64,
    pub nofile: u64,
    pub connect_s: f64,
    pub kill_s: f64,
    pub close_s: f64,
}

/// What a mass-close run found.
#[derive(Debug, Clone, Serialize)]
pub struct MassClose {
    pub out: MasscloseOut,
    /// Seconds from massclose's exit until no socket on its ports was left
    /// but TIME_WAIT ones; None if some were still there at the timeout.
    pub gone_after_s: Option<f64>,
    /// Sockets on its ports still there (TIME_WAIT aside) when tcptrace was
    /// stopped.
    pub left: u64,
    /// What tcptrace's JSON said about the sockets on those ports.
    pub sockets: SocketCounts,
}

/// Socket lines of tcptrace's JSON that have one of the scenario's ports at
/// either end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SocketCounts {
    pub reported: u64,
    /// Reported still open when tcptrace stopped (`"still_open": true`, or
    /// a verdict whose close is `still_open`).
    pub still_open: u64,
    /// Of those, sockets that were no longer there (the target: 0).
    pub still_open_gone: u64,
    /// Reported with a non-empty `incomplete` list.
    pub incomplete: u64,
}

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

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub scenario: Scenario,
    /// The churn's mode, "ceiling", or the scenario's name.
    pub mode: String,
    pub config: Config,
    pub rep: u32,
    pub clients: u32,
    pub pinned: bool,
    pub error: Option<String>,
    pub churn: Option<ChurnOut>,
    pub bulk: Option<BulkOut>,
    pub massclose: Option<MassClose>,
    pub syscalls: Option<syscalls::SyscallsOut>,
    pub tracer: Option<TracerOut>,
}

impl Run {
    pub(crate) fn new(scenario: Scenario, mode: &str, config: Config, rep: u32) -> Self {
        Self {
            scenario,
            mode: mode.to_owned(),
            config,
            rep,
            clients: 0,
            pinned: false,
            error: None,
            churn: None,
            bulk: None,
            massclose: None,
            syscalls: None,
            tracer: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
            && match self.scenario {
                Scenario::Churn => self.churn.is_some(),
                Scenario::Bulk => self.bulk.is_some(),
                Scenario::Massclose => self.massclose.is_some(),
                Scenario::Syscalls => self.syscalls.is_some(),
                // Not a run: the example prints its own figures.
                Scenario::Json => false,
            }
    }

    /// Connections/s of a churn, bytes/s of a bulk run.
    pub fn rate(&self) -> Option<f64> {
        if !self.ok() {
            return None;
        }
        match self.scenario {
            Scenario::Churn => self.churn.as_ref().map(|c| c.rate),
            Scenario::Bulk => self.bulk.as_ref().map(|b| b.rate),
            Scenario::Syscalls => self.syscalls.as_ref().map(|s| s.rate),
            Scenario::Massclose | Scenario::Json => None,
        }
    }

    pub fn lost(&self) -> Option<u64> {
        self.tracer.as_ref()?.summary.as_ref()?.lost
    }

    /// Seconds the workload ran: the window the BPF statistics cover.
    pub fn workload_seconds(&self) -> Option<f64> {
        match self.scenario {
            Scenario::Churn => self.churn.as_ref().map(|c| c.seconds),
            Scenario::Bulk => self.bulk.as_ref().map(|b| b.seconds),
            Scenario::Syscalls => self.syscalls.as_ref().map(|s| s.seconds),
            Scenario::Massclose | Scenario::Json => None,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingStep {
    pub clients: u32,
    pub rate: Option<f64>,
    pub lost: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub steps: Vec<CeilingStep>,
    /// Highest rate with zero lost events, and the clients that reached it.
    pub best: Option<(u32, f64)>,
    pub stopped_because: String,
}

struct Ctx {
    args: BenchArgs,
    dir: PathBuf,
    tcptrace: PathBuf,
    churn: PathBuf,
    bulk: PathBuf,
    massclose: PathBuf,
    syscalls: PathBuf,
}

const TCPTRACE_READY: &str = "tracing";
const BPFTRACE_READY: &str = "Attaching";
const BPFTRACE_SETTLE: Duration = Duration::from_millis(300);
/// How much of a tracer's output is kept as a sample.
const SAMPLE_BYTES: u64 = 1 << 20;
const BPFTRACE_PRINT: &str = r#"tracepoint:sock:inet_sock_set_state { printf("%llx %d %d\n", args->skaddr, args->oldstate, args->newstate); }"#;
const BPFTRACE_COUNT: &str = "tracepoint:sock:inet_sock_set_state { @c = count(); }";

pub fn bench(args: BenchArgs) -> Result<()> {
    util::require_root("bench")?;
    if args.reps == 0 || args.seconds.is_nan() || args.seconds <= 0.0 {
        bail!("--reps and --seconds must be positive");
    }
    if !(args.bulk_seconds.is_finite() && args.bulk_seconds > 0.0) || args.bulk_connections == 0 {
        bail!("--bulk-seconds and --bulk-connections must be positive");
    }
    if args.massclose_conns == 0 || args.massclose_timeout == 0 {
        bail!("--massclose-conns and --massclose-timeout must be positive");
    }
    if args.scenarios.is_empty() {
        bail!("--scenarios must name at least one scenario");
    }
    let scenarios = args.scenarios.clone();
    let wants = |s: Scenario| scenarios.contains(&s);
    if wants(Scenario::Churn) && (args.configs.is_empty() || args.modes.is_empty()) {
        bail!("--configs and --modes must name at least one entry");
    }
    crate::setup::setup()?;

    let root = util::repo_root();
    let release = util::target_dir().join("release");
    let churn_tcptrace = wants(Scenario::Churn) && args.configs.iter().any(|c| c.is_tcptrace());
    let wants_tcptrace = churn_tcptrace
        || wants(Scenario::Bulk)
        || wants(Scenario::Massclose)
        || wants(Scenario::Syscalls);
    let bins: Vec<&str> = [
        (Scenario::Churn, "churn"),
        (Scenario::Bulk, "bulk"),
        (Scenario::Massclose, "massclose"),
        (Scenario::Syscalls, "syscalls"),
    ]
    .into_iter()
    .filter(|&(s, _)| wants(s))
    .map(|(_, b)| b)
    .collect();
    if !args.no_build {
        println!("bench: building {} (release)", bins.join(", "));
        let mut cmd = command(util::cargo())?;
        cmd.args(["build", "--release", "--package", "xtask"]);
        for b in &bins {
            cmd.args(["--bin", b]);
        }
        run(cmd.current_dir(&root))?;
        if wants_tcptrace && args.tcptrace.is_none() {
            println!("bench: building tcptrace (release)");
            run(command(util::cargo())?
                .args(["build", "--release", "--package", "tcptrace"])
                .current_dir(&root))?;
        }
    }
    let ctx = Ctx {
        dir: util::target_dir().join("bench"),
        tcptrace: args
            .tcptrace
            .clone()
            .unwrap_or_else(|| release.join("tcptrace")),
        churn: release.join("churn"),
        bulk: release.join("bulk"),
        massclose: release.join("massclose"),
        syscalls: release.join("syscalls"),
        args,
    };
    for (bin, needed) in [
        (&ctx.churn, wants(Scenario::Churn)),
        (&ctx.bulk, wants(Scenario::Bulk)),
        (&ctx.massclose, wants(Scenario::Massclose)),
        (&ctx.syscalls, wants(Scenario::Syscalls)),
        (&ctx.tcptrace, wants_tcptrace),
    ] {
        if needed && !bin.is_file() {
            bail!(
                "{} is missing (build it, or drop --no-build)",
                bin.display()
            );
        }
    }
    let runs_dir = ctx.dir.join("runs");
    if runs_dir.exists() {
        fs::remove_dir_all(&runs_dir)
            .with_context(|| format!("clearing {}", runs_dir.display()))?;
    }
    fs::create_dir_all(&runs_dir).with_context(|| format!("creating {}", runs_dir.display()))?;

    let load = report::load_average();
    if load.is_some_and(|l| l > 0.5) {
        println!(
            "bench: warning: load average {:.2} before starting; other work on the machine \
             skews the results",
            load.unwrap_or_default()
        );
    }
    proc::catch_sigint();
    let stats = SysctlGuard::set("kernel.bpf_stats_enabled", "1")
        .context("enabling BPF run-time statistics")?;
    let started = Instant::now();

    let a = &ctx.args;
    let mut runs = Vec::new();
    let mut ceiling_result = None;
    if wants(Scenario::Churn) {
        let total = a.modes.len() * a.configs.len() * a.reps as usize;
        println!(
            "bench: churn: {total} runs ({} modes x {} configs x {} reps, {} s of churn each), \
             interleaved",
            a.modes.len(),
            a.configs.len(),
            a.reps,
            a.seconds
        );
        for &mode in &a.modes {
            for rep in 0..a.reps {
                for &config in &a.configs {
                    proc::check_interrupted()?;
                    let r = run_churn(
                        &ctx,
                        mode.name(),
                        mode == Mode::Pinned,
                        mode.clients(),
                        config,
                        rep,
                    );
                    proc::check_interrupted()?;
                    println!("  {}", report::run_line(&r, a.reps));
                    runs.push(r);
                }
            }
        }
        if a.configs.contains(&Config::Tcptrace) && a.ceiling_max_clients > 0 {
            ceiling_result = Some(ceiling(&ctx)?);
        }
    }
    if wants(Scenario::Bulk) {
        println!(
            "bench: bulk: {} runs (none and tcptrace x {} reps, {} s each, {} connection(s), {}), \
             interleaved",
            2 * a.reps,
            a.reps,
            a.bulk_seconds,
            a.bulk_connections,
            if a.bulk_unpinned {
                "unpinned"
            } else {
                "pinned to CPU 0"
            }
        );
        for rep in 0..a.reps {
            for config in BULK_CONFIGS {
                proc::check_interrupted()?;
                let r = run_bulk(&ctx, config, rep);
                proc::check_interrupted()?;
                println!("  {}", report::run_line(&r, a.reps));
                runs.push(r);
            }
        }
    }
    if wants(Scenario::Massclose) && a.massclose_runs > 0 {
        println!(
            "bench: massclose: {} run(s), {} connections SIGKILLed under tcptrace --json",
            a.massclose_runs, a.massclose_conns
        );
        for rep in 0..a.massclose_runs {
            proc::check_interrupted()?;
            let r = run_massclose(&ctx, rep);
            proc::check_interrupted()?;
            println!("  {}", report::run_line(&r, a.massclose_runs));
            runs.push(r);
        }
    }
    if wants(Scenario::Syscalls) {
        runs.extend(syscalls::run_all(&ctx)?);
    }
    drop(stats);
    let json_paths = if wants(Scenario::Json) {
        Some(json_paths(&ctx, &root)?)
    } else {
        None
    };

    let mut report = report::Report::new(&ctx.args, runs, ceiling_result, started.elapsed(), load);
    report.json_paths = json_paths;
    let md = report.markdown();
    println!("\n{md}");
    fs::write(ctx.dir.join("results.md"), &md).context("writing results.md")?;
    let json = serde_json::to_string_pretty(&report).context("serialising results")?;
    fs::write(ctx.dir.join("results.json"), json + "\n").context("writing results.json")?;
    println!(
        "bench: wrote {} and {}",
        ctx.dir.join("results.md").display(),
        ctx.dir.join("results.json").display()
    );
    if !ctx.args.no_benchmarks_md {
        let path = root.join("BENCHMARKS.md");
        fs::write(&path, report.benchmarks_md()).context("writing BENCHMARKS.md")?;
        println!("bench: rewrote {}", path.display());
    }
    Ok(())
}

pub(crate) mod syscalls;
pub use self::syscalls::SYSCALL_CONFIGS;

/// The bulk scenario's configurations, in their interleaved order.
pub const BULK_CONFIGS: [Config; 2] = [Config::None, Config::Tcptrace];

/// The `replay` example's comparison of the two JSON writers, as it
/// prints it (seconds of CPU per million events, best of the reps).
fn json_paths(ctx: &Ctx, root: &Path) -> Result<String> {
    println!("bench: json: the direct JSON writer against serde's derives");
    if !ctx.args.no_build {
        run(command(util::cargo())?
            .args([
                "build",
                "--release",
                "--package",
                "tcptrace",
                "--example",
                "replay",
            ])
            .current_dir(root))?;
    }
    let example = util::target_dir().join("release/examples/replay");
    let reps = ctx.args.reps.max(3).to_string();
    let out = command(&example)?
        .args(["--only", "json-paths", "-n", "200000", "--reps", &reps])
        .output()
        .with_context(|| format!("running {}", example.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    Ok(text)
}

fn ceiling(ctx: &Ctx) -> Result<Ceiling> {
    println!("bench: drop-free ceiling of tcptrace (workload unpinned, more clients each step)");
    let mut steps = Vec::new();
    let mut best: Option<(u32, f64)> = None;
    let mut prev = 0.0f64;
    let mut clients = 1u32;
    let stopped_because = loop {
        if clients > ctx.args.ceiling_max_clients {
            break format!(
                "reached --ceiling-max-clients {}",
                ctx.args.ceiling_max_clients
            );
        }
        proc::check_interrupted()?;
        let r = run_churn(ctx, "ceiling", false, clients, Config::Tcptrace, 0);
        proc::check_interrupted()?;
        println!("  {}", report::run_line(&r, 0));
        let step = CeilingStep {
            clients,
            rate: r.rate(),
            lost: r.lost(),
            error: r.error.clone(),
        };
        steps.push(step.clone());
        let Some(rate) = step.rate else {
            break format!("the run with {clients} clients failed");
        };
        match step.lost {
            None => break "tcptrace printed no `tcptrace-summary` line, so loss is unknown".into(),
            Some(lost) if lost > 0 => break format!("{lost} events lost with {clients} clients"),
            Some(_) => {
                if best.is_none_or(|(_, b)| rate > b) {
                    best = Some((clients, rate));
                }
            }
        }
        if rate < prev * 1.02 {
            break format!("the rate stopped rising at {clients} clients");
        }
        prev = rate;
        clients *= 2;
    };
    Ok(Ceiling {
        steps,
        best,
        stopped_because,
    })
}

fn run_churn(ctx: &Ctx, mode: &str, pinned: bool, clients: u32, config: Config, rep: u32) -> Run {
    let mut run = Run::new(Scenario::Churn, mode, config, rep);
    run.clients = clients;
    run.pinned = pinned;
    if let Err(e) = try_churn(ctx, &mut run) {
        run.error = Some(format!("{e:#}"));
    }
    run
}

/// Where a run's files go: `<stem>.out`, `<stem>.err`, ….
fn stem(ctx: &Ctx, run: &Run) -> PathBuf {
    ctx.dir.join("runs").join(format!(
        "{}-{}-r{}-c{}",
        run.mode, run.config, run.rep, run.clients
    ))
}

fn try_churn(ctx: &Ctx, run: &mut Run) -> Result<()> {
    let stem = stem(ctx, run);
    let tracer = start_tracer(ctx, run.config, &stem)?;
    let workload = churn(ctx, run, &stem.with_extension("churn"))?;
    if let Some(t) = tracer {
        let out = t.out_path.clone();
        let stopped = stop_tracer(ctx, t, run, "the churn");
        keep_sample(&out, run.rep);
        stopped?;
    }
    match workload {
        Ok(c) => {
            run.churn = Some(c);
            Ok(())
        }
        Err((c, e)) => {
            run.churn = c;
            Err(e)
        }
    }
}

fn run_bulk(ctx: &Ctx, config: Config, rep: u32) -> Run {
    let mut run = Run::new(Scenario::Bulk, "bulk", config, rep);
    run.clients = ctx.args.bulk_connections;
    run.pinned = !ctx.args.bulk_unpinned;
    if let Err(e) = try_bulk(ctx, &mut run) {
        run.error = Some(format!("{e:#}"));
    }
    run
}

fn try_bulk(ctx: &Ctx, run: &mut Run) -> Result<()> {
    let a = &ctx.args;
    let stem = stem(ctx, run);
    let tracer = start_tracer(ctx, run.config, &stem)?;
    let mut cmd = pinned_command(&ctx.bulk, run.pinned)?;
    cmd.args(["--seconds", &a.bulk_seconds.to_string()])
        .args(["--connections", &a.bulk_connections.to_string()])
        .args(["--port", &a.bulk_port.to_string()]);
    let limit = Duration::from_secs_f64(a.bulk_seconds + 30.0);
    let workload: WorkResult<BulkOut> = workload(cmd, "bulk", &stem.with_extension("bulk"), limit)?;
    if let Some(t) = tracer {
        let out = t.out_path.clone();
        let stopped = stop_tracer(ctx, t, run, "the bulk transfer");
        keep_sample(&out, run.rep);
        stopped?;
    }
    match workload {
        Ok(b) => {
            run.bulk = Some(b);
            Ok(())
        }
        Err((b, e)) => {
            run.bulk = b;
            Err(e)
        }
    }
}

fn run_massclose(ctx: &Ctx, rep: u32) -> Run {
    let mut run = Run::new(Scenario::Massclose, "massclose", Config::TcptraceJson, rep);
    run.clients = ctx.args.massclose_conns;
    if let Err(e) = try_massclose(ctx, &mut run) {
        run.error = Some(format!("{e:#}"));
    }
    run
}

fn try_massclose(ctx: &Ctx, run: &mut Run) -> Result<()> {
    let a = &ctx.args;
    let stem = stem(ctx, run);
    let tracer = start_tracer(ctx, run.config, &stem)?.context("massclose needs tcptrace")?;
    let mut cmd = command(&ctx.massclose)?;
    cmd.args(["--conns", &a.massclose_conns.to_string()])
        .args(["--port", &a.massclose_port.to_string()])
        .args(["--timeout", &a.massclose_timeout.to_string()]);
    // Connecting, closing, and the coordinator's own waits.
    let limit = Duration::from_secs(3 * a.massclose_timeout + 30);
    let workload: WorkResult<MasscloseOut> =
        workload(cmd, "massclose", &stem.with_extension("massclose"), limit)?;
    let out_path = tracer.out_path.clone();
    let out = match workload {
        Ok(o) => o,
        Err((_, e)) => {
            let _ = stop_tracer(ctx, tracer, run, "the mass close");
            keep_sample(&out_path, run.rep);
            return Err(e);
        }
    };

    // tcptrace is stopped only once every socket of the scenario is gone,
    // so that any it reports still open is wrong.
    let waited = Instant::now();
    let deadline = waited + Duration::from_secs(a.massclose_timeout);
    let left = loop {
        proc::check_interrupted()?;
        let left: Vec<proc::NetSock> = proc::tcp_sockets()?
            .into_iter()
            .filter(|s| s.state != proc::TCP_TIME_WAIT)
            .filter(|s| out.ports.contains(&s.local_port) || out.ports.contains(&s.remote_port))
            .collect();
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let gone_after_s = left.is_empty().then(|| waited.elapsed().as_secs_f64());

    let stopped = stop_tracer(ctx, tracer, run, "the mass close");
    let present: Vec<(u16, u16)> = left.iter().map(|s| (s.local_port, s.remote_port)).collect();
    let scanned = File::open(&out_path)
        .with_context(|| format!("reading {}", out_path.display()))
        .map(|f| scan_sockets(std::io::BufReader::new(f), &out.ports, &present));
    keep_sample(&out_path, run.rep);
    stopped?;
    run.massclose = Some(MassClose {
        out,
        gone_after_s,
        left: left.len() as u64,
        sockets: scanned?,
    });
    Ok(())
}

/// The parts of a `{"type":"socket",…}` line of tcptrace's JSON that the
/// mass close looks at (schema: tcptrace/src/render/json.rs).
#[derive(Deserialize)]
struct SocketLine {
    socket: SocketPart,
    verdict: VerdictPart,
}

#[derive(Deserialize)]
struct SocketPart {
    local: String,
    remote: String,
    #[serde(default)]
    still_open: bool,
}

#[derive(Deserialize)]
struct VerdictPart {
    close: ClosePart,
    #[serde(default)]
    incomplete: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct ClosePart {
    kind: String,
}

/// The port of "127.0.0.1:23900" or "[::1]:23900".
fn addr_port(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

/// Counts the socket lines of tcptrace's JSON with one of `ports` at either
/// end; a socket reported still open counts as gone unless its
/// (local, remote) ports are among `present`.
fn scan_sockets(
    text: impl std::io::BufRead,
    ports: &[u16],
    present: &[(u16, u16)],
) -> SocketCounts {
    let mut c = SocketCounts::default();
    for line in text.lines() {
        let Ok(line) = line else { break };
        if !line.starts_with(r#"{"type":"socket""#) {
            continue;
        }
        let Ok(l) = serde_json::from_str::<SocketLine>(&line) else {
            continue;
        };
        let (Some(lp), Some(rp)) = (addr_port(&l.socket.local), addr_port(&l.socket.remote)) else {
            continue;
        };
        if !ports.contains(&lp) && !ports.contains(&rp) {
            continue;
        }
        c.reported += 1;
        if !l.verdict.incomplete.is_empty() {
            c.incomplete += 1;
        }
        if l.socket.still_open || l.verdict.close.kind == "still_open" {
            c.still_open += 1;
            if !present.contains(&(lp, rp)) {
                c.still_open_gone += 1;
            }
        }
    }
    c
}

/// A tracer that has attached, with its readings at the start of the
/// measured window.
struct Tracing {
    proc: Proc,
    ready_s: f64,
    cpu0: f64,
    bpf0: BpfStats,
    out_path: PathBuf,
    err_path: PathBuf,
}

/// Starts the configuration's tracer (None for `none`) writing to
/// `<stem>.out` and `<stem>.err`, and waits until it has attached.
fn start_tracer(ctx: &Ctx, config: Config, stem: &Path) -> Result<Option<Tracing>> {
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
fn stop_tracer(ctx: &Ctx, t: Tracing, run: &mut Run, what: &str) -> Result<()> {
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
    let (events, events_basis) = match (&summary, bpf.run_cnt, bpftrace_count) {
        (
            Some(Summary {
                received: Some(n), ..
            }),
            _,
            _,
        ) => (Some(*n), "received"),
        (_, n, _) if n > 0 => (Some(n), "bpf run_cnt"),
        (_, _, Some(n)) => (Some(n), "@c"),
        _ => (None, "none"),
    };
    let (bpf_ns_per_event, bpf_basis) = bpf_per_event(run.config, &bpf, summary.as_ref());
    run.tracer = Some(TracerOut {
        ready_s,
        cpu_s: (exit.cpu_s - cpu0).max(0.0),
        cpu_total_s: exit.cpu_s,
        maxrss_kib: exit.maxrss_kib,
        rss_after_kib,
        exit: exit.how.clone(),
        killed,
        bpf,
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

/// Keeps the start of the first repetition's output as a sample; the rest
/// (up to hundreds of MiB a run) only fills the disk.
fn keep_sample(out_path: &Path, rep: u32) {
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

fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

fn tracer_command(ctx: &Ctx, config: Config) -> Result<Option<Command>> {
    Ok(match config {
        Config::None => None,
        Config::Tcptrace => Some(command(&ctx.tcptrace)?),
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
        Config::BpftracePrint | Config::BpftraceCount => {
            let prog = if config == Config::BpftracePrint {
                BPFTRACE_PRINT
            } else {
                BPFTRACE_COUNT
            };
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

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = v.len().saturating_sub(lines);
    let s = v[start..].join(" | ");
    if s.is_empty() {
        "(stderr empty)".into()
    } else {
        s
    }
}

/// A workload that ran: its JSON line, or why it failed (with the line if
/// it printed one).
type WorkResult<T> = std::result::Result<T, (Option<T>, anyhow::Error)>;

/// `program`, under `taskset -c 0` when pinned.
fn pinned_command(program: &Path, pinned: bool) -> Result<Command> {
    Ok(if pinned {
        let mut c = command("taskset")?;
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        command(program)?
    })
}

/// Runs the churn workload for `run`.
fn churn(ctx: &Ctx, run: &Run, json_path: &Path) -> Result<WorkResult<ChurnOut>> {
    let a = &ctx.args;
    let mut cmd = pinned_command(&ctx.churn, run.pinned)?;
    cmd.args(["--seconds", &a.seconds.to_string()])
        .args(["--ports", &a.ports.to_string()])
        .args(["--base-port", &a.base_port.to_string()])
        .args(["--clients", &run.clients.to_string()]);
    let limit = Duration::from_secs_f64(a.seconds + 30.0);
    workload(cmd, "churn", json_path, limit)
}

/// Runs a workload that prints one JSON line (stdout to `json_path`, stderr
/// next to it) for at most `limit`. The outer error is for failures of the
/// harness; the inner one for a workload that ran but failed (with its
/// numbers if any).
fn workload<T: serde::de::DeserializeOwned>(
    mut cmd: Command,
    name: &str,
    json_path: &Path,
    limit: Duration,
) -> Result<WorkResult<T>> {
    let err_path = json_path.with_extension(format!("{name}-err"));
    cmd.stdin(Stdio::null())
        .stdout(create(json_path)?)
        .stderr(create(&err_path)?);
    let mut p = Proc::spawn(&mut cmd, name)?;
    let deadline = Instant::now() + limit;
    let exit = loop {
        proc::check_interrupted()?;
        if let Some(e) = p.poll()? {
            break e.clone();
        }
        if Instant::now() >= deadline {
            bail!("{name} did not finish within {} s", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = fs::read_to_string(json_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let parsed: Option<T> = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok());
    Ok(match (exit.success(), parsed) {
        (true, Some(c)) => Ok(c),
        (ok, c) => {
            let why = if ok {
                "printed no JSON line".to_owned()
            } else {
                format!("ended with {}", exit.how)
            };
            Err((c, anyhow::anyhow!("{name} {why}: {}", tail(&stderr, 3))))
        }
    })
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
    fn massclose_json_counts() {
        // Lines as tcptrace/src/render/json.rs writes them, cut down to the
        // fields read here plus a few neighbours.
        let open = |local: &str, remote: &str, still: bool, close: &str, inc: &str| {
            format!(
                r#"{{"type":"socket","socket":{{"skaddr":"0xffff1","family":"ipv4","local":"{local}","remote":"{remote}","role":"client","steps":[],"still_open":{still},"events_lost":false}},"verdict":{{"open":{{"kind":"active","established":true,"handshake_ns":1}},"close":{{"kind":"{close}","state":"ESTABLISHED"}},"incomplete":[{inc}],"summary":"x","attribution":null}}}}"#
            )
        };
        let text = [
            // The killed child's side, closed properly.
            open(
                "127.0.0.1:40000",
                "127.0.0.1:23900",
                false,
                "reset_sent",
                "",
            ),
            // Gone, but reported still open: counted.
            open("127.0.0.1:40001", "127.0.0.1:23900", true, "still_open", ""),
            // The listening side, still there when tcptrace stopped: not.
            open(
                "127.0.0.1:23901",
                "127.0.0.1:40002",
                true,
                "still_open",
                r#""gap""#,
            ),
            // Someone else's socket.
            open("127.0.0.1:5555", "127.0.0.1:6666", true, "still_open", ""),
            r#"{"type":"transition","skaddr_hex":"0x1","event":"state"}"#.to_owned(),
            "not json".to_owned(),
        ]
        .join("\n");
        let c = scan_sockets(text.as_bytes(), &[23900, 23901], &[(23901, 40002)]);
        assert_eq!(
            c,
            SocketCounts {
                reported: 3,
                still_open: 2,
                still_open_gone: 1,
                incomplete: 1,
            }
        );
        assert_eq!(addr_port("[::1]:23900"), Some(23900));
        assert_eq!(addr_port("nonsense"), None);
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
