//! The owner rules on recorded-style event sequences.

use super::*;

fn task(tgid: u32, name: &[u8]) -> Task {
    let mut comm = [0u8; 16];
    comm[..name.len()].copy_from_slice(name);
    Task {
        pid: tgid,
        tgid,
        cgroup_id: 1,
        comm,
    }
}

fn state(sk: u64, old: u8, new: u8, context: Option<Task>, port: u16) -> Event {
    let mut e = Event {
        kind: kind::STATE,
        skaddr: sk,
        oldstate: old,
        newstate: new,
        family: 2,
        sport: port,
        netns: 4026531840,
        ..Event::default()
    };
    e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    match context {
        Some(t) => e.context = t,
        None => e.flags |= flag::SOFTIRQ,
    }
    e
}

fn owner_of(owners: &mut Owners, mut e: Event) -> Option<u32> {
    owners.apply(&mut e);
    (e.flags & flag::OWNER_KNOWN != 0).then_some(e.owner.tgid)
}

fn listen(owners: &mut Owners, sk: u64, who: Task, port: u16) {
    let mut e = state(sk, tcp_state::CLOSE, tcp_state::LISTEN, Some(who), port);
    owners.apply(&mut e);
}

#[test]
fn connect_makes_the_caller_the_owner_of_every_later_event() {
    let mut o = Owners::new(Seeds::default());
    let curl = task(7, b"curl");
    let connect = state(
        0x10,
        tcp_state::CLOSE,
        tcp_state::SYN_SENT,
        Some(curl),
        40000,
    );
    assert_eq!(owner_of(&mut o, connect), Some(7));
    let established = state(
        0x10,
        tcp_state::SYN_SENT,
        tcp_state::ESTABLISHED,
        None,
        40000,
    );
    assert_eq!(owner_of(&mut o, established), Some(7));
    let mut reset = Event {
        kind: kind::RECEIVE_RESET,
        skaddr: 0x10,
        ..Event::default()
    };
    o.apply(&mut reset);
    assert_eq!(reset.owner.tgid, 7);
}

#[test]
fn a_child_belongs_to_its_listeners_owner_exact_address_first() {
    let mut o = Owners::new(Seeds::default());
    listen(&mut o, 0x20, task(10, b"nginx"), 80);
    let child = state(0x21, tcp_state::LISTEN, tcp_state::SYN_RECV, None, 80);
    assert_eq!(owner_of(&mut o, child), Some(10));
    // A wildcard listener on another port serves a child of any address.
    let mut wild = state(
        0x30,
        tcp_state::CLOSE,
        tcp_state::LISTEN,
        Some(task(11, b"redis")),
        6379,
    );
    wild.saddr = [0; 16];
    o.apply(&mut wild);
    let child = state(0x31, tcp_state::LISTEN, tcp_state::SYN_RECV, None, 6379);
    assert_eq!(owner_of(&mut o, child), Some(11));
    // The listener closes: its next child at that address has no owner, and
    // an owner left at a reused socket address is forgotten, not reused.
    let close = state(
        0x20,
        tcp_state::LISTEN,
        tcp_state::CLOSE,
        Some(task(10, b"nginx")),
        80,
    );
    o.apply(&mut close.clone());
    let child = state(0x21, tcp_state::LISTEN, tcp_state::SYN_RECV, None, 80);
    assert_eq!(owner_of(&mut o, child), None);
}

#[test]
fn so_reuseport_children_are_shared_until_accepted_and_then_the_acceptors() {
    let mut o = Owners::new(Seeds::default());
    listen(&mut o, 0x40, task(20, b"worker"), 8080);
    listen(&mut o, 0x41, task(21, b"worker"), 8080);
    let mut child = state(0x42, tcp_state::LISTEN, tcp_state::SYN_RECV, None, 8080);
    o.apply(&mut child);
    assert_eq!(child.flags & flag::OWNER_KNOWN, 0);
    assert_ne!(child.more_flags & more_flags::SHARED_LISTENER, 0);
    let mut accept = Event {
        kind: kind::ACCEPT,
        skaddr: 0x42,
        flags: flag::OWNER_KNOWN,
        owner: task(21, b"worker"),
        ..Event::default()
    };
    o.apply(&mut accept);
    let later = state(
        0x42,
        tcp_state::ESTABLISHED,
        tcp_state::CLOSE_WAIT,
        None,
        8080,
    );
    assert_eq!(owner_of(&mut o, later), Some(21));
}

#[test]
fn sockets_open_at_start_get_the_snapshots_owner_by_cookie_once() {
    let seeds = Seeds {
        listeners: Vec::new(),
        owners: vec![(99, task(30, b"postgres"))],
    };
    let mut o = Owners::new(seeds);
    let mut first = state(
        0x50,
        tcp_state::ESTABLISHED,
        tcp_state::FIN_WAIT1,
        Some(task(30, b"postgres")),
        5432,
    );
    first.aux = 99;
    assert_eq!(owner_of(&mut o, first), Some(30));
    // Kept by address from then on, without the cookie.
    let next = state(0x50, tcp_state::FIN_WAIT1, tcp_state::FIN_WAIT2, None, 5432);
    assert_eq!(owner_of(&mut o, next), Some(30));
    assert!(o.snapshot.is_empty());
}

#[test]
fn a_seeded_listener_owns_children_of_a_service_started_before_tcptrace() {
    let mut key = listener_key(&state(0, 0, 0, None, 443), false);
    key.addr = [0; 4];
    let seeds = Seeds {
        listeners: vec![(key, task(40, b"haproxy"))],
        owners: Vec::new(),
    };
    let mut o = Owners::new(seeds);
    let child = state(0x60, tcp_state::LISTEN, tcp_state::SYN_RECV, None, 443);
    assert_eq!(owner_of(&mut o, child), Some(40));
}

#[test]
fn a_drop_names_the_owner_of_the_receiving_socket_else_the_sender() {
    let mut o = Owners::new(Seeds::default());
    let connect = state(
        0x70,
        tcp_state::CLOSE,
        tcp_state::SYN_SENT,
        Some(task(50, b"app")),
        1234,
    );
    o.apply(&mut connect.clone());
    let mut dropped = Event {
        kind: kind::DROP,
        skaddr: 0,
        aux: 0x70,
        ..Event::default()
    };
    o.apply(&mut dropped);
    assert_eq!(dropped.owner.tgid, 50);
    assert_ne!(dropped.flags & flag::OWNER_KNOWN, 0);
}

#[test]
fn a_destroyed_sockets_owner_is_forgotten_and_not_given_to_the_next_at_its_address() {
    let mut owners = Owners::new(Seeds::default());
    let client = task(700, b"curl");
    let sk = 0xffff_1000;
    let connect = state(sk, tcp_state::CLOSE, tcp_state::SYN_SENT, Some(client), 0);
    assert_eq!(owner_of(&mut owners, connect), Some(700));
    let established = state(sk, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, None, 40000);
    assert_eq!(owner_of(&mut owners, established), Some(700));
    let mut destroy = Event {
        kind: kind::DESTROY_SOCK,
        skaddr: sk,
        ..Event::default()
    };
    owners.apply(&mut destroy);
    // The next socket at that address, first seen mid-life in softirq.
    let reused = state(
        sk,
        tcp_state::ESTABLISHED,
        tcp_state::CLOSE_WAIT,
        None,
        40001,
    );
    assert_eq!(owner_of(&mut owners, reused), None);
}
