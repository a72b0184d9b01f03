//! Tracker: folds the record stream into one [`SocketLife`] per socket, from
//! its first event to its end, and hands each life over once it is complete.
//!
//! A life is keyed by `skaddr`. It starts at `CLOSE→SYN_SENT` (client),
//! `CLOSE→LISTEN` (listener) or `LISTEN→SYN_RECV` (server child); any other
//! first event means tracing began mid-life. A life is not reported at its
//! `→CLOSE`: on loopback the sender's own `tcp_send_reset` event arrives after
//! the peer has already reacted to it, so a closed life lingers until its
//! `Destroy` record or until [`TrackerOptions::linger_ns`] has passed.
//!
//! Memory is bounded everywhere: at most [`TrackerOptions::max_sockets`] lives
//! (the least recently active is evicted), at most [`AUX_CAP`] entries no
//! older than [`AUX_MAX_AGE_NS`] in each auxiliary table, and at most
//! [`MAX_ROWS`] rows in each list of a life.
//!
//! The life's data is in [`crate::model`] (with its JSON schema); here is how
//! records build it: this module runs the state machine (a life per socket,
//! observed, expired, finished); [`life`] builds one life from its socket's
//! records; [`segments`] adds RSTs and retransmits; [`drops`] ties dropped
//! segments to their sockets; [`attribution`] says who closed a socket and
//! how that process ended; [`tables`] holds the bounded tables.

mod attribution;
mod drops;
mod life;
mod requests;
mod segments;
mod tables;

use std::{collections::HashSet, net::SocketAddr};

use serde::Serialize;

use self::{
    attribution::{Closer, ProcessTable, attribute_close, closing},
    drops::{PendingDrops, claim, pending_drops, unjoined},
    life::{absorb, finalize, infer_role, new_life, push_step, starts_life},
    requests::Requests,
    segments::{PendingReset, pending_to_sent},
    tables::{Lives, RecentMap},
};
use crate::decode::{Proc, Record, SockInfo, TcpState};
use crate::model::{SockError, Step, Tally};

pub use self::life::unread_at_close;
// The tracker's output: callers that fold records into lives need no other
// module for its type.
pub use crate::model::{Role, SocketLife};

/// Most entries in each auxiliary table (exits, signals, pending resets).
/// A listener's close resets its never-accepted children in the same
/// call (`inet_csk_listen_stop`): microseconds apart, well within this.
const LISTENER_CLOSE_NS: u64 = 10_000_000;
pub const AUX_CAP: usize = 4096;
/// Auxiliary entries older than this (event time) are forgotten.
pub const AUX_MAX_AGE_NS: u64 = 10_000_000_000;
/// Most rows kept in each list of a life (counters keep counting past it).
pub const MAX_ROWS: usize = 64;

