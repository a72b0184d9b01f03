use super::fixtures::*;
use super::*;
use crate::model::RetransmitKind;
use crate::render::words;

fn steps(life: &SocketLife) -> Vec<(u8, u8)> {
    life.steps
        .iter()
        .map(|s| (s.old as u8, s.new as u8))
        .collect()
}

#[test]
fn client_closes_first_gives_three_complete_lives_in_destroy_order() {
    let lives = run(&client_closes_first());
    let order: Vec<u64> = lives.iter().map(|l| l.skaddr).collect();
    assert_eq!(order, [CLIENT_SK, SERVER_SK, LISTENER_SK]);

    let c = &lives[0];
    assert_eq!(c.role, Role::Client);
    assert_eq!(
        c.local,
        addr("127.0.0.1:45126"),
        "port 0 filled from the next event"
    );
    assert_eq!(c.remote, addr("127.0.0.1:8099"));
    assert_eq!(c.owner, Some(python()));
    assert_eq!(steps(c), [(7, 2), (2, 1), (1, 4), (4, 5), (5, 7)]);
    assert_eq!(
        (c.start_ns, c.end_ns, c.duration_ns),
        (us(1000), us(1948), 948_000)
    );
    assert_eq!(c.steps[1].offset_ns, 62_000);
    assert!(c.time_wait && c.destroyed);
    assert_eq!(c.closed_by, Some(python()));
    assert_eq!(c.exit, None);
    assert!(!c.started_mid_life && !c.evicted && !c.still_open && !c.events_lost);

    let s = &lives[1];
    assert_eq!(s.role, Role::Server);
    assert_eq!(s.listener, Some(addr("0.0.0.0:8099")));
    assert_eq!(steps(s), [(10, 3), (3, 1), (1, 8), (8, 9), (9, 7)]);
    assert_eq!(s.closed_by, Some(nginx()), "CLOSE_WAIT→LAST_ACK by nginx");
    assert!(!s.time_wait);

    let l = &lives[2];
    assert_eq!(l.role, Role::Listener);
    assert_eq!(l.children, 1);
    assert_eq!(steps(l), [(7, 10), (10, 7)]);
    assert_eq!(l.closed_by, Some(nginx()));
}

#[test]
fn server_closes_first_puts_the_server_in_time_wait() {
    let lives = run(&server_closes_first());
    let s = life_of(&lives, SERVER_SK);
    assert_eq!(steps(&s), [(10, 3), (3, 1), (1, 4), (4, 5), (5, 7)]);
    assert!(s.time_wait);
    assert_eq!(s.closed_by, Some(nginx()));
    let c = life_of(&lives, CLIENT_SK);
    assert_eq!(steps(&c), [(7, 2), (2, 1), (1, 8), (8, 9), (9, 7)]);
    assert!(!c.time_wait);
    assert_eq!(c.closed_by, Some(python()));
}

#[test]
fn refused_reports_the_socketless_reset_at_once_and_annotates_the_client() {
    let recs = refused();
    let mut t = Tracker::new(TrackerOptions::default());
    assert!(t.observe(&recs[0]).is_empty());
    let now = t.observe(&recs[1]);
    assert_eq!(
        now.len(),
        1,
        "socketless reset is its own life, reported at once"
    );
    let rst = &now[0];
    assert!(rst.socketless);
    assert_eq!((rst.skaddr, rst.role, rst.state), (0, Role::Server, None));
    assert_eq!(rst.local, addr("127.0.0.1:8099"));
    assert_eq!(rst.remote, addr("127.0.0.1:45126"));
    assert_eq!(rst.resets_sent.len(), 1);
    let reason = rst.resets_sent[0].reason.clone().unwrap();
    assert_eq!(
        (reason.code, reason.name.as_deref()),
        (1, Some("NO_SOCKET"))
    );
    assert_eq!(t.stats().socketless_resets, 1);

    assert!(t.observe(&recs[2]).is_empty());
    assert!(t.observe(&recs[3]).is_empty(), "a closed life lingers");
    let c = t.expire(us(1012) + 200_000_000);
    assert_eq!(c.len(), 1);
    let c = &c[0];
    assert_eq!(c.local, addr("127.0.0.1:45126"));
    assert_eq!(c.resets_received.len(), 1);
    assert_eq!(c.resets_received[0].state, Some(TcpState::SynSent));
    assert_eq!(c.resets_received[0].offset_ns, 11_000);
    let peer = c.peer_reset.clone().unwrap();
    assert_eq!(peer.offset_ns, 10_000);
    assert_eq!(peer.reason.unwrap().name.as_deref(), Some("NO_SOCKET"));
    assert_eq!(c.closed_by, None, "the RST closed it, not python3");
    assert!(!c.destroyed && !c.still_open);
}

