//! The reader's side of the kernel program's event rings
//! ([`tcptrace_common::ring`] describes the protocol): the slot array and
//! the rings' positions, mapped into this process.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tcptrace_common::{
    Event,
    ring::{RING_BYTES_PER_SLOT, RingPos, SLOT_BYTES, Slot, seq_parts},
};

use super::merge::Source;

/// A shared mapping of a `BPF_F_MMAPABLE` array map's values.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is shared memory; every access below is an atomic
// or a copy of a slot the protocol has handed to the reader.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of the array behind `fd`, read-write (the reader
    /// stores the tails).
    fn new(fd: BorrowedFd<'_>, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh shared mapping of the map's values, owned here.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(Mapping { base, len })
    }

    /// The `u64` at byte `offset`, shared with the kernel.
    fn word(&self, offset: usize) -> &AtomicU64 {
        assert!(offset + 8 <= self.len && offset.is_multiple_of(8));
        // SAFETY: in bounds and aligned (checked); the mapping lives as
        // long as self, and the kernel accesses the word atomically too.
        unsafe { AtomicU64::from_ptr(self.base.as_ptr().add(offset).cast()) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Every ring's positions, readable from any thread (metrics).
#[derive(Clone, Debug)]
pub struct RingPositions {
    map: Arc<Mapping>,
    rings: usize,
}

impl RingPositions {
    const HEAD: usize = std::mem::offset_of!(RingPos, head);
    const TAIL: usize = std::mem::offset_of!(RingPos, tail);

    fn at(&self, ring: usize, field: usize) -> &AtomicU64 {
        self.map.word(ring * size_of::<RingPos>() + field)
    }

    /// Slots the kernel program has reserved since the rings were made, in
    /// all rings: every event produced that was not lost.
    pub fn reserved(&self) -> u64 {
        (0..self.rings)
            .map(|r| self.at(r, Self::HEAD).load(Ordering::Relaxed))
            .sum()
    }

    /// Slots reserved or written and not yet read, in all rings, in
    /// bytes of `--ring-size` ([`RING_BYTES_PER_SLOT`] each).
    pub fn used_bytes(&self) -> u64 {
        (0..self.rings)
            .map(|r| {
                let tail = self.at(r, Self::TAIL).load(Ordering::Relaxed);
                let head = self.at(r, Self::HEAD).load(Ordering::Relaxed);
                head.saturating_sub(tail) * u64::from(RING_BYTES_PER_SLOT)
            })
            .sum()
    }
}

/// One ring, as its reader sees it.
#[derive(Debug)]
pub struct SlotRing {
    slots: Arc<Mapping>,
    positions: RingPositions,
    ring: usize,
    /// Byte offset of the ring's first slot in the slot array.
    first: usize,
    /// Slots in the ring (a power of two).
    size: u64,
    /// The next position to read.
    tail: u64,
    /// The `tail` last stored for the kernel to see: once per pass (and
    /// every [`PUBLISH_EVERY`] records), not per record, so that the kernel
    /// program's line holding it is not stolen on every event.
    published: u64,
    event: Event,
}

/// Records read between two stores of `tail` within a pass.
const PUBLISH_EVERY: u64 = 256;

/// Maps the kernel program's `SLOTS` (`rings` rings of `size` slots) and
/// `RING_POS` arrays and returns one reader per ring.
pub fn open(
    slots_fd: BorrowedFd<'_>,
    positions_fd: BorrowedFd<'_>,
    rings: usize,
    size: u64,
) -> io::Result<Vec<SlotRing>> {
    let page = crate::host::page_size();
    let round = |bytes: usize| bytes.div_ceil(page) * page;
    let ring_bytes = usize::try_from(size).map_err(io::Error::other)? * SLOT_BYTES;
    let slots = Arc::new(Mapping::new(slots_fd, round(rings * ring_bytes))?);
    let positions = RingPositions {
        map: Arc::new(Mapping::new(
            positions_fd,
            round(rings * size_of::<RingPos>()),
        )?),
        rings,
    };
    Ok((0..rings)
        .map(|ring| {
            let tail = positions
                .at(ring, RingPositions::TAIL)
                .load(Ordering::Acquire);
            SlotRing {
                slots: slots.clone(),
                positions: positions.clone(),
                ring,
                first: ring * ring_bytes,
                size,
                tail,
                published: tail,
                event: Event::default(),
            }
        })
        .collect())
}

impl SlotRing {
    /// The positions shared by every ring (for the metrics' gauge).
    pub fn positions(&self) -> RingPositions {
        self.positions.clone()
    }

    /// Copies out the record at `tail` if the kernel has published it:
    /// its length in bytes.
    fn take(&mut self) -> Option<usize> {
        let offset = self.first + (self.tail & (self.size - 1)) as usize * SLOT_BYTES;
        let seq = self.slots.word(offset + std::mem::offset_of!(Slot, seq));
        // Acquire: the event's words, stored before seq, are visible.
        let (position, words) = seq_parts(seq.load(Ordering::Acquire));
        if position != self.tail + 1 {
            self.publish();
            return None;
        }
        let len = words.min(size_of::<Event>() / 8) * 8;
        let from = offset + std::mem::offset_of!(Slot, event);
        let to = std::ptr::from_mut(&mut self.event).cast::<u8>();
        // SAFETY: in bounds (the mapping holds whole slots; `word` checked
        // this one's start), and `len` is at most the event's size. No
        // race: the kernel wrote these bytes before publishing `seq` (read
        // with Acquire above) and writes the slot again only after `tail`
        // has moved past it (stored with Release, after this copy).
        unsafe {
            std::ptr::copy_nonoverlapping(self.slots.base.as_ptr().add(from), to, len);
        }
        self.tail += 1;
        if self.tail - self.published >= PUBLISH_EVERY {
            self.publish();
        }
        Some(len)
    }

    /// Lets the kernel reuse the slots read so far (call at the end of a
    /// pass).
    pub fn publish(&mut self) {
        if self.published != self.tail {
            // Release: the copies are done before the kernel may reuse
            // the slots.
            self.positions
                .at(self.ring, RingPositions::TAIL)
                .store(self.tail, Ordering::Release);
            self.published = self.tail;
        }
    }
}

impl Source for SlotRing {
    fn next_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let len = self.take()?;
        // SAFETY: Event is #[repr(C)] plain data without padding; the first
        // `len` bytes were just copied in.
        let bytes = unsafe {
            std::slice::from_raw_parts(std::ptr::from_ref(&self.event).cast::<u8>(), len)
        };
        Some(f(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::{kind, record_len, ring::seq_word};

    /// Rings over anonymous memory, written the way the kernel program
    /// writes them.
    struct Fake {
        rings: Vec<SlotRing>,
        slots: Arc<Mapping>,
        size: u64,
    }

    fn anonymous(len: usize) -> Mapping {
        // SAFETY: a fresh private anonymous mapping, owned by the Mapping.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        Mapping {
            base: NonNull::new(base.cast()).unwrap(),
            len,
        }
    }

    impl Fake {
        fn new(rings: usize, size: u64) -> Fake {
            let slots = Arc::new(anonymous(rings * size as usize * SLOT_BYTES));
            let positions = RingPositions {
                map: Arc::new(anonymous(4096)),
                rings,
            };
            let rings = (0..rings)
                .map(|ring| SlotRing {
                    slots: slots.clone(),
                    positions: positions.clone(),
                    ring,
                    first: ring * size as usize * SLOT_BYTES,
                    size,
                    tail: 0,
                    published: 0,
                    event: Event::default(),
                })
                .collect();
            Fake { rings, slots, size }
        }

        /// Writes `event` (its non-zero prefix) at position `at` of `ring`,
        /// published or only reserved.
        fn write(&self, ring: usize, at: u64, event: &Event, publish: bool) {
            let positions = &self.rings[ring].positions;
            let head = positions.at(ring, RingPositions::HEAD);
            head.fetch_max(at + 1, Ordering::Relaxed);
            let offset = (ring as u64 * self.size + (at & (self.size - 1))) as usize * SLOT_BYTES;
            let words = event.record_len() / 8;
            let bytes = event.record();
            // SAFETY: in bounds of the anonymous mapping.
            unsafe {
                let to = self.slots.base.as_ptr().add(offset + 8);
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), to, bytes.len());
            }
            if publish {
                self.publish(ring, at, words);
            }
        }

        fn publish(&self, ring: usize, at: u64, words: usize) {
            let offset = (ring as u64 * self.size + (at & (self.size - 1))) as usize * SLOT_BYTES;
            self.slots
                .word(offset)
                .store(seq_word(at, words as u64), Ordering::Release);
        }

        fn read_all(&mut self, ring: usize) -> Vec<Vec<u8>> {
            let mut out = Vec::new();
            while let Some(record) = self.rings[ring].next_with(<[u8]>::to_vec) {
                out.push(record);
            }
            out
        }

        fn tail(&self, ring: usize) -> u64 {
            self.rings[ring]
                .positions
                .at(ring, RingPositions::TAIL)
                .load(Ordering::Relaxed)
        }
    }

    fn event(ts_ns: u64, skaddr: u64) -> Event {
        Event {
            ts_ns,
            skaddr,
            kind: kind::DESTROY_SOCK,
            ..Event::default()
        }
    }

    #[test]
    fn published_records_are_read_in_order_as_their_prefixes() {
        let mut fake = Fake::new(2, 64);
        let bare = event(1, 0xa);
        let mut wide = event(2, 0xb);
        wide.netns = 7;
        fake.write(1, 0, &bare, true);
        fake.write(1, 1, &wide, true);
        let read = fake.read_all(1);
        assert_eq!(read, vec![bare.record().to_vec(), wide.record().to_vec()]);
        assert_eq!(read[0].len(), record_len::BARE);
        assert_eq!(read[1].len(), record_len::FULL);
        // The other ring saw nothing; this one's tail is stored at the end
        // of the pass, for the kernel to reuse the slots.
        assert!(fake.read_all(0).is_empty());
        assert_eq!(fake.tail(1), 2);
        assert_eq!(fake.rings[0].positions().used_bytes(), 0);
    }

    #[test]
    fn a_slot_reserved_but_not_yet_published_stops_the_pass_until_it_is() {
        let mut fake = Fake::new(1, 64);
        // A nested program reserved position 1 and published it before the
        // program it interrupted published position 0.
        fake.write(0, 0, &event(1, 0xa), false);
        fake.write(0, 1, &event(2, 0xb), true);
        assert!(fake.read_all(0).is_empty());
        assert_eq!(
            fake.rings[0].positions().used_bytes(),
            2 * u64::from(RING_BYTES_PER_SLOT)
        );
        fake.publish(0, 0, record_len::BARE / 8);
        let read = fake.read_all(0);
        assert_eq!(read.len(), 2);
        assert_eq!(read[0], event(1, 0xa).record());
        assert_eq!(fake.tail(0), 2);
    }

    #[test]
    fn a_slot_left_from_the_previous_lap_is_not_read_again() {
        let mut fake = Fake::new(1, 64);
        for at in 0..64 {
            fake.write(0, at, &event(at + 1, at), true);
        }
        assert_eq!(fake.read_all(0).len(), 64);
        // Position 64 reuses slot 0, which still says position 0.
        assert!(fake.read_all(0).is_empty());
        fake.write(0, 64, &event(100, 0xc), true);
        assert_eq!(fake.read_all(0), vec![event(100, 0xc).record().to_vec()]);
    }

    #[test]
    fn a_long_pass_lets_the_kernel_reuse_slots_before_it_ends() {
        let mut fake = Fake::new(1, 1024);
        for at in 0..600 {
            fake.write(0, at, &event(at + 1, at), true);
        }
        for _ in 0..300 {
            assert!(fake.rings[0].next_with(|_| ()).is_some());
        }
        // Mid-pass: stored every PUBLISH_EVERY records.
        assert_eq!(fake.tail(0), 256);
    }
}
