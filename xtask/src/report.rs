//! Statistics, targets and the Markdown/JSON output of `cargo xtask bench`.

use std::fmt::{self, Write as _};
use std::fs;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::bench::{
    BULK_CONFIGS, BenchArgs, Ceiling, Config, Mode, Run, SYSCALL_CONFIGS, Scenario,
};

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub date: String,
    /// 1-minute load average just before the bench started.
    pub load_before: Option<f64>,
}

/// The 1-minute load average.
pub fn load_average() -> Option<f64> {
    fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Machine {
    fn read(load_before: Option<f64>) -> Self {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into());
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let cpu_model = fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            kernel,
            cpus,
            cpu_model,
            date: utc_now(),
            load_before,
        }
    }
}

/// Summary of the runs of one configuration in one mode (a churn mode, or
/// a scenario's name).
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub mode: String,
    pub config: Config,
    pub runs: usize,
    pub ok: usize,
    pub rate_median: Option<f64>,
    pub ratio_median: Option<f64>,
    pub ratio_min: Option<f64>,
    pub ratio_max: Option<f64>,
    /// Tracer CPU seconds (attach to exit) per million events, median.
    pub cpu_s_per_mevent: Option<f64>,
    /// BPF run time per event, median (see `TracerOut::bpf_ns_per_event`).
    pub bpf_ns_per_event: Option<f64>,
    pub bpf_basis: Option<&'static str>,
    /// Program runs the kernel skipped (recursion_misses), summed over the
    /// runs' measured windows and the tracer's programs.
    pub missed: Option<u64>,
    /// The tracer's programs, summed over the runs.
    pub programs: Vec<ProgRow>,
    /// Runs of all the tracer's programs per second of workload, median.
    pub bpf_runs_per_s: Option<f64>,
    /// Their run time in ms per second of workload, median.
    pub bpf_ms_per_s: Option<f64>,
    /// Largest peak RSS of the tracer over the runs.
    pub peak_rss_mib: Option<f64>,
    /// Largest RSS right after the churn (steady state) over the runs.
    pub rss_after_mib: Option<f64>,
    pub events_median: Option<f64>,
    pub events_basis: Option<&'static str>,
    /// Sums over the runs; None unless every successful run reported them.
    pub produced: Option<u64>,
    pub received: Option<u64>,
    pub lost: Option<u64>,
    pub filtered: Option<u64>,
    pub bpftrace_lost: Option<u64>,
    pub errors: Vec<String>,
}

/// One BPF program of a tracer, summed over the runs of a group (matched by
/// name: ids change from run to run).
#[derive(Debug, Clone, Serialize)]
pub struct ProgRow {
    pub name: String,
    /// Runs that had this program.
    pub reps: usize,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
    /// Call sites in the verified program (see `ProgStats::calls`).
    pub calls: String,
}

