//! Summary: the aggregation stage beside the renderers. Counts every
//! finished socket by how it opened and closed, the RSTs it sent, why it is
//! incomplete, and its handshake time, as plain data that any output can
//! read: the exit summary ([`crate::render::summary`]) words it; a metrics
//! output could export the same counts.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer, ser::SerializeStruct};

use crate::{
    decode::SegmentDrop,
    model::{Incomplete, Open, Role, SocketLife, Verdict},
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
    /// Handshakes failing on the server side, from the listeners reported.
    pub listeners: ListenerFailures,
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

/// Dropped segments, by the kernel's reason.
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
}

/// A listener's failed handshakes: SYN/ACKs it had to send again, and
/// handshake ACKs dropped because its accept queue was full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HandshakeFailures {
    pub synack_retransmits: u64,
    pub accept_queue_overflows: u64,
}

impl HandshakeFailures {
    fn add(&mut self, other: HandshakeFailures) {
        self.synack_retransmits += other.synack_retransmits;
        self.accept_queue_overflows += other.accept_queue_overflows;
    }
}

/// Handshake failures of every listener reported, in all and by owner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListenerFailures {
    #[serde(flatten)]
    pub total: HandshakeFailures,
    /// By owner (`comm[tgid]`, raw: escape before printing; `unknown`
    /// for listeners whose owner tcptrace did not learn; `others` past
    /// the first 256 owners).
    pub by_owner: BTreeMap<String, HandshakeFailures>,
}

impl Summary {
    /// A dropped segment, counted once whatever socket it was tied to.
    pub fn add_drop(&mut self, d: &SegmentDrop) {
        match &d.reason.name {
            Some(name) => *self.drops.by_name.entry(name.clone()).or_default() += 1,
            None => *self.drops.by_code.entry(d.reason.code).or_default() += 1,
        }
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
        };
        if failures == HandshakeFailures::default() {
            return;
        }
        let l = &mut self.listeners;
        l.total.add(failures);
        let mut owner = match &life.owner {
            Some(p) => format!("{}[{}]", &*p.comm, p.tgid),
            None => "unknown".to_owned(),
        };
        if l.by_owner.len() >= MAX_LISTENER_OWNERS && !l.by_owner.contains_key(&owner) {
            owner = "others".to_owned();
        }
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
