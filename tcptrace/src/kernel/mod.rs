//! Everything that depends on the running kernel's version lives here:
//! tracepoint layouts (format files), RST reason names (print fmt), struct
//! offsets (BTF), and which tracepoints exist. A new kernel means one place
//! to look.

pub mod btf;
pub mod format;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use tcptrace_common::{Config, ExitFields, SignalFields, SockFields, StructOffsets};

pub use self::{btf::Btf, format::Format};

/// Where tracefs is mounted (it is not, on a fresh machine: see
/// [`crate::loader::ensure_tracefs`]).
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// A tracepoint tcptrace can use, and what is lost without it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracepoint {
    pub group: &'static str,
    pub name: &'static str,
    /// Name of the program in the kernel object.
    pub program: &'static str,
    /// Kernel version that introduced it, for error messages.
    pub since: &'static str,
    /// Without it tcptrace cannot run at all.
    pub required: bool,
    /// What the output lacks without it.
    pub purpose: &'static str,
}

pub const TRACEPOINTS: &[Tracepoint] = &[
    Tracepoint {
        group: "sock",
        name: "inet_sock_set_state",
        program: "inet_sock_set_state",
        since: "4.16",
        required: true,
        purpose: "TCP state transitions",
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_send_reset",
        program: "tcp_send_reset",
        since: "4.15 (reason since 6.10)",
        required: false,
        purpose: "resets sent, with the kernel's reason",
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_receive_reset",
        program: "tcp_receive_reset",
        since: "4.15",
        required: false,
        purpose: "resets received",
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_retransmit_skb",
        program: "tcp_retransmit_skb",
        since: "4.15",
        required: false,
        purpose: "SYN retransmissions (handshake timeouts)",
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_retransmit_synack",
        program: "tcp_retransmit_synack",
        since: "4.15",
        required: false,
        purpose: "SYN/ACK retransmissions",
    },
    Tracepoint {
        group: "tcp",
        name: "tcp_destroy_sock",
        program: "tcp_destroy_sock",
        since: "4.15",
        required: false,
        purpose: "the end of a socket's life",
    },
    Tracepoint {
        group: "sched",
        name: "sched_process_exit",
        program: "sched_process_exit",
        since: "2.6.32",
        required: false,
        purpose: "closes caused by a process exiting",
    },
    Tracepoint {
        group: "signal",
        name: "signal_generate",
        program: "signal_generate",
        since: "3.2",
        required: false,
        purpose: "which signal killed a process, and who sent it",
    },
    Tracepoint {
        group: "irq",
        name: "softirq_entry",
        program: "softirq_entry",
        since: "2.6.32",
        required: false,
        purpose: "telling softirq from process context",
    },
    Tracepoint {
        group: "irq",
        name: "softirq_exit",
        program: "softirq_exit",
        since: "2.6.32",
        required: false,
        purpose: "telling softirq from process context",
    },
];

/// RST reason names as the running kernel prints them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResetReasons(BTreeMap<u32, String>);

impl ResetReasons {
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (u32, &'a str)>) -> ResetReasons {
        ResetReasons(pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect())
    }

