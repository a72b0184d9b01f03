//! Rare paths: a kernel read that failed, an address family or IP version
//! the program does not know, a full map. Each is counted (`counter::ODD`,
//! in userspace's summary) and logged through aya-log from [`oddity`], one
//! out-of-line function: the common path carries only the branch that
//! detects the oddity (mostly the failure branch a read already had), never
//! the log's code or its ring-buffer helper calls.
//!
//! The log says a code ([`tcptrace_common::oddity`]) and a detail; userspace
//! puts them into words. Userspace also sets `AYA_LOG_LEVEL` from its own
//! log level before loading, so the verifier drops the code of a level
//! nobody will see (the debug one, by default).

use aya_log_ebpf::{debug, warn};
use tcptrace_common::{
    counter,
    oddity::{LOG_TARGET, loses_data},
};

use crate::count;

/// Counts and logs oddity `code` ([`tcptrace_common::oddity`]).
///
/// Never inlined: one copy of the log code per program (a BPF subprogram),
/// reached only from rare branches. aya-log-ebpf 0.2.0 ignores its context
/// argument (it writes to its own ring buffer), so `&()` stands in for the
/// program's context, which the readers at the call sites do not have.
#[inline(never)]
pub fn oddity(code: u32, detail: u64) {
    count(counter::ODD);
    let ctx = &();
    if loses_data(code) {
        warn!(ctx, target: LOG_TARGET, "{} {:x}", code, detail);
    } else {
        debug!(ctx, target: LOG_TARGET, "{} {:x}", code, detail);
    }
}
