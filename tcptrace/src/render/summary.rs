//! The exit summary (stderr): event accounting, sockets, open and close
//! paths, RST reasons and handshake-time percentiles.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use serde::{Serialize, Serializer, ser::SerializeStruct};

use super::{escape, fmt_ms};
use crate::{
    classify::{RstReason, Verdict},
    counters::Counters,
    tracker::{SocketLife, TrackerStats},
};

/// Counts of every finished socket, for the end of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    /// Socket lives reported (socketless resets included).
    pub sockets: u64,
    /// By `Open::kind()`.
    pub opens: BTreeMap<&'static str, u64>,
    /// By `Close::kind()`.
    pub closes: BTreeMap<&'static str, u64>,
    /// Every RST sent, by the kernel's reason name.
    pub resets_sent: BTreeMap<String, u64>,
    /// Lives reported incomplete, by reason.
    pub incomplete: BTreeMap<&'static str, u64>,
    /// Closes made while the closing process exited, and of those, by a signal.
    pub closed_by_exit: u64,
    pub closed_by_signal: u64,
    pub handshake_active: Histogram,
    pub handshake_passive: Histogram,
}

impl Summary {
    pub fn add(&mut self, life: &SocketLife, verdict: &Verdict) {
        self.sockets += 1;
        *self.opens.entry(verdict.open.kind()).or_default() += 1;
        *self.closes.entry(verdict.close.kind()).or_default() += 1;
        for r in &life.resets_sent {
            let reason = RstReason::from_kernel(r.reason.as_ref());
            let key = reason.name.unwrap_or(reason.text);
            *self.resets_sent.entry(key).or_default() += 1;
        }
        for i in &verdict.incomplete {
            *self.incomplete.entry(i.describe()).or_default() += 1;
        }
        if let Some(exit) = &life.exit {
            self.closed_by_exit += 1;
            self.closed_by_signal += u64::from(exit.signal.is_some());
        }
        let histogram = match verdict.open.kind() {
            "active" => &mut self.handshake_active,
            "passive" => &mut self.handshake_passive,
            _ => return,
        };
        if let Some(ns) = verdict.open.handshake_ns() {
            histogram.record(ns);
        }
    }

    pub fn write(
        &self,
        out: &mut dyn Write,
        counters: &Counters,
        tracker: &TrackerStats,
    ) -> io::Result<()> {
        let c = counters;
        writeln!(out, "tcptrace summary")?;
        writeln!(
            out,
            "  events:     {} produced, {} received, {} lost, {} filtered in kernel, {} non-TCP, {} undecodable",
            c.produced, c.received, c.lost, c.filtered, c.not_tcp, c.undecodable
        )?;
        if c.missed > 0 {
            writeln!(
                out,
                "  skipped:    {} program runs skipped by the kernel (an interrupt re-entered a \
                 running program on that CPU); their events never existed",
                c.missed
            )?;
        }
        if c.recovered > 0 {
            writeln!(
                out,
                "  recovered:  {} events of runs the kernel skipped (an interrupt re-entered \
                 inet_sock_set_state), made by its second program: nothing lost",
                c.recovered
            )?;
        }
        if c.odd > 0 {
            writeln!(
                out,
                "  kernel:     {} oddities (a failed kernel read, an unknown address family, \
                 a full map): each logged, warnings above, all with RUST_LOG=tcptrace::kernel=debug",
                c.odd
            )?;
        }
        writeln!(
            out,
            "  sockets:    {} seen, {} evicted (table full), {} tracked at most, {} socketless RSTs",
            tracker.sockets_seen, tracker.evicted, tracker.peak_tracked, tracker.socketless_resets
        )?;
        if tracker.after_eviction > 0 {
            writeln!(
                out,
                "              {} later events of evicted sockets counted, not reported again \
                 (--max-sockets raises the table)",
                tracker.after_eviction
            )?;
        }
        writeln!(out, "  opens:      {}", counts(&self.opens))?;
        writeln!(out, "  closes:     {}", counts(&self.closes))?;
        if !self.resets_sent.is_empty() {
            writeln!(out, "  RST sent:   {}", counts(&self.resets_sent))?;
        }
        if self.closed_by_exit > 0 {
            writeln!(
                out,
                "  exits:      {} sockets closed by a process exit ({} killed by a signal)",
                self.closed_by_exit, self.closed_by_signal
            )?;
        }
        if !self.incomplete.is_empty() {
            writeln!(out, "  incomplete: {}", counts(&self.incomplete))?;
        }
        for (what, h) in [
            ("active ", &self.handshake_active),
            ("passive", &self.handshake_passive),
        ] {
            if let Some(p) = h.percentiles() {
                writeln!(
                    out,
                    "  handshake {what}  n={}  p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
                    p.count,
                    fmt_ms(p.p50_ns),
                    fmt_ms(p.p90_ns),
                    fmt_ms(p.p99_ns),
                    fmt_ms(p.max_ns)
                )?;
            }
        }
        if c.lost > 0 {
            writeln!(
                out,
                "  WARNING: {} events lost (ring buffer full): some sockets are incomplete; use a larger ring buffer",
                c.lost
            )?;
        }
        Ok(())
    }

    /// Everything above as one JSON object.
    pub fn to_json(&self, counters: &Counters, tracker: &TrackerStats) -> serde_json::Value {
        serde_json::json!({
            "type": "summary",
            "counters": counters,
            "tracker": tracker,
            "summary": self,
        })
    }
}

/// "active 20, passive 18" — keys escaped: reason names come from the kernel.
fn counts<K: AsRef<str>>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = map
        .iter()
        .map(|(k, n)| format!("{} {n}", escape(k.as_ref())))
        .collect();
    parts.join(", ")
}

/// Sub-buckets per power of two: values are kept to within 1/16 (~6%).
const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB as usize;

/// A log-linear histogram of nanoseconds: fixed memory however long the run.
#[derive(Clone, Debug)]
pub struct Histogram {
    buckets: Vec<u64>,
    count: u64,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: vec![0; BUCKETS],
            count: 0,
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
    fn index(v: u64) -> usize {
        if v < SUB {
            return v as usize;
        }
        let exp = 63 - v.leading_zeros(); // >= SUB_BITS
        let sub = (v >> (exp - SUB_BITS)) & (SUB - 1);
        ((exp - SUB_BITS + 1) as usize) * SUB as usize + sub as usize
    }

    /// The middle of bucket `i`.
    fn value(i: usize) -> u64 {
        let (row, sub) = ((i as u64) / SUB, (i as u64) % SUB);
        if row == 0 {
            return sub;
        }
        let shift = row - 1;
        let low = (SUB + sub) << shift;
        low + ((1u64 << shift) >> 1)
    }

    pub fn record(&mut self, ns: u64) {
        if let Some(b) = self.buckets.get_mut(Self::index(ns)) {
            *b += 1;
        }
        self.count += 1;
        self.min = self.min.min(ns);
        self.max = self.max.max(ns);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0..=1), within the bucket's precision,
    /// never outside the values recorded.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        if rank == self.count {
            return Some(self.max);
        }
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(Self::value(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn percentiles(&self) -> Option<Percentiles> {
        Some(Percentiles {
            count: self.count,
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
