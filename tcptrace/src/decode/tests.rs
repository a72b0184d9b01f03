use super::*;

fn task(pid: u32, comm: &[u8]) -> Task {
    let mut t = Task {
        pid,
        tgid: pid,
        ..Task::default()
    };
    t.comm[..comm.len()].copy_from_slice(comm);
    t
}

#[test]
fn decodes_an_ipv4_state_change_from_raw_bytes() {
    let mut e = Event {
        ts_ns: 5,
        skaddr: 0xffff_0000_1234,
        kind: kind::STATE,
        oldstate: 2,
        newstate: 1,
        flags: flag::OWNER_KNOWN,
        family: AF_INET,
        sport: 45126,
        dport: 8099,
        context: task(7, b"curl"),
        owner: task(7, b"curl"),
        ..Event::default()
    };
    e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
    // SAFETY: viewing plain data as bytes, as the event rings deliver it.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            (&e as *const Event).cast::<u8>(),
            core::mem::size_of::<Event>(),
        )
    };
    let r = Decoder::default().decode_bytes(bytes).unwrap();
    let Record::State {
        sock,
        old,
        new,
        unread,
        ..
    } = r
    else {
        panic!("not a state record: {r:?}")
    };
    assert_eq!(
        (old, new, unread),
        (TcpState::SynSent, TcpState::Established, None)
    );
    assert_eq!(sock.local, "127.0.0.1:45126".parse().unwrap());
    assert_eq!(sock.remote, "127.0.0.2:8099".parse().unwrap());
    assert_eq!(sock.context.process().unwrap().comm, "curl");
    assert_eq!(sock.owner.unwrap().pid, 7);
}

#[test]
fn decodes_ipv6_and_softirq_context() {
    let mut e = Event {
        kind: kind::STATE,
        oldstate: 1,
        newstate: 8,
        flags: flag::SOFTIRQ,
        family: AF_INET6,
        context: task(0, b"swapper/1"),
        ..Event::default()
    };
    e.saddr[15] = 1;
    let r = Decoder::default().decode(&e).unwrap();
    let sock = r.sock().unwrap();
    assert_eq!(sock.local.ip(), "::1".parse::<IpAddr>().unwrap());
    assert!(sock.context.process().is_none());
    assert!(sock.owner.is_none());
}

#[test]
fn comm_is_the_lossy_name_up_to_the_first_nul() {
    let cases: &[&[u8]] = &[
        b"",
        b"ab\0\xff\xfe",
        b"\x7f\x01x",
        b"\x80",
        b"fifteen-chars-x",
        b"curl",
        b"swapper/1\0junk",
        b"0123456789abcdef",
        b"caf\xc3\xa9",
        b"bad\xff\xfeutf8",
        b"\xf0\x9f\x92",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        b"\xe8\xbf\x9b\xe7\xa8\x8b\xc3",
        b"evil\x1b[31m\n",
    ];
    for &raw in cases {
        let mut t = task(1, b"");
        t.comm[..raw.len()].copy_from_slice(raw);
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let want = String::from_utf8_lossy(&raw[..end]).into_owned();
        let comm = Proc::from_task(&t).comm;
        assert_eq!(comm, want, "{raw:?}");
        assert_eq!(format!("{comm}|{comm:?}"), format!("{want}|{want:?}"));
        assert_eq!(
            serde_json::to_string(&comm).unwrap(),
            serde_json::to_string(&want).unwrap()
        );
    }
    assert_eq!(Comm::from("x".repeat(60).as_str()).len(), Comm::CAPACITY);
    assert_eq!(Comm::from("é".repeat(30).as_str()).len(), Comm::CAPACITY);
    assert_eq!(format!("[{:<6}]", Comm::from("ab")), "[ab    ]");
}

fn bytes_of(e: &Event) -> &[u8] {
    // SAFETY: viewing plain data as bytes, as the event rings deliver it.
    unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(e).cast::<u8>(),
            core::mem::size_of::<Event>(),
        )
    }
}

