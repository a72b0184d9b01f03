//! Summary: the aggregation stage beside the renderers. Counts every
//! finished socket by how it opened and closed, the RSTs it sent, why it is
//! incomplete, and its handshake time, as plain data that any output can
//! read: the exit summary ([`crate::render::summary`]) words it; a metrics
//! output could export the same counts.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

use serde::{Serialize, Serializer, ser::SerializeStruct};

pub use crate::model::DropCounts;
use crate::{
    decode::{Proc, SegmentDrop},
    model::{HostSample, Incomplete, NetnsSample, Open, Role, SocketLife, Tally, Verdict},
};

/// Most listener owners counted one by one; the rest are added together.
const MAX_LISTENER_OWNERS: usize = 256;

/// Counts of every finished socket, for the end of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Socket lives reported (socketless resets included).
    pub sockets: u64,
    /// By `Open::kind()`.
    pub opens: BTreeMap<&'static str, u64>,
    /// By `Close::kind()`.
    pub closes: BTreeMap<&'static str, u64>,
    /// Every RST sent, by why the kernel sent it.
    pub resets_sent: ResetCounts,
    /// Lives reported incomplete, by reason.
    pub incomplete: BTreeMap<Incomplete, u64>,
    /// Closes made while the closing process exited, and of those, by a signal.
    pub closed_by_exit: u64,
    pub closed_by_signal: u64,
    /// Of those, by the OOM killer's SIGKILL.
    pub closed_by_oom_kill: u64,
    /// Every dropped segment (of a handshake or a close), by reason.
    pub drops: DropCounts,
    /// Of those, the drops tied to no socket tcptrace tracked, by reason.
    pub drops_unjoined: DropCounts,
    /// Handshakes failing on the server side, from the listeners reported.
    pub listeners: ListenerFailures,
    /// SYN cookies and listen overflows per network namespace (inode), from
    /// its counters: a cookie has no socket, so no listener can be named.
    pub netns: BTreeMap<u32, NetnsFailures>,
    /// Every namespace's, added up (the map above stops at the first 256).
    pub netns_total: NetnsFailures,
    #[serde(skip)]
    baselines: Baselines,
    pub handshake_active: Histogram,
    pub handshake_passive: Histogram,
}

/// RSTs sent, by the kernel's reason.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ResetCounts {
    /// By the kernel's name for the reason.
    pub by_name: BTreeMap<String, u64>,
    /// By number, for reasons the kernel did not name.
    pub by_code: BTreeMap<u32, u64>,
    /// From kernels that give no reason (before Linux 6.10).
    pub no_reason: u64,
}

impl ResetCounts {
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty() && self.by_code.is_empty() && self.no_reason == 0
    }
}

/// A listener's failed handshakes: SYN/ACKs it had to send again, requests
/// that expired without becoming a child, handshake ACKs dropped because
/// its accept queue was full, and every segment the kernel turned away at
/// it (its `sk_drops`, sampled: SYNs refused with the queue full included).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeFailures {
    pub synack_retransmits: u64,
    pub requests_expired: u64,
    pub accept_queue_overflows: u64,
    pub listen_drops: u64,
}

impl HandshakeFailures {
    fn add(&mut self, other: HandshakeFailures) {
        self.synack_retransmits += other.synack_retransmits;
        self.requests_expired += other.requests_expired;
        self.accept_queue_overflows += other.accept_queue_overflows;
        self.listen_drops += other.listen_drops;
    }
}

/// Handshake failures of every listener, in all, by owner and by listener.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListenerFailures {
    #[serde(flatten)]
    pub total: HandshakeFailures,
    /// By owner (`comm[tgid]`, raw: escape before printing; `unknown`
    /// for listeners whose owner tcptrace did not learn; `others` past
    /// the first 256 owners).
    pub by_owner: BTreeMap<String, HandshakeFailures>,
    /// By listener: `[{"listener", "netns", "owner", counts…}]` (the first
    /// 256 listeners; later ones only in the totals and by owner).
    #[serde(serialize_with = "ser_by_listener")]
    pub by_listener: BTreeMap<ListenerKey, HandshakeFailures>,
}

