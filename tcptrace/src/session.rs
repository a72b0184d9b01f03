//! Wires the pipeline together: tracer → decode → tracker → classify →
//! render, driven by the ring buffer's readiness and a short drain timer.

use std::{
    collections::HashSet,
    io::{self, Write},
    net::SocketAddr,
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{Instant, MissedTickBehavior},
};

use tcptrace_common::filter;

use crate::{
    cgroups::CgroupNames,
    classify::classify,
    cli::Args,
    command::{self, CommandCgroup},
    counters::Counters,
    decode::Record,
    input::Batch,
    loader::TraceOptions,
    loader::Tracer,
    output::OutputQueue,
    render::write_snapshot,
    render::{RenderOptions, Renderer, write_summary},
    snapshot::{Holder, OpenSocket, Snapshot},
    sockdiag,
    summary::Summary,
    tracker::{SocketLife, Tracker, TrackerOptions},
};

/// Without a wakeup per event, the reader drains on this timer (the kernel
/// wakes it early only when a backlog builds).
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// After `-- COMMAND` exits: time for its last events (lives linger 200 ms).
const COMMAND_GRACE: Duration = Duration::from_millis(400);

/// How long a stalled reader of stdout gets, at exit, to take the rest.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Lost-event warnings are rate-limited to one a second.
const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC: adds to an event time to get wall time.
pub fn wall_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}

/// Records in, rendered sockets and transitions out; the summary on the side.
pub struct Pipeline<W: Write> {
    tracker: Tracker,
    /// The owners' units and containers.
    cgroups: CgroupNames,
    renderer: Renderer<W>,
    summary: Summary,
    /// Monotonic time of the latest loss: lives that began before it may
    /// miss events and are marked incomplete.
    last_loss_ns: Option<u64>,
}

impl<W: Write> Pipeline<W> {
    pub fn new(tracker: TrackerOptions, render: RenderOptions, out: W) -> Self {
        Pipeline {
            tracker: Tracker::new(tracker),
            cgroups: CgroupNames::new(),
            renderer: Renderer::new(out, render),
            summary: Summary::default(),
            last_loss_ns: None,
        }
    }

    pub fn record(&mut self, record: &Record) -> io::Result<()> {
        self.renderer.transition(record)?;
        for life in self.tracker.observe(record) {
            self.finished(life)?;
        }
        Ok(())
    }

    /// Reports lives whose late events can no longer come.
    pub fn tick(&mut self, now_ns: u64) -> io::Result<()> {
        for life in self.tracker.expire(now_ns) {
            self.finished(life)?;
        }
        self.renderer.flush()
    }

    pub fn note_loss(&mut self, now_ns: u64) {
        self.last_loss_ns = Some(now_ns);
    }

    /// At exit: sockets still open are reported as such, unless `alive`
    /// (the kernel's own sockets, when they could be listed) says they are
    /// gone: those closed unseen.
    pub fn finish(&mut self, alive: Option<&HashSet<(SocketAddr, SocketAddr)>>) -> io::Result<()> {
        for life in self.tracker.finish_against(alive) {
            self.finished(life)?;
        }
        self.renderer.flush()
    }

    fn finished(&mut self, mut life: SocketLife) -> io::Result<()> {
        if self.last_loss_ns.is_some_and(|loss| life.start_ns <= loss) {
            life.events_lost = true;
        }
        if let Some(owner) = life.owner {
            life.workload = self.cgroups.resolve(owner.cgroup_id).cloned();
        }
        let verdict = classify(&life);
        self.summary.add(&life, &verdict);
        self.renderer.socket(&life, &verdict)
    }

    /// Does the tracker believe any socket is still open?
    pub fn has_open_lives(&self) -> bool {
        self.tracker.stats().tracked > 0
    }

    /// The renderers' output.
    pub fn output(&mut self) -> &mut W {
        self.renderer.output()
    }

    /// The counts of every socket reported so far, for any output.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn write_summary(&self, out: &mut dyn Write, counters: &Counters) -> io::Result<()> {
        write_summary(out, &self.summary, counters, &self.tracker.stats())
    }
}

