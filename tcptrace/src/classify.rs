//! Classifier: how a [`SocketLife`] opened and closed, and why its account
//! may be incomplete, as codes and fields (a [`Verdict`]). It says nothing in
//! words: [`crate::render::words`] does, for the text and JSON renderers.
//!
//! # JSON schema of a verdict (stable; snake_case)
//!
//! `open`, `close` and `incomplete` serialize the [`Verdict`] itself; the
//! JSON renderer adds the worded fields, marked † (the codes are what to
//! match on; the words may be reworded).
//!
//! ```text
//! {
//!   "open": {"kind": "active", "established": true, "handshake_ns": 62000 | null}
//!         | {"kind": "passive", "established": true, "handshake_ns": 2000 | null,
//!            "listener": "0.0.0.0:8099" | null}
//!         | {"kind": "listen"} | {"kind": "no_socket"} | {"kind": "unknown"},
//!   "close": {"kind": "active", "time_wait": true} | {"kind": "passive"}
//!          | {"kind": "simultaneous"}
//!          | {"kind": "refused", "side": "client" | "server", "reason": <reason> | null}
//!          | {"kind": "reset_received", "state": "ESTABLISHED" | null}
//!          | {"kind": "reset_sent", "state": "ESTABLISHED" | null, "reason": <reason>}
//!          | {"kind": "handshake_timeout", "syn_retransmits": 3,
//!             "syns_dropped": {"count": 4, "reason": {"code": 12, "name": "NETFILTER_DROP"}}
//!                             | null}   // its SYNs dropped on this host
//!          | {"kind": "handshake_failed"} | {"kind": "aborted"}
//!          | {"kind": "stopped_listening"}
//!          | {"kind": "still_open", "state": "ESTABLISHED" | null}
//!          | {"kind": "closed_unseen", "state": "FIN_WAIT1" | null}  // gone at exit
//!          | {"kind": "no_socket_reset", "segment_flags": 17}  // RST for a late FIN|ACK
//!          | {"kind": "peer_never_closed"}  // FIN acked, no FIN back (CLOSE_WAIT leak?)
//!          | {"kind": "unknown"},
//!   "incomplete": ["started_mid_life" | "evicted" | "events_lost" | "gap", ...],
//!   "summary": "active open (3-way) · active close (4-way)",          // †
//!   "attribution": "closed by python3[2251] → FIN" | null             // †
//! }
//! <reason> = {"code": 11 | null, "name": "TCP_ABORT_ON_CLOSE" | null,
//!             "text": "application closed with unread data"}          // text †
//! ```
//! `handshake_ns` of a passive open runs from the child socket's creation
//! (the final ACK: the SYN and SYN/ACK belong to a request sock that reports
//! no state change) to ESTABLISHED, so it is usually tiny.
//! `summary` and `attribution` hold raw process names: escape them
//! ([`crate::render::escape`]) before printing to a terminal.

use crate::decode::TcpState;
use crate::model::{Direction, ResetSent, Role, SegmentKind, SocketLife};

// The classifier's output: callers that classify need no other module for
// its types.
pub use crate::model::{Close, Incomplete, LocalDrops, Open, RstReason, Side, Verdict};

/// TCP header flag bits.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

pub fn classify(life: &SocketLife) -> Verdict {
    let incomplete: Vec<Incomplete> = [
        (life.started_mid_life, Incomplete::StartedMidLife),
        (life.evicted, Incomplete::Evicted),
        (life.events_lost, Incomplete::EventsLost),
        (life.gap || life.gone_unseen, Incomplete::Gap),
    ]
    .into_iter()
    .filter_map(|(on, what)| on.then_some(what))
    .collect();
    Verdict {
        open: open_of(life),
        close: close_of(life),
        incomplete,
    }
}

/// Time from the `a` transition to the `b` transition.
fn between(life: &SocketLife, a: (TcpState, TcpState), b: (TcpState, TcpState)) -> Option<u64> {
    let a = life.step(a.0, a.1)?;
    let b = life.step(b.0, b.1)?;
    Some(b.offset_ns.saturating_sub(a.offset_ns))
}

