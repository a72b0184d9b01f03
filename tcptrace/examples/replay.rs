//! Replay micro-benchmark: a synthetic connection-churn event stream (the
//! loopback sequences of `tracker/fixtures.rs`, with varying sockets, ports,
//! accepts and a few resets, refusals and retransmits) pushed through
//! owners → decode → [`Pipeline`] for each output mode, into a discarding
//! writer, as a live run without process filters handles them.
//!
//! ```text
//! cargo run --release -p tcptrace --example replay              # timings
//! cargo run --release -p tcptrace --example replay -- -n 50000 --reps 3
//! cargo run --release -p tcptrace --example replay -- --out DIR # outputs, to diff
//! cargo run --release -p tcptrace --example replay -- --only sockets --reps 1
//! ```
//!
//! `--out DIR` also writes colour/timestamp/wide variants; `--only none`
//! generates the events and nothing else (a baseline for instruction counts
//! under `valgrind --tool=callgrind`); `--only json-paths` compares the
//! direct JSON writer with serde's derives on the same lives and records,
//! in seconds of reader CPU per million events.
//!
//! Reported: ns per event (best of `--reps`), decode included, as the reader
//! does it (`Pipeline::raw` of a ring-buffer `Event`'s bytes,
//! with a `tick` every 20 ms of event time).

use std::{
    hint::black_box,
    io::{self, BufWriter, Write},
    path::PathBuf,
    time::Instant,
};

use tcptrace::{
    cgroups::Workload,
    decode::{AF_INET, AF_INET6, Decoder},
    kernel::ResetReasons,
    metrics::{DEFAULT_MAX_SERIES, Metrics},
    owners::Owners,
    render::{RenderOptions, View},
    session::Pipeline,
    snapshot::Seeds,
    tracker::TrackerOptions,
};
use tcptrace_common::{COMM_LEN, Event, Task, flag, kind};

// TCP states as the kernel numbers them.
const ESTABLISHED: u8 = 1;
const SYN_SENT: u8 = 2;
const SYN_RECV: u8 = 3;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const CLOSE: u8 = 7;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const LISTEN: u8 = 10;

const LISTENERS: u16 = 32;
const BASE_PORT: u16 = 8099;

fn task(pid: u32, comm: &[u8]) -> Task {
    let mut t = Task {
        pid,
        tgid: pid,
        cgroup_id: 4242,
        comm: [0; COMM_LEN],
    };
    t.comm[..comm.len()].copy_from_slice(comm);
    t
}

/// One socket's identity, as the events of its life carry it.
#[derive(Clone, Copy)]
struct Sock {
    skaddr: u64,
    sport: u16,
    dport: u16,
    owner: Option<Task>,
}

struct Gen {
    events: Vec<Event>,
    ipv6: bool,
    now: u64,
    client: Task,
    server: Task,
    swapper: Task,
}

impl Gen {
    fn ev(&mut self, s: Sock, kind: u8, ctx: Option<Task>, dt_ns: u64) -> &mut Event {
        self.now += dt_ns;
        let mut e = Event {
            ts_ns: self.now,
            skaddr: s.skaddr,
            kind,
            cpu: 1,
            family: if self.ipv6 { AF_INET6 } else { AF_INET },
            sport: s.sport,
            dport: s.dport,
            ..Event::default()
        };
        if self.ipv6 {
            e.saddr[15] = 1;
            e.daddr[15] = 1;
        } else {
            e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
            e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        }
        match ctx {
            Some(t) => e.context = t,
            None => {
                e.context = self.swapper;
                e.flags |= flag::SOFTIRQ;
            }
        }
        // Without process filters the kernel names no owner: the
        // pipeline's owner maps do (as live), except for accept(2), where
        // the acceptor is the owner and the kernel says so.
        if kind == kind::ACCEPT
            && let Some(o) = s.owner
        {
            e.owner = o;
            e.flags |= flag::OWNER_KNOWN;
        }
        self.events.push(e);
        self.events.last_mut().unwrap()
    }

