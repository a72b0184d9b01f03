//! `--metrics`: Prometheus metrics, one more [`Output`] of the pipeline.
//!
//! Counted per finished socket and per tick, never per event: a host's
//! event rate costs the metrics nothing, only its rate of finished sockets
//! does, and that without allocating once the label values have been seen
//! (see [`labels`]). Labels carry codes — the verdict's kinds
//! (`close="reset_received"`), the kernel's RST reason names
//! (`reason="NO_SOCKET"`), state names — never words for people.
//!
//! The per-service families (by process name, systemd unit, container)
//! take at most `--metrics-max-series` values per label; the rest are
//! counted under `other`, and how many sockets went there is counted in
//! `tcptrace_metrics_label_overflow_total`. Every other label has a fixed,
//! small set of values, so the series, and the memory, stay bounded however
//! long tcptrace runs.

mod handles;
pub mod health;
pub mod labels;
pub mod server;
#[cfg(test)]
mod tests;

use std::{io, sync::Arc};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::{Registry, Unit},
};

pub use self::server::{BindError, MetricsListener, parse_addr};
use self::{
    handles::Handles,
    health::Health,
    labels::{Bounded, Labels, UNKNOWN, Value},
};
use crate::{
    classify::{Close, Incomplete, Verdict},
    decode::{Record, ResetReason, TcpState},
    input::InputGauge,
    loader::Tracer,
    output::OutputStats,
    pipeline::Output,
    summary::{NetnsFailures, Summary},
    tracker::{SocketLife, TrackerStats},
};

/// Default `--metrics-max-series`.
pub const DEFAULT_MAX_SERIES: usize = 50;
/// Label values of the kernel's own sets (RST reasons, signal names):
/// finite in the kernel, bounded here anyway.
const MAX_KERNEL_VALUES: usize = 256;

