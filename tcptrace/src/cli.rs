//! Command-line flags, and their validation into loader and render options.
//! Bad values are refused here, before anything is loaded into the kernel.

use std::{
    ffi::OsString,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::PathBuf,
    time::Duration,
};

use clap::{Parser, ValueEnum};
use tcptrace_common::{COMM_LEN, Filter, MIN_RING_BYTES, filter};

use crate::{
    decode::{AF_INET, AF_INET6},
    loader::TraceOptions,
    render::View,
    tracker::TrackerOptions,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when stdout is a terminal and NO_COLOR is unset.
    Auto,
    Always,
    Never,
}

/// Show how TCP connections on this host open and end: per socket, the
/// 3-way handshake, the 4-way close and the RST paths, with the process that
/// owned each socket and the one that closed it.
///
/// Needs root (or CAP_BPF + CAP_PERFMON). Stop with Ctrl-C; a summary goes to
/// stderr.
#[derive(Clone, Debug, Parser)]
#[command(name = "tcptrace", version, about, long_about, max_term_width = 100)]
pub struct Args {
    /// What to print: one ladder per socket when it ends (`sockets`), one
    /// line per state transition as it happens (`stream`), both, or nothing
    /// (`none`: a daemon serving --metrics and/or recording with --write).
    #[arg(long, value_enum, default_value_t = View::Sockets)]
    pub view: View,

    /// One JSON object per line instead of text (schema: README, "JSON").
    #[arg(long)]
    pub json: bool,

    /// Print wall-clock times (HH:MM:SS.mmm) in the stream view.
    #[arg(short = 'T', long)]
    pub timestamp: bool,

    /// Wide address columns, for IPv6.
    #[arg(short = 'w', long)]
    pub wide: bool,

    /// Stop after this many seconds (1 to 31536000, a year).
    #[arg(long, value_name = "SECS", allow_hyphen_values = true, value_parser = parse_duration)]
    pub duration: Option<u64>,

    /// Only sockets owned by (or events caused by) this process; repeatable.
    /// A thread id stands for its process. Filters on the socket's owner
    /// (the process that connected or listened), so a pre-fork server's
    /// master keeps its workers' accepted sockets; --follow adds processes
    /// forked by it.
    #[arg(long, value_name = "PID", allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Vec<u32>,

    /// With --pid: keep the processes they fork too (their children running
    /// now, and those forked while tracing).
    #[arg(long, requires = "pid")]
    pub follow: bool,

    /// Only sockets owned by processes with this name (first 15 bytes, as
    /// the kernel keeps it; any bytes, UTF-8 or not, e.g. $'\xff\xfe').
    #[arg(long, value_name = "NAME", value_parser = clap::value_parser!(OsString))]
    pub comm: Option<OsString>,

    /// Only sockets with this port at either end.
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub port: Option<u16>,

    /// Only sockets with this local port.
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub lport: Option<u16>,

    /// Only sockets with this remote port.
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub rport: Option<u16>,

    /// Only IPv4.
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,

    /// Only IPv6.
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,

    /// Only sockets owned by processes in this cgroup (v2): absolute, or
    /// relative to the cgroup2 mount (e.g. system.slice/nginx.service).
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// Only sockets in this network namespace: a path (/run/netns/NAME,
    /// /proc/PID/ns/net) or its inode number (as `lsns -t net` shows).
    #[arg(long, value_name = "PATH|INODE")]
    pub netns: Option<OsString>,

    /// Print the TCP sockets open when tracing starts, with the processes
    /// holding them (like `ss -tp`), before tracing.
    #[arg(long)]
    pub snapshot: bool,

    /// Don't follow accept(2). By default the process that accepts a server
    /// socket becomes its owner (which nginx worker, which member of an
    /// SO_REUSEPORT group); following it routes every syscall of the host
    /// through the kernel's syscall tracing while tcptrace runs (about 25
    /// ns each, see the README's benchmarks). Without it, accepted sockets
    /// keep their listener's owner.
    #[arg(long)]
    pub no_accept: bool,

    /// Read kernel memory with the bpf_probe_read_kernel helper, as on
    /// kernels before 6.17, even where this kernel lets the programs load
    /// it directly (through the bpf_rdonly_cast kfunc; each read is then an
    /// instruction instead of a helper call, about 20 ns). For comparing
    /// the two, or if a kernel misbehaves with the direct loads.
    #[arg(long)]
    pub no_direct_reads: bool,

