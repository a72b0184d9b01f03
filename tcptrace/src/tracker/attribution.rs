//! Attribution: which process closed a socket, and how that process ended
//! (its exit code, the signal that killed it and who sent the signal).
//!
//! Exits and fatal signals are remembered briefly (bounded tables, by
//! event time) so that a close made during an exit can be tied to it.

use super::{
    AUX_CAP, AUX_MAX_AGE_NS, Tracked,
    tables::{FastHash, RecentMap},
};
use crate::{
    decode::{Proc, TcpState},
    model::{ExitInfo, SignalInfo, SocketLife},
};

/// Who closed a socket, before it is confirmed.
#[derive(Clone, Debug)]
pub(super) struct Closer {
    pub(super) by: Proc,
    pub(super) exit: Option<ExitInfo>,
}

#[derive(Clone, Debug)]
struct ExitRecord {
    ts_ns: u64,
    task: Proc,
    exit_code: Option<i32>,
}

#[derive(Clone, Debug)]
struct SignalRecord {
    ts_ns: u64,
    sig: u32,
    sender: Proc,
}

/// Recently exited tasks and fatal signals, to say why a process closed.
pub(super) struct ProcessTable {
    /// By pid.
    exits: RecentMap<u32, ExitRecord, FastHash>,
    /// By tgid, for exits that ended the whole thread group.
    group_exits: RecentMap<u32, ExitRecord, FastHash>,
    /// Latest fatal signal by target pid (a kill(2) targets the tgid).
    signals: RecentMap<u32, SignalRecord, FastHash>,
    /// Processes (tgids) the OOM killer chose, and when.
    oom_victims: RecentMap<u32, u64, FastHash>,
}

impl ProcessTable {
    pub(super) fn new() -> Self {
        ProcessTable {
            exits: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            group_exits: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            signals: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
            oom_victims: RecentMap::new(AUX_CAP, Some(AUX_MAX_AGE_NS)),
        }
    }

    pub(super) fn on_oom_victim(&mut self, ts_ns: u64, victim_pid: u32) {
        self.oom_victims.insert(victim_pid, ts_ns, ts_ns);
    }

    pub(super) fn on_exit(
        &mut self,
        ts_ns: u64,
        task: &Proc,
        exit_code: Option<i32>,
        group_dead: bool,
    ) {
        let rec = ExitRecord {
            ts_ns,
            task: *task,
            exit_code,
        };
        if group_dead {
            self.group_exits.insert(task.tgid, ts_ns, rec.clone());
        }
        self.exits.insert(task.pid, ts_ns, rec);
    }

    pub(super) fn on_signal(&mut self, ts_ns: u64, sig: u32, target_pid: u32, sender: &Proc) {
        let rec = SignalRecord {
            ts_ns,
            sig,
            sender: *sender,
        };
        self.signals.insert(target_pid, ts_ns, rec);
    }

    /// Returns how many entries went.
    pub(super) fn prune(&mut self, now_ns: u64) -> usize {
        self.exits.prune(now_ns)
            + self.group_exits.prune(now_ns)
            + self.signals.prune(now_ns)
            + self.oom_victims.prune(now_ns)
    }

    /// How `p` ended, if a close it made at `ts_ns` was part of its exit.
    pub(super) fn exit_of(&self, p: &Proc, ts_ns: u64) -> Option<ExitInfo> {
        let before = |e: &&ExitRecord| e.ts_ns <= ts_ns && e.task.tgid == p.tgid;
        let exit = self
            .exits
            .get(&p.pid, ts_ns)
            .filter(before)
            .or_else(|| self.group_exits.get(&p.tgid, ts_ns).filter(before))?;
        let recorded = self
            .signals
            .get(&p.pid, ts_ns)
            .or_else(|| self.signals.get(&p.tgid, ts_ns))
            .filter(|s| s.ts_ns <= ts_ns);
        let killed_by = exit
            .exit_code
            .map(|c| (c & 0x7f) as u32)
            .filter(|&s| s != 0);
        let signal = match (killed_by, recorded) {
            (Some(sig), Some(r)) if r.sig == sig => Some((sig, Some(r.sender), true)),
            (Some(sig), _) => Some((sig, None, true)),
            // No exit code (no BTF): the signal may have been handled.
            (None, Some(r)) if exit.exit_code.is_none() => Some((r.sig, Some(r.sender), false)),
            (None, _) => None,
        };
        // The OOM killer marks its victim right after it generates the
        // SIGKILL, before the victim exits.
        let oom_kill = self
            .oom_victims
            .get(&p.tgid, ts_ns)
            .is_some_and(|&at| at <= ts_ns);
        Some(ExitInfo {
            pid: exit.task.pid,
            tgid: exit.task.tgid,
            comm: exit.task.comm,
            exit_code: exit.exit_code,
            status: exit
                .exit_code
                .filter(|c| c & 0x7f == 0)
                .map(|c| (c >> 8) & 0xff),
            core_dumped: killed_by.is_some() && exit.exit_code.is_some_and(|c| c & 0x80 != 0),
            signal: signal.map(|(number, sender, killed)| SignalInfo {
                number,
                name: signal_name(number),
                sender,
                killed,
                oom_kill: oom_kill && number == libc::SIGKILL as u32,
            }),
        })
    }
}

