//! The metrics sink on recorded event sequences: what each path counts,
//! the bound on per-service series, hostile names in the exposition, and
//! no allocation once label values are known.

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
};

use super::*;
use crate::{
    classify::classify,
    decode::Comm,
    pipeline::Output,
    tracker::{SocketLife, fixtures::*},
};

/// Counts this thread's allocations: tests run on threads of their own, so
/// each sees only its own.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: defers to the system allocator; the count is a thread-local Cell
// with a const initialiser and no destructor (it never allocates).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// The text exposition (0.0.4) of everything counted so far.
fn scrape(m: &Metrics) -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, m.registry()).unwrap();
    out
}

/// The value of the sample written exactly `series` (name and labels).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

fn feed(sink: &mut Box<dyn Output>, lives: &[SocketLife]) {
    for life in lives {
        sink.finished(life, &classify(life)).unwrap();
    }
}

#[test]
fn each_path_is_counted_by_its_codes() {
    let m = Metrics::new(DEFAULT_MAX_SERIES);
    let mut sink = m.sink();
    for records in [
        refused(),
        linger0(),
        unread_close(),
        killed(),
        handshake_timeout(),
    ] {
        feed(&mut sink, &run(&records));
    }
    let text = scrape(&m);
    let v = |series: &str| value(&text, series).unwrap_or_else(|| panic!("{series}:\n{text}"));
    assert_eq!(v(r#"tcptrace_resets_sent_total{reason="NO_SOCKET"}"#), 1.0);
    assert_eq!(v(r#"tcptrace_resets_sent_total{reason="TCP_STATE"}"#), 1.0);
    assert_eq!(
        v(r#"tcptrace_resets_sent_total{reason="TCP_ABORT_ON_CLOSE"}"#),
        2.0
    );
    assert_eq!(
        v(r#"tcptrace_sockets_total{open="no_socket",close="refused"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tcptrace_sockets_total{open="active",close="reset_received"}"#),
        3.0
    );
    assert_eq!(
        v(r#"tcptrace_resets_received_total{state="ESTABLISHED"}"#),
        3.0
    );
    assert_eq!(
        v(r#"tcptrace_resets_received_total{state="SYN_SENT"}"#),
        1.0
    );
    assert_eq!(v("tcptrace_handshake_timeouts_total"), 1.0);
    assert_eq!(v("tcptrace_closes_by_exit_total"), 1.0);
    assert_eq!(
        v(r#"tcptrace_closes_by_signal_total{signal="SIGKILL"}"#),
        1.0
    );
    assert_eq!(
        v(r#"tcptrace_process_resets_sent_total{process="nginx",reason="TCP_ABORT_ON_CLOSE"}"#),
        2.0
    );
    // A socketless reset has no owner.
    assert_eq!(
        v(r#"tcptrace_process_sockets_total{process="unknown",close="refused"}"#),
        1.0
    );
    assert_eq!(v(r#"tcptrace_handshake_seconds_count{side="client"}"#), 3.0);
    assert_eq!(v(r#"tcptrace_handshake_seconds_count{side="server"}"#), 3.0);
    // 62 µs, 62 µs, 62 µs: all three under the 100 µs bucket.
    assert_eq!(
        v(r#"tcptrace_handshake_seconds_bucket{side="client",le="0.0001"}"#),
        3.0
    );
    assert!(v(r#"tcptrace_socket_lifetime_seconds_count{side="server"}"#) >= 3.0);
}

fn named(comm: &str, records: &[crate::decode::Record]) -> Vec<SocketLife> {
    let mut lives = run(records);
    for life in &mut lives {
        if let Some(o) = &mut life.owner {
            o.comm = Comm::from(comm);
        }
    }
    lives
}

#[test]
fn per_process_series_stop_at_the_bound_and_count_the_rest() {
    let k = 20;
    let m = Metrics::new(k);
    let mut sink = m.sink();
    let lives = run(&linger0());
    for i in 0..300 {
        let mut these = lives.clone();
        for life in &mut these {
            if let Some(o) = &mut life.owner {
                o.comm = Comm::from(format!("proc{i:03}").as_str());
            }
        }
        feed(&mut sink, &these);
    }
    let text = scrape(&m);
    let processes: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| l.starts_with("tcptrace_process_sockets_total{"))
        .filter_map(|l| l.split('"').nth(1))
        .collect();
    assert_eq!(processes.len(), k + 1, "{processes:?}");
    assert!(processes.contains("other"));
    // Every socket of the 280 processes past the bound went to `other`.
    let owned = lives.iter().filter(|l| l.owner.is_some()).count();
    assert_eq!(
        value(
            &text,
            r#"tcptrace_metrics_label_overflow_total{label="process"}"#
        ),
        Some((280 * owned) as f64)
    );
    let other = r#"tcptrace_process_sockets_total{process="other",close="reset_received"}"#;
    assert_eq!(value(&text, other), Some(280.0));
}

#[test]
fn hostile_names_are_escaped_as_the_formats_require() {
    let m = Metrics::new(DEFAULT_MAX_SERIES);
    let mut sink = m.sink();
    let hostile = "q\"b\\n\nx\x1b[31m";
    feed(&mut sink, &named(hostile, &linger0()));
    let text = scrape(&m);
    let escaped = r#"process="q\"b\\n\nx"#;
    assert!(
        text.lines()
            .any(|l| l.contains(escaped) && l.contains("\x1b[31m")),
        "{text}"
    );
    // Every sample stays one line: the newline in the name is escaped.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            l.starts_with("tcptrace_"),
            "a line broken by a label: {l:?}"
        );
    }
    let mut om = String::new();
    prometheus_client::encoding::text::encode(&mut om, m.registry()).unwrap();
    assert!(om.contains(escaped) && om.ends_with("# EOF\n"), "{om}");
}

#[test]
fn a_process_named_other_shares_the_overflow_series() {
    let m = Metrics::new(1);
    let mut sink = m.sink();
    feed(&mut sink, &named("first", &linger0()));
    feed(&mut sink, &named("second", &linger0()));
    // Past the bound: "other" the code, which equals "other" the name.
    feed(&mut sink, &named("other", &linger0()));
    let text = scrape(&m);
    let series = r#"tcptrace_process_sockets_total{process="other",close="reset_received"}"#;
    assert_eq!(text.matches(&format!("{series} ")).count(), 1, "{text}");
    assert_eq!(value(&text, series), Some(2.0));
}

#[test]
fn counting_a_known_socket_allocates_nothing() {
    let m = Metrics::new(DEFAULT_MAX_SERIES);
    let mut sink = m.sink();
    let mut lives = Vec::new();
    for records in [
        refused(),
        linger0(),
        unread_close(),
        killed(),
        handshake_timeout(),
    ] {
        lives.extend(run(&records));
    }
    let verdicts: Vec<_> = lives.iter().map(classify).collect();
    // The first time, label values are interned and series created.
    for (life, verdict) in lives.iter().zip(&verdicts) {
        sink.finished(life, verdict).unwrap();
    }
    let stats = crate::tracker::TrackerStats::default();
    let summary = crate::summary::Summary::default();
    let before = allocations();
    for _ in 0..1000 {
        for (life, verdict) in lives.iter().zip(&verdicts) {
            sink.finished(life, verdict).unwrap();
        }
        sink.tick(0, &stats, &summary).unwrap();
    }
    assert_eq!(allocations() - before, 0, "allocations in the steady state");
}

#[test]
fn listeners_failures_and_syn_cookies_are_counted_once_each() {
    let m = Metrics::new(DEFAULT_MAX_SERIES);
    let mut sink = m.sink();
    // As they happen: a SYN/ACK retransmit and accept-queue overflows.
    for r in dropped_here() {
        sink.record(&r).unwrap();
    }
    // What the summary counts from samples and inference, at two ticks:
    // each tick adds only what is new since the last.
    let stats = crate::tracker::TrackerStats::default();
    let mut summary = crate::summary::Summary::default();
    summary.listeners.total.requests_expired = 2;
    summary.listeners.total.listen_drops = 16;
    summary.netns_total.syncookies_sent = 4;
    sink.tick(1, &stats, &summary).unwrap();
    summary.listeners.total.requests_expired = 3;
    sink.tick(2, &stats, &summary).unwrap();
    sink.tick(3, &stats, &summary).unwrap();
    let text = scrape(&m);
    let failures = |kind: &str| {
        value(
            &text,
            &format!(r#"tcptrace_listener_failures_total{{kind="{kind}"}}"#),
        )
    };
    assert_eq!(failures("synack_retransmit"), Some(1.0), "{text}");
    assert_eq!(failures("accept_queue_overflow"), Some(2.0), "{text}");
    assert_eq!(failures("request_expired"), Some(3.0), "{text}");
    assert_eq!(failures("listen_drop"), Some(16.0), "{text}");
    assert_eq!(
        value(&text, r#"tcptrace_syn_cookies_total{result="sent"}"#),
        Some(4.0),
        "{text}"
    );
}

#[test]
fn numbered_reasons_are_written_without_allocating() {
    let mut buf = [0u8; 32];
    assert_eq!(labels::numbered(&mut buf, "code_", 0), "code_0");
    assert_eq!(labels::numbered(&mut buf, "code_", 77), "code_77");
    assert_eq!(
        labels::numbered(&mut buf, "code_", u32::MAX),
        "code_4294967295"
    );
}

#[test]
fn the_cli_flags_view_none_needs_metrics_or_a_recording() {
    use crate::cli::{Args, ArgsError};
    use clap::Parser as _;
    let parse = |args: &[&str]| {
        Args::try_parse_from(std::iter::once("tcptrace").chain(args.iter().copied()))
    };
    let err = parse(&["--view", "none"])
        .unwrap()
        .trace_options()
        .unwrap_err();
    assert_eq!(err, ArgsError::NothingToShow);
    assert!(err.to_string().contains("--metrics"), "{err}");
    for ok in [
        &["--view", "none", "--metrics", "9464"][..],
        &["--view", "none", "--write", "/tmp/x.rec"],
    ] {
        assert!(parse(ok).unwrap().trace_options().is_ok(), "{ok:?}");
    }
    // A replay has neither.
    let err = parse(&["--view", "none", "--read", "x.rec"])
        .unwrap()
        .read_filter()
        .unwrap_err();
    assert_eq!(err, ArgsError::NothingToShow);
    assert!(parse(&["--metrics", "9464", "--read", "x.rec"]).is_err());
    let args = parse(&["--metrics", "9464", "--metrics-max-series", "7"]).unwrap();
    assert_eq!(args.metrics_max_series, 7);
    assert!(parse(&["--metrics", "1", "--metrics-max-series", "0"]).is_err());
    assert!(parse(&["--metrics-max-series", "5"]).is_err());
    let err = parse(&["--metrics", "nonsense"]).unwrap_err().to_string();
    assert!(err.contains("127.0.0.1:9464"), "{err}");
}
