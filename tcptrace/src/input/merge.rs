//! Merges the rings (one per CPU) back into one stream in time order.
//!
//! Each ring holds its CPUs' records in the order they were committed. The
//! merge looks at one record per ring, its head, and passes on the oldest
//! head. While every ring has a head that is safe: what a ring commits later
//! comes after its head. A ring with nothing to read is the question: a
//! program reads its timestamp first and commits last, and between the two
//! only an interrupt on its CPU (or a virtual CPU the hypervisor stalls) can
//! delay it; so once a ring is found empty at T, what it commits later is
//! not older than T less [`HOLD_BACK_NS`]. Heads older than that go on;
//! younger ones wait, and so does everything behind them, left in the
//! kernel's ring: the merge itself keeps one record per ring, whatever the
//! load. A record committed later still (counted as `late`) is passed on as
//! soon as it is read, out of order: never dropped.
//!
//! Within one ring the order is kept as committed: it is the order the
//! tracker has always seen on a single ring, nesting included.

use super::{Sink, put_frame};

/// How long a record is held back for other rings to commit older ones:
/// longer than a program's run (a microsecond) plus the softirq that may
/// interrupt it (the kernel ends a softirq run after 2 ms). Measured on the
/// saturated churn (2 vCPUs, about a million events a run): no late record
/// in three runs even at 0.2 ms; one in one run at 2 ms (the VM's vCPU
/// stalled, most likely).
pub const HOLD_BACK_NS: u64 = 3_000_000;

/// Where the merge reads records from: a ring, or a list in tests.
pub trait Source {
    /// Hands the next record to `f` (it is consumed either way); `None`
    /// when there is none now.
    fn next_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R>;
}

/// The merge's state between reads: each ring's head, if it has one.
#[derive(Debug)]
pub struct Merge {
    heads: Vec<Head>,
    /// The youngest record passed on while some ring was empty: one older
    /// than this, read later, is late.
    passed: u64,
    late: u64,
}

#[derive(Debug, Default)]
struct Head {
    /// Holds a record (the buffer is kept for the next one when not).
    full: bool,
    ts: u64,
    record: Vec<u8>,
}

