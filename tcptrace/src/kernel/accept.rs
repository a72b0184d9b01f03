//! Following `accept(2)` to the socket it returned: the struct offsets of
//! that walk (BTF) and the place of the return value in the syscall
//! tracepoint's record (its format file, in tracefs: syscall events are
//! not in BTF).

use std::path::{Path, PathBuf};

use tcptrace_common::AcceptConfig;

use super::Btf;

/// The syscall tracepoints the accept program is attached to.
pub const ACCEPT_TRACEPOINTS: [&str; 2] = ["sys_exit_accept4", "sys_exit_accept"];

/// Two fields read with one 16-byte read: where the window starts, and the
/// word of each field in it. Both must be 8-byte aligned words of it.
fn pair(btf: &Btf, st: &str, first: &str, second: &str) -> Option<(u32, u32, u32)> {
    let a = btf.member_offset(st, first)?;
    let b = btf.member_offset(st, second)?;
    let start = a.min(b);
    let word =
        |at: u32| ((at - start).is_multiple_of(8) && at - start <= 8).then_some((at - start) / 8);
    Some((start, word(a)?, word(b)?))
}

/// The walk `task->files->fdt->fd[n]->private_data->sk`, from BTF; `None`
/// when this kernel lays it out in a way the program cannot follow. `ret`
/// stays 0 (not traced) until [`ret_offset`] fills it in.
pub(super) fn accept_offsets(btf: &Btf) -> Option<AcceptConfig> {
    let (fdt_window, fdt_max_fds_word, fdt_fd_word) = pair(btf, "fdtable", "max_fds", "fd")?;
    let (socket_window, socket_file_word, socket_sk_word) = pair(btf, "socket", "file", "sk")?;
    Some(AcceptConfig {
        ret: 0,
        task_files: btf.member_offset("task_struct", "files")?,
        files_fdt: btf.member_offset("files_struct", "fdt")?,
        fdt_window,
        fdt_max_fds_word,
        fdt_fd_word,
        file_private_data: btf.member_offset("file", "private_data")?,
        socket_window,
        socket_file_word,
        socket_sk_word,
    })
}

/// Why accept(2) is not followed on this host.
#[derive(Debug, thiserror::Error)]
pub enum AcceptUnavailable {
    #[error("turned off (--no-accept)")]
    Disabled,
    #[error("this kernel's BTF lacks the file-table fields tcptrace follows")]
    Layout,
    #[error(
        "tracefs is not mounted and mounting it at /sys/kernel/tracing failed ({0}): \
         syscall tracepoints are found there"
    )]
    NoTracefs(std::io::Error),
    /// Mounted, but not readable by this process: tracefs is root's alone
    /// (mode 0700) unless mounted otherwise.
    #[error(
        "tracefs is mounted, but {path} cannot be read ({source}): \
         syscall tracepoints are found there, and reading them takes root or CAP_DAC_READ_SEARCH"
    )]
    TracefsUnreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tracefs is mounted at {0} but neither at {TRACEFS} nor at {DEBUGFS_TRACING}, \
         the places syscall tracepoints are attached through: mount it at {TRACEFS} too"
    )]
    TracefsElsewhere(PathBuf),
    #[error("reading {path}: {source} (a kernel without CONFIG_FTRACE_SYSCALLS?)")]
    Format {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no 8-byte `ret` field at an offset the program can load")]
    Field(PathBuf),
}

/// Where tracefs is usually mounted.
const TRACEFS: &str = "/sys/kernel/tracing";
/// Where debugfs mounts it by itself when it is first visited.
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// tracefs, for the syscall tracepoints' format files and attach: one of
/// the places where it is mounted already, or (only when it is mounted
/// nowhere, as on a fresh machine) mounted at its usual place. A mounted
/// tracefs that this process cannot read is said to be so, never mounted
/// over.
pub fn tracefs() -> Result<PathBuf, AcceptUnavailable> {
    // Readable by anyone, unlike tracefs itself.
    let mounted = tracefs_mounts(&crate::mounts::own_table());
    let Some(first) = mounted.first() else {
        return mount_tracefs();
    };
    // The attach (aya's) looks only at these two, in this order.
    let Some(dir) = [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .map(PathBuf::from)
        .find(|dir| mounted.contains(dir))
    else {
        return Err(AcceptUnavailable::TracefsElsewhere(first.clone()));
    };
    readable(&dir.join("events"))?;
    Ok(dir)
}

/// Lists `path`, or says why this process cannot.
fn readable(path: &Path) -> Result<(), AcceptUnavailable> {
    std::fs::read_dir(path)
        .map(drop)
        .map_err(|source| AcceptUnavailable::TracefsUnreadable {
            path: path.to_owned(),
            source,
        })
}

/// tracefs is mounted nowhere: debugfs may mount it when its `tracing`
/// directory is visited; else it is mounted at its usual place.
fn mount_tracefs() -> Result<PathBuf, AcceptUnavailable> {
    if Path::new(DEBUGFS_TRACING).join("events").is_dir() {
        return Ok(PathBuf::from(DEBUGFS_TRACING));
    }
    let dir = c"/sys/kernel/tracing";
    // SAFETY: NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            dir.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(AcceptUnavailable::NoTracefs(std::io::Error::last_os_error()));
    }
    Ok(PathBuf::from(TRACEFS))
}

