use super::*;
use crate::classify::classify;
use crate::decode::{Context, Record, ResetReason};
use crate::tracker::fixtures::*;

/// The summary and attribution of the life of `skaddr` in `records`.
fn told(records: &[Record], skaddr: u64) -> (String, Option<String>) {
    let life = life_of(&run(records), skaddr);
    let v = classify(&life);
    (summary(&life, &v), attribution(&life, &v))
}

#[test]
fn errors_are_told_with_what_the_counts_say() {
    let with_timeout = |errno, retransmits, probes, user_timeout_ms| {
        let mut s = String::new();
        error_into(
            &mut s,
            &SockError {
                offset_ns: 0,
                errno,
                retransmits,
                probes,
                user_timeout_ms,
                icmp_queued: false,
            },
        );
        s
    };
    let text = |errno, retransmits, probes| with_timeout(errno, retransmits, probes, None);
    assert_eq!(
        text(libc::ETIMEDOUT, 15, 0),
        "ETIMEDOUT: retransmission timeout, gave up after 15 retransmits"
    );
    assert_eq!(
        text(libc::ETIMEDOUT, 0, 9),
        "ETIMEDOUT: probes unanswered (keepalive or zero window) (9 probes)"
    );
    assert_eq!(
        text(libc::EHOSTUNREACH, 0, 0),
        "EHOSTUNREACH: ICMP host unreachable"
    );
    assert_eq!(text(4242, 0, 0), "error 4242");
    // TCP_USER_TIMEOUT bounds both: it is what gave up.
    assert_eq!(
        with_timeout(libc::ETIMEDOUT, 3, 0, Some(1500)),
        "ETIMEDOUT: TCP_USER_TIMEOUT (1500 ms) expired, after 3 retransmits"
    );
    assert_eq!(
        with_timeout(libc::ETIMEDOUT, 0, 2, Some(800)),
        "ETIMEDOUT: TCP_USER_TIMEOUT (800 ms) expired (2 probes)"
    );
    // Set, but another error: not mentioned.
    assert_eq!(
        with_timeout(libc::ECONNRESET, 0, 0, Some(800)),
        "ECONNRESET: connection reset by peer"
    );
}

#[test]
fn client_closing_first() {
    let recs = client_closes_first();
    assert_eq!(
        told(&recs, CLIENT_SK),
        (
            "active open (3-way) · active close (4-way)".into(),
            Some("closed by python3[2251] → FIN".into())
        )
    );
    assert_eq!(
        told(&recs, SERVER_SK),
        (
            "passive open (3-way) · passive close (4-way)".into(),
            Some("closed by nginx[4311] → FIN".into())
        )
    );
    assert_eq!(
        told(&recs, LISTENER_SK),
        (
            "listening · stopped listening".into(),
            Some("closed by nginx[4311]".into())
        )
    );
}

#[test]
fn server_closing_first() {
    let (_, attribution) = told(&server_closes_first(), CLIENT_SK);
    assert_eq!(
        attribution.as_deref(),
        Some("closed by python3[2251] → FIN")
    );
}

#[test]
fn refused_on_both_sides() {
    assert_eq!(
        told(&refused(), 0),
        (
            "refused at start (server side: RST sent, no socket)".into(),
            None
        )
    );
    assert_eq!(
        told(&refused(), CLIENT_SK),
        (
            "active open (not established) · refused (RST received in SYN_SENT; peer: no socket (port closed))".into(),
            None
        )
    );
    let life = life_of(&run(&refused()), 0);
    let Close::Refused {
        reason: Some(reason),
        ..
    } = classify(&life).close
    else {
        panic!("not refused")
    };
    assert_eq!(reason_text(&reason), "no socket (port closed)");
}

#[test]
fn linger0_is_a_reset_sent_on_one_side_and_received_on_the_other() {
    let (_, attribution) = told(&linger0(), SERVER_SK);
    assert_eq!(
        attribution.as_deref(),
        Some("closed by nginx[4311] → RST (abortive close, TCP_STATE)")
    );
    let (summary, _) = told(&linger0(), CLIENT_SK);
    assert_eq!(
        summary,
        "active open (3-way) · reset by peer in ESTABLISHED"
    );
    let r = RstReason {
        code: Some(14),
        name: Some("TCP_STATE".into()),
    };
    assert_eq!(
        reason_text(&r),
        "abortive close (SO_LINGER 0, or a listener closed before accepting it)"
    );
}