impl ProgRow {
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// Sums the tracers' programs over `runs`, by name, in the order of the
/// first run that had them (that is, by program id).
pub fn programs<'a>(stats: impl IntoIterator<Item = &'a crate::proc::BpfStats>) -> Vec<ProgRow> {
    let mut rows: Vec<ProgRow> = Vec::new();
    for st in stats {
        for p in &st.progs {
            let at = match rows.iter().position(|r| r.name == p.name) {
                Some(i) => i,
                None => {
                    rows.push(ProgRow {
                        name: p.name.clone(),
                        reps: 0,
                        run_cnt: 0,
                        run_time_ns: 0,
                        recursion_misses: 0,
                        calls: p.calls.clone(),
                    });
                    rows.len() - 1
                }
            };
            let r = &mut rows[at];
            r.reps += 1;
            r.run_cnt += p.run_cnt;
            r.run_time_ns += p.run_time_ns;
            r.recursion_misses += p.recursion_misses;
        }
    }
    rows
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Status {
    #[serde(rename = "PASS")]
    Pass,
    #[serde(rename = "MISS")]
    Miss,
    #[serde(rename = "n/a")]
    NotMeasured,
}

impl Status {
    fn of(pass: bool) -> Self {
        if pass { Status::Pass } else { Status::Miss }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Pass => "PASS",
            Status::Miss => "MISS",
            Status::NotMeasured => "n/a",
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub column: String,
    pub value: Option<f64>,
    pub text: String,
    pub status: Status,
}

#[derive(Debug, Clone, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub goal: &'static str,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub params: BenchArgs,
    pub elapsed_s: f64,
    /// The churn's groups, mode by mode.
    pub groups: Vec<Group>,
    /// The bulk scenario's groups (none, tcptrace).
    pub bulk: Vec<Group>,
    /// The mass close's group (tcptrace-json), if it ran.
    pub massclose: Vec<Group>,
    /// The syscalls scenario's groups (none, tcptrace, --no-accept).
    pub syscalls: Vec<Group>,
    /// The churn's targets, one column per mode and tcptrace configuration.
    pub targets: Vec<Target>,
    /// The other scenarios' targets, one value each.
    pub scenario_targets: Vec<Target>,
    pub ceiling: Option<Ceiling>,
    pub runs: Vec<Run>,
    /// The JSON scenario's output, as the `replay` example printed it.
    pub json_paths: Option<String>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Sum of `f` over the runs, or None if any run lacks it.
fn sum_all(runs: &[&Run], f: impl Fn(&Run) -> Option<u64>) -> Option<u64> {
    if runs.is_empty() {
        return None;
    }
    runs.iter().map(|r| f(r)).sum()
}

fn group(mode: &str, config: Config, runs: &[Run], none_median: Option<f64>) -> Group {
    let all: Vec<&Run> = runs
        .iter()
        .filter(|r| r.mode == mode && r.config == config)
        .collect();
    let ok: Vec<&Run> = all.iter().copied().filter(|r| r.ok()).collect();
    let rates: Vec<f64> = ok.iter().filter_map(|r| r.rate()).collect();
    let ratios: Vec<f64> = match none_median {
        Some(base) if base > 0.0 => rates.iter().map(|r| r / base).collect(),
        _ => Vec::new(),
    };
    let tracers: Vec<_> = ok.iter().filter_map(|r| r.tracer.as_ref()).collect();
    let cpu: Vec<f64> = tracers
        .iter()
        .filter_map(|t| {
            t.events
                .filter(|&e| e > 0)
                .map(|e| t.cpu_s / e as f64 * 1e6)
        })
        .collect();
    let bpf: Vec<f64> = tracers.iter().filter_map(|t| t.bpf_ns_per_event).collect();
    // Per second of workload: the window the BPF statistics cover.
    let per_s = |f: fn(&crate::bench::TracerOut) -> f64| -> Option<f64> {
        median(
            ok.iter()
                .filter_map(|r| Some((r.tracer.as_ref()?, r.workload_seconds()?)))
                .filter(|(_, secs)| *secs > 0.0)
                .map(|(t, secs)| f(t) / secs)
                .collect(),
        )
    };
    let summary = |f: fn(&crate::bench::Summary) -> Option<u64>| {
        if config.is_tcptrace() {
            sum_all(&ok, |r| r.tracer.as_ref()?.summary.as_ref().and_then(f))
        } else {
            None
        }
    };
    let mut errors: Vec<String> = Vec::new();
    for r in &all {
        if let Some(e) = &r.error
            && !errors.contains(e)
        {
            errors.push(e.clone());
        }
    }
    Group {
        mode: mode.to_owned(),
        config,
        runs: all.len(),
        ok: ok.len(),
        rate_median: median(rates),
        ratio_median: median(ratios.clone()),
        ratio_min: ratios.iter().copied().reduce(f64::min),
        ratio_max: ratios.iter().copied().reduce(f64::max),
        cpu_s_per_mevent: median(cpu),
        bpf_ns_per_event: median(bpf),
        bpf_basis: tracers.first().map(|t| t.bpf_basis),
        missed: (!tracers.is_empty()).then(|| tracers.iter().map(|t| t.skipped_runs()).sum()),
        programs: programs(tracers.iter().map(|t| &t.bpf)),
        bpf_runs_per_s: per_s(|t| t.bpf.run_cnt as f64),
        bpf_ms_per_s: per_s(|t| t.bpf.run_time_ns as f64 / 1e6),
        peak_rss_mib: tracers
            .iter()
            .map(|t| t.maxrss_kib as f64 / 1024.0)
            .reduce(f64::max),
        rss_after_mib: tracers
            .iter()
            .map(|t| t.rss_after_kib as f64 / 1024.0)
            .reduce(f64::max),
        events_median: median(
            tracers
                .iter()
                .filter_map(|t| t.events)
                .map(|e| e as f64)
                .collect(),
        ),
        events_basis: tracers.first().map(|t| t.events_basis),
        produced: summary(|s| s.produced),
        received: summary(|s| s.received),
        lost: summary(|s| s.lost),
        filtered: summary(|s| s.filtered),
        bpftrace_lost: if config.is_bpftrace() {
            sum_all(&ok, |r| r.tracer.as_ref()?.bpftrace_lost)
        } else {
            None
        },
        errors,
    }
}

fn find<'a>(groups: &'a [Group], mode: &str, config: Config) -> Option<&'a Group> {
    groups.iter().find(|g| g.mode == mode && g.config == config)
}

/// The groups of `mode` (a churn mode or a scenario), each compared with
/// the median rate of `none` in it.
fn groups_of(mode: &str, configs: &[Config], runs: &[Run]) -> Vec<Group> {
    let none = median(
        runs.iter()
            .filter(|r| r.mode == mode && r.config == Config::None)
            .filter_map(|r| r.rate())
            .collect(),
    );
    configs
        .iter()
        .map(|&c| group(mode, c, runs, none))
        .collect()
}

fn cell(
    column: String,
    value: Option<f64>,
    text: impl Fn(f64) -> String,
    pass: impl Fn(f64) -> bool,
) -> Cell {
    match value {
        Some(v) => Cell {
            column,
            value: Some(v),
            text: text(v),
            status: Status::of(pass(v)),
        },
        None => Cell {
            column,
            value: None,
            text: "n/a".into(),
            status: Status::NotMeasured,
        },
    }
}

fn targets(groups: &[Group], args: &BenchArgs) -> Vec<Target> {
    if !args.scenarios.contains(&Scenario::Churn) {
        return Vec::new();
    }
    let columns: Vec<(Mode, Config)> = args
        .modes
        .iter()
        .flat_map(|&m| {
            args.configs
                .iter()
                .filter(|c| c.is_tcptrace())
                .map(move |&c| (m, c))
        })
        .collect();
    let label = |m: Mode, c: Config| format!("{m} {c}");
    let per = |f: &dyn Fn(Mode, Config, String) -> Cell| -> Vec<Cell> {
        columns.iter().map(|&(m, c)| f(m, c, label(m, c))).collect()
    };
    let g = |m: Mode, c| find(groups, m.name(), c);

    vec![
        Target {
            name: "churn ratio, tcptrace writing to a file",
            goal: ">= 0.95 pinned (stretch 0.97), >= 0.90 saturated",
            cells: per(&|m, c, col| {
                let v = g(m, c).and_then(|g| g.ratio_median);
                match m {
                    Mode::Pinned => cell(
                        col,
                        v,
                        |v| {
                            let stretch = if v >= 0.97 { "PASS" } else { "MISS" };
                            format!("{v:.3} (stretch {stretch})")
                        },
                        |v| v >= 0.95,
                    ),
                    Mode::Saturated => cell(col, v, |v| format!("{v:.3}"), |v| v >= 0.90),
                }
            }),
        },
        Target {
            name: "churn ratio vs bpftrace count-only",
            goal: "no more than 0.05 below",
            cells: per(&|m, c, col| {
                let ours = g(m, c).and_then(|g| g.ratio_median);
                let theirs = g(m, Config::BpftraceCount).and_then(|g| g.ratio_median);
                let diff = ours.zip(theirs).map(|(a, b)| a - b);
                cell(col, diff, |d| format!("{d:+.3}"), |d| d >= -0.05)
            }),
        },
        Target {
            name: "lost events",
            goal: "0",
            cells: per(&|m, c, col| {
                let lost = g(m, c).and_then(|g| g.lost).map(|l| l as f64);
                cell(col, lost, |l| format!("{l:.0}"), |l| l == 0.0)
            }),
        },
        Target {
            name: "reader CPU, s per million events",
            goal: "<= 0.5",
            cells: per(&|m, c, col| {
                let v = g(m, c).and_then(|g| g.cpu_s_per_mevent);
                cell(col, v, |v| format!("{v:.3}"), |v| v <= 0.5)
            }),
        },
        Target {
            name: "runs skipped by the kernel (recursion_misses), churn",
            goal: "0",
            cells: per(&|m, c, col| {
                let v = g(m, c).and_then(|g| g.missed).map(|v| v as f64);
                cell(col, v, |v| format!("{v:.0}"), |v| v == 0.0)
            }),
        },
        Target {
            name: "BPF run time, ns per event produced",
            goal: "<= 150",
            cells: per(&|m, c, col| {
                let v = g(m, c).and_then(|g| g.bpf_ns_per_event);
                cell(col, v, |v| format!("{v:.0}"), |v| v <= 150.0)
            }),
        },
        Target {
            name: "peak RSS, MiB",
            goal: "<= 20",
            cells: per(&|m, c, col| {
                let v = g(m, c).and_then(|g| g.peak_rss_mib);
                cell(col, v, |v| format!("{v:.1}"), |v| v <= 20.0)
            }),
        },
    ]
}

