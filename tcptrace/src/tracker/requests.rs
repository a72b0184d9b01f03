//! Request sockets (a listener's half-open handshakes) whose SYN/ACK was
//! retransmitted: each waits for its child, and one whose retransmit timer
//! runs out first is counted as expired on its listener.
//!
//! Why inferred here rather than seen: the kernel removes an expired
//! request in `reqsk_timer_handler` (`inet_csk_reqsk_queue_drop_and_put`)
//! with no tracepoint on the way, no drop event (nothing is freed as a
//! segment) and no counter of its own (`TCPTimeouts` mixes it with every
//! other timeout); kprobes and fentry are not available to watch it. What
//! the kernel does show is enough: `tcp_retransmit_synack` names the
//! listener and the request's tuple at every retransmit, and a request that
//! completes becomes a child whose `LISTEN→SYN_RECV` carries the same
//! tuple. The timer's schedule is the kernel's own: after the n-th
//! retransmit the next one is due `min(1 s << n, 120 s)` later
//! (`TCP_TIMEOUT_INIT`, `TCP_RTO_MAX`), and when `tcp_synack_retries` (or
//! the listener's `TCP_SYNCNT`) is used up, the request goes at that
//! moment instead. So a request with neither a further retransmit nor a
//! child half that interval again (and a second) after it was due is gone
//! without a child. Event time drives it (the records' and the ticks'), so
//! a replay counts the same.
//!
//! Bounded: at most [`MAX_REQUESTS`] requests are followed; past that the
//! one due first is forgotten (counted in `requests_untracked`), never
//! guessed expired. A listener that closes takes its requests with it:
//! those already past due expired, the others were dropped by the close.

use std::collections::{BTreeSet, HashMap};

use super::Tuple;
use crate::{decode::Proc, model::ListenerRef};

/// Most requests followed at once.
pub(super) const MAX_REQUESTS: usize = 4096;

/// The first SYN/ACK retransmit comes 1 s after the SYN/ACK.
const TIMEOUT_INIT_NS: u64 = 1_000_000_000;
/// No retransmit interval is longer.
const RTO_MAX_NS: u64 = 120_000_000_000;
/// Beyond the kernel's due time: timers fire late on a busy host, and a
/// final ACK may be on its way.
const GRACE_NS: u64 = 1_000_000_000;

/// One request that had its SYN/ACK retransmitted.
#[derive(Clone, Debug)]
pub(super) struct Request {
    /// The listener's skaddr, as `tcp_retransmit_synack` names it.
    pub listener_sk: u64,
    /// The listener as known at the last retransmit.
    pub listener: ListenerRef,
    pub retransmits: u32,
    /// When the kernel's timer, next due, finds the retries used up.
    pub timer_ns: u64,
    /// When it counts as expired without a child or another retransmit.
    pub due_ns: u64,
}

/// For a request whose `n`-th SYN/ACK retransmit was at `ts_ns`: when the
/// kernel's timer fires next, and when the request has surely expired if
/// nothing more is seen of it by then.
pub(super) fn due_after(ts_ns: u64, n: u32) -> (u64, u64) {
    let interval = TIMEOUT_INIT_NS
        .checked_shl(n.min(16))
        .unwrap_or(RTO_MAX_NS)
        .min(RTO_MAX_NS);
    let due = ts_ns
        .saturating_add(interval + interval / 2)
        .saturating_add(GRACE_NS);
    (ts_ns.saturating_add(interval), due)
}

/// The requests followed, by tuple (local, remote), with their due times.
pub(super) struct Requests {
    map: HashMap<Tuple, Request>,
    /// (due_ns, tuple), earliest first.
    due: BTreeSet<(u64, Tuple)>,
}

impl Requests {
    pub(super) fn new() -> Requests {
        Requests {
            map: HashMap::new(),
            due: BTreeSet::new(),
        }
    }

