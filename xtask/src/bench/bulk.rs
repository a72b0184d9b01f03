//! The bulk scenario: long-lived loopback streams at full speed with and
//! without tcptrace, interleaved: what its programs that run on every
//! softirq cost traffic it has nothing to report about.

use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::run::{WorkResult, pinned_command, stem, workload};
use super::tracer::{keep_sample, start_tracer, stop_tracer};
use super::{Config, Ctx, Run, Scenario};

/// bulk's JSON line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BulkOut {
    /// Bytes received between the common start and the deadline.
    pub bytes: f64,
    pub seconds: f64,
    /// Bytes per second.
    pub rate: f64,
    pub connections: u32,
    pub errors: u64,
}

/// The bulk scenario's configurations, in their interleaved order.
pub const BULK_CONFIGS: [Config; 2] = [Config::None, Config::Tcptrace];

pub(super) fn run_bulk(ctx: &Ctx, config: Config, rep: u32) -> Run {
    let mut run = Run::new(Scenario::Bulk, "bulk", config, rep);
    run.clients = ctx.args.bulk_connections;
    run.pinned = !ctx.args.bulk_unpinned;
    if let Err(e) = try_bulk(ctx, &mut run) {
        run.error = Some(format!("{e:#}"));
    }
    run
}

fn try_bulk(ctx: &Ctx, run: &mut Run) -> Result<()> {
    let a = &ctx.args;
    let stem = stem(ctx, run);
    let tracer = start_tracer(ctx, run.config, &stem)?;
    let mut cmd = pinned_command(&ctx.bulk, run.pinned)?;
    cmd.args(["--seconds", &a.bulk_seconds.to_string()])
        .args(["--connections", &a.bulk_connections.to_string()])
        .args(["--port", &a.bulk_port.to_string()]);
    let limit = Duration::from_secs_f64(a.bulk_seconds + 30.0);
    let workload: WorkResult<BulkOut> = workload(cmd, "bulk", &stem.with_extension("bulk"), limit)?;
    if let Some(t) = tracer {
        let out = t.out_path.clone();
        let stopped = stop_tracer(ctx, t, run, "the bulk transfer");
        keep_sample(&out, run.rep);
        stopped?;
    }
    match workload {
        Ok(b) => {
            run.bulk = Some(b);
            Ok(())
        }
        Err((b, e)) => {
            run.bulk = b;
            Err(e)
        }
    }
}
