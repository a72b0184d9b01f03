//! Merges the rings (one per CPU) back into one stream in time order.
//!
//! Each ring holds its CPUs' records in the order they were committed. A
//! program reads its timestamp first and commits last; between the two only
//! an interrupt on its CPU (or a virtual CPU the hypervisor stalls) can
//! delay it. So once the rings have been drained,
//! every record older than the drain's start less [`HOLD_BACK_NS`] that will
//! ever be committed already has been, and can be handed on in timestamp
//! order. A record committed later still (counted as `late`) is handed on as
//! soon as it is read, out of order: never dropped.
//!
//! Within one ring the order is kept as committed: it is the order the
//! tracker has always seen on a single ring, nesting included.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};

use super::put_frame;

/// How long a record is held back for other rings to commit older ones:
/// longer than a program's run (a microsecond) plus the softirq that may
/// interrupt it (the kernel ends a softirq run after 2 ms). Measured on the
/// saturated churn (2 vCPUs, about a million events a run): no late record
/// in three runs even at 0.2 ms; one in one run at 2 ms (the VM's vCPU
/// stalled, most likely). Each millisecond held costs the reader a second
/// copy of a millisecond's records.
pub const HOLD_BACK_NS: u64 = 3_000_000;

/// Records taken from the rings and not yet handed on.
#[derive(Debug)]
pub struct Merge {
    queues: Vec<Queue>,
    /// Every record with a timestamp below this has been handed on.
    passed: u64,
    late: u64,
}

#[derive(Debug, Default)]
struct Queue {
    /// The waiting records, framed ([`put_frame`]), oldest first.
    bytes: BytesMut,
    /// Each waiting record's timestamp and framed length, oldest first.
    records: VecDeque<(u64, usize)>,
}

impl Queue {
    fn head(&self) -> Option<u64> {
        self.records.front().map(|&(ts, _)| ts)
    }
}

/// A record's timestamp: `Event::ts_ns`, its first eight bytes. A record
/// too short to have one (undecodable anyway) sorts first.
pub(super) fn timestamp(record: &[u8]) -> u64 {
    record
        .first_chunk::<8>()
        .map(|ts| u64::from_le_bytes(*ts))
        .unwrap_or(0)
}

impl Merge {
    pub fn new(rings: usize) -> Merge {
        Merge {
            queues: (0..rings).map(|_| Queue::default()).collect(),
            passed: 0,
            late: 0,
        }
    }

    /// Makes way for `ring`'s next records to go straight out, ahead of
    /// every record waiting, without waiting themselves: appends to `out`
    /// those of `ring`'s waiting records that come before every other
    /// ring's oldest and `until`, and returns the timestamp below which its
    /// next records may go straight (0 when some of its own still wait:
    /// its own order comes first). On a host where one CPU does the work,
    /// that is most records: one copy, not two.
    pub fn make_way(&mut self, ring: usize, until: u64, out: &mut BytesMut) -> (u64, u64) {
        let below = self
            .queues
            .iter()
            .enumerate()
            .filter(|&(other, _)| other != ring)
            .filter_map(|(_, queue)| queue.head())
            .fold(until, u64::min);
        // Every other ring's oldest is at or past `below`: only `ring`'s go.
        let handed = self.pop_below(below, out);
        let straight = if self.queues[ring].records.is_empty() {
            below
        } else {
            0
        };
        (straight, handed)
    }

    /// Counts a record of timestamp `ts` that went straight out.
    pub fn went_straight(&mut self, ts: u64) {
        self.check_late(ts);
    }

    fn check_late(&mut self, ts: u64) {
        if ts < self.passed {
            self.late += 1;
        }
    }

    /// Takes a record read from `ring`.
    pub fn push(&mut self, ring: usize, record: &[u8]) {
        let ts = timestamp(record);
        self.check_late(ts);
        let queue = &mut self.queues[ring];
        let before = queue.bytes.len();
        put_frame(&mut queue.bytes, record);
        queue.records.push_back((ts, queue.bytes.len() - before));
    }

    /// Appends to `out`, framed and oldest first, every waiting record with
    /// a timestamp below `until` (`u64::MAX`: all of them). Returns how many.
    ///
    /// Records go in runs: as many of one ring's as come before the other
    /// rings' oldest, in one copy (on a host where one CPU does the work,
    /// everything waiting is one run).
    pub fn pop_until(&mut self, until: u64, out: &mut BytesMut) -> u64 {
        let handed = self.pop_below(until, out);
        self.passed = self.passed.max(until);
        handed
    }

