//! Who owns each socket: the owner map kept current at connect, listen
//! and a listener's children, and copied into each event. Runs before the
//! filters, so that ownership is known even for sockets whose early events
//! were filtered out.
//!
//! Only under process filters, which judge sockets by their owner: without
//! them userspace applies the same rules to the records (tcptrace's
//! `owners.rs`), and the kernel pays for no map update or lookup per event
//! (measured: about 180 ns per state change, 600 per accepted socket, most
//! of it cross-CPU traffic on the maps' locks and buckets).

use core::{
    mem::{MaybeUninit, size_of},
    ptr::addr_of_mut,
};

use tcptrace_common::{Event, ListenerKey, Task, flag, more_flags, tcp_state};

use crate::{LISTENERS, OWNERS, SNAPSHOT_OWNERS, cgroup_id, config, zero8, zero16};

#[inline(always)]
pub(crate) fn attach_owner(event: &mut Event) {
    if !config().filter.judges_owners() {
        return;
    }
    // A hash lookup: the verifier turns it into a direct call, no retpoline.
    // SAFETY: read-only lookup; the value is copied out at once.
    if let Some(owner) = unsafe { OWNERS.get(event.skaddr) } {
        if owner.tgid == 0 {
            // tgid 0: a child of an address several processes listen on
            // (see track_owner), not accepted yet.
            event.more_flags |= more_flags::SHARED_LISTENER;
            return;
        }
        copy_task(owner, &mut event.owner);
        event.flags |= flag::OWNER_KNOWN;
        return;
    }
    // A socket older than tcptrace: the start-up snapshot may know it by
    // its cookie (new sockets have none, so they cost no second lookup).
    if event.aux == 0 {
        return;
    }
    // SAFETY: read-only lookup; the value is copied out at once.
    if let Some(owner) = unsafe { SNAPSHOT_OWNERS.get(event.aux) } {
        copy_task(owner, &mut event.owner);
        event.flags |= flag::OWNER_KNOWN;
        let _ = OWNERS.insert(event.skaddr, event.owner, 0);
        let _ = SNAPSHOT_OWNERS.remove(event.aux);
    }
}

/// Copies a [`Task`] as four 8-byte words: a struct assignment from a map
/// value can compile to a `memmove` call, a byte loop.
#[inline(always)]
pub(crate) fn copy_task(src: &Task, dst: &mut Task) {
    let from = core::ptr::from_ref(src).cast::<u64>();
    let to = core::ptr::from_mut(dst).cast::<u64>();
    for i in 0..size_of::<Task>() / 8 {
        // SAFETY: both are whole, 8-byte-aligned Tasks (32 bytes).
        unsafe { to.add(i).write_volatile(from.add(i).read()) };
    }
}

/// The key of a listener at `event`'s namespace, family, local port and
/// local address (`wildcard`: the any-address bind instead). Built with
/// volatile word stores: LLVM merges plain zero stores into a memset call.
#[inline(always)]
fn listener_key<'a>(
    slot: &'a mut MaybeUninit<ListenerKey>,
    event: &Event,
    wildcard: bool,
) -> &'a ListenerKey {
    let k = slot.as_mut_ptr();
    // SAFETY: every field of the #[repr(C)] key (no padding) is written
    // before assume_init; Event's address arrays are 8-byte aligned.
    unsafe {
        addr_of_mut!((*k).netns).write(event.netns);
        addr_of_mut!((*k).family).write(event.family);
        addr_of_mut!((*k).port).write(event.sport);
        let addr = addr_of_mut!((*k).addr).cast::<u64>();
        let from = core::ptr::from_ref(&event.saddr).cast::<u64>();
        for i in 0..2 {
            addr.add(i)
                .write_volatile(if wildcard { 0 } else { from.add(i).read() });
        }
        slot.assume_init_ref()
    }
}

/// Keeps the owner maps current; runs before filtering so that ownership is
/// known even for sockets whose early events were filtered out.
#[inline(always)]
pub(crate) fn track_owner(event: &mut Event) {
    let (old, new) = (event.oldstate, event.newstate);
    let process_context = event.flags & flag::SOFTIRQ == 0;
    let opens = old == tcp_state::CLOSE
        && (new == tcp_state::SYN_SENT || new == tcp_state::LISTEN)
        && process_context;
    if opens {
        // connect() and listen() run in the caller's context, the owner
        // wherever owners are kept: its cgroup names its unit.
        event.context.cgroup_id = cgroup_id();
    }
    if !config().filter.judges_owners() {
        return;
    }
    if opens {
        let _ = OWNERS.insert(event.skaddr, event.context, 0);
        if new == tcp_state::LISTEN {
            // Keyed by its bound address: 0.0.0.0/[::] for a wildcard.
            let mut slot = MaybeUninit::uninit();
            let key = listener_key(&mut slot, event, false);
            // SAFETY: read-only lookup of a plain value.
            let shared =
                unsafe { LISTENERS.get(key) }.is_some_and(|other| other.tgid != event.context.tgid);
            // A second process listening on the same address (SO_REUSEPORT):
            // the kernel will pick between them for each connection.
            let mut owner = MaybeUninit::<Task>::uninit();
            let o = owner.as_mut_ptr();
            // SAFETY: every word of the 32-byte Task is written before use.
            let owner = unsafe {
                if shared {
                    // All zero (tgid 0): "several processes".
                    zero8(addr_of_mut!((*o).pid).cast());
                    zero8(addr_of_mut!((*o).cgroup_id));
                    zero16(addr_of_mut!((*o).comm));
                } else {
                    copy_task(&event.context, &mut *o);
                }
                owner.assume_init_ref()
            };
            let _ = LISTENERS.insert(key, owner, 0);
        }
    } else if old == tcp_state::LISTEN && new == tcp_state::SYN_RECV {
        // A child socket: it belongs to whoever owns its listener, the one
        // bound to the address the SYN came to, else the wildcard one.
        // SAFETY: read-only lookups; the value is copied out at once.
        let (mut exact, mut wildcard) = (MaybeUninit::uninit(), MaybeUninit::uninit());
        let owner = unsafe {
            LISTENERS
                .get(listener_key(&mut exact, event, false))
                .or_else(|| LISTENERS.get(listener_key(&mut wildcard, event, true)))
        };
        if let Some(owner) = owner {
            let owner = *owner;
            let _ = OWNERS.insert(event.skaddr, owner, 0);
        } else {
            // Owner unknown: drop whatever an earlier socket at this address
            // left, never misattribute.
            let _ = OWNERS.remove(event.skaddr);
        }
    } else if old == tcp_state::LISTEN && new == tcp_state::CLOSE {
        let mut key = MaybeUninit::uninit();
        let _ = LISTENERS.remove(listener_key(&mut key, event, false));
    }
    attach_owner(event);
}

/// A destroyed socket's owner is forgotten at once: its address may be the
/// next socket's, and a socket first seen mid-life there (its start lost)
/// must not inherit it. One map delete per socket, under process filters
/// only (without them the map is never used).
#[inline(always)]
pub(crate) fn forget_owner(sk: u64) {
    if config().filter.judges_owners() {
        let _ = OWNERS.remove(sk);
    }
}
