//! Filters applied to raw kernel records in userspace, when a recording is
//! read: the same rules the kernel program applies live (see
//! `tcptrace-ebpf`'s `endpoints_pass` and `process_passes`), so that
//! `--read FILE --port 80` keeps what `--port 80` would have kept.

use std::collections::HashSet;

use tcptrace_common::{Event, Filter, Task, filter, flag, kind, more_flags};

use crate::decode::{Comm, Proc};

/// The user's filters, on records.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub filter: Filter,
    /// Process ids (tgids) kept when [`filter::PID`] is on.
    pub pids: HashSet<u32>,
}

impl EventFilter {
    /// The filters of a live trace, as the kernel program applies them
    /// (`--pid`'s flag is on whenever a process id is given).
    pub fn live(trace: &crate::loader::TraceOptions) -> EventFilter {
        let mut filter = trace.filter;
        if !trace.pids.is_empty() {
            filter.flags |= filter::PID;
        }
        EventFilter {
            filter,
            pids: trace.pids.iter().copied().collect(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.filter.flags != 0
    }

    /// Would the kernel program have submitted this record under these
    /// filters?
    pub fn passes(&self, e: &Event) -> bool {
        let f = &self.filter;
        match e.kind {
            // Exits are judged by the exiting task, signals by their target.
            kind::PROCESS_EXIT => self.task_matches(&e.context),
            kind::SIGNAL | kind::OOM_VICTIM => {
                f.flags & filter::PID == 0 || self.pids.contains(&(e.aux as u32))
            }
            // A bare destroy (recorded without filters: no tuple, no owner)
            // only ends a life the other records let through.
            kind::DESTROY_SOCK if e.family == 0 => true,
            _ => self.endpoints_pass(e) && self.process_passes(e),
        }
    }

    fn task_matches(&self, task: &Task) -> bool {
        let f = &self.filter;
        (f.flags & filter::PID == 0 || self.pids.contains(&task.tgid))
            && (f.flags & filter::COMM == 0 || task.comm == f.comm)
            && (f.flags & filter::CGROUP == 0 || task.cgroup_id == f.cgroup_id)
    }

    fn endpoints_pass(&self, e: &Event) -> bool {
        let f = &self.filter;
        let ports = |local: u16, remote: u16| {
            (f.flags & filter::LPORT == 0 || local == f.lport)
                && (f.flags & filter::RPORT == 0 || remote == f.rport)
        };
        // A dropped segment's source is local when it was sent, its
        // destination when it was received: either will do.
        let either_way = e.kind == kind::DROP && ports(e.dport, e.sport);
        (f.flags & filter::NETNS == 0 || e.netns == f.netns)
            && (f.flags & filter::FAMILY == 0 || e.family == f.family)
            && (f.flags & filter::PORT == 0 || e.sport == f.port || e.dport == f.port)
            && (ports(e.sport, e.dport) || either_way)
    }

    /// The socket's owner when known; otherwise the task that caused the
    /// event, unless it ran in softirq (a bystander).
    fn process_passes(&self, e: &Event) -> bool {
        if self.filter.flags & (filter::PID | filter::COMM | filter::CGROUP) == 0 {
            return true;
        }
        if e.flags & flag::OWNER_KNOWN != 0 {
            return self.task_matches(&e.owner);
        }
        if e.more_flags & more_flags::SHARED_LISTENER != 0 {
            // Judged by its acceptor: see `owner_passes`.
            return true;
        }
        e.flags & flag::SOFTIRQ == 0 && self.task_matches(&e.context)
    }

    /// A child of an address several processes listen on passes the
    /// kernel's process filters until one of them accepts it: its life is
    /// kept only if the process that accepted it passes them. (With
    /// `--follow` the kernel's list of processes is the authority: forks
    /// it added are not known here, so such lives are kept.)
    pub fn owner_passes(&self, owner: Option<&Proc>) -> bool {
        let f = &self.filter;
        if f.flags & (filter::PID | filter::COMM | filter::CGROUP) == 0
            || f.flags & filter::FOLLOW != 0
        {
            return true;
        }
        owner.is_some_and(|p| {
            (f.flags & filter::PID == 0 || self.pids.contains(&p.tgid))
                && (f.flags & filter::COMM == 0 || p.comm == Comm::from_raw(&f.comm))
                && (f.flags & filter::CGROUP == 0 || p.cgroup_id == f.cgroup_id)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcptrace_common::AF_INET;

    fn event(sport: u16, dport: u16, owner_tgid: Option<u32>) -> Event {
        let mut e = Event {
            kind: kind::STATE,
            family: AF_INET,
            sport,
            dport,
            ..Event::default()
        };
        if let Some(tgid) = owner_tgid {
            e.owner.tgid = tgid;
            e.flags |= flag::OWNER_KNOWN;
        }
        e
    }

    #[test]
    fn ports_and_owners_are_judged_as_the_kernel_judges_them() {
        let mut f = EventFilter::default();
        f.filter.flags = filter::PORT | filter::PID;
        f.filter.port = 80;
        f.pids.insert(42);
        assert!(f.passes(&event(80, 5000, Some(42))));
        assert!(f.passes(&event(5000, 80, Some(42))));
        assert!(!f.passes(&event(81, 5000, Some(42))), "port");
        assert!(!f.passes(&event(80, 5000, Some(7))), "owner");
        // No owner: the on-CPU task decides, unless it is softirq's.
        let mut e = event(80, 5000, None);
        e.context.tgid = 42;
        assert!(f.passes(&e));
        e.flags |= flag::SOFTIRQ;
        assert!(!f.passes(&e));
    }

    #[test]
    fn a_dropped_segments_ports_are_judged_either_way_round() {
        let mut f = EventFilter::default();
        f.filter.flags = filter::LPORT | filter::RPORT;
        (f.filter.lport, f.filter.rport) = (8099, 45126);
        let mut incoming = event(45126, 8099, None);
        assert!(
            !f.passes(&incoming),
            "a socket's own ends are never swapped"
        );
        incoming.kind = kind::DROP;
        assert!(f.passes(&incoming));
        assert!(f.passes(&Event {
            kind: kind::DROP,
            ..event(8099, 45126, None)
        }));
        assert!(!f.passes(&Event {
            kind: kind::DROP,
            ..event(8099, 1, None)
        }));
    }

    #[test]
    fn exits_are_judged_by_their_task_and_signals_by_their_target() {
        let mut f = EventFilter::default();
        f.filter.flags = filter::PID;
        f.pids.insert(42);
        let mut exit = Event {
            kind: kind::PROCESS_EXIT,
            ..Event::default()
        };
        exit.context.tgid = 42;
        assert!(f.passes(&exit));
        exit.context.tgid = 43;
        assert!(!f.passes(&exit));
        let signal = Event {
            kind: kind::SIGNAL,
            aux: 42,
            ..Event::default()
        };
        assert!(f.passes(&signal));
        assert!(!EventFilter::default().is_active());
    }

    #[test]
    fn a_bare_destroy_passes_and_a_shared_listeners_child_waits_for_its_acceptor() {
        let mut f = EventFilter::default();
        f.filter.flags = filter::PORT | filter::PID;
        f.filter.port = 80;
        f.pids.insert(42);
        // Recorded without filters: no tuple, no owner. It only ends a life
        // the other records let through.
        let bare = Event {
            kind: kind::DESTROY_SOCK,
            ..Event::default()
        };
        assert!(f.passes(&bare));
        // A child of an SO_REUSEPORT address, owner unknown: let through,
        // and judged by its acceptor once one takes it.
        let mut child = event(80, 5000, None);
        child.flags |= flag::SOFTIRQ;
        assert!(!f.passes(&child), "an unowned socket in softirq");
        child.more_flags |= more_flags::SHARED_LISTENER;
        assert!(f.passes(&child));
        let acceptor = |tgid| Proc {
            pid: tgid,
            tgid,
            comm: "worker".into(),
            cgroup_id: 1,
        };
        assert!(f.owner_passes(Some(&acceptor(42))));
        assert!(!f.owner_passes(Some(&acceptor(43))));
        assert!(!f.owner_passes(None), "never accepted");
        f.filter.flags |= filter::FOLLOW;
        assert!(
            f.owner_passes(Some(&acceptor(43))),
            "--follow: the kernel decides"
        );
    }
}