#[derive(Clone, Copy, Debug)]
pub struct TrackerOptions {
    /// Most sockets tracked at once; the oldest is evicted (and marked) past it.
    pub max_sockets: usize,
    /// How long a closed socket waits for its late events (RST sent,
    /// destroy) before it is reported, in monotonic ns.
    pub linger_ns: u64,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            max_sockets: 65536,
            linger_ns: 200_000_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TrackerStats {
    /// Lives started (socketless resets not included).
    pub sockets_seen: u64,
    /// Lives tracked right now.
    pub tracked: u64,
    /// Lives reported before they closed because the table was full.
    pub evicted: u64,
    /// Most lives tracked at once.
    pub peak_tracked: u64,
    /// RSTs sent with no socket (e.g. a SYN to a closed port).
    pub socketless_resets: u64,
    /// RSTs sent by a socket never seen before (TIME_WAIT or request socks).
    pub orphan_resets: u64,
    /// Records that belonged to no life (e.g. a destroy after expiry).
    pub ignored: u64,
    /// Records of sockets already reported because the table was full
    /// (evicted while open): counted here, never reported twice.
    pub after_eviction: u64,
    /// Folded X→X transitions.
    pub self_transitions: u64,
    /// Segments of handshakes and closes the kernel dropped.
    pub drops: u64,
    /// Of those, drops tied to no socket tcptrace tracked (a peer's SYN to
    /// a closed port, a socket already reported, ...).
    pub drops_unjoined: u64,
    /// Request sockets whose SYN/ACK was retransmitted and that expired
    /// without becoming a child (see `requests.rs`).
    pub requests_expired: u64,
    /// Requests forgotten because too many were followed at once.
    pub requests_untracked: u64,
}

/// A life being tracked, with what only the tracker needs.
struct Tracked {
    /// Boxed: a life (about 1 KB) moves between tables several times.
    life: Box<SocketLife>,
    /// When a closed life is reported if nothing else ends it.
    deadline: Option<u64>,
    /// FIN_WAIT2→CLOSE or CLOSING→CLOSE seen; TIME_WAIT unless an RST went out.
    handoff: bool,
    /// An X→CLOSE in process context waiting for its RST.
    abort_candidate: Option<Closer>,
}

type Tuple = (SocketAddr, SocketAddr);

pub struct Tracker {
    opts: TrackerOptions,
    lives: Lives,
    procs: ProcessTable,
    /// Socketless RSTs by (their local, their remote).
    socketless: RecentMap<Tuple, PendingReset>,
    /// Requests whose SYN/ACK was retransmitted, by (local, remote): for
    /// the child to come, or counted expired.
    requests: Requests,
    /// Dropped segments waiting for the life with their tuple.
    pending_drops: PendingDrops,
    /// Sockets evicted while open (skaddr), so that their later events are
    /// counted, not started again as new mid-life lives: each socket is
    /// reported once. Bounded like the table itself.
    evicted_open: RecentMap<u64, ()>,
    /// Listeners just closed, by port → the closing process: the RSTs
    /// their never-accepted children get follow at once. (Not by netns:
    /// the kernel program reads it only where a socket starts.)
    listener_closes: RecentMap<u16, u32>,
    /// Sockets handed to a FIN_WAIT2 mini-socket, by (local, remote), while
    /// they linger: the peer's FIN the mini-socket answers joins them.
    handed_off: RecentMap<Tuple, u64>,
    stats: TrackerStats,
    /// Counts for the summary not tied to a life, until taken.
    tallies: Vec<Tally>,
}

impl Tracker {
    pub fn new(opts: TrackerOptions) -> Tracker {
        // Evicted sockets can outnumber the table many times over (its
        // point is to be small); a tombstone is a few dozen bytes.
        let evicted_cap = (4 * opts.max_sockets).max(16 * 1024);
        Tracker {
            opts,
            lives: Lives::new(),
            procs: ProcessTable::new(),
            socketless: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            requests: Requests::new(),
            pending_drops: pending_drops(),
            evicted_open: RecentMap::new(evicted_cap, None),
            listener_closes: RecentMap::new(AUX_CAP, Some(LISTENER_CLOSE_NS)),
            handed_off: RecentMap::new(AUX_CAP, Some(opts.linger_ns)),
            stats: TrackerStats::default(),
            tallies: Vec::new(),
        }
    }

    /// What was counted for the summary since the last call, not tied to
    /// a life (unjoined drops, expired requests): the caller takes them
    /// after every `observe`, `expire` and `finish`.
    pub fn take_tallies(&mut self) -> Vec<Tally> {
        std::mem::take(&mut self.tallies)
    }

    /// The one tracked listener bound to `addr` in the namespace `netns`
    /// (socket diagnostics name a listener so): its address and owner.
    pub fn listener_at(&self, netns: u32, addr: SocketAddr) -> Option<(SocketAddr, Option<Proc>)> {
        let mut found = self.lives.listeners(addr.port()).iter().filter_map(|&sk| {
            let life = &self.lives.get(sk)?.life;
            (life.local == addr && life.netns.is_none_or(|n| n == netns))
                .then_some((life.local, life.owner))
        });
        match (found.next(), found.next()) {
            (Some(l), None) => Some(l),
            _ => None,
        }
    }

