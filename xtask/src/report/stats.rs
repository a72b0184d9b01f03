//! The runs summed up: the machine they ran on, and each configuration's
//! runs in a mode or scenario as a [`Group`] (medians, ratios to `none`,
//! the tracer's programs by name).

use std::fs;
use std::time::SystemTime;

use serde::Serialize;

use crate::bench::{Config, Run};

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
    pub(super) fn read(load_before: Option<f64>) -> Self {
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

pub(super) fn median(mut v: Vec<f64>) -> Option<f64> {
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
    // Throughput, CPU and memory from the runs without the kernel's BPF
    // statistics (they slow every program run); run times from those with.
    let with_stats = |r: &&Run| r.tracer.as_ref().is_some_and(|t| t.bpf_stats);
    let (timed, measured): (Vec<&Run>, Vec<&Run>) = ok.iter().copied().partition(with_stats);
    let rates: Vec<f64> = measured.iter().filter_map(|r| r.rate()).collect();
    let ratios: Vec<f64> = match none_median {
        Some(base) if base > 0.0 => rates.iter().map(|r| r / base).collect(),
        _ => Vec::new(),
    };
    let tracers: Vec<_> = measured.iter().filter_map(|r| r.tracer.as_ref()).collect();
    let timed_tracers: Vec<_> = timed.iter().filter_map(|r| r.tracer.as_ref()).collect();
    let all_tracers = ok.iter().filter_map(|r| r.tracer.as_ref());
    let cpu: Vec<f64> = tracers
        .iter()
        .filter_map(|t| {
            t.events
                .filter(|&e| e > 0)
                .map(|e| t.cpu_s / e as f64 * 1e6)
        })
        .collect();
    let bpf: Vec<f64> = timed_tracers
        .iter()
        .filter_map(|t| t.bpf_ns_per_event)
        .collect();
    // Per second of workload: the window the BPF statistics cover.
    let per_s = |f: fn(&crate::bench::TracerOut) -> f64| -> Option<f64> {
        median(
            timed
                .iter()
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
        bpf_basis: timed_tracers.first().map(|t| t.bpf_basis),
        // The kernel counts skipped runs with statistics on or off.
        missed: (!ok.is_empty() && config != Config::None)
            .then(|| all_tracers.map(|t| t.skipped_runs()).sum()),
        programs: programs(timed_tracers.iter().map(|t| &t.bpf)),
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

pub(super) fn find<'a>(groups: &'a [Group], mode: &str, config: Config) -> Option<&'a Group> {
    groups.iter().find(|g| g.mode == mode && g.config == config)
}

/// What this machine charges before a program does any work, measured on
/// the same tracepoint in the same mode: `bpftrace-empty`'s ns per run (a
/// program of no instructions) and `bpftrace-clock`'s (one clock read).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineFloor {
    pub empty_ns: f64,
    pub clock_ns: Option<f64>,
}

impl MachineFloor {
    /// One `bpf_ktime_get_ns` call: the clock program less the empty one.
    pub fn clock_read_ns(&self) -> Option<f64> {
        self.clock_ns.map(|c| (c - self.empty_ns).max(0.0))
    }

    /// The least BPF time per event of any tracer that runs `runs_per_event`
    /// programs per event and timestamps each event once: before it reads
    /// a byte of the socket.
    pub fn least_per_event(&self, runs_per_event: f64) -> Option<f64> {
        Some(runs_per_event * self.empty_ns + self.clock_read_ns()?)
    }
}

/// Runs of all the programs per event produced, from the programs' sums
/// and the group's ns per event (None without run time).
pub fn runs_per_event(rows: &[ProgRow], bpf_ns_per_event: Option<f64>) -> Option<f64> {
    let runs: u64 = rows.iter().map(|r| r.run_cnt).sum();
    let time: u64 = rows.iter().map(|r| r.run_time_ns).sum();
    bpf_ns_per_event
        .filter(|_| time > 0)
        .map(|per_event| per_event * runs as f64 / time as f64)
}

/// This machine's floor in `mode`, when the bench ran `bpftrace-empty`
/// there with the BPF statistics on.
pub(super) fn machine_floor(groups: &[Group], mode: &str) -> Option<MachineFloor> {
    let ns_per_run = |c| find(groups, mode, c).and_then(|g| g.bpf_ns_per_event);
    Some(MachineFloor {
        empty_ns: ns_per_run(Config::BpftraceEmpty)?,
        clock_ns: ns_per_run(Config::BpftraceClock),
    })
}

/// The groups of `mode` (a churn mode or a scenario), each compared with
/// the median rate of `none` in it.
pub(super) fn groups_of(mode: &str, configs: &[Config], runs: &[Run]) -> Vec<Group> {
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

/// "YYYY-MM-DD HH:MM UTC".
fn utc_now() -> String {
    // RFC 3339 "2026-11-29T08:35:37Z" → "2026-11-29 08:35 UTC".
    let text = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    format!("{} {} UTC", &text[..10], &text[11..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::prog;

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
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

    #[test]
    fn date_format() {
        let d = utc_now();
        assert_eq!(d.len(), "2026-11-24 15:40 UTC".len());
        assert!(d.starts_with("20"));
    }
}
