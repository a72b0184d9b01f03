//! One run of a scenario: what it recorded ([`Run`]), where its files go,
//! and the workload it runs, bounded in time.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use super::{BulkOut, ChurnOut, Config, Ctx, MassClose, Scenario, TracerOut, syscalls};
use crate::proc::{self, Proc};
use crate::util::command;

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub scenario: Scenario,
    /// The churn's mode, "ceiling", or the scenario's name.
    pub mode: String,
    pub config: Config,
    pub rep: u32,
    pub clients: u32,
    pub pinned: bool,
    pub error: Option<String>,
    pub churn: Option<ChurnOut>,
    pub bulk: Option<BulkOut>,
    pub massclose: Option<MassClose>,
    pub syscalls: Option<syscalls::SyscallsOut>,
    pub tracer: Option<TracerOut>,
}

impl Run {
    pub(crate) fn new(scenario: Scenario, mode: &str, config: Config, rep: u32) -> Self {
        Self {
            scenario,
            mode: mode.to_owned(),
            config,
            rep,
            clients: 0,
            pinned: false,
            error: None,
            churn: None,
            bulk: None,
            massclose: None,
            syscalls: None,
            tracer: None,
        }
    }

    pub fn ok(&self) -> bool {
        self.error.is_none()
            && match self.scenario {
                Scenario::Churn => self.churn.is_some(),
                Scenario::Bulk => self.bulk.is_some(),
                Scenario::Massclose => self.massclose.is_some(),
                Scenario::Syscalls => self.syscalls.is_some(),
                // Not a run: the example prints its own figures.
                Scenario::Json => false,
            }
    }

    /// Connections/s of a churn, bytes/s of a bulk run.
    pub fn rate(&self) -> Option<f64> {
        if !self.ok() {
            return None;
        }
        match self.scenario {
            Scenario::Churn => self.churn.as_ref().map(|c| c.rate),
            Scenario::Bulk => self.bulk.as_ref().map(|b| b.rate),
            Scenario::Syscalls => self.syscalls.as_ref().map(|s| s.rate),
            Scenario::Massclose | Scenario::Json => None,
        }
    }

    pub fn lost(&self) -> Option<u64> {
        self.tracer.as_ref()?.summary.as_ref()?.lost
    }

    /// Seconds the workload ran: the window the BPF statistics cover.
    pub fn workload_seconds(&self) -> Option<f64> {
        match self.scenario {
            Scenario::Churn => self.churn.as_ref().map(|c| c.seconds),
            Scenario::Bulk => self.bulk.as_ref().map(|b| b.seconds),
            Scenario::Syscalls => self.syscalls.as_ref().map(|s| s.seconds),
            Scenario::Massclose | Scenario::Json => None,
        }
    }
}

/// Where a run's files go: `<stem>.out`, `<stem>.err`, ….
pub(super) fn stem(ctx: &Ctx, run: &Run) -> PathBuf {
    ctx.dir.join("runs").join(format!(
        "{}-{}-r{}-c{}",
        run.mode, run.config, run.rep, run.clients
    ))
}

pub(super) fn create(path: &Path) -> Result<File> {
    File::create(path).with_context(|| format!("creating {}", path.display()))
}

pub(super) fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = v.len().saturating_sub(lines);
    let s = v[start..].join(" | ");
    if s.is_empty() {
        "(stderr empty)".into()
    } else {
        s
    }
}

/// A workload that ran: its JSON line, or why it failed (with the line if
/// it printed one).
pub(super) type WorkResult<T> = std::result::Result<T, (Option<T>, anyhow::Error)>;

/// `program`, under `taskset -c 0` when pinned.
pub(super) fn pinned_command(program: &Path, pinned: bool) -> Result<Command> {
    Ok(if pinned {
        let mut c = command("taskset")?;
        c.args(["-c", "0"]).arg(program);
        c
    } else {
        command(program)?
    })
}

/// Runs a workload that prints one JSON line (stdout to `json_path`, stderr
/// next to it) for at most `limit`. The outer error is for failures of the
/// harness; the inner one for a workload that ran but failed (with its
/// numbers if any).
pub(super) fn workload<T: serde::de::DeserializeOwned>(
    mut cmd: Command,
    name: &str,
    json_path: &Path,
    limit: Duration,
) -> Result<WorkResult<T>> {
    let err_path = json_path.with_extension(format!("{name}-err"));
    cmd.stdin(Stdio::null())
        .stdout(create(json_path)?)
        .stderr(create(&err_path)?);
    let mut p = Proc::spawn(&mut cmd, name)?;
    let deadline = Instant::now() + limit;
    let exit = loop {
        proc::check_interrupted()?;
        if let Some(e) = p.poll()? {
            break e.clone();
        }
        if Instant::now() >= deadline {
            bail!("{name} did not finish within {} s", limit.as_secs());
        }
        thread::sleep(Duration::from_millis(10));
    };
    let text = fs::read_to_string(json_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let parsed: Option<T> = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l.trim()).ok());
    Ok(match (exit.success(), parsed) {
        (true, Some(c)) => Ok(c),
        (ok, c) => {
            let why = if ok {
                "printed no JSON line".to_owned()
            } else {
                format!("ended with {}", exit.how)
            };
            Err((c, anyhow::anyhow!("{name} {why}: {}", tail(&stderr, 3))))
        }
    })
}
