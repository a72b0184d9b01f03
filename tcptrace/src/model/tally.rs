//! What the tracker tells the summary besides finished lives: facts about a
//! listener or a segment that belong to no life it reports (a request
//! socket that expired, a drop no socket took), and what the host's
//! counters said about listeners and namespaces (socket diagnostics and
//! `/proc/net/netstat`, sampled while tracing).

use std::{collections::BTreeMap, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::decode::{DropReason, Proc};

/// A count the tracker hands the summary as it happens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tally {
    /// A drop that no socket tcptrace tracked took.
    UnjoinedDrop(DropReason),
    /// A request socket whose SYN/ACK was retransmitted, that never became
    /// a child and whose retransmit timer ran out: the handshake expired.
    RequestExpired(ListenerRef),
}

/// The listener a count belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerRef {
    /// Its listening address (the request's local address when the
    /// listener itself was not tracked).
    pub listener: SocketAddr,
    pub netns: Option<u32>,
    pub owner: Option<Proc>,
}

/// Counts by the kernel's reason name, else by its number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DropCounts {
    /// By the kernel's name for the reason.
    pub by_name: BTreeMap<String, u64>,
    /// By number, for reasons the kernel did not name.
    pub by_code: BTreeMap<u32, u64>,
}

impl DropCounts {
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.by_code.is_empty()
    }

    pub fn add(&mut self, reason: &DropReason, n: u64) {
        match &reason.name {
            Some(name) => *self.by_name.entry(name.clone()).or_default() += n,
            None => *self.by_code.entry(reason.code).or_default() += n,
        }
    }
}

/// One sample of the host's own counters about handshakes, taken while
/// tracing (live) or read back from a recording.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSample {
    /// Monotonic time of the sample.
    pub ts_ns: u64,
    /// Every listener of every namespace reached, with its drop counter.
    pub listeners: Vec<ListenerSample>,
    /// Every namespace reached, with its TCP extended counters.
    pub netns: Vec<NetnsSample>,
}

/// A listening socket's `sk_drops` (socket diagnostics' `SK_MEMINFO_DROPS`):
/// what the kernel turned away at it — SYNs refused because the accept
/// queue was full (which make no drop event), handshake ACKs that found it
/// full (which do: TCP_LISTEN_OVERFLOW), backlog drops.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSample {
    /// The kernel's socket cookie: one listener, whatever its address.
    pub cookie: u64,
    pub netns: u32,
    pub local: SocketAddr,
    pub drops: u64,
}

/// A namespace's counters (`TcpExt` of `/proc/net/netstat`) that no socket
/// holds: SYN cookies have no request socket and make no event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsSample {
    pub netns: u32,
    /// `SyncookiesSent`: SYN/ACKs answered with a cookie.
    pub syncookies_sent: u64,
    /// `SyncookiesFailed`: ACKs whose cookie did not check out.
    pub syncookies_failed: u64,
    /// `ListenOverflows`: SYNs and handshake ACKs that met a full accept queue.
    pub listen_overflows: u64,
    /// `ListenDrops`: every segment a listener dropped.
    pub listen_drops: u64,
}
