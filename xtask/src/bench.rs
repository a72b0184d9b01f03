//! `cargo xtask bench`: what tracing costs, in scenarios.
//!
//! - churn: for each mode (workload pinned to CPU 0, or every CPU busy), runs
//!   the configurations interleaved, each repetition starting one later
//!   (A B C D E F, B C D E F A, …, so that none always follows the same
//!   one): no tracer, tcptrace to a file (text and --json), tcptrace as a
//!   metrics daemon (`--view none --metrics`: nothing printed, every
//!   finished socket counted), bpftrace printing or counting the same
//!   tracepoint, and two bpftrace programs that measure the machine itself
//!   (one of no instructions, one that only reads the clock). Before each run the page cache is written out (a tracer's
//!   output must not be written back during the next run). Each run starts the tracer, waits until it has
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
//! - json: the direct JSON writer against serde's derives of the same types
//!   (the `replay` example), in reader CPU per million events.
//! - syscalls: getppid(2) in a loop with no tracer, tcptrace and
//!   `tcptrace --no-accept`: what following accept(2) costs every syscall.
//!
//! Throughput, CPU and memory are measured with the kernel's BPF statistics
//! off, as on a production host; `--stats-reps` more runs of each tracer
//! with them on give the BPF run times (see `repetitions`).
//!
//! Every wait is bounded and every child is killed if anything fails.

use std::fmt;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;
use serde::Serialize;

use crate::proc::{self, BPF_STATS, SysctlGuard};
use crate::report;
use crate::util::{self, command, run};

// A file per scenario, plus one for a run's record and files and one for
// the tracers: in one file the runner was too long to read in one sitting.
mod bulk;
mod churn;
mod json;
mod massclose;
mod run;
pub(crate) mod syscalls;
mod tracer;

use self::bulk::run_bulk;
pub use self::bulk::{BULK_CONFIGS, BulkOut};
pub use self::churn::{Ceiling, ChurnOut};
use self::churn::{ceiling, run_churn};
use self::json::json_paths;
pub use self::massclose::MassClose;
use self::massclose::run_massclose;
#[cfg(test)] // Named only by the report's tests.
pub use self::massclose::{MasscloseOut, SocketCounts};
pub use self::run::Run;
pub use self::syscalls::SYSCALL_CONFIGS;
#[cfg(test)] // Named only by the report's tests.
pub use self::tracer::BASIS_PRODUCED;
pub use self::tracer::{Summary, TracerOut};

/// Longest wait for a churn's TIME_WAIT sockets to expire before the bulk
/// and mass-close scenarios (the kernel keeps them 60 s).
const TIME_WAIT_WAIT: Duration = Duration::from_secs(75);

#[derive(clap::Args, Debug, Clone, Serialize)]
pub struct BenchArgs {
    /// Scenarios to run, comma-separated (all by default).
    #[arg(long, value_delimiter = ',', default_values_t = Scenario::ALL)]
    pub scenarios: Vec<Scenario>,
    /// Repetitions of every configuration in every mode (interleaved); also
    /// the bulk scenario's repetitions.
    #[arg(long, default_value_t = 5)]
    pub reps: u32,
    /// Extra repetitions of each tracer configuration (churn and bulk) with
    /// kernel.bpf_stats_enabled=1, for the BPF run-time figures. The --reps
    /// that give throughput, tracer CPU and memory run with it off, as on a
    /// production host: the statistics add two clock reads to every BPF
    /// program run, which costs the traced workload throughput by itself.
    #[arg(long, default_value_t = 2)]
    pub stats_reps: u32,
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
    /// The tcptrace binary of the `baseline` configuration (add `baseline`
    /// to --configs): another build, say of main before a change, run
    /// interleaved with this one, to measure the change within one run.
    #[arg(long, value_name = "PATH")]
    pub baseline: Option<PathBuf>,
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
    /// bpftrace with a program of no instructions (it returns 0) on the same
    /// tracepoint: what this machine charges for running any program at all.
    BpftraceEmpty,
    /// bpftrace with a program that only reads the clock: with
    /// `bpftrace-empty`, the price of the one timestamp every event needs.
    BpftraceClock,
    /// Another tcptrace binary (`--baseline PATH`, e.g. main's build before
    /// a change) with the default output: an A/B inside one run, which this
    /// VM's drift between runs (a third slower within an hour) otherwise
    /// hides. Never among the defaults.
    Baseline,
}

