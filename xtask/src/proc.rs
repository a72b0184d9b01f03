//! Child processes that are always reaped (and killed on drop), with their
//! resource usage, plus readers for /proc facts about a live process.

use std::collections::HashMap;
use std::fs;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;

use crate::util::describe;

/// Set by the SIGINT handler that [`catch_sigint`] installs.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns Ctrl-C into a flag that the waits below check, so that guards run
/// (children killed, sysctls restored) instead of the process dying.
pub fn catch_sigint() {
    let handler = on_sigint as extern "C" fn(libc::c_int);
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// How a child ended, with the rusage wait4 reported for it.
#[derive(Debug, Clone, Serialize)]
pub struct Exit {
    /// e.g. "exit 0", "signal 9".
    pub how: String,
    pub code: Option<i32>,
    /// User + system CPU seconds over the child's whole life.
    pub cpu_s: f64,
    /// Peak resident set size in KiB.
    pub maxrss_kib: u64,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// A spawned child that is SIGKILLed and reaped when dropped unless it was
/// already waited for.
pub struct Proc {
    child: Child,
    name: String,
    exit: Option<Exit>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, name: &str) -> Result<Self> {
        let child = cmd
            .spawn()
            .with_context(|| format!("could not start {name}: `{}`", describe(cmd)))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            exit: None,
        })
    }

    pub fn pid(&self) -> i32 {
        // Linux pids fit in i32.
        i32::try_from(self.child.id()).unwrap_or(i32::MAX)
    }

    /// Reaps the child if it has ended (never blocks).
    pub fn poll(&mut self) -> Result<Option<&Exit>> {
        if self.exit.is_none() {
            self.exit = wait4(self.pid(), libc::WNOHANG)
                .with_context(|| format!("waiting for {}", self.name))?;
        }
        Ok(self.exit.as_ref())
    }

    /// Waits up to `timeout` for the child to end.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<&Exit>> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.poll()?.is_some() || Instant::now() >= deadline {
                return Ok(self.exit.as_ref());
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        if self.exit.is_none() {
            // SAFETY: plain syscall; the pid is our unreaped child, so it
            // cannot have been recycled.
            unsafe {
                libc::kill(self.pid(), sig);
            }
        }
    }

    /// SIGINT, then SIGKILL if it has not ended within `grace`. Returns the
    /// exit and whether it had to be killed.
    pub fn stop(&mut self, grace: Duration) -> Result<(Exit, bool)> {
        self.signal(libc::SIGINT);
        if let Some(e) = self.wait_timeout(grace)? {
            return Ok((e.clone(), false));
        }
        self.signal(libc::SIGKILL);
        match self.wait_timeout(Duration::from_secs(10))? {
            Some(e) => Ok((e.clone(), true)),
            None => bail!("{} did not end even after SIGKILL", self.name),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exit.is_none() {
            self.signal(libc::SIGKILL);
            let _ = self.wait_timeout(Duration::from_secs(10));
        }
    }
}

fn wait4(pid: i32, flags: libc::c_int) -> Result<Option<Exit>> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; zeroed is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid out-pointers for the duration of the call.
        let rc = unsafe { libc::wait4(pid, &mut status, flags, &mut ru) };
        if rc == 0 {
            return Ok(None);
        }
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err).context("wait4");
        }
        break;
    }
    let (how, code) = if libc::WIFEXITED(status) {
        let c = libc::WEXITSTATUS(status);
        (format!("exit {c}"), Some(c))
    } else if libc::WIFSIGNALED(status) {
        (format!("signal {}", libc::WTERMSIG(status)), None)
    } else {
        (format!("status {status:#x}"), None)
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Some(Exit {
        how,
        code,
        cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
        maxrss_kib: u64::try_from(ru.ru_maxrss).unwrap_or(0),
    }))
}

/// User + system CPU seconds of a live process (all its threads), from
/// /proc/<pid>/stat.
pub fn cpu_seconds(pid: i32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may
    // contain spaces: state is field 3, utime 14, stime 15.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc/<pid>/stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        let f = fields.get(i).context("short /proc/<pid>/stat")?;
        Ok(f.parse::<u64>().context("bad /proc/<pid>/stat field")? as f64)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as f64 } else { 100.0 };
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Resident memory of a live process now (VmRSS), in KiB.
pub fn rss_kib(pid: i32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/<pid>/status")
}