    /// A SYN/ACK retransmit of the request `key` on `listener_sk`; returns
    /// how many retransmits it has had, and whether a request was
    /// forgotten to make room.
    pub(super) fn retransmit(
        &mut self,
        key: Tuple,
        listener_sk: u64,
        listener: ListenerRef,
        ts_ns: u64,
    ) -> (u32, bool) {
        let mut forgot = false;
        let n = match self.map.get_mut(&key) {
            Some(r) => {
                self.due.remove(&(r.due_ns, key));
                r.retransmits = r.retransmits.saturating_add(1);
                (r.timer_ns, r.due_ns) = due_after(ts_ns, r.retransmits);
                r.listener_sk = listener_sk;
                r.listener = listener;
                self.due.insert((r.due_ns, key));
                r.retransmits
            }
            None => {
                if self.map.len() >= MAX_REQUESTS
                    && let Some((_, first)) = self.due.pop_first()
                {
                    self.map.remove(&first);
                    forgot = true;
                }
                let (timer_ns, due_ns) = due_after(ts_ns, 1);
                self.map.insert(
                    key,
                    Request {
                        listener_sk,
                        listener,
                        retransmits: 1,
                        timer_ns,
                        due_ns,
                    },
                );
                self.due.insert((due_ns, key));
                1
            }
        };
        (n, forgot)
    }

    /// The request `key` became a child (or belongs to no listener): it is
    /// no longer followed; its retransmits, if it was.
    pub(super) fn remove(&mut self, key: &Tuple) -> Option<Request> {
        if self.map.is_empty() {
            return None;
        }
        let r = self.map.remove(key)?;
        self.due.remove(&(r.due_ns, *key));
        Some(r)
    }

    /// The next request past due at `now_ns`, earliest first.
    pub(super) fn pop_expired(&mut self, now_ns: u64) -> Option<Request> {
        let &(due_ns, key) = self.due.first()?;
        if due_ns > now_ns {
            return None;
        }
        self.due.pop_first();
        self.map.remove(&key)
    }

