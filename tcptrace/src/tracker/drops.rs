//! Segments the kernel dropped, each tied to the socket whose handshake or
//! close it belonged to:
//!
//! 1. the socket the kernel named, when tcptrace tracks it: `rx_sk` (the
//!    socket the segment had reached: a listener whose accept queue is
//!    full, a socket that ignored an RST), else the buffer's owner (the
//!    sender of a segment dropped on its way out);
//! 2. a SYN to, or a SYN/ACK from, the port and address of a listener:
//!    the listener (its handshakes are the ones failing);
//! 3. else by the segment's addresses, in either orientation: the drop
//!    waits (bounded) for the life with that tuple, which takes it when it
//!    learns its local port (a connecting socket does not know it at its
//!    first event) or when it is reported. A drop no life takes is counted
//!    (`drops_unjoined`), never lost silently.

use super::{AUX_CAP, Tracker, TrackerStats, life::push_capped, tables::RecentMap};
use crate::{
    decode::SegmentDrop,
    model::{Direction, DropCount, JoinedBy, Role, SegmentDropped, SegmentKind, SocketLife, Tally},
};

/// How long a drop waits for the life with its tuple: longer than a
/// connect's default handshake timeout (127 s, `tcp_syn_retries` 6).
pub(super) const DROP_MAX_AGE_NS: u64 = 130_000_000_000;

/// Most reasons × kinds of segment counted per life.
const MAX_DROP_COUNTS: usize = 64;

/// Drops waiting for their life, by the segment's (source, destination).
pub(super) type PendingDrops =
    RecentMap<(std::net::SocketAddr, std::net::SocketAddr), Vec<SegmentDrop>>;

pub(super) fn pending_drops() -> PendingDrops {
    RecentMap::new(AUX_CAP, Some(DROP_MAX_AGE_NS))
}

impl Tracker {
    pub(super) fn on_drop(&mut self, d: &SegmentDrop) {
        if d.answered_by_time_wait {
            // The peer's FIN, answered by the mini-socket one of ours was
            // handed to: it did close. Not a drop.
            let ours = (d.destination, d.source);
            if let Some(&sk) = self.handed_off.get(&ours, d.ts_ns)
                && let Some(t) = self.lives.get_mut(sk)
                && t.life.peer_fin_after_handoff_ns.is_none()
            {
                t.life.peer_fin_after_handoff_ns = Some(t.life.offset(d.ts_ns));
            }
            return;
        }
        self.stats.drops += 1;
        if SegmentKind::of(d.segment_flags) == SegmentKind::Rst {
            // A client's RST to a request socket ends it (the kernel frees
            // the RST as dropped, `rx_sk` = the listener): reset, not expired.
            self.requests.remove(&(d.destination, d.source));
        }
        for sk in [d.rx_sk, d.skb_sk].into_iter().flatten() {
            if let Some(t) = self.lives.touch(sk) {
                let direction = direction(&t.life, d);
                attach(&mut t.life, d, direction, JoinedBy::Socket);
                return;
            }
        }
        if let Some((sk, direction)) = self.listener_for(d)
            && let Some(t) = self.lives.get_mut(sk)
        {
            attach(&mut t.life, d, direction, JoinedBy::ListenerPort);
            return;
        }
        let key = (d.source, d.destination);
        match self.pending_drops.get_mut(&key) {
            Some(waiting) if waiting.len() < super::MAX_ROWS => waiting.push(d.clone()),
            Some(_) => unjoined(&mut self.stats, &mut self.tallies, d),
            None => self.pending_drops.insert(key, d.ts_ns, vec![d.clone()]),
        }
    }

