//! Samples of the host's own handshake counters, taken beside the tracing:
//! what the kernel counts but shows in no event.
//!
//! - A SYN that meets a full accept queue is refused in `tcp_conn_request`
//!   and its buffer *consumed*: no drop event. `tcp_listendrop()` counts it
//!   in the listener's `sk_drops`, which socket diagnostics report as
//!   `SK_MEMINFO_DROPS`: per listener, so attributable to its owner.
//! - A SYN answered with a SYN cookie leaves no request socket, no
//!   retransmit and no event at all; only the namespace's `TcpExt`
//!   counters (`SyncookiesSent`, `SyncookiesFailed`) say it happened, so
//!   cookies are counted per network namespace, not per listener.
//!
//! Once a second a thread of its own dumps the LISTEN sockets of every
//! namespace it can enter (one inet_diag dump with `INET_DIAG_SKMEMINFO`
//! and one read of netstat per namespace, a few hundred microseconds each)
//! and hands the sample to the event loop, which gives it to the pipeline
//! (and so to a recording: replays count the same).

use std::{net::SocketAddr, time::Duration};

use tokio::sync::mpsc;

use crate::{
    model::{HostSample, ListenerSample, NetnsSample},
    sockdiag,
};

/// How often the host's counters are sampled.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// One sample now (at monotonic `ts_ns`), or the error when socket
/// diagnostics cannot be read (logged once by the caller).
pub fn sample(
    probes: &mut sockdiag::NetnsProbes,
    ts_ns: u64,
) -> Result<HostSample, sockdiag::DiagError> {
    let namespaces = probes.listeners_with_drops()?;
    Ok(to_sample(ts_ns, &namespaces))
}

/// The sample of what socket diagnostics and netstat said.
pub fn to_sample(ts_ns: u64, namespaces: &[sockdiag::NetnsListeners]) -> HostSample {
    let mut out = HostSample {
        ts_ns,
        ..HostSample::default()
    };
    for ns in namespaces {
        // Namespace inodes are 32-bit (proc inode numbers).
        let netns = ns.netns_inode as u32;
        out.listeners.extend(ns.listeners.iter().filter_map(|l| {
            Some(ListenerSample {
                cookie: l.cookie,
                netns,
                local: SocketAddr::new(l.src, l.sport),
                drops: u64::from(l.drops?),
            })
        }));
        if let Some(t) = ns.tcp_ext {
            out.netns.push(NetnsSample {
                netns,
                syncookies_sent: t.syncookies_sent,
                syncookies_failed: t.syncookies_failed,
                listen_overflows: t.listen_overflows,
                listen_drops: t.listen_drops,
            });
        }
    }
    out
}

/// Starts the sampling thread; samples arrive on the receiver (at most
/// two waiting: a slow event loop skips samples, it never queues them).
/// The thread ends when the receiver is dropped.
pub fn start(now_ns: fn() -> u64) -> mpsc::Receiver<HostSample> {
    let (tx, rx) = mpsc::channel(2);
    let spawned = std::thread::Builder::new()
        .name("tcptrace-sample".into())
        .spawn(move || {
            let mut warned = false;
            let mut probes = sockdiag::NetnsProbes::new();
            while !tx.is_closed() {
                match sample(&mut probes, now_ns()) {
                    Ok(s) => {
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(s) {
                            return;
                        }
                    }
                    Err(e) if !warned => {
                        warned = true;
                        log::warn!(
                            "sampling listeners' drop counters: {e}; SYNs refused by full \
                             accept queues and SYN cookies are not counted"
                        );
                    }
                    Err(_) => {}
                }
                std::thread::sleep(SAMPLE_INTERVAL);
            }
        });
    if let Err(e) = spawned {
        log::warn!("starting the sampling thread: {e}");
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sockdiag::{DiagSocket, NetnsListeners, TcpExt};

    #[test]
    fn listeners_without_a_drop_counter_are_left_out() {
        let l = |drops| DiagSocket {
            family: sockdiag::AF_INET,
            state: sockdiag::state::LISTEN,
            src: "127.0.0.1".parse().unwrap(),
            sport: 8099,
            dst: "0.0.0.0".parse().unwrap(),
            dport: 0,
            inode: 1,
            cookie: 77,
            uid: 0,
            netns_inode: 4026531840,
            ifindex: 0,
            recv_queue: 0,
            send_queue: 1,
            drops,
        };
        let ns = NetnsListeners {
            netns_inode: 4026531840,
            listeners: vec![l(Some(16)), l(None)],
            tcp_ext: Some(TcpExt {
                syncookies_sent: 2,
                ..TcpExt::default()
            }),
        };
        let s = to_sample(5, &[ns]);
        assert_eq!(s.listeners.len(), 1);
        assert_eq!(
            (s.listeners[0].drops, s.listeners[0].local.port()),
            (16, 8099)
        );
        assert_eq!(s.netns[0].syncookies_sent, 2);
    }
}
