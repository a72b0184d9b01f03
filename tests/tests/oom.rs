//! A process the OOM killer chooses, holding a connection: its close is
//! the exit of a process killed by the OOM killer, not by whoever happened
//! to send the SIGKILL (the memory cgroup's OOM sends it from the victim's
//! own context, since it was the one allocating).
//!
//! The test makes a memory cgroup of its own (cgroup v2 with the memory
//! controller, else the v1 memory hierarchy) with a 48 MiB limit, runs a
//! python3 child in it that connects and then allocates at most 400 MiB in
//! 1 MiB steps, and removes the cgroup afterwards.

use std::{
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tcptrace::{render::words, tracker::Role};
use tcptrace_tests::{DEADLINE, Trace};

/// A memory cgroup of the test's own, removed on drop.
struct MemoryCgroup(PathBuf);

impl MemoryCgroup {
    /// Under cgroup v2 when its root offers the memory controller to its
    /// children, else under the v1 memory hierarchy; `None` without either.
    fn new(limit_bytes: u64) -> Option<MemoryCgroup> {
        let name = format!("tt-oom-{}", std::process::id());
        let v2 = tcptrace::cli::cgroup2_root().filter(|root| {
            std::fs::read_to_string(root.join("cgroup.subtree_control"))
                .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
        });
        let (dir, limit_file) = match v2 {
            Some(root) => (root.join(&name), "memory.max"),
            None if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() => (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
            ),
            None => return None,
        };
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let cg = MemoryCgroup(dir);
        std::fs::write(cg.0.join(limit_file), limit_bytes.to_string()).unwrap();
        Some(cg)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Its only process has been reaped by now; retry briefly while the
        // kernel finishes tearing it down.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Joins the cgroup, connects, says which port it got, then allocates
/// (bounded) until the OOM killer ends it.
const HOG: &str = r#"
import os, socket, sys
open(sys.argv[1] + "/cgroup.procs", "w").write(str(os.getpid()))
s = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
print(s.getsockname()[1], flush=True)
sys.stdin.readline()
hog = []
for _ in range(400):
    hog.append(bytearray(1 << 20))
"#;

#[test]
fn a_connection_of_a_process_the_oom_killer_chose_is_closed_by_that_kill() {
    let Some(cgroup) = MemoryCgroup::new(48 << 20) else {
        eprintln!("no memory cgroup to make here (v2 memory controller or v1 memory): skipped");
        return;
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut trace = Trace::start(&[port]);
    let mut child = Command::new("python3")
        .args(["-c", HOG, cgroup.0.to_str().unwrap(), &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 (cargo xtask setup installs it)");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let cport: u16 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
    let (mut served, _) = listener.accept().unwrap();
    // Go: allocate.
    drop(child.stdin.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the OOM killer never ended the child");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    // The server sees the client's end close as the process dies.
    served.set_read_timeout(Some(DEADLINE)).unwrap();
    let _ = served.read(&mut [0; 16]);

    let (life, verdict) = trace.wait_life(cport, port);
    assert_eq!(life.role, Role::Client, "{life:#?}");
    let exit = life
        .exit
        .as_ref()
        .unwrap_or_else(|| panic!("closed by no exit: {life:#?}"));
    assert_eq!(exit.tgid, child.id(), "{life:#?}");
    let signal = exit.signal.as_ref().unwrap_or_else(|| panic!("{life:#?}"));
    assert_eq!(
        (signal.name.as_str(), signal.killed, signal.oom_kill),
        ("SIGKILL", true, true),
        "{life:#?}"
    );
    let said = words::attribution(&life, &verdict).unwrap_or_default();
    assert!(
        said.contains(&format!(
            "closed by exit of python3[{}], killed by the OOM killer (SIGKILL)",
            child.id()
        )),
        "{said}"
    );
}
