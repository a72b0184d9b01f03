//! How the kernel's rings are sized and when they wake the reader: one ring
//! per CPU, sharing `--ring-size`.

use std::os::fd::AsFd;

use aya::{
    Ebpf,
    maps::{Map, RingBuf},
};
use tcptrace_common::{MAX_RINGS, MIN_RING_BYTES};

use super::LoadError;
use crate::input::{Rings, open_slot_rings};

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

/// Maps the kernel program's event rings (`rings` of `slots` slots each)
/// and takes its wakeup ring: the reader's side of
/// [`tcptrace_common::ring`].
pub(super) fn slot_rings(ebpf: &mut Ebpf, rings: u32, slots: u32) -> Result<Rings, LoadError> {
    let mut array = |name: &'static str| match ebpf.take_map(name) {
        Some(Map::Array(data)) => Ok(data),
        _ => Err(LoadError::MissingMap(name)),
    };
    let slot_array = array("SLOTS")?;
    let positions = array("RING_POS")?;
    let readers = open_slot_rings(
        slot_array.fd().as_fd(),
        positions.fd().as_fd(),
        rings as usize,
        u64::from(slots),
    )
    .map_err(LoadError::MapRings)?;
    let wake = ebpf.take_map("WAKE").ok_or(LoadError::MissingMap("WAKE"))?;
    let wake = RingBuf::try_from(wake).map_err(|e| LoadError::Map("WAKE", e))?;
    Ok(Rings::new(readers, wake))
}

#[cfg(test)]
mod tests {
    use super::*;

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
