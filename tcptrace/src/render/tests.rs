use super::*;
use crate::classify::classify;
use crate::decode::Record;
use crate::tracker::SocketLife;
use crate::tracker::fixtures::*;

fn opts(view: View) -> RenderOptions {
    RenderOptions {
        view,
        ..RenderOptions::default()
    }
}

fn ladder(life: &SocketLife, o: RenderOptions) -> String {
    let mut r = Renderer::new(Vec::new(), o);
    r.socket(life, &classify(life)).unwrap();
    String::from_utf8(r.into_inner()).unwrap()
}

fn stream(records: &[Record], o: RenderOptions) -> String {
    let mut r = Renderer::new(Vec::new(), o);
    for rec in records {
        r.transition(rec).unwrap();
    }
    String::from_utf8(r.into_inner()).unwrap()
}

#[test]
fn ladder_of_a_client_that_closes_first() {
    let c = life_of(&run(&client_closes_first()), CLIENT_SK);
    let text = ladder(&c, opts(View::Sockets));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            "127.0.0.1:45126 → 127.0.0.1:8099  client  python3[2251]  0.948 ms  sk 0xffff888123456000",
            "  +0.000    CLOSE → SYN_SENT           SYN →",
            "  +0.062    SYN_SENT → ESTABLISHED     ← SYN/ACK  ACK →   handshake 0.062 ms",
            "  +0.911    ESTABLISHED → FIN_WAIT1    FIN →",
            "  +0.930    FIN_WAIT1 → FIN_WAIT2      ← ACK",
            "  +0.948    FIN_WAIT2 → CLOSE          ← FIN  ACK →       (TIME_WAIT) in softirq",
            "  = active open (3-way) · active close (4-way)",
            "  closed by python3[2251] → FIN",
            "",
        ]
    );
}

#[test]
fn ladder_of_a_server_child_and_a_listener() {
    let lives = run(&client_closes_first());
    let s = ladder(&life_of(&lives, SERVER_SK), opts(View::Sockets));
    assert!(
        s.starts_with("127.0.0.1:8099 ← 127.0.0.1:45126  server  nginx[4311]  0.886 ms"),
        "{s}"
    );
    assert!(
        s.contains("  +0.000    LISTEN → SYN_RECV          ← SYN  SYN/ACK →\n"),
        "{s}"
    );
    assert!(s.contains(
        "  +0.002    SYN_RECV → ESTABLISHED     ← ACK              handshake 0.002 ms\n"
    ));
    assert!(s.contains("  +0.848    ESTABLISHED → CLOSE_WAIT   ← FIN  ACK →\n"));
    assert!(s.contains("  +0.861    CLOSE_WAIT → LAST_ACK      FIN →\n"));
    assert!(s.contains("  +0.886    LAST_ACK → CLOSE           ← ACK              in softirq\n"));
    assert!(s.contains("  = passive open (3-way) · passive close (4-way)\n"));

    let l = ladder(&life_of(&lives, LISTENER_SK), opts(View::Sockets));
    assert!(
        l.starts_with(
            "0.0.0.0:8099  listener  nginx[4311]  5.000 ms  1 child  sk 0xffff888123458000\n"
        ),
        "{l}"
    );
    assert!(l.contains("  = listening · stopped listening\n"));
}

#[test]
fn ladder_of_a_killed_server_interleaves_its_late_rst() {
    let s = life_of(&run(&killed()), SERVER_SK);
    let text = ladder(&s, opts(View::Sockets));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[3..],
        [
            "  +0.956    ESTABLISHED → CLOSE                           5 bytes unread",
            "  +0.959    RST sent                   RST →              application closed with unread data (TCP_ABORT_ON_CLOSE)",
            "  = passive open (3-way) · RST sent in ESTABLISHED: application closed with unread data (TCP_ABORT_ON_CLOSE)",
            "  closed by exit of nginx[4311], killed by SIGKILL from kill[4390] → RST (unread data, TCP_ABORT_ON_CLOSE) · 5 bytes never read",
            "",
        ]
    );
}