#[test]
fn simultaneous_close_hands_both_to_time_wait() {
    let lives = run(&simultaneous());
    for sk in [CLIENT_SK, SERVER_SK] {
        let l = life_of(&lives, sk);
        assert_eq!(steps(&l)[2..], [(1, 4), (4, 11), (11, 7)]);
        assert!(l.time_wait);
    }
}

#[test]
fn handshake_timeout_counts_syn_retransmits() {
    let c = life_of(&run(&handshake_timeout()), CLIENT_SK);
    assert_eq!(c.syn_retransmits, 3);
    let rows: Vec<_> = c
        .retransmits
        .iter()
        .map(|r| (r.kind, r.number, r.offset_ns))
        .collect();
    assert_eq!(
        rows,
        [
            (RetransmitKind::Syn, 1, 1_000_000_000),
            (RetransmitKind::Syn, 2, 3_000_000_000),
            (RetransmitKind::Syn, 3, 7_000_000_000),
        ]
    );
    assert!(c.resets_received.is_empty());
    assert_eq!(c.local, addr("10.0.0.5:51000"));
    assert_eq!(c.closed_by, None, "the timer gave up, in softirq");
    assert_eq!(c.duration_ns, 15_000_000_000);
}

#[test]
fn skaddr_reuse_finishes_the_old_life_first() {
    let mut recs = refused();
    let c = client();
    recs.push(c.local("127.0.0.1:0").by(1500, &python()).st(7, 2));
    recs.push(c.by(1562, &python()).st(2, 1));
    let mut t = Tracker::new(TrackerOptions::default());
    let mut early = Vec::new();
    for r in &recs {
        early.extend(t.observe(r));
    }
    // The socketless reset, then the first client life at the reuse.
    assert_eq!(early.len(), 2);
    assert_eq!(steps(&early[1]), [(7, 2), (2, 7)]);
    let rest = t.finish();
    assert_eq!(rest.len(), 1);
    assert_eq!(steps(&rest[0]), [(7, 2), (2, 1)]);
    assert_eq!(rest[0].start_ns, us(1500));
    assert!(rest[0].still_open);
    assert_eq!(t.stats().sockets_seen, 2);
}

#[test]
fn a_life_starting_mid_way_is_marked_and_its_role_inferred() {
    let c = client();
    let lives = run(&[c.by(10, &python()).st(1, 4), c.irq(20).st(4, 5)]);
    let l = &lives[0];
    assert!(l.started_mid_life && l.still_open);
    assert_eq!(l.role, Role::Unknown);
    assert_eq!(l.owner, Some(python()));

    let lives = run(&[c.irq(10).st(2, 1)]);
    assert_eq!(lives[0].role, Role::Client);
    assert!(lives[0].started_mid_life);
}

#[test]
fn eviction_reports_the_least_recently_active_at_once() {
    let opts = TrackerOptions {
        max_sockets: 2,
        linger_ns: 200_000_000,
    };
    let mut t = Tracker::new(opts);
    let py = python();
    let socks: Vec<S> = (0..3u64)
        .map(|i| S::new(CLIENT_SK + i * 0x1000, "127.0.0.1:0", "127.0.0.1:8099"))
        .collect();
    assert!(t.observe(&socks[0].by(1, &py).st(7, 2)).is_empty());
    assert!(t.observe(&socks[1].by(2, &py).st(7, 2)).is_empty());
    // socks[0] becomes the most recently active.
    assert!(t.observe(&socks[0].by(3, &py).st(2, 1)).is_empty());
    let out = t.observe(&socks[2].by(4, &py).st(7, 2));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].skaddr, socks[1].0.skaddr);
    assert!(out[0].evicted);
    let stats = t.stats();
    assert_eq!(
        (stats.evicted, stats.tracked, stats.peak_tracked),
        (1, 2, 2)
    );

    // A closed, lingering life cut short is complete, not "evicted".
    let out = t.observe(&socks[0].by(5, &py).close(1, 0));
    assert!(out.is_empty());
    let out = t.observe(&socks[1].by(6, &py).st(7, 2));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].skaddr, socks[2].0.skaddr);
    assert!(out[0].evicted);
    let out = t.observe(&S::new(7, "127.0.0.1:0", "127.0.0.1:1").by(7, &py).st(7, 2));
    assert_eq!(out[0].skaddr, socks[0].0.skaddr);
    assert!(!out[0].evicted);
    assert_eq!(t.stats().evicted, 2);
}