    /// Event ring size in bytes, all rings together: a power of two from
    /// 262144 (256 KiB) to 1073741824 (1 GiB), one event per 128 bytes
    /// (in 160-byte slots: resident memory is 1.25 times this). It is
    /// shared by one ring per CPU (up to 8, none under 256 KiB), so that
    /// CPUs do not contend for one ring; tcptrace merges them back into
    /// time order. A burst on one CPU fills that CPU's share. Larger
    /// absorbs bigger bursts without losing events. 256 KiB holds 2,048
    /// events, about 0.15 s at a thousand connections a second: a smaller
    /// ring fills while a loaded machine keeps the reader waiting for a CPU.
    #[arg(long, value_name = "BYTES", default_value_t = tcptrace_common::DEFAULT_RING_BYTES,
          allow_hyphen_values = true, value_parser = parse_ring_size)]
    pub ring_size: u32,

    /// Most sockets tracked at once; the oldest is evicted (and marked) past it.
    #[arg(long, value_name = "N", default_value_t = 65536, allow_hyphen_values = true,
          value_parser = clap::value_parser!(u64).range(16..=4_194_304))]
    pub max_sockets: u64,

    /// Colour in text output.
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Don't print the exit summary.
    #[arg(long)]
    pub no_summary: bool,

    /// Also record the raw kernel records to FILE, to replay later with
    /// --read, here or on another machine, without root. Works with any
    /// view; the drain never waits for the disk (records it cannot take in
    /// time are counted in the summary).
    #[arg(long, value_name = "FILE", conflicts_with = "read")]
    pub write: Option<PathBuf>,

    /// With --write: start a new file (FILE.1, FILE.2, …) once the current
    /// one holds this many megabytes (10^6 bytes), as tcpdump's -C.
    #[arg(long, value_name = "MB", requires = "write",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub rotate_size: Option<u64>,

    /// With --rotate-size: keep only the newest N files, deleting older
    /// ones, as tcpdump's -W.
    #[arg(long, value_name = "N", requires = "rotate_size",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rotate_count: Option<u32>,

    /// Serve Prometheus metrics at http://ADDR/metrics: PORT alone (on
    /// 127.0.0.1), localhost:PORT or IP:PORT. Only loopback unless another
    /// address is given (then a warning says so: labels name processes).
    #[arg(long, value_name = "ADDR", value_parser = crate::metrics::parse_addr,
          conflicts_with = "read")]
    pub metrics: Option<std::net::SocketAddr>,

    /// With --metrics: most values of each per-service label (process,
    /// unit, container); sockets of further ones count under `other`.
    #[arg(long, value_name = "K", default_value_t = crate::metrics::DEFAULT_MAX_SERIES,
          requires = "metrics", value_parser = crate::metrics::parse_max_series)]
    pub metrics_max_series: usize,

    /// Replay recordings made with --write instead of tracing: no root, no
    /// BPF; the same views, JSON and summary as the live run. Several files
    /// of a rotated recording are read in the order they were written; `-`
    /// reads stdin. Filters given here apply on top of the recorded ones.
    #[arg(short = 'r', long, value_name = "FILE", num_args = 1..,
          conflicts_with_all = ["snapshot", "command", "duration", "cgroup", "follow"])]
    pub read: Vec<PathBuf>,

    /// Run COMMAND (after `--`) and trace only its sockets and its
    /// children's (it runs in a cgroup of its own; through sudo, as the
    /// invoking user); stop when it exits, with its exit status. The report
    /// goes to stderr, so that the command's stdout stays its own.
    #[arg(last = true, value_name = "COMMAND", conflicts_with_all = ["cgroup", "duration"])]
    pub command: Vec<OsString>,
}

/// The largest ring: beyond it a burst is better absorbed by reading faster.
pub const MAX_RING_BYTES: u32 = 1 << 30;
/// A year: longer is a typo, and would overflow the deadline arithmetic.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 3600;

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let wanted = "a power of two from 262144 to 1073741824 bytes (e.g. 4194304)";
    let n: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of bytes: give {wanted}"))?;
    match u32::try_from(n) {
        Ok(n) if (MIN_RING_BYTES..=MAX_RING_BYTES).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(format!("{n} is out of range: give {wanted}")),
    }
}