    fn st(&mut self, s: Sock, old: u8, new: u8, ctx: Option<Task>) {
        let e = self.ev(s, kind::STATE, ctx, 3_000);
        e.oldstate = old;
        e.newstate = new;
        if new == CLOSE {
            e.flags |= flag::UNREAD_VALID;
        }
    }

    fn send_reset(&mut self, s: Sock, state: u8, reason: u32, ctx: Option<Task>) {
        let e = self.ev(s, kind::SEND_RESET, ctx, 1_000);
        e.newstate = state;
        e.value = reason;
        e.flags |= flag::REASON_VALID;
    }

    /// One loopback connection `i`: client and accepted child, handshake,
    /// then a close of one of a few kinds.
    fn connection(&mut self, i: u64) {
        // Now and then an odd name (escapes, invalid UTF-8, a trailing
        // no-break space, 16 bytes without NUL) or IPv6.
        const ODD: [&[u8]; 8] = [
            b"evil\x1b[31m\n",
            b"caf\xc3\xa9",
            b"bad\xff\xfeutf8",
            b"nbsp\xc2\xa0",
            b"0123456789abcdef",
            b"back\\slash",
            b"rlo\xe2\x80\xaex",
            b"\xf0\x9f\x92",
        ];
        let mut client = self.client;
        if i % 53 == 17 {
            client = task(2300 + (i % 7) as u32, ODD[(i / 53 % 8) as usize]);
        }
        self.ipv6 = i % 41 == 3;
        let (py, ng) = (Some(client), Some(self.server));
        let lport = BASE_PORT + (i % u64::from(LISTENERS)) as u16;
        let cport = 32768 + (i % 28000) as u16;
        // Slab addresses come back soon: skaddrs are reused.
        let slot = i % 4096;
        let c = Sock {
            skaddr: 0xffff_8881_0000_0000 + slot * 0x1000,
            sport: cport,
            dport: lport,
            owner: py,
        };
        let s = Sock {
            skaddr: 0xffff_8882_0000_0000 + slot * 0x1000,
            sport: lport,
            dport: cport,
            owner: ng,
        };
        self.now += 20_000;
        if i % 64 == 63 {
            // Refused: nothing listens there, a socketless RST answers.
            let c = Sock { dport: 9, ..c };
            self.st(Sock { sport: 0, ..c }, CLOSE, SYN_SENT, py);
            let rst = Sock {
                skaddr: 0,
                sport: 9,
                dport: cport,
                owner: None,
            };
            self.send_reset(rst, 0, 1, None);
            self.ev(c, kind::RECEIVE_RESET, None, 1_000);
            self.st(c, SYN_SENT, CLOSE, None);
            self.ev(c, kind::DESTROY_SOCK, py, 5_000);
            return;
        }
        // Handshake.
        self.st(Sock { sport: 0, ..c }, CLOSE, SYN_SENT, py);
        if i % 97 == 5 {
            self.ev(c, kind::RETRANSMIT_SKB, None, 1_000_000).newstate = SYN_SENT;
        }
        self.st(c, SYN_SENT, ESTABLISHED, py);
        self.st(s, LISTEN, SYN_RECV, None);
        self.st(s, SYN_RECV, ESTABLISHED, None);
        self.ev(s, kind::ACCEPT, ng, 2_000);
        match i % 16 {
            // SO_LINGER 0 on the server: RST.
            15 => {
                self.st(s, ESTABLISHED, CLOSE, ng);
                self.ev(c, kind::RECEIVE_RESET, None, 1_000);
                self.st(c, ESTABLISHED, CLOSE, None);
                self.send_reset(s, CLOSE, 14, ng);
                self.ev(s, kind::DESTROY_SOCK, ng, 1_000);
                self.ev(c, kind::DESTROY_SOCK, py, 5_000);
            }
            // The server closes first.
            7 | 11 => {
                self.st(s, ESTABLISHED, FIN_WAIT1, ng);
                self.st(c, ESTABLISHED, CLOSE_WAIT, None);
                self.st(c, CLOSE_WAIT, LAST_ACK, py);
                self.st(s, FIN_WAIT1, FIN_WAIT2, None);
                self.st(s, FIN_WAIT2, CLOSE, None);
                self.ev(s, kind::DESTROY_SOCK, None, 1_000);
                self.st(c, LAST_ACK, CLOSE, None);
                self.ev(c, kind::DESTROY_SOCK, None, 1_000);
            }
            // The client closes first (the churn workload's usual case).
            _ => {
                self.st(c, ESTABLISHED, FIN_WAIT1, py);
                self.st(s, ESTABLISHED, CLOSE_WAIT, None);
                self.st(s, CLOSE_WAIT, LAST_ACK, ng);
                self.st(c, FIN_WAIT1, FIN_WAIT2, None);
                self.st(c, FIN_WAIT2, CLOSE, None);
                self.ev(c, kind::DESTROY_SOCK, None, 1_000);
                self.st(s, LAST_ACK, CLOSE, None);
                self.ev(s, kind::DESTROY_SOCK, None, 1_000);
            }
        }
    }
}

