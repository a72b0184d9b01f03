//! Recorded event sequences, in the order and shape KERNEL-NOTES.md reports
//! them for Linux 6.18 on loopback. Times are in µs from an arbitrary base.

use std::net::SocketAddr;

use crate::decode::{
    Context, DropReason, Proc, Record, ResetReason, SegmentDrop, SockInfo, TcpState,
};
use crate::tracker::{SocketLife, Tracker, TrackerOptions};

/// Monotonic time of `us` µs after the base.
pub(crate) fn us(us: u64) -> u64 {
    5_000_000_000 + us * 1000
}

pub(crate) const CLIENT_SK: u64 = 0xffff_8881_2345_6000;
pub(crate) const SERVER_SK: u64 = 0xffff_8881_2345_7000;
pub(crate) const LISTENER_SK: u64 = 0xffff_8881_2345_8000;

pub(crate) fn proc_(pid: u32, comm: &str) -> Proc {
    Proc {
        pid,
        tgid: pid,
        comm: comm.into(),
        cgroup_id: 4242,
    }
}

pub(crate) fn python() -> Proc {
    proc_(2251, "python3")
}

pub(crate) fn nginx() -> Proc {
    proc_(4311, "nginx")
}

/// A worker of nginx (4311): another process.
pub(crate) fn nginx_worker() -> Proc {
    proc_(4312, "nginx")
}

pub(crate) fn killer() -> Proc {
    proc_(4390, "kill")
}

/// A name made to forge terminal output: an escape and a newline.
pub(crate) fn hostile() -> Proc {
    proc_(666, "evil\x1b[31m\n")
}

pub(crate) fn swapper() -> Proc {
    proc_(0, "swapper/3")
}

fn state(raw: u8) -> TcpState {
    TcpState::from_raw(raw).expect("fixture state")
}

/// One socket's identity and the context of the next event.
#[derive(Clone, Debug)]
pub(crate) struct S(pub(crate) SockInfo);

impl S {
    pub(crate) fn new(skaddr: u64, local: &str, remote: &str) -> S {
        S(SockInfo {
            ts_ns: 0,
            cpu: 3,
            skaddr,
            local: local.parse().expect("fixture address"),
            remote: remote.parse().expect("fixture address"),
            context: Context::Softirq { on_cpu: swapper() },
            owner: None,
            netns: None,
            shared_listener: false,
        })
    }

    pub(crate) fn owner(mut self, p: &Proc) -> S {
        self.0.owner = Some(*p);
        self
    }

    pub(crate) fn local(&self, local: &str) -> S {
        let mut s = self.clone();
        s.0.local = local.parse().expect("fixture address");
        s
    }

    /// At `t` µs, in the process context of `p`.
    pub(crate) fn by(&self, t: u64, p: &Proc) -> S {
        let mut s = self.clone();
        s.0.ts_ns = us(t);
        s.0.context = Context::Process(*p);
        s
    }

    /// At `t` µs, in softirq.
    pub(crate) fn irq(&self, t: u64) -> S {
        let mut s = self.clone();
        s.0.ts_ns = us(t);
        s.0.context = Context::Softirq { on_cpu: swapper() };
        s
    }

    pub(crate) fn st(&self, old: u8, new: u8) -> Record {
        Record::State {
            sock: self.0,
            old: state(old),
            new: state(new),
            unread: None,
            peer_fin: None,
        }
    }

    /// FIN_WAIT2 → CLOSE as the kernel program reports it: whether the
    /// peer's FIN had come (`sk_shutdown`).
    pub(crate) fn fin_wait2_close(&self, peer_fin: bool) -> Record {
        Record::State {
            sock: self.0,
            old: TcpState::FinWait2,
            new: TcpState::Close,
            unread: None,
            peer_fin: Some(peer_fin),
        }
    }

    /// `old → CLOSE` with the unread byte count the kernel program read.
    pub(crate) fn close(&self, old: u8, unread: u32) -> Record {
        Record::State {
            sock: self.0,
            old: state(old),
            new: TcpState::Close,
            unread: Some(unread),
            peer_fin: None,
        }
    }

    pub(crate) fn send_reset(&self, st: Option<u8>, reason: Option<(u32, &str)>) -> Record {
        Record::SendReset {
            sock: self.0,
            state: st.and_then(TcpState::from_raw),
            reason: reason.map(|(code, name)| ResetReason {
                code,
                name: Some(name.to_owned()),
            }),
            segment_flags: None,
        }
    }

    pub(crate) fn receive_reset(&self) -> Record {
        Record::ReceiveReset { sock: self.0 }
    }

