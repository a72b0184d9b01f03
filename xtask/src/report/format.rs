//! Formatting shared by the sections and the bench's progress output: the
//! table of a tracer's programs, errors cut to one line, one line per run.

use std::fmt::Write as _;

use super::stats::{MachineFloor, ProgRow, runs_per_event};
use crate::bench::Run;

/// A tracer's programs, summed over `runs` runs (names via bpftool).
pub(super) fn programs_table(s: &mut String, title: &str, runs: usize, rows: &[ProgRow]) {
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

/// tcptrace's program that does almost nothing (reads one per-CPU slot and
/// returns, unless a nested run needs it): what any run costs here, when
/// the bench did not run `bpftrace-empty`.
const FLOOR_PROGRAM: &str = "inet_sock_set_state_nested";

/// How much of the BPF time per event is the machine's price of running a
/// program at all (and of reading the clock), and what is left for the
/// programs' own work. The floor is `bpftrace-empty`'s run when the bench
/// ran it, else tcptrace's near-empty program's. Nothing without a floor.
pub(super) fn floor_line(
    s: &mut String,
    rows: &[ProgRow],
    bpf_ns_per_event: Option<f64>,
    machine: Option<MachineFloor>,
) {
    let (Some(runs_per_event), Some(per_event)) =
        (runs_per_event(rows, bpf_ns_per_event), bpf_ns_per_event)
    else {
        return;
    };
    if let Some(m) = machine {
        let floor = runs_per_event * m.empty_ns;
        let _ = write!(
            s,
            "Per-run floor: a program of no instructions on the same tracepoint \
             (`bpftrace-empty`) took {:.0} ns a run; tcptrace's programs ran {runs_per_event:.1} \
             times per event produced, so about {floor:.0} of the {per_event:.0} ns per event is \
             what this machine charges for running a program at all",
            m.empty_ns
        );
        match (m.clock_read_ns(), m.least_per_event(runs_per_event)) {
            (Some(clock), Some(least)) => {
                let _ = writeln!(
                    s,
                    ". One clock read (`bpftrace-clock` less `bpftrace-empty`) took {clock:.0} \
                     ns; with one per event, {least:.0} ns per event is the least this machine \
                     allows at these runs per event, before a byte of the socket is read; \
                     {:.0} is the programs' other work.\n",
                    per_event - least
                );
            }
            _ => {
                let _ = writeln!(s, ", and {:.0} the programs' work.\n", per_event - floor);
            }
        }
        return;
    }
    let Some(floor) = rows
        .iter()
        .find(|r| r.name == FLOOR_PROGRAM)
        .and_then(ProgRow::ns_per_run)
    else {
        return;
    };
    let floor_per_event = runs_per_event * floor;
    let _ = writeln!(
        s,
        "Per-run floor: `{FLOOR_PROGRAM}`, which only reads one per-CPU slot and returns, \
         took {floor:.0} ns a run; the programs ran {runs_per_event:.1} times per event \
         produced, so about {floor_per_event:.0} of the {per_event:.0} ns per event is what \
         this machine charges for running a program at all, and {:.0} the programs' work.\n",
        per_event - floor_per_event
    );
}

pub(super) fn short(e: &str) -> String {
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
    // The churn's and bulk's runs past --reps are for the BPF run times.
    let stats = r.tracer.as_ref().is_some_and(|t| t.bpf_stats);
    let rep = if stats && reps > 0 && r.rep >= reps {
        format!("BPF stats rep {}", r.rep - reps + 1)
    } else if reps > 0 {
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
