//! Finding the host's network namespaces and running a query inside each.
//!
//! setns(CLONE_NEWNET) changes the namespace of the calling thread only, so
//! every namespace is entered on a thread spawned for it and ended after the
//! query: the caller's thread (a tokio worker, say) never moves.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use super::DiagError;

/// Inode of the calling thread's network namespace.
pub(super) fn current_inode() -> Result<u64, DiagError> {
    // thread-self: setns is per thread. Kernels before 3.17 lack it.
    let thread = Path::new("/proc/thread-self/ns/net");
    match fs::metadata(thread) {
        Ok(m) => Ok(m.ino()),
        Err(_) => {
            let path = Path::new("/proc/self/ns/net");
            fs::metadata(path)
                .map(|m| m.ino())
                .map_err(|source| DiagError::Netns {
                    path: path.to_owned(),
                    source,
                })
        }
    }
}

/// Namespace inode → the paths it was seen through, in the order found.
/// Several candidates, because a process may exit before we open its path.
pub(super) fn discover() -> BTreeMap<u64, Vec<PathBuf>> {
    let mut found: BTreeMap<u64, Vec<PathBuf>> = BTreeMap::new();
    let mut see = |path: PathBuf| {
        // stat follows the magic link to the nsfs inode. Processes that
        // vanished, or that we may not inspect, are simply not seen.
        if let Ok(m) = fs::metadata(&path) {
            found.entry(m.ino()).or_default().push(path);
        }
    };
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for entry in dir.flatten() {
            see(entry.path());
        }
    }
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                see(Path::new("/proc").join(name).join("ns/net"));
            }
        }
    }
    found
}

/// Opens the first of `paths` that still names namespace `inode`; `None` if
/// the namespace is gone. The open fd keeps the namespace alive from then on.
///
/// A path seen with stat but no longer openable (the process exited, or
/// changed credentials meanwhile) counts as gone: the scan is a snapshot of a
/// moving system, and one such process must not fail the whole of it.
fn open_ns(inode: u64, paths: &[PathBuf]) -> Option<File> {
    paths.iter().find_map(|path| {
        let f = File::open(path).ok()?;
        // A pid reused by a process in another namespace is not this one.
        let m = f.metadata().ok()?;
        (m.ino() == inode).then_some(f)
    })
}

/// Runs `f` on a thread of its own inside namespace `inode`, entered
/// through the first of `paths` that still names it (setns changes only the
/// calling thread's namespace, and that thread ends with `f`). `None` when
/// the namespace is gone.
pub(super) fn run_in<T: Send + 'static>(
    inode: u64,
    paths: &[PathBuf],
    f: impl FnOnce() -> Result<T, DiagError> + Send + 'static,
) -> Option<Result<T, DiagError>> {
    let ns = open_ns(inode, paths)?;
    let path = paths.first().cloned().unwrap_or_default();
    let worker = std::thread::Builder::new()
        .name("sockdiag-netns".into())
        .spawn(move || -> Result<T, DiagError> {
            // SAFETY: a valid namespace fd; affects only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(DiagError::EnterNetns {
                    path,
                    inode,
                    source: io::Error::last_os_error(),
                });
            }
            drop(ns);
            f()
        });
    Some(match worker {
        Err(e) => Err(DiagError::Worker(format!("spawning: {e}"))),
        Ok(worker) => worker
            .join()
            .unwrap_or_else(|_| Err(DiagError::Worker("it panicked".into()))),
    })
}

/// Runs `query(inode)` in every network namespace found, and concatenates
/// the results. The calling thread's own namespace is queried in place.
pub(super) fn across_all<T: Send + 'static>(
    query: impl Fn(u64) -> Result<Vec<T>, DiagError> + Copy + Send + 'static,
) -> Result<Vec<T>, DiagError> {
    let own = current_inode()?;
    let mut out = query(own)?;
    for (inode, paths) in discover() {
        if inode == own {
            continue;
        }
        if let Some(sockets) = run_in(inode, &paths, move || query(inode)) {
            out.extend(sockets?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_our_own_namespace() {
        let own = current_inode().unwrap();
        let found = discover();
        let paths = found.get(&own).expect("our namespace");
        let me = format!("/proc/{}/ns/net", std::process::id());
        assert!(paths.iter().any(|p| p == Path::new(&me)), "{paths:?}");
        let f = open_ns(own, paths).expect("openable");
        assert_eq!(f.metadata().unwrap().ino(), own);
        // A path that names another namespace (or nothing) is not opened.
        assert!(open_ns(own + 1, paths).is_none());
        assert!(open_ns(own, &[PathBuf::from("/proc/0/ns/net")]).is_none());
    }
}
