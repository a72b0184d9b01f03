//! The kernel's rings, read as one stream: one ring is read as it stands;
//! several are merged back into time order ([`Merge`]).

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};

use aya::maps::{MapData, RingBuf};

use super::merge::{HOLD_BACK_NS, Merge};
use crate::clock::monotonic_ns;

/// Every ring the kernel program writes to, and what was read from them and
/// not yet handed on.
pub struct Rings {
    rings: Vec<RingBuf<MapData>>,
    /// `None` with a single ring: nothing to merge.
    merge: Option<Merge>,
}

impl Rings {
    pub fn new(rings: Vec<RingBuf<MapData>>) -> Rings {
        let merge = (rings.len() > 1).then(|| Merge::new(rings.len()));
        Rings { rings, merge }
    }

    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.rings.iter().map(|ring| ring.as_fd())
    }

    pub fn raw_fds(&self) -> Vec<RawFd> {
        self.rings.iter().map(|ring| ring.as_raw_fd()).collect()
    }

    /// Reads the rings while `more()` says there is room, and hands on, in
    /// time order, every record no other ring can still precede; with
    /// `flush` (the programs are detached), everything. Returns how many
    /// records were handed on.
    pub fn read(
        &mut self,
        flush: bool,
        more: impl Fn() -> bool,
        mut sink: impl FnMut(&[u8]),
    ) -> u64 {
        let Some(merge) = &mut self.merge else {
            let mut handed = 0;
            for ring in &mut self.rings {
                while more() {
                    let Some(item) = ring.next() else { break };
                    sink(&item);
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
        for (index, ring) in self.rings.iter_mut().enumerate() {
            while more() {
                let Some(item) = ring.next() else { break };
                merge.push(index, &item);
            }
        }
        merge.pop_until(until, sink)
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