#[test]
fn unread_close_names_the_reason_and_the_bytes() {
    assert_eq!(
        told(&unread_close(), SERVER_SK),
        (
            "passive open (3-way) · RST sent in ESTABLISHED: application closed with unread data (TCP_ABORT_ON_CLOSE)".into(),
            Some("closed by nginx[4311] → RST (unread data, TCP_ABORT_ON_CLOSE) · 13 bytes never read".into())
        )
    );
}

#[test]
fn sigkill_attribution() {
    let (_, attribution) = told(&killed(), SERVER_SK);
    assert_eq!(
        attribution.as_deref(),
        Some(
            "closed by exit of nginx[4311], killed by SIGKILL from kill[4390] → RST (unread data, TCP_ABORT_ON_CLOSE) · 5 bytes never read"
        )
    );
}

#[test]
fn a_signal_not_proven_fatal_is_worded_as_such() {
    let (s, ng) = (server(), nginx());
    let mut recs = handshake();
    recs.extend([
        signal(1990, 15, 4311, &killer()),
        Record::ProcessExit {
            ts_ns: us(2000),
            task: ng,
            exit_code: None,
            group_dead: true,
        },
        s.by(2010, &ng).st(1, 4),
        s.irq(2020).st(4, 5),
        s.irq(2030).close(5, 0),
    ]);
    assert_eq!(
        told(&recs, SERVER_SK).1.as_deref(),
        Some("closed by exit of nginx[4311], after SIGTERM from kill[4390] → FIN (graceful)")
    );
}

#[test]
fn exit_code_3_closes_gracefully() {
    assert_eq!(
        told(&exit_code_3(), SERVER_SK).1.as_deref(),
        Some("closed by exit of nginx[4311] (exit code 3) → FIN (graceful)")
    );
}

#[test]
fn handshake_timeout_and_an_abandoned_connect() {
    assert_eq!(
        told(&handshake_timeout(), CLIENT_SK).0,
        "active open (not established) · handshake timeout (3 SYN retransmits, no RST)"
    );
    // python3 gives up connecting itself.
    let c0 = client();
    let aborted = [
        c0.by(0, &python()).st(7, 2),
        c0.by(900, &python()).close(2, 0),
    ];
    assert_eq!(
        told(&aborted, CLIENT_SK).1.as_deref(),
        Some("closed by python3[2251] → connect abandoned")
    );
}

#[test]
fn incomplete_lives_say_why() {
    let c = client();
    let mut life = life_of(&run(&[c.by(10, &python()).st(1, 4)]), CLIENT_SK);
    life.mark_lost_events();
    assert_eq!(
        summary(&life, &classify(&life)),
        "open not seen · still open (FIN_WAIT1) · incomplete: started mid-life, events lost"
    );
}

#[test]
fn a_thread_that_closes_is_named_after_its_process() {
    let c = client();
    let owner = python();
    // Another thread of the owner's process, with a name of its own.
    let thread = Proc {
        pid: owner.tgid + 7,
        comm: "bg_worker".into(),
        ..owner
    };
    let mut close = c.by(20, &owner).st(1, 4);
    if let Record::State { sock, .. } = &mut close {
        sock.context = Context::Process(thread);
    }
    let recs = [
        c.by(0, &owner).st(7, 2),
        c.irq(10).st(2, 1),
        close,
        c.irq(30).st(4, 5),
        c.irq(31).fin_wait2_close(true),
    ];
    let attribution = told(&recs, CLIENT_SK).1;
    let expected = format!(
        "closed by {}[{}] (thread bg_worker)",
        &*owner.comm, owner.tgid
    );
    assert!(
        attribution
            .as_deref()
            .is_some_and(|a| a.starts_with(&expected)),
        "{attribution:?}"
    );
}

#[test]
fn reason_words() {
    let r = |code, name: Option<&str>| {
        RstReason::from_kernel(Some(&ResetReason {
            code,
            name: name.map(str::to_owned),
        }))
    };
    let text = |code, name| reason_text(&r(code, name));
    assert_eq!(
        text(12, Some("TCP_ABORT_ON_LINGER")),
        "linger timeout in FIN_WAIT2"
    );
    assert_eq!(
        text(8, Some("TCP_ABORT_ON_DATA")),
        "data arrived after close"
    );
    assert_eq!(text(15, Some("TCP_KEEPALIVE_TIMEOUT")), "keepalive timeout");
    assert_eq!(text(13, Some("TCP_ABORT_ON_MEMORY")), "out of memory");
    assert_eq!(text(3, Some("TCP_RFC7323_PAWS")), "TCP_RFC7323_PAWS");
    assert_eq!(
        reason_long(&r(3, Some("TCP_RFC7323_PAWS"))),
        "TCP_RFC7323_PAWS"
    );
    assert_eq!(
        reason_long(&r(11, Some("TCP_ABORT_ON_CLOSE"))),
        "application closed with unread data (TCP_ABORT_ON_CLOSE)"
    );
    assert_eq!(text(77, None), "reason 77");
    assert_eq!(
        reason_text(&RstReason::from_kernel(None)),
        "reason unknown (kernel < 6.10)"
    );
}

