//! The event rings: arrays of fixed-size slots that the kernel program
//! writes in place and the reader maps into its memory, one ring per CPU
//! (up to [`crate::MAX_RINGS`]).
//!
//! Why not the kernel's BPF ring buffer: each `bpf_ringbuf_output` is a
//! helper call that takes a spinlock with interrupts off and copies the
//! record through `memcpy`, about 55-115 ns a record on the 2-vCPU test VM
//! (where every kernel function's return pays the SRSO mitigation). A slot
//! costs one array lookup (inlined by the verifier), one atomic
//! compare-and-exchange to reserve it, at most nineteen word stores and
//! one more to publish it: no call at all.
//!
//! Protocol, per ring (positions count slots and never wrap in practice):
//! - The kernel program reserves position `head` with a compare-and-exchange
//!   of `head` to `head + 1` while `head` is below `limit`, the `tail` it
//!   last read plus the ring's size. At the limit it reads `tail` again
//!   (once a lap of the ring, when the reader keeps up); if the ring is
//!   still full the event is lost (and counted). Programs on one CPU nest
//!   (a softirq interrupts a run in process context), hence the atomic even
//!   in a per-CPU ring.
//! - It writes the event's non-zero prefix into slot `head % size`, then
//!   stores [`seq_word`] (`head + 1` and the words written) into the slot's
//!   `seq` with a release store (the event's bytes are visible before `seq`
//!   says they are there; on x86-64 a plain store).
//! - The reader consumes position `tail` once its slot's `seq` is
//!   `tail + 1` (an acquire load) and copies the words written out; at the end of
//!   each pass it stores its `tail` (a release store): the kernel may reuse
//!   the slots before it from then on. A slot not yet published (a nested
//!   writer finished first) ends the pass there.
//! - When a reservation is [`wake_at`] slots past the `tail` the program
//!   last read, it wakes the reader through a one-page BPF ring buffer (one
//!   helper call, at most once a lap); otherwise the reader drains on its
//!   timer. That `tail` is never newer than the reader's: the wakeup comes
//!   early, never late.

use crate::Event;

/// One slot: [`seq_word`] (0: never written) and the event's first words
/// (the rest of the slot is stale: the reader fills it with zeros).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    pub seq: u64,
    pub event: Event,
}

/// A slot's `seq`: the position it was written at plus one, shifted left by
/// 8, and the number of the event's words written (at most 19).
#[inline(always)]
pub const fn seq_word(at: u64, words: u64) -> u64 {
    ((at + 1) << 8) | words
}

/// The position a `seq` word says its slot holds, plus one, and the
/// event's words written.
#[inline(always)]
pub const fn seq_parts(seq: u64) -> (u64, usize) {
    (seq >> 8, (seq & 0xff) as usize)
}

/// Bytes of one slot, in the kernel's array and in the reader's mapping
/// (the kernel rounds array values up to 8 bytes: already a multiple).
pub const SLOT_BYTES: usize = core::mem::size_of::<Slot>();

/// One ring's positions, on two cache lines: the first is written by the
/// kernel program only, the second by the reader only, so that neither
/// side's writes evict the other's line on every event.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RingPos {
    /// Next position to reserve (kernel program).
    pub head: u64,
    /// `tail + slots` as the kernel program last read `tail`: positions
    /// below it are free without reading the reader's line again
    /// (`tail` only grows, so a stale limit errs on the safe side).
    pub limit: u64,
    _head_line: [u64; 6],
    /// Next position to read (reader): every slot before it is free. The
    /// reader stores it once per pass over the ring, not per event.
    pub tail: u64,
    _tail_line: [u64; 7],
}

/// Slots waiting past which the reader is woken: an eighth of the ring.
#[inline(always)]
pub const fn wake_at(slots: u64) -> u64 {
    let eighth = slots / 8;
    if eighth == 0 { 1 } else { eighth }
}

/// Bytes of `--ring-size` per slot: a ring of N bytes holds N / 128
/// events, about as many as the kernel's ring buffer held in N bytes
/// (its records averaged 110 bytes with their header in a loopback churn),
/// in 1.25 N bytes of slots.
pub const RING_BYTES_PER_SLOT: u32 = 128;

/// Slots in a ring given `ring_bytes` of `--ring-size`: the largest power
/// of two that fits (the kernel program masks positions), at least 64.
pub fn slots_per_ring(ring_bytes: u32) -> u32 {
    let fit = ring_bytes / RING_BYTES_PER_SLOT;
    if fit == 0 {
        64
    } else {
        (1 << fit.ilog2()).max(64)
    }
}

const _: () = assert!(SLOT_BYTES == 160);
const _: () = assert!(core::mem::size_of::<RingPos>() == 128);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_holds_one_event_per_128_bytes_in_a_power_of_two_of_slots() {
        assert_eq!(slots_per_ring(crate::MIN_RING_BYTES), 2048);
        assert_eq!(slots_per_ring(2 << 20), 16384);
        assert_eq!(slots_per_ring(3 << 20), 16384);
        assert_eq!(slots_per_ring(0), 64);
        assert_eq!(
            wake_at(u64::from(slots_per_ring(crate::MIN_RING_BYTES))),
            256
        );
    }
}
