//! One inet_diag dump per address family over a `NETLINK_SOCK_DIAG` socket.
//!
//! Message layouts come from `netlink-packet-sock-diag` (request and
//! `inet_diag_msg`) and `netlink-packet-core` (framing, `NLMSG_DONE`,
//! `NLMSG_ERROR`, attributes); the socket from `netlink-sys`. What is ours: walking a
//! multipart reply batch by batch until `NLMSG_DONE`, and turning every
//! framing or decoding problem into an error rather than a panic.

use std::{io, os::fd::AsRawFd, time::Duration};

use netlink_packet_core::{
    DecodeError, DoneBuffer, Emitable, ErrorBuffer, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE,
    NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN, NetlinkBuffer, NetlinkHeader, NetlinkMessage,
    NlasIterator, Parseable,
};
use netlink_packet_sock_diag::{
    SOCK_DIAG_BY_FAMILY, SockDiagMessage,
    constants::{INET_DIAG_SKMEMINFO, IPPROTO_TCP},
    inet::{ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_SOCK_DIAG};

use super::{AF_INET, AF_INET6, DiagError, DiagSocket};

/// Receive buffer. The kernel sizes each dump batch to the largest receive
/// buffer it has seen, capped at 32 KiB; twice that leaves room, and a
/// batch that still does not fit is reported, never silently cut.
const RECV_BUF: usize = 64 << 10;

/// A kernel that stops answering mid-dump must not hang the tracer's exit.
const RECV_TIMEOUT: Duration = Duration::from_secs(10);

/// Every state bit, NEW_SYN_RECV's (12) included, which `StateFlags` does
/// not name: pending connections are listed (as SYN_RECV, inode 0).
pub(super) const ALL_STATES: u32 = u32::MAX;

/// Every TCP socket of both families in the calling thread's namespace,
/// tagged with `netns_inode`.
pub(super) fn dump_tcp(netns_inode: u64) -> Result<Vec<DiagSocket>, DiagError> {
    dump_tcp_states(netns_inode, ALL_STATES)
}

/// The TCP sockets whose state's bit (1 << state) is in `states`.
pub(super) fn dump_tcp_states(netns_inode: u64, states: u32) -> Result<Vec<DiagSocket>, DiagError> {
    dump(netns_inode, states, ExtensionFlags::empty())
}

/// The TCP sockets in `states`, each with its drop counter
/// (`INET_DIAG_SKMEMINFO`), on a socket opened earlier with [`open`] (in the
/// namespace it is to list: a netlink socket stays in the namespace it was
/// made in).
pub(super) fn dump_tcp_meminfo_on(
    socket: &Socket,
    netns_inode: u64,
    states: u32,
) -> Result<Vec<DiagSocket>, DiagError> {
    dump_on(socket, netns_inode, states, ExtensionFlags::SKMEMINFO)
}

fn dump(
    netns_inode: u64,
    states: u32,
    extensions: ExtensionFlags,
) -> Result<Vec<DiagSocket>, DiagError> {
    dump_on(&open()?, netns_inode, states, extensions)
}

fn dump_on(
    socket: &Socket,
    netns_inode: u64,
    states: u32,
    extensions: ExtensionFlags,
) -> Result<Vec<DiagSocket>, DiagError> {
    let mut out = Vec::new();
    let mut buf = Vec::with_capacity(RECV_BUF);
    for (seq, family) in [(1, AF_INET), (2, AF_INET6)] {
        send_request(
            socket,
            request_with(seq, family, states, extensions.clone()),
        )?;
        loop {
            buf.clear();
            let n = loop {
                match socket.recv(&mut buf, libc::MSG_TRUNC) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Err(DiagError::Io {
                            what: "waiting for the kernel's socket dump (timed out)",
                            source: e,
                        });
                    }
                    Err(e) => {
                        return Err(DiagError::Io {
                            what: "receiving the kernel's socket dump",
                            source: e,
                        });
                    }
                    Ok(n) => break n,
                }
            };
            if n > buf.len() {
                return Err(DiagError::Malformed(format!(
                    "a {n}-byte batch did not fit the {}-byte receive buffer",
                    buf.len()
                )));
            }
            if n == 0 {
                return Err(DiagError::Malformed(
                    "empty datagram before NLMSG_DONE".into(),
                ));
            }
            if parse_batch(&buf[..n], seq, family, netns_inode, &mut out)? == Batch::Done {
                break;
            }
        }
    }
    Ok(out)
}