/// Targets of the scenarios other than the churn: one value each.
mod syscalls;
use self::syscalls::syscalls_section;

fn scenario_targets(bulk: &[Group], args: &BenchArgs) -> Vec<Target> {
    let mut out = Vec::new();
    if args.scenarios.contains(&Scenario::Bulk) {
        let g = find(bulk, "bulk", Config::Tcptrace);
        let (ratio, lo, hi) = g.map_or((None, None, None), |g| {
            (g.ratio_median, g.ratio_min, g.ratio_max)
        });
        out.push(Target {
            name: "bulk throughput ratio, tcptrace writing to a file",
            goal: ">= 0.99",
            cells: vec![cell(
                "bulk".into(),
                ratio,
                |v| match (lo, hi) {
                    (Some(lo), Some(hi)) => format!("{v:.3} [{lo:.3}, {hi:.3}]"),
                    _ => format!("{v:.3}"),
                },
                |v| v >= 0.99,
            )],
        });
    }
    out
}

/// The mass close's sums over its successful runs.
#[derive(Debug, Clone, Copy, Default)]
struct MassSums {
    runs: usize,
    produced: u64,
    missed: u64,
    reported: u64,
    still_open_gone: u64,
}

fn mass_sums(runs: &[Run]) -> MassSums {
    let mut m = MassSums::default();
    for r in runs
        .iter()
        .filter(|r| r.scenario == Scenario::Massclose && r.ok())
    {
        let (Some(mc), Some(t)) = (&r.massclose, &r.tracer) else {
            continue;
        };
        let Some(produced) = t.summary.as_ref().and_then(|s| s.produced) else {
            continue;
        };
        m.runs += 1;
        m.produced += produced;
        m.missed += t.skipped_runs();
        m.reported += mc.sockets.reported;
        m.still_open_gone += mc.sockets.still_open_gone;
    }
    m
}

fn massclose_targets(runs: &[Run]) -> Vec<Target> {
    let m = mass_sums(runs);
    let measured = m.runs > 0;
    let pct = (measured && m.produced > 0).then(|| m.missed as f64 * 100.0 / m.produced as f64);
    vec![
        Target {
            name: "mass close: runs skipped by the kernel, % of events produced",
            goal: "<= 0.1 %",
            cells: vec![cell(
                "massclose".into(),
                pct,
                |v| format!("{v:.3} % ({} of {})", m.missed, m.produced),
                |v| v <= 0.1,
            )],
        },
        Target {
            name: "mass close: sockets gone but reported still open",
            goal: "0",
            cells: vec![cell(
                "massclose".into(),
                measured.then_some(m.still_open_gone as f64),
                |v| format!("{v:.0} (of {} reported)", m.reported),
                |v| v == 0.0,
            )],
        },
    ]
}

impl Report {
    pub fn new(
        args: &BenchArgs,
        runs: Vec<Run>,
        ceiling: Option<Ceiling>,
        elapsed: Duration,
        load_before: Option<f64>,
    ) -> Self {
        let mut groups = Vec::new();
        if args.scenarios.contains(&Scenario::Churn) {
            for &mode in &args.modes {
                groups.extend(groups_of(mode.name(), &args.configs, &runs));
            }
        }
        let bulk = if args.scenarios.contains(&Scenario::Bulk) {
            groups_of("bulk", &BULK_CONFIGS, &runs)
        } else {
            Vec::new()
        };
        let massclose = if args.scenarios.contains(&Scenario::Massclose) && args.massclose_runs > 0
        {
            groups_of("massclose", &[Config::TcptraceJson], &runs)
        } else {
            Vec::new()
        };
        let syscalls = if args.scenarios.contains(&Scenario::Syscalls) {
            groups_of("syscalls", &SYSCALL_CONFIGS, &runs)
        } else {
            Vec::new()
        };
        let targets = targets(&groups, args);
        let mut scenario_targets = scenario_targets(&bulk, args);
        if !massclose.is_empty() {
            scenario_targets.extend(massclose_targets(&runs));
        }
        Self {
            machine: Machine::read(load_before),
            params: args.clone(),
            elapsed_s: elapsed.as_secs_f64(),
            groups,
            bulk,
            massclose,
            syscalls,
            targets,
            scenario_targets,
            ceiling,
            runs,
            json_paths: None,
        }
    }

