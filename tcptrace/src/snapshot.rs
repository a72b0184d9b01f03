//! What existed before tcptrace started: every TCP socket on the host (the
//! kernel's socket diagnostics, in every network namespace) with the
//! processes holding it (`/proc/<pid>/fd`). It gives services started long
//! before tcptrace their owners: listeners are seeded into the kernel's
//! listener map (accepted children inherit a real owner from their first
//! event), and other sockets are known by cookie until their first event.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use tcptrace_common::{COMM_LEN, ListenerKey, Task};

use crate::sockdiag::{self, DiagError, DiagSocket, Owner, state};

/// One socket open at start, with every process holding it.
#[derive(Clone, Debug)]
pub struct OpenSocket {
    pub socket: DiagSocket,
    /// The processes holding it, the one shown as owner first.
    pub holders: Vec<Holder>,
}

/// A process holding a socket open at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Raw, untrusted name (escape before printing).
    pub comm: Vec<u8>,
    pub ppid: u32,
    pub cgroup_id: u64,
}

impl Holder {
    pub fn task(&self) -> Task {
        let mut comm = [0u8; COMM_LEN];
        let n = self.comm.len().min(COMM_LEN - 1);
        comm[..n].copy_from_slice(&self.comm[..n]);
        Task {
            pid: self.pid,
            tgid: self.pid,
            cgroup_id: self.cgroup_id,
            comm,
        }
    }
}

/// The sockets open at start.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub sockets: Vec<OpenSocket>,
}

/// What the kernel program is seeded with.
#[derive(Clone, Debug, Default)]
pub struct Seeds {
    pub listeners: Vec<(ListenerKey, Task)>,
    /// By socket cookie.
    pub owners: Vec<(u64, Task)>,
}

impl Snapshot {
    /// Lists the host's TCP sockets and their holders (every namespace when
    /// tcptrace may enter them, else its own).
    pub fn take() -> Result<Snapshot, DiagError> {
        let sockets = sockdiag::tcp_sockets_reachable(sockdiag::HELD_STATES)?;
        let owners = sockdiag::socket_owners();
        Ok(Snapshot::from_parts(sockets, &owners))
    }

    pub fn from_parts(sockets: Vec<DiagSocket>, owners: &HashMap<u64, Vec<Owner>>) -> Snapshot {
        let mut cache: HashMap<u32, Holder> = HashMap::new();
        let sockets = sockets
            .into_iter()
            .map(|socket| {
                let mut holders: Vec<Holder> = Vec::new();
                let fds = owners.get(&socket.inode).map(Vec::as_slice).unwrap_or(&[]);
                for fd in fds {
                    if holders.iter().any(|h| h.pid == fd.pid) {
                        continue;
                    }
                    let holder = cache.entry(fd.pid).or_insert_with(|| holder(fd));
                    holders.push(holder.clone());
                }
                order_holders(&mut holders);
                OpenSocket { socket, holders }
            })
            .collect();
        Snapshot { sockets }
    }

    /// Listener and owner seeds for the kernel program. Where several
    /// processes hold one socket, `prefer` picks the one to seed (the one a
    /// process filter keeps, so that filters match any holder); otherwise
    /// the first holder: the one that created it.
    pub fn seeds(&self, prefer: impl Fn(&Holder) -> bool) -> Seeds {
        let mut seeds = Seeds::default();
        for open in &self.sockets {
            let Some(holder) = open
                .holders
                .iter()
                .find(|h| prefer(h))
                .or(open.holders.first())
            else {
                continue;
            };
            let s = &open.socket;
            if s.state == state::LISTEN {
                let key = listener_key(s);
                let task = holder.task();
                match seeds.listeners.iter_mut().find(|(k, _)| *k == key) {
                    // Another process's listener at the same address
                    // (SO_REUSEPORT): its children's owner is their
                    // acceptor, as the kernel program marks it (tgid 0).
                    Some((_, seeded)) if seeded.tgid != task.tgid => *seeded = Task::default(),
                    Some(_) => {}
                    None => seeds.listeners.push((key, task)),
                }
            } else if s.cookie != 0 {
                seeds.owners.push((s.cookie, holder.task()));
            }
        }
        seeds
    }
}

/// The kernel program's key for a listener: namespace, family, port and
/// bound address as the socket's own bytes (network order).
pub fn listener_key(s: &DiagSocket) -> ListenerKey {
    let mut addr = [0u8; 16];
    match s.src {
        IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => addr = a.octets(),
    }
    ListenerKey::new(
        u32::try_from(s.netns_inode).unwrap_or(0),
        s.family,
        s.sport,
        &addr,
    )
}

