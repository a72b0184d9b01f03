//! What a person recognises in a process's cgroup: its systemd unit
//! (`nginx.service`) or its container (docker, containerd, CRI-O, podman
//! naming). The kernel hands tcptrace a cgroup v2 id (the inode of the
//! cgroup's directory); this maps ids to paths by walking the cgroup2 tree,
//! cached, and re-walked on a miss at most once a second, so a busy host
//! never pays a filesystem walk per event.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use serde::Serialize;

/// Most cgroup directories walked (a container host has thousands).
const MAX_DIRS: usize = 100_000;
/// A miss re-walks the tree at most this often.
pub const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// The unit and container a cgroup path names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Workload {
    /// The innermost systemd unit: `nginx.service`, `session-3.scope`.
    pub unit: Option<String>,
    /// A container id (64 hex digits), from the runtimes' cgroup names.
    pub container: Option<String>,
}

impl Workload {
    pub fn is_empty(&self) -> bool {
        self.unit.is_none() && self.container.is_none()
    }
}

/// Reads a cgroup path (relative to the cgroup2 root).
pub fn workload_of(path: &str) -> Workload {
    let mut w = Workload::default();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        if let Some(id) = container_id(part) {
            w.container = Some(id.to_owned());
        } else if [".service", ".scope", ".socket", ".mount", ".swap"]
            .iter()
            .any(|s| part.ends_with(s))
        {
            w.unit = Some(part.to_owned());
        }
    }
    // A container's own scope (docker-<id>.scope) is not a unit to show.
    if w.container.is_some() && w.unit.as_deref().is_some_and(|u| container_id(u).is_some()) {
        w.unit = None;
    }
    w
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
/// `libpod-<id>.scope`, or a bare `<id>` directory (cgroupfs drivers).
fn container_id(part: &str) -> Option<&str> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    let id = [
        "docker-",
        "cri-containerd-",
        "crio-",
        "libpod-",
        "containerd-",
    ]
    .iter()
    .find_map(|p| stem.strip_prefix(p))
    .unwrap_or(stem);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// cgroup id → workload, cached.
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, Workload>,
    last_scan: Option<Instant>,
}

impl CgroupNames {
    pub fn new() -> CgroupNames {
        CgroupNames::with_root(crate::cli::cgroup2_root())
    }

    pub fn with_root(root: Option<PathBuf>) -> CgroupNames {
        CgroupNames {
            root,
            by_id: HashMap::new(),
            last_scan: None,
        }
    }

    /// The workload of cgroup `id`, when it names one.
    pub fn resolve(&mut self, id: u64) -> Option<&Workload> {
        if id == 0 {
            return None;
        }
        if !self.by_id.contains_key(&id)
            && self.last_scan.is_none_or(|t| t.elapsed() >= RESCAN_EVERY)
        {
            self.rescan();
        }
        self.by_id.get(&id).filter(|w| !w.is_empty())
    }

    /// Was cgroup `id` found (named or not)?
    pub fn knows(&self, id: u64) -> bool {
        self.by_id.contains_key(&id)
    }

    fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        self.by_id.clear();
        let mut stack = vec![root.clone()];
        let mut dirs = 0;
        while let Some(dir) = stack.pop() {
            dirs += 1;
            if dirs > MAX_DIRS {
                break;
            }
            if let Ok(meta) = std::fs::metadata(&dir) {
                let rel = relative(&root, &dir);
                self.by_id.insert(meta.ino(), workload_of(&rel));
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(entry.path());
                }
            }
        }
    }
}

impl Default for CgroupNames {
    fn default() -> Self {
        CgroupNames::new()
    }
}

fn relative(root: &Path, dir: &Path) -> String {
    dir.strip_prefix(root)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f2a1b9c0d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    #[test]
    fn units_and_containers_from_every_common_naming() {
        let unit = |p: &str| workload_of(p).unit;
        let container = |p: &str| workload_of(p).container;
        assert_eq!(
            unit("system.slice/nginx.service").as_deref(),
            Some("nginx.service")
        );
        assert_eq!(
            unit("user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        for path in [
            format!("system.slice/docker-{ID}.scope"),
            format!("kubepods.slice/kubepods-burstable.slice/cri-containerd-{ID}.scope"),
            format!("kubepods.slice/crio-{ID}.scope"),
            format!("machine.slice/libpod-{ID}.scope"),
            format!("docker/{ID}"),
        ] {
            assert_eq!(container(&path).as_deref(), Some(ID), "{path}");
            assert_eq!(unit(&path), None, "{path}");
        }
        // A service inside a container (systemd in the container).
        let w = workload_of(&format!(
            "system.slice/docker-{ID}.scope/system.slice/redis.service"
        ));
        assert_eq!(
            (w.unit.as_deref(), w.container.as_deref()),
            (Some("redis.service"), Some(ID))
        );
        assert!(workload_of("").is_empty());
        assert!(workload_of("user.slice").is_empty());
        // Not 64 hex digits: not a container.
        assert_eq!(container("docker-abc.scope"), None);
    }

    #[test]
    fn ids_resolve_through_the_cgroup_tree_and_misses_are_rate_limited() {
        let root = std::env::temp_dir().join(format!("tcptrace-cg-{}", std::process::id()));
        let svc = root.join("system.slice/tt-web.service");
        std::fs::create_dir_all(&svc).unwrap();
        let id = std::fs::metadata(&svc).unwrap().ino();
        let mut names = CgroupNames::with_root(Some(root.clone()));
        assert_eq!(
            names.resolve(id).and_then(|w| w.unit.clone()).as_deref(),
            Some("tt-web.service")
        );
        // A new directory right after a scan: not seen until a second passed.
        let late = root.join(format!("system.slice/docker-{ID}.scope"));
        std::fs::create_dir_all(&late).unwrap();
        let late_id = std::fs::metadata(&late).unwrap().ino();
        assert_eq!(names.resolve(late_id), None);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
