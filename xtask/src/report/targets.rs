//! The targets: what each figure should reach, and whether it did (PASS,
//! MISS, or n/a when it was not measured).

use std::fmt;

use serde::Serialize;

use super::stats::{Group, find, machine_floor, runs_per_event};
use crate::bench::{BenchArgs, Config, Mode, Run, Scenario};

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

pub(super) fn targets(groups: &[Group], args: &BenchArgs) -> Vec<Target> {
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
                let group = g(m, c);
                let v = group.and_then(|g| g.bpf_ns_per_event);
                // What the machine alone charges at tcptrace's runs per
                // event: beside the figure, so a miss can be read.
                let least = group.and_then(|g| {
                    let runs = runs_per_event(&g.programs, g.bpf_ns_per_event)?;
                    machine_floor(groups, m.name())?.least_per_event(runs)
                });
                let text = |v: f64| match least {
                    Some(l) => format!("{v:.0} (least here: {l:.0})"),
                    None => format!("{v:.0}"),
                };
                cell(col, v, text, |v| v <= 150.0)
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
pub(super) fn scenario_targets(bulk: &[Group], args: &BenchArgs) -> Vec<Target> {
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

pub(super) fn massclose_targets(runs: &[Run]) -> Vec<Target> {
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