    /// The results as Markdown (results.md, and the body of BENCHMARKS.md).
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let p = &self.params;
        let m = &self.machine;
        let _ = writeln!(s, "## Results\n");
        let names: Vec<&str> = p.scenarios.iter().map(|s| s.name()).collect();
        let _ = writeln!(
            s,
            "{}; Linux {}, {} CPUs ({}). Scenarios: {}; took {:.0} s; load average before: {}.\n",
            m.date,
            m.kernel,
            m.cpus,
            m.cpu_model,
            names.join(", "),
            self.elapsed_s,
            m.load_before.map_or("n/a".into(), |l| format!("{l:.2}"))
        );
        let churn = p.scenarios.contains(&Scenario::Churn);
        if churn {
            let _ = writeln!(
                s,
                "Churn: {} reps x {} s per configuration and mode, interleaved; {} listening \
                 ports.\n",
                p.reps, p.seconds, p.ports
            );
        }
        for &mode in p.modes.iter().filter(|_| churn) {
            let _ = writeln!(s, "### {mode}: {}\n", mode.describe());
            let _ = writeln!(
                s,
                "| config | runs ok | conn/s median | ratio to none: median [min, max] | \
                 tracer CPU s / M events | BPF ns / event (basis) | missed runs | peak RSS MiB | \
                 RSS after churn MiB | events / run (basis) | produced / received / lost / filtered |"
            );
            let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|");
            for g in self.groups.iter().filter(|g| g.mode == mode.name()) {
                let ratio = match (g.ratio_median, g.ratio_min, g.ratio_max) {
                    (Some(a), Some(b), Some(c)) => format!("{a:.3} [{b:.3}, {c:.3}]"),
                    _ => "n/a".into(),
                };
                let tracer = g.config != Config::None;
                let or_dash = |v: Option<String>| match v {
                    Some(v) => v,
                    None if tracer => "n/a".into(),
                    None => "-".into(),
                };
                let events = g
                    .events_median
                    .map(|e| format!("{e:.0} ({})", g.events_basis.unwrap_or("?")));
                let counts = if g.config.is_tcptrace() {
                    let f = |v: Option<u64>| v.map_or("n/a".into(), |v| v.to_string());
                    format!(
                        "{} / {} / {} / {}",
                        f(g.produced),
                        f(g.received),
                        f(g.lost),
                        f(g.filtered)
                    )
                } else if let Some(l) = g.bpftrace_lost {
                    format!("lost {l} (bpftrace)")
                } else {
                    "-".into()
                };
                let bpf = g
                    .bpf_ns_per_event
                    .map(|v| format!("{v:.0} ({})", g.bpf_basis.unwrap_or("?")));
                let _ = writeln!(
                    s,
                    "| {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    g.config,
                    g.ok,
                    g.runs,
                    g.rate_median.map_or("n/a".into(), |r| format!("{r:.0}")),
                    ratio,
                    or_dash(g.cpu_s_per_mevent.map(|v| format!("{v:.3}"))),
                    or_dash(bpf),
                    or_dash(g.missed.map(|v| v.to_string())),
                    or_dash(g.peak_rss_mib.map(|v| format!("{v:.1}"))),
                    or_dash(g.rss_after_mib.map(|v| format!("{v:.1}"))),
                    or_dash(events),
                    counts,
                );
            }
            let _ = writeln!(s);
            for g in self
                .groups
                .iter()
                .filter(|g| g.mode == mode.name() && g.config.is_tcptrace())
            {
                programs_table(
                    &mut s,
                    &format!("{mode} {}: tcptrace's BPF programs", g.config),
                    g.ok,
                    &g.programs,
                );
            }
        }

        if p.scenarios.contains(&Scenario::Bulk) {
            self.bulk_section(&mut s);
        }
        if !self.massclose.is_empty() {
            self.massclose_section(&mut s);
        }
        if !self.syscalls.is_empty() {
            syscalls_section(&mut s, &self.syscalls, &self.params);
        }

        let _ = writeln!(s, "### Targets\n");
        if churn && self.targets.first().is_none_or(|t| t.cells.is_empty()) {
            let _ = writeln!(
                s,
                "No tcptrace configuration was run in the churn, so no churn target was \
                 measured.\n"
            );
        } else if churn {
            let cols: Vec<&str> = self.targets[0]
                .cells
                .iter()
                .map(|c| c.column.as_str())
                .collect();
            let _ = writeln!(s, "| target | goal | {} |", cols.join(" | "));
            let _ = writeln!(s, "|---|---|{}", "---|".repeat(cols.len()));
            for t in &self.targets {
                let cells: Vec<String> = t
                    .cells
                    .iter()
                    .map(|c| match c.status {
                        Status::NotMeasured => "n/a".into(),
                        st => format!("{} {st}", c.text),
                    })
                    .collect();
                let _ = writeln!(s, "| {} | {} | {} |", t.name, t.goal, cells.join(" | "));
            }
            let _ = writeln!(s);
        }

        if !self.scenario_targets.is_empty() {
            let _ = writeln!(s, "| target | goal | value |");
            let _ = writeln!(s, "|---|---|---|");
            for t in &self.scenario_targets {
                for c in &t.cells {
                    let value = match c.status {
                        Status::NotMeasured => "n/a".into(),
                        st => format!("{} {st}", c.text),
                    };
                    let _ = writeln!(s, "| {} | {} | {value} |", t.name, t.goal);
                }
            }
            let _ = writeln!(s);
        }

        if let Some(text) = &self.json_paths {
            let _ = writeln!(
                s,
                "### JSON lines: the direct writer against serde's derives\n\n\
                 The same lives and records written as JSON lines by tcptrace's writer \
                 (`render/json.rs`) and by serde's derives of the same types \
                 (`render/json/reference.rs`, which a test holds byte-identical), timed by \
                 `cargo run --release -p tcptrace --example replay -- --only json-paths`: \
                 reader CPU per million kernel events. serde would be the one path if it \
                 cost at most 0.1 s/M more.\n\n```\n{}```\n",
                text
            );
        }