/// `SIGKILL` for 9; `SIGRTMIN+n` for real-time signals; `signal N` otherwise.
pub fn signal_name(sig: u32) -> String {
    const NAMES: &[(i32, &str)] = &[
        (libc::SIGHUP, "SIGHUP"),
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        (libc::SIGILL, "SIGILL"),
        (libc::SIGTRAP, "SIGTRAP"),
        (libc::SIGABRT, "SIGABRT"),
        (libc::SIGBUS, "SIGBUS"),
        (libc::SIGFPE, "SIGFPE"),
        (libc::SIGKILL, "SIGKILL"),
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGSEGV, "SIGSEGV"),
        (libc::SIGUSR2, "SIGUSR2"),
        (libc::SIGPIPE, "SIGPIPE"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGSTKFLT, "SIGSTKFLT"),
        (libc::SIGCHLD, "SIGCHLD"),
        (libc::SIGCONT, "SIGCONT"),
        (libc::SIGSTOP, "SIGSTOP"),
        (libc::SIGTSTP, "SIGTSTP"),
        (libc::SIGTTIN, "SIGTTIN"),
        (libc::SIGTTOU, "SIGTTOU"),
        (libc::SIGURG, "SIGURG"),
        (libc::SIGXCPU, "SIGXCPU"),
        (libc::SIGXFSZ, "SIGXFSZ"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGWINCH, "SIGWINCH"),
        (libc::SIGIO, "SIGIO"),
        (libc::SIGPWR, "SIGPWR"),
        (libc::SIGSYS, "SIGSYS"),
    ];
    // Real-time signals named as `kill -l` does: glibc keeps 32 and 33 for
    // itself, so its SIGRTMIN is 34; the upper half counts down from SIGRTMAX.
    const RTMIN: u32 = 34;
    const RTMAX: u32 = 64;
    const RTMID: u32 = (RTMIN + RTMAX) / 2;
    match NAMES.iter().find(|(n, _)| i64::from(*n) == i64::from(sig)) {
        Some((_, name)) => (*name).to_owned(),
        None if sig == RTMIN => "SIGRTMIN".to_owned(),
        None if sig == RTMAX => "SIGRTMAX".to_owned(),
        None if sig > RTMIN && sig <= RTMID => format!("SIGRTMIN+{}", sig - RTMIN),
        None if sig > RTMID && sig < RTMAX => format!("SIGRTMAX-{}", RTMAX - sig),
        None => format!("signal {sig}"),
    }
}

/// Settles who closed `t`'s life by the transition from `old`, made in the
/// context of `closer`'s process: now, or once the RST of an abortive close
/// is seen.
pub(super) fn attribute_close(
    t: &mut Tracked,
    how: CloseHow,
    closer: Closer,
    old: TcpState,
    unread: Option<u32>,
) {
    let life = &mut t.life;
    if life.closed_by.is_some() || !life.resets_received.is_empty() {
        // Closed already, or the peer's RST closed it.
        return;
    }
    match how {
        CloseHow::Direct => set_closer(life, closer),
        // tcp_close() with unread data sends an RST itself; only a
        // peer's RST (excluded above) closes these states otherwise.
        CloseHow::Abortive
            if unread.is_some_and(|n| n > 0)
                && matches!(old, TcpState::Established | TcpState::CloseWait) =>
        {
            set_closer(life, closer)
        }
        CloseHow::Abortive => t.abort_candidate = Some(closer),
    }
}

pub(super) fn set_closer(life: &mut SocketLife, closer: Closer) {
    life.closed_by = Some(closer.by);
    life.exit = closer.exit;
}

/// What a transition made in process context says about who closed the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum CloseHow {
    /// Only a close()/shutdown() (or an exit) makes this transition.
    Direct,
    /// X→CLOSE: an abortive close by the process only if an RST follows
    /// (on loopback a peer's reaction can run in the sender's context).
    Abortive,
}