#[test]
fn ladder_of_a_refused_connect_and_its_socketless_rst() {
    let lives = run(&refused());
    let c = ladder(&life_of(&lives, CLIENT_SK), opts(View::Sockets));
    assert!(
        c.contains("  +0.000    CLOSE → SYN_SENT           SYN →\n"),
        "{c}"
    );
    assert!(c.contains("  +0.011    RST received               ← RST\n"));
    assert!(c.contains("  +0.012    SYN_SENT → CLOSE                              in softirq\n"));
    assert!(c.contains(
        "  = active open (not established) · refused (RST received in SYN_SENT; peer: no socket (port closed))\n"
    ));

    let rst = ladder(&life_of(&lives, 0), opts(View::Sockets));
    assert_eq!(
        rst.lines().collect::<Vec<_>>(),
        [
            "127.0.0.1:8099 ← 127.0.0.1:45126  server (no socket)",
            "  +0.000    RST sent                   RST →              no socket (port closed) (NO_SOCKET)",
            "  = refused at start (server side: RST sent, no socket)",
            "",
        ]
    );
}

#[test]
fn ladder_shows_syn_retransmits_in_time_order() {
    let c = life_of(&run(&handshake_timeout()), CLIENT_SK);
    let text = ladder(&c, opts(View::Sockets));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1..7],
        [
            "  +0.000    CLOSE → SYN_SENT           SYN →",
            "  +1000.000 SYN retransmit             SYN → (retransmit #1)",
            "  +3000.000 SYN retransmit             SYN → (retransmit #2)",
            "  +7000.000 SYN retransmit             SYN → (retransmit #3)",
            "  +15000.000 SYN_SENT → CLOSE                              in softirq",
            "  = active open (not established) · handshake timeout (3 SYN retransmits, no RST)",
        ]
    );
}

#[test]
fn ladder_notes_a_process_that_is_not_the_owner() {
    // The owner map missed this socket; every process row says who acted.
    let c = S::new(CLIENT_SK, "127.0.0.1:45126", "127.0.0.1:8099");
    let lives = run(&[c.by(0, &python()).st(1, 4), c.irq(10).st(4, 5)]);
    let text = ladder(&lives[0], opts(View::Sockets));
    assert!(text.contains("  owner unknown  "), "{text}");
    assert!(
        text.contains(
            "  +0.000    ESTABLISHED → FIN_WAIT1    FIN →              by python3[2251]\n"
        )
    );
    assert!(
        text.contains(
            "  = open not seen · still open (FIN_WAIT2) · incomplete: started mid-life\n"
        )
    );
}

#[test]
fn hostile_process_names_are_escaped_in_text() {
    let c = S::new(CLIENT_SK, "127.0.0.1:45126", "127.0.0.1:8099").owner(&hostile());
    let recs = [
        c.local("127.0.0.1:0").by(0, &hostile()).st(7, 2),
        c.by(62, &hostile()).st(2, 1),
        c.by(900, &hostile()).st(1, 4),
        c.irq(930).st(4, 5),
        c.irq(948).close(5, 0),
    ];
    let life = &run(&recs)[0];
    for color in [false, true] {
        let o = RenderOptions {
            color,
            ..opts(View::Both)
        };
        let text = ladder(life, o) + &stream(&recs, o);
        assert!(text.contains("evil\\x1b[31m\\n[666]"), "{text}");
        assert!(
            text.contains("evil\\x1b[31m\\n "),
            "stream COMM column: {text}"
        );
        assert!(!text.contains("evil\x1b"), "raw escape leaked: {text:?}");
        assert!(!text.contains("m\n["), "raw newline leaked: {text:?}");
    }
}

