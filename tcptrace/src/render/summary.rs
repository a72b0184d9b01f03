//! The exit summary (stderr): event accounting, then the [`Summary`] of
//! every socket: open and close paths, RST reasons, handshake-time
//! percentiles.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    io::{self, Write},
};

use super::{escape, fmt_ms, words};
use crate::{
    counters::Counters,
    model::RstReason,
    summary::{DropCounts, HandshakeFailures, Summary},
    tracker::TrackerStats,
};

/// The summary as text, with the event and tracker accounting before it.
pub fn write_summary(
    out: &mut dyn Write,
    summary: &Summary,
    counters: &Counters,
    tracker: &TrackerStats,
) -> io::Result<()> {
    let c = counters;
    writeln!(out, "tcptrace summary")?;
    writeln!(
        out,
        "  events:     {} produced, {} received, {} lost, {} filtered in kernel, {} non-TCP, {} undecodable",
        c.produced, c.received, c.lost, c.filtered, c.not_tcp, c.undecodable
    )?;
    if c.missed > 0 {
        writeln!(
            out,
            "  skipped:    {} program runs skipped by the kernel (an interrupt re-entered a \
             running program on that CPU); their events never existed",
            c.missed
        )?;
    }
    if c.late > 0 {
        writeln!(
            out,
            "  late:       {} events reached tcptrace after later ones from other CPUs \
             (delayed in the kernel past the rings' merge): passed on out of time order",
            c.late
        )?;
    }
    if c.recovered > 0 {
        writeln!(
            out,
            "  recovered:  {} events of runs the kernel skipped (an interrupt re-entered \
             inet_sock_set_state), made by its second program: nothing lost",
            c.recovered
        )?;
    }
    if c.odd > 0 {
        writeln!(
            out,
            "  kernel:     {} oddities (a failed kernel read, an unknown address family, \
             a full map): each logged, warnings above, all with RUST_LOG=tcptrace::kernel=debug",
            c.odd
        )?;
    }
    writeln!(
        out,
        "  sockets:    {} seen, {} evicted (table full), {} tracked at most, {} socketless RSTs",
        tracker.sockets_seen, tracker.evicted, tracker.peak_tracked, tracker.socketless_resets
    )?;
    if tracker.after_eviction > 0 {
        writeln!(
            out,
            "              {} later events of evicted sockets counted, not reported again \
             (--max-sockets raises the table)",
            tracker.after_eviction
        )?;
    }
    writeln!(out, "  opens:      {}", counts(&summary.opens))?;
    writeln!(out, "  closes:     {}", counts(&summary.closes))?;
    if !summary.resets_sent.is_empty() {
        writeln!(out, "  RST sent:   {}", counts(&reset_reasons(summary)))?;
    }
    if !summary.drops.is_empty() || tracker.drops_unjoined > 0 {
        let mut line = counts(&drop_reasons(&summary.drops));
        if !summary.drops_unjoined.is_empty() {
            line.push_str(&format!(
                " (tied to no socket tcptrace tracked: {})",
                counts(&drop_reasons(&summary.drops_unjoined))
            ));
        } else if tracker.drops_unjoined > 0 {
            line.push_str(&format!(
                " ({} tied to no socket tcptrace tracked)",
                tracker.drops_unjoined
            ));
        }
        writeln!(out, "  drops:      {line}")?;
    }
    let l = &summary.listeners;
    if l.total != HandshakeFailures::default() {
        writeln!(out, "  listeners:  {}", failures(&l.total, true))?;
        for (k, f) in &l.by_listener {
            let netns = k.netns.map(|n| format!(" netns {n}")).unwrap_or_default();
            writeln!(
                out,
                "    {}{netns} {}: {}",
                k.listener,
                escape(&k.owner),
                failures(f, false)
            )?;
        }
    }
    for (netns, n) in &summary.netns {
        writeln!(
            out,
            "  netns {netns}: {} SYN cookies sent, {} cookies failed, {} listen overflows, \
             {} listen drops (the namespace's own counters: a SYN cookie has no socket)",
            n.syncookies_sent, n.syncookies_failed, n.listen_overflows, n.listen_drops
        )?;
    }
    if summary.closed_by_exit > 0 {
        let oom = match summary.closed_by_oom_kill {
            0 => String::new(),
            n => format!(", {n} of them by the OOM killer"),
        };
        writeln!(
            out,
            "  exits:      {} sockets closed by a process exit ({} killed by a signal{oom})",
            summary.closed_by_exit, summary.closed_by_signal
        )?;
    }
    if !summary.incomplete.is_empty() {
        writeln!(
            out,
            "  incomplete: {}",
            counts(&incomplete_reasons(summary))
        )?;
    }
    for (what, h) in [
        ("active ", &summary.handshake_active),
        ("passive", &summary.handshake_passive),
    ] {
        if let Some(p) = h.percentiles() {
            writeln!(
                out,
                "  handshake {what}  n={}  p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
                p.count,
                fmt_ms(p.p50_ns),
                fmt_ms(p.p90_ns),
                fmt_ms(p.p99_ns),
                fmt_ms(p.max_ns)
            )?;
        }
    }
    if c.lost > 0 {
        writeln!(
            out,
            "  WARNING: {} events lost (event ring full): some sockets are incomplete; raise --ring-size",
            c.lost
        )?;
    }
    Ok(())
}