/// Runs tcptrace as the CLI does, until a stop signal, `--duration`, or
/// the end of `-- COMMAND`, whose exit code it then returns.
pub async fn run(args: &Args) -> anyhow::Result<Option<u8>> {
    let mut trace = args.trace_options()?;
    // `-- COMMAND`: a cgroup of its own, made before anything is loaded.
    let command_cgroup = if args.command.is_empty() {
        None
    } else {
        let cg = CommandCgroup::create().context("preparing to run the command")?;
        trace.filter.cgroup_id = cg.id;
        trace.filter.flags |= filter::CGROUP;
        Some(cg)
    };
    // What existed before tcptrace: owners for services started long ago.
    let snapshot = match Snapshot::take() {
        Ok(s) => Some(s),
        Err(e) => {
            eprintln!(
                "tcptrace: note: cannot list the sockets open at start ({e}): \
                 those stay owner-unknown"
            );
            None
        }
    };
    if let Some(s) = &snapshot {
        trace.seeds = s.seeds(|h| holder_passes(&trace, h));
    }
    let mut tracer = Tracer::start(&trace).context("starting the tracer")?;
    if args.snapshot
        && let Some(s) = &snapshot
    {
        // Where the report goes: stderr with a command (its stdout is its own).
        let mut out: Box<dyn Write> = if command_cgroup.is_some() {
            Box::new(io::stderr().lock())
        } else {
            Box::new(io::stdout().lock())
        };
        write_snapshot(&mut out, s, args.json, |o| open_socket_passes(&trace, o))
            .context("writing the snapshot")?;
        out.flush().context("writing the snapshot")?;
    }
    // The kernel has its seeds: the listing (every socket on the host) and
    // the seeds are not kept for the whole run.
    drop(snapshot);
    trace.seeds = Default::default();
    for missing in &tracer.layout().missing {
        let tp = &missing.tracepoint;
        let why = if missing.unexpected_args {
            "has arguments tcptrace does not know".to_owned()
        } else {
            format!("is missing (Linux {})", tp.since)
        };
        eprintln!(
            "tcptrace: note: this kernel's {}:{} tracepoint {why}: no {}",
            tp.group, tp.name, tp.purpose
        );
    }
    for field in &tracer.layout().missing_fields {
        eprintln!("tcptrace: note: this kernel's BTF lacks a field: no {field}");
    }

    let to_terminal = if command_cgroup.is_some() {
        io::IsTerminal::is_terminal(&io::stderr())
    } else {
        io::IsTerminal::is_terminal(&io::stdout())
    };
    let render = RenderOptions {
        view: args.view,
        json: args.json,
        color: args.color(to_terminal),
        timestamp: args.timestamp,
        wide: args.wide,
        wall_offset_ns: wall_offset_ns(),
        own_netns: sockdiag::own_netns_inode()
            .ok()
            .and_then(|n| u32::try_from(n).ok()),
    };
    // Rendering never waits for stdout's reader: see output.rs.
    // With a command, its stdout stays its own: the report goes to stderr.
    let out = if command_cgroup.is_some() {
        OutputQueue::stderr()
    } else {
        OutputQueue::stdout()
    }
    .context("starting the output thread")?;
    let mut pipeline = Pipeline::new(args.tracker_options(), render, out);

    // The ring is emptied on a thread of its own; batches come here.
    let mut input = tracer.live_input().context("starting the ring reader")?;
    let on = |kind: SignalKind, name: &str| {
        signal(kind).with_context(|| format!("installing the {name} handler"))
    };
    // INT, TERM, HUP and QUIT all stop cleanly (summary, open sockets);
    // USR1 prints the summary so far and goes on.
    let mut sigint = on(SignalKind::interrupt(), "SIGINT")?;
    let mut sigterm = on(SignalKind::terminate(), "SIGTERM")?;
    let mut sighup = on(SignalKind::hangup(), "SIGHUP")?;
    let mut sigquit = on(SignalKind::quit(), "SIGQUIT")?;
    let mut sigusr1 = on(SignalKind::user_defined1(), "SIGUSR1")?;
    let mut drain_timer = tokio::time::interval(DRAIN_INTERVAL);
    drain_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = args.duration().and_then(|d| Instant::now().checked_add(d));
    let mut loss = LossReporter::default();

    // The command starts once everything is attached.
    let (command_tx, mut command_done) = tokio::sync::oneshot::channel();
    let mut command_status = None;
    if let Some(cg) = &command_cgroup {
        let mut child = command::spawn(&args.command, cg).context("running the command")?;
        std::thread::spawn(move || {
            let _ = command_tx.send(child.wait());
        });
    } else {
        drop(command_tx);
    }
    let mut deadline = deadline;

    eprintln!(
        "tcptrace: tracing TCP sockets ({} view{}); Ctrl-C to stop",
        format!("{:?}", args.view).to_lowercase(),
        if args.json { ", JSON" } else { "" }
    );

    let mut output_error = None;
    loop {
        // A slow reader of stdout holds processing back; the input thread
        // goes on emptying the ring meanwhile.
        let backlogged = pipeline.output().backlogged();
        let woke = tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
            _ = sigquit.recv() => break,
            _ = sigusr1.recv() => {
                if !args.no_summary {
                    let counters = tracer.counters();
                    let mut err = io::stderr().lock();
                    let _ = writeln!(err, "tcptrace: SIGUSR1: the summary so far");
                    let _ = pipeline.write_summary(&mut err, &counters);
                }
                false
            }
            _ = sleep_until_deadline(deadline) => break,
            status = &mut command_done, if command_status.is_none() && command_cgroup.is_some() => {
                let status = status.context("waiting for the command")?.context("waiting for the command")?;
                command_status = Some(command::exit_code(status));
                // What its sockets did last (a close, late RSTs) still has
                // to arrive: a short grace, then stop as on Ctrl-C.
                deadline = Some(Instant::now() + COMMAND_GRACE);
                false
            }
            batch = input.next(), if !backlogged => {
                let Some(batch) = batch else { break };
                if let Err(e) = process(&mut tracer, &mut pipeline, &batch) {
                    output_error = Some(e);
                    break;
                }
                false
            }
            _ = drain_timer.tick() => true,
        };
        if pipeline.output().closed() {
            // The reader went away (`| head`): a normal way to stop.
            break;
        }
        let mut result = Ok(());
        if woke {
            let now = monotonic_ns();
            if loss.check(&tracer, false) {
                pipeline.note_loss(now);
            }
            result = pipeline.tick(now);
        }
        if let Err(e) = result {
            output_error = Some(e);
            break;
        }
    }

    // Detach first so nothing is produced after the last drain: then
    // produced == received + lost holds exactly.
    tracer.detach();
    input.stop();
    let mut final_result = Ok(());
    while let Some(batch) = input.try_next() {
        if final_result.is_ok() {
            final_result = process(&mut tracer, &mut pipeline, &batch);
        }
    }
    if loss.check(&tracer, true) {
        pipeline.note_loss(monotonic_ns());
    }
    if final_result.is_ok() {
        let alive = pipeline.has_open_lives().then(kernel_sockets).flatten();
        final_result = pipeline.finish(alive.as_ref());
    }
    // A stalled reader gets a second to take the rest; then it is given up.
    let output = pipeline.output().finish(OUTPUT_GRACE);
    let counters = tracer.counters();
    if !args.no_summary {
        let mut err = io::stderr().lock();
        pipeline.write_summary(&mut err, &counters)?;
        if output.dropped_lines > 0 || output.dropped_bytes > 0 {
            writeln!(
                err,
                "  output:     {} lines ({} bytes) dropped: the reader of stdout did not keep up \
                 (blocked for {:.1} s); the ring buffer was drained all along",
                output.dropped_lines,
                output.dropped_bytes,
                output.blocked_ms as f64 / 1000.0
            )?;
        }
        // The counters, and what became of the output.
        let mut line = serde_json::to_value(counters)?;
        line["output"] = serde_json::to_value(output)?;
        writeln!(err, "tcptrace-summary {line}")?;
    }
    let output_error = output_error.or(pipeline.output().take_error());
    drop(command_cgroup);
    match output_error.or(final_result.err()) {
        // A closed pipe (`| head`) is a normal way to stop reading.
        Some(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(command_status),
        Some(e) => Err(e).context("writing output"),
        None => Ok(command_status),
    }
}

