//! Building one [`SocketLife`] from the records of its socket: how a life
//! starts, what later records add to it, and how it is settled when reported.

use super::{MAX_ROWS, Tracked, Tracker};
use crate::{
    decode::{SockInfo, TcpState},
    model::{Accepted, Family, Role, SocketLife, Step},
};

/// A blank life for `sock`, starting at its record; boxed from the start,
/// as the tracker keeps and hands on every life.
pub(super) fn new_life(sock: &SockInfo) -> Box<SocketLife> {
    Box::new(SocketLife {
        skaddr: sock.skaddr,
        family: if sock.local.is_ipv6() {
            Family::Ipv6
        } else {
            Family::Ipv4
        },
        local: sock.local,
        remote: sock.remote,
        role: Role::Unknown,
        owner: sock.owner,
        netns: sock.netns,
        workload: None,
        listener: None,
        children: 0,
        accepted: None,
        listener_owner: None,
        shared_listener: sock.shared_listener,
        start_ns: sock.ts_ns,
        end_ns: sock.ts_ns,
        duration_ns: 0,
        last_ns: sock.ts_ns,
        state: None,
        steps: Vec::new(),
        resets_sent: Vec::new(),
        resets_received: Vec::new(),
        retransmits: Vec::new(),
        drops: Vec::new(),
        drop_counts: Vec::new(),
        syn_retransmits: 0,
        synack_retransmits: 0,
        requests_expired: 0,
        data_retransmits: 0,
        self_transitions: 0,
        time_wait: false,
        closed_by: None,
        exit: None,
        unread: None,
        peer_reset: None,
        socketless: false,
        destroyed: false,
        started_mid_life: false,
        evicted: false,
        still_open: false,
        fin_wait2_orphan: false,
        peer_fin_after_handoff_ns: None,
        unaccepted: false,
        error: None,
        gone_unseen: false,
        events_lost: false,
        gap: false,
    })
}

/// The role of a life that starts with `old → new`, if such a transition
/// starts one.
pub(super) fn starts_life(old: TcpState, new: TcpState) -> Option<Role> {
    use TcpState::*;
    match (old, new) {
        (Close, SynSent) => Some(Role::Client),
        (Close, Listen) => Some(Role::Listener),
        (Listen, SynRecv) => Some(Role::Server),
        _ => None,
    }
}

/// Takes what a later record knows about the socket: a first owner, the
/// local port chosen after `CLOSE→SYN_SENT`, an address learnt later.
pub(super) fn absorb(life: &mut SocketLife, sock: &SockInfo) {
    if life.owner.is_none() {
        life.owner = sock.owner;
    }
    life.shared_listener |= sock.shared_listener;
    if life.netns.is_none() {
        life.netns = sock.netns;
    }
    if life.local.port() == 0 && sock.local.port() != 0 {
        life.local = sock.local;
    }
    if life.local.ip().is_unspecified() && !sock.local.ip().is_unspecified() {
        life.local.set_ip(sock.local.ip());
    }
    if life.remote.port() == 0 && sock.remote.port() != 0 {
        life.remote = sock.remote;
    }
    life.last_ns = life.last_ns.max(sock.ts_ns);
}

/// A life that started mid-way learns its role from the states it passes.
pub(super) fn infer_role(life: &mut SocketLife, old: TcpState, new: TcpState) {
    if life.role != Role::Unknown {
        return;
    }
    use TcpState::*;
    life.role = match (old, new) {
        (SynSent, _) | (_, SynSent) => Role::Client,
        (SynRecv, _) | (_, SynRecv) => Role::Server,
        (Listen, _) | (_, Listen) => Role::Listener,
        _ => Role::Unknown,
    };
}

pub(super) fn push_capped<T>(rows: &mut Vec<T>, row: T) {
    if rows.len() < MAX_ROWS {
        rows.push(row);
    }
}

/// A step of `life`: most lives make 5 or 6, so room for 8 is made at
/// once (one allocation, no regrowth).
pub(super) fn push_step(life: &mut SocketLife, step: Step) {
    if life.steps.capacity() == 0 {
        life.steps.reserve_exact(8);
    }
    push_capped(&mut life.steps, step);
}

/// The life as reported: durations and the TIME_WAIT verdict settled.
/// Boxed as tracked: a life is about a kilobyte, and it goes on to the
/// renderers and outputs without being copied again.
pub(super) fn finalize(t: Tracked) -> Box<SocketLife> {
    let mut life = t.life;
    // FIN_WAIT2→CLOSE followed by an RST is a linger abort, not TIME_WAIT.
    life.time_wait = t.handoff && life.resets_sent.is_empty();
    if life.state != Some(TcpState::Close) {
        life.end_ns = life.last_ns;
    }
    life.duration_ns = life.end_ns.saturating_sub(life.start_ns);
    life
}

/// Bytes the application never read, from the kernel's raw
/// `rcv_nxt - copied_seq` at a transition to CLOSE. A received FIN takes a
/// sequence number too, so it is taken off where the peer's FIN surely
/// arrived; from FIN_WAIT2 nobody can tell whether it did, so nothing is said.
pub fn unread_at_close(old: TcpState, raw: u32) -> Option<u32> {
    match old {
        TcpState::Established | TcpState::SynRecv | TcpState::FinWait1 => Some(raw),
        TcpState::CloseWait | TcpState::LastAck | TcpState::Closing => Some(raw.saturating_sub(1)),
        _ => None,
    }
}

/// accept(2) returned the socket to `sock.context`: from now on it is that
/// process's (the kernel's owner map says so too), and the listener's
/// owner, when another process, is kept beside it.
pub(super) fn record_accept(life: &mut SocketLife, sock: &SockInfo) {
    let Some(by) = sock.context.process().copied() else {
        return;
    };
    let offset_ns = life.offset(sock.ts_ns);
    let queued_ns = life
        .step(TcpState::SynRecv, TcpState::Established)
        .map(|s| offset_ns.saturating_sub(s.offset_ns));
    if let Some(before) = life.owner
        && before.tgid != by.tgid
    {
        life.listener_owner = Some(before);
    }
    life.owner = Some(by);
    life.accepted = Some(Accepted {
        offset_ns,
        by,
        queued_ns,
    });
}

impl Tracker {
    /// Is any life not closed (so that the kernel's sockets are worth
    /// listing at exit)? Lives that linger after their close do not count.
    pub fn has_open(&self) -> bool {
        self.lives
            .iter()
            .any(|(_, t)| t.life.state != Some(TcpState::Close))
    }
}