/// Handshakes: loopback takes tens of µs, a LAN a few hundred, SYN
/// retransmissions 1 s, 3 s, 7 s, …
const HANDSHAKE_BUCKETS: [f64; 13] = [
    10e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 5e-3, 25e-3, 100e-3, 500e-3, 1.5, 4.0, 16.0,
];
/// Lifetimes: from a refused connect (µs) to a connection held for hours.
const LIFETIME_BUCKETS: [f64; 14] = [
    100e-6, 1e-3, 10e-3, 50e-3, 0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

type Counters<const N: usize> = Family<Labels<N>, Counter>;
type Histograms = Family<Labels<1>, Histogram, fn() -> Histogram>;

/// The metric families: handles shared by the sink (which counts) and the
/// registry (which the server encodes).
#[derive(Clone)]
struct Families {
    sockets: Counters<2>,
    resets_sent: Counters<1>,
    resets_received: Counters<1>,
    handshake_timeouts: Counter,
    closes_by_exit: Counter,
    closes_by_signal: Counters<1>,
    incomplete: Counters<1>,
    handshake: Histograms,
    lifetime: Histograms,
    /// (sockets by close, resets sent by reason) per process, unit, container.
    services: [(Counters<2>, Counters<2>); 3],
    label_overflow: Counters<1>,
    /// Listeners' failed handshakes, by kind; namespaces' SYN cookies.
    listener_failures: Counters<1>,
    syn_cookies: Counters<1>,
}

/// The kinds of `tcptrace_listener_failures_total`.
const LISTENER_FAILURES: [&str; 4] = [
    "synack_retransmit",
    "request_expired",
    "accept_queue_overflow",
    "listen_drop",
];

/// The per-service labels, in the order of [`Families::services`].
const SERVICES: [(&str, &str); 3] = [
    (
        "process",
        "the owner's process name (comm), as the kernel has it",
    ),
    ("unit", "the owner's systemd unit, from its cgroup"),
    (
        "container",
        "the owner's container (the first 12 digits of its id), from its cgroup",
    ),
];

fn handshake_histogram() -> Histogram {
    Histogram::new(HANDSHAKE_BUCKETS)
}

fn lifetime_histogram() -> Histogram {
    Histogram::new(LIFETIME_BUCKETS)
}

impl Families {
    fn register(registry: &mut Registry) -> Families {
        let f = Families {
            sockets: Family::default(),
            resets_sent: Family::default(),
            resets_received: Family::default(),
            handshake_timeouts: Counter::default(),
            closes_by_exit: Counter::default(),
            closes_by_signal: Family::default(),
            incomplete: Family::default(),
            handshake: Family::new_with_constructor(handshake_histogram),
            lifetime: Family::new_with_constructor(lifetime_histogram),
            services: Default::default(),
            label_overflow: Family::default(),
            listener_failures: Family::default(),
            syn_cookies: Family::default(),
        };
        registry.register(
            "sockets",
            "Sockets reported, each once (when its life ended, or still open when tracing \
             stopped), by open path and close path: the kinds of the JSON verdict",
            f.sockets.clone(),
        );
        registry.register(
            "resets_sent",
            "RSTs this host sent, by the kernel's reason (enum sk_rst_reason; unknown before \
             Linux 6.10). NO_SOCKET: a segment for a port nobody listens on (a refused \
             connection when it was a SYN)",
            f.resets_sent.clone(),
        );
        registry.register(
            "resets_received",
            "RSTs received, by the state the socket was in when it arrived",
            f.resets_received.clone(),
        );
        registry.register(
            "handshake_timeouts",
            "Connects that ended in SYN_SENT after SYN retransmissions, with no RST",
            f.handshake_timeouts.clone(),
        );
        registry.register(
            "closes_by_exit",
            "Sockets closed by the exit of the process that held them",
            f.closes_by_exit.clone(),
        );
        registry.register(
            "closes_by_signal",
            "Sockets closed by the exit of a process a signal ended, by signal",
            f.closes_by_signal.clone(),
        );
        registry.register(
            "sockets_incomplete",
            "Sockets reported with a partial account, by why (started_mid_life, evicted, \
             events_lost, gap); a socket may count under several",
            f.incomplete.clone(),
        );
        registry.register_with_unit(
            "handshake",
            "Handshake time by side: client SYN_SENT to ESTABLISHED; server from the final \
             ACK's child socket to ESTABLISHED (tiny: the SYN belongs to a request sock)",
            Unit::Seconds,
            f.handshake.clone(),
        );
        registry.register_with_unit(
            "socket_lifetime",
            "Lifetime of sockets seen from their open to their close, by side",
            Unit::Seconds,
            f.lifetime.clone(),
        );
        for ((label, what), (sockets, resets)) in SERVICES.iter().zip(&f.services) {
            registry.register(
                format!("{label}_sockets"),
                format!(
                    "Sockets reported, by {what} (at most --metrics-max-series values, \
                     `unknown` among them when not known, then `other`) and close path"
                ),
                sockets.clone(),
            );
            registry.register(
                format!("{label}_resets_sent"),
                format!("RSTs sent, by {what} and the kernel's reason"),
                resets.clone(),
            );
        }
        // Every kind from the start, at 0: a rate over them works from the
        // first scrape, and the alerts name series that exist.
        for kind in LISTENER_FAILURES {
            let _ = f.listener_failures.get_or_create(&[("kind", code(kind))]);
        }
        for result in ["sent", "failed"] {
            let _ = f.syn_cookies.get_or_create(&[("result", code(result))]);
        }
        registry.register(
            "listener_failures",
            "Handshakes that failed on this host's listeners, by kind: synack_retransmit \
             (a SYN/ACK sent again), request_expired (its retransmits ran out with no final \
             ACK), accept_queue_overflow (a final ACK dropped: accept queue full), \
             listen_drop (segments a listener dropped, SYNs refused by a full accept queue \
             among them; sampled each second from its own counter)",
            f.listener_failures.clone(),
        );
        registry.register(
            "syn_cookies",
            "SYN cookies sent (the SYN queue was full) and cookies that failed to validate, \
             summed over the network namespaces (the kernel ties them to no listener)",
            f.syn_cookies.clone(),
        );
        registry.register(
            "metrics_label_overflow",
            "Sockets counted under `other` because a per-service label had \
             --metrics-max-series values already, by label",
            f.label_overflow.clone(),
        );
        f
    }
}

/// `--metrics-max-series`: 1 to 10000 values per label.
pub fn parse_max_series(s: &str) -> Result<usize, String> {
    let wanted = "a number of label values from 1 to 10000";
    match s.parse::<usize>() {
        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
        Ok(n) => Err(format!("{n} is out of range: give {wanted}")),
        Err(_) => Err(format!("`{s}` is not {wanted}")),
    }
}

/// The metrics of a run: the registry the server encodes, tcptrace's
/// health, and the sink that counts finished sockets.
pub struct Metrics {
    registry: Arc<Registry>,
    health: Arc<Health>,
    families: Families,
    max_series: usize,
}

impl Metrics {
    /// `max_series`: values per per-service label before `other`.
    pub fn new(max_series: usize) -> Metrics {
        let mut registry = Registry::with_prefix("tcptrace");
        let families = Families::register(&mut registry);
        let health = Arc::new(Health::default());
        registry.register_collector(Box::new(health.clone()));
        Metrics {
            registry: Arc::new(registry),
            health,
            families,
            max_series,
        }
    }

    /// Serves `/metrics` on `listener` from now on (on this runtime).
    pub fn serve(&self, listener: MetricsListener) -> io::Result<()> {
        listener.serve(self.registry.clone())
    }

    /// The pipeline output that counts finished sockets.
    pub fn sink(&self) -> Box<dyn Output> {
        Box::new(MetricsSink::new(
            self.families.clone(),
            self.health.clone(),
            self.max_series,
        ))
    }

    /// The ring and the input thread's backlog, watched from now on.
    pub fn watch_input(&self, gauge: InputGauge, ring_bytes: u32) {
        self.health.watch_input(gauge, ring_bytes);
    }

    /// Reads the tracer's counters and the outputs' drops (at most once a
    /// second: call it at every tick).
    pub fn read_health(&self, tracer: &Tracer, stdout: &OutputStats, recording_dropped: u64) {
        self.health.read(tracer, stdout, recording_dropped);
    }

    /// The registry, for tests that encode it.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// Counts each finished socket into the families.
/// The sink's own handles to what it counts per finished socket (see
/// `handles.rs`).
#[derive(Default)]
struct SinkHandles {
    sockets: Handles<Labels<2>, Counter>,
    resets_sent: Handles<Labels<1>, Counter>,
    resets_received: Handles<Labels<1>, Counter>,
    closes_by_signal: Handles<Labels<1>, Counter>,
    incomplete: Handles<Labels<1>, Counter>,
    handshake: Handles<Labels<1>, Histogram>,
    lifetime: Handles<Labels<1>, Histogram>,
    services: [(Handles<Labels<2>, Counter>, Handles<Labels<2>, Counter>); 3],
}

struct MetricsSink {
    f: Families,
    h: SinkHandles,
    /// The summary's sampled and inferred counts at the last tick: metrics
    /// count what they added since.
    counted: (u64, u64, NetnsFailures),
    health: Arc<Health>,
    /// process, unit, container: at most `max_series` values each.
    services: [Bounded; 3],
    reasons: Bounded,
    signals: Bounded,
}

const fn code(s: &'static str) -> Value {
    Value::Code(s)
}

impl MetricsSink {
    fn new(f: Families, health: Arc<Health>, max_series: usize) -> MetricsSink {
        MetricsSink {
            f,
            h: SinkHandles::default(),
            counted: (0, 0, NetnsFailures::default()),
            health,
            services: std::array::from_fn(|_| Bounded::new(max_series)),
            reasons: Bounded::new(MAX_KERNEL_VALUES),
            signals: Bounded::new(MAX_KERNEL_VALUES),
        }
    }

    /// The kernel's reason name; its number when it has no name.
    fn reason(&mut self, r: Option<&ResetReason>) -> Value {
        match r {
            None => code(UNKNOWN),
            Some(ResetReason {
                name: Some(name), ..
            }) => self.reasons.get(name).0,
            Some(ResetReason {
                code: n,
                name: None,
            }) => {
                let mut buf = [0u8; 32];
                self.reasons.get(labels::numbered(&mut buf, "code_", *n)).0
            }
        }
    }

    /// The per-service label values of `life`'s owner: process name, unit,
    /// container (`None`: not known, not counted there).
    fn services_of(&mut self, life: &SocketLife) -> [Option<Value>; 3] {
        let w = life.workload.as_ref();
        let raw: [Option<&str>; 3] = [
            Some(life.owner.as_ref().map_or(UNKNOWN, |o| &*o.comm)),
            w.and_then(|w| w.unit.as_deref()),
            w.and_then(|w| w.container.as_deref())
                .map(|c| c.get(..12).unwrap_or(c)),
        ];
        let mut out: [Option<Value>; 3] = Default::default();
        for (i, value) in raw.into_iter().enumerate() {
            let Some(value) = value else { continue };
            // `unknown` takes a place like any name: the series of a
            // label never exceed its bound plus `other`.
            let (v, overflowed) = self.services[i].get(value);
            if overflowed {
                self.f
                    .label_overflow
                    .get_or_create(&[("label", code(SERVICES[i].0))])
                    .inc();
            }
            out[i] = Some(v);
        }
        out
    }
}

/// The verdict's `incomplete` codes (as the JSON names them).
fn incomplete_code(i: Incomplete) -> &'static str {
    match i {
        Incomplete::StartedMidLife => "started_mid_life",
        Incomplete::Evicted => "evicted",
        Incomplete::EventsLost => "events_lost",
        Incomplete::Gap => "gap",
    }
}

/// The state an RST arrived in; the kernel reports some as CLOSE, having
/// closed first: then the state the socket left.
fn received_in(state: Option<TcpState>, life: &SocketLife) -> &'static str {
    match state {
        Some(TcpState::Close) | None => life.close_step().map(|s| s.old).or(state),
        other => other,
    }
    .map_or(UNKNOWN, TcpState::name)
}