/// About `n` events of connection churn behind 32 listeners.
fn churn(n: usize) -> Vec<Event> {
    let mut g = Gen {
        events: Vec::with_capacity(n + 64),
        ipv6: false,
        now: 5_000_000_000,
        client: task(2251, b"churn-client"),
        server: task(4311, b"churn-server"),
        swapper: task(0, b"swapper/1"),
    };
    for p in 0..LISTENERS {
        let l = Sock {
            skaddr: 0xffff_8883_0000_0000 + u64::from(p) * 0x1000,
            sport: BASE_PORT + p,
            dport: 0,
            owner: Some(g.server),
        };
        let ng = Some(g.server);
        let e = g.ev(l, kind::STATE, ng, 1_000);
        e.oldstate = CLOSE;
        e.newstate = LISTEN;
        e.daddr = [0; 16];
    }
    let mut i = 0;
    while g.events.len() < n {
        g.connection(i);
        i += 1;
    }
    g.events
}

const MODES: [(&str, View, bool); 5] = [
    ("sockets", View::Sockets, false),
    ("sockets-json", View::Sockets, true),
    ("stream", View::Stream, false),
    ("stream-json", View::Stream, true),
    // The daemon (`--view none --metrics`): the metric families only.
    ("metrics", View::None, false),
];

/// Output variants only written with `--out` (for diffing).
const EXTRA: [(&str, View, bool); 2] = [
    ("both-color-ts", View::Both, false),
    ("stream-wide", View::Stream, false),
];

fn replay<W: Write>(events: &[Event], decoder: &Decoder, view: View, json: bool, out: W) {
    replay_with(events, decoder, view, json, "", out)
}

fn replay_with<W: Write>(
    events: &[Event],
    decoder: &Decoder,
    view: View,
    json: bool,
    name: &str,
    out: W,
) {
    let render = RenderOptions {
        view,
        json,
        color: name.contains("color"),
        timestamp: name.contains("-ts"),
        wide: name.contains("wide"),
        wall_offset_ns: 1_700_000_000_000_000_000,
        own_netns: None,
    };
    // As a live run without process filters: owners kept here. On a
    // systemd host every owner's cgroup names a unit.
    let mut p = Pipeline::new(TrackerOptions::default(), render, out)
        .with_decoder(decoder.clone())
        .with_owners(Owners::new(Seeds::default()))
        .with_recorded_cgroups();
    if view == View::None {
        p = p.with_output(Metrics::new(DEFAULT_MAX_SERIES).sink());
    }
    p.workload(
        4242,
        Workload {
            unit: Some("churn.service".into()),
            container: None,
        },
    );
    let mut next_tick = events.first().map_or(0, |e| e.ts_ns);
    for e in events {
        // As the reader hands them over: the prefix the kernel writes.
        p.raw(black_box(e.record())).expect("write");
        if e.ts_ns >= next_tick {
            p.tick(e.ts_ns).expect("write");
            next_tick = e.ts_ns + 20_000_000;
        }
    }
    p.finish(None).expect("write");
}