/// What the kernel program writes for each section that is non-zero, and
/// that the prefix reads back as the whole event.
#[test]
fn a_record_is_the_prefix_up_to_its_last_non_zero_section() {
    let bare = Event {
        ts_ns: 9,
        skaddr: 0xffff_0000_1234,
        kind: kind::DESTROY_SOCK,
        cpu: 1,
        ..Event::default()
    };
    let with_cookie = Event { aux: 77, ..bare };
    let mut with_address = bare;
    with_address.daddr[15] = 1;
    let with_context = Event {
        context: task(7, b"curl"),
        ..with_cookie
    };
    let with_cgroup_only = Event {
        context: Task {
            cgroup_id: 5,
            ..Task::default()
        },
        ..bare
    };
    let with_owner = Event {
        owner: task(8, b"nginx"),
        ..bare
    };
    let with_netns = Event {
        netns: 4026531840,
        ..with_context
    };
    let with_more_flags = Event {
        more_flags: more_flags::SHARED_LISTENER,
        ..bare
    };
    for (e, len) in [
        (bare, record_len::BARE),
        (with_cookie, record_len::TO_CONTEXT),
        (with_address, record_len::TO_CONTEXT),
        (with_context, record_len::TO_OWNER),
        (with_cgroup_only, record_len::TO_OWNER),
        (with_owner, record_len::TO_TAIL),
        (with_netns, record_len::FULL),
        (with_more_flags, record_len::FULL),
    ] {
        assert_eq!(e.record_len(), len, "{e:?}");
        let back = event_from_bytes(&bytes_of(&e)[..len]).unwrap();
        assert_eq!(bytes_of(&back), bytes_of(&e), "{e:?} cut at {len}");
    }
    // A length the kernel never cuts at reads the same way.
    let back = event_from_bytes(&bytes_of(&with_context)[..record_len::TO_OWNER + 8]).unwrap();
    assert_eq!(bytes_of(&back), bytes_of(&with_context));
}

#[test]
fn rejects_short_items_and_unknown_kinds_and_states() {
    assert!(matches!(
        Decoder::default().decode_bytes(&[0; 10]),
        Err(DecodeError::Size(10, record_len::BARE))
    ));
    assert!(matches!(
        Decoder::default().decode_bytes(&[0; record_len::BARE - 1]),
        Err(DecodeError::Size(_, _))
    ));
    let e = Event {
        kind: 99,
        ..Event::default()
    };
    assert_eq!(Decoder::default().decode(&e), Err(DecodeError::Kind(99)));
    let e = Event {
        kind: kind::STATE,
        oldstate: 40,
        newstate: 1,
        ..Event::default()
    };
    assert_eq!(Decoder::default().decode(&e), Err(DecodeError::State(40)));
}

#[test]
fn names_reset_reasons_from_the_kernel_table() {
    let reasons = ResetReasons::from_pairs([(11, "TCP_ABORT_ON_CLOSE")]);
    let e = Event {
        kind: kind::SEND_RESET,
        newstate: 7,
        flags: flag::REASON_VALID,
        value: 11,
        ..Event::default()
    };
    let Record::SendReset { reason, state, .. } = Decoder::new(reasons).decode(&e).unwrap() else {
        panic!()
    };
    assert_eq!(state, Some(TcpState::Close));
    assert_eq!(reason.unwrap().name.as_deref(), Some("TCP_ABORT_ON_CLOSE"));
}

#[test]
fn decodes_a_dropped_segment_with_the_kernels_reason_name() {
    use crate::kernel::DropReasons;
    let mut e = Event {
        ts_ns: 9,
        skaddr: 0,
        kind: kind::DROP,
        flags: flag::SOFTIRQ,
        family: AF_INET,
        sport: 51000,
        dport: 443,
        seg_flags: 0x02,
        value: 12,
        aux: 0xffff_0000_1234,
        ..Event::default()
    };
    e.saddr[..4].copy_from_slice(&[10, 0, 0, 5]);
    e.daddr[..4].copy_from_slice(&[10, 0, 0, 99]);
    let decoder =
        Decoder::default().with_drop_reasons(DropReasons::from_pairs([(12, "NETFILTER_DROP")]));
    let Record::Drop(d) = decoder.decode(&e).unwrap() else {
        panic!("not a drop")
    };
    assert_eq!((d.rx_sk, d.skb_sk), (None, Some(0xffff_0000_1234)));
    assert_eq!(d.source, "10.0.0.5:51000".parse().unwrap());
    assert_eq!(d.destination, "10.0.0.99:443".parse().unwrap());
    assert_eq!(
        (d.reason.code, d.reason.name.as_deref(), d.segment_flags),
        (12, Some("NETFILTER_DROP"), 0x02)
    );
    assert!(d.context.process().is_none());
    // A kernel (or recording) without names: the number alone.
    let Record::Drop(d) = Decoder::default().decode(&e).unwrap() else {
        panic!("not a drop")
    };
    assert_eq!(d.reason.name, None);
}

#[test]
fn decodes_an_oom_victim_by_its_process_id() {
    let e = Event {
        ts_ns: 3,
        kind: kind::OOM_VICTIM,
        aux: 4311,
        context: task(4311, b"nginx"),
        ..Event::default()
    };
    assert_eq!(
        Decoder::default().decode(&e).unwrap(),
        Record::OomVictim {
            ts_ns: 3,
            victim_pid: 4311,
            context: Proc::from_task(&task(4311, b"nginx")),
        }
    );
}
