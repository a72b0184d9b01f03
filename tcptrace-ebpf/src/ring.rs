//! The event rings' writer: [`submit`] puts an event into a slot of this
//! CPU's ring, in place ([`tcptrace_common::ring`] has the protocol the
//! reader shares).

use core::ptr::addr_of_mut;

use aya_ebpf::{
    macros::map,
    maps::{Array, RingBuf},
};
use tcptrace_common::{
    Event, MAX_RINGS, counter, oddity,
    ring::{RingPos, Slot, seq_word},
};

use crate::{config, count, odd};

/// `bpf_ringbuf_output`'s flag that wakes the reader at once.
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `BPF_F_MMAPABLE`: the reader maps the array into its memory.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// The event rings' slots ([`tcptrace_common::ring`]): ring `r`'s slot `n`
/// is element `(r << slot_shift) + n`. The loader sizes it (rings × slots
/// per ring); one ring per CPU up to MAX_RINGS, so that CPUs do not
/// contend for a ring's head.
#[map]
static SLOTS: Array<Slot> = Array::with_max_entries(MAX_RINGS << 6, BPF_F_MMAPABLE);

/// Each ring's positions: `head` is this program's, `tail` the reader's.
#[map]
static RING_POS: Array<RingPos> = Array::with_max_entries(MAX_RINGS, BPF_F_MMAPABLE);

/// Wakes the reader when a ring's backlog crosses `wake_at` (see
/// [`submit`]); what is written here is never read.
#[map]
static WAKE: RingBuf = RingBuf::with_byte_size(4096, 0);

/// Writes the event into a slot of this CPU's ring ([`tcptrace_common::ring`]
/// says how the reader and this program share it): no helper call, except
/// one `bpf_ringbuf_output` to wake the reader when a lap's backlog reaches
/// `wake_at` (below that, the reader drains on its timer: a wakeup per
/// event would cost more than the event).
#[inline(always)]
pub(crate) fn submit(event: &Event) {
    let cfg = config();
    let ring = event.cpu & cfg.ring_mask;
    let Some(pos) = RING_POS.get_ptr_mut(ring) else {
        count(counter::LOST);
        return;
    };
    let size = 1u64 << cfg.slot_shift;
    // SAFETY: `pos` is a valid, 8-byte-aligned map value. The reader only
    // ever stores `tail`; this program stores `head` (atomically: a program
    // that interrupts this one on this CPU reserves the next position) and
    // `limit` (plainly: a nested store of an older limit only costs a
    // read of `tail` more).
    let (at, since_tail, tail_read) = unsafe {
        let head = addr_of_mut!((*pos).head);
        let limit_at = addr_of_mut!((*pos).limit);
        let mut limit = limit_at.read_volatile();
        let mut at = head.read_volatile();
        let mut reserved = false;
        let mut tail_read = false;
        // A failed exchange means a nested program reserved first; two
        // tries, then the event counts as lost rather than loop.
        for _ in 0..2 {
            if at >= limit {
                // Full as last seen: where has the reader got to?
                limit = addr_of_mut!((*pos).tail).read_volatile() + size;
                limit_at.write_volatile(limit);
                tail_read = true;
                if at >= limit {
                    break;
                }
            }
            let (seen, done) = compare_exchange(head, at, at + 1);
            if done {
                reserved = true;
                break;
            }
            at = seen;
        }
        if !reserved {
            count(counter::LOST);
            return;
        }
        // Slots since the tail last read, this one included.
        (at, at + 1 + size - limit, tail_read)
    };
    let index = ((ring as u64) << cfg.slot_shift) | (at & (size - 1));
    let Some(slot) = SLOTS.get_ptr_mut(index as u32) else {
        // Cannot happen (the loader sizes SLOTS for every ring), and the
        // reader would wait for this position for ever: say so.
        odd::oddity(oddity::RING_SLOT, index);
        return;
    };
    // Only the prefix that holds the event's non-zero sections: a socket's
    // destroy is 4 words of 19, most state changes 10-14. Every slot line
    // written is likely a cache miss (the reader read it a lap ago).
    let words = event.record_len() / 8;
    // SAFETY: the slot is reserved for this program until `seq` says
    // otherwise; Event is 19 initialised, 8-byte-aligned words.
    unsafe {
        let from = core::ptr::from_ref(event).cast::<u64>();
        let to = addr_of_mut!((*slot).event).cast::<u64>();
        let mut i = 0;
        while i < EVENT_WORDS {
            if i >= words {
                break;
            }
            to.add(i).write_volatile(from.add(i).read());
            i += 1;
        }
        publish(addr_of_mut!((*slot).seq), seq_word(at, words as u64));
    }
    if since_tail == cfg.wake_at || (tail_read && since_tail > cfg.wake_at) {
        // Once a lap at most: `since_tail` grows by one per event until the
        // tail is read again, when it may start past the threshold (the
        // reader is behind: wake it then).
        let _ = WAKE.output::<u64>(&0, BPF_RB_FORCE_WAKEUP);
    }
}

/// Words in an [`Event`].
const EVENT_WORDS: usize = core::mem::size_of::<Event>() / 8;

/// `*at == old ? (*at = new, (old, true)) : (*at, false)`, atomically: one
/// BPF compare-and-exchange (`lock cmpxchg` once JIT-compiled).
///
/// # Safety
/// `at` is valid and 8-byte aligned.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn compare_exchange(at: *mut u64, old: u64, new: u64) -> (u64, bool) {
    use core::intrinsics::{AtomicOrdering, atomic_cxchg};
    unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(at, old, new)
    }
}

/// `*at = value`, after every store before it (a release store).
///
/// On x86-64 a plain store is one (TSO: stores become visible in program
/// order, and the JIT keeps BPF's order). A locked exchange would be too,
/// but it also waits for the slot's earlier stores to leave the store
/// buffer, and those are cache misses: measured, that wait was the largest
/// single cost of a destroy's run. Elsewhere, BPF's atomic exchange.
///
/// # Safety
/// `at` is valid and 8-byte aligned.
#[cfg(target_arch = "bpf")]
#[inline(always)]
unsafe fn publish(at: *mut u64, value: u64) {
    #[cfg(bpf_target_arch = "x86_64")]
    unsafe {
        at.write_volatile(value)
    };
    #[cfg(not(bpf_target_arch = "x86_64"))]
    unsafe {
        use core::intrinsics::{AtomicOrdering, atomic_xchg};
        atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(at, value);
    }
}

/// Host builds (clippy, check) only type-check the kernel program.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn compare_exchange(at: *mut u64, old: u64, new: u64) -> (u64, bool) {
    use core::sync::atomic::{AtomicU64, Ordering::SeqCst};
    // SAFETY: as the caller promises.
    match unsafe { AtomicU64::from_ptr(at) }.compare_exchange(old, new, SeqCst, SeqCst) {
        Ok(seen) => (seen, true),
        Err(seen) => (seen, false),
    }
}

#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
unsafe fn publish(at: *mut u64, value: u64) {
    use core::sync::atomic::{AtomicU64, Ordering::Release};
    // SAFETY: as the caller promises.
    unsafe { AtomicU64::from_ptr(at) }.store(value, Release);
}