    /// Feeds one record; returns the lives it completed (in order).
    pub fn observe(&mut self, rec: &Record) -> Vec<Box<SocketLife>> {
        let mut out = Vec::new();
        // Record time moves the linger clock too, so replays need no timer.
        self.expire_into(rec.ts_ns(), &mut out);
        match rec {
            Record::State {
                sock,
                old,
                new,
                unread,
                peer_fin,
            } => {
                self.on_state(sock, *old, *new, *unread, &mut out);
                if *peer_fin == Some(false)
                    && let Some(t) = self.lives.get_mut(sock.skaddr)
                {
                    // FIN sent and acknowledged, the peer's never came: the
                    // kernel handed the orphan to a FIN_WAIT2 mini-socket.
                    t.handoff = false;
                    t.life.fin_wait2_orphan = true;
                    let tuple = (t.life.local, t.life.remote);
                    self.handed_off.insert(tuple, sock.ts_ns, sock.skaddr);
                }
            }
            Record::SendReset {
                sock,
                state,
                reason,
                segment_flags,
            } => self.on_send_reset(sock, *state, reason, *segment_flags, &mut out),
            Record::ReceiveReset { sock } => self.on_receive_reset(sock, &mut out),
            Record::Retransmit { sock, state } => self.on_retransmit(sock, *state, &mut out),
            Record::RetransmitSynAck { sock } => self.on_synack_retransmit(sock),
            Record::Accept { sock } => {
                self.enter(sock, &mut out);
                if let Some(t) = self.lives.get_mut(sock.skaddr) {
                    life::record_accept(&mut t.life, sock);
                }
            }
            Record::ErrorReport {
                sock,
                errno,
                retransmits,
                probes,
                user_timeout_ms,
                icmp_queued,
            } => {
                self.enter(sock, &mut out);
                if let Some(t) = self.lives.get_mut(sock.skaddr) {
                    let life = &mut t.life;
                    // A report without an error says nothing; a queued ICMP
                    // error does not hide the error that aborted the socket.
                    let hard_known = life.error.as_ref().is_some_and(|e| !e.icmp_queued);
                    if *errno != 0 && !(*icmp_queued && hard_known) {
                        life.error = Some(SockError {
                            offset_ns: life.offset(sock.ts_ns),
                            errno: *errno,
                            retransmits: *retransmits,
                            probes: *probes,
                            user_timeout_ms: *user_timeout_ms,
                            icmp_queued: *icmp_queued,
                        });
                    }
                }
            }
            Record::Destroy { sock } if self.evicted_open.remove(&sock.skaddr).is_some() => {
                // The end of a socket reported early (evicted).
                self.stats.after_eviction += 1;
            }
            Record::Destroy { sock }
                if self.lives.get(sock.skaddr).is_some_and(|t| {
                    t.life.fin_wait2_orphan && t.life.peer_fin_after_handoff_ns.is_none()
                }) =>
            {
                // Its mini-socket lives on: the peer's FIN may still reach
                // it while the life lingers (till its deadline or reuse).
                if let Some(t) = self.lives.get_mut(sock.skaddr) {
                    t.life.destroyed = true;
                    t.life.last_ns = t.life.last_ns.max(sock.ts_ns);
                }
            }
            Record::Destroy { sock } => match self.lives.take(sock.skaddr) {
                Some(mut t) => {
                    t.life.destroyed = true;
                    t.life.last_ns = t.life.last_ns.max(sock.ts_ns);
                    out.push(self.settle(t));
                }
                None => self.stats.ignored += 1,
            },
            Record::ProcessExit {
                ts_ns,
                task,
                exit_code,
                group_dead,
            } => self.procs.on_exit(*ts_ns, task, *exit_code, *group_dead),
            Record::Signal {
                ts_ns,
                sig,
                target_pid,
                sender,
                delivered,
            } => {
                if *delivered {
                    self.procs.on_signal(*ts_ns, *sig, *target_pid, sender);
                }
            }
            Record::Drop(d) => self.on_drop(d),
            Record::OomVictim {
                ts_ns, victim_pid, ..
            } => self.procs.on_oom_victim(*ts_ns, *victim_pid),
        }
        out
    }

    /// `sock` with what its life knows filled in: tuple, owner, namespace
    /// (for records the kernel sent bare); unchanged when not followed.
    pub fn complete(&self, sock: &SockInfo) -> SockInfo {
        let mut out = *sock;
        if let Some(t) = self.lives.get(sock.skaddr) {
            let l = &t.life;
            (out.local, out.remote, out.owner, out.netns) = (l.local, l.remote, l.owner, l.netns);
        }
        out
    }

    /// Reports closed lives whose linger time has passed at `now_ns`.
    pub fn expire(&mut self, now_ns: u64) -> Vec<Box<SocketLife>> {
        self.expire_changed(now_ns).0
    }

    /// [`Tracker::expire`], and whether it changed anything at all (a life
    /// reported or a table entry aged out): a tick that changed nothing
    /// need not be recorded, for a replay without it ends the same.
    pub fn expire_changed(&mut self, now_ns: u64) -> (Vec<Box<SocketLife>>, bool) {
        let mut out = Vec::new();
        self.expire_into(now_ns, &mut out);
        let pruned = self.socketless.prune(now_ns)
            + self.expire_requests(now_ns)
            + self.procs.prune(now_ns)
            + self.listener_closes.prune(now_ns)
            + self.prune_pending(now_ns);
        let changed = pruned > 0 || !out.is_empty();
        (out, changed)
    }

    /// Reports every life left, oldest first; open ones are marked `still_open`.
    pub fn finish(&mut self) -> Vec<Box<SocketLife>> {
        self.finish_against(None)
    }

