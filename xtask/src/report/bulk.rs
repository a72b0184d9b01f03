//! The bulk scenario's section: throughput with and without tcptrace, and
//! tcptrace's programs during the transfer.

use std::fmt::Write as _;

use super::Report;
use super::format::programs_table;
use crate::bench::Config;

impl Report {
    pub(super) fn bulk_section(&self, s: &mut String) {
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
            "{} reps x {} s, none and tcptrace (default view, to a file) interleaved, BPF \
             statistics off; then {} rep(s) of tcptrace with them on, for the run times. Almost \
             no socket changes state, so what tcptrace costs here is its programs that run on \
             every softirq.\n",
            p.reps, p.bulk_seconds, p.stats_reps
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
}
