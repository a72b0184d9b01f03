//! Who owns each socket, kept in userspace: the first stage after the ring.
//!
//! Without process filters the kernel program keeps no owner maps: an LRU
//! hash update at every connect, listen and accept and a lookup at every
//! event cost about 180 ns per state change and 600 ns per accepted socket
//! in the churn (cross-CPU lock and cache traffic on the maps), paid by
//! the traced host. Here they cost one hash lookup on the reader's thread.
//! The rules are the kernel program's (`tcptrace-ebpf/src/owners.rs`),
//! applied to the raw records in ring order, so that every later stage (and
//! a recording) sees records exactly as if the kernel had filled them in:
//!
//! - connect() and listen() run in the caller's context: it owns the socket;
//! - a listener's child belongs to the owner of the listener bound to the
//!   address the SYN came to, else to the wildcard one; when several
//!   processes listen on one address (SO_REUSEPORT) the child is marked
//!   [`more_flags::SHARED_LISTENER`] until one accepts it;
//! - the process that accepts a socket owns it from then on;
//! - sockets open before tcptrace started get the owner the start-up
//!   snapshot found, by socket cookie, at their first event.
//!
//! With process filters on, the kernel must know owners to filter, keeps
//! its maps and fills records in; this stage is then not used.

use std::collections::HashMap;

use hashlink::LruCache;
use tcptrace_common::{Event, ListenerKey, Task, flag, kind, more_flags, tcp_state};

use crate::snapshot::Seeds;

/// As many sockets as the kernel's owner map held.
const MAX_OWNERS: usize = 65536;
/// As many listeners as the kernel's listener map held.
const MAX_LISTENERS: usize = 8192;

type Hasher = foldhash::fast::FixedState;

/// The owner maps, fed every raw record in order.
pub struct Owners {
    /// Socket address → owner; tgid 0: a child of a shared listener.
    by_socket: LruCache<u64, Task, Hasher>,
    /// Listener address → owner; tgid 0: several processes listen there.
    listeners: LruCache<ListenerKey, Task, Hasher>,
    /// Socket cookie → owner, for sockets open at start; taken at first use.
    snapshot: HashMap<u64, Task, Hasher>,
}

impl Owners {
    pub fn new(seeds: Seeds) -> Owners {
        let mut listeners = LruCache::with_hasher(MAX_LISTENERS, Hasher::default());
        for (key, task) in seeds.listeners {
            listeners.insert(key, task);
        }
        let mut snapshot = HashMap::with_hasher(Hasher::default());
        snapshot.extend(seeds.owners);
        Owners {
            by_socket: LruCache::with_hasher(MAX_OWNERS, Hasher::default()),
            listeners,
            snapshot,
        }
    }

    /// Keeps the maps current with `event` and fills in its owner.
    pub fn apply(&mut self, event: &mut Event) {
        match event.kind {
            kind::STATE => {
                self.track(event);
                self.attach(event);
            }
            // The kernel named the acceptor as the owner already.
            kind::ACCEPT if event.flags & flag::OWNER_KNOWN != 0 => {
                self.by_socket.insert(event.skaddr, event.owner);
            }
            kind::SEND_RESET
            | kind::RECEIVE_RESET
            | kind::RETRANSMIT_SKB
            | kind::RETRANSMIT_SYNACK
            | kind::ERROR_REPORT => self.attach(event),
            kind::DROP => {
                // The socket that received it, else the one that sent it.
                let sk = if event.skaddr != 0 {
                    event.skaddr
                } else {
                    event.aux
                };
                if sk != 0
                    && let Some(owner) = self.by_socket.get(&sk)
                    && owner.tgid != 0
                {
                    event.owner = *owner;
                    event.flags |= flag::OWNER_KNOWN;
                }
            }
            // The socket is gone and its address free for the next one,
            // which must not inherit this owner if its start was missed
            // (a loss): forgotten here, not when the LRU gets round to it.
            // A destroy without filters is bare: its life knows the rest.
            kind::DESTROY_SOCK => {
                self.by_socket.remove(&event.skaddr);
            }
            // Exits and signals are about processes.
            _ => {}
        }
    }

    fn track(&mut self, event: &Event) {
        let (old, new) = (event.oldstate, event.newstate);
        let process_context = event.flags & flag::SOFTIRQ == 0;
        if old == tcp_state::CLOSE
            && (new == tcp_state::SYN_SENT || new == tcp_state::LISTEN)
            && process_context
        {
            self.by_socket.insert(event.skaddr, event.context);
            if new == tcp_state::LISTEN {
                let key = listener_key(event, false);
                let shared = self
                    .listeners
                    .peek(&key)
                    .is_some_and(|other| other.tgid != event.context.tgid);
                let owner = if shared {
                    Task::default()
                } else {
                    event.context
                };
                self.listeners.insert(key, owner);
            }
        } else if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
            let owner = self
                .listeners
                .get(&listener_key(event, false))
                .copied()
                .or_else(|| self.listeners.get(&listener_key(event, true)).copied());
            match owner {
                Some(owner) => {
                    self.by_socket.insert(event.skaddr, owner);
                }
                None => {
                    // Never misattribute: an earlier socket at this address
                    // left its owner behind.
                    self.by_socket.remove(&event.skaddr);
                }
            }
        } else if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
            self.listeners.remove(&listener_key(event, false));
        }
    }

    fn attach(&mut self, event: &mut Event) {
        if let Some(owner) = self.by_socket.get(&event.skaddr) {
            if owner.tgid == 0 {
                event.more_flags |= more_flags::SHARED_LISTENER;
            } else {
                event.owner = *owner;
                event.flags |= flag::OWNER_KNOWN;
            }
            return;
        }
        // A socket older than tcptrace: known by its cookie, if at all.
        if event.aux != 0
            && let Some(owner) = self.snapshot.remove(&event.aux)
        {
            event.owner = owner;
            event.flags |= flag::OWNER_KNOWN;
            self.by_socket.insert(event.skaddr, owner);
        }
    }
}

/// A listener's key: the event's namespace, family, local port and local
/// address (`wildcard`: the any-address bind instead), as the kernel and
/// the snapshot's seeds build it (address bytes in network order).
fn listener_key(event: &Event, wildcard: bool) -> ListenerKey {
    let addr = if wildcard { [0; 16] } else { event.saddr };
    ListenerKey::new(event.netns, event.family, event.sport, &addr)
}

#[cfg(test)]
mod tests;