    pub fn name(&self, code: u32) -> Option<&str> {
        self.0.get(&code).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What the running kernel looks like to tcptrace.
#[derive(Clone, Debug)]
pub struct KernelLayout {
    /// Tracepoint layouts and offsets for the kernel program.
    pub config: Config,
    pub reasons: ResetReasons,
    /// Optional tracepoints this kernel lacks, with what is lost.
    pub missing: Vec<Tracepoint>,
    /// Present tracepoints (attach these).
    pub present: Vec<Tracepoint>,
    /// Struct offsets could not be read (no BTF): unread bytes and exit codes
    /// are left out.
    pub btf_missing: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error(
        "this kernel has no {group}:{name} tracepoint (added in Linux {since}); \
         tcptrace needs it for {purpose}"
    )]
    MissingTracepoint {
        group: &'static str,
        name: &'static str,
        since: &'static str,
        purpose: &'static str,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}: {source}")]
    Parse {
        path: PathBuf,
        source: format::FormatError,
    },
    #[error("{tracepoint}: field `{field}` is missing or has an unexpected size")]
    Field {
        tracepoint: &'static str,
        field: &'static str,
    },
}

fn absent_or(offset: Option<u16>) -> u16 {
    offset.unwrap_or(tcptrace_common::ABSENT)
}

/// Offsets of the fields tcptrace reads from any socket tracepoint; fields
/// this kernel's layout lacks stay [`tcptrace_common::ABSENT`], and so do
/// fields past the [`tcptrace_common::RECORD_MAX`] bytes the kernel program
/// copies (a bigger future layout loses annotations, never correctness).
pub fn sock_fields(format: &Format) -> SockFields {
    let at = |name: &str, size: u16| copied_field(format, name, size);
    let mut f = SockFields::NONE;
    f.skaddr = at("skaddr", 8);
    f.oldstate = at("oldstate", 4);
    f.newstate = at("newstate", 4);
    f.state = at("state", 4);
    f.protocol = at("protocol", 2);
    f.family = at("family", 2);
    f.sport = at("sport", 2);
    f.dport = at("dport", 2);
    f.saddr = at("saddr", 4);
    f.daddr = at("daddr", 4);
    f.saddr_v6 = at("saddr_v6", 16);
    f.daddr_v6 = at("daddr_v6", 16);
    // Since 6.10 tcp_send_reset carries sockaddrs (sizeof sockaddr_in6 = 28).
    f.saddr_sockaddr = at("saddr", 28);
    f.daddr_sockaddr = at("daddr", 28);
    f.reason = at("reason", 4);
    f.cookie = at("sock_cookie", 8);
    f.err = at("err", 4);
    f.record_len = copied_len(format);
    f
}

/// Offset of a field the kernel program can read from its copy of the
/// record: present with this size and within the first RECORD_MAX bytes.
fn copied_field(format: &Format, name: &str, size: u16) -> u16 {
    let max = tcptrace_common::RECORD_MAX;
    absent_or(
        format
            .offset(name, size)
            .filter(|&off| usize::from(off) + usize::from(size) <= max),
    )
}

/// How many bytes of the record the kernel program copies.
fn copied_len(format: &Format) -> u16 {
    format.record_len().min(tcptrace_common::RECORD_MAX as u16)
}

/// Signals whose default action ends the process (term or core dump).
pub fn default_fatal_signals() -> u64 {
    [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGILL,
        libc::SIGTRAP,
        libc::SIGABRT,
        libc::SIGBUS,
        libc::SIGFPE,
        libc::SIGKILL,
        libc::SIGUSR1,
        libc::SIGSEGV,
        libc::SIGUSR2,
        libc::SIGPIPE,
        libc::SIGALRM,
        libc::SIGTERM,
        libc::SIGXCPU,
        libc::SIGXFSZ,
        libc::SIGSYS,
    ]
    .iter()
    .fold(0u64, |mask, &sig| mask | (1u64 << sig))
}

impl KernelLayout {
    /// Reads the running kernel: format files under `tracefs`, and BTF.
    pub fn read(tracefs: &Path, btf: Option<&Btf>) -> Result<KernelLayout, LayoutError> {
        let mut formats = BTreeMap::new();
        let mut missing = Vec::new();
        let mut present = Vec::new();
        for tp in TRACEPOINTS {
            let path = tracefs
                .join("events")
                .join(tp.group)
                .join(tp.name)
                .join("format");
            match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let format = Format::parse(&text)
                        .map_err(|source| LayoutError::Parse { path, source })?;
                    formats.insert(tp.name, format);
                    present.push(*tp);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if tp.required {
                        return Err(LayoutError::MissingTracepoint {
                            group: tp.group,
                            name: tp.name,
                            since: tp.since,
                            purpose: tp.purpose,
                        });
                    }
                    missing.push(*tp);
                }
                Err(source) => return Err(LayoutError::Read { path, source }),
            }
        }
        Self::from_formats(&formats, btf, present, missing)
    }