/// Everything [`write_summary`] says, as one JSON object (codes, not words).
pub fn summary_json(
    summary: &Summary,
    counters: &Counters,
    tracker: &TrackerStats,
) -> serde_json::Value {
    serde_json::json!({
        "type": "summary",
        "counters": counters,
        "tracker": tracker,
        "summary": summary,
    })
}

/// RSTs sent, each reason named as a ladder names it (the kernel's name,
/// else its number or its absence in words), in that name's order.
fn reset_reasons(summary: &Summary) -> BTreeMap<Cow<'_, str>, u64> {
    let resets = &summary.resets_sent;
    let mut named: BTreeMap<Cow<str>, u64> = resets
        .by_name
        .iter()
        .map(|(name, &n)| (Cow::Borrowed(name.as_str()), n))
        .collect();
    for (&code, &n) in &resets.by_code {
        let reason = RstReason {
            code: Some(code),
            name: None,
        };
        *named.entry(words::reason_text(&reason).into()).or_default() += n;
    }
    if resets.no_reason > 0 {
        let unknown = words::reason_text(&RstReason::from_kernel(None));
        *named.entry(unknown.into()).or_default() += resets.no_reason;
    }
    named
}

/// A listener's failed handshakes in words: every count when `all`, else
/// those that are not 0.
fn failures(f: &HandshakeFailures, all: bool) -> String {
    let parts = [
        (f.synack_retransmits, "SYN/ACK retransmits"),
        (f.requests_expired, "requests expired (no final ACK)"),
        (
            f.accept_queue_overflows,
            "handshake ACKs dropped (accept queue full)",
        ),
        (
            f.listen_drops,
            "segments the listener dropped (its own count, SYNs refused by a full accept queue among them)",
        ),
    ];
    let words: Vec<String> = parts
        .iter()
        .filter(|(n, _)| all || *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
    words.join(", ")
}

/// Dropped segments, each reason as the kernel names it (else its number).
fn drop_reasons(drops: &DropCounts) -> BTreeMap<Cow<'_, str>, u64> {
    let mut named: BTreeMap<Cow<str>, u64> = drops
        .by_name
        .iter()
        .map(|(name, &n)| (Cow::Borrowed(name.as_str()), n))
        .collect();
    for (&code, &n) in &drops.by_code {
        *named.entry(format!("reason {code}").into()).or_default() += n;
    }
    named
}

/// Lives incomplete, by the words for why (in their order).
fn incomplete_reasons(summary: &Summary) -> BTreeMap<&'static str, u64> {
    summary
        .incomplete
        .iter()
        .map(|(&i, &n)| (words::incomplete(i), n))
        .collect()
}