#[test]
fn self_transitions_are_folded_and_counted() {
    let c = client();
    let py = python();
    let lives = run(&[
        c.local("127.0.0.1:0").by(1000, &py).st(7, 2),
        c.by(1062, &py).st(2, 1),
        c.by(1100, &py).st(1, 4), // shutdown(SHUT_WR)
        c.by(1200, &py).st(4, 4), // then close()
        c.irq(1300).st(4, 5),
    ]);
    assert_eq!(steps(&lives[0]), [(7, 2), (2, 1), (1, 4), (4, 5)]);
    assert_eq!(lives[0].self_transitions, 1);
}

#[test]
fn linger_ends_at_destroy_or_expiry_whichever_first() {
    let c = client();
    let py = python();
    let opts = TrackerOptions {
        max_sockets: 16,
        linger_ns: 1_000_000,
    };
    // Destroy first.
    let mut t = Tracker::new(opts);
    t.observe(&c.by(1000, &py).st(2, 1));
    assert!(t.observe(&c.by(1100, &py).close(1, 0)).is_empty());
    let out = t.observe(&c.by(1150, &py).destroy());
    assert_eq!(out.len(), 1);
    assert!(out[0].destroyed);
    assert!(t.expire(us(10_000)).is_empty());

    // Expiry first; the late destroy is ignored.
    let mut t = Tracker::new(opts);
    t.observe(&c.by(1000, &py).st(2, 1));
    t.observe(&c.by(1100, &py).close(1, 0));
    assert!(t.expire(us(2099)).is_empty());
    let out = t.expire(us(2100));
    assert_eq!(out.len(), 1);
    assert!(!out[0].destroyed);
    assert_eq!(out[0].duration_ns, 100_000);
    assert!(t.observe(&c.by(50_000, &py).destroy()).is_empty());
    assert_eq!(t.stats().ignored, 1);

    // A later record's timestamp moves the clock as well.
    let mut t = Tracker::new(opts);
    t.observe(&c.by(1000, &py).st(2, 1));
    t.observe(&c.by(1100, &py).close(1, 0));
    let out = t.observe(&exit(3000, &nginx(), 0));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].skaddr, CLIENT_SK);
}

#[test]
fn a_late_send_reset_still_reaches_its_lingering_life() {
    // The send_reset comes after the peer's CLOSE (see server_aborts).
    let mut t = Tracker::new(TrackerOptions::default());
    let mut reported = Vec::new();
    for r in &unread_close() {
        reported.extend(t.observe(r));
    }
    let s = life_of(&reported, SERVER_SK);
    assert_eq!(s.resets_sent.len(), 1);
    assert_eq!(t.stats().orphan_resets, 0);
}

#[test]
fn a_reset_from_an_unknown_socket_is_reported_alone() {
    let tw = S::new(0xffff_8881_9999_0000, "127.0.0.1:8099", "127.0.0.1:45126");
    let mut t = Tracker::new(TrackerOptions::default());
    let out = t.observe(
        &tw.irq(5)
            .send_reset(Some(6), Some((9, "TCP_TIMEWAIT_SOCKET"))),
    );
    assert_eq!(out.len(), 1);
    assert!(out[0].started_mid_life && !out[0].socketless);
    assert_eq!(out[0].state, Some(TcpState::TimeWait));
    assert_eq!(t.stats().orphan_resets, 1);
    assert_eq!(t.stats().tracked, 0);
}