    /// [`Merge::pop_until`], without declaring the time before `until` done
    /// (what comes straight after is not late).
    fn pop_below(&mut self, until: u64, out: &mut BytesMut) -> u64 {
        let mut handed = 0;
        loop {
            // A handful of rings: a linear scan beats a heap's bookkeeping.
            // The oldest head, and the oldest of the other rings' heads
            // (ties go to the lower ring).
            let mut first: Option<(u64, usize)> = None;
            let mut second: Option<(u64, usize)> = None;
            for (ring, queue) in self.queues.iter().enumerate() {
                let Some(ts) = queue.head() else { continue };
                if first.is_none_or(|(best, _)| ts < best) {
                    second = first;
                    first = Some((ts, ring));
                } else if second.is_none_or(|(next, _)| ts < next) {
                    second = Some((ts, ring));
                }
            }
            let Some((ts, ring)) = first else { break };
            if ts >= until {
                break;
            }
            let queue = &mut self.queues[ring];
            let mut run_bytes = 0;
            let mut run = 0;
            for &(ts, len) in &queue.records {
                let other_first = second.is_some_and(|(other, other_ring)| {
                    other < ts || (other == ts && other_ring < ring)
                });
                if ts >= until || other_first {
                    break;
                }
                run_bytes += len;
                run += 1;
            }
            // At least the head, which passed both tests above.
            out.extend_from_slice(&queue.bytes[..run_bytes]);
            // O(1); the space is reused once the queue has emptied or the
            // next extend finds room at the front.
            queue.bytes.advance(run_bytes);
            queue.records.drain(..run);
            handed += run as u64;
        }
        handed
    }

    /// Records read after the merge had passed their time.
    pub fn late(&self) -> u64 {
        self.late
    }

    /// Records waiting.
    pub fn waiting(&self) -> usize {
        self.queues.iter().map(|q| q.records.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::frames;

    fn record(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = ts.to_le_bytes().to_vec();
        r.push(tag);
        r
    }

    fn tags(merge: &mut Merge, until: u64) -> Vec<u8> {
        let mut out = BytesMut::new();
        let n = merge.pop_until(until, &mut out);
        let tags: Vec<u8> = frames(&out).map(|r| r[8]).collect();
        assert_eq!(tags.len() as u64, n);
        tags
    }

    #[test]
    fn rings_interleave_by_timestamp_and_wait_for_the_hold_back() {
        let mut merge = Merge::new(2);
        for (ts, tag) in [(10, b'a'), (30, b'c'), (50, b'e')] {
            merge.push(0, &record(ts, tag));
        }
        for (ts, tag) in [(20, b'b'), (40, b'd')] {
            merge.push(1, &record(ts, tag));
        }
        assert_eq!(tags(&mut merge, 45), b"abcd");
        assert_eq!(merge.waiting(), 1);
        // Ring 1 now commits what it had in flight before 50.
        merge.push(1, &record(48, b'x'));
        assert_eq!(tags(&mut merge, u64::MAX), b"xe");
        assert_eq!(merge.late(), 0);
    }

    #[test]
    fn a_record_older_than_what_was_handed_on_is_late_but_still_handed_on() {
        let mut merge = Merge::new(2);
        merge.push(0, &record(100, b'a'));
        assert_eq!(tags(&mut merge, 200), b"a");
        merge.push(1, &record(150, b'b'));
        merge.push(1, &record(250, b'c'));
        assert_eq!(merge.late(), 1);
        assert_eq!(tags(&mut merge, 200), b"b");
        assert_eq!(tags(&mut merge, u64::MAX), b"c");
    }

    #[test]
    fn a_ring_keeps_its_own_order_and_ties_go_to_the_lower_ring() {
        let mut merge = Merge::new(3);
        // A nested run committed its record before the one it interrupted.
        merge.push(2, &record(7, b'n'));
        merge.push(2, &record(5, b'o'));
        merge.push(1, &record(7, b't'));
        merge.push(0, &record(6, b's'));
        assert_eq!(tags(&mut merge, u64::MAX), b"stno");
    }

    #[test]
    fn a_record_goes_straight_out_only_ahead_of_everything_waiting() {
        let mut merge = Merge::new(3);
        let mut out = BytesMut::new();
        assert_eq!(merge.make_way(0, 100, &mut out), (100, 0));
        merge.push(0, &record(20, b'z'));
        merge.push(1, &record(40, b'a'));
        merge.push(2, &record(60, b'b'));
        // Ring 0's own waiting record goes first; then ring 0 may pass
        // what is older than every other ring's oldest.
        assert_eq!(merge.make_way(0, 100, &mut out), (40, 1));
        assert_eq!(frames(&out).map(|r| r[8]).collect::<Vec<_>>(), b"z");
        assert_eq!(merge.make_way(0, 30, &mut out), (30, 0));
        // Ring 1's record comes before ring 2's: it makes way.
        assert_eq!(merge.make_way(1, 100, &mut out), (60, 1));
        // Ring 1 waits behind its own record when that cannot go yet.
        merge.push(1, &record(70, b'c'));
        assert_eq!(merge.make_way(1, 100, &mut out), (0, 0));
        assert_eq!(frames(&out).map(|r| r[8]).collect::<Vec<_>>(), b"za");
        assert_eq!(tags(&mut merge, 50), b"");
        // One older than what was handed on is late, straight or not.
        merge.went_straight(45);
        assert_eq!(merge.late(), 1);
        merge.went_straight(55);
        assert_eq!(merge.late(), 1);
    }

    #[test]
    fn a_short_record_sorts_first_and_space_is_reused() {
        let mut merge = Merge::new(2);
        merge.push(1, b"abc");
        let mut out = BytesMut::new();
        merge.pop_until(1, &mut out);
        assert_eq!(frames(&out).collect::<Vec<_>>(), [b"abc"]);
        for round in 0..1000u64 {
            merge.push(0, &record(round, 0));
            assert_eq!(merge.pop_until(round + 1, &mut out), 1);
        }
        assert!(merge.queues[0].bytes.capacity() < 4096);
    }
}