impl Head {
    /// Keeps `record`, read at `ts`, until it may be passed on (its buffer
    /// is reused record after record).
    fn hold(&mut self, record: &[u8], ts: u64) {
        self.record.clear();
        self.record.extend_from_slice(record);
        self.ts = ts;
        self.full = true;
    }
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
            heads: (0..rings).map(|_| Head::default()).collect(),
            passed: 0,
            late: 0,
        }
    }

    /// Gives `sink`, oldest first, the records of `sources` (one per ring,
    /// in ring order) that no ring can still precede: those older than
    /// `until` when a ring is empty (`u64::MAX` once nothing more can be
    /// committed). Stops early, keeping its place, when the sink has no
    /// room.
    pub fn read<S: Source>(&mut self, sources: &mut [S], until: u64, sink: &mut impl Sink) {
        debug_assert_eq!(sources.len(), self.heads.len());
        loop {
            let mut some_empty = false;
            let mut oldest: Option<(u64, usize)> = None;
            // A handful of rings: a scan per record beats a heap's upkeep.
            for (ring, (head, source)) in self.heads.iter_mut().zip(sources.iter_mut()).enumerate()
            {
                if !head.full {
                    if !sink.has_room() {
                        return;
                    }
                    let read = source.next_with(|record| head.hold(record, timestamp(record)));
                    if read.is_none() {
                        some_empty = true;
                        continue;
                    }
                    if head.ts < self.passed {
                        self.late += 1;
                    }
                }
                // Ties go to the lower ring.
                if oldest.is_none_or(|(best, _)| head.ts < best) {
                    oldest = Some((head.ts, ring));
                }
            }
            let Some((_, ring)) = oldest else { return };
            let head = &mut self.heads[ring];
            if some_empty {
                if head.ts >= until {
                    return;
                }
                self.passed = self.passed.max(head.ts);
            }
            put_frame(sink.buf(), &head.record);
            sink.appended(head.record.len());
            head.full = false;
            self.stream(ring, &mut sources[ring], some_empty.then_some(until), sink);
        }
    }

    /// Passes on `ring`'s next records straight from the ring, without
    /// holding each as its head first, while each is older than every
    /// other ring's head (ring order breaking ties) and, when a ring was
    /// found empty, than `until`: what [`Merge::read`] would pass on next
    /// anyway. Rings found empty are not asked again meanwhile; they were
    /// asked after `until` was taken, so nothing they commit now can be
    /// older than it. The first record that may not go yet becomes the
    /// ring's head. With one CPU producing this is every record: one copy
    /// each instead of two.
    fn stream<S: Source>(
        &mut self,
        ring: usize,
        source: &mut S,
        until: Option<u64>,
        sink: &mut impl Sink,
    ) {
        let others = self
            .heads
            .iter()
            .enumerate()
            .filter(|&(i, h)| i != ring && h.full)
            .map(|(i, h)| (h.ts, i))
            .min();
        let goes_first = |ts: u64| {
            others.is_none_or(|(other, i)| ts < other || (ts == other && ring < i))
                && until.is_none_or(|until| ts < until)
        };
        let (heads, passed, late) = (&mut self.heads, &mut self.passed, &mut self.late);
        let head = &mut heads[ring];
        while sink.has_room() {
            let passed_on = source.next_with(|record| {
                let ts = timestamp(record);
                if ts < *passed {
                    *late += 1;
                }
                if goes_first(ts) {
                    if until.is_some() {
                        *passed = (*passed).max(ts);
                    }
                    put_frame(sink.buf(), record);
                    sink.appended(record.len());
                    true
                } else {
                    head.hold(record, ts);
                    false
                }
            });
            if passed_on != Some(true) {
                return;
            }
        }
    }

    /// Records read after a younger one had been passed on.
    pub fn late(&self) -> u64 {
        self.late
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use crate::input::{Collected, frames};

    impl Source for VecDeque<Vec<u8>> {
        fn next_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
            self.pop_front().map(|record| f(&record))
        }
    }

    /// A sink that is full from the start.
    struct NoRoom(Collected);

    impl Sink for NoRoom {
        fn buf(&mut self) -> &mut bytes::BytesMut {
            self.0.buf()
        }

        fn appended(&mut self, len: usize) {
            self.0.appended(len);
        }

        fn has_room(&self) -> bool {
            false
        }
    }

    fn record(ts: u64, tag: u8) -> Vec<u8> {
        let mut r = ts.to_le_bytes().to_vec();
        r.push(tag);
        r
    }

    fn rings(records: &[&[(u64, u8)]]) -> Vec<VecDeque<Vec<u8>>> {
        records
            .iter()
            .map(|ring| ring.iter().map(|&(ts, tag)| record(ts, tag)).collect())
            .collect()
    }

    fn tags(merge: &mut Merge, sources: &mut [VecDeque<Vec<u8>>], until: u64) -> Vec<u8> {
        let mut out = Collected::default();
        merge.read(sources, until, &mut out);
        let tags: Vec<u8> = frames(&out.buf).map(|r| r[8]).collect();
        assert_eq!(tags.len() as u64, out.records);
        tags
    }

    #[test]
    fn rings_interleave_by_timestamp_and_an_empty_one_holds_back_the_young() {
        let mut merge = Merge::new(2);
        let mut sources = rings(&[
            &[(10, b'a'), (30, b'c'), (50, b'e')],
            &[(20, b'b'), (40, b'd')],
        ]);
        // Ring 1 runs dry after 40: ring 0's 50 waits for the hold-back.
        assert_eq!(tags(&mut merge, &mut sources, 45), b"abcd");
        // Ring 1 now commits what it had in flight before 50.
        sources[1].push_back(record(48, b'x'));
        assert_eq!(tags(&mut merge, &mut sources, 45), b"x");
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"e");
        assert_eq!(merge.late(), 0);
    }

    #[test]
    fn while_every_ring_has_a_head_the_oldest_goes_whatever_the_hold_back() {
        let mut merge = Merge::new(2);
        let mut sources = rings(&[&[(10, b'a'), (30, b'c')], &[(20, b'b'), (40, b'd')]]);
        // 30 goes while ring 1 still has 40 ahead; then ring 0 is empty.
        assert_eq!(tags(&mut merge, &mut sources, 0), b"abc");
        assert_eq!(tags(&mut merge, &mut sources, 35), b"");
        assert_eq!(tags(&mut merge, &mut sources, 45), b"d");
    }

    #[test]
    fn a_record_older_than_one_passed_on_is_late_but_still_passed_on() {
        let mut merge = Merge::new(2);
        let mut sources = rings(&[&[(100, b'a')], &[]]);
        assert_eq!(tags(&mut merge, &mut sources, 200), b"a");
        sources[1].extend([record(50, b'b'), record(250, b'c')]);
        assert_eq!(tags(&mut merge, &mut sources, 200), b"b");
        assert_eq!(merge.late(), 1);
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"c");
    }

    #[test]
    fn a_ring_keeps_its_own_order_and_ties_go_to_the_lower_ring() {
        let mut merge = Merge::new(3);
        // A nested run committed its record before the one it interrupted.
        let mut sources = rings(&[&[(6, b's')], &[(7, b't')], &[(7, b'n'), (5, b'o')]]);
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"stno");
    }

    #[test]
    fn a_run_older_than_the_other_heads_streams_through_and_ties_still_go_to_the_lower_ring() {
        // Ring 0 streams 2 and 3 past ring 1's head 4; 5 waits.
        let mut merge = Merge::new(2);
        let mut sources = rings(&[&[(1, b'a'), (2, b'b'), (3, b'c'), (5, b'e')], &[(4, b'd')]]);
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"abcde");
        // A tie while streaming: ring 0's 4 goes before ring 1's 4 ...
        let mut merge = Merge::new(2);
        let mut sources = rings(&[&[(1, b'a'), (4, b'b')], &[(4, b'c')]]);
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"abc");
        // ... and ring 1, streaming, stops at a tie with ring 0.
        let mut merge = Merge::new(2);
        let mut sources = rings(&[&[(4, b'b')], &[(1, b'a'), (4, b'c'), (6, b'd')]]);
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"abcd");
        // With a ring empty, streaming stops at the hold-back bound.
        let mut merge = Merge::new(2);
        let mut sources = rings(&[&[(10, b'a'), (20, b'b'), (30, b'c')], &[]]);
        assert_eq!(tags(&mut merge, &mut sources, 25), b"ab");
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"c");
        assert_eq!(merge.late(), 0);
    }

    #[test]
    fn no_room_stops_the_merge_where_it_is() {
        let mut merge = Merge::new(2);
        let mut sources = rings(&[&[(1, b'a'), (3, b'c')], &[(2, b'b')]]);
        let mut out = NoRoom(Collected::default());
        merge.read(&mut sources, u64::MAX, &mut out);
        assert_eq!(out.0.records, 0);
        assert_eq!(tags(&mut merge, &mut sources, u64::MAX), b"abc");
    }

    #[test]
    fn a_short_record_sorts_first() {
        let mut merge = Merge::new(2);
        let mut sources = vec![
            VecDeque::from([record(5, b'x')]),
            VecDeque::from([b"ab".to_vec()]),
        ];
        let mut out = Collected::default();
        merge.read(&mut sources, u64::MAX, &mut out);
        let records: Vec<&[u8]> = frames(&out.buf).collect();
        assert_eq!(records, [&b"ab"[..], &record(5, b'x')]);
    }
}