#[test]
fn older_kernels_child_tuple_is_taken_from_syn_recv_to_established() {
    let (l, s, ng) = (listener(), server(), nginx());
    let lives = run(&[
        l.by(0, &ng).st(7, 10),
        S::new(SERVER_SK, "0.0.0.0:8099", "0.0.0.0:0")
            .irq(10)
            .st(10, 3),
        s.irq(12).st(3, 1),
    ]);
    let child = life_of(&lives, SERVER_SK);
    assert_eq!(child.local, addr("127.0.0.1:8099"));
    assert_eq!(child.remote, addr("127.0.0.1:45126"));
    assert_eq!(child.listener, Some(addr("0.0.0.0:8099")));
    assert_eq!(child.owner, Some(nginx()), "inherited from the listener");
    assert_eq!(life_of(&lives, LISTENER_SK).children, 1);
}

#[test]
fn synack_retransmits_move_from_the_listener_to_the_child() {
    let (l, s, ng) = (listener(), server(), nginx());
    // tcp_retransmit_synack reports the listener's skaddr and the request's tuple.
    let req = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45126");
    let lives = run(&[
        l.by(0, &ng).st(7, 10),
        req.irq(1_000_000).synack_retransmit(),
        req.irq(3_000_000).synack_retransmit(),
        s.irq(3_000_100).st(10, 3),
        s.irq(3_000_101).st(3, 1),
    ]);
    assert_eq!(life_of(&lives, SERVER_SK).synack_retransmits, 2);
    assert_eq!(life_of(&lives, LISTENER_SK).synack_retransmits, 2);
}

#[test]
fn lists_are_bounded() {
    let c = client();
    let mut recs = vec![c.by(0, &python()).st(2, 1)];
    recs.extend((1..200).map(|i| c.irq(i).retransmit(1)));
    let l = &run(&recs)[0];
    assert_eq!(l.data_retransmits, 199);
    assert_eq!(l.retransmits.len(), MAX_ROWS);
    // The auxiliary tables: see tables::tests.
}

#[test]
fn mark_events_lost_flags_live_lives_only() {
    let c = client();
    let mut t = Tracker::new(TrackerOptions::default());
    t.observe(&c.by(0, &python()).st(2, 1));
    t.mark_events_lost();
    let s = server();
    t.observe(&s.irq(5).st(10, 3));
    let lives = t.finish();
    assert!(life_of(&lives, CLIENT_SK).events_lost);
    assert!(!life_of(&lives, SERVER_SK).events_lost);
}

#[test]
fn fin_wait2_to_close_with_an_rst_is_a_linger_abort_not_time_wait() {
    let c = client();
    let py = python();
    let lives = run(&[
        c.by(0, &py).st(1, 4),
        c.irq(10).st(4, 5),
        // close() with linger2 < 0 in FIN_WAIT2: CLOSE, then the RST.
        c.by(20, &py).close(5, 0),
        c.by(21, &py)
            .send_reset(Some(7), Some((12, "TCP_ABORT_ON_LINGER"))),
    ]);
    assert!(!lives[0].time_wait);
    assert_eq!(lives[0].closed_by, Some(py));
}

#[test]
fn unread_bytes_leave_out_the_peers_fin() {
    use crate::tracker::unread_at_close;
    assert_eq!(unread_at_close(TcpState::Established, 13), Some(13));
    // CLOSE_WAIT: the peer's FIN took one sequence number.
    assert_eq!(unread_at_close(TcpState::CloseWait, 6), Some(5));
    assert_eq!(unread_at_close(TcpState::LastAck, 1), Some(0));
    // FIN_WAIT2 → CLOSE: with or without the peer's FIN; say nothing.
    assert_eq!(unread_at_close(TcpState::FinWait2, 1), None);
}

#[test]
fn a_transition_that_does_not_follow_marks_a_gap() {
    // The client's ESTABLISHED → FIN_WAIT1 never arrived.
    let records: Vec<Record> = client_closes_first()
        .into_iter()
        .filter(|r| {
            !matches!(
                r,
                Record::State {
                    old: TcpState::Established,
                    new: TcpState::FinWait1,
                    ..
                }
            )
        })
        .collect();
    let lives = run(&records);
    let c = life_of(&lives, CLIENT_SK);
    assert!(c.gap, "{c:#?}");
    let s = life_of(&lives, SERVER_SK);
    assert!(!s.gap, "{s:#?}");
    assert!(
        crate::classify::classify(&c)
            .incomplete
            .contains(&crate::classify::Incomplete::Gap)
    );
}