    /// The one listener a SYN was sent to, or a SYN/ACK sent from.
    fn listener_for(&self, d: &SegmentDrop) -> Option<(u64, Direction)> {
        let (addr, direction) = match SegmentKind::of(d.segment_flags) {
            SegmentKind::Syn => (d.destination, Direction::Incoming),
            SegmentKind::SynAck => (d.source, Direction::Outgoing),
            _ => return None,
        };
        let mut found = self
            .lives
            .listeners(addr.port())
            .iter()
            .copied()
            .filter(|&sk| {
                self.lives.get(sk).is_some_and(|l| {
                    l.life.role == Role::Listener
                        && (l.life.local.ip().is_unspecified() || l.life.local.ip() == addr.ip())
                })
            });
        match (found.next(), found.next()) {
            (Some(sk), None) => Some((sk, direction)),
            _ => None,
        }
    }

    /// Gives the tracked life `skaddr` the drops waiting for its tuple.
    pub(super) fn claim_pending(&mut self, skaddr: u64) {
        if self.pending_drops.is_empty() {
            return;
        }
        if let Some(t) = self.lives.get_mut(skaddr) {
            let (stats, tallies) = (&mut self.stats, &mut self.tallies);
            claim(
                &mut self.pending_drops,
                &mut |d| unjoined(stats, tallies, d),
                &mut t.life,
            );
        }
    }

    /// Counts drops that waited too long at `now_ns`; returns how many
    /// tuples went.
    pub(super) fn prune_pending(&mut self, now_ns: u64) -> usize {
        let (stats, tallies) = (&mut self.stats, &mut self.tallies);
        self.pending_drops.prune_each(now_ns, |gone| {
            gone.iter().for_each(|d| unjoined(stats, tallies, d))
        })
    }

    /// At the end: whatever still waits was never joined.
    pub(super) fn give_up_pending(&mut self) {
        let (stats, tallies) = (&mut self.stats, &mut self.tallies);
        self.pending_drops
            .drain_each(|gone| gone.iter().for_each(|d| unjoined(stats, tallies, d)));
    }
}

/// A drop no life took: counted, and its reason handed to the summary.
pub(super) fn unjoined(stats: &mut TrackerStats, tallies: &mut Vec<Tally>, d: &SegmentDrop) {
    stats.drops_unjoined += 1;
    tallies.push(Tally::UnjoinedDrop(d.reason.clone()));
}

/// Gives `life` the drops waiting for its tuple (either orientation) that
/// came after it started; `unjoined` takes those of an earlier socket.
pub(super) fn claim(
    pending: &mut PendingDrops,
    unjoined: &mut dyn FnMut(&SegmentDrop),
    life: &mut SocketLife,
) {
    if pending.is_empty() || life.local.port() == 0 || life.remote.port() == 0 {
        return;
    }
    let ways = [
        ((life.local, life.remote), Direction::Outgoing),
        ((life.remote, life.local), Direction::Incoming),
    ];
    for (key, direction) in ways {
        for d in pending.remove(&key).into_iter().flatten() {
            if d.ts_ns >= life.start_ns {
                attach(life, &d, direction, JoinedBy::Tuple);
            } else {
                // An earlier socket's, with the same addresses.
                unjoined(&d);
            }
        }
    }
}

/// Which way `d` was going, seen from `life`: towards its peer, or from it.
fn direction(life: &SocketLife, d: &SegmentDrop) -> Direction {
    if life.remote.port() != 0 {
        if d.destination == life.remote {
            Direction::Outgoing
        } else {
            Direction::Incoming
        }
    } else if d.source.port() == life.local.port() {
        // A listener's SYN/ACK.
        Direction::Outgoing
    } else {
        Direction::Incoming
    }
}