/// The mount points of whole tracefs instances in a mountinfo text; a
/// bind mount of a part of one has no `events` of its own and is left out.
fn tracefs_mounts(mountinfo: &str) -> Vec<PathBuf> {
    crate::mounts::parse(mountinfo)
        .filter(|m| m.fstype == "tracefs" && m.is_whole())
        .map(|m| m.point)
        .collect()
}

/// The offset of `ret` in `sys_exit_<name>`'s record, from its format file.
pub fn ret_offset(tracefs: &Path, name: &str) -> Result<u32, AcceptUnavailable> {
    let path = tracefs.join(format!("events/syscalls/{name}/format"));
    let text = std::fs::read_to_string(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            AcceptUnavailable::TracefsUnreadable {
                path: path.clone(),
                source,
            }
        } else {
            AcceptUnavailable::Format {
                path: path.clone(),
                source,
            }
        }
    })?;
    parse_ret_offset(&text).ok_or(AcceptUnavailable::Field(path))
}

/// `field:long ret;\toffset:16;\tsize:8;\tsigned:1;` → 16 (a `long`: 8 bytes
/// on the 64-bit kernels tcptrace runs on).
fn parse_ret_offset(format: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let mut parts = line.trim().split(';').map(str::trim);
        let decl = parts.next()?.strip_prefix("field:")?;
        if decl.split_whitespace().last() != Some("ret") {
            return None;
        }
        let mut offset = None;
        let mut size = None;
        for part in parts {
            if let Some(v) = part.strip_prefix("offset:") {
                offset = v.parse::<u32>().ok();
            } else if let Some(v) = part.strip_prefix("size:") {
                size = v.parse::<u32>().ok();
            }
        }
        let offset = offset?;
        (size == Some(8) && offset > 0).then_some(offset)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_return_value_is_found_in_the_format_file() {
        let format = "name: sys_exit_accept4\nID: 2233\nformat:\n\
            \tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
            \tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
            \tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;\n\n\
            print fmt: \"0x%lx\", REC->ret\n";
        assert_eq!(parse_ret_offset(format), Some(16));
        let moved = format.replace("offset:16;", "offset:24;");
        assert_eq!(parse_ret_offset(&moved), Some(24));
        // A 4-byte `ret` is not what the program reads: refused, not guessed.
        let narrow = format.replace("size:8;\tsigned:1;\n\nprint", "size:4;\tsigned:1;\n\nprint");
        assert_eq!(parse_ret_offset(&narrow), None);
        assert_eq!(parse_ret_offset("format:\n"), None);
    }

    #[test]
    fn tracefs_is_found_wherever_it_is_mounted() {
        let mountinfo = "\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
42 22 0:13 / /sys/kernel/tracing rw,relatime shared:18 - tracefs tracefs rw
43 22 0:7 / /sys/kernel/debug rw,relatime - debugfs debugfs rw
44 43 0:13 / /sys/kernel/debug/tracing rw,relatime shared:18 master:3 - tracefs tracefs rw
51 1 0:13 / /mnt/my\\040trace\\134s rw - tracefs nodev rw,mode=755
52 1 0:13 /instances/x /mnt/one-instance rw - tracefs tracefs rw
60 1 8:1 / /srv/tracefs rw - ext4 tracefs rw
";
        assert_eq!(
            tracefs_mounts(mountinfo),
            [
                "/sys/kernel/tracing",
                "/sys/kernel/debug/tracing",
                "/mnt/my trace\\s",
            ]
            .map(PathBuf::from)
        );
        assert!(tracefs_mounts("").is_empty());
        assert!(tracefs_mounts("garbage\n1 2 3\n").is_empty());
    }
}