    pub(crate) fn retransmit(&self, st: u8) -> Record {
        Record::Retransmit {
            sock: self.0,
            state: TcpState::from_raw(st),
        }
    }

    pub(crate) fn synack_retransmit(&self) -> Record {
        Record::RetransmitSynAck { sock: self.0 }
    }

    pub(crate) fn destroy(&self) -> Record {
        Record::Destroy { sock: self.0 }
    }

    /// `p` accepted this socket (the kernel sets it as owner).
    pub(crate) fn accepted_by(&self, p: &Proc) -> Record {
        let mut sock = self.0;
        sock.context = Context::Process(*p);
        sock.owner = Some(*p);
        sock.shared_listener = false;
        Record::Accept { sock }
    }

    /// A child of an address several processes listen on.
    pub(crate) fn shared(mut self) -> S {
        self.0.owner = None;
        self.0.shared_listener = true;
        self
    }
}

/// TCP flags of the segments drops are about.
pub(crate) const SYN: u8 = 0x02;
pub(crate) const SYN_ACK: u8 = 0x12;
pub(crate) const ACK: u8 = 0x10;
pub(crate) const FIN_ACK: u8 = 0x11;
pub(crate) const RST: u8 = 0x04;

pub(crate) const NETFILTER_DROP: (u32, &str) = (12, "NETFILTER_DROP");
pub(crate) const LISTEN_OVERFLOW: (u32, &str) = (40, "TCP_LISTEN_OVERFLOW");
pub(crate) const INVALID_SEQUENCE: (u32, &str) = (42, "TCP_INVALID_SEQUENCE");

/// A segment from `source` to `destination` dropped at `t` µs in softirq,
/// as `skb:kfree_skb` reports it: no socket named unless set on it.
pub(crate) fn dropped(
    t: u64,
    source: &str,
    destination: &str,
    flags: u8,
    reason: (u32, &str),
) -> SegmentDrop {
    SegmentDrop {
        ts_ns: us(t),
        cpu: 1,
        rx_sk: None,
        skb_sk: None,
        source: addr(source),
        destination: addr(destination),
        context: Context::Softirq { on_cpu: swapper() },
        owner: None,
        netns: None,
        reason: DropReason {
            code: reason.0,
            name: Some(reason.1.to_owned()),
        },
        segment_flags: flags,
        answered_by_time_wait: false,
    }
}

pub(crate) fn exit(t: u64, task: &Proc, exit_code: i32) -> Record {
    Record::ProcessExit {
        ts_ns: us(t),
        task: *task,
        exit_code: Some(exit_code),
        group_dead: true,
    }
}

pub(crate) fn signal(t: u64, sig: u32, target_pid: u32, sender: &Proc) -> Record {
    Record::Signal {
        ts_ns: us(t),
        sig,
        target_pid,
        sender: *sender,
        delivered: true,
    }
}

pub(crate) fn listener() -> S {
    S::new(LISTENER_SK, "0.0.0.0:8099", "0.0.0.0:0").owner(&nginx())
}

/// python3's socket, local port already chosen.
pub(crate) fn client() -> S {
    S::new(CLIENT_SK, "127.0.0.1:45126", "127.0.0.1:8099").owner(&python())
}

/// nginx's accepted child.
pub(crate) fn server() -> S {
    S::new(SERVER_SK, "127.0.0.1:8099", "127.0.0.1:45126").owner(&nginx())
}

/// Listener up, then the loopback 3-way handshake; everything ESTABLISHED at 1066 µs.
pub(crate) fn handshake() -> Vec<Record> {
    let (l, c, s, py, ng) = (listener(), client(), server(), python(), nginx());
    vec![
        l.by(0, &ng).st(7, 10),
        // The port is chosen after the state change: sport=0.
        c.local("127.0.0.1:0").by(1000, &py).st(7, 2),
        c.by(1062, &py).st(2, 1),
        s.irq(1064).st(10, 3),
        s.irq(1066).st(3, 1),
    ]
}

fn then(mut head: Vec<Record>, tail: Vec<Record>) -> Vec<Record> {
    head.extend(tail);
    head
}

pub(crate) fn client_closes_first() -> Vec<Record> {
    let (l, c, s, py, ng) = (listener(), client(), server(), python(), nginx());
    then(
        handshake(),
        vec![
            c.by(1911, &py).st(1, 4),
            s.irq(1912).st(1, 8),
            s.by(1925, &ng).st(8, 9),
            c.irq(1930).st(4, 5),
            c.irq(1948).close(5, 0),
            c.irq(1949).destroy(),
            s.irq(1950).close(9, 0),
            s.irq(1951).destroy(),
            l.by(5000, &ng).close(10, 0),
            l.by(5001, &ng).destroy(),
        ],
    )
}