/// Run-time statistics of one BPF program (the kernel counts run_cnt and
/// run_time_ns only while `kernel.bpf_stats_enabled` is 1; recursion_misses
/// always).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ProgStats {
    pub id: u64,
    /// The program's name as the kernel keeps it (from `bpftool prog show`),
    /// else `prog<N>`, N its rank by id among the process's programs.
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped because a BPF program was already running on
    /// that CPU (its per-CPU recursion guard).
    pub recursion_misses: u64,
    /// The calls in the program as the verifier left it (`bpftool prog dump
    /// xlated`), by callee, most first: `probe_read_kernel 2, ktime_get_ns
    /// 1`. Call sites, not calls per run: a run takes one path through them.
    pub calls: String,
}

/// Run-time statistics of the BPF programs a process holds open: the sums
/// and every program.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BpfStats {
    pub programs: u64,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub recursion_misses: u64,
    /// One entry per program, by id.
    pub progs: Vec<ProgStats>,
}

impl BpfStats {
    fn from_progs(mut progs: Vec<ProgStats>) -> Self {
        progs.sort_by_key(|p| p.id);
        Self {
            programs: progs.len() as u64,
            run_cnt: progs.iter().map(|p| p.run_cnt).sum(),
            run_time_ns: progs.iter().map(|p| p.run_time_ns).sum(),
            recursion_misses: progs.iter().map(|p| p.recursion_misses).sum(),
            progs,
        }
    }

    /// The counts accumulated since `earlier`, program by program (a program
    /// absent from `earlier` counts from zero). Names come from `earlier`
    /// when this reading has none of its own, else `id N`.
    pub fn since(&self, earlier: &BpfStats) -> BpfStats {
        let progs = self
            .progs
            .iter()
            .map(|p| {
                let before = earlier.progs.iter().find(|e| e.id == p.id);
                let zero = ProgStats::default();
                let before = before.unwrap_or(&zero);
                ProgStats {
                    id: p.id,
                    name: match (p.name.is_empty(), before.name.is_empty()) {
                        (false, _) => p.name.clone(),
                        (true, false) => before.name.clone(),
                        // Loaded during the window: never named.
                        (true, true) => format!("id {}", p.id),
                    },
                    run_cnt: p.run_cnt.saturating_sub(before.run_cnt),
                    run_time_ns: p.run_time_ns.saturating_sub(before.run_time_ns),
                    recursion_misses: p.recursion_misses.saturating_sub(before.recursion_misses),
                    calls: if p.calls.is_empty() {
                        before.calls.clone()
                    } else {
                        p.calls.clone()
                    },
                }
            })
            .collect();
        BpfStats::from_progs(progs)
    }

    /// Fills in every program's name: the kernel's (via bpftool), else
    /// `prog<N>` by rank of id, so that runs of the same binary line up.
    pub fn name_programs(&mut self) {
        for (rank, p) in self.progs.iter_mut().enumerate() {
            if p.name.is_empty() {
                p.name = prog_name(p.id).unwrap_or_else(|| format!("prog{rank}"));
            }
            if p.calls.is_empty() {
                p.calls = prog_calls(p.id).unwrap_or_default();
            }
        }
    }
}

/// One BPF program fd's /proc/<pid>/fdinfo, or None without a `prog_id`.
pub fn parse_prog_fdinfo(info: &str) -> Option<ProgStats> {
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(ProgStats {
        id: field("prog_id")?,
        name: String::new(),
        run_cnt: field("run_cnt").unwrap_or(0),
        run_time_ns: field("run_time_ns").unwrap_or(0),
        recursion_misses: field("recursion_misses").unwrap_or(0),
        calls: String::new(),
    })
}

/// Reads /proc/<pid>/fdinfo of every BPF program fd the process holds, each
/// program counted once (names left empty: see [`BpfStats::name_programs`]).
/// The kernel's switch for BPF run-time statistics (run_time_ns, run_cnt).
pub const BPF_STATS: &str = "kernel.bpf_stats_enabled";

/// Is [`BPF_STATS`] on (run times and run counts kept)?
pub fn bpf_stats_enabled() -> bool {
    fs::read_to_string(sysctl_path(BPF_STATS)).is_ok_and(|v| v.trim() == "1")
}

/// `/proc/sys/...` of a sysctl named with dots.
fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

/// Writes `value` to the sysctl `name`.
pub fn set_sysctl(name: &str, value: &str) -> Result<()> {
    let path = sysctl_path(name);
    fs::write(&path, value).with_context(|| format!("writing {value} to {path}"))
}

