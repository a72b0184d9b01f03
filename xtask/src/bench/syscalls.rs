//! The syscalls scenario: getppid(2) in a loop, pinned, without a tracer,
//! under tcptrace, and under `tcptrace --no-accept`. Following accept(2)
//! attaches a syscall tracepoint, and while one is attached the kernel sends
//! every syscall of the host through its tracing path: this measures that
//! toll, which no BPF run time shows.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::run::{WorkResult, pinned_command, stem, workload};
use super::tracer::{keep_sample, start_tracer, stop_tracer};
use super::{Config, Ctx, Run, Scenario};
use crate::{proc, report};

/// The scenario's configurations, in their interleaved order.
pub const SYSCALL_CONFIGS: [Config; 3] = [Config::None, Config::Tcptrace, Config::TcptraceNoAccept];

/// The syscalls workload's JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyscallsOut {
    pub syscalls: u64,
    pub seconds: f64,
    /// Syscalls per second.
    pub rate: f64,
}

/// Every run of the scenario, interleaved rep by rep.
pub(super) fn run_all(ctx: &Ctx) -> Result<Vec<Run>> {
    let a = &ctx.args;
    println!(
        "bench: syscalls: {} runs (none, tcptrace, tcptrace --no-accept x {} reps, {} s each, \
         pinned to CPU 0), interleaved",
        SYSCALL_CONFIGS.len() as u32 * a.reps,
        a.reps,
        a.syscalls_seconds
    );
    let mut runs = Vec::new();
    for rep in 0..a.reps {
        for config in SYSCALL_CONFIGS {
            proc::check_interrupted()?;
            let mut run = Run::new(Scenario::Syscalls, "syscalls", config, rep);
            run.pinned = true;
            if let Err(e) = try_run(ctx, &mut run) {
                run.error = Some(format!("{e:#}"));
            }
            proc::check_interrupted()?;
            println!("  {}", report::run_line(&run, a.reps));
            runs.push(run);
        }
    }
    Ok(runs)
}

fn try_run(ctx: &Ctx, run: &mut Run) -> Result<()> {
    let seconds = ctx.args.syscalls_seconds;
    let stem = stem(ctx, run);
    let tracer = start_tracer(ctx, run.config, &stem)?;
    let mut cmd = pinned_command(&ctx.syscalls, true)?;
    cmd.args(["--seconds", &seconds.to_string()]);
    let limit = Duration::from_secs_f64(seconds + 30.0);
    let out: WorkResult<SyscallsOut> =
        workload(cmd, "syscalls", &stem.with_extension("syscalls"), limit)?;
    if let Some(t) = tracer {
        let path = t.out_path.clone();
        let stopped = stop_tracer(ctx, t, run, "the syscall loop");
        keep_sample(&path, run.rep);
        stopped?;
    }
    match out {
        Ok(s) => {
            run.syscalls = Some(s);
            Ok(())
        }
        Err((s, e)) => {
            run.syscalls = s;
            Err(e)
        }
    }
}