        if let Some(c) = &self.ceiling {
            let _ = writeln!(
                s,
                "### Drop-free ceiling (tcptrace, default output to a file; workload unpinned)\n"
            );
            let _ = writeln!(s, "| client threads | conn/s | lost |");
            let _ = writeln!(s, "|---|---|---|");
            for st in &c.steps {
                let rate = match (&st.rate, &st.error) {
                    (Some(r), _) => format!("{r:.0}"),
                    (None, Some(e)) => format!("failed: {}", short(e)),
                    (None, None) => "n/a".into(),
                };
                let lost = st.lost.map_or("n/a".into(), |l| l.to_string());
                let _ = writeln!(s, "| {} | {rate} | {lost} |", st.clients);
            }
            let best = match c.best {
                Some((k, r)) => {
                    format!("**{r:.0} conn/s** with zero lost events ({k} client threads)")
                }
                None => "no run with a known zero loss".into(),
            };
            let _ = writeln!(
                s,
                "\nHighest rate: {best}; stopped: {}.\n",
                c.stopped_because
            );
        }

        let failed: Vec<&Group> = self
            .groups
            .iter()
            .chain(&self.bulk)
            .chain(&self.massclose)
            .filter(|g| !g.errors.is_empty())
            .collect();
        if !failed.is_empty() {
            let _ = writeln!(s, "### Failed runs\n");
            for g in failed {
                for e in &g.errors {
                    let _ = writeln!(
                        s,
                        "- {} {} ({} of {} failed): {}",
                        g.mode,
                        g.config,
                        g.runs - g.ok,
                        g.runs,
                        short(e)
                    );
                }
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(
            s,
            "Ratio: a run's conn/s (bulk: bytes/s) over the median of `none` in the same mode \
             or scenario. Tracer CPU: \
             user+system seconds of the tracer process from the moment it reported being attached \
             until it exited (churn plus final drain), per million events; events are tcptrace's \
             `received` count, else the BPF programs' run_cnt. BPF ns / event: for tcptrace, the \
             run_time_ns of all its programs over the churn divided by the events its programs \
             produced (`produced` in its `tcptrace-summary` line), so programs that run without \
             producing an event (on every softirq) count in full; for bpftrace, its program's \
             run_time_ns / run_cnt (each run is an event). Run times come from \
             /proc/<pid>/fdinfo with kernel.bpf_stats_enabled=1. Missed runs: the \
             recursion_misses of the tracer's programs over the churn, summed (runs the kernel \
             skipped because a BPF program was already running on that CPU), less, for \
             tcptrace, the events its second inet_sock_set_state program made for such runs \
             (`recovered` in its summary): events that never existed. Bulk: BPF runs / s and run time ms / s are those of all \
             of tcptrace's programs per second of transfer (medians over the reps). Mass close: \
             runs skipped are the recursion_misses of tcptrace's programs from attach until every \
             socket was gone, less those it recovered; \
             a socket on the scenario's ports counts as gone but reported still open when \
             tcptrace's JSON says `still_open` and /proc/net/tcp no longer listed it (TIME_WAIT \
             aside) when tcptrace was stopped. Program \
             tables: sums over the reps, programs named by the kernel (bpftool). Peak RSS: ru_maxrss from wait4 (bpftrace's includes \
             compiling its program; tcptrace's includes aya parsing the kernel's BTF once at \
             load). RSS after churn: VmRSS just before the tracer is stopped (the ring buffer's \
             pages count twice: the kernel maps its data area twice)."
        );
        s
    }

    fn bulk_section(&self, s: &mut String) {
        let p = &self.params;
        let _ = writeln!(
            s,
            "### bulk: {} loopback stream(s) at full speed, {}\n",
            p.bulk_connections,
            if p.bulk_unpinned {
                "unpinned"
            } else {
                "pinned to CPU 0 (sender, receiver and their softirqs); tracer free"
            }
        );
        let _ = writeln!(
            s,
            "{} reps x {} s, none and tcptrace (default view, to a file) interleaved. Almost no \
             socket changes state, so what tcptrace costs here is its programs that run on \
             every softirq.\n",
            p.reps, p.bulk_seconds
        );
        let _ = writeln!(
            s,
            "| config | runs ok | MB/s median | ratio to none: median [min, max] | \
             BPF runs / s | BPF run time ms / s | missed runs | produced / lost |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
        for g in &self.bulk {
            let tracer = g.config != Config::None;
            let or_dash = |v: Option<String>| match v {
                Some(v) => v,
                None if tracer => "n/a".into(),
                None => "-".into(),
            };
            let ratio = match (g.ratio_median, g.ratio_min, g.ratio_max) {
                (Some(a), Some(b), Some(c)) => format!("{a:.3} [{b:.3}, {c:.3}]"),
                _ => "n/a".into(),
            };
            let counts = if tracer {
                let f = |v: Option<u64>| v.map_or("n/a".into(), |v| v.to_string());
                format!("{} / {}", f(g.produced), f(g.lost))
            } else {
                "-".into()
            };
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {ratio} | {} | {} | {} | {counts} |",
                g.config,
                g.ok,
                g.runs,
                g.rate_median
                    .map_or("n/a".into(), |r| format!("{:.0}", r / 1e6)),
                or_dash(g.bpf_runs_per_s.map(|v| format!("{v:.0}"))),
                or_dash(g.bpf_ms_per_s.map(|v| format!("{v:.2}"))),
                or_dash(g.missed.map(|v| v.to_string())),
            );
        }
        let _ = writeln!(s);
        for g in self.bulk.iter().filter(|g| g.config.is_tcptrace()) {
            programs_table(
                s,
                "bulk: tcptrace's BPF programs during the transfer",
                g.ok,
                &g.programs,
            );
        }
    }

    fn massclose_section(&self, s: &mut String) {
        let p = &self.params;
        let _ = writeln!(
            s,
            "### massclose: a child holding {} loopback connections SIGKILLed under tcptrace \
             --json\n",
            p.massclose_conns
        );
        let _ = writeln!(
            s,
            "The child's sockets close all at once as it dies (FIN, or RST where bytes were left \
             unread), then the listening side closes its own; tcptrace is stopped once no socket \
             on the scenario's ports is left (TIME_WAIT aside). Expected socket reports: both \
             ends of every connection plus one per listener.\n"
        );
        let _ = writeln!(
            s,
            "| run | connections (shards) | unread: killed / listening side | events produced | \
             lost | runs skipped by the kernel | skipped % of produced | sockets reported \
             (expected) | still open at exit | of them gone | incomplete | all gone after |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
        for r in self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::Massclose)
        {
            let (Some(mc), Some(t), true) = (&r.massclose, &r.tracer, r.ok()) else {
                let why = r.error.as_deref().map_or("no result".into(), short);
                let _ = writeln!(s, "| {} | failed: {why} |{}", r.rep + 1, " |".repeat(10));
                continue;
            };
            let o = &mc.out;
            let f = |v: Option<u64>| v.map_or("n/a".into(), |v| v.to_string());
            let sm = t.summary.as_ref();
            let produced = sm.and_then(|x| x.produced);
            let missed = t.skipped_runs();
            let pct = produced.filter(|&n| n > 0).map_or("n/a".into(), |n| {
                format!("{:.3} %", missed as f64 * 100.0 / n as f64)
            });
            let gone = match mc.gone_after_s {
                Some(secs) => format!("{secs:.2} s"),
                None => format!("no: {} left", mc.left),
            };
            let _ = writeln!(
                s,
                "| {} | {} ({}) | {} / {} | {} | {} | {missed} | {pct} | {} ({}) | {} | {} | {} | \
                 {gone} |",
                r.rep + 1,
                o.connections,
                o.shards,
                o.unread_in_killed,
                o.unread_in_listener,
                f(produced),
                f(sm.and_then(|x| x.lost)),
                mc.sockets.reported,
                2 * o.connections + u64::from(o.shards),
                mc.sockets.still_open,
                mc.sockets.still_open_gone,
                mc.sockets.incomplete,
            );
        }
        let _ = writeln!(s);
        for g in &self.massclose {
            programs_table(
                s,
                "massclose: tcptrace's BPF programs, from attach until every socket was gone",
                g.ok,
                &g.programs,
            );
        }
    }

    /// The whole BENCHMARKS.md.
    pub fn benchmarks_md(&self) -> String {
        let m = &self.machine;
        format!(
            "# Benchmarks\n\n\
             What tracing costs, measured by `cargo xtask bench` (a few minutes; root). The \
             churn workload (`xtask/src/bin/churn.rs`) opens, uses and closes loopback \
             connections as fast as it can; each configuration runs it once per repetition, \
             interleaved, while the tracer writes to a file. The bulk workload \
             (`xtask/src/bin/bulk.rs`) streams bytes over loopback as fast as it can, with and \
             without tcptrace, which is what tcptrace's programs that run on every softirq \
             cost traffic it has nothing to report about. The mass close \
             (`xtask/src/bin/massclose.rs`) SIGKILLs a child holding thousands of connections \
             under `tcptrace --json`: the runs the kernel skipped and the sockets tcptrace \
             wrongly thought open say what a burst of closes costs its accuracy. Raw numbers: \
             `target/bench/results.json`; this file is rewritten by every run.\n\n\
             Flags: `--scenarios churn,bulk,massclose,json,syscalls`, `--reps N`, `--seconds S`, \
             `--configs none,tcptrace,tcptrace-json,tcptrace-metrics,bpftrace-print,bpftrace-count`, \
             `--modes pinned,saturated`, `--ceiling-max-clients K`, `--ports N`, `--base-port P`, \
             `--bulk-seconds S`, `--bulk-connections C`, `--bulk-unpinned`, `--bulk-port P`, \
             `--massclose-conns N`, `--massclose-runs R`, `--massclose-port P`, \
             `--massclose-timeout S`, `--syscalls-seconds S`, \
             `--ready-timeout S`, `--stop-timeout S`, `--no-build`, `--no-benchmarks-md` (see \
             `cargo xtask bench --help`). Unpinned runs vary by 10-20% between repetitions on \
             a 2-CPU VM; compare medians, and run on an otherwise idle machine.\n\n\
             ## Machine\n\n\
             - kernel: {}\n- CPUs: {}\n- CPU model: {}\n- date: {}\n\n{}",
            m.kernel,
            m.cpus,
            m.cpu_model,
            m.date,
            self.markdown()
        )
    }
}

/// A tracer's programs, summed over `runs` runs (names via bpftool).
fn programs_table(s: &mut String, title: &str, runs: usize, rows: &[ProgRow]) {
    let _ = writeln!(s, "{title} (sums over {runs} runs)\n");
    if rows.is_empty() {
        let _ = writeln!(s, "No program statistics.\n");
        return;
    }
    let _ = writeln!(
        s,
        "| program | runs | ns / run | run time ms | recursion misses | call sites (verified program) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.1} | {} | {} |",
            r.name,
            r.run_cnt,
            r.ns_per_run().map_or("n/a".into(), |v| format!("{v:.0}")),
            r.run_time_ns as f64 / 1e6,
            r.recursion_misses,
            r.calls
        );
    }
    let _ = writeln!(s);
}