    /// The listener `listener_sk` closed at `ts_ns`: its requests go with
    /// it. Returns those whose timer had found them expired before.
    pub(super) fn listener_closed(&mut self, listener_sk: u64, ts_ns: u64) -> Vec<Request> {
        if self.map.is_empty() {
            return Vec::new();
        }
        let keys: Vec<Tuple> = self
            .map
            .iter()
            .filter(|(_, r)| r.listener_sk == listener_sk)
            .map(|(k, _)| *k)
            .collect();
        keys.iter()
            .filter_map(|k| self.remove(k))
            .filter(|r| r.timer_ns <= ts_ns)
            .collect()
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

/// The listener as the request's record names it.
pub(super) fn listener_ref(
    local: std::net::SocketAddr,
    netns: Option<u32>,
    owner: Option<Proc>,
) -> ListenerRef {
    ListenerRef {
        listener: local,
        netns,
        owner,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Tracker, TrackerOptions, fixtures::*};
    use super::*;
    use crate::{decode::Record, model::Tally};
    use std::net::SocketAddr;

    const S_: u64 = 1_000_000; // µs in a second

    fn expired(tallies: &[Tally]) -> Vec<&ListenerRef> {
        tallies
            .iter()
            .filter_map(|t| match t {
                Tally::RequestExpired(l) => Some(l),
                _ => None,
            })
            .collect()
    }

    /// `tcp_synack_retries` 1: the SYN/ACK goes again after 1 s, the
    /// request is gone at 3 s; no event says so.
    #[test]
    fn a_request_retransmitted_that_never_becomes_a_child_expires_on_its_listener() {
        let (l, ng) = (listener(), nginx());
        let req = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45126");
        let mut t = Tracker::new(TrackerOptions::default());
        t.observe(&l.by(0, &ng).st(7, 10));
        t.observe(&req.irq(S_).synack_retransmit());
        assert_eq!(t.requests.len(), 1);
        // The kernel's timer is due at 3 s; grace until 1 + 3 + 1 = 5 s.
        t.expire(us(4 * S_));
        assert!(expired(&t.take_tallies()).is_empty(), "not yet");
        t.expire(us(5 * S_) + 1);
        let tallies = t.take_tallies();
        let got = expired(&tallies);
        assert_eq!(got.len(), 1, "{tallies:?}");
        assert_eq!(
            (got[0].listener, got[0].owner),
            (addr("0.0.0.0:8099"), Some(ng))
        );
        assert_eq!(t.stats().requests_expired, 1);
        assert_eq!(t.requests.len(), 0);
        // The listener's own life still counts the retransmit.
        let lives = t.finish();
        assert_eq!(life_of(&lives, LISTENER_SK).synack_retransmits, 1);
        assert!(expired(&t.take_tallies()).is_empty(), "counted once");
    }

    #[test]
    fn each_retransmit_moves_the_deadline_and_a_child_ends_the_wait() {
        let (l, s, ng) = (listener(), server(), nginx());
        let req = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45126");
        let mut t = Tracker::new(TrackerOptions::default());
        for r in [
            l.by(0, &ng).st(7, 10),
            req.irq(S_).synack_retransmit(),
            req.irq(3 * S_).synack_retransmit(),
        ] {
            t.observe(&r);
        }
        // After the 2nd retransmit the next is due 4 s later (7 s).
        t.expire(us(6 * S_));
        assert!(expired(&t.take_tallies()).is_empty());
        t.observe(&s.irq(6 * S_ + 10).st(10, 3));
        t.observe(&s.irq(6 * S_ + 11).st(3, 1));
        t.expire(us(60 * S_));
        assert!(expired(&t.take_tallies()).is_empty(), "it became a child");
        let lives = t.finish();
        assert_eq!(life_of(&lives, SERVER_SK).synack_retransmits, 2);
    }

    #[test]
    fn a_closing_listener_takes_its_requests_counting_those_already_expired() {
        let (l, ng) = (listener(), nginx());
        let old = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45126");
        let young = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45200");
        let mut t = Tracker::new(TrackerOptions::default());
        for r in [
            l.by(0, &ng).st(7, 10),
            old.irq(S_).synack_retransmit(),
            young.irq(2 * S_).synack_retransmit(),
            // old's timer fired at 3 s; young's is due at 4 s.
            l.by(3 * S_ + 500_000, &ng).close(10, 0),
        ] {
            t.observe(&r);
        }
        let tallies = t.take_tallies();
        assert_eq!(expired(&tallies).len(), 1, "{tallies:?}");
        assert_eq!(t.requests.len(), 0, "the close took both");
        t.expire(us(100 * S_));
        assert!(expired(&t.take_tallies()).is_empty());
    }

    /// A client that gives up with an RST (SO_LINGER 0): the kernel drops
    /// the RST on the listener (NOT_SPECIFIED) and removes the request
    /// (`TcpExtEmbryonicRsts`): reset, not expired.
    #[test]
    fn a_request_the_client_resets_is_not_counted_expired() {
        let (l, ng) = (listener(), nginx());
        let req = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45126");
        let mut rst = dropped(
            S_ + 500_000,
            "127.0.0.1:45126",
            "127.0.0.1:8099",
            RST,
            (2, "NOT_SPECIFIED"),
        );
        rst.rx_sk = Some(LISTENER_SK);
        let mut t = Tracker::new(TrackerOptions::default());
        for r in [
            l.by(0, &ng).st(7, 10),
            req.irq(S_).synack_retransmit(),
            Record::Drop(rst),
        ] {
            t.observe(&r);
        }
        t.expire(us(60 * S_));
        assert!(expired(&t.take_tallies()).is_empty());
        assert_eq!(t.stats().requests_expired, 0);
    }

    #[test]
    fn a_request_of_an_untracked_listener_is_named_by_its_own_record() {
        let req = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45126").owner(&nginx());
        let mut t = Tracker::new(TrackerOptions::default());
        t.observe(&req.irq(S_).synack_retransmit());
        t.expire(us(10 * S_));
        let tallies = t.take_tallies();
        let got = expired(&tallies);
        assert_eq!(
            (got[0].listener, got[0].owner),
            (addr("127.0.0.1:8099"), Some(nginx()))
        );
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_earliest_due() {
        let mut r = Requests::new();
        let l = listener_ref(addr("0.0.0.0:80"), None, None);
        for i in 0..(MAX_REQUESTS as u64 + 10) {
            let remote = SocketAddr::new([10, 0, 1, (i / 60000) as u8].into(), (i % 60000) as u16);
            let (_, forgot) = r.retransmit((addr("10.0.0.1:80"), remote), 1, l.clone(), i);
            assert_eq!(forgot, i >= MAX_REQUESTS as u64, "{i}");
        }
        assert_eq!(r.len(), MAX_REQUESTS);
        // Backoff: 1 s after the first, 2 s after the second, capped.
        assert_eq!(due_after(0, 1).0, 2_000_000_000);
        assert_eq!(due_after(0, 2).0, 4_000_000_000);
        assert_eq!(due_after(0, 30).0, RTO_MAX_NS);
    }
}