#[test]
fn json_socket_lines_carry_raw_names_safely() {
    let lives = run(&killed());
    let s = life_of(&lives, SERVER_SK);
    let o = RenderOptions {
        json: true,
        ..opts(View::Sockets)
    };
    let mut r = Renderer::new(Vec::new(), o);
    r.socket(&s, &classify(&s)).unwrap();
    let text = String::from_utf8(r.into_inner()).unwrap();
    assert_eq!(text.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["type"], "socket");
    assert_eq!(v["socket"]["skaddr"], "0xffff888123457000");
    assert_eq!(v["socket"]["exit"]["signal"]["name"], "SIGKILL");
    assert_eq!(v["verdict"]["close"]["kind"], "reset_sent");
    assert_eq!(
        v["verdict"]["close"]["reason"]["name"],
        "TCP_ABORT_ON_CLOSE"
    );

    let mut evil = s.clone();
    evil.owner = Some(hostile());
    let line = json::socket_line(&evil, &classify(&evil)).unwrap();
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(line.contains(r#""comm":"evil\u001b[31m\n""#), "{line}");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["socket"]["owner"]["comm"], "evil\x1b[31m\n");
}

#[test]
fn json_stream_lines_are_typed() {
    let recs = killed();
    let o = RenderOptions {
        json: true,
        ..opts(View::Stream)
    };
    let text = stream(&recs, o);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        recs.len(),
        "every record, exits and signals included"
    );
    assert_eq!(lines[0]["type"], "transition");
    assert_eq!(lines[0]["skaddr_hex"], "0xffff888123458000");
    assert_eq!(lines[0]["skaddr"], LISTENER_SK);
    assert_eq!(lines[0]["event"], "state");
    assert_eq!(lines[0]["old"], "CLOSE");
    assert_eq!(lines[0]["new"], "LISTEN");
    assert_eq!(lines[5]["type"], "event");
    assert_eq!(lines[5]["event"], "signal");
    assert_eq!(lines[5]["target_pid"], 4311);
    assert_eq!(lines[6]["event"], "process_exit");
    assert!(lines[6].get("skaddr_hex").is_none());
    assert_eq!(lines[10]["event"], "send_reset");
    assert_eq!(lines[10]["reason"]["name"], "TCP_ABORT_ON_CLOSE");
}

#[test]
fn stream_lines_have_tcpstates_columns_and_ms() {
    let text = stream(&client_closes_first(), opts(View::Stream));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "TIME(s)    SKADDR           PID     COMM             LADDR:LPORT           RADDR:RPORT           OLDSTATE    -> NEWSTATE    MS"
    );
    assert_eq!(
        lines[1],
        "0.000000   ffff888123458000 4311    nginx            0.0.0.0:8099          0.0.0.0:0             CLOSE       -> LISTEN      0.000"
    );
    assert_eq!(
        lines[2],
        "0.001000   ffff888123456000 2251    python3          127.0.0.1:0           127.0.0.1:8099        CLOSE       -> SYN_SENT    0.000"
    );
    assert_eq!(
        lines[3],
        "0.001062   ffff888123456000 2251    python3          127.0.0.1:45126       127.0.0.1:8099        SYN_SENT    -> ESTABLISHED 0.062"
    );
    // Softirq, but the owner is known: nginx.
    assert!(lines[4].contains(" 4311    nginx            127.0.0.1:8099        127.0.0.1:45126       LISTEN      -> SYN_RECV    0.000"));
    let ms: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    // Destroys print nothing: 12 transitions.
    assert_eq!(
        ms,
        [
            "0.000", "0.000", "0.062", "0.000", "0.002", "0.849", "0.846", "0.013", "0.019",
            "0.018", "0.025", "5.000"
        ]
    );
}

#[test]
fn stream_shows_resets_and_who_without_an_owner() {
    let text = stream(&refused(), opts(View::Stream));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(
        lines[2],
        "0.000010   -                -       [softirq]        127.0.0.1:8099        127.0.0.1:45126       RST sent reason=NO_SOCKET"
    );
    assert!(lines[3].ends_with("RST received"));
    // The CLOSE forgets the socket: a reuse starts again at 0.
    assert!(lines[4].ends_with("SYN_SENT    -> CLOSE       0.012"));
    let again = [refused(), vec![client().by(3000, &python()).st(7, 2)]].concat();
    let text = stream(&again, opts(View::Stream));
    assert!(
        text.lines()
            .last()
            .unwrap()
            .ends_with("CLOSE       -> SYN_SENT    0.000")
    );

    let text = stream(&handshake_timeout(), opts(View::Stream));
    assert!(
        text.lines().nth(2).unwrap().ends_with("SYN retransmit"),
        "{text}"
    );
}

