//! How the kernel's rings are sized and when they wake the reader: one ring
//! per CPU, sharing `--ring-size`.

use tcptrace_common::{Event, MAX_RINGS, MIN_RING_BYTES};

/// How many rings, and the bytes of each, for `--ring-size` bytes in all
/// on a host of `cpus` (possible) CPUs: one ring per CPU up to MAX_RINGS,
/// a power of two (the kernel picks a ring by masking the CPU number), none
/// smaller than MIN_RING_BYTES. The total stays what the user chose: rings
/// are resident memory. The price: a CPU that makes every event fills its
/// ring twice as fast as it filled the single one. The mass close lost
/// nothing; one pinned churn run in the bench (one CPU producing 250k
/// events a second) lost 0.3 %, a reader held up for some 40 ms that the
/// single 4 MiB ring would have outlasted. `--ring-size` buys the margin.
pub fn ring_layout(ring_bytes: u32, cpus: Option<usize>) -> (u32, u32) {
    let cpus = u32::try_from(cpus.unwrap_or(1).max(1)).unwrap_or(MAX_RINGS);
    let most = cpus
        .min(MAX_RINGS)
        .min((ring_bytes / MIN_RING_BYTES).max(1));
    // The largest power of two not above `most`.
    let rings = 1 << most.ilog2();
    (rings, ring_bytes / rings)
}

/// The kernel program's ring maps, by number.
pub(super) const RING_NAMES: [&str; MAX_RINGS as usize] = [
    "EVENTS_0", "EVENTS_1", "EVENTS_2", "EVENTS_3", "EVENTS_4", "EVENTS_5", "EVENTS_6", "EVENTS_7",
];

/// When the kernel program wakes the reader: once an eighth of the ring is
/// waiting (below that the reader's timer drains, far cheaper than a wakeup
/// per event), checked every `query_every` events — never fewer than the
/// threshold holds, so that even a 4 KiB ring wakes its reader in time.
pub fn wakeup_policy(ring_bytes: u32) -> (u64, u32) {
    // The largest ring entry: the whole event plus the ring's 8-byte
    // header (most are shorter, see record_len: checks come sooner).
    const ENTRY: u32 = (core::mem::size_of::<Event>() + 8) as u32;
    let wakeup_bytes = ring_bytes / 8;
    let query_every = (wakeup_bytes / ENTRY / 2).clamp(1, 32);
    (u64::from(wakeup_bytes), query_every)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ring_size_wakes_its_reader_before_it_fills() {
        let min = tcptrace_common::MIN_RING_BYTES;
        for shift in min.trailing_zeros()..=30 {
            let ring = 1u32 << shift;
            let (wakeup, every) = wakeup_policy(ring);
            let entry = (core::mem::size_of::<Event>() + 8) as u64;
            // Between two checks at most `every` entries arrive: the check
            // that sees the threshold crossed comes before the ring is full.
            assert!(
                wakeup + u64::from(every) * entry < u64::from(ring),
                "{ring}"
            );
            assert!((1..=32).contains(&every));
        }
        // The smallest: woken at an eighth (~200 events), checked every 32.
        assert_eq!(wakeup_policy(min), (32 << 10, 32));
        assert_eq!(wakeup_policy(4 << 20).1, 32);
    }

    #[test]
    fn rings_follow_the_cpus_and_share_the_chosen_size() {
        let mib = 1 << 20;
        // The default 4 MiB on this VM's 2 CPUs: two rings of 2 MiB.
        assert_eq!(ring_layout(4 * mib, Some(2)), (2, 2 * mib));
        assert_eq!(ring_layout(4 * mib, Some(1)), (1, 4 * mib));
        // A power of two of rings, at most MAX_RINGS.
        assert_eq!(ring_layout(4 * mib, Some(6)), (4, mib));
        assert_eq!(ring_layout(4 * mib, Some(96)), (MAX_RINGS, mib / 2));
        // No ring below the smallest size: the smallest total is one ring.
        assert_eq!(ring_layout(MIN_RING_BYTES, Some(96)), (1, MIN_RING_BYTES));
        assert_eq!(
            ring_layout(2 * MIN_RING_BYTES, Some(96)),
            (2, MIN_RING_BYTES)
        );
        // CPUs unknown: one ring.
        assert_eq!(ring_layout(4 * mib, None), (1, 4 * mib));
        for shift in MIN_RING_BYTES.trailing_zeros()..=30 {
            for cpus in 1..=300 {
                let (rings, each) = ring_layout(1 << shift, Some(cpus));
                assert!(rings.is_power_of_two() && rings <= MAX_RINGS);
                assert!(each >= MIN_RING_BYTES && each.is_power_of_two());
                assert_eq!(rings * each, 1 << shift);
            }
        }
    }
}
