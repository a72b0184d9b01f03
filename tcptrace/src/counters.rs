//! Event accounting: what the kernel produced, what reached userspace, what
//! was lost. `produced == received + lost` holds exactly once drained.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
// Recordings made before a counter existed read it as 0.
#[serde(default)]
pub struct Counters {
    /// Events that passed the kernel filters and were offered to the ring.
    pub produced: u64,
    /// Events that found their ring full.
    pub lost: u64,
    /// Events read from the rings by userspace.
    pub received: u64,
    /// Their bytes as the kernel wrote them (each in a slot of its own,
    /// 128 bytes of `--ring-size` whatever its length): over `received`,
    /// the average record.
    pub received_bytes: u64,
    /// Of those, events a CPU's ring delivered after the merge of the rings
    /// had handed on later ones (a program delayed more than the merge's
    /// hold-back between its timestamp and its commit): handed on out of
    /// time order, never dropped.
    pub late: u64,
    /// Events dropped by a filter in the kernel.
    pub filtered: u64,
    /// Non-TCP (MPTCP, SCTP) state changes ignored in the kernel.
    pub not_tcp: u64,
    /// Events userspace could not decode (a kernel/loader mismatch).
    pub undecodable: u64,
    /// Program runs the kernel skipped because the same program was already
    /// running on that CPU (its recursion guard: an interrupt whose softirq
    /// re-entered it), less those a second program made up for: events
    /// that were never produced.
    pub missed: u64,
    /// Skipped runs whose event a second program made instead (see
    /// `inet_sock_set_state_nested`): nothing was lost there.
    pub recovered: u64,
    /// Rare paths the kernel program met (a kernel read that failed, an
    /// unknown address family, a full map): each is also logged, in words,
    /// under the `tcptrace::kernel` log target (see `kernel_log`).
    pub odd: u64,
}

impl Counters {
    /// True when every produced event is accounted for.
    pub fn balanced(&self) -> bool {
        self.produced == self.received + self.lost
    }
}