#[test]
fn stream_wide_columns_fit_ipv6() {
    let c = S::new(CLIENT_SK, "[::1]:45126", "[2001:db8::1]:8099").owner(&python());
    let o = RenderOptions {
        wide: true,
        ..opts(View::Stream)
    };
    let text = stream(&[c.by(0, &python()).st(2, 1)], o);
    let line = text.lines().nth(1).unwrap();
    assert_eq!(
        line,
        format!(
            "0.000000   ffff888123456000 2251    python3          {:<47} {:<47} SYN_SENT    -> ESTABLISHED 0.000",
            "[::1]:45126", "[2001:db8::1]:8099"
        )
    );
}

#[test]
fn views_select_what_is_printed() {
    let lives = run(&client_closes_first());
    let life = &lives[0];
    let rec = &client_closes_first()[1];
    for (view, want_stream, want_socket) in [
        (View::Sockets, false, true),
        (View::Stream, true, false),
        (View::Both, true, true),
    ] {
        let mut r = Renderer::new(Vec::new(), opts(view));
        r.transition(rec).unwrap();
        let after_transition = r.out.len();
        r.socket(life, &classify(life)).unwrap();
        let after_socket = r.out.len();
        assert_eq!(after_transition > 0, want_stream, "{view:?}");
        assert_eq!(after_socket > after_transition, want_socket, "{view:?}");
    }
}

#[test]
fn colour_only_when_asked() {
    let s = life_of(&run(&unread_close()), SERVER_SK);
    let plain = ladder(&s, opts(View::Sockets));
    assert!(!plain.contains('\x1b'));
    let o = RenderOptions {
        color: true,
        ..opts(View::Sockets)
    };
    let coloured = ladder(&s, o);
    assert!(
        coloured.contains("\x1b[31m  +0.939    RST sent"),
        "{coloured}"
    );
    assert!(coloured.contains("\x1b[1m  = passive open (3-way)"));
    let c = life_of(&run(&unread_close()), CLIENT_SK);
    assert!(ladder(&c, o).contains("\x1b[33m  +1.001    RST received"));
}

#[test]
fn timestamps() {
    assert_eq!(hms(13 * 3600 + 62, 5), "13:01:02.005");
    assert_eq!(hms(-1, 999), "23:59:59.999");
    let t = wall_clock(us(0), 1_700_000_000_000_000_000);
    assert_eq!(t.len(), 12);
    assert_eq!((&t[2..3], &t[5..6], &t[8..9]), (":", ":", "."));
    assert!(t.ends_with(".000"), "{t}");
    let o = RenderOptions {
        timestamp: true,
        wall_offset_ns: 1_700_000_000_000_000_000,
        ..opts(View::Both)
    };
    let text = stream(&client_closes_first(), o);
    assert!(text.starts_with("TIME         SKADDR"), "{text}");
    let c = life_of(&run(&client_closes_first()), CLIENT_SK);
    let l = ladder(&c, o);
    assert_eq!(&l[12..14], "  ", "{l}");
    assert_eq!(&l[14..30], "127.0.0.1:45126 ");
}

#[test]
fn milliseconds() {
    assert_eq!(fmt_ms(62_000), "0.062");
    assert_eq!(fmt_ms(1_310_000), "1.310");
    assert_eq!(fmt_ms(499), "0.000");
    assert_eq!(fmt_ms(500), "0.001");
    assert_eq!(fmt_ms(15_000_000_000), "15000.000");
    assert_eq!(fmt_ms(u64::MAX), "18446744073709.551");
    // Every fraction, against the formatter.
    for us in (0..3000).chain([999_999, 1_000_000, 123_456_789]) {
        assert_eq!(fmt_ms(us * 1000), format!("{}.{:03}", us / 1000, us % 1000));
    }
}

#[test]
fn column_widths_counted_at_compile_time_match_the_characters() {
    for text in ["", "SYN →", "← SYN/ACK  ACK →", "进程x", "plain"] {
        assert_eq!(const_chars(text), text.chars().count(), "{text}");
    }
}

