//! `tcptrace [options] -- COMMAND [ARGS...]`: run one command and trace only
//! its sockets and its children's. The command runs in a cgroup of its own,
//! created before it starts (it moves itself in between fork and exec), so
//! the kernel's cgroup filter keeps exactly what it and anything it forks
//! open. Started through sudo, it runs as the invoking user.

use std::{
    ffi::OsString,
    os::unix::{fs::MetadataExt, process::CommandExt as _},
    path::PathBuf,
    process::{Child, Command},
};

/// The cgroup made for the command, removed when dropped (once empty).
pub struct CommandCgroup {
    dir: PathBuf,
    pub id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("running a command needs a cgroup v2 mount to keep its sockets apart (none found)")]
    NoCgroup2,
    #[error("creating the command's cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

impl CommandCgroup {
    /// A fresh cgroup under the cgroup2 root.
    pub fn create() -> Result<CommandCgroup, CommandError> {
        let root = crate::cli::cgroup2_root().ok_or(CommandError::NoCgroup2)?;
        let dir = root.join(format!("tcptrace-command-{}", std::process::id()));
        let err = |source| CommandError::Cgroup {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir(&dir).map_err(err)?;
        let id = std::fs::metadata(&dir).map_err(err)?.ino();
        Ok(CommandCgroup { dir, id })
    }
}

impl Drop for CommandCgroup {
    fn drop(&mut self) {
        // Fails while a process the command left behind still runs there.
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            log::warn!("leaving {}: {e}", self.dir.display());
        }
    }
}

/// Starts `argv` in `cgroup`, as SUDO_UID/SUDO_GID when tcptrace was started
/// through sudo.
pub fn spawn(argv: &[OsString], cgroup: &CommandCgroup) -> Result<Child, CommandError> {
    let program = argv[0].to_string_lossy().into_owned();
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    let procs = std::ffi::CString::new(
        cgroup
            .dir
            .join("cgroup.procs")
            .into_os_string()
            .into_encoded_bytes(),
    )
    .map_err(|_| CommandError::Spawn {
        program: program.clone(),
        source: std::io::Error::other("cgroup path with a NUL byte"),
    })?;
    let ids = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u32>().ok());
    let (uid, gid) = (ids("SUDO_UID"), ids("SUDO_GID"));
    // SAFETY: only async-signal-safe calls (open, write, close, setgroups,
    // setgid, setuid) between fork and exec, on memory prepared before.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            let ok = libc::write(fd, c"0".as_ptr().cast(), 1) == 1;
            libc::close(fd);
            if !ok {
                return Err(std::io::Error::last_os_error());
            }
            if let (Some(uid), Some(gid)) = (uid, gid)
                && (libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(|source| CommandError::Spawn { program, source })
}

/// The exit code a shell would give for `status`: the code, or 128 + the
/// signal that killed it.
pub fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        (None, None) => 1,
    }
}