/// "active 20, passive 18" — keys escaped: reason names come from the kernel.
fn counts<K: AsRef<str>>(map: &BTreeMap<K, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    let parts: Vec<String> = map
        .iter()
        .map(|(k, n)| format!("{} {n}", escape(k.as_ref())))
        .collect();
    parts.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;
    use crate::decode::{DropReason, Record, ResetReason};
    use crate::model::{HostSample, ListenerSample, NetnsSample, Tally};
    use crate::tracker::fixtures::*;
    use std::net::SocketAddr;

    fn summary_of(scenarios: &[Vec<Record>]) -> Summary {
        let mut s = Summary::default();
        for recs in scenarios {
            for life in run(recs) {
                s.add(&life, &classify(&life));
            }
        }
        s
    }

    #[test]
    fn drops_are_counted_by_reason_and_listeners_by_owner() {
        let mut s = Summary::default();
        for r in dropped_here() {
            if let Record::Drop(d) = &r {
                s.add_drop(d);
            }
        }
        // What the tracker counted beside the lives (as the pipeline takes it).
        let mut t = crate::tracker::Tracker::new(Default::default());
        for r in dropped_here() {
            for life in t.observe(&r) {
                s.add(&life, &classify(&life));
            }
        }
        for life in t.finish() {
            s.add(&life, &classify(&life));
        }
        for tally in t.take_tallies() {
            s.tally(&tally);
        }
        s.tally(&Tally::UnjoinedDrop(DropReason {
            code: 3,
            name: Some("NO_SOCKET".into()),
        }));
        let stats = TrackerStats {
            drops: 4,
            drops_unjoined: 1,
            ..TrackerStats::default()
        };
        let mut out = Vec::new();
        write_summary(&mut out, &s, &Counters::default(), &stats).unwrap();
        let text = String::from_utf8(out).unwrap();
        let has = |line: &str| text.lines().any(|l| l == line);
        assert!(
            has("  drops:      NETFILTER_DROP 2, TCP_LISTEN_OVERFLOW 2 \
                 (tied to no socket tcptrace tracked: NO_SOCKET 1)"),
            "{text}"
        );
        // The request whose SYN/ACK went again at 2 s had expired (its
        // timer at 4 s) when the listener closed at 4 s.
        assert!(
            has(
                "  listeners:  1 SYN/ACK retransmits, 1 requests expired (no final ACK), \
                 2 handshake ACKs dropped (accept queue full), 0 segments the listener \
                 dropped (its own count, SYNs refused by a full accept queue among them)"
            ),
            "{text}"
        );
        assert!(
            has(
                "    0.0.0.0:8099 nginx[4311]: 1 SYN/ACK retransmits, 1 requests expired \
                 (no final ACK), 2 handshake ACKs dropped (accept queue full)"
            ),
            "{text}"
        );
        let v = summary_json(&s, &Counters::default(), &stats);
        let l = &v["summary"]["listeners"];
        assert_eq!(
            (
                &l["accept_queue_overflows"],
                &l["synack_retransmits"],
                &l["requests_expired"]
            ),
            (
                &serde_json::json!(2),
                &serde_json::json!(1),
                &serde_json::json!(1)
            )
        );
        assert_eq!(l["by_owner"]["nginx[4311]"]["accept_queue_overflows"], 2);
        assert_eq!(l["by_listener"][0]["listener"], "0.0.0.0:8099");
        assert_eq!(l["by_listener"][0]["owner"], "nginx[4311]");
        assert_eq!(l["by_listener"][0]["requests_expired"], 1);
        assert_eq!(v["summary"]["drops"]["by_name"]["NETFILTER_DROP"], 2);
        assert_eq!(v["summary"]["drops_unjoined"]["by_name"]["NO_SOCKET"], 1);
        assert_eq!(v["tracker"]["drops_unjoined"], 1);
    }

    #[test]
    fn samples_count_from_the_first_and_new_listeners_from_zero() {
        let ng = nginx();
        let l = |cookie, port, drops| ListenerSample {
            cookie,
            netns: 7,
            local: SocketAddr::from(([127, 0, 0, 1], port)),
            drops,
        };
        let ns = |cookies| NetnsSample {
            netns: 7,
            syncookies_sent: cookies,
            ..NetnsSample::default()
        };
        let sample = |listeners, netns| HostSample {
            ts_ns: 0,
            listeners,
            netns,
        };
        let owner = |_, a: SocketAddr| match a.port() {
            8099 => Some((a, Some(ng))),
            9000 => Some((a, None)),
            _ => None,
        };
        // A listener whose first event has not been processed yet when a
        // sample comes: counted from 0 once tcptrace follows it.
        let not_yet = |_, _| None;
        let mut s = Summary::default();
        // Before tracing: 5 drops and 9 cookies are not ours.
        s.add_sample(&sample(vec![l(1, 8099, 5)], vec![ns(9)]), owner);
        s.add_sample(&sample(vec![l(1, 8099, 21)], vec![ns(13)]), owner);
        // A listener made while tracing counts from 0; one gone is forgotten.
        s.add_sample(&sample(vec![l(2, 9000, 1)], vec![ns(13)]), not_yet);
        s.add_sample(&sample(vec![l(2, 9000, 3)], vec![ns(13)]), owner);
        s.add_sample(&sample(vec![l(1, 8099, 2)], vec![ns(13)]), owner);
        // One tcptrace does not follow is left to the namespace's counters.
        s.add_sample(&sample(vec![l(3, 7000, 50)], vec![ns(13)]), owner);
        s.add_sample(&sample(vec![l(3, 7000, 90)], vec![ns(13)]), owner);
        assert_eq!(s.listeners.total.listen_drops, 16 + 3 + 2);
        assert_eq!(s.listeners.by_owner["nginx[4311]"].listen_drops, 18);
        assert_eq!(s.listeners.by_owner["unknown"].listen_drops, 3);
        assert_eq!(s.netns[&7].syncookies_sent, 4);
        let mut out = Vec::new();
        write_summary(&mut out, &s, &Counters::default(), &TrackerStats::default()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "\n    127.0.0.1:8099 netns 7 nginx[4311]: 18 segments the listener dropped"
            ),
            "{text}"
        );
        assert!(
            text.contains("\n  netns 7: 4 SYN cookies sent, 0 cookies failed,"),
            "{text}"
        );
    }

    #[test]
    fn summary_counts_paths_reasons_and_handshakes() {
        let s = summary_of(&[
            client_closes_first(),
            refused(),
            killed(),
            handshake_timeout(),
        ]);
        let counters = Counters {
            produced: 40,
            received: 38,
            lost: 2,
            filtered: 5,
            ..Counters::default()
        };
        let stats = TrackerStats {
            sockets_seen: 9,
            evicted: 1,
            peak_tracked: 3,
            socketless_resets: 1,
            ..TrackerStats::default()
        };
        let mut out = Vec::new();
        write_summary(&mut out, &s, &counters, &stats).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "tcptrace summary",
                "  events:     40 produced, 38 received, 2 lost, 5 filtered in kernel, 0 non-TCP, 0 undecodable",
                "  sockets:    9 seen, 1 evicted (table full), 3 tracked at most, 1 socketless RSTs",
                "  opens:      active 4, listen 2, no_socket 1, passive 2",
                "  closes:     active 1, handshake_timeout 1, passive 1, refused 2, reset_received 1, reset_sent 1, still_open 1, stopped_listening 1",
                "  RST sent:   NO_SOCKET 1, TCP_ABORT_ON_CLOSE 1",
                "  exits:      1 sockets closed by a process exit (1 killed by a signal)",
                "  handshake active   n=2  p50 0.062 ms  p90 0.062 ms  p99 0.062 ms  max 0.062 ms",
                "  handshake passive  n=2  p50 0.002 ms  p90 0.002 ms  p99 0.002 ms  max 0.002 ms",
                "  WARNING: 2 events lost (event ring full): some sockets are incomplete; raise --ring-size",
            ]
        );
        let v = summary_json(&s, &counters, &stats);
        assert_eq!(v["summary"]["closes"]["refused"], 2);
        assert_eq!(v["summary"]["handshake_active"]["p50_ns"], 62_000);
        assert_eq!(v["counters"]["lost"], 2);
        assert_eq!(v["tracker"]["evicted"], 1);
    }

    #[test]
    fn summary_names_runs_the_kernel_skipped() {
        let counters = Counters {
            produced: 10,
            received: 10,
            missed: 3,
            ..Counters::default()
        };
        let mut out = Vec::new();
        write_summary(
            &mut out,
            &Summary::default(),
            &counters,
            &TrackerStats::default(),
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("  skipped:    3 program runs skipped by the kernel"),
            "{text}"
        );
        // No oddities, no line about them.
        assert!(!text.contains("oddities"), "{text}");
    }

    #[test]
    fn summary_names_kernel_oddities_in_text_and_json() {
        let counters = Counters {
            odd: 2,
            ..Counters::default()
        };
        let mut out = Vec::new();
        let stats = TrackerStats::default();
        write_summary(&mut out, &Summary::default(), &counters, &stats).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\n  kernel:     2 oddities ("), "{text}");
        // The `tcptrace-summary {json}` line is the counters, as serialised.
        assert_eq!(serde_json::to_value(counters).unwrap()["odd"], 2);
        assert_eq!(
            summary_json(&Summary::default(), &counters, &stats)["counters"]["odd"],
            2
        );
        assert_eq!(serde_json::to_value(Counters::default()).unwrap()["odd"], 0);
    }

    #[test]
    fn summary_words_reasons_and_incompleteness_in_their_order() {
        let c = client();
        let mut lives = run(&[c.by(10, &python()).st(1, 4)]);
        lives[0].mark_lost_events();
        lives[0].evicted = true;
        lives[0].gap = true;
        let mut unnamed = c.irq(20).send_reset(Some(7), None);
        if let Record::SendReset { reason, .. } = &mut unnamed {
            *reason = Some(ResetReason {
                code: 77,
                name: None,
            });
        }
        lives.extend(run(&[
            unnamed,
            c.irq(30).send_reset(Some(7), None),
            c.irq(40).send_reset(Some(7), Some((14, "TCP_STATE"))),
        ]));
        let mut s = Summary::default();
        for life in &lives {
            s.add(life, &classify(life));
        }
        let mut out = Vec::new();
        write_summary(&mut out, &s, &Counters::default(), &TrackerStats::default()).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains(
                "  RST sent:   TCP_STATE 1, reason 77 1, reason unknown (kernel < 6.10) 1\n"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "  incomplete: a transition went unseen 1, events lost 1, evicted (table full) 1, \
                 started mid-life 4\n"
            ),
            "{text}"
        );
    }
}