#[test]
fn number_address_and_padding_helpers_match_format() {
    let mut ns = vec![
        0,
        9,
        10,
        99,
        100,
        101,
        999,
        1000,
        65535,
        u64::MAX,
        10u64.pow(19) - 1,
    ];
    for k in 0..64 {
        ns.extend([1u64 << k, (1u64 << k) - 1, 10u64.pow(k % 20)]);
    }
    for n in ns {
        let mut s = String::from("x");
        push_u64(&mut s, n);
        assert_eq!(s, format!("x{n}"));
        for w in [0, 3, 6, 16, 25] {
            let mut s = String::new();
            push_zero_padded(&mut s, n, w);
            assert_eq!(s, format!("{n:0w$}"));
            let mut s = String::new();
            push_hex(&mut s, n, w);
            assert_eq!(s, format!("{n:0w$x}"));
        }
    }
    for text in [
        "",
        "a",
        "→",
        "CLOSE → SYN_SENT",
        "进程x",
        "0123456789abcdefghijklmnopqrstuvwxyz",
    ] {
        for w in [0, 1, 5, 9, 26, 47] {
            let mut s = String::from("ab");
            s.push_str(text);
            pad_from(&mut s, 2, w);
            assert_eq!(s, format!("ab{text:<w$}"));
        }
    }
    for a in [
        "0.0.0.0:0",
        "255.255.255.255:65535",
        "127.0.0.1:8099",
        "[::1]:45126",
        "[2001:db8::1]:8099",
        "[::ffff:10.0.0.1]:1",
        "[fe80::1%2]:22",
    ] {
        let addr: std::net::SocketAddr = a.parse().unwrap();
        let mut s = String::new();
        push_addr(&mut s, &addr);
        assert_eq!(s, addr.to_string());
    }
}

#[test]
fn ladders_tell_what_was_dropped_and_where() {
    let lives = run(&dropped_here());
    let text = ladder(&life_of(&lives, CLIENT_SK), opts(View::Sockets));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1..6],
        [
            "  +0.000    CLOSE → SYN_SENT           SYN →",
            "  +0.001    SYN dropped on this host: NETFILTER_DROP",
            "  +1000.000 SYN retransmit             SYN → (retransmit #1)",
            "  +1000.001 SYN dropped on this host: NETFILTER_DROP",
            "  +3000.000 SYN_SENT → CLOSE                              in softirq",
        ],
        "{text}"
    );
    assert_eq!(
        lines[6],
        "  = active open (not established) · handshake timeout (1 SYN retransmits, no RST): \
         2 SYNs dropped on this host (NETFILTER_DROP)"
    );
    let text = ladder(&life_of(&lives, LISTENER_SK), opts(View::Sockets));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1..6],
        [
            "  +0.000    CLOSE → LISTEN",
            "  +4000.000 LISTEN → CLOSE",
            "  · 1 SYN/ACK retransmit (a handshake not completed at the first SYN/ACK)",
            // Its timer (4 s) had run out when the listener closed at 4 s.
            "  · 1 handshake expired on this listener (its SYN/ACK retransmits ran out unanswered)",
            "  · 2 × handshake ACK dropped: accept queue of nginx[4311] full (TCP_LISTEN_OVERFLOW)",
        ],
        "{text}"
    );
}

#[test]
fn the_stream_shows_drops_with_the_segments_own_addresses() {
    let recs = dropped_here();
    let text = stream(&recs[2..3], opts(View::Stream));
    let line = text.lines().nth(1).unwrap();
    assert!(
        line.contains("ffff888123456000 2251    python3")
            && line.contains(
                "10.0.0.5:51000        10.0.0.99:443         SYN dropped reason=NETFILTER_DROP"
            ),
        "{line}"
    );
    let json = stream(
        &recs[5..6],
        RenderOptions {
            json: true,
            ..opts(View::Stream)
        },
    );
    let v: serde_json::Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(
        (v["type"].as_str(), v["event"].as_str()),
        (Some("event"), Some("drop"))
    );
    assert_eq!(v["rx_sk"], "0xffff888123458000");
    assert_eq!(v["skb_sk"], serde_json::Value::Null);
    assert_eq!(v["source"], "127.0.0.1:45126");
    assert_eq!(v["reason"]["name"], "TCP_LISTEN_OVERFLOW");
    assert_eq!(v["segment_flags"], 0x10);
}
