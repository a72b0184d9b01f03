//! The mount table, `/proc/self/mountinfo` (readable by anyone, unlike
//! some of what it lists): where a filesystem such as tracefs or cgroup2
//! is mounted.

use std::path::PathBuf;

/// One line of mountinfo: `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS
/// [OPTIONAL…] - FSTYPE SOURCE SUPER_OPTIONS`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    /// The part of the filesystem mounted: `/` for the whole of it, else
    /// the path a bind mount took (as written, escaped).
    pub root: &'a str,
    pub point: PathBuf,
    pub fstype: &'a str,
}

impl Mount<'_> {
    /// The whole filesystem, not a bind mount of a part of it.
    pub fn is_whole(&self) -> bool {
        self.root == "/"
    }
}

/// The mounts a mountinfo text lists (lines that are not mountinfo are
/// skipped).
pub fn parse(mountinfo: &str) -> impl Iterator<Item = Mount<'_>> {
    mountinfo.lines().filter_map(|line| {
        let (mount, fs) = line.split_once(" - ")?;
        let mut mount = mount.split(' ');
        let (root, point) = (mount.nth(3)?, mount.next()?);
        Some(Mount {
            root,
            point: unescape(point),
            fstype: fs.split(' ').next()?,
        })
    })
}

/// This process's mount table as text (empty when it cannot be read).
pub fn own_table() -> String {
    std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default()
}

/// `\040` (space), `\011`, `\012`, `\134` (backslash): how mountinfo
/// writes those bytes of a path.
fn unescape(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match octal.and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok()) {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_line_gives_its_root_mount_point_and_type() {
        let table = "\
36 25 0:31 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw
52 1 0:13 /instances/x /mnt/my\\040trace rw - tracefs tracefs rw
garbage
";
        let mounts: Vec<_> = parse(table).collect();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[0].point, PathBuf::from("/sys/fs/cgroup"));
        assert_eq!(mounts[0].fstype, "cgroup2");
        assert!(mounts[0].is_whole());
        assert_eq!(mounts[1].point, PathBuf::from("/mnt/my trace"));
        assert!(!mounts[1].is_whole());
    }

    #[test]
    fn a_stray_backslash_is_kept_as_it_is() {
        assert_eq!(unescape("/a\\b\\04"), PathBuf::from("/a\\b\\04"));
    }
}
