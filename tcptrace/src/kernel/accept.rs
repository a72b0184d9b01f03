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
    #[error("reading {path}: {source} (a kernel without CONFIG_FTRACE_SYSCALLS?)")]
    Format {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no 8-byte `ret` field at an offset the program can load")]
    Field(PathBuf),
}

/// tracefs, mounted at its usual place if it is not mounted yet (a fresh
/// machine has neither it nor debugfs mounted).
pub fn tracefs() -> Result<PathBuf, AcceptUnavailable> {
    for dir in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(dir).join("events").is_dir() {
            return Ok(PathBuf::from(dir));
        }
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
    let dir = "/sys/kernel/tracing";
    Ok(PathBuf::from(dir))
}

/// The offset of `ret` in `sys_exit_<name>`'s record, from its format file.
pub fn ret_offset(tracefs: &Path, name: &str) -> Result<u32, AcceptUnavailable> {
    let path = tracefs.join(format!("events/syscalls/{name}/format"));
    let text = std::fs::read_to_string(&path).map_err(|source| AcceptUnavailable::Format {
        path: path.clone(),
        source,
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
}
