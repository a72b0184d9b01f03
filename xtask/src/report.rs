//! Statistics, targets and the Markdown/JSON output of `cargo xtask bench`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::bench::{BULK_CONFIGS, BenchArgs, Ceiling, Config, Run, SYSCALL_CONFIGS, Scenario};

// The statistics, the targets, the scenarios' sections and the formatting
// helpers each in a file of their own: in one file the report was too long
// to read in one sitting.
mod bulk;
mod format;
mod massclose;
mod stats;
mod syscalls;
mod targets;
#[cfg(test)]
mod tests;

pub use self::format::run_line;
use self::format::{floor_line, programs_table, short};
pub use self::stats::load_average;
use self::stats::{Group, Machine, groups_of, machine_floor};
use self::syscalls::syscalls_section;
use self::targets::{Status, Target, massclose_targets, scenario_targets, targets};

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
                "Churn: {} reps x {} s per configuration and mode, interleaved, with the \
                 kernel's BPF statistics off; then {} rep(s) of each tracer configuration with \
                 them on, for the run times; {} listening ports.\n",
                p.reps, p.seconds, p.stats_reps, p.ports
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
                floor_line(
                    &mut s,
                    &g.programs,
                    g.bpf_ns_per_event,
                    machine_floor(&self.groups, mode.name()),
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
            .chain(&self.syscalls)
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
             or scenario. The configurations run one after the other in each repetition, their \
             order rotated by one each repetition, the page cache written out before each run. \
             Tracer CPU: \
             user+system seconds of the tracer process from the moment it reported being attached \
             until it exited (churn plus final drain), per million events; events are tcptrace's \
             `received` count, bpftrace-count's `@c`, or the lines bpftrace-print printed. \
             BPF ns / event: for tcptrace, the \
             run_time_ns of all its programs over the churn divided by the events its programs \
             produced (`produced` in its `tcptrace-summary` line), so programs that run without \
             producing an event (on every softirq) count in full; for bpftrace, its program's \
             run_time_ns / run_cnt (each run is an event). `bpftrace-empty` (a program of no \
             instructions) and `bpftrace-clock` (one that only reads the clock) on the same \
             tracepoint are not tracers but the machine's floor: what running any program, and \
             one timestamp, cost here; the per-run floor line under each tcptrace table and the \
             BPF target's \"least here\" come from them. Two kinds of runs: the `--reps` \
             give conn/s, ratios, tracer CPU and memory with kernel.bpf_stats_enabled=0, as \
             on a production host (the statistics add two clock reads to every BPF program \
             run, which slows the traced workload by itself); the `--stats-reps` of each \
             tracer configuration run with it at 1 and give BPF ns / event, BPF runs and run \
             time per second and the program tables, read from /proc/<pid>/fdinfo. Missed \
             runs: the recursion_misses of the tracer's programs over the churn, summed over \
             both kinds of run (the kernel counts them either way; they are runs the kernel \
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
             load). RSS after churn: VmRSS just before the tracer is stopped (tcptrace's \
             event rings, which it maps, included)."
        );
        s
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
             Flags: `--scenarios churn,bulk,massclose,json,syscalls`, `--reps N`, `--stats-reps N`, \
             `--seconds S`, \
             `--configs none,tcptrace,tcptrace-json,tcptrace-metrics,bpftrace-print,bpftrace-count,\
             bpftrace-empty,bpftrace-clock`, \
             `--modes pinned,saturated`, `--ceiling-max-clients K`, `--ports N`, `--base-port P`, \
             `--bulk-seconds S`, `--bulk-connections C`, `--bulk-unpinned`, `--bulk-port P`, \
             `--massclose-conns N`, `--massclose-runs R`, `--massclose-port P`, \
             `--massclose-timeout S`, `--syscalls-seconds S`, \
             `--ready-timeout S`, `--stop-timeout S`, `--no-build`, `--no-benchmarks-md`, \
             `--baseline PATH` with `baseline` in `--configs` (another tcptrace build run \
             interleaved with this one: a before/after inside one run) (see \
             `cargo xtask bench --help`). Unpinned runs vary by 10-20% between repetitions on \
             a 2-CPU VM; compare medians (a change across two runs: use `--baseline`), and run \
             on an otherwise idle machine.\n\n\
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
