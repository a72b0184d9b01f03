//! What the wire showed besides transitions: RSTs sent and received, and
//! retransmits, each added to its socket's life (a socketless RST makes a
//! life of its own, and is remembered to annotate the connect it refused).

use super::{
    Tracker,
    attribution::set_closer,
    life::{new_life, push_capped},
    requests::listener_ref,
};
use crate::{
    decode::{Context, ResetReason, SockInfo, TcpState},
    model::{ResetReceived, ResetSent, Retransmit, RetransmitKind, Role, SocketLife, Tally},
};

/// A socketless RST, kept briefly to annotate the connect it refused.
#[derive(Clone, Debug)]
pub(super) struct PendingReset {
    ts_ns: u64,
    state: Option<TcpState>,
    reason: Option<ResetReason>,
    context: Context,
    segment_flags: Option<u8>,
}

impl Tracker {
    /// The socketless RST that answered this connecting socket's SYN.
    pub(super) fn refusal_for(&self, sock: &SockInfo) -> Option<PendingReset> {
        self.socketless
            .get(&(sock.remote, sock.local), sock.ts_ns)
            .cloned()
    }

    pub(super) fn on_send_reset(
        &mut self,
        sock: &SockInfo,
        state: Option<TcpState>,
        reason: &Option<ResetReason>,
        segment_flags: Option<u8>,
        out: &mut Vec<Box<SocketLife>>,
    ) {
        let pending = PendingReset {
            ts_ns: sock.ts_ns,
            state,
            reason: reason.clone(),
            context: sock.context,
            segment_flags,
        };
        if sock.skaddr == 0 || !self.lives.contains(sock.skaddr) {
            // Nothing to attach to: report it alone, now.
            let mut life = new_life(sock);
            life.state = state;
            life.resets_sent
                .push(pending_to_sent(&life, pending.clone()));
            if sock.skaddr == 0 {
                life.socketless = true;
                life.role = Role::Server;
                self.stats.socketless_resets += 1;
                self.socketless
                    .insert((sock.local, sock.remote), sock.ts_ns, pending);
            } else {
                life.started_mid_life = true;
                self.stats.orphan_resets += 1;
            }
            out.push(life);
            return;
        }
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(sock.skaddr) else {
            return;
        };
        // A child reset by the process that just closed its listener, on
        // that port: a connection the listener never accepted.
        let closed_by_listener = sock.context.process().is_some_and(|p| {
            self.listener_closes.get(&sock.local.port(), sock.ts_ns) == Some(&p.tgid)
        });
        if closed_by_listener && t.life.listener.is_some() {
            t.life.unaccepted = true;
        }
        let row = pending_to_sent(&t.life, pending);
        push_capped(&mut t.life.resets_sent, row);
        if let Some(closer) = t.abort_candidate.take() {
            set_closer(&mut t.life, closer);
        }
    }

    pub(super) fn on_receive_reset(&mut self, sock: &SockInfo, out: &mut Vec<Box<SocketLife>>) {
        let refusal = self.refusal_for(sock);
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(sock.skaddr) else {
            return;
        };
        let life = &mut t.life;
        let row = ResetReceived {
            offset_ns: life.offset(sock.ts_ns),
            state: life.state,
            context: sock.context,
        };
        push_capped(&mut life.resets_received, row);
        if life.state == Some(TcpState::SynSent)
            && life.peer_reset.is_none()
            && let Some(r) = refusal
        {
            life.peer_reset = Some(pending_to_sent(life, r));
        }
    }

    pub(super) fn on_retransmit(
        &mut self,
        sock: &SockInfo,
        state: Option<TcpState>,
        out: &mut Vec<Box<SocketLife>>,
    ) {
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(sock.skaddr) else {
            return;
        };
        let life = &mut t.life;
        let offset_ns = life.offset(sock.ts_ns);
        let (kind, count) = match state.or(life.state) {
            Some(TcpState::SynSent) => (RetransmitKind::Syn, &mut life.syn_retransmits),
            Some(TcpState::SynRecv) => (RetransmitKind::Synack, &mut life.synack_retransmits),
            _ => (RetransmitKind::Data, &mut life.data_retransmits),
        };
        *count = count.saturating_add(1);
        let row = Retransmit {
            offset_ns,
            kind,
            number: *count,
        };
        push_capped(&mut life.retransmits, row);
    }

    /// Counted on the listener (or TFO child) and remembered by the request's
    /// tuple, for the child socket created when the handshake completes.
    pub(super) fn on_synack_retransmit(&mut self, sock: &SockInfo) {
        let key = (sock.local, sock.remote);
        let listener = match self.lives.get(sock.skaddr) {
            Some(t) => listener_ref(t.life.local, t.life.netns, t.life.owner),
            None => listener_ref(sock.local, sock.netns, sock.owner),
        };
        let (_, forgot) = self
            .requests
            .retransmit(key, sock.skaddr, listener, sock.ts_ns);
        self.stats.requests_untracked += u64::from(forgot);
        if let Some(t) = self.lives.get_mut(sock.skaddr) {
            let life = &mut t.life;
            life.synack_retransmits = life.synack_retransmits.saturating_add(1);
            life.last_ns = life.last_ns.max(sock.ts_ns);
            let row = Retransmit {
                offset_ns: life.offset(sock.ts_ns),
                kind: RetransmitKind::Synack,
                number: life.synack_retransmits,
            };
            push_capped(&mut life.retransmits, row);
            if life.role != Role::Listener {
                // A TFO child counts its own; no child is to come.
                self.requests.remove(&key);
            }
        }
    }
}

impl Tracker {
    /// Counts requests past due at `now_ns` as expired; returns how many.
    pub(super) fn expire_requests(&mut self, now_ns: u64) -> usize {
        let mut n = 0;
        while let Some(r) = self.requests.pop_expired(now_ns) {
            self.request_expired(r.listener_sk, r.listener);
            n += 1;
        }
        n
    }

    /// A listener closed: its requests go; those already expired count.
    pub(super) fn listener_closed(&mut self, skaddr: u64, ts_ns: u64) {
        for r in self.requests.listener_closed(skaddr, ts_ns) {
            self.request_expired(r.listener_sk, r.listener);
        }
    }

    fn request_expired(&mut self, listener_sk: u64, listener: crate::model::ListenerRef) {
        self.stats.requests_expired += 1;
        self.tallies.push(Tally::RequestExpired(listener));
        // The listener's own ladder says it too, while it is followed.
        if let Some(t) = self.lives.get_mut(listener_sk) {
            t.life.requests_expired = t.life.requests_expired.saturating_add(1);
        }
    }
}

pub(super) fn pending_to_sent(life: &SocketLife, r: PendingReset) -> ResetSent {
    ResetSent {
        offset_ns: life.offset(r.ts_ns),
        state: r.state,
        reason: r.reason,
        context: r.context,
        segment_flags: r.segment_flags,
    }
}