pub fn bpf_stats(pid: i32) -> Result<BpfStats> {
    let dir = format!("/proc/{pid}/fd");
    let mut progs: HashMap<u64, ProgStats> = HashMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("listing {dir}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let fd = entry.file_name();
        let info_path = format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy());
        let Ok(info) = fs::read_to_string(&info_path) else {
            continue; // closed meanwhile
        };
        if let Some(p) = parse_prog_fdinfo(&info) {
            progs.insert(p.id, p);
        }
    }
    Ok(BpfStats::from_progs(progs.into_values().collect()))
}

/// A program's name from `bpftool prog show id N -j`, if bpftool is there.
fn prog_name(id: u64) -> Option<String> {
    let mut cmd = crate::util::command("bpftool").ok()?;
    cmd.args(["prog", "show", "id", &id.to_string(), "-j"]);
    parse_bpftool_name(&crate::util::output(&mut cmd).ok()?)
}

/// The calls of program N as the verifier left it, if bpftool is there.
fn prog_calls(id: u64) -> Option<String> {
    let mut cmd = crate::util::command("bpftool").ok()?;
    cmd.args(["prog", "dump", "xlated", "id", &id.to_string()]);
    Some(count_calls(&crate::util::output(&mut cmd).ok()?))
}

/// `call bpf_probe_read_kernel#-69024` lines of an xlated dump, counted by
/// callee (helpers, and map operations the verifier made direct calls);
/// BPF-to-BPF calls (`call pc+N#…`) name the subprogram after the `#`.
pub fn count_calls(xlated: &str) -> String {
    let mut counts: Vec<(String, u32)> = Vec::new();
    for line in xlated.lines() {
        let Some((_, call)) = line.split_once(") call ") else {
            continue;
        };
        let call = call.trim();
        let name = match call.split_once('#') {
            Some((target, sub)) if target.starts_with("pc") => {
                // bpf_prog_<tag>_<name>: the subprogram's own name.
                let sub = sub.trim_start_matches("bpf_prog_");
                sub.split_once('_').map_or(sub, |(_, n)| n)
            }
            Some((target, _)) => target,
            None => call,
        };
        let name = name.strip_prefix("bpf_").unwrap_or(name).to_owned();
        match counts.iter_mut().find(|(n, _)| *n == name) {
            Some((_, c)) => *c += 1,
            None => counts.push((name, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
        .iter()
        .map(|(n, c)| format!("{n} {c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `name` of `bpftool prog show id N -j`'s object.
pub fn parse_bpftool_name(json: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).ok()?;
    let name = v.get("name")?.as_str()?;
    (!name.is_empty()).then(|| name.to_owned())
}

/// A TCP socket as /proc/net/tcp and /proc/net/tcp6 list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetSock {
    pub local_port: u16,
    pub remote_port: u16,
    /// The kernel's state number (1 ESTABLISHED … 6 TIME_WAIT … 10 LISTEN).
    pub state: u8,
}

/// TIME_WAIT in /proc/net/tcp: a timewait sock, no longer a full socket.
pub const TCP_TIME_WAIT: u8 = 6;

/// The sockets of one /proc/net/tcp{,6} text (the header line skipped).
pub fn parse_proc_net_tcp(text: &str) -> Vec<NetSock> {
    let port =
        |field: &str| -> Option<u16> { u16::from_str_radix(field.rsplit_once(':')?.1, 16).ok() };
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let _slot = f.next().filter(|s| s.ends_with(':'))?;
            let local_port = port(f.next()?)?;
            let remote_port = port(f.next()?)?;
            let state = u8::from_str_radix(f.next()?, 16).ok()?;
            Some(NetSock {
                local_port,
                remote_port,
                state,
            })
        })
        .collect()
}

/// Every TCP socket (IPv4 and IPv6) of this network namespace.
pub fn tcp_sockets() -> Result<Vec<NetSock>> {
    let mut out = Vec::new();
    for path in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(path) {
            Ok(text) => out.extend(parse_proc_net_tcp(&text)),
            // No IPv6 in this kernel.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.ends_with('6') => {}
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        }
    }
    Ok(out)
}

/// Sets a sysctl under /proc/sys and restores the old value on drop.
pub struct SysctlGuard {
    path: String,
    old: String,
}

impl SysctlGuard {
    pub fn set(name: &str, value: &str) -> Result<Self> {
        let path = sysctl_path(name);
        let old = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        set_sysctl(name, value)?;
        Ok(Self {
            path,
            old: old.trim().to_owned(),
        })
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.old) {
            eprintln!(
                "warning: could not restore {} to {}: {e}",
                self.path, self.old
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1044\nprog_type:\t5\n\
                          prog_jited:\t1\nprog_tag:\tabeae1bfbe44fa22\nmemlock:\t4096\n\
                          prog_id:\t22\nrun_time_ns:\t168101\nrun_cnt:\t273\n\
                          recursion_misses:\t2\nverified_insns:\t11\n";

    #[test]
    fn fdinfo_of_a_program() {
        let p = parse_prog_fdinfo(FDINFO).unwrap();
        assert_eq!(
            (p.id, p.run_cnt, p.run_time_ns, p.recursion_misses),
            (22, 273, 168101, 2)
        );
        assert!(p.name.is_empty());
        // Older kernels print no recursion_misses; a map's fdinfo no prog_id.
        let old = parse_prog_fdinfo("prog_id:\t7\nrun_time_ns:\t5\nrun_cnt:\t1\n").unwrap();
        assert_eq!(old.recursion_misses, 0);
        assert!(parse_prog_fdinfo("map_type:\t27\nmap_id:\t3\n").is_none());
    }

    #[test]
    fn proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:5D5C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:8A3E 0100007F:5D5C 01 00000000:00000000 00:00000000 00000000     0        0 31338 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:8A40 0100007F:5D5C 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
";
        assert_eq!(
            parse_proc_net_tcp(text),
            [
                NetSock {
                    local_port: 23900,
                    remote_port: 0,
                    state: 10
                },
                NetSock {
                    local_port: 35390,
                    remote_port: 23900,
                    state: 1
                },
                NetSock {
                    local_port: 35392,
                    remote_port: 23900,
                    state: TCP_TIME_WAIT
                },
            ]
        );
        let v6 = "  sl  local_address                         remote_address                        st
   0: 00000000000000000000000001000000:5D5C 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
";
        assert_eq!(parse_proc_net_tcp(v6)[0].local_port, 23900);
    }

    #[test]
    fn calls_are_counted_by_callee_subprograms_by_name() {
        let dump = "   0: (bf) r6 = r1\n\
            10: (85) call bpf_probe_read_kernel#-69024\n\
            19: (85) call bpf_get_current_task#-76912\n\
            26: (85) call bpf_probe_read_kernel#-69024\n\
           109: (85) call pc+477#bpf_prog_1e2b58b7c3590bb4_oddity\n\
           200: (85) call __htab_map_lookup_elem#330864\n";
        assert_eq!(
            count_calls(dump),
            "probe_read_kernel 2, __htab_map_lookup_elem 1, get_current_task 1, oddity 1"
        );
    }

    #[test]
    fn bpftool_name() {
        let json =
            r#"{"id":22,"type":"tracepoint","name":"softirq_entry","tag":"ab","run_cnt":297}"#;
        assert_eq!(parse_bpftool_name(json).as_deref(), Some("softirq_entry"));
        assert_eq!(parse_bpftool_name(r#"{"id":1,"name":""}"#), None);
        assert_eq!(
            parse_bpftool_name("Error: get by id (5): No such file"),
            None
        );
    }

    /// One program's statistics, as bpftool reports them (test fixture).
    pub(crate) fn prog(id: u64, name: &str, cnt: u64, ns: u64, miss: u64) -> ProgStats {
        ProgStats {
            id,
            name: name.into(),
            run_cnt: cnt,
            run_time_ns: ns,
            recursion_misses: miss,
            calls: String::new(),
        }
    }

    #[test]
    fn stats_since_match_programs_by_id() {
        let before = BpfStats::from_progs(vec![prog(9, "b", 5, 50, 1), prog(3, "a", 10, 100, 0)]);
        let after = BpfStats::from_progs(vec![
            prog(3, "", 15, 160, 0),
            prog(9, "", 5, 50, 4),
            prog(12, "", 2, 20, 0),
        ]);
        let d = after.since(&before);
        assert_eq!(d.programs, 3);
        assert_eq!((d.run_cnt, d.run_time_ns, d.recursion_misses), (7, 80, 3));
        let names: Vec<&str> = d.progs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "id 12"]);
        assert_eq!(d.progs[2], prog(12, "id 12", 2, 20, 0));
    }
}