fn short(e: &str) -> String {
    let one_line = e.replace('\n', " ");
    if one_line.chars().count() > 300 {
        let cut: String = one_line.chars().take(300).collect();
        format!("{cut}…")
    } else {
        one_line
    }
}

/// One progress line for a finished run.
pub fn run_line(r: &Run, reps: u32) -> String {
    let rep = if reps > 0 {
        format!("rep {}/{reps}", r.rep + 1)
    } else {
        format!("{} clients", r.clients)
    };
    let mut s = format!("[{}] {:<15} {rep}: ", r.mode, r.config.name());
    if let Some(c) = &r.churn {
        let _ = write!(
            s,
            "{:.0} conn/s ({} conns, {} errors)",
            c.rate, c.connections, c.errors
        );
    }
    if let Some(m) = &r.massclose {
        let _ = write!(
            s,
            "{} conns in {} shard(s), {} socket reports, {} still open ({} gone), {} left",
            m.out.connections,
            m.out.shards,
            m.sockets.reported,
            m.sockets.still_open,
            m.sockets.still_open_gone,
            m.left
        );
    }
    if let Some(b) = &r.bulk {
        let _ = write!(
            s,
            "{:.0} MB/s ({} connection(s), {} errors)",
            b.rate / 1e6,
            b.connections,
            b.errors
        );
    }
    if let Some(c) = &r.syscalls {
        let _ = write!(
            s,
            "{:.1} ns / syscall ({} syscalls)",
            1e9 / c.rate.max(1.0),
            c.syscalls
        );
    }
    if let Some(t) = &r.tracer {
        let _ = write!(
            s,
            ", ready {:.1} s, cpu {:.2} s, rss {:.1} MiB",
            t.ready_s,
            t.cpu_s,
            t.maxrss_kib as f64 / 1024.0
        );
        if let Some(ns) = t.bpf_ns_per_event {
            let _ = write!(
                s,
                ", bpf {ns:.0} ns/ev ({} runs, {} missed)",
                t.bpf.run_cnt, t.bpf.recursion_misses
            );
        }
        match (&t.summary, r.config.is_tcptrace()) {
            (Some(sm), _) => {
                let f = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
                let _ = write!(
                    s,
                    ", produced {} received {} lost {}",
                    f(sm.produced),
                    f(sm.received),
                    f(sm.lost)
                );
            }
            (None, true) => s.push_str(", no tcptrace-summary"),
            (None, false) => {}
        }
    }
    if let Some(e) = &r.error {
        let _ = write!(s, " FAILED: {}", short(e));
    }
    s
}

