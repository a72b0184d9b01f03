//! The kernel's rings, read as one stream: one ring is read as it stands;
//! several are merged back into time order ([`Merge`]).

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};

use super::{
    Sink,
    merge::{HOLD_BACK_NS, Merge, Source},
    put_frame,
    slots::{RingPositions, SlotRing},
};

use crate::host::monotonic_ns;

/// Every ring the kernel program writes to, and what was read from them and
/// not yet handed on.
pub struct Rings {
    rings: Vec<SlotRing>,
    /// `None` with a single ring: nothing to merge.
    merge: Option<Merge>,
    /// The kernel program's wakeup calls (a BPF ring buffer whose records
    /// say nothing: drained at every read, so that it never fills).
    wake: RingBuf<MapData>,
    /// `wake`'s readiness, edge-triggered (`None`: epoll failed; then the
    /// reader only sleeps).
    wakeups: Option<OwnedFd>,
}

impl Rings {
    pub fn new(rings: Vec<SlotRing>, wake: RingBuf<MapData>) -> Rings {
        let merge = (rings.len() > 1).then(|| Merge::new(rings.len()));
        let wakeups = edge_triggered(&wake)
            .map_err(|e| {
                log::warn!(
                    "epoll on the rings' wakeups: {e}; reading every {} ms only",
                    super::DRAIN_INTERVAL.as_millis()
                )
            })
            .ok();
        Rings {
            rings,
            merge,
            wake,
            wakeups,
        }
    }

    /// Waits until the kernel wakes the rings' reader (a backlog built up
    /// in one of them) or `ms` pass. Edge-triggered: records the merge
    /// leaves in a ring for later do not make it return at once.
    pub fn wait(&self, ms: i32) {
        let Some(epoll) = &self.wakeups else {
            std::thread::sleep(Duration::from_millis(ms.max(1) as u64));
            return;
        };
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 1];
        // SAFETY: a valid epoll fd and a buffer of the length given.
        let rc = unsafe {
            libc::epoll_wait(
                epoll.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as i32,
                ms,
            )
        };
        if rc < 0 {
            // EINTR or worse: do not spin.
            std::thread::sleep(Duration::from_millis(ms.max(1) as u64));
        }
    }

    /// Every ring's positions (for the metrics' gauge).
    pub fn positions(&self) -> Option<RingPositions> {
        self.rings.first().map(SlotRing::positions)
    }

    /// Reads the rings while `sink` has room, and gives it, in time order,
    /// every record no other ring can still precede; with `flush` (the
    /// programs are detached), everything.
    pub fn read(&mut self, flush: bool, sink: &mut impl Sink) {
        while self.wake.next().is_some() {}
        let Some(merge) = &mut self.merge else {
            for ring in &mut self.rings {
                while sink.has_room() {
                    let framed = ring.next_with(|record| {
                        put_frame(sink.buf(), record);
                        record.len()
                    });
                    let Some(len) = framed else { break };
                    sink.appended(len);
                }
                ring.publish();
            }
            return;
        };
        // Read before the rings: whatever a ring found empty from here on
        // commits later is at most HOLD_BACK_NS older than this.
        let until = if flush {
            u64::MAX
        } else {
            monotonic_ns().saturating_sub(HOLD_BACK_NS)
        };
        merge.read(&mut self.rings, until, sink);
        for ring in &mut self.rings {
            ring.publish();
        }
    }

    /// Records read after a younger one had been passed on (passed on out
    /// of order).
    pub fn late(&self) -> u64 {
        self.merge.as_ref().map_or(0, Merge::late)
    }
}

/// An epoll instance that reports the wakeup ring's wakeups once (EPOLLET).
fn edge_triggered(wake: &RingBuf<MapData>) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscall; the fd is owned from here on.
    let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd of our own.
    let epoll = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLET) as u32,
        u64: 0,
    };
    // SAFETY: valid fds and event.
    let rc = unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            wake.as_raw_fd(),
            &mut event,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(epoll)
}
