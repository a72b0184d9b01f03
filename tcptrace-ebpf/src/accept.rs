//! `accept(2)` and `accept4(2)`: which process took a socket off its
//! listener's accept queue. A listener's owner is only a guess for its
//! children: nginx's workers accept what its master listens on, and in a
//! `SO_REUSEPORT` group the kernel picks the listener. The process that
//! accepted a socket is the one that serves it.
//!
//! Syscall events are classic tracepoints (a raw tracepoint exists only for
//! every syscall at once): the program runs only for accept's exits, but
//! the kernel sends every syscall of the host through its tracing path
//! while it is attached (about 25 ns per syscall, measured in the bench);
//! `--no-accept` leaves it out.

use core::mem::MaybeUninit;

use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use tcptrace_common::{AF_INET, AF_INET6, flag, kind, oddity};

use crate::{
    OWNERS, attach_owner, cgroup_id, config, copy_task, finish_sock_event, is_tcp, new_event, odd,
    read::{self, SockFields, SockHead, read_kernel, with_sock_head},
    task_matches,
};

/// Where `ret` has been in every `sys_exit_*` record since syscall
/// tracepoints exist (after the 8-byte common header and `__syscall_nr`).
const USUAL_RET_OFFSET: u32 = 16;

/// The syscall's return value: the new fd, or a negative errno, at the
/// offset the format file gives. Where that is the usual place, a plain
/// load from the record: the program runs on every accept of the host
/// (Unix sockets', and the EAGAIN that ends each non-blocking accept loop),
/// most of which it leaves at once. Elsewhere, one helper call: a direct
/// context load needs an offset fixed at compile time (LLVM folds loads at
/// several constant offsets back into one computed address, which the
/// verifier refuses).
#[inline(always)]
fn returned(ctx: &TracePointContext) -> Option<i64> {
    let ret = config().accept.ret;
    if ret == 0 {
        return None;
    }
    if ret == USUAL_RET_OFFSET {
        // SAFETY: the record holds an 8-byte `ret` at this offset (its
        // format file says so); the verifier checks the load is in bounds.
        return Some(unsafe {
            ctx.as_ptr()
                .cast::<u8>()
                .add(USUAL_RET_OFFSET as usize)
                .cast::<i64>()
                .read()
        });
    }
    read::read_bytes::<i64>(ctx.as_ptr() as u64 + u64::from(ret))
}

/// Two words of kernel memory: two loads, or one helper call.
#[inline(always)]
fn read_pair(addr: u64) -> Option<[u64; 2]> {
    if read::direct() {
        return Some([read_kernel::<u64>(addr)?, read_kernel::<u64>(addr + 8)?]);
    }
    read::read_bytes::<[u64; 2]>(addr)
}

/// `task->files->fdt->fd[fd]`'s socket, when that file is one: six reads
/// (the task's file table, its fd array and bound, the file, its socket's
/// back-pointer and `sk`), each a load or a helper call, once per accepted
/// socket.
#[inline(always)]
fn socket_of_fd(fd: u64) -> Option<u64> {
    let a = &config().accept;
    let task = crate::context::current_task();
    let files = read_kernel::<u64>(task + u64::from(a.task_files))?;
    let fdt = read_kernel::<u64>(files + u64::from(a.files_fdt))?;
    let table = read_pair(fdt + u64::from(a.fdt_window))?;
    let max_fds = table[(a.fdt_max_fds_word & 1) as usize] as u32;
    if fd >= u64::from(max_fds) {
        return None;
    }
    let fds = table[(a.fdt_fd_word & 1) as usize];
    let file = read_kernel::<u64>(fds + fd * 8)?;
    let socket = read_kernel::<u64>(file + u64::from(a.file_private_data))?;
    let fields = read_pair(socket + u64::from(a.socket_window))?;
    // Another thread may have closed and reused the fd since accept()
    // installed it: the socket must point back at the file found.
    if fields[(a.socket_file_word & 1) as usize] != file {
        return None;
    }
    Some(fields[(a.socket_sk_word & 1) as usize])
}

/// Attached to `sys_exit_accept4` and `sys_exit_accept`.
#[tracepoint(category = "syscalls", name = "sys_exit_accept4")]
pub fn sys_exit_accept(ctx: TracePointContext) -> u32 {
    let Some(fd) = returned(&ctx) else {
        return 0;
    };
    if fd < 0 {
        return 0;
    }
    let Some(sk) = socket_of_fd(fd as u64).filter(|&sk| sk != 0) else {
        odd::oddity(oddity::ACCEPT_FD, fd as u64);
        return 0;
    };
    with_sock_head!(sk, |head| accepted(sk, head), else {
        odd::oddity(oddity::SOCK_HEAD, u64::from(kind::ACCEPT))
    });
    0
}

/// The accept event of TCP socket `sk`, from its head.
#[inline(always)]
fn accepted<F: SockFields>(sk: u64, head: SockHead<F>) {
    // Unix sockets are accepted far more often than TCP on most hosts:
    // their family, in the head already read, sends them away first.
    let family = head.family();
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    if is_tcp(&head) != Some(true) {
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let event = new_event(&mut slot, kind::ACCEPT, sk);
    head.fill_endpoints(event);
    event.aux = head.cookie();
    event.netns = head.netns();
    // The acceptor owns the socket from now on: its later events (and the
    // process filters) see it, whoever listened — unless the filters kept
    // the socket for its listener's owner and would drop it for the
    // acceptor (`--pid <master>` without `--follow`): a life is kept whole
    // or not at all. Userspace names the acceptor either way.
    event.context.cgroup_id = cgroup_id();
    let f = &config().filter;
    if f.judges_owners() {
        attach_owner(event);
        let kept_for_listener = event.flags & flag::OWNER_KNOWN != 0
            && task_matches(f, &event.owner)
            && !task_matches(f, &event.context);
        if kept_for_listener {
            finish_sock_event(event);
            return;
        }
    }
    if f.judges_owners() {
        // Without process filters userspace keeps the owner maps.
        let _ = OWNERS.insert(event.skaddr, event.context, 0);
    }
    // The owner is the acceptor: no lookup needed to say so.
    copy_task(&event.context, &mut event.owner);
    event.flags |= flag::OWNER_KNOWN;
    finish_sock_event(event);
}
