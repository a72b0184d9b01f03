//! The kernel's own list of TCP sockets, from socket diagnostics over
//! netlink (`NETLINK_SOCK_DIAG`, `SOCK_DIAG_BY_FAMILY` with inet_diag), and
//! the processes that hold them, from `/proc/<pid>/fd`.
//!
//! Plain data in, plain data out, and no dependency on the rest of tcptrace:
//! reconciling the tracker's view at exit, the start-up snapshot of every
//! socket with its owners, and per-namespace listeners build on it.
//!
//! - [`tcp_sockets`]: every TCP socket of both families, all states, in the
//!   calling thread's network namespace.
//! - [`tcp_sockets_all_netns`]: the same for every network namespace on the
//!   host, each socket tagged with its namespace's inode.
//! - [`socket_owners`] / [`scan_socket_owners`]: socket inode → the
//!   processes (and their fds) that hold it.
//!
//! Everything here is synchronous and blocking (a dump of 20k sockets takes
//! tens of milliseconds, as does the owner scan of as many descriptors);
//! call it from `spawn_blocking` inside an async runtime.

mod netlink;
mod netns;
mod netstat;
mod owners;
mod probes;

use std::{io, net::IpAddr, path::PathBuf};

pub use netstat::TcpExt;
pub use owners::{Owner, OwnerScan, scan_socket_owners, socket_owners};
pub use probes::NetnsProbes;

/// `AF_INET`, as found in [`DiagSocket::family`].
pub const AF_INET: u16 = libc::AF_INET as u16;
/// `AF_INET6`, as found in [`DiagSocket::family`].
pub const AF_INET6: u16 = libc::AF_INET6 as u16;

/// The kernel's TCP state numbers, as found in [`DiagSocket::state`] (the
/// kernel reports a pending connection as SYN_RECV, inode 0, and a
/// FIN_WAIT2 mini-socket as TIME_WAIT or FIN_WAIT2).
pub mod state {
    pub use tcptrace_common::tcp_state::*;

    /// The kernel's name for a state number, or `"?"`.
    pub fn name(state: u8) -> &'static str {
        crate::decode::TcpState::from_raw(state).map_or("?", crate::decode::TcpState::name)
    }
}

/// One TCP socket as the kernel's inet_diag reports it (`struct
/// inet_diag_msg`), tagged with the network namespace it was found in.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DiagSocket {
    /// [`AF_INET`] or [`AF_INET6`]. An IPv6 socket carrying IPv4 traffic
    /// reports IPv4-mapped addresses (`::ffff:a.b.c.d`), as the kernel does.
    pub family: u16,
    /// A kernel TCP state number, see [`state`]. Minisocks report
    /// `TIME_WAIT` (or `FIN_WAIT2`) and `SYN_RECV` (pending connections).
    pub state: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    /// The socket's inode (`socket:[INODE]` in `/proc/<pid>/fd`); 0 for
    /// minisocks (TIME_WAIT, pending connections) and for sockets already
    /// detached from their file (orphans closing down).
    pub inode: u64,
    /// The kernel's socket cookie (`SO_COOKIE`, `bpf_get_socket_cookie`,
    /// the `tcp:*` tracepoints' `sock_cookie`): unique across namespaces for
    /// the kernel's uptime.
    pub cookie: u64,
    /// The owner's uid, as seen from the caller's user namespace.
    pub uid: u32,
    /// Inode of the network namespace the socket lives in (what
    /// `stat -L /proc/<pid>/ns/net` shows).
    pub netns_inode: u64,
    /// The interface the socket is bound to (`SO_BINDTODEVICE`, or the scope
    /// of a link-local address); 0 for none.
    pub ifindex: u32,
    /// Listeners: connections waiting in the accept queue. Others: bytes
    /// received and not yet read.
    pub recv_queue: u32,
    /// Listeners: the backlog. Others: bytes sent and not yet acknowledged.
    pub send_queue: u32,
    /// The socket's drop counter (`sk_drops`, `SK_MEMINFO_DROPS` of
    /// `INET_DIAG_SKMEMINFO`), when it was asked for.
    pub drops: Option<u32>,
}

/// Why the kernel's socket list could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    #[error(
        "permission denied opening a NETLINK_SOCK_DIAG socket ({0}); a security policy forbids socket diagnostics"
    )]
    PermissionDenied(#[source] io::Error),
    #[error("this kernel has no TCP socket diagnostics (CONFIG_INET_DIAG): {0}")]
    NoInetDiag(#[source] io::Error),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused to list the {family} TCP sockets: {source}")]
    Kernel {
        family: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("malformed socket-diagnostics reply from the kernel: {0}")]
    Malformed(String),
    #[error("reading the network namespace {}: {source}", path.display())]
    Netns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("entering the network namespace {} (inode {inode}): {source}{}", path.display(),
        if source.raw_os_error() == Some(libc::EPERM) { "; entering other namespaces needs CAP_SYS_ADMIN" } else { "" })]
    EnterNetns {
        path: PathBuf,
        inode: u64,
        #[source]
        source: io::Error,
    },
    #[error("the network-namespace worker thread: {0}")]
    Worker(String),
}

/// The inode number of the calling thread's network namespace.
pub fn own_netns_inode() -> Result<u64, DiagError> {
    netns::current_inode()
}

/// Every TCP socket (IPv4 and IPv6, all states, minisocks included) in the
/// calling thread's network namespace.
pub fn tcp_sockets() -> Result<Vec<DiagSocket>, DiagError> {
    let netns = netns::current_inode()?;
    netlink::dump_tcp(netns)
}

/// Every TCP socket in every network namespace on the host that can be
/// found: those of the processes in `/proc` and those bind-mounted under
/// `/run/netns`. Each namespace is entered on a short-lived thread of its own
/// (the caller's thread never changes namespace); a namespace that vanishes
/// meanwhile is skipped. Needs CAP_SYS_ADMIN to enter other namespaces.
pub fn tcp_sockets_all_netns() -> Result<Vec<DiagSocket>, DiagError> {
    netns::across_all(netlink::dump_tcp)
}

/// Sockets a process can hold: every state but the kernel's mini-sockets
/// (TIME_WAIT, and pending connections: SYN_RECV / NEW_SYN_RECV). A busy
/// host has far more of those, and none has an owner.
pub const HELD_STATES: u32 =
    !((1 << state::TIME_WAIT) | (1 << state::SYN_RECV) | (1 << state::NEW_SYN_RECV));

/// Every state ([`tcp_sockets_reachable`]'s mask for all sockets).
pub const ALL_STATES: u32 = netlink::ALL_STATES;

/// The TCP sockets whose state's bit (1 << state) is in `states`, in every
/// network namespace when tcptrace may enter them, else in its own.
pub fn tcp_sockets_reachable(states: u32) -> Result<Vec<DiagSocket>, DiagError> {
    netns::across_all(move |ns| netlink::dump_tcp_states(ns, states)).or_else(|e| {
        log::debug!("listing sockets in every network namespace: {e}");
        netlink::dump_tcp_states(netns::current_inode()?, states)
    })
}

/// One network namespace's listeners, each with its drop counter, and its
/// `TcpExt` counters (`/proc/net/netstat` as seen from inside it).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetnsListeners {
    pub netns_inode: u64,
    pub listeners: Vec<DiagSocket>,
    /// `None` when the namespace's netstat could not be read.
    pub tcp_ext: Option<TcpExt>,
}