    /// Builds the layout from parsed format files (keyed by tracepoint name).
    pub fn from_formats(
        formats: &BTreeMap<&str, Format>,
        btf: Option<&Btf>,
        present: Vec<Tracepoint>,
        missing: Vec<Tracepoint>,
    ) -> Result<KernelLayout, LayoutError> {
        let mut config = Config::EMPTY;
        let sock = |name: &str| {
            formats
                .get(name)
                .map(sock_fields)
                .unwrap_or(SockFields::NONE)
        };
        config.set_state = sock("inet_sock_set_state");
        for (field, offset) in [
            ("skaddr", config.set_state.skaddr),
            ("oldstate", config.set_state.oldstate),
            ("newstate", config.set_state.newstate),
            ("protocol", config.set_state.protocol),
            ("family", config.set_state.family),
            ("sport", config.set_state.sport),
            ("dport", config.set_state.dport),
        ] {
            if offset == tcptrace_common::ABSENT {
                return Err(LayoutError::Field {
                    tracepoint: "inet_sock_set_state",
                    field,
                });
            }
        }
        config.send_reset = sock("tcp_send_reset");
        config.receive_reset = sock("tcp_receive_reset");
        config.retransmit_skb = sock("tcp_retransmit_skb");
        config.retransmit_synack = sock("tcp_retransmit_synack");
        config.destroy_sock = sock("tcp_destroy_sock");
        if let Some(f) = formats.get("sched_process_exit") {
            config.process_exit = ExitFields {
                group_dead: copied_field(f, "group_dead", 1),
                record_len: copied_len(f),
                _pad: [0; 2],
            };
        }
        if let Some(f) = formats.get("signal_generate") {
            config.signal = SignalFields {
                sig: copied_field(f, "sig", 4),
                pid: copied_field(f, "pid", 4),
                result: copied_field(f, "result", 4),
                record_len: copied_len(f),
            };
        }
        config.signal_mask = default_fatal_signals();
        let offsets = btf.map(|btf| StructOffsets {
            tcp_rcv_nxt: btf.member_offset("tcp_sock", "rcv_nxt").unwrap_or(0),
            tcp_copied_seq: btf.member_offset("tcp_sock", "copied_seq").unwrap_or(0),
            task_exit_code: btf.member_offset("task_struct", "exit_code").unwrap_or(0),
            _pad: 0,
        });
        config.offsets = offsets.unwrap_or_default();
        let reasons = formats
            .get("tcp_send_reset")
            .map(|f| ResetReasons(f.symbols("reason")))
            .unwrap_or_default();
        Ok(KernelLayout {
            config,
            reasons,
            missing,
            present,
            btf_missing: btf.is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Format {
        let text = match name {
            "inet_sock_set_state" => include_str!("fixtures/6.18/inet_sock_set_state.format"),
            "tcp_send_reset" => include_str!("fixtures/6.18/tcp_send_reset.format"),
            "tcp_receive_reset" => include_str!("fixtures/6.18/tcp_receive_reset.format"),
            "sched_process_exit" => include_str!("fixtures/6.18/sched_process_exit.format"),
            "signal_generate" => include_str!("fixtures/6.18/signal_generate.format"),
            "old_send_reset" => include_str!("fixtures/5.15/tcp_send_reset.format"),
            _ => unreachable!(),
        };
        Format::parse(text).unwrap()
    }

    #[test]
    fn builds_the_config_for_this_kernel() {
        let mut formats = BTreeMap::new();
        for name in [
            "inet_sock_set_state",
            "tcp_send_reset",
            "tcp_receive_reset",
            "sched_process_exit",
            "signal_generate",
        ] {
            formats.insert(name, fixture(name));
        }
        let layout = KernelLayout::from_formats(&formats, None, vec![], vec![]).unwrap();
        let c = layout.config;
        assert_eq!((c.set_state.skaddr, c.set_state.protocol), (8, 30));
        assert_eq!((c.set_state.record_len, c.send_reset.record_len), (72, 88));
        assert_eq!(c.set_state.daddr_v6, 56);
        // 6.18's send_reset: sockaddrs, a reason, no split ports.
        assert_eq!(c.send_reset.saddr_sockaddr, 32);
        assert_eq!(c.send_reset.daddr_sockaddr, 60);
        assert_eq!(c.send_reset.reason, 28);
        assert_eq!(c.send_reset.sport, tcptrace_common::ABSENT);
        assert_eq!(c.receive_reset.cookie, 64);
        assert_eq!(
            (c.process_exit.group_dead, c.process_exit.record_len),
            (32, 33)
        );
        assert_eq!((c.signal.sig, c.signal.pid, c.signal.result), (8, 36, 44));
        assert_eq!(c.signal.record_len, 48);
        assert_eq!(layout.reasons.name(11), Some("TCP_ABORT_ON_CLOSE"));
        assert!(layout.btf_missing);
        assert_eq!(c.offsets, StructOffsets::default());
        assert_ne!(c.signal_mask & (1 << libc::SIGKILL), 0);
        assert_eq!(c.signal_mask & (1 << libc::SIGCHLD), 0);
    }

    #[test]
    fn an_older_send_reset_degrades_to_no_reason() {
        let mut formats = BTreeMap::new();
        formats.insert("inet_sock_set_state", fixture("inet_sock_set_state"));
        formats.insert("tcp_send_reset", fixture("old_send_reset"));
        let layout = KernelLayout::from_formats(&formats, None, vec![], vec![]).unwrap();
        assert_eq!(layout.config.send_reset.reason, tcptrace_common::ABSENT);
        assert_eq!(
            layout.config.send_reset.saddr_sockaddr,
            tcptrace_common::ABSENT
        );
        assert_eq!(layout.config.send_reset.sport, 28);
        assert!(layout.reasons.is_empty());
    }

    #[test]
    fn a_set_state_without_protocol_is_refused() {
        let text = include_str!("fixtures/6.18/inet_sock_set_state.format")
            .replace("offset:30;\tsize:2;", "offset:30;\tsize:4;");
        let mut formats = BTreeMap::new();
        formats.insert("inet_sock_set_state", Format::parse(&text).unwrap());
        let err = KernelLayout::from_formats(&formats, None, vec![], vec![]).unwrap_err();
        assert!(err.to_string().contains("`protocol`"), "{err}");
    }

    #[test]
    fn a_missing_required_tracepoint_names_its_kernel_version() {
        let dir =
            std::env::temp_dir().join(format!("tcptrace-empty-tracefs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = KernelLayout::read(&dir, None).unwrap_err();
        assert!(
            err.to_string().contains("sock:inet_sock_set_state"),
            "{err}"
        );
        assert!(err.to_string().contains("4.16"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