pub(super) fn closing(old: TcpState, new: TcpState) -> Option<CloseHow> {
    use TcpState::*;
    match (old, new) {
        (Established | SynRecv, FinWait1) | (CloseWait, LastAck) | (Listen, Close) => {
            Some(CloseHow::Direct)
        }
        // connect() abandoned: no RST is sent from SYN_SENT.
        (SynSent, Close) => Some(CloseHow::Direct),
        (Established | CloseWait | SynRecv | FinWait1 | FinWait2, Close) => {
            Some(CloseHow::Abortive)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Tracker, TrackerOptions, fixtures::*};
    use super::*;
    use crate::decode::Record;

    #[test]
    fn abortive_close_is_attributed_only_once_its_rst_is_sent() {
        let lives = run(&linger0());
        let s = life_of(&lives, SERVER_SK);
        assert_eq!(s.closed_by, Some(nginx()));
        assert_eq!(s.unread, Some(0));
        assert_eq!(s.resets_sent.len(), 1);
        assert_eq!(s.resets_sent[0].reason.as_ref().map(|r| r.code), Some(14));
        assert_eq!(s.resets_sent[0].offset_ns, us(2003) - us(1064));
        assert!(s.destroyed && !s.time_wait);
        let c = life_of(&lives, CLIENT_SK);
        assert_eq!(c.resets_received[0].state, Some(TcpState::Established));
        assert_eq!(c.closed_by, None);

        // Without the RST the X→CLOSE in process context proves nothing.
        let no_rst: Vec<Record> = linger0()
            .into_iter()
            .filter(|r| !matches!(r, Record::SendReset { .. }))
            .collect();
        assert_eq!(life_of(&run(&no_rst), SERVER_SK).closed_by, None);
    }

    #[test]
    fn a_close_after_a_received_reset_is_the_peers_doing() {
        // On loopback the client's CLOSE may run in nginx's context.
        let mut recs = linger0();
        let c = client();
        recs[7] = c.by(2002, &nginx()).close(1, 0);
        let c = life_of(&run(&recs), CLIENT_SK);
        assert_eq!(c.closed_by, None);
    }

    #[test]
    fn unread_data_is_kept_and_attributes_the_close() {
        let lives = run(&unread_close());
        let s = life_of(&lives, SERVER_SK);
        assert_eq!(s.unread, Some(13));
        assert_eq!(s.closed_by, Some(nginx()));
        assert_eq!(
            s.resets_sent[0]
                .reason
                .as_ref()
                .and_then(|r| r.name.as_deref()),
            Some("TCP_ABORT_ON_CLOSE")
        );
    }

    #[test]
    fn sigkill_attributes_the_close_to_the_exit_and_the_killer() {
        let s = life_of(&run(&killed()), SERVER_SK);
        assert_eq!(s.closed_by, Some(nginx()));
        let exit = s.exit.unwrap();
        assert_eq!((exit.pid, exit.comm.as_str()), (4311, "nginx"));
        assert_eq!(
            (exit.exit_code, exit.status, exit.core_dumped),
            (Some(9), None, false)
        );
        let sig = exit.signal.unwrap();
        assert_eq!((sig.number, sig.name.as_str()), (9, "SIGKILL"));
        assert_eq!(sig.sender, Some(killer()));
        assert_eq!(s.unread, Some(5));
    }

    #[test]
    fn the_oom_killers_victim_is_told_from_a_process_killed_by_another() {
        let exit = life_of(&run(&oom_killed()), SERVER_SK).exit.unwrap();
        let sig = exit.signal.unwrap();
        assert_eq!(
            (sig.name.as_str(), sig.killed, sig.oom_kill),
            ("SIGKILL", true, true)
        );
        // Another process's OOM kill says nothing about nginx's.
        let mut other = oom_killed();
        other[6] = Record::OomVictim {
            ts_ns: us(1991),
            victim_pid: 9999,
            context: killer(),
        };
        let sig = life_of(&run(&other), SERVER_SK)
            .exit
            .unwrap()
            .signal
            .unwrap();
        assert!(!sig.oom_kill);
        assert!(
            !life_of(&run(&killed()), SERVER_SK)
                .exit
                .unwrap()
                .signal
                .unwrap()
                .oom_kill
        );
    }

    #[test]
    fn normal_exit_keeps_the_status() {
        let s = life_of(&run(&exit_code_3()), SERVER_SK);
        assert_eq!(s.closed_by, Some(nginx()));
        let exit = s.exit.unwrap();
        assert_eq!((exit.exit_code, exit.status), (Some(0x300), Some(3)));
        assert_eq!(exit.signal, None);
        assert!(s.time_wait);
        // python3 closing later is not nginx's exit.
        let c = life_of(&run(&exit_code_3()), CLIENT_SK);
        assert_eq!((c.closed_by, c.exit), (Some(python()), None));
    }

    #[test]
    fn an_exit_long_ago_or_of_another_task_does_not_count() {
        let (c, py) = (client(), python());
        let old_exit = vec![
            exit(0, &py, 0),
            c.local("127.0.0.1:0").by(1000, &py).st(7, 2),
            c.by(1062, &py).st(2, 1),
            // 11 s later, beyond AUX_MAX_AGE_NS.
            c.by(11_001_000, &py).st(1, 4),
        ];
        assert_eq!(life_of(&run(&old_exit), CLIENT_SK).exit, None);
        let other = vec![
            exit(1500, &nginx(), 9),
            c.local("127.0.0.1:0").by(1000, &py).st(7, 2),
            c.by(1062, &py).st(2, 1),
            c.by(2000, &py).st(1, 4),
        ];
        assert_eq!(life_of(&run(&other), CLIENT_SK).exit, None);
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(6), "SIGABRT");
        assert_eq!(signal_name(34), "SIGRTMIN");
        assert_eq!(signal_name(36), "SIGRTMIN+2");
        assert_eq!(signal_name(49), "SIGRTMIN+15");
        assert_eq!(signal_name(50), "SIGRTMAX-14");
        assert_eq!(signal_name(64), "SIGRTMAX");
        assert_eq!(signal_name(32), "signal 32");
        assert_eq!(signal_name(99), "signal 99");
    }

    #[test]
    fn unread_data_attributes_an_abortive_close_even_without_its_rst() {
        let no_rst: Vec<Record> = unread_close()
            .into_iter()
            .filter(|r| !matches!(r, Record::SendReset { .. }))
            .collect();
        assert_eq!(life_of(&run(&no_rst), SERVER_SK).closed_by, Some(nginx()));
        // FIN_WAIT2→CLOSE (the peer's FIN, delivered in the peer's context on
        // loopback) proves nothing, unread data or not.
        let c = client();
        let lives = run(&[
            c.by(0, &python()).st(1, 4),
            c.irq(10).st(4, 5),
            c.by(20, &nginx()).close(5, 7),
        ]);
        assert_eq!(
            lives[0].closed_by,
            Some(python()),
            "from ESTABLISHED→FIN_WAIT1, not nginx"
        );
        assert!(lives[0].time_wait);
    }

    #[test]
    fn a_thread_killed_through_its_process_finds_the_signal_by_tgid() {
        let worker = Proc {
            pid: 4312,
            ..nginx()
        };
        let (s, c) = (server(), client());
        let mut recs = handshake();
        recs.extend([
            signal(1990, 9, 4311, &killer()),
            exit(2010, &worker, 9),
            s.by(2020, &worker).close(1, 0),
            c.irq(2021).receive_reset(),
            c.irq(2022).close(1, 0),
            s.by(2023, &worker)
                .send_reset(Some(7), Some((14, "TCP_STATE"))),
        ]);
        let life = life_of(&run(&recs), SERVER_SK);
        assert_eq!(life.closed_by, Some(worker));
        let exit = life.exit.unwrap();
        assert_eq!((exit.pid, exit.tgid), (4312, 4311));
        let sig = exit.signal.unwrap();
        assert_eq!((sig.name.as_str(), sig.killed), ("SIGKILL", true));
        assert_eq!(sig.sender, Some(killer()));
    }

    #[test]
    fn without_an_exit_code_a_seen_signal_is_reported_but_not_as_the_killer() {
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
        ]);
        let exit = life_of(&run(&recs), SERVER_SK).exit.unwrap();
        assert_eq!((exit.exit_code, exit.status), (None, None));
        let sig = exit.signal.unwrap();
        assert_eq!((sig.number, sig.killed), (15, false));
    }

    #[test]
    fn undelivered_signals_and_signals_to_others_are_ignored() {
        let (s, ng) = (server(), nginx());
        let mut recs = handshake();
        recs.extend([
            Record::Signal {
                ts_ns: us(1980),
                sig: 9,
                target_pid: 4311,
                sender: killer(),
                delivered: false,
            },
            signal(1985, 9, 9999, &killer()),
            exit(2000, &ng, 9),
            s.by(2010, &ng).st(1, 4),
        ]);
        let sig = life_of(&run(&recs), SERVER_SK)
            .exit
            .unwrap()
            .signal
            .unwrap();
        assert_eq!((sig.number, sig.sender, sig.killed), (9, None, true));
    }

    #[test]
    fn expire_prunes_the_process_tables() {
        let mut t = Tracker::new(TrackerOptions::default());
        t.observe(&exit(0, &nginx(), 0));
        t.observe(&signal(0, 9, 1, &killer()));
        assert_eq!((t.procs.exits.len(), t.procs.signals.len()), (1, 1));
        t.expire(us(0) + AUX_MAX_AGE_NS + 1);
        assert!(
            t.procs.exits.is_empty()
                && t.procs.group_exits.is_empty()
                && t.procs.signals.is_empty()
        );
    }
}
