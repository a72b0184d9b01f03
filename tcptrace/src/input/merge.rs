//! Merges the rings (one per CPU) back into one stream in time order.
//!
//! Each ring holds its CPUs' records in the order they were committed. A
//! program reads its timestamp first and commits last; between the two only
//! an interrupt on its CPU can delay it. So once the rings have been drained,
//! every record older than the drain's start less [`HOLD_BACK_NS`] that will
//! ever be committed already has been, and can be handed on in timestamp
//! order. A record committed later still (counted as `late`) is handed on as
//! soon as it is read, out of order: never dropped.
//!
//! Within one ring the order is kept as committed: it is the order the
//! tracker has always seen on a single ring, nesting included.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};

/// How long a record is held back for other rings to commit older ones: far
/// longer than a program's run (a microsecond) plus the softirq that may
/// interrupt it (the kernel bounds a softirq run at 2 ms).
pub const HOLD_BACK_NS: u64 = 10_000_000;

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
    /// The waiting records' bytes, back to back, oldest first.
    bytes: BytesMut,
    /// Each waiting record's timestamp and length, oldest first.
    records: VecDeque<(u64, usize)>,
}

/// A record's timestamp: `Event::ts_ns`, its first eight bytes. A record
/// too short to have one (undecodable anyway) sorts first.
fn timestamp(record: &[u8]) -> u64 {
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

    /// Takes a record read from `ring`.
    pub fn push(&mut self, ring: usize, record: &[u8]) {
        let ts = timestamp(record);
        if ts < self.passed {
            self.late += 1;
        }
        let queue = &mut self.queues[ring];
        queue.bytes.extend_from_slice(record);
        queue.records.push_back((ts, record.len()));
    }

    /// Hands on, oldest first, every waiting record with a timestamp below
    /// `until` (`u64::MAX`: all of them). Returns how many.
    pub fn pop_until(&mut self, until: u64, mut sink: impl FnMut(&[u8])) -> u64 {
        let mut handed = 0;
        loop {
            // A handful of rings: a linear scan beats a heap's bookkeeping.
            let mut oldest: Option<(u64, usize)> = None;
            for (ring, queue) in self.queues.iter().enumerate() {
                if let Some(&(ts, _)) = queue.records.front()
                    && oldest.is_none_or(|(best, _)| ts < best)
                {
                    oldest = Some((ts, ring));
                }
            }
            let Some((ts, ring)) = oldest else { break };
            if ts >= until {
                break;
            }
            let queue = &mut self.queues[ring];
            let Some((_, len)) = queue.records.pop_front() else {
                break;
            };
            sink(&queue.bytes[..len]);
            // O(1); the space is reused once the queue has emptied or the
            // next extend finds room at the front.
            queue.bytes.advance(len);
            handed += 1;
        }
        self.passed = self.passed.max(until);
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

    fn record(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = ts.to_le_bytes().to_vec();
        r.push(tag);
        r
    }

    fn tags(merge: &mut Merge, until: u64) -> Vec<u8> {
        let mut out = Vec::new();
        merge.pop_until(until, |r| out.push(r[8]));
        out
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
    fn a_short_record_sorts_first_and_space_is_reused() {
        let mut merge = Merge::new(2);
        merge.push(1, b"abc");
        let mut out = Vec::new();
        merge.pop_until(1, |r| out.push(r.to_vec()));
        assert_eq!(out, [b"abc".to_vec()]);
        for round in 0..1000u64 {
            merge.push(0, &record(round, 0));
            assert_eq!(merge.pop_until(round + 1, |_| {}), 1);
        }
        assert!(merge.queues[0].bytes.capacity() < 4096);
    }
}