fn parse_duration(s: &str) -> Result<u64, String> {
    let wanted = format!("a whole number of seconds from 1 to {MAX_DURATION_SECS}");
    match s.parse::<u64>() {
        Ok(n) if (1..=MAX_DURATION_SECS).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range: give {wanted}")),
        Err(_) => Err(format!("`{s}` is not {wanted}")),
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("--cgroup {path}: {why}")]
    Cgroup { path: String, why: String },
    #[error("--comm: an empty name matches nothing")]
    EmptyComm,
    #[error("--pid {0}: no such process")]
    NoSuchPid(u32),
    #[error("--netns {path}: {why}")]
    Netns { path: String, why: String },
    #[error("{0}: command not found (not a file in PATH, or not executable)")]
    CommandNotFound(String),
    #[error(
        "--view none shows nothing: give --metrics ADDR or --write FILE (or both) for it \
         to have an output, or another --view"
    )]
    NothingToShow,
}

impl Args {
    /// The kernel-side filters and sizes.
    pub fn trace_options(&self) -> Result<TraceOptions, ArgsError> {
        if self.view == View::None && self.metrics.is_none() && self.write.is_none() {
            return Err(ArgsError::NothingToShow);
        }
        let mut f = Filter::default();
        // A thread id stands for its process (the filter keys on tgids).
        let mut pids = Vec::new();
        for &pid in &self.pid {
            let tgid = crate::procs::tgid_of(pid).ok_or(ArgsError::NoSuchPid(pid))?;
            if !pids.contains(&tgid) {
                pids.push(tgid);
            }
        }
        if self.follow {
            let children = crate::procs::descendants(&pids);
            pids.extend(children);
            f.flags |= filter::FOLLOW;
        }
        if let Some(comm) = &self.comm {
            if comm.is_empty() {
                return Err(ArgsError::EmptyComm);
            }
            // The kernel keeps 15 bytes and a NUL; names need not be UTF-8.
            let bytes = comm.as_bytes();
            let n = bytes.len().min(COMM_LEN - 1);
            f.comm[..n].copy_from_slice(&bytes[..n]);
            f.flags |= filter::COMM;
        }
        if let Some(port) = self.port {
            f.port = port;
            f.flags |= filter::PORT;
        }
        if let Some(port) = self.lport {
            f.lport = port;
            f.flags |= filter::LPORT;
        }
        if let Some(port) = self.rport {
            f.rport = port;
            f.flags |= filter::RPORT;
        }
        if self.ipv4 || self.ipv6 {
            f.family = if self.ipv4 { AF_INET } else { AF_INET6 };
            f.flags |= filter::FAMILY;
        }
        if let Some(path) = &self.cgroup {
            f.cgroup_id = cgroup_id(path)?;
            f.flags |= filter::CGROUP;
        }
        if let Some(program) = self.command.first()
            && !command_exists(program)
        {
            return Err(ArgsError::CommandNotFound(
                program.to_string_lossy().into_owned(),
            ));
        }
        if let Some(ns) = &self.netns {
            f.netns = netns_inode(ns)?;
            f.flags |= filter::NETNS;
        }
        Ok(TraceOptions {
            ring_bytes: self.ring_size,
            filter: f,
            pids,
            // The session fills these in from the start-up snapshot.
            seeds: Default::default(),
            follow_accept: !self.no_accept,
            direct_reads: !self.no_direct_reads,
        })
    }

    /// The filters, for records read from a recording: process ids are
    /// the recording host's, so they are taken as given.
    pub fn read_filter(&self) -> Result<crate::filter::EventFilter, ArgsError> {
        let live = Args {
            pid: Vec::new(),
            ..self.clone()
        };
        let mut filter = live.trace_options()?.filter;
        let mut pids = std::collections::HashSet::new();
        for &pid in &self.pid {
            pids.insert(pid);
            filter.flags |= filter::PID;
        }
        Ok(crate::filter::EventFilter { filter, pids })
    }

    /// The filter flags as given, for a recording's header.
    pub fn filter_words(&self) -> Vec<String> {
        let mut words = Vec::new();
        let mut add = |flag: &str, value: String| {
            words.push(flag.to_owned());
            if !value.is_empty() {
                words.push(value);
            }
        };
        for pid in &self.pid {
            add("--pid", pid.to_string());
        }
        if self.follow {
            add("--follow", String::new());
        }
        if let Some(c) = &self.comm {
            add("--comm", c.to_string_lossy().into_owned());
        }
        for (flag, port) in [
            ("--port", self.port),
            ("--lport", self.lport),
            ("--rport", self.rport),
        ] {
            if let Some(p) = port {
                add(flag, p.to_string());
            }
        }
        if self.ipv4 {
            add("--ipv4", String::new());
        }
        if self.ipv6 {
            add("--ipv6", String::new());
        }
        if let Some(c) = &self.cgroup {
            add("--cgroup", c.display().to_string());
        }
        if let Some(n) = &self.netns {
            add("--netns", n.to_string_lossy().into_owned());
        }
        if !self.command.is_empty() {
            add("--", String::new());
            words.extend(
                self.command
                    .iter()
                    .map(|c| c.to_string_lossy().into_owned()),
            );
        }
        words
    }