/// A listener, as the summary counts it: its address, namespace, owner.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ListenerKey {
    pub listener: SocketAddr,
    pub netns: Option<u32>,
    pub owner: String,
}

fn ser_by_listener<S: Serializer>(
    m: &BTreeMap<ListenerKey, HandshakeFailures>,
    s: S,
) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Entry<'a> {
        listener: String,
        netns: Option<u32>,
        owner: &'a str,
        #[serde(flatten)]
        failures: &'a HandshakeFailures,
    }
    s.collect_seq(m.iter().map(|(k, f)| Entry {
        listener: k.listener.to_string(),
        netns: k.netns,
        owner: &k.owner,
        failures: f,
    }))
}

/// A namespace's handshake counters that no socket holds, counted from
/// when tcptrace first sampled it (from 0 for namespaces made later).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetnsFailures {
    pub syncookies_sent: u64,
    pub syncookies_failed: u64,
    pub listen_overflows: u64,
    pub listen_drops: u64,
}

impl NetnsFailures {
    fn add(&mut self, other: NetnsFailures) {
        self.syncookies_sent += other.syncookies_sent;
        self.syncookies_failed += other.syncookies_failed;
        self.listen_overflows += other.listen_overflows;
        self.listen_drops += other.listen_drops;
    }
}

/// Where the host's counters stood at the last sample.
#[derive(Clone, Debug, Default)]
struct Baselines {
    sampled: bool,
    listeners: HashMap<u64, u64>,
    netns: HashMap<u32, NetnsSample>,
}

impl Summary {
    /// A dropped segment, counted once whatever socket it was tied to.
    pub fn add_drop(&mut self, d: &SegmentDrop) {
        self.drops.add(&d.reason, 1);
    }

    /// A count the tracker made that belongs to no life.
    pub fn tally(&mut self, t: &Tally) {
        match t {
            Tally::UnjoinedDrop(reason) => self.drops_unjoined.add(reason, 1),
            Tally::RequestExpired(l) => {
                let failures = HandshakeFailures {
                    requests_expired: 1,
                    ..HandshakeFailures::default()
                };
                self.add_listener_failures(l.listener, l.netns, l.owner.as_ref(), failures);
            }
        }
    }

    /// A sample of the host's counters. `listener` finds the tracked
    /// listener at a namespace and address: its address and owner (one
    /// not tracked is not counted per listener). Counts
    /// start at the first sample; a listener or namespace first seen later
    /// was made while tracing, and counts from 0.
    pub fn add_sample(
        &mut self,
        sample: &HostSample,
        listener: impl Fn(u32, SocketAddr) -> Option<(SocketAddr, Option<Proc>)>,
    ) {
        let first = !self.baselines.sampled;
        self.baselines.sampled = true;
        let mut seen = HashMap::with_capacity(sample.listeners.len());
        for l in &sample.listeners {
            let before = self.baselines.listeners.get(&l.cookie).copied();
            // Only listeners tcptrace follows (the filters kept them, and
            // their owner is known); the namespace's counters hold the rest.
            // One not followed keeps its baseline as it was: a listener
            // whose first event is still on its way counts from 0 once it
            // arrives.
            let Some((addr, owner)) = listener(l.netns, l.local) else {
                match before {
                    Some(n) => seen.insert(l.cookie, n),
                    None if first => seen.insert(l.cookie, l.drops),
                    None => None,
                };
                continue;
            };
            let before = match before {
                Some(n) => n,
                None if first => l.drops,
                None => 0,
            };
            seen.insert(l.cookie, l.drops);
            let new = l.drops.saturating_sub(before);
            if new == 0 {
                continue;
            }
            let failures = HandshakeFailures {
                listen_drops: new,
                ..HandshakeFailures::default()
            };
            self.add_listener_failures(addr, Some(l.netns), owner.as_ref(), failures);
        }
        self.baselines.listeners = seen;
        let mut seen = HashMap::with_capacity(sample.netns.len());
        for n in &sample.netns {
            let before = match self.baselines.netns.get(&n.netns) {
                Some(b) => *b,
                None if first => *n,
                None => NetnsSample::default(),
            };
            seen.insert(n.netns, *n);
            let delta = NetnsFailures {
                syncookies_sent: n.syncookies_sent.saturating_sub(before.syncookies_sent),
                syncookies_failed: n.syncookies_failed.saturating_sub(before.syncookies_failed),
                listen_overflows: n.listen_overflows.saturating_sub(before.listen_overflows),
                listen_drops: n.listen_drops.saturating_sub(before.listen_drops),
            };
            if delta == NetnsFailures::default() {
                continue;
            }
            self.netns_total.add(delta);
            if self.netns.len() >= MAX_LISTENER_OWNERS && !self.netns.contains_key(&n.netns) {
                continue;
            }
            let c = self.netns.entry(n.netns).or_default();
            c.syncookies_sent += delta.syncookies_sent;
            c.syncookies_failed += delta.syncookies_failed;
            c.listen_overflows += delta.listen_overflows;
            c.listen_drops += delta.listen_drops;
        }
        self.baselines.netns = seen;
    }