/// The holder that created the socket first: the one whose parent does not
/// hold it too (a pre-fork server's master before its workers), then by pid.
fn order_holders(holders: &mut [Holder]) {
    let pids: HashSet<u32> = holders.iter().map(|h| h.pid).collect();
    holders.sort_by_key(|h| (pids.contains(&h.ppid), h.pid));
}

fn holder(fd: &Owner) -> Holder {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", fd.pid)).unwrap_or_default();
    // "pid (comm) state ppid ...": the comm may hold spaces and parentheses.
    let ppid = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    Holder {
        pid: fd.pid,
        comm: fd.comm.as_bytes().to_vec(),
        ppid,
        cgroup_id: cgroup_id_of(fd.pid).unwrap_or(0),
    }
}

/// The cgroup v2 id of a process: the inode of its cgroup's directory.
fn cgroup_id_of(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    let root = crate::cli::cgroup2_root()?;
    let dir = root.join(path.trim_start_matches('/'));
    std::fs::metadata(dir).ok().map(|m| m.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(state: u8, src: &str, sport: u16, inode: u64, cookie: u64) -> DiagSocket {
        DiagSocket {
            family: if src.contains(':') { 10 } else { 2 },
            state,
            src: src.parse().unwrap(),
            sport,
            dst: if src.contains(':') { "::" } else { "0.0.0.0" }
                .parse()
                .unwrap(),
            dport: 0,
            inode,
            cookie,
            uid: 0,
            netns_inode: 4026531840,
            ifindex: 0,
            recv_queue: 0,
            send_queue: 0,
            drops: None,
        }
    }

    fn fd(pid: u32, comm: &str) -> Owner {
        Owner {
            pid,
            comm: comm.into(),
            fd: 3,
        }
    }

    #[test]
    fn listeners_and_sockets_become_seeds_with_their_creator_first() {
        let sockets = vec![
            diag(state::LISTEN, "127.0.0.1", 8080, 11, 101),
            diag(state::ESTABLISHED, "127.0.0.1", 8080, 12, 102),
            diag(state::TIME_WAIT, "127.0.0.1", 8080, 0, 103),
        ];
        let mut owners = HashMap::new();
        // Workers first in pid order do not matter: the master (whose
        // parent is not a holder) leads. Here the pids are not real
        // processes, so every ppid reads as 0: the order falls to pids.
        owners.insert(11, vec![fd(300, "worker"), fd(200, "master")]);
        owners.insert(12, vec![fd(300, "worker")]);
        let snap = Snapshot::from_parts(sockets, &owners);
        assert_eq!(snap.sockets[0].holders[0].pid, 200);
        assert_eq!(snap.sockets[0].holders.len(), 2);
        let seeds = snap.seeds(|_| false);
        assert_eq!(seeds.listeners.len(), 1);
        let (key, task) = seeds.listeners[0];
        assert_eq!((key.family, key.port, key.netns), (2, 8080, 4026531840));
        assert_eq!(key.addr[0].to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!((task.tgid, &task.comm[..7]), (200, &b"master\0"[..]));
        // The established socket by its cookie; the TIME_WAIT one has no
        // holder and is not seeded.
        assert_eq!(seeds.owners.len(), 1);
        assert_eq!((seeds.owners[0].0, seeds.owners[0].1.tgid), (102, 300));
        // A filter that keeps the worker seeds the worker.
        let seeds = snap.seeds(|h| h.comm == b"worker");
        assert_eq!(seeds.listeners[0].1.tgid, 300);
    }

    #[test]
    fn two_processes_listening_on_one_address_seed_a_shared_listener() {
        // SO_REUSEPORT: two sockets, one address, two processes.
        let sockets = vec![
            diag(state::LISTEN, "0.0.0.0", 8080, 11, 101),
            diag(state::LISTEN, "0.0.0.0", 8080, 12, 102),
        ];
        let mut owners = HashMap::new();
        owners.insert(11, vec![fd(300, "first")]);
        owners.insert(12, vec![fd(400, "second")]);
        let seeds = Snapshot::from_parts(sockets, &owners).seeds(|_| false);
        assert_eq!(seeds.listeners.len(), 1);
        assert_eq!(seeds.listeners[0].1, Task::default(), "tgid 0: shared");
    }

    #[test]
    fn an_ipv6_key_keeps_the_address_bytes_in_order() {
        let key = listener_key(&diag(state::LISTEN, "::1", 443, 1, 1));
        let bytes: Vec<u8> = key.addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(bytes, "::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
        assert_eq!((key.family, key.port), (10, 443));
    }
}