/// nginx's master listens; a worker accepts the child 300 µs after its
/// handshake, serves it and closes first.
pub(crate) fn worker_accepts() -> Vec<Record> {
    let (c, s, py, worker) = (client(), server(), python(), nginx_worker());
    then(
        handshake(),
        vec![
            s.by(1366, &worker).accepted_by(&worker),
            s.by(2000, &worker).st(1, 4),
            c.irq(2001).st(1, 8),
            c.by(2100, &py).st(8, 9),
            s.irq(2101).st(4, 5),
            s.irq(2102).close(5, 0),
        ],
    )
}

/// Two processes listen on 8099 with SO_REUSEPORT: the child has no owner
/// until `accepter` accepts it.
pub(crate) fn reuseport_accept(accepter: &Proc) -> Vec<Record> {
    let (c, py) = (client(), python());
    let s = server().shared();
    vec![
        c.local("127.0.0.1:0").by(1000, &py).st(7, 2),
        c.by(1062, &py).st(2, 1),
        s.irq(1064).st(10, 3),
        s.irq(1066).st(3, 1),
        s.by(1200, accepter).accepted_by(accepter),
        s.by(2000, accepter).close(1, 0),
    ]
}

pub(crate) fn server_closes_first() -> Vec<Record> {
    let (c, s, py, ng) = (client(), server(), python(), nginx());
    then(
        handshake(),
        vec![
            s.by(2000, &ng).st(1, 4),
            c.irq(2001).st(1, 8),
            c.by(2100, &py).st(8, 9),
            s.irq(2101).st(4, 5),
            s.irq(2102).close(5, 0),
            s.irq(2103).destroy(),
            c.irq(2104).close(9, 0),
            c.irq(2105).destroy(),
        ],
    )
}

/// Nothing listens on 8099: the SYN meets no socket.
pub(crate) fn refused() -> Vec<Record> {
    let (c, py) = (client(), python());
    let rst = S::new(0, "127.0.0.1:8099", "127.0.0.1:45126");
    vec![
        c.local("127.0.0.1:0").by(1000, &py).st(7, 2),
        rst.irq(1010).send_reset(None, Some((1, "NO_SOCKET"))),
        c.irq(1011).receive_reset(),
        c.irq(1012).close(2, 0),
        // No destroy: python3 keeps the fd open.
    ]
}

/// The server closes abortively; its own send_reset comes after the
/// client's receive_reset and CLOSE (loopback delivers inside the send).
fn server_aborts(unread: u32, reason: (u32, &str)) -> Vec<Record> {
    let (c, s, ng) = (client(), server(), nginx());
    then(
        handshake(),
        vec![
            s.by(2000, &ng).close(1, unread),
            c.irq(2001).receive_reset(),
            c.irq(2002).close(1, 0),
            s.by(2003, &ng).send_reset(Some(7), Some(reason)),
            s.by(2004, &ng).destroy(),
        ],
    )
}

/// SO_LINGER {1, 0}.
pub(crate) fn linger0() -> Vec<Record> {
    server_aborts(0, (14, "TCP_STATE"))
}

/// close() with 13 bytes still in the receive queue.
pub(crate) fn unread_close() -> Vec<Record> {
    server_aborts(13, (11, "TCP_ABORT_ON_CLOSE"))
}

/// nginx is SIGKILLed by kill[4390] with 5 unread bytes.
pub(crate) fn killed() -> Vec<Record> {
    let (c, s, ng) = (client(), server(), nginx());
    then(
        handshake(),
        vec![
            signal(1990, 9, 4311, &killer()),
            exit(2010, &ng, 9),
            s.by(2020, &ng).close(1, 5),
            c.irq(2021).receive_reset(),
            c.irq(2022).close(1, 0),
            s.by(2023, &ng)
                .send_reset(Some(7), Some((11, "TCP_ABORT_ON_CLOSE"))),
            s.by(2024, &ng).destroy(),
        ],
    )
}

/// nginx's memory cgroup runs out: the OOM killer's SIGKILL is generated
/// in nginx's own context (it was allocating), nginx is marked as the
/// victim, then exits with its unread bytes.
pub(crate) fn oom_killed() -> Vec<Record> {
    let mut recs = killed();
    recs[5] = signal(1990, 9, 4311, &nginx());
    recs.insert(
        6,
        Record::OomVictim {
            ts_ns: us(1991),
            victim_pid: 4311,
            context: nginx(),
        },
    );
    recs
}