#[test]
fn at_exit_a_socket_the_kernel_no_longer_has_is_closed_unseen_not_still_open() {
    use std::collections::HashSet;
    let c = client();
    // The kernel skipped its FIN_WAIT1→FIN_WAIT2→CLOSE: tcptrace last saw
    // FIN_WAIT1.
    let recs = [
        c.by(0, &python()).st(7, 2),
        c.irq(10).st(2, 1),
        c.by(20, &python()).st(1, 4),
    ];
    let open_in_kernel = |alive: Option<&HashSet<_>>| {
        let mut t = Tracker::new(TrackerOptions::default());
        for r in &recs {
            assert!(t.observe(r).is_empty());
        }
        let lives = t.finish_against(alive);
        assert_eq!(lives.len(), 1);
        lives.into_iter().next().unwrap()
    };
    let gone = open_in_kernel(Some(&HashSet::new()));
    assert!(gone.gone_unseen && !gone.still_open);
    let v = crate::classify::classify(&gone);
    assert_eq!(v.close.kind(), "closed_unseen");
    let summary = words::summary(&gone, &v);
    assert!(
        summary.contains("close unseen (last seen in FIN_WAIT1"),
        "{summary}"
    );
    assert!(v.incomplete.contains(&crate::classify::Incomplete::Gap));

    let tuple = (gone.local, gone.remote);
    let there = open_in_kernel(Some(&HashSet::from([tuple])));
    assert!(there.still_open && !there.gone_unseen);
    // No list from the kernel: nothing can be said, it is still open.
    let unchecked = open_in_kernel(None);
    assert!(unchecked.still_open && !unchecked.gone_unseen);
}

#[test]
fn an_evicted_socket_is_reported_once_and_its_later_events_counted() {
    let opts = TrackerOptions {
        max_sockets: 1,
        linger_ns: 200_000_000,
    };
    let mut t = Tracker::new(opts);
    let py = python();
    let a = S::new(CLIENT_SK, "127.0.0.1:40000", "127.0.0.1:8099");
    let b = S::new(CLIENT_SK + 0x1000, "127.0.0.1:40001", "127.0.0.1:8099");
    assert!(t.observe(&a.by(1, &py).st(7, 2)).is_empty());
    // b pushes a out while a is still connecting.
    let out = t.observe(&b.by(2, &py).st(7, 2));
    assert_eq!(out.len(), 1);
    assert!(out[0].evicted);
    // a's later events start no second, mid-life life for a.
    assert!(t.observe(&a.irq(3).st(2, 1)).is_empty());
    assert!(t.observe(&a.by(4, &py).st(1, 4)).is_empty());
    assert!(t.observe(&a.irq(5).destroy()).is_empty());
    let stats = t.stats();
    assert_eq!(stats.sockets_seen, 2, "{stats:?}");
    assert_eq!(stats.after_eviction, 3, "{stats:?}");
    assert_eq!(stats.evicted, 1);
    // The address reused by a new socket starts a new life as usual.
    let out = t.observe(&a.by(6, &py).st(7, 2));
    assert_eq!(out.len(), 1, "b is evicted by a's new life");
    assert_eq!(t.stats().sockets_seen, 3);
    assert_eq!(t.stats().after_eviction, 3);
}

#[test]
fn a_socketless_reset_is_a_refusal_only_when_it_answered_a_syn() {
    use crate::decode::Record;
    let server = S::new(0, "127.0.0.1:8099", "127.0.0.1:45000");
    let verdict_for = |flags: Option<u8>| {
        let Record::SendReset {
            sock,
            state,
            reason,
            ..
        } = server.irq(10).send_reset(None, Some((1, "NO_SOCKET")))
        else {
            unreachable!()
        };
        let rec = Record::SendReset {
            sock,
            state,
            reason,
            segment_flags: flags,
        };
        let lives = run(&[rec]);
        assert!(lives[0].socketless);
        let v = crate::classify::classify(&lives[0]);
        (words::summary(&lives[0], &v), v)
    };
    // A SYN to a closed port: refused.
    assert_eq!(verdict_for(Some(0x02)).1.close.kind(), "refused");
    // A late FIN|ACK of a connection this host already reset: not refused.
    let (summary, late) = verdict_for(Some(0x11));
    assert_eq!(late.close.kind(), "no_socket_reset");
    assert!(summary.contains("FIN|ACK"), "{summary}");
    assert!(summary.contains("no longer has"), "{summary}");
    // A kernel that does not say: as before.
    assert_eq!(verdict_for(None).1.close.kind(), "refused");
}