pub(super) fn open() -> Result<Socket, DiagError> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(|e| match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => DiagError::PermissionDenied(e),
        // No NETLINK_SOCK_DIAG at all (CONFIG_SOCK_DIAG unset).
        Some(libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => DiagError::NoInetDiag(e),
        _ => DiagError::Io {
            what: "opening a NETLINK_SOCK_DIAG socket",
            source: e,
        },
    })?;
    let io = |what| move |source| DiagError::Io { what, source };
    socket
        .bind_auto()
        .map_err(io("binding the NETLINK_SOCK_DIAG socket"))?;
    // Only the kernel (port 0) may talk to this socket.
    socket
        .connect(&SocketAddr::new(0, 0))
        .map_err(io("connecting the NETLINK_SOCK_DIAG socket to the kernel"))?;
    set_recv_timeout(&socket, RECV_TIMEOUT)
        .map_err(io("setting the NETLINK_SOCK_DIAG socket's receive timeout"))?;
    Ok(socket)
}

fn set_recv_timeout(socket: &Socket, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: a valid fd and a timeval that outlives the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The bytes of a dump request for the TCP sockets of `family` whose state
/// is in `states`.
#[cfg(test)]
pub(super) fn request(seq: u32, family: u16, states: u32) -> Vec<u8> {
    request_with(seq, family, states, ExtensionFlags::empty())
}

/// [`request`], asking for the `extensions` attributes too.
pub(super) fn request_with(
    seq: u32,
    family: u16,
    states: u32,
    extensions: ExtensionFlags,
) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = seq;
    let (family, socket_id) = if family == AF_INET6 {
        (AF_INET6 as u8, SocketId::new_v6())
    } else {
        (AF_INET as u8, SocketId::new_v4())
    };
    let mut message = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions,
            states: StateFlags::from_bits_retain(states),
            socket_id,
        })
        .into(),
    );
    message.finalize();
    let mut buf = vec![0; message.buffer_len()];
    message.serialize(&mut buf);
    buf
}

