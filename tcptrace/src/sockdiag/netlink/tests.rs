//! Replies built byte by byte from the kernel's layouts (`struct nlmsghdr`,
//! `struct inet_diag_msg`), independently of the crates that parse them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::sockdiag::state;

const SEQ: u32 = 7;
const NETNS: u64 = 4026531840;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLM_F_MULTI: u16 = 2;

fn nlmsg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len() as u32;
    let mut m = Vec::new();
    m.extend_from_slice(&len.to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

struct Msg {
    family: u8,
    state: u8,
    src: IpAddr,
    sport: u16,
    dst: IpAddr,
    dport: u16,
    ifindex: u32,
    cookie: u64,
    rqueue: u32,
    wqueue: u32,
    uid: u32,
    inode: u32,
}

fn v4() -> Msg {
    Msg {
        family: libc::AF_INET as u8,
        state: state::ESTABLISHED,
        src: IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
        sport: 40000,
        dst: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
        dport: 443,
        ifindex: 0,
        cookie: 0x1122_3344_5566_7788,
        rqueue: 5,
        wqueue: 6,
        uid: 1000,
        inode: 424242,
    }
}

fn v6() -> Msg {
    Msg {
        family: libc::AF_INET6 as u8,
        state: state::LISTEN,
        src: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        sport: 8080,
        dst: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        dport: 0,
        ifindex: 3,
        cookie: 9,
        rqueue: 0,
        wqueue: 128,
        uid: 0,
        inode: 77,
    }
}

fn addr(ip: IpAddr) -> [u8; 16] {
    let mut a = [0; 16];
    match ip {
        IpAddr::V4(v) => a[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => a = v.octets(),
    }
    a
}

/// `struct inet_diag_msg` (72 bytes), then `nlas`.
fn diag(m: &Msg, nlas: &[u8]) -> Vec<u8> {
    let mut p = vec![m.family, m.state, 0, 0];
    p.extend_from_slice(&m.sport.to_be_bytes());
    p.extend_from_slice(&m.dport.to_be_bytes());
    p.extend_from_slice(&addr(m.src));
    p.extend_from_slice(&addr(m.dst));
    p.extend_from_slice(&m.ifindex.to_ne_bytes());
    p.extend_from_slice(&(m.cookie as u32).to_ne_bytes());
    p.extend_from_slice(&((m.cookie >> 32) as u32).to_ne_bytes());
    for v in [0, m.rqueue, m.wqueue, m.uid, m.inode] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    assert_eq!(p.len(), 72);
    p.extend_from_slice(nlas);
    p
}

/// A u8 attribute (e.g. INET_DIAG_SHUTDOWN, which the kernel always adds).
fn nla_u8(kind: u16, v: u8) -> Vec<u8> {
    let mut a = Vec::new();
    a.extend_from_slice(&5u16.to_ne_bytes());
    a.extend_from_slice(&kind.to_ne_bytes());
    a.extend_from_slice(&[v, 0, 0, 0]);
    a
}

fn response(m: &Msg) -> Vec<u8> {
    nlmsg(SOCK_DIAG_BY_FAMILY, SEQ, &diag(m, &nla_u8(8, 0)))
}

fn done(code: i32) -> Vec<u8> {
    nlmsg(NLMSG_DONE, SEQ, &code.to_ne_bytes())
}

fn error(code: i32) -> Vec<u8> {
    // The code, then the request's header.
    let mut p = code.to_ne_bytes().to_vec();
    p.extend_from_slice(&[0; 16]);
    nlmsg(NLMSG_ERROR, SEQ, &p)
}

fn parse(buf: &[u8]) -> Result<(Batch, Vec<DiagSocket>), DiagError> {
    let mut out = Vec::new();
    let batch = parse_batch(buf, SEQ, AF_INET, NETNS, &mut out)?;
    Ok((batch, out))
}

fn malformed(buf: &[u8]) -> String {
    match parse(buf) {
        Err(DiagError::Malformed(why)) => why,
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn sockets_then_done() {
    let buf = [response(&v4()), response(&v6()), done(0)].concat();
    let (batch, out) = parse(&buf).unwrap();
    assert_eq!(batch, Batch::Done);
    assert_eq!(
        out,
        vec![
            DiagSocket {
                family: AF_INET,
                state: state::ESTABLISHED,
                src: "127.0.0.1".parse().unwrap(),
                sport: 40000,
                dst: "10.1.2.3".parse().unwrap(),
                dport: 443,
                inode: 424242,
                cookie: 0x1122_3344_5566_7788,
                uid: 1000,
                netns_inode: NETNS,
                ifindex: 0,
                recv_queue: 5,
                send_queue: 6,
                drops: None,
            },
            DiagSocket {
                family: AF_INET6,
                state: state::LISTEN,
                src: "::".parse().unwrap(),
                sport: 8080,
                dst: "::".parse().unwrap(),
                dport: 0,
                inode: 77,
                cookie: 9,
                uid: 0,
                netns_inode: NETNS,
                ifindex: 3,
                recv_queue: 0,
                send_queue: 128,
                drops: None,
            },
        ]
    );
}

#[test]
fn a_batch_without_done_asks_for_more() {
    let buf = [response(&v4()), nlmsg(NLMSG_NOOP, SEQ, &[])].concat();
    let (batch, out) = parse(&buf).unwrap();
    assert_eq!((batch, out.len()), (Batch::More, 1));
    assert_eq!(parse(&[]).unwrap().0, Batch::More);
}

#[test]
fn the_last_message_may_lack_its_padding() {
    // 16 + 72 + 5-byte attribute = 93 bytes, padded to 96 by nlmsg().
    let mut buf = response(&v4());
    buf.truncate(93);
    let len = 93u32.to_ne_bytes();
    buf[..4].copy_from_slice(&len);
    assert_eq!(parse(&buf).unwrap().1.len(), 1);
}

#[test]
fn kernel_errors() {
    for errno in [
        libc::ENOENT,
        libc::EINVAL,
        libc::EPROTONOSUPPORT,
        libc::EOPNOTSUPP,
    ] {
        for buf in [error(-errno), done(-errno)] {
            match parse(&buf) {
                Err(DiagError::NoInetDiag(e)) => assert_eq!(e.raw_os_error(), Some(errno)),
                other => panic!("errno {errno}: {other:?}"),
            }
        }
    }
    match parse(&error(-libc::ENOBUFS)) {
        Err(e @ DiagError::Kernel { .. }) => {
            assert!(e.to_string().contains("IPv4"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    let msg = DiagError::NoInetDiag(io::Error::from_raw_os_error(libc::ENOENT)).to_string();
    assert!(
        msg.contains("this kernel has no TCP socket diagnostics (CONFIG_INET_DIAG)"),
        "{msg}"
    );
}

#[test]
fn an_ack_is_not_an_error() {
    let buf = [error(0), done(0)].concat();
    assert_eq!(parse(&buf).unwrap(), (Batch::Done, vec![]));
}

#[test]
fn impossible_error_codes_are_malformed() {
    for code in [1, i32::MAX, i32::MIN] {
        malformed(&error(code));
        malformed(&done(code));
    }
}

#[test]
fn every_truncation_is_an_error() {
    let (a, b) = (response(&v4()), response(&v6()));
    let boundaries = [a.len(), a.len() + b.len()];
    let buf = [a, b, done(0)].concat();
    for cut in 1..buf.len() {
        match parse(&buf[..cut]) {
            // Cut between two messages: a shorter batch, still well formed.
            Ok((Batch::More, out)) => {
                let whole = boundaries.iter().position(|&at| at == cut);
                assert_eq!(whole.map(|i| i + 1), Some(out.len()), "cut at {cut}");
            }
            Ok(other) => panic!("cut at {cut}: {other:?}"),
            Err(DiagError::Malformed(_)) => {}
            Err(e) => panic!("cut at {cut}: {e}"),
        }
    }
}

#[test]
fn a_length_field_past_the_datagram_is_malformed() {
    let mut buf = response(&v4());
    let len = (buf.len() as u32 + 4).to_ne_bytes();
    buf[..4].copy_from_slice(&len);
    malformed(&buf);
}

#[test]
fn a_length_field_below_the_header_is_malformed() {
    for len in [0u32, 1, 15] {
        let mut buf = done(0);
        buf[..4].copy_from_slice(&len.to_ne_bytes());
        malformed(&buf);
    }
}

#[test]
fn short_done_and_error_messages_are_malformed() {
    for kind in [NLMSG_DONE, NLMSG_ERROR] {
        for len in [0, 2, 3] {
            malformed(&nlmsg(kind, SEQ, &[0xff; 3][..len]));
        }
    }
}

#[test]
fn a_short_inet_diag_msg_is_malformed() {
    let full = diag(&v4(), &[]);
    for keep in [0, 1, 2, 40, 71] {
        malformed(&nlmsg(SOCK_DIAG_BY_FAMILY, SEQ, &full[..keep]));
    }
}

#[test]
fn a_broken_attribute_is_malformed() {
    // An attribute claiming 64 bytes where 8 remain.
    let mut nla = nla_u8(8, 0);
    nla[..2].copy_from_slice(&64u16.to_ne_bytes());
    malformed(&nlmsg(SOCK_DIAG_BY_FAMILY, SEQ, &diag(&v4(), &nla)));
}

#[test]
fn other_families_and_types_are_malformed() {
    let mut m = v4();
    m.family = 99;
    malformed(&nlmsg(SOCK_DIAG_BY_FAMILY, SEQ, &diag(&m, &[])));
    malformed(&nlmsg(99, SEQ, &diag(&v4(), &[])));
    malformed(&nlmsg(libc::NLMSG_OVERRUN as u16, SEQ, &[0; 4]));
}

#[test]
fn a_reply_to_another_request_is_malformed() {
    let buf = nlmsg(NLMSG_DONE, SEQ + 1, &0i32.to_ne_bytes());
    let why = malformed(&buf);
    assert!(why.contains("request 8"), "{why}");
}

/// Mangled replies: any outcome but a panic or a hang.
#[test]
fn mangled_replies_never_panic() {
    let good = [response(&v4()), response(&v6()), done(0)].concat();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let mut buf = good.clone();
        for _ in 0..(next() % 4 + 1) {
            let at = (next() % buf.len() as u64) as usize;
            buf[at] = next() as u8;
        }
        let cut = (next() % (buf.len() as u64 + 1)) as usize;
        let _ = parse(&buf[..cut]);
    }
}

#[test]
fn cookie_halves() {
    let mut raw = [0; 8];
    raw[..4].copy_from_slice(&0x5566_7788u32.to_ne_bytes());
    raw[4..].copy_from_slice(&0x1122_3344u32.to_ne_bytes());
    assert_eq!(cookie(raw), 0x1122_3344_5566_7788);
}

#[test]
fn request_layout() {
    for (family, af) in [(AF_INET, libc::AF_INET), (AF_INET6, libc::AF_INET6)] {
        let r = request(3, family, ALL_STATES);
        // nlmsghdr + struct inet_diag_req_v2 (8 + 48 bytes).
        assert_eq!(r.len(), 16 + 56);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!(
            u16::from_ne_bytes(r[6..8].try_into().unwrap()),
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16
        );
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 3);
        assert_eq!(r[16], af as u8);
        assert_eq!(r[17], libc::IPPROTO_TCP as u8);
        assert_eq!(r[18], 0, "no extensions");
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), u32::MAX);
        assert!(r[24..].iter().all(|&b| b == 0), "an empty socket id");
    }
}

/// The real kernel (needs no privilege).
#[test]
fn lists_a_listener_of_ours() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let all = dump_tcp(NETNS).unwrap();
    let found = all
        .iter()
        .find(|s| s.state == state::LISTEN && s.sport == port && s.family == AF_INET)
        .unwrap_or_else(|| panic!("no listener on {port} among {} sockets", all.len()));
    assert_eq!(found.src, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(found.inode, 0);
    assert_ne!(found.cookie, 0);
    assert_eq!(found.netns_inode, NETNS);
}

#[test]
fn a_meminfo_attribute_gives_the_drop_counter() {
    // SK_MEMINFO_RMEM_ALLOC … SK_MEMINFO_DROPS: nine host-order u32s.
    let value: Vec<u8> = (0..9u32).flat_map(|i| (i * 10).to_ne_bytes()).collect();
    assert_eq!(super::meminfo_drops(&value), Some(80));
    // An older kernel's shorter array has no drop counter.
    assert_eq!(super::meminfo_drops(&value[..32]), None);
}
