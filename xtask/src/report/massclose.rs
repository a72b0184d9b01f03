//! The mass close's section: run by run, the runs the kernel skipped and
//! the sockets tcptrace wrongly thought open, then tcptrace's programs.

use std::fmt::Write as _;

use super::Report;
use super::format::{programs_table, short};
use crate::bench::Scenario;

impl Report {
    pub(super) fn massclose_section(&self, s: &mut String) {
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
             ends of every connection plus one per listener; more when the kernel's TIME_WAIT \
             table was full (TIME_WAIT overflows: sockets closed without it, whose peers' late \
             FINs then draw resets from no socket, each reported), fewer when tcptrace's output \
             dropped lines (output lines dropped: the file took nothing for 0.3 s while the \
             burst waited; output never holds up tracing, and says what it dropped). A run \
             whose count differs keeps tcptrace's whole output in target/bench/runs, and the \
             expected count says how many reports had the addresses of an earlier one.\n"
        );
        let _ = writeln!(
            s,
            "| run | connections (shards) | unread: killed / listening side | events produced | \
             lost | runs skipped by the kernel | skipped % of produced | sockets reported \
             (expected) | output lines dropped | still open at exit | of them gone | incomplete | \
             all gone after | TIME_WAIT overflows |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in self
            .runs
            .iter()
            .filter(|r| r.scenario == Scenario::Massclose)
        {
            let (Some(mc), Some(t), true) = (&r.massclose, &r.tracer, r.ok()) else {
                let why = r.error.as_deref().map_or("no result".into(), short);
                let _ = writeln!(s, "| {} | failed: {why} |{}", r.rep + 1, " |".repeat(12));
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
                 {} | {gone} | {} |",
                r.rep + 1,
                o.connections,
                o.shards,
                o.unread_in_killed,
                o.unread_in_listener,
                f(produced),
                f(sm.and_then(|x| x.lost)),
                mc.sockets.reported,
                expected_cell(o.expected_sockets(), mc.sockets.repeated),
                f(sm.and_then(|x| x.output.as_ref()?.dropped_lines)),
                mc.sockets.still_open,
                mc.sockets.still_open_gone,
                mc.sockets.incomplete,
                f(mc.time_wait_overflows),
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
}

/// The expected socket reports, and how many reports repeated an earlier
/// one's addresses when any did.
fn expected_cell(expected: u64, repeated: u64) -> String {
    if repeated == 0 {
        expected.to_string()
    } else {
        format!("{expected}; {repeated} repeated addresses")
    }
}