/// "YYYY-MM-DD HH:MM UTC".
fn utc_now() -> String {
    // RFC 3339 "2026-11-29T08:35:37Z" → "2026-11-29 08:35 UTC".
    let text = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    format!("{} {} UTC", &text[..10], &text[11..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    fn prog(id: u64, name: &str, cnt: u64, ns: u64, miss: u64) -> crate::proc::ProgStats {
        crate::proc::ProgStats {
            id,
            name: name.into(),
            run_cnt: cnt,
            run_time_ns: ns,
            recursion_misses: miss,
            calls: String::new(),
        }
    }

    #[test]
    fn programs_sum_by_name_across_runs() {
        use crate::proc::BpfStats;
        let a = BpfStats {
            progs: vec![
                prog(3, "state", 10, 1000, 0),
                prog(4, "softirq", 100, 2000, 1),
            ],
            ..BpfStats::default()
        };
        // The next run loaded the same programs under new ids, plus one.
        let b = BpfStats {
            progs: vec![
                prog(7, "state", 20, 3000, 0),
                prog(8, "softirq", 300, 4000, 2),
                prog(9, "exit", 0, 0, 0),
            ],
            ..BpfStats::default()
        };
        let rows = programs([&a, &b]);
        let got: Vec<(&str, usize, u64, u64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.reps,
                    r.run_cnt,
                    r.run_time_ns,
                    r.recursion_misses,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("state", 2, 30, 4000, 0),
                ("softirq", 2, 400, 6000, 3),
                ("exit", 1, 0, 0, 0)
            ]
        );
        assert_eq!(rows[1].ns_per_run(), Some(15.0));
        assert_eq!(rows[2].ns_per_run(), None);
    }

    fn args(argv: &[&str]) -> BenchArgs {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            bench: BenchArgs,
        }
        let mut all = vec!["bench"];
        all.extend_from_slice(argv);
        Cli::parse_from(all).bench
    }

    fn tracer(progs: Vec<crate::proc::ProgStats>, produced: u64) -> crate::bench::TracerOut {
        let bpf = crate::proc::BpfStats {
            programs: progs.len() as u64,
            run_cnt: progs.iter().map(|p| p.run_cnt).sum(),
            run_time_ns: progs.iter().map(|p| p.run_time_ns).sum(),
            recursion_misses: progs.iter().map(|p| p.recursion_misses).sum(),
            progs,
        };
        let misses = bpf.recursion_misses;
        crate::bench::TracerOut {
            ready_s: 0.5,
            cpu_s: 0.1,
            cpu_total_s: 0.2,
            maxrss_kib: 10240,
            rss_after_kib: 8192,
            exit: "exit 0".into(),
            killed: false,
            bpf_ns_per_event: Some(bpf.run_time_ns as f64 / produced as f64),
            bpf_basis: crate::bench::BASIS_PRODUCED,
            bpf,
            events: Some(produced),
            events_basis: "received",
            summary: Some(crate::bench::Summary {
                produced: Some(produced),
                received: Some(produced),
                lost: Some(0),
                filtered: Some(0),
                // tcptrace's own count of skipped runs, net of recovered.
                missed: Some(misses),
                recovered: Some(0),
            }),
            bpftrace_lost: None,
            bpftrace_count: None,
            output_bytes: 1000,
        }
    }

    fn churn_run(mode: Mode, config: Config, rate: f64) -> Run {
        let mut r = Run::new(Scenario::Churn, mode.name(), config, 0);
        r.churn = Some(crate::bench::ChurnOut {
            connections: rate as u64 * 2,
            seconds: 2.0,
            rate,
            errors: 0,
            accepted: rate as u64 * 2,
        });
        if config != Config::None {
            r.tracer = Some(tracer(
                vec![
                    prog(1, "inet_sock_set_state", 4000, 800_000, 0),
                    prog(2, "softirq_entry", 100_000, 2_000_000, 2),
                ],
                4000,
            ));
        }
        r
    }

    fn bulk_run(config: Config, rate: f64) -> Run {
        let mut r = Run::new(Scenario::Bulk, "bulk", config, 0);
        r.bulk = Some(crate::bench::BulkOut {
            bytes: rate * 2.0,
            seconds: 2.0,
            rate,
            connections: 1,
            errors: 0,
        });
        if config != Config::None {
            r.tracer = Some(tracer(
                vec![prog(2, "softirq_entry", 50_000, 500_000, 0)],
                0,
            ));
        }
        r
    }

    fn syscalls_run(config: Config, ns: f64) -> Run {
        let mut r = Run::new(Scenario::Syscalls, "syscalls", config, 0);
        r.syscalls = Some(crate::bench::syscalls::SyscallsOut {
            syscalls: (3e9 / ns) as u64,
            seconds: 3.0,
            rate: 1e9 / ns,
        });
        if config != Config::None {
            r.tracer = Some(tracer(vec![], 0));
        }
        r
    }

    #[test]
    fn the_syscall_toll_is_shown_in_ns_added_per_syscall() {
        let a = args(&["--scenarios", "syscalls"]);
        let runs = vec![
            syscalls_run(Config::None, 120.0),
            syscalls_run(Config::Tcptrace, 140.0),
            syscalls_run(Config::TcptraceNoAccept, 121.0),
        ];
        let md = Report::new(&a, runs, None, Duration::ZERO, None).markdown();
        assert!(md.contains("### syscalls: getppid(2)"), "{md}");
        assert!(
            md.contains("| tcptrace | 1/1 | 140.0 | 0.857 [0.857, 0.857] | +20.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| tcptrace-no-accept | 1/1 | 121.0 | 0.992 [0.992, 0.992] | +1.0 |"),
            "{md}"
        );
        assert!(
            md.contains("| none | 1/1 | 120.0 | 1.000 [1.000, 1.000] | - |"),
            "{md}"
        );
    }

    #[test]
    fn report_shows_every_figure_with_its_target() {
        let a = args(&[
            "--modes",
            "pinned",
            "--configs",
            "none,tcptrace",
            "--scenarios",
            "churn,bulk",
        ]);
        let runs = vec![
            churn_run(Mode::Pinned, Config::None, 10_000.0),
            churn_run(Mode::Pinned, Config::Tcptrace, 9_000.0),
            bulk_run(Config::None, 4e9),
            bulk_run(Config::Tcptrace, 3.98e9),
        ];
        let r = Report::new(&a, runs, None, Duration::from_secs(3), None);
        let md = r.markdown();
        // (0.8 + 2.0) ms over 4000 produced events.
        assert!(
            md.contains(&format!("| 700 ({}) | 2 |", crate::bench::BASIS_PRODUCED)),
            "{md}"
        );
        assert!(
            md.contains("| softirq_entry | 100000 | 20 | 2.0 | 2 |"),
            "{md}"
        );
        assert!(
            md.contains("runs skipped by the kernel (recursion_misses), churn | 0 | 2 MISS |"),
            "{md}"
        );
        assert!(
            md.contains("BPF run time, ns per event produced | <= 150 | 700 MISS |"),
            "{md}"
        );
        assert!(md.contains("| bulk throughput ratio, tcptrace writing to a file | >= 0.99 | 0.995 [0.995, 0.995] PASS |"), "{md}");
        assert!(
            md.contains(
                "| tcptrace | 1/1 | 3980 | 0.995 [0.995, 0.995] | 25000 | 0.25 | 0 | 0 / 0 |"
            ),
            "{md}"
        );
        assert!(
            md.contains("bulk: tcptrace's BPF programs during the transfer"),
            "{md}"
        );

        // The mass close: skipped runs against events produced, and sockets
        // reported still open although gone.
        let a = args(&["--scenarios", "massclose", "--massclose-conns", "100"]);
        let mut ok = Run::new(Scenario::Massclose, "massclose", Config::TcptraceJson, 0);
        let mut t = tracer(vec![prog(1, "inet_sock_set_state", 900, 900_000, 1)], 1000);
        t.summary.as_mut().unwrap().lost = Some(5);
        ok.tracer = Some(t);
        ok.massclose = Some(crate::bench::MassClose {
            out: crate::bench::MasscloseOut {
                connections: 100,
                shards: 1,
                ports: vec![23900],
                killed_pids: vec![42],
                unread_in_killed: 25,
                unread_in_listener: 25,
                nofile: 20000,
                connect_s: 0.1,
                kill_s: 0.01,
                close_s: 0.02,
            },
            gone_after_s: Some(0.05),
            left: 0,
            sockets: crate::bench::SocketCounts {
                reported: 201,
                still_open: 3,
                still_open_gone: 3,
                incomplete: 4,
            },
        });
        let mut failed = Run::new(Scenario::Massclose, "massclose", Config::TcptraceJson, 1);
        failed.error = Some("massclose ended with exit 1: boom".into());
        let r = Report::new(&a, vec![ok, failed], None, Duration::ZERO, None);
        let md = r.markdown();
        assert!(
            md.contains(
                "| 1 | 100 (1) | 25 / 25 | 1000 | 5 | 1 | 0.100 % | 201 (201) | 3 | 3 | 4 | 0.05 s |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| 2 | failed: massclose ended with exit 1: boom | | | | | | | | | | |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| mass close: runs skipped by the kernel, % of events produced | <= 0.1 % | \
                 0.100 % (1 of 1000) PASS |"
            ),
            "{md}"
        );
        assert!(
            md.contains(
                "| mass close: sockets gone but reported still open | 0 | 3 (of 201 reported) MISS |"
            ),
            "{md}"
        );
        assert!(
            md.contains("- massclose tcptrace-json (1 of 2 failed)"),
            "{md}"
        );

        // Only the bulk: no churn table, no churn targets.
        let a = args(&["--scenarios", "bulk"]);
        let r = Report::new(
            &a,
            vec![bulk_run(Config::None, 4e9)],
            None,
            Duration::ZERO,
            None,
        );
        let md = r.markdown();
        assert!(!md.contains("### pinned"), "{md}");
        assert!(
            md.contains("bulk throughput ratio, tcptrace writing to a file | >= 0.99 | n/a |"),
            "{md}"
        );
    }

    #[test]
    fn date_format() {
        let d = utc_now();
        assert_eq!(d.len(), "2026-11-24 15:40 UTC".len());
        assert!(d.starts_with("20"));
    }
}