    pub fn tracker_options(&self) -> TrackerOptions {
        TrackerOptions {
            max_sockets: self.max_sockets as usize,
            ..TrackerOptions::default()
        }
    }

    pub fn duration(&self) -> Option<Duration> {
        self.duration.map(Duration::from_secs)
    }

    /// Colour decision: the flag, then NO_COLOR, then whether stdout is a tty.
    pub fn color(&self, stdout_is_terminal: bool) -> bool {
        match self.color {
            ColorChoice::Always => true,
            ColorChoice::Never => false,
            ColorChoice::Auto => {
                stdout_is_terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on unified
/// hosts, /sys/fs/cgroup/unified on hybrid (v1 + v2) ones.
pub fn cgroup2_root() -> Option<PathBuf> {
    crate::mounts::parse(&crate::mounts::own_table())
        .find(|m| m.fstype == "cgroup2")
        .map(|m| m.point)
}

/// Is `program` an executable file (as given, or found in PATH)?
fn command_exists(program: &std::ffi::OsStr) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let path = std::path::Path::new(program);
    if program.as_bytes().contains(&b'/') {
        return executable(path);
    }
    std::env::var_os("PATH")
        .is_some_and(|dirs| std::env::split_paths(&dirs).any(|d| executable(&d.join(program))))
}

/// A network namespace's inode: given as a number, or the inode of a
/// namespace file (`/run/netns/NAME`, `/proc/PID/ns/net`).
fn netns_inode(arg: &std::ffi::OsStr) -> Result<u32, ArgsError> {
    let text = arg.to_string_lossy();
    let err = |why: String| ArgsError::Netns {
        path: text.clone().into_owned(),
        why,
    };
    if let Ok(n) = text.parse::<u32>() {
        return if n == 0 {
            Err(err("not a namespace inode".into()))
        } else {
            Ok(n)
        };
    }
    let meta = std::fs::metadata(arg).map_err(|e| err(e.to_string()))?;
    // nsfs files are what setns(2) takes: check it is one of those.
    let is_nsfs = nix_statfs_magic(std::path::Path::new(arg)) == Some(NSFS_MAGIC);
    if !is_nsfs {
        return Err(err(
            "not a network-namespace file (try /run/netns/NAME or /proc/PID/ns/net)".into(),
        ));
    }
    u32::try_from(meta.ino()).map_err(|_| err("inode out of range".into()))
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

fn nix_statfs_magic(path: &std::path::Path) -> Option<i64> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out pointer.
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

/// A cgroup v2 id is the inode number of its directory in the cgroup2
/// filesystem (what `bpf_get_current_cgroup_id` returns).
fn cgroup_id(path: &std::path::Path) -> Result<u64, ArgsError> {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let root = cgroup2_root();
    let full = match (&root, path.is_absolute()) {
        (_, true) => path.to_owned(),
        (Some(root), false) => root.join(path),
        (None, false) => PathBuf::from("/sys/fs/cgroup").join(path),
    };
    let err = |why: String| ArgsError::Cgroup {
        path: full.display().to_string(),
        why,
    };
    let meta = std::fs::metadata(&full).map_err(|e| err(e.to_string()))?;
    let c_path = std::ffi::CString::new(full.as_os_str().as_encoded_bytes())
        .map_err(|_| err("a path with a NUL byte".into()))?;
    // SAFETY: a valid NUL-terminated path and a zeroed out-parameter.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let on_cgroup2 = unsafe { libc::statfs(c_path.as_ptr(), &mut fs) } == 0
        && fs.f_type as i64 == CGROUP2_SUPER_MAGIC;
    if !meta.is_dir() || !on_cgroup2 {
        let hint = match &root {
            Some(root) => format!("cgroup v2 is mounted at {}", root.display()),
            None => "no cgroup v2 filesystem is mounted".into(),
        };
        return Err(err(format!("not a cgroup v2 directory ({hint})")));
    }
    Ok(meta.ino())
}

#[cfg(test)]
mod tests;