/// nginx calls exit(3): the kernel closes its socket gracefully.
pub(crate) fn exit_code_3() -> Vec<Record> {
    let (c, s, py, ng) = (client(), server(), python(), nginx());
    then(
        handshake(),
        vec![
            exit(2000, &ng, 3 << 8),
            s.by(2010, &ng).st(1, 4),
            c.irq(2011).st(1, 8),
            c.by(2100, &py).st(8, 9),
            s.irq(2101).st(4, 5),
            s.irq(2102).close(5, 0),
            c.irq(2103).close(9, 0),
        ],
    )
}

pub(crate) fn simultaneous() -> Vec<Record> {
    let (c, s, py, ng) = (client(), server(), python(), nginx());
    then(
        handshake(),
        vec![
            c.by(2000, &py).st(1, 4),
            s.by(2001, &ng).st(1, 4),
            c.irq(2002).st(4, 11),
            s.irq(2003).st(4, 11),
            c.irq(2004).close(11, 0),
            s.irq(2005).close(11, 0),
        ],
    )
}

/// Nobody answers: three SYN retransmits, then the timer gives up.
pub(crate) fn handshake_timeout() -> Vec<Record> {
    let c = S::new(CLIENT_SK, "10.0.0.5:51000", "10.0.0.99:443").owner(&python());
    vec![
        c.local("10.0.0.5:0").by(1000, &python()).st(7, 2),
        c.irq(1_001_000).retransmit(2),
        c.irq(3_001_000).retransmit(2),
        c.irq(7_001_000).retransmit(2),
        c.irq(15_001_000).close(2, 0),
    ]
}

/// A connect whose SYNs this host's firewall drops on their way out, and a
/// listener whose accept queue overflows.
pub(crate) fn dropped_here() -> Vec<Record> {
    let (l, ng, py) = (listener(), nginx(), python());
    let c = S::new(CLIENT_SK, "10.0.0.5:51000", "10.0.0.99:443").owner(&py);
    let syn = |t| {
        let mut d = dropped(t, "10.0.0.5:51000", "10.0.0.99:443", SYN, NETFILTER_DROP);
        d.skb_sk = Some(CLIENT_SK);
        d.owner = Some(py);
        Record::Drop(d)
    };
    let overflow = |t| {
        let mut d = dropped(t, "127.0.0.1:45126", "127.0.0.1:8099", ACK, LISTEN_OVERFLOW);
        d.rx_sk = Some(LISTENER_SK);
        d.owner = Some(ng);
        Record::Drop(d)
    };
    let req = S::new(LISTENER_SK, "127.0.0.1:8099", "127.0.0.1:45126");
    vec![
        l.by(0, &ng).st(7, 10),
        c.local("10.0.0.5:0").by(1000, &py).st(7, 2),
        syn(1001),
        c.irq(1_001_000).retransmit(2),
        syn(1_001_001),
        overflow(1_500_000),
        req.irq(2_000_000).synack_retransmit(),
        overflow(2_000_001),
        c.irq(3_001_000).close(2, 0),
        l.by(4_000_000, &ng).close(10, 0),
    ]
}

/// Feeds `records` and returns every life reported, finishing at the end.
pub(crate) fn run(records: &[Record]) -> Vec<SocketLife> {
    run_with(TrackerOptions::default(), records)
}

pub(crate) fn run_with(opts: TrackerOptions, records: &[Record]) -> Vec<SocketLife> {
    let mut t = Tracker::new(opts);
    let mut out: Vec<Box<SocketLife>> = records.iter().flat_map(|r| t.observe(r)).collect();
    out.extend(t.finish());
    out.into_iter().map(|life| *life).collect()
}

/// The one life reported for `skaddr` (panics in tests otherwise).
/// Takes the tracker's boxed lives as well as plain ones.
pub(crate) fn life_of<L: std::borrow::Borrow<SocketLife>>(lives: &[L], skaddr: u64) -> SocketLife {
    let found: Vec<&SocketLife> = lives
        .iter()
        .map(|l| l.borrow())
        .filter(|l| l.skaddr == skaddr)
        .collect();
    assert_eq!(found.len(), 1, "lives for {skaddr:#x}: {found:#?}");
    found[0].clone()
}

pub(crate) fn addr(s: &str) -> SocketAddr {
    s.parse().expect("fixture address")
}