    pub fn add(&mut self, life: &SocketLife, verdict: &Verdict) {
        if life.role == Role::Listener {
            self.add_listener(life);
        }
        self.sockets += 1;
        *self.opens.entry(verdict.open.kind()).or_default() += 1;
        *self.closes.entry(verdict.close.kind()).or_default() += 1;
        for r in &life.resets_sent {
            let resets = &mut self.resets_sent;
            match &r.reason {
                Some(reason) => match &reason.name {
                    Some(name) => *resets.by_name.entry(name.clone()).or_default() += 1,
                    None => *resets.by_code.entry(reason.code).or_default() += 1,
                },
                None => resets.no_reason += 1,
            }
        }
        for &i in &verdict.incomplete {
            *self.incomplete.entry(i).or_default() += 1;
        }
        if let Some(exit) = &life.exit {
            self.closed_by_exit += 1;
            self.closed_by_signal += u64::from(exit.signal.is_some());
            self.closed_by_oom_kill += u64::from(exit.signal.as_ref().is_some_and(|s| s.oom_kill));
        }
        let histogram = match verdict.open {
            Open::Active { .. } => &mut self.handshake_active,
            Open::Passive { .. } => &mut self.handshake_passive,
            _ => return,
        };
        if let Some(ns) = verdict.open.handshake_ns() {
            histogram.record(ns);
        }
    }
}

impl Summary {
    fn add_listener(&mut self, life: &SocketLife) {
        let overflows: u64 = life
            .drop_counts
            .iter()
            .filter(|c| c.reason.is_listen_overflow())
            .map(|c| u64::from(c.count))
            .sum();
        let failures = HandshakeFailures {
            synack_retransmits: u64::from(life.synack_retransmits),
            accept_queue_overflows: overflows,
            ..HandshakeFailures::default()
        };
        if failures == HandshakeFailures::default() {
            return;
        }
        self.add_listener_failures(life.local, life.netns, life.owner.as_ref(), failures);
    }

    fn add_listener_failures(
        &mut self,
        listener: SocketAddr,
        netns: Option<u32>,
        owner: Option<&Proc>,
        failures: HandshakeFailures,
    ) {
        let l = &mut self.listeners;
        l.total.add(failures);
        let owner = match owner {
            Some(p) => format!("{}[{}]", &*p.comm, p.tgid),
            None => "unknown".to_owned(),
        };
        let key = ListenerKey {
            listener,
            netns,
            owner: owner.clone(),
        };
        if l.by_listener.len() < MAX_LISTENER_OWNERS || l.by_listener.contains_key(&key) {
            l.by_listener.entry(key).or_default().add(failures);
        }
        let owner = if l.by_owner.len() >= MAX_LISTENER_OWNERS && !l.by_owner.contains_key(&owner) {
            "others".to_owned()
        } else {
            owner
        };
        l.by_owner.entry(owner).or_default().add(failures);
    }
}