fn open_of(life: &SocketLife) -> Open {
    use TcpState::*;
    if life.socketless {
        return Open::NoSocket;
    }
    if life.started_mid_life {
        return Open::Unknown;
    }
    match life.role {
        Role::Client => Open::Active {
            established: life.step(SynSent, Established).is_some(),
            handshake_ns: between(life, (Close, SynSent), (SynSent, Established)),
        },
        Role::Server => Open::Passive {
            established: life.step(SynRecv, Established).is_some(),
            handshake_ns: between(life, (Listen, SynRecv), (SynRecv, Established)),
            listener: life.listener,
        },
        Role::Listener => Open::Listen,
        Role::Unknown => Open::Unknown,
    }
}

/// The state a reset row names, or the state left at the close when the
/// row says CLOSE (the kernel closes before it sends).
fn state_before(row: Option<TcpState>, life: &SocketLife) -> Option<TcpState> {
    match row {
        Some(TcpState::Close) | None => life.close_step().map(|s| s.old).or(row),
        other => other,
    }
}

/// The socket's own SYNs that the kernel dropped before they left.
fn syns_dropped(life: &SocketLife) -> Option<LocalDrops> {
    let mut syns = life
        .drops
        .iter()
        .filter(|d| d.direction == Direction::Outgoing && d.kind() == SegmentKind::Syn);
    let first = syns.next()?;
    Some(LocalDrops {
        count: 1 + syns.count() as u32,
        reason: first.reason.clone(),
    })
}