impl MetricsSink {
    fn listener_failure(&self, kind: &'static str, n: u64) {
        if n > 0 {
            let labels = [("kind", code(kind))];
            self.f.listener_failures.get_or_create(&labels).inc_by(n);
        }
    }
}

impl Output for MetricsSink {
    /// SYN/ACK retransmits and accept-queue overflows as they happen (the
    /// summary counts them per listener only when a listener's life ends).
    fn record(&mut self, record: &Record) -> io::Result<()> {
        match record {
            Record::RetransmitSynAck { .. } => self.listener_failure("synack_retransmit", 1),
            Record::Drop(d) if d.reason.is_listen_overflow() => {
                self.listener_failure("accept_queue_overflow", 1);
            }
            _ => {}
        }
        Ok(())
    }

    fn finished(&mut self, life: &SocketLife, verdict: &Verdict) -> io::Result<()> {
        let (f, h) = (&self.f, &mut self.h);
        let close = code(verdict.close.kind());
        h.sockets
            .get(
                &f.sockets,
                [
                    ("open", code(verdict.open.kind())),
                    ("close", close.clone()),
                ],
            )
            .inc();
        if matches!(verdict.close, Close::HandshakeTimeout { .. }) {
            f.handshake_timeouts.inc();
        }
        for r in &life.resets_received {
            let state = code(received_in(r.state, life));
            h.resets_received
                .get(&f.resets_received, [("state", state)])
                .inc();
        }
        let side = match verdict.open.kind() {
            "active" => Some("client"),
            "passive" => Some("server"),
            _ => None,
        };
        if let Some(side) = side {
            let side = [("side", code(side))];
            if let Some(ns) = verdict.open.handshake_ns() {
                h.handshake
                    .get(&f.handshake, side.clone())
                    .observe(ns as f64 / 1e9);
            }
            // Whole lives only: opened and closed while traced.
            if life.state == Some(TcpState::Close) && verdict.incomplete.is_empty() {
                let secs = life.duration_ns as f64 / 1e9;
                h.lifetime.get(&f.lifetime, side).observe(secs);
            }
        }
        if let Some(exit) = &life.exit {
            f.closes_by_exit.inc();
            if let Some(sig) = &exit.signal {
                let (signal, _) = self.signals.get(&sig.name);
                h.closes_by_signal
                    .get(&f.closes_by_signal, [("signal", signal)])
                    .inc();
            }
        }
        for &i in &verdict.incomplete {
            let why = [("reason", code(incomplete_code(i)))];
            h.incomplete.get(&f.incomplete, why).inc();
        }
        let services = self.services_of(life);
        for r in &life.resets_sent {
            let reason = self.reason(r.reason.as_ref());
            let (f, h) = (&self.f, &mut self.h);
            h.resets_sent
                .get(&f.resets_sent, [("reason", reason.clone())])
                .inc();
            for (i, service) in services.iter().enumerate() {
                if let Some(s) = service {
                    let labels = [(SERVICES[i].0, s.clone()), ("reason", reason.clone())];
                    h.services[i].1.get(&f.services[i].1, labels).inc();
                }
            }
        }
        let (f, h) = (&self.f, &mut self.h);
        for (i, service) in services.into_iter().enumerate() {
            if let Some(s) = service {
                let labels = [(SERVICES[i].0, s), ("close", close.clone())];
                h.services[i].0.get(&f.services[i].0, labels).inc();
            }
        }
        Ok(())
    }

    fn tick(&mut self, _now_ns: u64, tracker: &TrackerStats, summary: &Summary) -> io::Result<()> {
        self.health.tracker(tracker);
        let l = &summary.listeners.total;
        let n = summary.netns_total;
        let (expired, drops, netns) = self.counted;
        self.listener_failure(
            "request_expired",
            l.requests_expired.saturating_sub(expired),
        );
        self.listener_failure("listen_drop", l.listen_drops.saturating_sub(drops));
        for (result, now, before) in [
            ("sent", n.syncookies_sent, netns.syncookies_sent),
            ("failed", n.syncookies_failed, netns.syncookies_failed),
        ] {
            if now > before {
                let labels = [("result", code(result))];
                self.f
                    .syn_cookies
                    .get_or_create(&labels)
                    .inc_by(now - before);
            }
        }
        self.counted = (l.requests_expired, l.listen_drops, n);
        Ok(())
    }
}