/// Nanoseconds, kept to 2 significant digits (1 %) by HdrHistogram: its
/// memory grows with the range of values seen (a few KiB for ns to hours),
/// not with their count.
#[derive(Clone, Debug)]
pub struct Histogram {
    hdr: hdrhistogram::Histogram<u64>,
    /// Exact, for "max" and to keep quantiles within what was recorded.
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            // Auto-resizing: 2 significant figures is a valid setting.
            hdr: hdrhistogram::Histogram::new(2).expect("2 significant figures are valid"),
            min: u64::MAX,
            max: 0,
        }
    }
}

/// Percentiles of a [`Histogram`], in ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Histogram {
    pub fn record(&mut self, ns: u64) {
        // It grows to fit; past what it can track at all (about 2^62 ns),
        // the value is clamped.
        if self.hdr.record(ns).is_err() {
            self.hdr.saturating_record(ns);
        }
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.hdr.len()
    }

    /// The value at quantile `q` (0..=1), within 1 %, never outside the
    /// values recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.hdr.is_empty() {
            return None;
        }
        if q >= 1.0 {
            return Some(self.max);
        }
        Some(self.hdr.value_at_quantile(q).clamp(self.min, self.max))
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        Some(Percentiles {
            count: self.count(),
            p50_ns: self.quantile(0.50)?,
            p90_ns: self.quantile(0.90)?,
            p99_ns: self.quantile(0.99)?,
            max_ns: self.max,
        })
    }
}

impl Serialize for Histogram {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.percentiles() {
            Some(p) => p.serialize(s),
            None => {
                let mut st = s.serialize_struct("Percentiles", 1)?;
                st.serialize_field("count", &0)?;
                st.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::tracker::fixtures::*;

    #[test]
    fn histogram_percentiles_are_close() {
        let mut h = Histogram::default();
        assert_eq!(h.percentiles(), None);
        for us in 1..=1000u64 {
            h.record(us * 1000);
        }
        let p = h.percentiles().unwrap();
        let near = |got: u64, want: u64| got.abs_diff(want) * 100 <= want * 2;
        assert!(near(p.p50_ns, 500_000), "{p:?}");
        assert!(near(p.p90_ns, 900_000), "{p:?}");
        assert!(near(p.p99_ns, 990_000), "{p:?}");
        assert_eq!((p.count, p.max_ns), (1000, 1_000_000));
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.percentiles().unwrap().max_ns, u64::MAX);
        assert_eq!(h.quantile(0.0), Some(0));
        assert_eq!(h.quantile(1.0), Some(u64::MAX));
    }

    #[test]
    fn counts_are_codes() {
        let mut s = Summary::default();
        for recs in [refused(), killed()] {
            for life in run(&recs) {
                s.add(&life, &classify(&life));
            }
        }
        assert_eq!(s.sockets, 5);
        assert_eq!(s.closes.get("refused"), Some(&2));
        assert_eq!(
            s.resets_sent.by_name.keys().collect::<Vec<_>>(),
            ["NO_SOCKET", "TCP_ABORT_ON_CLOSE"]
        );
        assert_eq!((s.closed_by_exit, s.closed_by_signal), (1, 1));
        assert_eq!(s.closed_by_oom_kill, 0);
        for life in run(&oom_killed()) {
            s.add(&life, &classify(&life));
        }
        assert_eq!((s.closed_by_signal, s.closed_by_oom_kill), (2, 1));
        let mut life = run(&refused()).remove(0);
        life.mark_lost_events();
        s.add(&life, &classify(&life));
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["incomplete"]["events_lost"], 1);
        assert_eq!(v["resets_sent"]["no_reason"], 0);
    }
}
