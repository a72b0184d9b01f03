//! Server-side handshake failures against the real kernel, each in a
//! network namespace of its own (created and removed by the test):
//!
//! - requests that expired: the clients' final ACKs are dropped by a rule,
//!   `tcp_synack_retries` is 1, so each request's SYN/ACK goes once more
//!   and the request is gone 3 s after the SYN, no child ever made;
//! - a listener with backlog 1 that never accepts: SYN cookies once its
//!   request queue is full, SYNs refused once its accept queue is, counted
//!   from the namespace's counters and the listener's own drop counter by
//!   tcptrace's binary and read from its summary.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    time::{Duration, Instant},
};

use tcptrace::{decode::Record, model::Tally};
use tcptrace_tests::{
    Cli, DEADLINE, connect_nowait, describe, listen_backlog, netns::Netns, paths::V4, prometheus,
    reserve_port, trace,
};

/// Drops every segment to `port` but SYNs, FINs and RSTs: handshakes are
/// answered, never completed.
fn drop_final_acks(ns: &Netns, port: u16) {
    ns.nft(&format!(
        "add table inet tt; \
         add chain inet tt in {{ type filter hook input priority 0; }}; \
         add rule inet tt in tcp dport {port} tcp flags & (syn | rst | fin) == 0 drop"
    ));
}

#[test]
fn requests_whose_final_ack_never_comes_expire_on_their_listener() {
    let (_reserved, port) = reserve_port(V4);
    let mut trace = trace(port);
    let ns = Netns::new("reqexp");
    ns.sysctl("net.ipv4.tcp_synack_retries", "1");
    drop_final_acks(&ns, port);
    let addr = SocketAddr::new(V4, port);
    const CLIENTS: usize = 2;
    let (listener, clients) = ns.enter(move || {
        let listener = listen_backlog(addr, 16);
        let clients: Vec<_> = (0..CLIENTS).map(|_| connect_nowait(addr)).collect();
        (listener, clients)
    });
    let me = std::process::id();
    // SYN/ACK retransmitted at 1 s, the request gone at 3 s, counted once
    // its due time (and a grace) has passed: about 5 s.
    let expired = trace.wait_for(
        "two requests expired on the test's listener",
        |r| {
            matches!(r, Record::RetransmitSynAck { .. })
                || matches!(r, Record::State { sock, .. } if sock.local.port() == port)
        },
        |t| {
            let mine: Vec<_> = t
                .tallies
                .iter()
                .filter_map(|x| match x {
                    Tally::RequestExpired(l) if l.listener.port() == port => Some(l.clone()),
                    _ => None,
                })
                .collect();
            (mine.len() >= CLIENTS).then_some(mine)
        },
    );
    for l in &expired {
        let owner = l.owner.unwrap_or_else(|| panic!("no owner: {l:?}"));
        assert_eq!(
            (owner.tgid, l.listener),
            (me, addr),
            "expected the test's listener {addr} owned by {me}, closest seen: {l:?}"
        );
    }
    let retransmits = trace
        .records
        .iter()
        .filter(|r| matches!(r, Record::RetransmitSynAck { sock } if sock.local.port() == port))
        .count();
    assert_eq!(
        retransmits,
        CLIENTS,
        "one SYN/ACK retransmit per request (tcp_synack_retries 1); seen: {:#?}",
        trace.records.iter().map(describe).collect::<Vec<_>>()
    );
    // No child was ever made.
    assert!(
        !trace
            .records
            .iter()
            .any(|r| matches!(r, Record::State { sock, old, .. }
            if sock.local.port() == port && old.name() == "LISTEN")),
        "a child appeared: {:#?}",
        trace.records.iter().map(describe).collect::<Vec<_>>()
    );
    drop((listener, clients));
}

/// The namespace's inode (what tcptrace names it by).
fn inode_of(ns: &Netns) -> u64 {
    std::fs::metadata(format!("/run/netns/{}", ns.name))
        .unwrap()
        .ino()
}

#[test]
fn a_full_listener_sends_syn_cookies_and_refuses_syns_and_the_summary_counts_them() {
    let (_reserved, port) = reserve_port(V4);
    let ns = Netns::new("accfull");
    let netns = inode_of(&ns);
    let port_arg = port.to_string();
    let cli = Cli::start(
        &["--port", &port_arg, "--metrics", "127.0.0.1:0"],
        std::process::Stdio::null(),
    );
    let addr = SocketAddr::new(V4, port);
    // 1. Handshakes never completed fill the request queue (backlog 1):
    //    later SYNs are answered with cookies.
    drop_final_acks(&ns, port);
    let (listener, mut held) = ns.enter(move || {
        let listener = listen_backlog(addr, 1);
        let held: Vec<_> = (0..4).map(|_| connect_nowait(addr)).collect();
        (listener, held)
    });
    ns.nft("delete table inet tt");
    // 2. The listener never accepts: once two children fill its accept
    //    queue, every SYN (and each retransmit of it) is refused.
    let late = ns.enter(move || (0..4).map(|_| connect_nowait(addr)).collect::<Vec<_>>());
    held.extend(late);
    // The sampler reads the counters once a second: let two samples pass
    // while the refused SYNs are retransmitted.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(2500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The fleet's view: the same counts in the metrics, while it runs.
    let metrics = prometheus::get(cli.metrics_addr(), "/metrics", None)
        .expect("a scrape")
        .body;
    let sample = |name: &str, labels: &str| {
        prometheus::samples(&metrics, name)
            .into_iter()
            .find(|(l, _)| *l == labels)
            .map(|(_, v)| v)
    };
    assert!(
        sample(
            "tcptrace_listener_failures_total",
            r#"{kind="listen_drop"}"#
        )
        .is_some_and(|v| v >= 1.0),
        "listen drops in the metrics: {metrics}"
    );
    assert!(
        sample("tcptrace_syn_cookies_total", r#"{result="sent"}"#).is_some_and(|v| v >= 1.0),
        "SYN cookies in the metrics: {metrics}"
    );
    cli.signal(libc::SIGINT);
    let (code, summary, stderr) = cli.exit_within(DEADLINE);
    drop((listener, held));
    assert_eq!(code, Some(0), "{stderr:#?}");
    let s = &summary["summary"];
    let me = std::process::id();
    let owner_suffix = format!("[{me}]");
    let listeners = s["listeners"]["by_listener"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let ours = listeners
        .iter()
        .find(|l| l["listener"] == addr.to_string().as_str());
    let ours = ours.unwrap_or_else(|| {
        panic!("expected the listener {addr} with listen drops; closest seen: {listeners:#?}")
    });
    assert!(
        ours["owner"]
            .as_str()
            .is_some_and(|o| o.ends_with(&owner_suffix)),
        "expected owner …{owner_suffix}, seen {ours}"
    );
    assert_eq!(ours["netns"], netns, "{ours}");
    assert!(
        ours["listen_drops"].as_u64().is_some_and(|n| n >= 1),
        "expected ≥ 1 refused segment on {addr}, seen {ours}"
    );
    let n = &s["netns"][netns.to_string()];
    assert!(
        n["syncookies_sent"].as_u64().is_some_and(|c| c >= 1),
        "expected ≥ 1 SYN cookie in netns {netns}; seen {n} (all: {})",
        s["netns"]
    );
    assert!(
        n["listen_overflows"].as_u64().is_some_and(|c| c >= 1),
        "expected ≥ 1 listen overflow in netns {netns}; seen {n}"
    );
    let text = stderr.join("\n");
    assert!(
        text.contains(&format!("  netns {netns}: ")),
        "the summary names the namespace: {text}"
    );
}