    /// Lives that tcptrace believes open at exit, checked against the
    /// kernel's own list of sockets (`alive`: local and remote address of
    /// each, from socket diagnostics): one the kernel no longer has was
    /// closed, its closing transitions unseen, and is marked `gone_unseen`
    /// instead of `still_open`. With `None` (no list) every open life is
    /// reported still open.
    pub fn finish_against(
        &mut self,
        alive: Option<&HashSet<(SocketAddr, SocketAddr)>>,
    ) -> Vec<Box<SocketLife>> {
        let mut skaddrs: Vec<(u64, u64)> = self
            .lives
            .iter()
            .map(|(sk, t)| (t.life.start_ns, sk))
            .collect();
        skaddrs.sort_unstable();
        let mut out = Vec::with_capacity(skaddrs.len());
        for (_, sk) in skaddrs {
            let Some(mut t) = self.lives.take(sk) else {
                continue;
            };
            let open = t.life.state != Some(TcpState::Close);
            let gone = alive.is_some_and(|a| !a.contains(&(t.life.local, t.life.remote)));
            t.life.still_open = open && !gone;
            t.life.gone_unseen = open && gone;
            out.push(self.settle(t));
        }
        self.give_up_pending();
        out
    }

    pub fn stats(&self) -> TrackerStats {
        TrackerStats {
            tracked: self.lives.len() as u64,
            ..self.stats
        }
    }

    /// Marks every life tracked now as having missed events (the session
    /// calls this when an event ring reports a loss).
    pub fn mark_events_lost(&mut self) {
        for t in self.lives.values_mut() {
            t.life.mark_lost_events();
        }
    }

    fn expire_into(&mut self, now_ns: u64, out: &mut Vec<Box<SocketLife>>) {
        while let Some(t) = self.lives.take_expired(now_ns) {
            out.push(self.settle(t));
        }
    }

    /// The life of `t` as reported, with the drops that waited for it.
    fn settle(&mut self, mut t: Tracked) -> Box<SocketLife> {
        let (stats, tallies) = (&mut self.stats, &mut self.tallies);
        claim(
            &mut self.pending_drops,
            &mut |d| unjoined(stats, tallies, d),
            &mut t.life,
        );
        finalize(t)
    }

    /// Starts tracking `life`, evicting the least recently active if full.
    fn insert(&mut self, life: Box<SocketLife>, out: &mut Vec<Box<SocketLife>>) {
        while self.lives.len() >= self.opts.max_sockets.max(1) {
            let Some((sk, mut t)) = self.lives.take_least_recent() else {
                break;
            };
            // A closed life only waited for late events: it is complete.
            if t.life.state != Some(TcpState::Close) {
                t.life.evicted = true;
                self.stats.evicted += 1;
                self.evicted_open.insert(sk, t.life.last_ns, ());
            }
            out.push(self.settle(t));
        }
        let tracked = Tracked {
            life,
            deadline: None,
            handoff: false,
            abort_candidate: None,
        };
        self.lives.insert(tracked.life.skaddr, tracked);
        self.stats.sockets_seen += 1;
        self.stats.peak_tracked = self.stats.peak_tracked.max(self.lives.len() as u64);
    }

    /// Makes sure `sock` has a life (created mid-life when unknown), marks
    /// it active and takes what the record knows about the socket.
    fn enter(&mut self, sock: &SockInfo, out: &mut Vec<Box<SocketLife>>) {
        if let Some(t) = self.lives.touch(sock.skaddr) {
            let learns_port = t.life.local.port() == 0 && sock.local.port() != 0;
            absorb(&mut t.life, sock);
            if learns_port {
                // A connecting socket's drops may be waiting for its port.
                self.claim_pending(sock.skaddr);
            }
            return;
        }
        if self.evicted_open.get(&sock.skaddr, sock.ts_ns).is_some() {
            // Already reported (evicted): count, don't start it again.
            self.stats.after_eviction += 1;
            return;
        }
        let mut life = new_life(sock);
        life.started_mid_life = true;
        // Inserted as the most recently active.
        self.insert(life, out);
        if let Some(t) = self.lives.get_mut(sock.skaddr) {
            absorb(&mut t.life, sock);
        }
    }