#[test]
fn flags_and_labels() {
    let flags = |f| {
        let mut s = String::new();
        push_tcp_flags(&mut s, f);
        s
    };
    assert_eq!(flags(0x11), "FIN|ACK");
    assert_eq!(flags(0x02), "SYN");
    assert_eq!(flags(0), "no flags");
    assert_eq!(proc_label(&nginx()), "nginx[4311]");
}

#[test]
fn an_oom_kill_is_the_oom_killers() {
    let (_, attribution) = told(&oom_killed(), SERVER_SK);
    assert_eq!(
        attribution.as_deref(),
        Some(
            "closed by exit of nginx[4311], killed by the OOM killer (SIGKILL) → RST \
             (unread data, TCP_ABORT_ON_CLOSE) · 5 bytes never read"
        )
    );
}

#[test]
fn tcp_state_is_worded_by_who_sent_it() {
    let r = RstReason {
        code: Some(14),
        name: Some("TCP_STATE".into()),
    };
    let text = |unaccepted| {
        let mut s = String::new();
        reason_text_in(&mut s, &r, unaccepted);
        s
    };
    assert_eq!(text(Some(true)), "its listener closed before accepting it");
    assert_eq!(text(Some(false)), "abortive close (SO_LINGER 0)");
    // Unknown context (the summary's totals): both causes named.
    assert!(text(None).contains("SO_LINGER 0") && text(None).contains("listener"));
}

#[test]
fn drops_are_told_from_the_sockets_side() {
    use crate::decode::DropReason;
    use crate::model::{Direction, SegmentKind};
    let life = life_of(&run(&client_closes_first()), LISTENER_SK);
    let reason = |code, name: Option<&str>| DropReason {
        code,
        name: name.map(str::to_owned),
    };
    let told = |kind, r: &DropReason, direction, count, life: &SocketLife| {
        let mut s = String::new();
        drop_into(&mut s, kind, r, direction, count, life);
        s
    };
    let netfilter = reason(12, Some("NETFILTER_DROP"));
    assert_eq!(
        told(SegmentKind::Syn, &netfilter, Direction::Outgoing, 1, &life),
        "SYN dropped on this host: NETFILTER_DROP"
    );
    assert_eq!(
        told(SegmentKind::Syn, &netfilter, Direction::Incoming, 3, &life),
        "3 × SYN received, dropped on this host: NETFILTER_DROP"
    );
    assert_eq!(
        told(
            SegmentKind::Rst,
            &reason(42, Some("TCP_INVALID_SEQUENCE")),
            Direction::Incoming,
            1,
            &life
        ),
        "RST ignored: TCP_INVALID_SEQUENCE"
    );
    let overflow = reason(40, Some("TCP_LISTEN_OVERFLOW"));
    assert_eq!(
        told(SegmentKind::Ack, &overflow, Direction::Incoming, 18, &life),
        "18 × handshake ACK dropped: accept queue of nginx[4311] full (TCP_LISTEN_OVERFLOW)"
    );
    let mut ownerless = life.clone();
    ownerless.owner = None;
    assert_eq!(
        told(
            SegmentKind::Ack,
            &overflow,
            Direction::Incoming,
            1,
            &ownerless
        ),
        "handshake ACK dropped: accept queue of the listener full (TCP_LISTEN_OVERFLOW)"
    );
    assert_eq!(
        told(
            SegmentKind::Fin,
            &reason(99, None),
            Direction::Outgoing,
            1,
            &life
        ),
        "FIN dropped on this host: reason 99"
    );
}

#[test]
fn a_handshake_timeout_says_when_its_syns_never_left() {
    use crate::decode::DropReason;
    use crate::model::LocalDrops;
    let mut s = String::new();
    close_into(
        &mut s,
        &Close::HandshakeTimeout {
            syn_retransmits: 2,
            syns_dropped: Some(LocalDrops {
                count: 3,
                reason: DropReason {
                    code: 12,
                    name: Some("NETFILTER_DROP".into()),
                },
            }),
        },
        None,
    );
    assert_eq!(
        s,
        "handshake timeout (2 SYN retransmits, no RST): 3 SYNs dropped on this host (NETFILTER_DROP)"
    );
}
