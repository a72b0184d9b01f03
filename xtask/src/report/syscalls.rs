//! The syscalls scenario's section: what following accept(2) costs every
//! syscall of the host (time the kernel spends on its syscall tracing path,
//! which no BPF statistics show).

use std::fmt::Write as _;

use super::Group;
use crate::bench::{BenchArgs, Config};

pub(super) fn syscalls_section(s: &mut String, groups: &[Group], p: &BenchArgs) {
    let _ = writeln!(
        s,
        "### syscalls: getppid(2) in a loop, pinned to CPU 0\n\n\
         {} reps x {} s, none, tcptrace (default view, to a file) and tcptrace \
         --no-accept interleaved. tcptrace follows accept(2) with a syscall tracepoint; \
         while one is attached the kernel routes every syscall of the host through its \
         tracing path. The cheapest syscall shows that toll at its largest; a syscall \
         that does real work pays the same nanoseconds.\n",
        p.reps, p.syscalls_seconds
    );
    let _ = writeln!(
        s,
        "| config | runs ok | ns / syscall (median) | ratio to none: median [min, max] | \
         ns added per syscall |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|");
    let ns = |g: &Group| g.rate_median.filter(|&r| r > 0.0).map(|r| 1e9 / r);
    let none = groups
        .iter()
        .find(|g| g.config == Config::None)
        .and_then(ns);
    for g in groups {
        let ratio = match (g.ratio_median, g.ratio_min, g.ratio_max) {
            (Some(a), Some(b), Some(c)) => format!("{a:.3} [{b:.3}, {c:.3}]"),
            _ => "n/a".into(),
        };
        let added = match (ns(g), none) {
            _ if g.config == Config::None => "-".into(),
            (Some(n), Some(base)) => format!("{:+.1}", n - base),
            _ => "n/a".into(),
        };
        let _ = writeln!(
            s,
            "| {} | {}/{} | {} | {ratio} | {added} |",
            g.config,
            g.ok,
            g.runs,
            ns(g).map_or("n/a".into(), |v| format!("{v:.1}")),
        );
    }
    let _ = writeln!(s);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::bench::{Config, Run, Scenario};
    use crate::report::Report;
    use crate::report::tests::{args, stats_off, tracer};

    fn syscalls_run(config: Config, ns: f64) -> Run {
        let mut r = Run::new(Scenario::Syscalls, "syscalls", config, 0);
        r.syscalls = Some(crate::bench::syscalls::SyscallsOut {
            syscalls: (3e9 / ns) as u64,
            seconds: 3.0,
            rate: 1e9 / ns,
        });
        if config != Config::None {
            r.tracer = Some(stats_off(tracer(vec![], 0)));
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
}
