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
    ring::{RingPos, SLOT_BYTES, Slot, seq_parts},
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
        assert!(offset + 8 <= self.len && offset % 8 == 0);
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

    /// Bytes of slots reserved or written and not yet read, in all rings.
    pub fn used_bytes(&self) -> u64 {
        (0..self.rings)
            .map(|r| {
                let tail = self.at(r, Self::TAIL).load(Ordering::Relaxed);
                let head = self.at(r, Self::HEAD).load(Ordering::Relaxed);
                head.saturating_sub(tail) * SLOT_BYTES as u64
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
        // SAFETY: the slot is the reader's until `tail` moves past it, and
        // in bounds (the mapping holds whole slots; `word` checked this
        // one's start); `len` is at most the event's size. Volatile: the
        // memory is shared with the kernel.
        unsafe {
            for i in 0..len {
                to.add(i).write(std::ptr::read_volatile(
                    self.slots.base.as_ptr().add(from + i),
                ));
            }
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
