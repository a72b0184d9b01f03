//! Running the real CLI with `--json` around some work, and reading what
//! it printed: the way tests check filters and flags end to end.

use std::{
    io::Read,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{DEADLINE, lines_of, tcptrace_binary, wait_line};

/// A child process killed and reaped when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the CLI with `args` (JSON to a file) while `work` runs, then stops it
/// and returns its JSON lines and summary.
pub fn traced(args: &[&str], work: impl FnOnce()) -> (Vec<serde_json::Value>, serde_json::Value) {
    let (lines, summary, _) = traced_as(Command::new(tcptrace_binary()).args(args), work);
    (lines, summary)
}

/// As [`traced`], for a command that runs the CLI (under `setpriv`, say):
/// its JSON lines, its summary and all it said on stderr.
pub fn traced_as(
    cmd: &mut Command,
    work: impl FnOnce(),
) -> (Vec<serde_json::Value>, serde_json::Value, Vec<String>) {
    let path = std::env::temp_dir().join(format!(
        "tcptrace-run-{}-{:?}.json",
        std::process::id(),
        std::thread::current().id()
    ));
    let mut child = cmd
        .arg("--json")
        .stdout(std::fs::File::create(&path).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = lines_of(child.stderr.take().unwrap());
    let mut err = Vec::new();
    if !wait_line(&stderr, &mut err, |l| l.contains("tracing TCP")) {
        let _ = child.kill();
        panic!("tcptrace never said it was tracing: {err:#?}");
    }
    work();
    // Lives end 200 ms after their last event (late RSTs): let them.
    std::thread::sleep(Duration::from_millis(600));
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < DEADLINE, "tcptrace did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    err.extend(stderr.iter());
    let mut text = String::new();
    std::fs::File::open(&path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let _ = std::fs::remove_file(&path);
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let summary = err
        .iter()
        .find_map(|l| l.strip_prefix("tcptrace-summary "))
        .map(|s| serde_json::from_str(s).unwrap())
        .unwrap_or_else(|| panic!("no summary: {err:#?}"));
    (lines, summary, err)
}

pub fn port_of(addr: &serde_json::Value) -> u16 {
    addr.as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0)
}