fn main() -> io::Result<()> {
    let mut n = 200_000;
    let mut reps = 5;
    let mut out_dir: Option<PathBuf> = None;
    let mut only: Option<String> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-n" => n = args.next().and_then(|v| v.parse().ok()).expect("-n N"),
            "--reps" => reps = args.next().and_then(|v| v.parse().ok()).expect("--reps N"),
            "--out" => out_dir = args.next().map(PathBuf::from),
            "--only" => only = args.next(),
            "--bench" => {} // cargo bench passes it
            other => panic!("unknown argument {other}"),
        }
    }
    let events = churn(n);
    if only.as_deref() == Some("json-paths") {
        json_paths(&events, reps);
        return Ok(());
    }
    let decoder = Decoder::new(ResetReasons::from_pairs([
        (1, "NO_SOCKET"),
        (11, "TCP_ABORT_ON_CLOSE"),
        (14, "TCP_STATE"),
    ]));
    for (name, view, json) in MODES {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        if let Some(dir) = &out_dir {
            std::fs::create_dir_all(dir)?;
            let file = std::fs::File::create(dir.join(name))?;
            replay(&events, &decoder, view, json, BufWriter::new(file));
            continue;
        }
        let mut best = f64::INFINITY;
        for _ in 0..reps {
            let start = Instant::now();
            replay(
                &events,
                &decoder,
                view,
                json,
                BufWriter::with_capacity(64 * 1024, io::sink()),
            );
            let ns = start.elapsed().as_nanos() as f64 / events.len() as f64;
            best = best.min(ns);
        }
        println!("{name:<13} {best:8.1} ns/event  ({} events)", events.len());
    }
    if let Some(dir) = &out_dir {
        for (name, view, json) in EXTRA {
            let file = std::fs::File::create(dir.join(name))?;
            replay_with(&events, &decoder, view, json, name, BufWriter::new(file));
        }
    }
    Ok(())
}

/// The JSON lines, written by the direct writer and by serde's derives
/// (`render::json::reference`), timed on the same lives and records (the
/// tracker and classifier run once, untimed). Reported per million kernel
/// events: the sockets view writes one line per life, the stream view one
/// per record.
fn json_paths(events: &[Event], reps: usize) {
    use tcptrace::{classify::classify, render::json, tracker::Tracker};
    let decoder = Decoder::default();
    let records: Vec<_> = events
        .iter()
        .map(|e| decoder.decode(e).expect("decodable"))
        .collect();
    let mut tracker = Tracker::new(TrackerOptions::default());
    let mut lives = Vec::new();
    for r in &records {
        lives.extend(tracker.observe(r));
    }
    lives.extend(tracker.finish());
    let verdicts: Vec<_> = lives.iter().map(|life| classify(life)).collect();
    let best = |f: &dyn Fn() -> usize| {
        (0..reps.max(1))
            .map(|_| {
                let start = Instant::now();
                black_box(f());
                start.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let per_million = |secs: f64| secs * 1e6 / events.len() as f64;
    let sockets_direct = best(&|| {
        lives
            .iter()
            .zip(&verdicts)
            .map(|(l, v)| json::socket_line(l, v).map_or(0, |s| s.len()))
            .sum()
    });
    let sockets_serde = best(&|| {
        lives
            .iter()
            .zip(&verdicts)
            .map(|(l, v)| json::reference::socket_line(l, v).len())
            .sum()
    });
    let stream_direct = best(&|| {
        records
            .iter()
            .map(|r| json::record_line(r).map_or(0, |s| s.len()))
            .sum()
    });
    let stream_serde = best(&|| {
        records
            .iter()
            .map(|r| json::reference::record_line(r).len())
            .sum()
    });
    println!(
        "{} events, {} lives; seconds of CPU per million events (best of {reps})",
        events.len(),
        lives.len()
    );
    for (view, direct, serde) in [
        ("sockets-json", sockets_direct, sockets_serde),
        ("stream-json", stream_direct, stream_serde),
    ] {
        let (d, s) = (per_million(direct), per_million(serde));
        println!(
            "{view:<13} direct {d:.3} s/M  serde {s:.3} s/M  serde costs {:+.3} s/M{}",
            s - d,
            if s - d > 0.1 {
                "  (over the 0.1 s/M bar)"
            } else {
                ""
            }
        );
    }
}