impl Config {
    const ALL: [Config; 8] = [
        Config::None,
        Config::Tcptrace,
        Config::TcptraceJson,
        Config::TcptraceMetrics,
        Config::BpftracePrint,
        Config::BpftraceCount,
        Config::BpftraceEmpty,
        Config::BpftraceClock,
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
            Config::BpftraceEmpty => "bpftrace-empty",
            Config::BpftraceClock => "bpftrace-clock",
            Config::Baseline => "baseline",
        }
    }

    pub fn is_tcptrace(self) -> bool {
        matches!(
            self,
            Config::Tcptrace
                | Config::TcptraceJson
                | Config::TcptraceMetrics
                | Config::TcptraceNoAccept
                | Config::Baseline
        )
    }

    pub fn is_bpftrace(self) -> bool {
        tracer::bpftrace_program(self).is_some()
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

struct Ctx {
    args: BenchArgs,
    dir: PathBuf,
    tcptrace: PathBuf,
    churn: PathBuf,
    bulk: PathBuf,
    massclose: PathBuf,
    syscalls: PathBuf,
}

/// Turns BPF run-time statistics on or off for the runs that follow.
fn set_bpf_stats(on: bool) -> Result<()> {
    proc::set_sysctl(BPF_STATS, if on { "1" } else { "0" })
}

/// The repetitions of the churn and the bulk: `--reps` with statistics off
/// (throughput, CPU, memory), then `--stats-reps` with them on (BPF run
/// time), numbered on.
fn repetitions(a: &BenchArgs) -> impl Iterator<Item = (u32, bool)> {
    (0..a.reps)
        .map(|rep| (rep, false))
        .chain((a.reps..a.reps + a.stats_reps).map(|rep| (rep, true)))
}

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
    let wants_baseline = wants(Scenario::Churn) && args.configs.contains(&Config::Baseline);
    if wants_baseline != args.baseline.is_some() {
        bail!("--baseline PATH and `baseline` in --configs go together");
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
    ]
    .into_iter()
    .chain(ctx.args.baseline.as_ref().map(|b| (b, true)))
    {
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
    // Restores the machine's setting at the end; each run sets its own.
    let stats = SysctlGuard::set(BPF_STATS, "0").context("setting BPF run-time statistics")?;
    let started = Instant::now();

    let a = &ctx.args;
    let mut runs = Vec::new();
    let mut ceiling_result = None;
    if wants(Scenario::Churn) {
        let tracers = a.configs.iter().filter(|&&c| c != Config::None).count();
        let total =
            a.modes.len() * (a.configs.len() * a.reps as usize + tracers * a.stats_reps as usize);
        println!(
            "bench: churn: {total} runs ({} modes x {} configs x {} reps, {} s of churn each, \
             interleaved; then {} rep(s) of each tracer with BPF statistics on)",
            a.modes.len(),
            a.configs.len(),
            a.reps,
            a.seconds,
            a.stats_reps
        );
        for &mode in &a.modes {
            for (rep, bpf_stats) in repetitions(a) {
                for config in run::rotated(&a.configs, rep) {
                    if bpf_stats && config == Config::None {
                        continue;
                    }
                    proc::check_interrupted()?;
                    set_bpf_stats(bpf_stats)?;
                    run::settle();
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
        set_bpf_stats(false)?;
        if a.configs.contains(&Config::Tcptrace) && a.ceiling_max_clients > 0 {
            ceiling_result = Some(ceiling(&ctx)?);
        }
    }
    if wants(Scenario::Bulk) {
        run::wait_for_time_wait(TIME_WAIT_WAIT)?;
        println!(
            "bench: bulk: {} runs (none and tcptrace x {} reps, {} s each, {} connection(s), {}), \
             interleaved, and {} of tcptrace with BPF statistics on",
            2 * a.reps,
            a.reps,
            a.bulk_seconds,
            a.bulk_connections,
            if a.bulk_unpinned {
                "unpinned"
            } else {
                "pinned to CPU 0"
            },
            a.stats_reps
        );
        for (rep, bpf_stats) in repetitions(a) {
            for config in run::rotated(&BULK_CONFIGS, rep) {
                if bpf_stats && config == Config::None {
                    continue;
                }
                proc::check_interrupted()?;
                set_bpf_stats(bpf_stats)?;
                run::settle();
                let r = run_bulk(&ctx, config, rep);
                proc::check_interrupted()?;
                println!("  {}", report::run_line(&r, a.reps));
                runs.push(r);
            }
        }
    }
    if wants(Scenario::Massclose) && a.massclose_runs > 0 {
        run::wait_for_time_wait(TIME_WAIT_WAIT)?;
        println!(
            "bench: massclose: {} run(s), {} connections SIGKILLed under tcptrace --json",
            a.massclose_runs, a.massclose_conns
        );
        // Its BPF table shows run times; no throughput is measured.
        set_bpf_stats(true)?;
        for rep in 0..a.massclose_runs {
            proc::check_interrupted()?;
            let r = run_massclose(&ctx, rep);
            proc::check_interrupted()?;
            println!("  {}", report::run_line(&r, a.massclose_runs));
            runs.push(r);
        }
    }
    if wants(Scenario::Syscalls) {
        set_bpf_stats(false)?;
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