fn attach(life: &mut SocketLife, d: &SegmentDrop, direction: Direction, joined_by: JoinedBy) {
    life.last_ns = life.last_ns.max(d.ts_ns);
    let segment = SegmentKind::of(d.segment_flags);
    let counts = &mut life.drop_counts;
    match counts
        .iter()
        .position(|c| c.reason.code == d.reason.code && c.segment == segment)
    {
        Some(i) => counts[i].count = counts[i].count.saturating_add(1),
        None if counts.len() < MAX_DROP_COUNTS => counts.push(DropCount {
            reason: d.reason.clone(),
            segment,
            count: 1,
        }),
        None => {}
    }
    let row = SegmentDropped {
        offset_ns: life.offset(d.ts_ns),
        reason: d.reason.clone(),
        segment_flags: d.segment_flags,
        direction,
        joined_by,
    };
    push_capped(&mut life.drops, row);
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_ROWS, Tracker, TrackerOptions, fixtures::*};
    use super::*;
    use crate::{classify::classify, decode::Record, model::Close};

    fn with(mut d: SegmentDrop, rx_sk: Option<u64>, skb_sk: Option<u64>) -> Record {
        d.rx_sk = rx_sk;
        d.skb_sk = skb_sk;
        Record::Drop(d)
    }

    fn plain(d: SegmentDrop) -> Record {
        Record::Drop(d)
    }

    /// A connect nobody answers, whose SYNs (each given as a drop record
    /// by `syn_dropped`) never leave: the port is known from the first
    /// retransmit on.
    fn timeout_with(syn_dropped: impl Fn(u64) -> Record) -> Vec<Record> {
        let c = S::new(CLIENT_SK, "10.0.0.5:51000", "10.0.0.99:443").owner(&python());
        vec![
            c.local("10.0.0.5:0").by(1000, &python()).st(7, 2),
            syn_dropped(1001),
            c.irq(1_001_000).retransmit(2),
            syn_dropped(1_001_001),
            c.irq(3_001_000).close(2, 0),
        ]
    }

    fn syn(t: u64) -> SegmentDrop {
        dropped(t, "10.0.0.5:51000", "10.0.0.99:443", SYN, NETFILTER_DROP)
    }

    #[test]
    fn a_listener_takes_the_drops_the_kernel_names_it_in() {
        let (l, ng) = (listener(), nginx());
        let overflow = dropped(
            2000,
            "127.0.0.1:45126",
            "127.0.0.1:8099",
            ACK,
            LISTEN_OVERFLOW,
        );
        let lives = run(&[
            l.by(0, &ng).st(7, 10),
            with(overflow.clone(), Some(LISTENER_SK), None),
            with(overflow, Some(LISTENER_SK), None),
            l.by(5000, &ng).close(10, 0),
        ]);
        let life = life_of(&lives, LISTENER_SK);
        assert_eq!(life.drop_counts.len(), 1, "{life:#?}");
        let count = &life.drop_counts[0];
        assert_eq!(
            (count.reason.code, count.segment, count.count),
            (40, SegmentKind::Ack, 2)
        );
        let row = &life.drops[0];
        assert_eq!(
            (row.direction, row.joined_by, row.offset_ns),
            (Direction::Incoming, JoinedBy::Socket, us(2000) - us(0))
        );
    }

    #[test]
    fn a_syn_dropped_on_its_way_out_is_tied_to_its_sender_before_its_port_is_known() {
        let lives = run(&timeout_with(|t| with(syn(t), None, Some(CLIENT_SK))));
        let c = life_of(&lives, CLIENT_SK);
        assert_eq!(c.drops.len(), 2, "{c:#?}");
        for d in &c.drops {
            assert_eq!(
                (d.direction, d.joined_by),
                (Direction::Outgoing, JoinedBy::Socket)
            );
        }
        let Close::HandshakeTimeout { syns_dropped, .. } = classify(&c).close else {
            panic!("{c:#?}")
        };
        let syns = syns_dropped.unwrap();
        assert_eq!(
            (syns.count, syns.reason.name.as_deref()),
            (2, Some("NETFILTER_DROP"))
        );
    }

    #[test]
    fn a_drop_without_a_socket_waits_for_the_life_with_its_tuple_either_way_round() {
        // Outgoing: the first SYN waits until the client learns its port.
        let mut t = Tracker::new(TrackerOptions::default());
        let recs = timeout_with(|t| plain(syn(t)));
        for r in &recs[..2] {
            t.observe(r);
        }
        assert_eq!(t.pending_drops.len(), 1, "the port is unknown yet");
        t.observe(&recs[2]);
        assert!(t.pending_drops.is_empty(), "taken at the retransmit");
        let mut lives: Vec<_> = recs[3..].iter().flat_map(|r| t.observe(r)).collect();
        lives.extend(t.finish());
        let c = life_of(&lives, CLIENT_SK);
        assert_eq!(c.drops.len(), 2, "{c:#?}");
        assert!(c.drops.iter().all(|d| d.joined_by == JoinedBy::Tuple));
        assert!(c.drops.iter().all(|d| d.direction == Direction::Outgoing));
        assert_eq!(t.stats().drops_unjoined, 0);

        // Incoming: the peer's FIN dropped at this host's input, no socket
        // found, taken by the receiver when it is reported.
        let (c, py) = (client(), python());
        let fin = dropped(
            1500,
            "127.0.0.1:8099",
            "127.0.0.1:45126",
            FIN_ACK,
            NETFILTER_DROP,
        );
        let lives = run(&[
            c.by(1000, &py).st(2, 1),
            plain(fin),
            c.by(2000, &py).st(1, 4),
            c.irq(2001).st(4, 5),
            c.irq(2002).close(5, 0),
            c.irq(2003).destroy(),
        ]);
        let d = &life_of(&lives, CLIENT_SK).drops;
        assert_eq!(d.len(), 1, "{d:#?}");
        assert_eq!(
            (d[0].direction, d[0].joined_by, d[0].kind()),
            (Direction::Incoming, JoinedBy::Tuple, SegmentKind::Fin)
        );
    }

    #[test]
    fn an_ignored_rst_is_the_socket_the_kernel_named() {
        let (c, py) = (client(), python());
        let rst = dropped(
            1500,
            "127.0.0.1:8099",
            "127.0.0.1:45126",
            RST,
            INVALID_SEQUENCE,
        );
        let lives = run(&[c.by(1000, &py).st(2, 1), with(rst, Some(CLIENT_SK), None)]);
        let d = &life_of(&lives, CLIENT_SK).drops[0];
        assert_eq!(
            (d.direction, d.kind()),
            (Direction::Incoming, SegmentKind::Rst)
        );
    }

    #[test]
    fn a_syn_to_a_listeners_port_is_the_listeners_and_others_are_counted() {
        let (l, ng) = (listener(), nginx());
        let to_listener = dropped(100, "10.9.9.9:5555", "127.0.0.1:8099", SYN, NETFILTER_DROP);
        let elsewhere = dropped(101, "10.9.9.9:5555", "127.0.0.1:9000", SYN, NETFILTER_DROP);
        // Its SYN/ACK, dropped on its way out (a request socket owned it).
        let synack = dropped(
            102,
            "127.0.0.1:8099",
            "10.9.9.9:5555",
            SYN_ACK,
            NETFILTER_DROP,
        );
        let mut t = Tracker::new(TrackerOptions::default());
        for r in [
            l.by(0, &ng).st(7, 10),
            plain(to_listener),
            plain(elsewhere),
            with(synack, None, Some(0xffff_8881_2345_9000)),
        ] {
            t.observe(&r);
        }
        let lives = t.finish();
        let life = life_of(&lives, LISTENER_SK);
        let ways: Vec<_> = life
            .drops
            .iter()
            .map(|d| (d.kind(), d.joined_by, d.direction))
            .collect();
        assert_eq!(
            ways,
            [
                (
                    SegmentKind::Syn,
                    JoinedBy::ListenerPort,
                    Direction::Incoming
                ),
                (
                    SegmentKind::SynAck,
                    JoinedBy::ListenerPort,
                    Direction::Outgoing
                )
            ]
        );
        assert_eq!((t.stats().drops, t.stats().drops_unjoined), (3, 1));
    }

    #[test]
    fn drops_no_life_takes_are_counted_when_they_age_out_or_at_the_end() {
        let mut t = Tracker::new(TrackerOptions::default());
        t.observe(&plain(syn(0)));
        t.observe(&plain(syn(1)));
        assert_eq!(t.pending_drops.len(), 1, "one tuple");
        t.expire(us(1) + DROP_MAX_AGE_NS + 1);
        assert_eq!(t.stats().drops_unjoined, 2);
        t.observe(&plain(syn(DROP_MAX_AGE_NS)));
        t.finish();
        assert_eq!(t.stats().drops_unjoined, 3);
        assert!(t.pending_drops.is_empty());

        // A drop older than the life with its tuple was an earlier socket's.
        let c = client();
        let early = dropped(10, "127.0.0.1:45126", "127.0.0.1:8099", SYN, NETFILTER_DROP);
        let mut t = Tracker::new(TrackerOptions::default());
        t.observe(&plain(early));
        t.observe(&c.by(20, &python()).st(7, 2));
        let lives = t.finish();
        assert!(lives[0].drops.is_empty());
        assert_eq!(t.stats().drops_unjoined, 1);
    }

    #[test]
    fn drop_rows_are_capped_and_their_counts_are_not() {
        let (c, py) = (client(), python());
        let rst = dropped(
            0,
            "127.0.0.1:8099",
            "127.0.0.1:45126",
            RST,
            INVALID_SEQUENCE,
        );
        let mut recs = vec![c.by(0, &py).st(2, 1)];
        recs.extend((1..=200).map(|i| {
            let mut d = rst.clone();
            d.ts_ns = us(i);
            with(d, Some(CLIENT_SK), None)
        }));
        let life = life_of(&run(&recs), CLIENT_SK);
        assert_eq!(life.drops.len(), MAX_ROWS);
        assert_eq!(life.drop_counts[0].count, 200);
    }

    /// The client closed first; its orphan went to a FIN_WAIT2 mini-socket;
    /// the server's FIN reached that mini-socket 2 ms later (the kernel
    /// frees it "dropped", NOT_SPECIFIED): the peer did close.
    #[test]
    fn a_fin_the_mini_socket_answered_tells_the_peer_closed_and_is_no_drop() {
        let (c, py) = (client(), python());
        let mut records = vec![
            c.by(0, &py).st(7, 2),
            c.irq(10).st(2, 1),
            c.by(20, &py).st(1, 4),
            c.irq(30).st(4, 5),
            c.irq(31).fin_wait2_close(false),
        ];
        let mut fin = dropped(
            2031,
            "127.0.0.1:8099",
            "127.0.0.1:45126",
            FIN_ACK,
            (2, "NOT_SPECIFIED"),
        );
        fin.answered_by_time_wait = true;
        fin.rx_sk = Some(0xffff_8881_0000_0001);
        records.push(Record::Drop(fin));
        let mut t = Tracker::new(TrackerOptions::default());
        for r in &records {
            t.observe(r);
        }
        let lives = t.finish();
        let l = &lives[0];
        assert!(l.fin_wait2_orphan, "{l:#?}");
        assert_eq!(
            l.peer_fin_after_handoff_ns,
            Some(us(2031) - us(0)),
            "{l:#?}"
        );
        assert!(l.drops.is_empty() && l.drop_counts.is_empty(), "not a drop");
        assert_eq!((t.stats().drops, t.stats().drops_unjoined), (0, 0));
        let v = classify(l);
        assert_eq!(v.close, Close::Active { time_wait: true });
        // Without it, the peer had not closed when tcptrace last saw it.
        let alone = run(&records[..records.len() - 1]);
        assert_eq!(classify(&alone[0]).close, Close::PeerNeverClosed);
    }
}
