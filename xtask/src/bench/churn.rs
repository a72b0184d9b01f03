//! The churn scenario: loopback connections opened and closed as fast as
//! possible under each configuration, and the search for the highest rate
//! tcptrace follows without losing events (the drop-free ceiling).

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::run::{WorkResult, pinned_command, stem, workload};
use super::tracer::{keep_sample, start_tracer, stop_tracer};
use super::{Config, Ctx, Run, Scenario};
use crate::{proc, report};

/// churn's JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChurnOut {
    pub connections: u64,
    pub seconds: f64,
    pub rate: f64,
    pub errors: u64,
    pub accepted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CeilingStep {
    pub clients: u32,
    pub rate: Option<f64>,
    pub lost: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    pub steps: Vec<CeilingStep>,
    /// Highest rate with zero lost events, and the clients that reached it.
    pub best: Option<(u32, f64)>,
    pub stopped_because: String,
}

pub(super) fn ceiling(ctx: &Ctx) -> Result<Ceiling> {
    println!("bench: drop-free ceiling of tcptrace (workload unpinned, more clients each step)");
    let mut steps = Vec::new();
    let mut best: Option<(u32, f64)> = None;
    let mut prev = 0.0f64;
    let mut clients = 1u32;
    let stopped_because = loop {
        if clients > ctx.args.ceiling_max_clients {
            break format!(
                "reached --ceiling-max-clients {}",
                ctx.args.ceiling_max_clients
            );
        }
        proc::check_interrupted()?;
        let r = run_churn(ctx, "ceiling", false, clients, Config::Tcptrace, 0);
        proc::check_interrupted()?;
        println!("  {}", report::run_line(&r, 0));
        let step = CeilingStep {
            clients,
            rate: r.rate(),
            lost: r.lost(),
            error: r.error.clone(),
        };
        steps.push(step.clone());
        let Some(rate) = step.rate else {
            break format!("the run with {clients} clients failed");
        };
        match step.lost {
            None => break "tcptrace printed no `tcptrace-summary` line, so loss is unknown".into(),
            Some(lost) if lost > 0 => break format!("{lost} events lost with {clients} clients"),
            Some(_) => {
                if best.is_none_or(|(_, b)| rate > b) {
                    best = Some((clients, rate));
                }
            }
        }
        if rate < prev * 1.02 {
            break format!("the rate stopped rising at {clients} clients");
        }
        prev = rate;
        clients *= 2;
    };
    Ok(Ceiling {
        steps,
        best,
        stopped_because,
    })
}

pub(super) fn run_churn(
    ctx: &Ctx,
    mode: &str,
    pinned: bool,
    clients: u32,
    config: Config,
    rep: u32,
) -> Run {
    let mut run = Run::new(Scenario::Churn, mode, config, rep);
    run.clients = clients;
    run.pinned = pinned;
    if let Err(e) = try_churn(ctx, &mut run) {
        run.error = Some(format!("{e:#}"));
    }
    run
}

fn try_churn(ctx: &Ctx, run: &mut Run) -> Result<()> {
    let stem = stem(ctx, run);
    let tracer = start_tracer(ctx, run.config, &stem)?;
    let workload = churn(ctx, run, &stem.with_extension("churn"))?;
    if let Some(t) = tracer {
        let out = t.out_path.clone();
        let stopped = stop_tracer(ctx, t, run, "the churn");
        keep_sample(&out, run.rep);
        stopped?;
    }
    match workload {
        Ok(c) => {
            run.churn = Some(c);
            Ok(())
        }
        Err((c, e)) => {
            run.churn = c;
            Err(e)
        }
    }
}

/// Runs the churn workload for `run`.
fn churn(ctx: &Ctx, run: &Run, json_path: &Path) -> Result<WorkResult<ChurnOut>> {
    let a = &ctx.args;
    let mut cmd = pinned_command(&ctx.churn, run.pinned)?;
    cmd.args(["--seconds", &a.seconds.to_string()])
        .args(["--ports", &a.ports.to_string()])
        .args(["--base-port", &a.base_port.to_string()])
        .args(["--clients", &run.clients.to_string()]);
    let limit = Duration::from_secs_f64(a.seconds + 30.0);
    workload(cmd, "churn", json_path, limit)
}