/// Does a process holding a socket at start pass the process filters? (A
/// socket held by several is seeded with the one that passes.)
fn holder_passes(trace: &TraceOptions, h: &Holder) -> bool {
    let f = &trace.filter;
    let task = h.task();
    (f.flags & filter::PID == 0 || trace.pids.contains(&h.pid))
        && (f.flags & filter::COMM == 0 || task.comm == f.comm)
        && (f.flags & filter::CGROUP == 0 || h.cgroup_id == f.cgroup_id)
}

/// The filters, applied to a socket open at start (`--snapshot`): any holder
/// may pass the process filters.
fn open_socket_passes(trace: &TraceOptions, o: &OpenSocket) -> bool {
    let f = &trace.filter;
    let s = &o.socket;
    let process_filter = f.flags & (filter::PID | filter::COMM | filter::CGROUP) != 0;
    (f.flags & filter::FAMILY == 0 || s.family == f.family)
        && (f.flags & filter::PORT == 0 || s.sport == f.port || s.dport == f.port)
        && (f.flags & filter::LPORT == 0 || s.sport == f.lport)
        && (f.flags & filter::RPORT == 0 || s.dport == f.rport)
        && (f.flags & filter::NETNS == 0 || s.netns_inode == u64::from(f.netns))
        && (!process_filter || o.holders.iter().any(|h| holder_passes(trace, h)))
}

