//! What the kernel program's rare paths report: the code it logs (through
//! aya-log, target [`LOG_TARGET`], as `"<code> <detail in hex>"`),
//! which userspace turns into words. Numbers, not text, in the kernel: each
//! distinct message would be a few hundred instructions of byte copies in
//! every program that can log it.

/// The log target of the kernel program's messages.
pub const LOG_TARGET: &str = "tcptrace::kernel";
// Event or data lost (logged as warnings); the detail in parentheses.
/// inet_sock_set_state: the socket's protocol or head unreadable (sk).
pub const SET_STATE_SOCK: u32 = 1;
/// A tcp: tracepoint: the socket's head unreadable (event kind).
pub const SOCK_HEAD: u32 = 2;
/// inet_sk_error_report: the socket unreadable (sk).
pub const ERROR_REPORT_SOCK: u32 = 3;
/// A socket of neither AF_INET nor AF_INET6 (the family).
pub const FAMILY: u32 = 4;
/// tcp_send_reset without a full socket: the segment unreadable (skb).
pub const SEGMENT_READ: u32 = 5;
/// The same: the segment's IP header is neither v4 nor v6 (version).
pub const SEGMENT_VERSION: u32 = 6;
/// signal_generate or mark_victim: the target's tgid unreadable (task).
pub const SIGNAL_TARGET_READ: u32 = 7;
/// sched_process_fork: a tgid unreadable (child task).
pub const FORK_READ: u32 = 8;
/// sched_process_fork: the pid filter map is full (child tgid).
pub const FOLLOW_FULL: u32 = 9;
/// The event rings: a reserved slot outside the slot array (slot index),
/// which the loader's sizing rules out; the ring's reader then stops at it.
pub const RING_SLOT: u32 = 10;
// Only an annotation lost (logged at debug level).
/// The local port after the socket gave it back (sk).
pub const SPORT_READ: u32 = 11;
/// The network namespace's inode (struct net).
pub const NETNS_READ: u32 = 12;
/// Unread bytes at a close (sk).
pub const UNREAD_READ: u32 = 13;
/// sk_err, retransmits or probes at an error report (sk).
pub const ERROR_READ: u32 = 14;
/// An exiting task's exit code (task).
pub const EXIT_CODE_READ: u32 = 15;
/// A signal's target's handlers: taken as default, reported (task).
pub const HANDLER_READ: u32 = 16;
/// skb:kfree_skb: the dropped buffer or its headers unreadable (skb):
/// a drop not looked at, most likely not TCP at all (debug level: the
/// warnings' codes stay below [`SPORT_READ`], which keeps the check
/// every program carries one comparison).
pub const DROP_READ: u32 = 17;
/// accept(2) returned an fd whose socket could not be found (the fd): the
/// socket keeps its listener's owner.
pub const ACCEPT_FD: u32 = 18;
/// This CPU's `preempt_count` not found from the on-CPU task (task): its
/// events are taken as softirq's from then on (no task named).
pub const CONTEXT_READ: u32 = 19;
/// One past the last code.
pub const END: u32 = 20;

/// Is an event, a kill or a followed process lost (a warning), or
/// only an annotation (debug)?
pub const fn loses_data(code: u32) -> bool {
    code < SPORT_READ
}
