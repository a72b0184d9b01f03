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

/// Most TIME_WAIT sockets a scenario may start among: a churn leaves over
/// a hundred thousand, whose expiry (timer softirqs, on the CPUs the next
/// scenario uses) took a fifth off a bulk stream's throughput in the reps
/// that met it.
const SETTLED_TIME_WAIT: u64 = 1000;

/// Waits, at most `limit`, until the host's TIME_WAIT sockets have expired
/// (below [`SETTLED_TIME_WAIT`]); says how many were left otherwise.
pub(super) fn wait_for_time_wait(limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut said = false;
    loop {
        let sockstat = fs::read_to_string("/proc/net/sockstat").context("/proc/net/sockstat")?;
        let left = time_wait_of(&sockstat).unwrap_or(0);
        if left < SETTLED_TIME_WAIT {
            return Ok(());
        }
        if start.elapsed() >= limit {
            println!("  {left} TIME_WAIT sockets still there after {limit:?}: going on");
            return Ok(());
        }
        if !said {
            println!("  waiting for {left} TIME_WAIT sockets to expire (at most {limit:?})");
            said = true;
        }
        proc::check_interrupted()?;
        thread::sleep(Duration::from_millis(500));
    }
}

/// Writes out what earlier runs left in the page cache (a tracer's output
/// file can be hundreds of megabytes) before the next run starts: its
/// writeback would otherwise land in that run, whichever configuration it
/// measures.
pub(super) fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// `configs` in the order repetition `rep` runs them: rotated by one each
/// repetition, so that no configuration always follows the same one (and
/// inherits what it leaves behind: TIME_WAIT sockets, a warm or cold cache).
pub(super) fn rotated<T: Copy>(configs: &[T], rep: u32) -> Vec<T> {
    if configs.is_empty() {
        return Vec::new();
    }
    let start = rep as usize % configs.len();
    configs[start..]
        .iter()
        .chain(&configs[..start])
        .copied()
        .collect()
}

/// The `tw` count of /proc/net/sockstat's TCP line.
fn time_wait_of(sockstat: &str) -> Option<u64> {
    let tcp = sockstat.lines().find(|l| l.starts_with("TCP:"))?;
    let mut words = tcp.split_whitespace();
    words.find(|&w| w == "tw")?;
    words.next()?.parse().ok()
}

#[cfg(test)]
mod time_wait_tests {
    use super::{rotated, time_wait_of};

    #[test]
    fn each_repetition_starts_one_configuration_later() {
        let configs = ["none", "tcptrace", "bpftrace"];
        assert_eq!(rotated(&configs, 0), configs);
        assert_eq!(rotated(&configs, 1), ["tcptrace", "bpftrace", "none"]);
        assert_eq!(rotated(&configs, 5), ["bpftrace", "none", "tcptrace"]);
        assert!(rotated::<u8>(&[], 3).is_empty());
    }

    #[test]
    fn the_time_wait_count_is_read_from_sockstat() {
        let sockstat = "sockets: used 84\n\
                        TCP: inuse 34 orphan 0 tw 128017 alloc 36 mem 51\n\
                        UDP: inuse 0 mem 0\n";
        assert_eq!(time_wait_of(sockstat), Some(128_017));
        assert_eq!(time_wait_of("sockets: used 1\n"), None);
        assert_eq!(time_wait_of("TCP: inuse 1 orphan 0\n"), None);
    }
}