/// Decodes a batch of raw records and feeds them through the pipeline.
fn process<W: Write>(
    tracer: &mut Tracer,
    pipeline: &mut Pipeline<W>,
    batch: &Batch,
) -> io::Result<()> {
    for raw in batch.records() {
        if let Some(record) = tracer.decode(raw) {
            pipeline.record(&record)?;
        }
    }
    Ok(())
}

/// The local and remote address of every TCP socket the kernel has, in
/// every network namespace (or this one, when others cannot be entered):
/// what decides, at exit, whether a socket tcptrace believes open is gone.
fn kernel_sockets() -> Option<HashSet<(SocketAddr, SocketAddr)>> {
    let sockets = sockdiag::tcp_sockets_reachable(sockdiag::ALL_STATES)
        .map_err(|e| {
            eprintln!("tcptrace: note: cannot list the kernel's sockets ({e}): open sockets are reported as such unchecked");
        })
        .ok()?;
    Some(
        sockets
            .iter()
            .map(|s| {
                (
                    SocketAddr::new(s.src, s.sport),
                    SocketAddr::new(s.dst, s.dport),
                )
            })
            .collect(),
    )
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Says on stderr, at most once a second, that events were lost.
#[derive(Default)]
struct LossReporter {
    seen: u64,
    reported: u64,
    /// Runs the kernel skipped (all programs', socket programs'), as last
    /// read, and when.
    missed: u64,
    missed_socket: u64,
    missed_read: Option<std::time::Instant>,
    last_report: Option<std::time::Instant>,
}

impl LossReporter {
    /// True when new losses appeared since the last check. Ring-buffer
    /// losses are read every time; skipped runs (a file read per program)
    /// at most once a second, unless `fresh`.
    fn check(&mut self, tracer: &Tracer, fresh: bool) -> bool {
        let elapsed =
            |t: Option<std::time::Instant>| t.is_none_or(|t| t.elapsed() >= LOSS_REPORT_INTERVAL);
        if fresh || elapsed(self.missed_read) {
            (self.missed, self.missed_socket) = tracer.skipped();
            self.missed_read = Some(std::time::Instant::now());
        }
        let lost = tracer.lost();
        // Only what can concern a socket's transitions marks lives
        // incomplete: ring losses and socket programs' skipped runs.
        let gaps = lost + self.missed_socket;
        let new_losses = gaps > self.seen;
        self.seen = gaps;
        if lost + self.missed > self.reported && elapsed(self.last_report) {
            eprintln!(
                "tcptrace: events lost so far: {lost} (ring buffer full; --ring-size raises it); \
                 the kernel skipped tracing {} events ({} of sockets: those sockets are marked \
                 incomplete; the rest exits, signals or softirq marks)",
                self.missed, self.missed_socket
            );
            self.reported = lost + self.missed;
            self.last_report = Some(std::time::Instant::now());
        }
        new_losses
    }
}