    fn on_state(
        &mut self,
        sock: &SockInfo,
        old: TcpState,
        new: TcpState,
        unread: Option<u32>,
        out: &mut Vec<Box<SocketLife>>,
    ) {
        let unread = unread.and_then(|raw| unread_at_close(old, raw));
        let start = starts_life(old, new);
        if let Some(role) = start {
            // A new socket at this address: whatever was evicted is gone.
            self.evicted_open.remove(&sock.skaddr);
            // skaddr reuse: the old life is over.
            if let Some(t) = self.lives.take(sock.skaddr) {
                out.push(self.settle(t));
            }
            let mut life = new_life(sock);
            life.role = role;
            if role == Role::Server {
                self.adopt_child(&mut life);
            }
            self.insert(life, out);
        }
        let ts = sock.ts_ns;
        let how = closing(old, new).filter(|_| old != new);
        let closer = how.and(sock.context.process()).map(|p| Closer {
            by: *p,
            exit: self.procs.exit_of(p, ts),
        });
        if (old, new) == (TcpState::Listen, TcpState::Close)
            && let Some(p) = sock.context.process()
        {
            self.listener_closes.insert(sock.local.port(), ts, p.tgid);
        }
        if (old, new) == (TcpState::Listen, TcpState::Close) {
            self.listener_closed(sock.skaddr, ts);
        }
        let pending_synacks = (old, new) == (TcpState::SynRecv, TcpState::Established);
        let pending_synacks = pending_synacks.then(|| {
            self.requests
                .remove(&(sock.local, sock.remote))
                .map(|r| r.retransmits)
        });
        let refusal = ((old, new) == (TcpState::SynSent, TcpState::Close))
            .then(|| self.refusal_for(sock))
            .flatten();
        self.enter(sock, out);
        let Some(t) = self.lives.get_mut(sock.skaddr) else {
            return;
        };
        let life = &mut t.life;
        if old == new {
            life.self_transitions += 1;
            self.stats.self_transitions += 1;
            return;
        }
        if life.state.is_some_and(|current| current != old) {
            // A transition the kernel made never reached us (event ring
            // full, or a run the kernel skipped): say so, don't guess.
            life.gap = true;
        }
        if (old, new) == (TcpState::SynRecv, TcpState::Established) {
            // Older kernels report the listener's tuple at LISTEN→SYN_RECV.
            life.local = sock.local;
            life.remote = sock.remote;
        }
        if let Some(Some(n)) = pending_synacks {
            life.synack_retransmits += n;
        }
        if let Some(r) = refusal
            && life.peer_reset.is_none()
        {
            life.peer_reset = Some(pending_to_sent(life, r));
        }
        let step = Step {
            offset_ns: life.offset(ts),
            old,
            new,
            context: sock.context,
        };
        push_step(life, step);
        life.state = Some(new);
        infer_role(life, old, new);
        if let (Some(how), Some(closer)) = (how, closer) {
            attribute_close(t, how, closer, old, unread);
        }
        let life = &mut t.life;
        // A closed life lingers for its late events; any other step ends that.
        let deadline = if new == TcpState::Close {
            life.end_ns = ts;
            if unread.is_some() {
                life.unread = unread;
            }
            t.handoff = matches!(old, TcpState::FinWait2 | TcpState::Closing);
            Some(ts.saturating_add(self.opts.linger_ns))
        } else {
            t.handoff |= new == TcpState::TimeWait;
            life.end_ns = life.last_ns;
            None
        };
        let was = std::mem::replace(&mut t.deadline, deadline);
        self.lives.reschedule(sock.skaddr, was, deadline);
    }

    /// Links a new server child to its listener (when exactly one matches)
    /// and to SYN/ACK retransmits of its request.
    fn adopt_child(&mut self, child: &mut SocketLife) {
        child.listener = Some(child.local);
        if let Some(r) = self.requests.remove(&(child.local, child.remote)) {
            child.synack_retransmits += r.retransmits;
        }
        let candidates: Vec<u64> = self
            .lives
            .listeners(child.local.port())
            .iter()
            .copied()
            .filter(|&sk| {
                self.lives.get(sk).is_some_and(|l| {
                    l.life.local.ip().is_unspecified() || l.life.local.ip() == child.local.ip()
                })
            })
            .collect();
        if let [sk] = candidates[..]
            && let Some(l) = self.lives.get_mut(sk)
        {
            l.life.children += 1;
            child.listener = Some(l.life.local);
            // The kernel's owner map hands the listener's owner to children;
            // fill it in when the child's records lack it.
            if child.owner.is_none() {
                child.owner = l.life.owner;
            }
        }
    }
}

/// Recorded event sequences (mirroring KERNEL-NOTES.md), shared by the
/// tracker, classifier and renderer tests.
#[cfg(test)]
pub(crate) mod fixtures;

#[cfg(test)]
mod tests;
