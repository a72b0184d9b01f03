//! Which processes hold which sockets, from the `socket:[INODE]` links in
//! `/proc/<pid>/fd`.

use std::{collections::HashMap, ffi::OsStr, fs, io, os::unix::ffi::OsStrExt, path::Path};

/// One open file descriptor on a socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The process (thread-group) id.
    pub pid: u32,
    /// `/proc/<pid>/comm` without its newline, as the process set it: any
    /// bytes at all (invalid UTF-8 replaced), control characters included.
    /// Escape it before printing.
    pub comm: String,
    /// The descriptor's number in that process.
    pub fd: u32,
}

/// What a scan of `/proc` found.
#[derive(Clone, Debug, Default)]
pub struct OwnerScan {
    /// Socket inode → every descriptor on it, across processes (a forked
    /// server's master and workers share their listeners), in pid order.
    pub owners: HashMap<u64, Vec<Owner>>,
    /// Processes whose descriptors were read.
    pub processes: u32,
    /// Processes that exited during the scan.
    pub vanished: u32,
    /// Processes whose descriptors could not be read (another user's, for
    /// a caller without CAP_SYS_PTRACE).
    pub unreadable: u32,
}

/// Socket inode → the processes holding it. See [`scan_socket_owners`] for
/// the counts of processes that could not be read.
pub fn socket_owners() -> HashMap<u64, Vec<Owner>> {
    scan_socket_owners().owners
}

/// Reads every process's descriptors. A process that exits or cannot be
/// read is counted and skipped: the scan itself never fails.
pub fn scan_socket_owners() -> OwnerScan {
    let mut scan = OwnerScan::default();
    let Ok(proc) = fs::read_dir("/proc") else {
        return scan;
    };
    for entry in proc.flatten() {
        let Some(pid) = parse_pid(&entry.file_name()) else {
            continue;
        };
        let dir = entry.path();
        match process(pid, &dir, &mut scan.owners) {
            Ok(()) => scan.processes += 1,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => {
                scan.vanished += 1;
            }
            Err(_) => scan.unreadable += 1,
        }
    }
    scan
}

/// Adds the sockets of one process. Nothing is added if it fails.
fn process(pid: u32, dir: &Path, owners: &mut HashMap<u64, Vec<Owner>>) -> io::Result<()> {
    let mut found: Vec<(u64, u32)> = Vec::new();
    for entry in fs::read_dir(dir.join("fd"))? {
        let entry = entry?;
        let Some(fd) = parse_pid(&entry.file_name()) else {
            continue;
        };
        // A descriptor closed meanwhile has no link any more: not a socket.
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if let Some(inode) = socket_inode(target.as_os_str()) {
            found.push((inode, fd));
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    // Read once there is something to attribute; an exited process fails
    // here and its descriptors are dropped with it.
    let comm = comm(&fs::read(dir.join("comm"))?);
    for (inode, fd) in found {
        owners.entry(inode).or_default().push(Owner {
            pid,
            comm: comm.clone(),
            fd,
        });
    }
    Ok(())
}

/// A decimal u32 file name (a pid, an fd), or None.
fn parse_pid(name: &OsStr) -> Option<u32> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    name.to_str()?.parse().ok()
}

/// The inode of an fd link `socket:[INODE]`.
pub(super) fn socket_inode(link: &OsStr) -> Option<u64> {
    let digits = link
        .as_bytes()
        .strip_prefix(b"socket:[")?
        .strip_suffix(b"]")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The contents of `/proc/<pid>/comm` without the kernel's newline.
pub(super) fn comm(raw: &[u8]) -> String {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode(OsStr::new("socket:[12345]")), Some(12345));
        assert_eq!(socket_inode(OsStr::new("socket:[0]")), Some(0));
        for bad in [
            "socket:[]",
            "socket:[12",
            "socket:12]",
            "socket:[1 2]",
            "socket:[+1]",
            "socket:[99999999999999999999999]",
            "pipe:[123]",
            "anon_inode:[eventfd]",
            "/dev/null",
            "",
        ] {
            assert_eq!(socket_inode(OsStr::new(bad)), None, "{bad:?}");
        }
        assert_eq!(
            socket_inode(OsStr::from_bytes(b"socket:[1\xff]")),
            None,
            "not UTF-8"
        );
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid(OsStr::new("1")), Some(1));
        assert_eq!(parse_pid(OsStr::new("self")), None);
        assert_eq!(parse_pid(OsStr::new("-1")), None);
        assert_eq!(parse_pid(OsStr::new("")), None);
        assert_eq!(parse_pid(OsStr::new("4294967296")), None);
    }

    #[test]
    fn comm_is_kept_raw() {
        assert_eq!(comm(b"nginx\n"), "nginx");
        assert_eq!(comm(b"a\x1b[31mb\n"), "a\x1b[31mb");
        assert_eq!(comm(b"two\n\n"), "two\n");
        assert_eq!(comm(b"\xffx\n"), "\u{fffd}x");
        assert_eq!(comm(b""), "");
    }

    #[test]
    fn this_process_owns_its_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener) as u32;
        let link = fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inode = socket_inode(link.as_os_str()).unwrap();
        let owners = socket_owners();
        let mine = owners.get(&inode).expect("our listener's inode");
        assert!(
            mine.iter()
                .any(|o| o.pid == std::process::id() && o.fd == fd),
            "{mine:?}"
        );
    }
}
