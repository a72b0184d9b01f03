//! Wires the pipeline together: tracer → decode → tracker → classify →
//! render, driven by the event rings' wakeups and a short drain timer.

use std::{
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

pub use crate::pipeline::Pipeline;
use crate::{
    cli::Args,
    command::{self, CommandCgroup},
    counters::Counters,
    input::{Batch, DRAIN_INTERVAL},
    loader::TraceOptions,
    loader::Tracer,
    metrics::{Metrics, MetricsListener},
    output::OutputQueue,
    pipeline::AliveSockets,
    recording::{self, Header, Recorder, RecorderReport, Rotation},
    render::RenderOptions,
    render::View,
    render::write_snapshot,
    sampler,
    snapshot::{Holder, OpenSocket, Snapshot},
    sockdiag,
};

/// After `-- COMMAND` exits: time for its last events (lives linger 200 ms).
const COMMAND_GRACE: Duration = Duration::from_millis(400);

/// How long a stalled reader of stdout gets, at exit, to take the rest.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);

/// Lost-event warnings are rate-limited to one a second.
const LOSS_REPORT_INTERVAL: Duration = Duration::from_secs(1);

use crate::host::wall_now_ns;
pub use crate::host::{monotonic_ns, wall_offset_ns};

/// Runs tcptrace as the CLI does, until a stop signal, `--duration`, or
/// the end of `-- COMMAND`, whose exit code it then returns.
pub async fn run(args: &Args) -> anyhow::Result<Option<u8>> {
    let mut trace = args.trace_options()?;
    // --metrics: bound before anything is loaded, so that a bad address
    // fails first.
    let metrics_listener = args.metrics.map(MetricsListener::bind).transpose()?;
    if let Some(l) = metrics_listener.as_ref().filter(|l| l.beyond_loopback()) {
        eprintln!(
            "tcptrace: warning: --metrics {}: reachable from beyond this host; its labels \
             name this host's processes and services",
            l.addr
        );
    }
    // `-- COMMAND`: a cgroup of its own, made before anything is loaded.
    let command_cgroup = if args.command.is_empty() {
        None
    } else {
        let cg = CommandCgroup::create().context("preparing to run the command")?;
        trace.filter.cgroup_id = cg.id;
        trace.filter.flags |= filter::CGROUP;
        Some(cg)
    };
    // The recording's first file, before anything is loaded: a bad path
    // is refused first (after privileges: no empty file left by a user
    // who forgot sudo).
    if args.write.is_some() && !crate::loader::has_bpf_privileges() {
        return Err(crate::loader::LoadError::NotPrivileged.into());
    }
    let record_file = match &args.write {
        Some(path) => {
            Some(Recorder::create_file(path).context("--write: cannot create the recording")?)
        }
        None => None,
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
    // The seeds are in the kernel or go to the pipeline's owner maps: the
    // listing (every socket on the host) is not kept for the whole run.
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
    let out = if args.view == View::None {
        // Nothing is printed: no terminal or reader is needed.
        OutputQueue::new(io::sink(), None)
    } else if command_cgroup.is_some() {
        OutputQueue::stderr()
    } else {
        OutputQueue::stdout()
    }
    .context("starting the output thread")?;
    let mut pipeline = Pipeline::new(args.tracker_options(), render, out)
        .with_decoder(tracer.decoder())
        .with_owner_filter(crate::filter::EventFilter::live(&trace));
    if let Some(owners) = tracer.take_owners() {
        // The kernel keeps no owner maps without process filters.
        pipeline = pipeline.with_owners(owners);
    }
    if let (Some(file), Some(path)) = (record_file, &args.write) {
        let header = recording_header(args, &tracer, &render);
        let rotation = Rotation {
            max_bytes: args.rotate_size.map(|mb| mb * 1_000_000),
            max_files: args.rotate_count,
        };
        let recorder = Recorder::start(file, path, header, rotation)
            .context("--write: starting the recording")?;
        pipeline = pipeline.with_recorder(recorder);
    }
    let metrics = match metrics_listener {
        Some(listener) => {
            let metrics = Metrics::new(args.metrics_max_series);
            let addr = listener.addr;
            metrics.serve(listener).context("serving --metrics")?;
            pipeline = pipeline.with_output(metrics.sink());
            Some((metrics, addr))
        }
        None => None,
    };

    // The ring is emptied on a thread of its own; batches come here.
    let mut input = tracer.live_input().context("starting the ring reader")?;
    if let Some((m, _)) = &metrics {
        m.watch_input(input.gauge(), args.ring_size);
    }
    let on = |kind: SignalKind, name: &str| {
        signal(kind).with_context(|| format!("installing the {name} handler"))
    };
    // INT, TERM, HUP and QUIT all stop cleanly (summary, open sockets);
    // USR1 prints the summary so far and goes on. HUP ignored at start
    // (nohup) stays ignored: a daemon so started outlives its terminal.
    let mut sigint = on(SignalKind::interrupt(), "SIGINT")?;
    let mut sigterm = on(SignalKind::terminate(), "SIGTERM")?;
    let mut sighup = (!ignored_at_start(libc::SIGHUP))
        .then(|| on(SignalKind::hangup(), "SIGHUP"))
        .transpose()?;
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

    let mut showing = match args.view {
        View::None => "no view".to_owned(),
        view => format!(
            "{} view{}",
            format!("{view:?}").to_lowercase(),
            if args.json { ", JSON" } else { "" }
        ),
    };
    if let Some((_, addr)) = &metrics {
        showing.push_str(&format!("; metrics at http://{addr}/metrics"));
    }
    eprintln!("tcptrace: tracing TCP sockets ({showing}); Ctrl-C or SIGTERM to stop");

    // The host's counters no event shows (refused SYNs, SYN cookies).
    let mut samples = sampler::start(monotonic_ns);
    let mut output_error = None;
    loop {
        // A slow reader of stdout holds processing back; the input thread
        // goes on emptying the ring meanwhile.
        let backlogged = pipeline.output().backlogged();
        let woke = tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = recv_if_handled(&mut sighup) => break,
            _ = sigquit.recv() => break,
            _ = sigusr1.recv() => {
                if !args.no_summary {
                    let counters = Counters {
                        undecodable: pipeline.undecodable(),
                        ..tracer.counters()
                    };
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
                if let Err(e) = process(&mut pipeline, &batch) {
                    output_error = Some(e);
                    break;
                }
                false
            }
            _ = drain_timer.tick() => true,
            Some(sample) = samples.recv() => {
                pipeline.host_sample(&sample);
                false
            }
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
            let backlog = input.backlog_bytes();
            result = pipeline.tick(tick_time(now, backlog, pipeline.latest_event_ns()));
            if let Some((m, _)) = &metrics {
                let out = pipeline.output().stats();
                m.read_health(&tracer, &out, pipeline.recording_dropped());
            }
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
            final_result = process(&mut pipeline, &batch);
        }
    }
    if loss.check(&tracer, true) {
        pipeline.note_loss(monotonic_ns());
    }
    drop(samples);
    if final_result.is_ok() {
        // The counters up to the end, while the listeners are still there.
        let mut probes = crate::sockdiag::NetnsProbes::new();
        if let Ok(sample) = sampler::sample(&mut probes, monotonic_ns()) {
            pipeline.host_sample(&sample);
        }
        let alive = pipeline.has_open_lives().then(kernel_sockets).flatten();
        final_result = pipeline.finish(alive.as_ref());
    }
    // A stalled reader gets a second to take the rest; then it is given up.
    let output = pipeline.output().finish(OUTPUT_GRACE);
    let counters = Counters {
        undecodable: pipeline.undecodable(),
        ..tracer.counters()
    };
    let recorded = pipeline
        .take_recorder()
        .map(|r| r.finish(counters, wall_now_ns(), OUTPUT_GRACE));
    if !args.no_summary {
        let mut err = io::stderr().lock();
        pipeline.write_summary(&mut err, &counters)?;
        if let Some(r) = &recorded {
            write_recording_report(&mut err, r)?;
        }
        if output.dropped_lines > 0 || output.dropped_bytes > 0 {
            writeln!(
                err,
                "  output:     {} lines written, {} lines ({} bytes) dropped: the reader of stdout \
                 did not keep up (blocked for {:.1} s); the event rings were drained all along",
                output.written_lines,
                output.dropped_lines,
                output.dropped_bytes,
                output.blocked_ms as f64 / 1000.0
            )?;
        }
        // The counters, and what became of the output.
        let mut line = serde_json::to_value(counters)?;
        line["output"] = serde_json::to_value(output)?;
        line["tracker"] = serde_json::to_value(pipeline.tracker_stats())?;
        line["summary"] = serde_json::to_value(pipeline.summary())?;
        if let Some(r) = &recorded {
            line["recording"] = serde_json::to_value(r)?;
        }
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

/// The time a tick stands for. Closed lives linger, and the tracker's
/// tables age, by the events' own clock: while read batches wait (the
/// output held the main thread back, or a busy host starved it), that
/// clock is the latest event processed, not the wall's, or a life would
/// be reported before its own last events (its destroy, a late RST) were
/// read, and those would start a life of their own.
fn tick_time(now_ns: u64, backlog_bytes: usize, latest_event_ns: u64) -> u64 {
    if backlog_bytes > 0 && latest_event_ns > 0 {
        now_ns.min(latest_event_ns)
    } else {
        now_ns
    }
}

/// Feeds a batch of raw records through the pipeline.
fn process<W: Write>(pipeline: &mut Pipeline<W>, batch: &Batch) -> io::Result<()> {
    for raw in batch.records() {
        pipeline.raw(raw)?;
    }
    Ok(())
}

/// Everything a reader of the recording needs to decode and render it.
fn recording_header(args: &Args, tracer: &Tracer, render: &RenderOptions) -> Header {
    let (hostname, kernel_release) = recording::host_facts();
    let layout = tracer.layout();
    Header {
        event_size: size_of::<tcptrace_common::Event>() as u32,
        // Start time and pid: distinct for every recording of a host.
        recording_id: (wall_now_ns() as u64) ^ u64::from(std::process::id()) << 48,
        sequence: 0,
        tcptrace_version: env!("CARGO_PKG_VERSION").to_owned(),
        hostname,
        kernel_release,
        started_wall_ns: wall_now_ns(),
        wall_offset_ns: render.wall_offset_ns as i64,
        own_netns: render.own_netns,
        reset_reasons: layout.reasons.pairs().clone(),
        drop_reasons: layout.drop_reasons.pairs().clone(),
        kernel: layout.facts(),
        filters: args.filter_words(),
        ring_bytes: args.ring_size,
        max_sockets: args.max_sockets,
    }
}

/// One summary line on the recording: where it went, what is missing.
pub fn write_recording_report(out: &mut dyn Write, r: &RecorderReport) -> io::Result<()> {
    let files = match r.files.as_slice() {
        [] => "no file".to_owned(),
        [one] => one.display().to_string(),
        [first, .., last] => format!(
            "{} files, {} to {}",
            r.files.len(),
            first.display(),
            last.display()
        ),
    };
    writeln!(
        out,
        "  recording:  {} events, {:.1} MB in {files}",
        r.events,
        r.bytes as f64 / 1e6
    )?;
    if r.events_dropped > 0 {
        writeln!(
            out,
            "              {} events not recorded: the disk did not keep up (they were shown live)",
            r.events_dropped
        )?;
    }
    if let Some(e) = &r.error {
        writeln!(out, "              recording stopped early: {e}")?;
    }
    Ok(())
}

/// The local and remote address of every TCP socket the kernel has, in
/// every network namespace (or this one, when others cannot be entered):
/// what decides, at exit, whether a socket tcptrace believes open is gone.
fn kernel_sockets() -> Option<AliveSockets> {
    // Full sockets only: TIME_WAIT and request mini-sockets, by far the
    // most numerous on a busy host, are never what a life is open as.
    let full = sockdiag::ALL_STATES
        & !(1 << sockdiag::state::TIME_WAIT)
        & !(1 << sockdiag::state::NEW_SYN_RECV);
    let sockets = sockdiag::tcp_sockets_reachable(full)
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

/// Was `sig` ignored when tcptrace started (as `nohup` leaves SIGHUP)?
fn ignored_at_start(sig: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction for the kernel to fill; a null new
    // action only reads the current one.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0;
    read && old.sa_sigaction == libc::SIG_IGN
}

/// The next `signal`, or never when it is not handled.
async fn recv_if_handled(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending().await,
    }
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
                "tcptrace: events lost so far: {lost} (event ring full; --ring-size raises it); \
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

#[cfg(test)]
mod tests {
    use super::tick_time;

    #[test]
    fn ticks_follow_the_events_while_read_batches_wait() {
        // Caught up: the wall's time, so that a quiet host's lives expire.
        assert_eq!(tick_time(5_000, 0, 1_000), 5_000);
        // Behind: no later than the newest event processed.
        assert_eq!(tick_time(5_000, 4096, 1_000), 1_000);
        // Nothing processed yet: nothing to hold it back to.
        assert_eq!(tick_time(5_000, 4096, 0), 5_000);
        // Events stamped after the wall was read (a batch just taken).
        assert_eq!(tick_time(5_000, 4096, 6_000), 5_000);
    }
}
