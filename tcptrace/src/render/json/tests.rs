use super::*;
use crate::classify::{Close, Incomplete, LocalDrops, Open, RstReason, Side, Verdict, classify};
use crate::decode::{Context, DropReason, ResetReason, TcpState};
use crate::tracker::fixtures::*;

/// The direct JSON writer against the serde derives it stands in for, over
/// every fixture, every record and verdict variant and hostile names.
#[test]
fn direct_json_matches_serde() {
    let (c, ng) = (client(), nginx());
    let odd = proc_(7, "q\"uote\\ \u{7f}\u{2028}\u{1b}é\t");
    let v6 = S::new(CLIENT_SK, "[::1]:45126", "[fe80::1%2]:8099").owner(&odd);
    let mut extra = vec![
        exit(2010, &ng, 11 | 0x80),
        signal(2000, 11, 4311, &odd),
        Record::ProcessExit {
            ts_ns: us(3),
            task: odd,
            exit_code: Some(-5),
            group_dead: false,
        },
        Record::ProcessExit {
            ts_ns: us(4),
            task: swapper(),
            exit_code: None,
            group_dead: true,
        },
        Record::Signal {
            ts_ns: us(5),
            sig: 9,
            target_pid: 1,
            sender: odd,
            delivered: false,
        },
        c.irq(10).send_reset(None, None),
        c.by(11, &odd).retransmit(0),
        c.irq(12).synack_retransmit(),
        v6.by(13, &odd).st(2, 1),
        v6.irq(14).receive_reset(),
        v6.irq(15).destroy(),
    ];
    // Drops: unnamed reasons, hostile names, IPv6, both sockets named.
    let mut odd_drop = dropped(16, "[::1]:45126", "[fe80::1%2]:8099", 0xff, (7, "q\"x"));
    odd_drop.rx_sk = Some(CLIENT_SK);
    odd_drop.skb_sk = Some(u64::MAX);
    odd_drop.owner = Some(odd);
    odd_drop.netns = Some(4026531840);
    extra.push(Record::Drop(odd_drop.clone()));
    odd_drop.reason.name = None;
    odd_drop.context = Context::Process(odd);
    extra.push(Record::Drop(odd_drop));
    if let Record::SendReset { reason, .. } = &mut extra[5] {
        *reason = Some(ResetReason {
            code: 77,
            name: None,
        });
    }
    for old in 1..=12 {
        for new in [1, 7, 12] {
            extra.push(c.by(20, &python()).st(old, new));
        }
    }
    let mut unread = c.irq(30).close(1, 9);
    if let Record::State { unread: u, .. } = &mut unread {
        *u = Some(u32::MAX);
    }
    extra.push(unread);
    let scenarios = [
        client_closes_first(),
        server_closes_first(),
        refused(),
        linger0(),
        unread_close(),
        killed(),
        exit_code_3(),
        simultaneous(),
        handshake_timeout(),
        dropped_here(),
        oom_killed(),
        worker_accepts(),
        reuseport_accept(&nginx_worker()),
        extra,
    ];
    let mut lives = Vec::new();
    for recs in &scenarios {
        for r in recs {
            assert_eq!(record_line(r).unwrap(), reference::record_line(r));
        }
        lives.extend(run(recs));
    }
    // A core-dumping kill, and flags the session or the table set.
    let mut core = killed();
    core[5] = exit(2010, &nginx(), 11 | 0x80);
    lives.extend(run(&core));
    let mut flagged = lives[0].clone();
    flagged.mark_lost_events();
    flagged.evicted = true;
    flagged.owner = Some(hostile());
    lives.push(flagged);
    for life in &lives {
        let v = classify(life);
        assert_eq!(
            socket_line(life, &v).unwrap(),
            reference::socket_line(life, &v),
            "{life:#?}"
        );
    }
    // Every verdict variant, on one life.
    // A name the kernel never gave, to be escaped where it is worded.
    let reason = RstReason {
        code: None,
        name: Some("t\"x\u{0}".into()),
    };
    let opens = [
        Open::Active {
            established: false,
            handshake_ns: None,
        },
        Open::Passive {
            established: true,
            handshake_ns: Some(3),
            listener: None,
        },
        Open::Listen,
        Open::NoSocket,
        Open::Unknown,
    ];
    let closes = [
        Close::Active { time_wait: false },
        Close::Passive,
        Close::Simultaneous,
        Close::Refused {
            side: Side::Server,
            reason: None,
        },
        Close::Refused {
            side: Side::Client,
            reason: Some(reason.clone()),
        },
        Close::ResetReceived { state: None },
        Close::ResetSent {
            state: Some(TcpState::NewSynRecv),
            reason,
        },
        Close::HandshakeTimeout {
            syn_retransmits: 0,
            syns_dropped: None,
        },
        Close::HandshakeTimeout {
            syn_retransmits: 2,
            syns_dropped: Some(LocalDrops {
                count: 3,
                reason: DropReason {
                    code: 12,
                    name: Some("NETFILTER\"DROP".into()),
                },
            }),
        },
        Close::HandshakeFailed,
        Close::Aborted,
        Close::StoppedListening,
        Close::StillOpen {
            state: Some(TcpState::Closing),
        },
        Close::PeerNeverClosed,
        Close::NoSocketReset { segment_flags: 0 },
        Close::ClosedUnseen {
            state: Some(TcpState::FinWait1),
        },
        Close::Unknown,
    ];
    // Every verdict variant, on a life with words to say and one without.
    let quiet = run(&refused()).remove(0);
    for life in [&lives[0], &quiet] {
        for open in &opens {
            for close in &closes {
                let v = Verdict {
                    open: open.clone(),
                    close: close.clone(),
                    incomplete: vec![Incomplete::Evicted, Incomplete::StartedMidLife],
                };
                assert_eq!(
                    socket_line(life, &v).unwrap(),
                    reference::socket_line(life, &v)
                );
            }
        }
    }
}
