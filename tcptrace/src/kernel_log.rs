//! The kernel program's log (aya-log): what its rare paths met
//! ([`tcptrace_common::oddity`]) comes out through the `log` crate, in words,
//! under the `tcptrace::kernel` target — warnings where an event was lost,
//! debug messages where only an annotation was.
//!
//! The kernel logs a code and a number (text would cost hundreds of
//! instructions per message in every program); [`describe`] puts them into
//! words. A thread of its own waits on aya-log's ring buffer, blocked in
//! `poll` while nothing is logged, and ends when the tracer is dropped.

use std::{
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd},
    panic::{AssertUnwindSafe, catch_unwind},
    thread::JoinHandle,
};

use aya::Ebpf;
use aya_log::EbpfLogger;
use log::{LevelFilter, Log, Metadata, Record};
use tcptrace_common::{kind, oddity};

/// The value for the kernel's `AYA_LOG_LEVEL`: the most verbose level any
/// of our log filters lets through. The verifier drops the kernel's log
/// code for levels above it (aya-log's levels number as `log`'s do).
pub fn kernel_level(max: LevelFilter) -> u8 {
    max as usize as u8
}

/// The reading thread; dropping it stops the thread after a last read.
pub struct KernelLog {
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl KernelLog {
    /// Takes the object's log ring (`AYA_LOGS`) and starts reading it.
    /// Without it, the kernel's oddities are still counted: a warning, not
    /// an error.
    pub fn start(ebpf: &mut Ebpf) -> Option<KernelLog> {
        match Self::try_start(ebpf) {
            Ok(log) => Some(log),
            Err(e) => {
                log::warn!(
                    "the kernel program's log is unavailable ({e}): its oddities are only counted"
                );
                None
            }
        }
    }

    fn try_start(ebpf: &mut Ebpf) -> Result<KernelLog, Box<dyn std::error::Error>> {
        let logger = EbpfLogger::init_with_logger(ebpf, InWords)?;
        // SAFETY: plain syscall; the descriptor is owned from here on.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(fd) };
        let stop_fd = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("tcptrace-klog".into())
            .spawn(move || read(logger, &stop_fd))?;
        Ok(KernelLog {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a valid buffer to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits for the kernel's wakeup (or the stop), then logs what is waiting.
fn read(mut logger: EbpfLogger<InWords>, stop: &OwnedFd) {
    loop {
        let mut fds = [
            libc::pollfd {
                fd: logger.as_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            log::debug!("the kernel program's log: poll: {e}");
            return;
        }
        // aya-log panics on a record it cannot parse: stop reading, go on tracing.
        if catch_unwind(AssertUnwindSafe(|| logger.flush())).is_err() {
            log::warn!("the kernel program's log is unreadable: no more kernel messages");
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
    }
}

/// Forwards aya-log's records to the process's logger, the kernel's codes
/// put into words.
struct InWords;

impl Log for InWords {
    fn enabled(&self, metadata: &Metadata) -> bool {
        log::logger().enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if record.target() != oddity::LOG_TARGET {
            return log::logger().log(record);
        }
        let raw = record.args().to_string();
        let text = parse(&raw)
            .and_then(|(code, detail)| describe(code, detail))
            .unwrap_or(raw);
        log::logger().log(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(record.level())
                .target(oddity::LOG_TARGET)
                .build(),
        );
    }

    fn flush(&self) {
        log::logger().flush();
    }
}

/// The kernel's `"<code> <detail in hex>"`.
fn parse(raw: &str) -> Option<(u32, u64)> {
    let (code, detail) = raw.split_once(' ')?;
    Some((code.parse().ok()?, u64::from_str_radix(detail, 16).ok()?))
}

/// Oddity `code` with its detail, in words; `None` for a code this
/// userspace does not know (then the raw message is logged).
pub fn describe(code: u32, detail: u64) -> Option<String> {
    use oddity::*;
    let text = match code {
        SET_STATE_SOCK => format!(
            "inet_sock_set_state: socket {detail:#x} unreadable (its protocol or head): \
             a state change was dropped"
        ),
        SOCK_HEAD => format!(
            "{}: the socket's head was unreadable: the event was dropped",
            tracepoint(detail).map_or_else(|| format!("event kind {detail}"), str::to_owned)
        ),
        ERROR_REPORT_SOCK => format!(
            "inet_sk_error_report: socket {detail:#x} unreadable: a socket error was dropped"
        ),
        FAMILY => {
            format!("a socket of address family {detail} (neither IPv4 nor IPv6): read as IPv4")
        }
        SEGMENT_READ => format!(
            "tcp_send_reset: the answered segment (skb {detail:#x}) was unreadable: \
             the reset's addresses are unknown"
        ),
        SEGMENT_VERSION => format!(
            "tcp_send_reset: the answered segment has IP version {detail}: \
             the reset's addresses are unknown"
        ),
        SIGNAL_TARGET_READ => format!(
            "signal_generate or mark_victim: the target task {detail:#x} was unreadable: \
             a kill was not recorded"
        ),
        FORK_READ => format!(
            "sched_process_fork: task {detail:#x} was unreadable: a forked process is not followed"
        ),
        FOLLOW_FULL => format!(
            "sched_process_fork: the pid filter is full: process {detail} is not followed (--follow)"
        ),
        RING_SLOT => format!(
            "event ring slot {detail} is outside the slot array: that ring's events stop there \
             (a bug: please report it)"
        ),
        SPORT_READ => format!("socket {detail:#x}: its local port was unreadable"),
        NETNS_READ => format!("struct net {detail:#x}: its namespace inode was unreadable"),
        UNREAD_READ => format!("socket {detail:#x}: its unread bytes at close were unreadable"),
        ERROR_READ => format!("socket {detail:#x}: sk_err, retransmits or probes were unreadable"),
        EXIT_CODE_READ => format!("task {detail:#x}: its exit code was unreadable"),
        HANDLER_READ => format!(
            "task {detail:#x}: its signal handlers were unreadable: the signal is taken as fatal"
        ),
        DROP_READ => format!(
            "kfree_skb: the dropped buffer (skb {detail:#x}) or its headers were unreadable: \
             a drop was not looked at"
        ),
        ACCEPT_FD => format!(
            "accept returned fd {detail} but its socket could not be found (closed at once by \
             another thread?): that socket keeps its listener's owner"
        ),
        CONTEXT_READ => format!(
            "a CPU's preempt_count could not be found from task {detail:#x}: that CPU's \
             events name no task (softirq cannot be told from process context there)"
        ),
        _ => return None,
    };
    Some(text)
}

/// The tracepoint of a socket event kind.
fn tracepoint(event_kind: u64) -> Option<&'static str> {
    Some(match u8::try_from(event_kind).ok()? {
        kind::SEND_RESET => "tcp_send_reset",
        kind::RECEIVE_RESET => "tcp_receive_reset",
        kind::RETRANSMIT_SKB => "tcp_retransmit_skb",
        kind::RETRANSMIT_SYNACK => "tcp_retransmit_synack",
        kind::ACCEPT => "sys_exit_accept",
        kind::DESTROY_SOCK => "tcp_destroy_sock",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_words_and_its_detail() {
        for code in 1..oddity::END {
            let text = describe(code, 0x2a).unwrap_or_else(|| panic!("code {code} has no words"));
            assert!(
                text.contains("0x2a") || text.contains("42"),
                "{code}: {text}"
            );
        }
        assert_eq!(describe(oddity::END, 0), None);
        assert_eq!(describe(0, 0), None);
    }

    #[test]
    fn the_kernels_message_is_parsed() {
        assert_eq!(parse("9 3039"), Some((9, 0x3039)));
        assert_eq!(
            parse("1 ffff888100a0b000"),
            Some((1, 0xffff_8881_00a0_b000))
        );
        assert_eq!(parse("oddity"), None);
        assert_eq!(parse("x 1"), None);
        assert_eq!(parse("1 xyz"), None);
    }

    #[test]
    fn the_kernel_is_told_the_level_log_lets_through() {
        assert_eq!(kernel_level(LevelFilter::Off), 0);
        assert_eq!(kernel_level(LevelFilter::Warn), 2);
        assert_eq!(kernel_level(LevelFilter::Debug), 4);
        // aya-log's own numbering (its levels' u8 values).
        assert_eq!(aya_log::Level::Warn as u8, 2);
        assert_eq!(aya_log::Level::Debug as u8, 4);
    }
}
