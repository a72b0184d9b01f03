//! The kernel's rings, read as one stream: one ring is read as it stands;
//! several are merged back into time order ([`Merge`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{MapData, RingBuf};
use bytes::BytesMut;

use super::{
    merge::{HOLD_BACK_NS, Merge, timestamp},
    put_frame,
};
use crate::clock::monotonic_ns;

/// Every ring the kernel program writes to, and what was read from them and
/// not yet handed on.
pub struct Rings {
    rings: Vec<RingBuf<MapData>>,
    /// `None` with a single ring: nothing to merge.
    merge: Option<Merge>,
    /// The ring that gave the most records at the last read: read last,
    /// passing straight out what nothing else can precede.
    busiest: usize,
}

impl Rings {
    pub fn new(rings: Vec<RingBuf<MapData>>) -> Rings {
        let merge = (rings.len() > 1).then(|| Merge::new(rings.len()));
        Rings {
            rings,
            merge,
            busiest: 0,
        }
    }

    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.rings.iter().map(|ring| ring.as_fd())
    }

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.rings.iter().map(|ring| ring.as_raw_fd()).collect()
    }

    /// Reads the rings while `more()` says there is room, and appends to
    /// `out`, framed ([`put_frame`]) and in time order, every record no
    /// other ring can still precede; with `flush` (the programs are
    /// detached), everything. Returns how many records it appended.
    pub fn read(&mut self, flush: bool, more: impl Fn() -> bool, out: &mut BytesMut) -> u64 {
        let Some(merge) = &mut self.merge else {
            let mut handed = 0;
            for ring in &mut self.rings {
                while more() {
                    let Some(item) = ring.next() else { break };
                    put_frame(out, &item);
                    handed += 1;
                }
            }
            return handed;
        };
        // Read before draining: whatever is committed after the drain
        // began is at most HOLD_BACK_NS older than this.
        let until = if flush {
            u64::MAX
        } else {
            monotonic_ns().saturating_sub(HOLD_BACK_NS)
        };
        // The others first, so that the busiest (the last read's) knows
        // what it may pass straight.
        let busiest = self.busiest;
        let order = (0..self.rings.len())
            .filter(|&ring| ring != busiest)
            .chain([busiest]);
        let mut most = 0;
        let mut handed = 0;
        for index in order {
            let ring = &mut self.rings[index];
            let mut straight_below = 0;
            if index == busiest {
                let (below, made_way) = merge.make_way(index, until, out);
                straight_below = below;
                handed += made_way;
            }
            let mut read = 0;
            while more() {
                let Some(item) = ring.next() else { break };
                read += 1;
                let ts = timestamp(&item);
                if ts < straight_below {
                    merge.went_straight(ts);
                    put_frame(out, &item);
                    handed += 1;
                } else {
                    // From here on this ring's records wait: its own order.
                    straight_below = 0;
                    merge.push(index, &item);
                }
            }
            if read > most {
                most = read;
                self.busiest = index;
            }
        }
        handed + merge.pop_until(until, out)
    }

    /// Records read after the merge had passed their time (handed on out of
    /// order).
    pub fn late(&self) -> u64 {
        self.merge.as_ref().map_or(0, Merge::late)
    }

    /// Records read and held back.
    pub fn waiting(&self) -> usize {
        self.merge.as_ref().map_or(0, Merge::waiting)
    }
}