fn close_of(life: &SocketLife) -> Close {
    use TcpState::{Close as Closed, CloseWait, Closing, FinWait1, Listen, SynSent};
    let sent: Option<&ResetSent> = life.resets_sent.first();
    if life.socketless {
        let reason = Some(RstReason::from_kernel(sent.and_then(|r| r.reason.as_ref())));
        // Only a SYN answered with no socket is a refused connection; a
        // late FIN or ACK of a connection this host already dropped is not.
        // (No flags: a kernel that does not say; it was called refused.)
        return match sent.and_then(|r| r.segment_flags) {
            Some(flags) if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 => Close::NoSocketReset {
                segment_flags: flags,
            },
            _ => Close::Refused {
                side: Side::Server,
                reason,
            },
        };
    }
    let closed = life.state == Some(Closed);
    let before = life.close_step().map(|s| s.old);
    let received = life.resets_received.first();
    if closed && before == Some(Listen) {
        return Close::StoppedListening;
    }
    if closed && before == Some(SynSent) {
        return match () {
            _ if received.is_some() => Close::Refused {
                side: Side::Client,
                reason: life
                    .peer_reset
                    .as_ref()
                    .map(|r| RstReason::from_kernel(r.reason.as_ref())),
            },
            _ if life.closed_by.is_some() => Close::Aborted,
            _ if life.syn_retransmits > 0 => Close::HandshakeTimeout {
                syn_retransmits: life.syn_retransmits,
                syns_dropped: syns_dropped(life),
            },
            _ => Close::HandshakeFailed,
        };
    }
    // Our own abortive close wins; otherwise whichever RST came first.
    let we_aborted = sent.is_some() && life.closed_by.is_some();
    match (sent, received) {
        (Some(s), Some(r)) if !we_aborted && r.offset_ns < s.offset_ns => {
            return Close::ResetReceived {
                state: state_before(r.state, life),
            };
        }
        (Some(s), _) => {
            return Close::ResetSent {
                state: state_before(s.state, life),
                reason: RstReason::from_kernel(s.reason.as_ref()),
            };
        }
        (None, Some(r)) => {
            return Close::ResetReceived {
                state: state_before(r.state, life),
            };
        }
        (None, None) => {}
    }
    let went = |old: Option<TcpState>, new: TcpState| {
        life.steps
            .iter()
            .any(|s| s.new == new && old.is_none_or(|o| s.old == o))
    };
    match () {
        _ if !closed && life.still_open => Close::StillOpen { state: life.state },
        _ if !closed && life.gone_unseen => Close::ClosedUnseen { state: life.state },
        _ if !closed => Close::Unknown,
        _ if went(Some(FinWait1), Closing) => Close::Simultaneous,
        // Handed to a FIN_WAIT2 mini-socket: the peer had not closed then,
        // and unless its FIN was seen reaching that mini-socket, never did
        // while tcptrace watched (a CLOSE_WAIT leak, or a peer just slow).
        _ if life.fin_wait2_orphan && life.peer_fin_after_handoff_ns.is_none() => {
            Close::PeerNeverClosed
        }
        _ if went(None, FinWait1) => Close::Active {
            // The mini-socket that answered the peer's FIN is in TIME_WAIT.
            time_wait: life.time_wait || life.peer_fin_after_handoff_ns.is_some(),
        },
        _ if went(None, CloseWait) => Close::Passive,
        _ => Close::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Record, ResetReason};
    use crate::tracker::fixtures::*;

    fn verdict_of(records: &[Record], skaddr: u64) -> Verdict {
        classify(&life_of(&run(records), skaddr))
    }

    fn reason(code: u32, name: &str) -> RstReason {
        RstReason {
            code: Some(code),
            name: Some(name.into()),
        }
    }

    #[test]
    fn client_closing_first() {
        let lives = run(&client_closes_first());
        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(
            c.open,
            Open::Active {
                established: true,
                handshake_ns: Some(62_000)
            }
        );
        assert_eq!(c.close, Close::Active { time_wait: true });
        assert!(c.incomplete.is_empty());

        let s = classify(&life_of(&lives, SERVER_SK));
        assert_eq!(
            s.open,
            Open::Passive {
                established: true,
                handshake_ns: Some(2_000),
                listener: Some(addr("0.0.0.0:8099"))
            }
        );
        assert_eq!(s.close, Close::Passive);

        let l = classify(&life_of(&lives, LISTENER_SK));
        assert_eq!(
            (l.open.clone(), l.close.clone()),
            (Open::Listen, Close::StoppedListening)
        );
    }

    #[test]
    fn server_closing_first() {
        let lives = run(&server_closes_first());
        let s = classify(&life_of(&lives, SERVER_SK));
        assert_eq!(s.close, Close::Active { time_wait: true });
        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(c.close, Close::Passive);
    }

    #[test]
    fn refused_on_both_sides() {
        let lives = run(&refused());
        let rst = classify(&life_of(&lives, 0));
        assert_eq!(rst.open, Open::NoSocket);
        assert_eq!(
            rst.close,
            Close::Refused {
                side: Side::Server,
                reason: Some(reason(1, "NO_SOCKET"))
            }
        );

        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(c.close.kind(), "refused");
        assert_eq!(
            c.close,
            Close::Refused {
                side: Side::Client,
                reason: Some(reason(1, "NO_SOCKET"))
            }
        );
        assert_eq!(c.open.handshake_ns(), None);
    }

    #[test]
    fn linger0_is_a_reset_sent_on_one_side_and_received_on_the_other() {
        let lives = run(&linger0());
        let s = classify(&life_of(&lives, SERVER_SK));
        assert_eq!(
            s.close,
            Close::ResetSent {
                state: Some(TcpState::Established),
                reason: reason(14, "TCP_STATE")
            }
        );
        let c = classify(&life_of(&lives, CLIENT_SK));
        assert_eq!(
            c.close,
            Close::ResetReceived {
                state: Some(TcpState::Established)
            }
        );
    }

    #[test]
    fn an_abortive_close_with_unread_data_is_a_reset_sent() {
        for records in [unread_close(), killed()] {
            let s = verdict_of(&records, SERVER_SK);
            assert_eq!(
                s.close,
                Close::ResetSent {
                    state: Some(TcpState::Established),
                    reason: reason(11, "TCP_ABORT_ON_CLOSE")
                }
            );
            assert_eq!(s.close.kind(), "reset_sent");
        }
    }

    #[test]
    fn exit_code_3_closes_gracefully() {
        let s = verdict_of(&exit_code_3(), SERVER_SK);
        assert_eq!(s.close, Close::Active { time_wait: true });
    }

    #[test]
    fn simultaneous_close_on_both_sides() {
        let lives = run(&simultaneous());
        for sk in [CLIENT_SK, SERVER_SK] {
            assert_eq!(classify(&life_of(&lives, sk)).close, Close::Simultaneous);
        }
    }

    #[test]
    fn handshake_timeout_and_failure() {
        let c = verdict_of(&handshake_timeout(), CLIENT_SK);
        assert_eq!(
            c.close,
            Close::HandshakeTimeout {
                syn_retransmits: 3,
                syns_dropped: None
            }
        );
        assert_eq!(
            c.open,
            Open::Active {
                established: false,
                handshake_ns: None
            }
        );
        let no_retransmit: Vec<_> = handshake_timeout()
            .into_iter()
            .filter(|r| !matches!(r, Record::Retransmit { .. }))
            .collect();
        assert_eq!(
            verdict_of(&no_retransmit, CLIENT_SK).close,
            Close::HandshakeFailed
        );
        // python3 gives up connecting itself.
        let c0 = client();
        let aborted = [
            c0.by(0, &python()).st(7, 2),
            c0.by(900, &python()).close(2, 0),
        ];
        assert_eq!(verdict_of(&aborted, CLIENT_SK).close, Close::Aborted);
    }

    #[test]
    fn incomplete_lives_say_why() {
        let c = client();
        let mut life = life_of(&run(&[c.by(10, &python()).st(1, 4)]), CLIENT_SK);
        life.mark_lost_events();
        let v = classify(&life);
        assert_eq!(v.open, Open::Unknown);
        assert_eq!(
            v.close,
            Close::StillOpen {
                state: Some(TcpState::FinWait1)
            }
        );
        assert_eq!(
            v.incomplete,
            [Incomplete::StartedMidLife, Incomplete::EventsLost]
        );
        life.still_open = false;
        life.evicted = true;
        assert_eq!(classify(&life).close, Close::Unknown);
        assert!(classify(&life).incomplete.contains(&Incomplete::Evicted));
    }

    #[test]
    fn reasons_are_the_kernels() {
        let kernel = ResetReason {
            code: 77,
            name: None,
        };
        assert_eq!(
            RstReason::from_kernel(Some(&kernel)),
            RstReason {
                code: Some(77),
                name: None
            }
        );
        assert_eq!(
            RstReason::from_kernel(None),
            RstReason {
                code: None,
                name: None
            }
        );
    }

    #[test]
    fn json_schema_of_a_verdict() {
        let v = serde_json::to_value(verdict_of(&killed(), SERVER_SK)).unwrap();
        assert_eq!(v["open"]["kind"], "passive");
        assert_eq!(v["open"]["handshake_ns"], 2000);
        assert_eq!(v["open"]["listener"], "0.0.0.0:8099");
        assert_eq!(v["close"]["kind"], "reset_sent");
        assert_eq!(v["close"]["state"], "ESTABLISHED");
        assert_eq!(v["close"]["reason"]["code"], 11);
        assert_eq!(v["close"]["reason"]["name"], "TCP_ABORT_ON_CLOSE");
        assert_eq!(v["incomplete"], serde_json::json!([]));
        // Codes only: the words are the renderers'.
        assert_eq!(v.get("summary"), None);
        assert_eq!(v["close"]["reason"].get("text"), None);
        let v = serde_json::to_value(verdict_of(&refused(), CLIENT_SK)).unwrap();
        assert_eq!(v["close"]["side"], "client");
        assert_eq!(v["open"]["established"], false);
        let v = serde_json::to_value([Incomplete::StartedMidLife, Incomplete::Gap]).unwrap();
        assert_eq!(v, serde_json::json!(["started_mid_life", "gap"]));
    }

    #[test]
    fn kinds_match_the_json_tags() {
        let closes = [
            Close::Active { time_wait: true },
            Close::Refused {
                side: Side::Client,
                reason: None,
            },
            Close::HandshakeTimeout {
                syn_retransmits: 1,
                syns_dropped: None,
            },
            Close::StoppedListening,
            Close::StillOpen { state: None },
        ];
        for c in closes {
            assert_eq!(serde_json::to_value(&c).unwrap()["kind"], c.kind());
        }
        for o in [Open::Listen, Open::NoSocket, Open::Unknown] {
            assert_eq!(serde_json::to_value(&o).unwrap()["kind"], o.kind());
        }
        for i in [
            Incomplete::StartedMidLife,
            Incomplete::Evicted,
            Incomplete::EventsLost,
            Incomplete::Gap,
        ] {
            assert_eq!(serde_json::to_value(i).unwrap(), i.code());
        }
    }
}
