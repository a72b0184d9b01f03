//! What the classifier made of a life: how it opened and closed, as codes
//! and fields (the JSON schema is in [`crate::classify`]). Words for them
//! are the renderers' business ([`crate::render::words`]).

use std::net::SocketAddr;

use serde::Serialize;

use super::life::ser_opt_display;
use crate::decode::{DropReason, ResetReason, TcpState};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub open: Open,
    pub close: Close,
    /// Why the account may be partial; empty when complete.
    pub incomplete: Vec<Incomplete>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Open {
    /// Client 3-way: CLOSE→SYN_SENT→ESTABLISHED.
    Active {
        established: bool,
        /// SYN_SENT→ESTABLISHED.
        handshake_ns: Option<u64>,
    },
    /// Server 3-way: LISTEN→SYN_RECV→ESTABLISHED.
    Passive {
        established: bool,
        handshake_ns: Option<u64>,
        #[serde(serialize_with = "ser_opt_display")]
        listener: Option<SocketAddr>,
    },
    Listen,
    /// An RST sent with no socket: nothing was opened.
    NoSocket,
    /// Tracing began mid-life.
    Unknown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Client,
    Server,
}

/// Why the kernel sent an RST, as it said it: both `None` before Linux 6.10
/// (no `reason` field); `name` is `None` for a code this kernel did not name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RstReason {
    pub code: Option<u32>,
    pub name: Option<String>,
}

impl RstReason {
    pub fn from_kernel(reason: Option<&ResetReason>) -> RstReason {
        RstReason {
            code: reason.map(|r| r.code),
            name: reason.and_then(|r| r.name.clone()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Close {
    /// We sent FIN first: ESTABLISHED→FIN_WAIT1→FIN_WAIT2→CLOSE.
    Active {
        time_wait: bool,
    },
    /// The peer's FIN first: ESTABLISHED→CLOSE_WAIT→LAST_ACK→CLOSE.
    Passive,
    /// FIN_WAIT1→CLOSING→CLOSE.
    Simultaneous,
    /// Client: SYN_SENT→CLOSE on an RST (`reason`: the peer's, when seen
    /// locally). Server: an RST sent with no socket.
    Refused {
        side: Side,
        reason: Option<RstReason>,
    },
    /// The peer's RST, in the state the socket was in when it arrived.
    ResetReceived {
        state: Option<TcpState>,
    },
    /// We sent an RST, in the state before the close.
    ResetSent {
        state: Option<TcpState>,
        reason: RstReason,
    },
    /// SYN_SENT→CLOSE with no RST, after SYN retransmits.
    HandshakeTimeout {
        syn_retransmits: u32,
        /// Its SYNs that never left this host.
        syns_dropped: Option<LocalDrops>,
    },
    /// SYN_SENT→CLOSE with neither RST nor retransmit (e.g. an ICMP error).
    HandshakeFailed,
    /// The application closed a socket still connecting.
    Aborted,
    /// A listener closed.
    StoppedListening,
    StillOpen {
        state: Option<TcpState>,
    },
    /// We sent FIN, it was acknowledged, the peer never sent its own: the
    /// orphan was handed to a FIN_WAIT2 mini-socket (kept for
    /// tcp_fin_timeout) while the peer may still hold its end (CLOSE_WAIT).
    PeerNeverClosed,
    /// An RST sent with no socket for a segment that was not a SYN: a late
    /// segment of a connection this host no longer has (nothing refused).
    NoSocketReset {
        /// The answered segment's TCP flags.
        segment_flags: u8,
    },
    /// Gone from the kernel at exit, its closing transitions unseen; the
    /// last state tcptrace saw.
    ClosedUnseen {
        state: Option<TcpState>,
    },
    Unknown,
}

/// Segments of a socket the kernel dropped on this host, and why (the
/// first one's reason).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LocalDrops {
    pub count: u32,
    pub reason: DropReason,
}

/// Ordered, so that counts of them keep a stable order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Incomplete {
    StartedMidLife,
    Evicted,
    EventsLost,
    /// A transition did not follow from the previous state.
    Gap,
}

impl Open {
    /// The JSON `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Open::Active { .. } => "active",
            Open::Passive { .. } => "passive",
            Open::Listen => "listen",
            Open::NoSocket => "no_socket",
            Open::Unknown => "unknown",
        }
    }

    pub fn handshake_ns(&self) -> Option<u64> {
        match self {
            Open::Active { handshake_ns, .. } | Open::Passive { handshake_ns, .. } => *handshake_ns,
            _ => None,
        }
    }
}

impl Close {
    /// The JSON `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Close::Active { .. } => "active",
            Close::Passive => "passive",
            Close::Simultaneous => "simultaneous",
            Close::Refused { .. } => "refused",
            Close::ResetReceived { .. } => "reset_received",
            Close::ResetSent { .. } => "reset_sent",
            Close::HandshakeTimeout { .. } => "handshake_timeout",
            Close::HandshakeFailed => "handshake_failed",
            Close::Aborted => "aborted",
            Close::StoppedListening => "stopped_listening",
            Close::StillOpen { .. } => "still_open",
            Close::ClosedUnseen { .. } => "closed_unseen",
            Close::NoSocketReset { .. } => "no_socket_reset",
            Close::PeerNeverClosed => "peer_never_closed",
            Close::Unknown => "unknown",
        }
    }
}

impl Incomplete {
    /// The JSON code.
    pub fn code(self) -> &'static str {
        match self {
            Incomplete::StartedMidLife => "started_mid_life",
            Incomplete::Evicted => "evicted",
            Incomplete::EventsLost => "events_lost",
            Incomplete::Gap => "gap",
        }
    }
}