#[test]
fn fin_wait2_to_close_without_the_peers_fin_is_an_orphan_not_time_wait() {
    let c = client();
    let py = python();
    let path = |peer_fin: bool| {
        vec![
            c.by(0, &py).st(7, 2),
            c.irq(10).st(2, 1),
            c.by(20, &py).st(1, 4),
            c.irq(30).st(4, 5),
            c.irq(31).fin_wait2_close(peer_fin),
        ]
    };
    let leak = run(&path(false));
    let l = &leak[0];
    assert!(l.fin_wait2_orphan && !l.time_wait, "{l:#?}");
    let v = crate::classify::classify(l);
    assert_eq!(v.close.kind(), "peer_never_closed");
    let summary = words::summary(l, &v);
    assert!(summary.contains("peer has not closed"), "{summary}");
    // With the peer's FIN: the ordinary 4-way close into TIME_WAIT.
    let normal = run(&path(true));
    assert!(normal[0].time_wait && !normal[0].fin_wait2_orphan);
    assert_eq!(crate::classify::classify(&normal[0]).close.kind(), "active");
}

#[test]
fn the_process_that_accepts_a_child_becomes_its_owner() {
    let lives = run(&worker_accepts());
    let s = lives
        .iter()
        .find(|l| l.skaddr == SERVER_SK)
        .expect("the child");
    assert_eq!(s.owner, Some(nginx_worker()), "the acceptor serves it");
    assert_eq!(s.listener_owner, Some(nginx()), "the master listened");
    let a = s.accepted.expect("accepted");
    assert_eq!(a.by, nginx_worker());
    // Established at 1066 µs, accepted at 1366 µs: 300 µs in the queue.
    assert_eq!(a.queued_ns, Some(300_000));
    assert_eq!(a.offset_ns, us(1366) - us(1064));
    assert_eq!(s.closed_by, Some(nginx_worker()));
    assert!(!s.shared_listener && !s.started_mid_life);
}

#[test]
fn a_child_of_a_reuseport_group_is_unowned_until_accepted() {
    let mut t = Tracker::new(TrackerOptions::default());
    let recs = reuseport_accept(&nginx_worker());
    // Before the accept: no owner guessed.
    for r in &recs[..4] {
        t.observe(r);
    }
    let open = t.finish();
    let s = open
        .iter()
        .find(|l| l.skaddr == SERVER_SK)
        .expect("the child");
    assert!(s.shared_listener);
    assert_eq!(s.owner, None);
    // With it: the acceptor, and no listener owner to show beside it.
    let lives = run(&recs);
    let s = lives
        .iter()
        .find(|l| l.skaddr == SERVER_SK)
        .expect("the child");
    assert_eq!(s.owner, Some(nginx_worker()));
    assert_eq!(s.listener_owner, None);
    assert!(s.shared_listener);
}

#[test]
fn a_bare_destroy_is_completed_from_its_sockets_life() {
    let mut t = Tracker::new(TrackerOptions::default());
    for r in &handshake() {
        t.observe(r);
    }
    // What the kernel sends without filters: the address and the time.
    let bare = S::new(CLIENT_SK, "0.0.0.0:0", "0.0.0.0:0").irq(5000).0;
    assert!(bare.is_bare());
    let full = t.complete(&bare);
    assert_eq!(full.local, addr("127.0.0.1:45126"));
    assert_eq!(full.remote, addr("127.0.0.1:8099"));
    assert_eq!(full.owner, Some(python()));
    assert!(!full.is_bare());
    // A socket tcptrace does not follow stays as it came.
    let unknown = S::new(0xdead_0000, "0.0.0.0:0", "0.0.0.0:0").0;
    assert_eq!(t.complete(&unknown).local, unknown.local);
}
