//! The process's side of loading: privileges, descriptor and memory
//! limits, and handing freed start-up memory back.

use super::LoadError;

/// Capabilities from /proc/self/status (CapEff) — the kernel's own answer,
/// so a root shell with capabilities dropped is refused up front.
pub fn has_bpf_privileges() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_PERFMON: u32 = 38;
    const CAP_BPF: u32 = 39;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
    else {
        return false;
    };
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

/// Raises the soft limit on open files to the hard limit (allowed without
/// privileges): every map, program and thread takes a descriptor.
pub fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Descriptors tcptrace holds at most: one per kernel map, program, link
/// and perf event, its threads' and the socket listing's (the error text
/// in `errors.rs` says the same number).
const NEEDED_FDS: u64 = 64;

/// Refuses to start, before anything is loaded, when the descriptor limit
/// cannot reach [`NEEDED_FDS`]: failing half-way through attaching would
/// report the shortage several times over.
pub(super) fn ensure_descriptors() -> Result<(), LoadError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls with valid pointers.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= NEEDED_FDS {
            return Ok(());
        }
        if lim.rlim_max >= NEEDED_FDS {
            lim.rlim_cur = NEEDED_FDS;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                return Ok(());
            }
        }
    }
    Err(LoadError::Descriptors(std::io::Error::from_raw_os_error(
        libc::EMFILE,
    )))
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK. Newer ones do
/// not, and without CAP_SYS_RESOURCE raising it fails: not fatal.
pub(super) fn raise_memlock() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain syscall with a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Parsing the kernel's BTF (ours, then aya's inside `EbpfLoader::new`)
/// frees some 15 MB that glibc would otherwise keep for the tracer's whole
/// life; releasing it between the two also keeps the start-up peak down.
pub(super) fn release_freed_memory() {
    // SAFETY: malloc_trim only returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
}

/// Runs `load` (which makes an `EbpfLoader`) with the kernel's BTF hidden
/// where that is allowed, and returns what it returns.
///
/// `EbpfLoader::new()` parses the kernel's whole BTF (vmlinux, some 6 MB)
/// into about 24 MB of aya's structures, though tcptrace's programs carry
/// no CO-RE relocation and the loader is told `.btf(None)` at once: that
/// parse alone made tcptrace's peak RSS 29 MiB where it runs in 19 (its own
/// BTF reader peaks under 10). So the loader is made on a thread of its own
/// that first moves into a private mount namespace where
/// /sys/kernel/btf/vmlinux reads empty: aya's parse fails at once and it
/// loads without kernel BTF, as it would have anyway. The namespace ends
/// with the thread; nothing else sees it. Without CAP_SYS_ADMIN (the
/// CAP_BPF + CAP_PERFMON setup) the BTF stays visible and the peak stays.
pub(super) fn without_kernel_btf<T: Send>(load: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                if let Err(e) = hide_kernel_btf() {
                    log::debug!("loading with the kernel's BTF visible to aya: {e}");
                }
                load()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// This thread only: a private mount namespace with /dev/null bound over
/// the kernel's BTF file.
fn hide_kernel_btf() -> std::io::Result<()> {
    let check = |rc: libc::c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    // SAFETY: plain syscalls with NUL-terminated strings that outlive them.
    // unshare(CLONE_NEWNS) implies CLONE_FS: only this thread moves.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_FS))?;
        // Nothing mounted here may propagate back to the host.
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"/dev/null".as_ptr(),
            c"/sys/kernel/btf/vmlinux".as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))
    }
}