fn send_request(socket: &Socket, buf: Vec<u8>) -> Result<(), DiagError> {
    let sent = socket.send(&buf, 0).map_err(|source| DiagError::Io {
        what: "sending the socket-dump request",
        source,
    })?;
    if sent != buf.len() {
        return Err(DiagError::Io {
            what: "sending the socket-dump request",
            source: io::Error::other(format!("sent {sent} of {} bytes", buf.len())),
        });
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Batch {
    /// The dump goes on in the next datagram.
    More,
    /// `NLMSG_DONE` seen.
    Done,
}

fn family_name(family: u16) -> &'static str {
    if family == AF_INET6 { "IPv6" } else { "IPv4" }
}

/// Turns an errno the kernel sent back into an error.
fn kernel_error(family: u16, code: i32) -> DiagError {
    let source = io::Error::from_raw_os_error(code);
    match code {
        // No inet_diag (ENOENT: no handler for the family or for TCP, even
        // after trying to load the module), or a kernel that does not
        // understand the request.
        libc::ENOENT | libc::EINVAL | libc::EPROTONOSUPPORT | libc::EOPNOTSUPP => {
            DiagError::NoInetDiag(source)
        }
        _ => DiagError::Kernel {
            family: family_name(family),
            source,
        },
    }
}

/// A netlink error code is a negated errno; anything else is malformed.
fn errno_of(code: i32) -> Result<i32, DiagError> {
    match code.checked_neg() {
        Some(errno) if errno > 0 => Ok(errno),
        _ => Err(DiagError::Malformed(format!("error code {code}"))),
    }
}

/// Parses one received datagram of the dump for `seq`, appending the
/// sockets it holds to `out`.
///
/// Framing and the fixed `inet_diag_msg` come from the crates' buffer types;
/// the attributes after it are checked for framing but not decoded (none are
/// requested, and decoding them all, as `NetlinkMessage::deserialize` would,
/// costs two allocations per socket: several times the kernel's own time).
pub(super) fn parse_batch(
    mut buf: &[u8],
    seq: u32,
    family: u16,
    netns_inode: u64,
    out: &mut Vec<DiagSocket>,
) -> Result<Batch, DiagError> {
    let malformed = |e: DecodeError| DiagError::Malformed(e.to_string());
    while !buf.is_empty() {
        // Checks 16 <= length <= buf.len().
        let message = NetlinkBuffer::new_checked(buf).map_err(malformed)?;
        if message.sequence_number() != seq {
            return Err(DiagError::Malformed(format!(
                "a reply to request {} while reading request {seq}",
                message.sequence_number()
            )));
        }
        let payload = message.payload();
        match message.message_type() {
            SOCK_DIAG_BY_FAMILY => {
                let header = InetResponseHeader::parse(payload).map_err(malformed)?;
                let attributes = payload.get(header.buffer_len()..).unwrap_or_default();
                let mut drops = None;
                for attribute in NlasIterator::new(attributes) {
                    let attribute = attribute.map_err(malformed)?;
                    if attribute.kind() == INET_DIAG_SKMEMINFO {
                        drops = meminfo_drops(attribute.value());
                    }
                }
                let mut socket = to_socket(&header, netns_inode)?;
                socket.drops = drops;
                out.push(socket);
            }
            NLMSG_DONE => {
                let code = DoneBuffer::new_checked(payload).map_err(malformed)?.code();
                // A dump that failed part-way ends with a negative errno.
                if code != 0 {
                    return Err(kernel_error(family, errno_of(code)?));
                }
                return Ok(Batch::Done);
            }
            NLMSG_ERROR => {
                let error = ErrorBuffer::new_checked(payload).map_err(malformed)?;
                // None: an acknowledgement. A dump is not acknowledged, but
                // an ACK is harmless.
                if let Some(code) = error.code() {
                    return Err(kernel_error(family, errno_of(code.get())?));
                }
            }
            NLMSG_NOOP => {}
            NLMSG_OVERRUN => return Err(DiagError::Malformed("NLMSG_OVERRUN".into())),
            other => {
                return Err(DiagError::Malformed(format!(
                    "message type {other} in an inet_diag dump"
                )));
            }
        }
        // Messages are 4-byte aligned within a datagram; the last one may
        // come without its padding.
        let next = (message.length() as usize)
            .next_multiple_of(4)
            .min(buf.len());
        buf = &buf[next..];
    }
    Ok(Batch::More)
}

fn to_socket(header: &InetResponseHeader, netns_inode: u64) -> Result<DiagSocket, DiagError> {
    let id = &header.socket_id;
    let family = match header.family {
        f if u16::from(f) == AF_INET => AF_INET,
        f if u16::from(f) == AF_INET6 => AF_INET6,
        f => return Err(DiagError::Malformed(format!("address family {f}"))),
    };
    Ok(DiagSocket {
        family,
        state: header.state,
        src: id.source_address,
        sport: id.source_port,
        dst: id.destination_address,
        dport: id.destination_port,
        inode: u64::from(header.inode),
        cookie: cookie(id.cookie),
        uid: header.uid,
        netns_inode,
        ifindex: id.interface_id,
        recv_queue: header.recv_queue,
        send_queue: header.send_queue,
        drops: None,
    })
}

/// `SK_MEMINFO_DROPS` of an `INET_DIAG_SKMEMINFO` attribute (an array of
/// host-order u32s, indexed by the UAPI's `SK_MEMINFO_*`).
pub(super) fn meminfo_drops(value: &[u8]) -> Option<u32> {
    let at = usize::try_from(libc::SK_MEMINFO_DROPS).ok()? * 4;
    let raw = value.get(at..at + 4)?;
    Some(u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]))
}

/// `idiag_cookie` is two host-order u32s, low half first
/// (`sock_diag_save_cookie`).
pub(super) fn cookie(raw: [u8; 8]) -> u64 {
    let lo = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
    let hi = u32::from_ne_bytes([raw[4], raw[5], raw[6], raw[7]]);
    u64::from(hi) << 32 | u64::from(lo)
}

#[cfg(test)]
mod tests;
