//! The report's fixtures (runs as the bench records them), and a report of
//! several scenarios checked figure by figure.

use std::time::Duration;

use super::Report;
use crate::bench::{BenchArgs, Config, Mode, Run, Scenario};

pub(super) use crate::proc::tests::prog;

pub(super) fn args(argv: &[&str]) -> BenchArgs {
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

pub(super) fn tracer(progs: Vec<crate::proc::ProgStats>, produced: u64) -> crate::bench::TracerOut {
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
        bpf_stats: true,
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
            output: None,
        }),
        bpftrace_lost: None,
        bpftrace_count: None,
        output_bytes: 1000,
    }
}

/// `t` as a run with the kernel's BPF statistics off records it: no run
/// times or counts, skipped runs still counted.
pub(super) fn stats_off(mut t: crate::bench::TracerOut) -> crate::bench::TracerOut {
    t.bpf_stats = false;
    t.bpf_ns_per_event = None;
    t.bpf_basis = "statistics off";
    t.bpf.run_cnt = 0;
    t.bpf.run_time_ns = 0;
    for p in &mut t.bpf.progs {
        p.run_cnt = 0;
        p.run_time_ns = 0;
    }
    t
}

/// A throughput run (statistics off) and, for a tracer, the run with
/// statistics on that gives its run times, at a rate that must not count.
fn churn_runs(mode: Mode, config: Config, rate: f64) -> Vec<Run> {
    let mut off = churn_run(mode, config, rate);
    if config == Config::None {
        return vec![off];
    }
    off.tracer = off.tracer.map(stats_off);
    let mut on = churn_run(mode, config, 1.0);
    on.rep = 1;
    vec![off, on]
}

fn bulk_runs(config: Config, rate: f64) -> Vec<Run> {
    let mut off = bulk_run(config, rate);
    if config == Config::None {
        return vec![off];
    }
    off.tracer = off.tracer.map(stats_off);
    let mut on = bulk_run(config, 1.0);
    on.rep = 1;
    vec![off, on]
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
    let runs = [
        churn_runs(Mode::Pinned, Config::None, 10_000.0),
        churn_runs(Mode::Pinned, Config::Tcptrace, 9_000.0),
        bulk_runs(Config::None, 4e9),
        bulk_runs(Config::Tcptrace, 3.98e9),
    ]
    .concat();
    let r = Report::new(&a, runs, None, Duration::from_secs(3), None);
    let md = r.markdown();
    // The ratio from the run without BPF statistics (the one with them ran
    // at 1 conn/s); (0.8 + 2.0) ms over 4000 produced events from the run
    // with them; skipped runs from both (the kernel counts them either way).
    assert!(
        md.contains(&format!(
            "| 9000 | 0.900 [0.900, 0.900] | 25.000 | 700 ({}) | 4 |",
            crate::bench::BASIS_PRODUCED
        )),
        "{md}"
    );
    assert!(
        md.contains("| softirq_entry | 100000 | 20 | 2.0 | 2 |"),
        "{md}"
    );
    assert!(
        md.contains("runs skipped by the kernel (recursion_misses), churn | 0 | 4 MISS |"),
        "{md}"
    );
    assert!(
        md.contains("BPF run time, ns per event produced | <= 150 | 700 MISS |"),
        "{md}"
    );
    assert!(md.contains("| bulk throughput ratio, tcptrace writing to a file | >= 0.99 | 0.995 [0.995, 0.995] PASS |"), "{md}");
    assert!(
        md.contains("| tcptrace | 2/2 | 3980 | 0.995 [0.995, 0.995] | 25000 | 0.25 | 0 | 0 / 0 |"),
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
            repeated: 2,
        },
        time_wait_overflows: Some(1234),
    });
    let mut failed = Run::new(Scenario::Massclose, "massclose", Config::TcptraceJson, 1);
    failed.error = Some("massclose ended with exit 1: boom".into());
    let r = Report::new(&a, vec![ok, failed], None, Duration::ZERO, None);
    let md = r.markdown();
    assert!(
        md.contains(
            "| 1 | 100 (1) | 25 / 25 | 1000 | 5 | 1 | 0.100 % | 201 (201; 2 repeated addresses) | n/a | 3 | 3 | 4 | \
             0.05 s | 1234 |"
        ),
        "{md}"
    );
    assert!(
        md.contains("| 2 | failed: massclose ended with exit 1: boom | | | | | | | | | | | |"),
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

/// One program's sums, as the program tables hold them.
fn row(name: &str, run_cnt: u64, run_time_ns: u64) -> super::stats::ProgRow {
    super::stats::ProgRow {
        name: name.into(),
        reps: 1,
        run_cnt,
        run_time_ns,
        recursion_misses: 0,
        calls: String::new(),
    }
}

#[test]
fn the_per_run_floor_is_the_near_empty_programs_cost_times_the_runs_per_event() {
    // 3000 runs in 300 µs over 1000 events (300 ns per event): 3 runs per
    // event at 40 ns each is 120 ns of floor.
    let rows = [
        row("inet_sock_set_state", 1000, 240_000),
        row("inet_sock_set_state_nested", 1000, 40_000),
        row("softirq_entry", 1000, 20_000),
    ];
    let mut s = String::new();
    super::format::floor_line(&mut s, &rows, Some(300.0), None);
    assert!(s.contains("took 40 ns a run"), "{s}");
    assert!(s.contains("ran 3.0 times per event"), "{s}");
    assert!(s.contains("about 120 of the 300 ns per event"), "{s}");
    assert!(s.contains("and 180 the programs' work"), "{s}");
    // Without the near-empty program there is no floor to state.
    let mut s = String::new();
    super::format::floor_line(&mut s, &rows[..1], Some(300.0), None);
    assert!(s.is_empty(), "{s}");
}

#[test]
fn the_machine_floor_is_the_empty_program_per_run_and_one_clock_read_per_event() {
    use super::stats::MachineFloor;
    // 2000 runs over 1000 events (300 ns per event); an empty program costs
    // 50 ns a run and one clock read 40 more: 2 x 50 + 40 = 140 at least.
    let rows = [
        row("inet_sock_set_state", 1000, 250_000),
        row("inet_sock_set_state_nested", 1000, 50_000),
    ];
    let machine = MachineFloor {
        empty_ns: 50.0,
        clock_ns: Some(90.0),
    };
    assert_eq!(machine.clock_read_ns(), Some(40.0));
    assert_eq!(machine.least_per_event(2.0), Some(140.0));
    let mut s = String::new();
    super::format::floor_line(&mut s, &rows, Some(300.0), Some(machine));
    assert!(s.contains("(`bpftrace-empty`) took 50 ns a run"), "{s}");
    assert!(s.contains("ran 2.0 times per event"), "{s}");
    assert!(s.contains("about 100 of the 300 ns per event"), "{s}");
    assert!(s.contains("One clock read"), "{s}");
    assert!(
        s.contains("took 40 ns; with one per event, 140 ns per event"),
        "{s}"
    );
    assert!(s.contains("160 is the programs' other work"), "{s}");
    // Without the clock program: the floor alone.
    let mut s = String::new();
    let empty_only = MachineFloor {
        clock_ns: None,
        ..machine
    };
    super::format::floor_line(&mut s, &rows, Some(300.0), Some(empty_only));
    assert!(s.contains("and 200 the programs' work"), "{s}");
}
