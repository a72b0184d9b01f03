//! The pipeline, the same for every input: raw kernel records and the
//! steps that drive time (ticks, losses, the exit check) come in, from the
//! live event rings or a recording; decoded records, finished lives and
//! their verdicts go out to the renderers and the summary, the raw steps
//! to the recorder, when there is one, and everything to the extra
//! [`Output`]s (metrics).
//!
//! Replaying a recording gives the live run's output because nothing here
//! reads a clock or the host: time is the records' and the ticks', and the
//! one fact taken from the host (a cgroup's unit and container) is looked
//! up when a record first names the cgroup and recorded before it.

use std::{
    collections::{HashMap, HashSet},
    io::{self, Write},
    net::SocketAddr,
    sync::Arc,
};

use crate::{
    cgroups::{CgroupNames, Workload},
    classify::classify,
    counters::Counters,
    decode::{Decoder, Proc, Record, event_from_bytes},
    filter::EventFilter,
    model::{HostSample, Verdict},
    owners::Owners,
    recording::Recorder,
    render::{RenderOptions, Renderer, write_summary},
    summary::Summary,
    tracker::{SocketLife, Tracker, TrackerOptions, TrackerStats},
};

/// A sink beside the renderers: told every decoded record, every finished
/// life with its verdict, and every tick. Adding an output is adding one
/// module that implements this.
pub trait Output {
    /// A decoded record, as it arrives. Called per event: keep it cheap.
    fn record(&mut self, _record: &Record) -> io::Result<()> {
        Ok(())
    }

    /// A finished life and its verdict.
    fn finished(&mut self, life: &SocketLife, verdict: &Verdict) -> io::Result<()>;

    /// Time moved on to `now_ns` (every drain, some 50 times a second);
    /// `tracker` is the socket table as it now stands, `summary` the
    /// counts so far (those that belong to no single life among them).
    fn tick(
        &mut self,
        _now_ns: u64,
        _tracker: &TrackerStats,
        _summary: &Summary,
    ) -> io::Result<()> {
        Ok(())
    }
}

/// The kernel's sockets at exit: (local, remote) of each.
pub type AliveSockets = HashSet<(SocketAddr, SocketAddr)>;

type CgroupHasher = foldhash::fast::FixedState;

/// What looking a cgroup id up gave.
enum Lookup {
    /// Found on the host (named or not): never asked again.
    Found,
    /// Not found, at this record time: asked again once the names may have
    /// been rescanned. Ids of cgroups already gone (a container that
    /// exited), or of every cgroup on a host without a cgroup2 mount, stay
    /// unknown: asking on every record was a fifth of the reader's work.
    MissedAt(u64),
}

/// Most cgroup ids remembered; past it the memory starts again.
const MAX_KNOWN_CGROUPS: usize = 65_536;

/// Where cgroup names come from: the host (live), or the recording.
enum CgroupSource {
    Host {
        names: CgroupNames,
        /// Ids looked up already. Checked for every record: foldhash, not
        /// SipHash (cgroup ids are the kernel's, not a peer's).
        known: HashMap<u64, Lookup, CgroupHasher>,
    },
    Recording,
}

/// Records in, rendered sockets and transitions out; the summary on the side.
pub struct Pipeline<W: Write> {
    decoder: Decoder,
    /// Owners kept here when the kernel keeps none (no process filters).
    owners: Option<Owners>,
    /// A record with the owner filled in, as the recorder gets it.
    enriched: Vec<u8>,
    /// Read-time filters (a replay's); the live ones run in the kernel.
    filter: Option<EventFilter>,
    /// The process filters, for the lives the kernel could not judge (see
    /// [`EventFilter::owner_passes`]); live and replayed alike.
    owner_filter: Option<EventFilter>,
    tracker: Tracker,
    cgroups: CgroupSource,
    /// Cgroup id → its unit and container, for owners.
    workloads: HashMap<u64, Arc<Workload>, CgroupHasher>,
    recorder: Option<Recorder>,
    renderer: Renderer<W>,
    summary: Summary,
    outputs: Vec<Box<dyn Output>>,
    /// Monotonic time of the latest loss: lives that began before it may
    /// miss events and are marked incomplete.
    last_loss_ns: Option<u64>,
    /// The newest record's time (monotonic ns): how far the stream has
    /// been processed.
    latest_ns: u64,
    undecodable: u64,
    filtered: u64,
}

impl<W: Write> Pipeline<W> {
    pub fn new(tracker: TrackerOptions, render: RenderOptions, out: W) -> Self {
        Pipeline {
            decoder: Decoder::default(),
            owners: None,
            enriched: Vec::new(),
            filter: None,
            owner_filter: None,
            tracker: Tracker::new(tracker),
            cgroups: CgroupSource::Host {
                names: CgroupNames::new(),
                known: HashMap::default(),
            },
            workloads: HashMap::default(),
            recorder: None,
            renderer: Renderer::new(out, render),
            summary: Summary::default(),
            outputs: Vec::new(),
            last_loss_ns: None,
            latest_ns: 0,
            undecodable: 0,
            filtered: 0,
        }
    }

    /// Names RST reasons as the recording (or running) kernel does.
    pub fn with_decoder(mut self, decoder: Decoder) -> Self {
        self.decoder = decoder;
        self
    }

    /// Names cgroups from this tree instead of the host's cgroup2 mount.
    pub fn with_cgroup_names(mut self, names: CgroupNames) -> Self {
        if let CgroupSource::Host { names: host, .. } = &mut self.cgroups {
            *host = names;
        }
        self
    }

    /// Owners are kept here, not in the kernel (see [`crate::owners`]).
    pub fn with_owners(mut self, owners: Owners) -> Self {
        self.owners = Some(owners);
        self
    }

    /// Filters applied to every raw record before it is decoded.
    pub fn with_filter(mut self, filter: EventFilter) -> Self {
        self.owner_filter = filter.is_active().then(|| filter.clone());
        self.filter = filter.is_active().then_some(filter);
        self
    }

    /// The live filters (applied in the kernel), for the lives only their
    /// acceptor can decide.
    pub fn with_owner_filter(mut self, filter: EventFilter) -> Self {
        self.owner_filter = filter.is_active().then_some(filter);
        self
    }

    /// Cgroup names come from [`Pipeline::workload`] calls (a replay), not
    /// from this host.
    pub fn with_recorded_cgroups(mut self) -> Self {
        self.cgroups = CgroupSource::Recording;
        self
    }

    /// Every step is also written to `recorder`.
    pub fn with_recorder(mut self, recorder: Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    /// Also feeds `output`.
    pub fn with_output(mut self, output: Box<dyn Output>) -> Self {
        self.outputs.push(output);
        self
    }

    /// One raw kernel record, as the ring (or a recording) held it.
    pub fn raw(&mut self, raw: &[u8]) -> io::Result<()> {
        let mut event = match event_from_bytes(raw) {
            Ok(event) => event,
            Err(e) => {
                self.count_undecodable(&e);
                return Ok(());
            }
        };
        if let Some(owners) = &mut self.owners {
            owners.apply(&mut event);
            if self.recorder.is_some() {
                // The recording holds records as if the kernel had filled
                // the owner in: a replay needs no owner maps. As short as
                // the kernel would have written it.
                self.enriched.clear();
                self.enriched.extend_from_slice(event.record());
            }
        }
        if let Some(f) = &self.filter
            && !f.passes(&event)
        {
            self.filtered += 1;
            return Ok(());
        }
        // Used where it was decoded: a Record is some 300 bytes, and moving
        // it out of the Result copied it once per event.
        let decoded = self.decoder.decode(&event);
        let record = match &decoded {
            Ok(record) => record,
            Err(e) => {
                self.count_undecodable(e);
                return Ok(());
            }
        };
        self.learn_cgroups(record);
        if let Some(r) = &mut self.recorder {
            // Filled in above whenever owners are kept here.
            r.event(if self.owners.is_some() {
                &self.enriched
            } else {
                raw
            });
        }
        self.record(record)
    }

    fn count_undecodable(&mut self, e: &dyn std::fmt::Display) {
        self.undecodable += 1;
        log::debug!("undecodable event: {e}");
    }

    /// One decoded record.
    pub fn record(&mut self, record: &Record) -> io::Result<()> {
        self.latest_ns = self.latest_ns.max(record.ts_ns());
        // The kernel sends a bare destroy (address and time) when no filter
        // needs more: the socket's life supplies the rest for the outputs.
        let completed;
        let record = match record {
            Record::Destroy { sock } if sock.is_bare() => {
                completed = Record::Destroy {
                    sock: self.tracker.complete(sock),
                };
                &completed
            }
            other => other,
        };
        self.renderer.transition(record)?;
        for output in &mut self.outputs {
            output.record(record)?;
        }
        if let Record::Drop(d) = record
            && !d.answered_by_time_wait
        {
            self.summary.add_drop(d);
        }
        for life in self.tracker.observe(record) {
            self.finished(life)?;
        }
        self.take_tallies();
        Ok(())
    }

    /// Counts the tracker made that belong to no life.
    fn take_tallies(&mut self) {
        for t in self.tracker.take_tallies() {
            self.summary.tally(&t);
        }
    }

    /// A sample of the host's handshake counters (listeners' drops, each
    /// namespace's SYN cookies), taken live or read from a recording.
    pub fn host_sample(&mut self, sample: &HostSample) {
        if let Some(r) = &mut self.recorder {
            r.host_sample(sample);
        }
        let tracker = &self.tracker;
        self.summary
            .add_sample(sample, |netns, addr| tracker.listener_at(netns, addr));
    }

    /// Reports lives whose late events can no longer come.
    pub fn tick(&mut self, now_ns: u64) -> io::Result<()> {
        let (lives, changed) = self.tracker.expire_changed(now_ns);
        if let Some(r) = &mut self.recorder {
            // Only ticks that changed something are kept: an idle host's
            // recording does not grow by 50 ticks a second.
            r.tick(now_ns, changed);
        }
        for life in lives {
            self.finished(life)?;
        }
        self.take_tallies();
        let stats = self.tracker.stats();
        for output in &mut self.outputs {
            output.tick(now_ns, &stats, &self.summary)?;
        }
        self.renderer.flush()
    }

    /// The newest record processed (monotonic ns; 0 before the first).
    pub fn latest_event_ns(&self) -> u64 {
        self.latest_ns
    }

    /// New losses were seen at `now_ns`: lives begun before are marked.
    pub fn note_loss(&mut self, now_ns: u64) {
        if let Some(r) = &mut self.recorder {
            r.loss(now_ns);
        }
        self.last_loss_ns = Some(now_ns);
    }

    /// A cgroup's unit and container, as a recording names it.
    pub fn workload(&mut self, id: u64, workload: Workload) {
        self.workloads.insert(id, Arc::new(workload));
    }

    /// At exit: sockets still open are reported as such, unless `alive`
    /// (the kernel's own sockets, when they could be listed) says they are
    /// gone: those closed unseen.
    pub fn finish(&mut self, alive: Option<&AliveSockets>) -> io::Result<()> {
        if let (Some(r), Some(alive)) = (&mut self.recorder, alive) {
            r.alive(alive);
        }
        for life in self.tracker.finish_against(alive) {
            self.finished(life)?;
        }
        self.take_tallies();
        self.renderer.flush()
    }

    /// Kernel records the recorder could not write so far (0 without one).
    pub fn recording_dropped(&self) -> u64 {
        self.recorder.as_ref().map_or(0, Recorder::events_dropped)
    }

    /// The recorder, to be finished with the run's counters.
    pub fn take_recorder(&mut self) -> Option<Recorder> {
        self.recorder.take()
    }

    fn finished(&mut self, mut life: Box<SocketLife>) -> io::Result<()> {
        if life.shared_listener
            && let Some(f) = &self.owner_filter
            && !f.owner_passes(life.owner.as_ref())
        {
            self.filtered += 1;
            return Ok(());
        }
        if self.last_loss_ns.is_some_and(|loss| life.start_ns <= loss) {
            life.events_lost = true;
        }
        if let Some(owner) = life.owner {
            life.workload = self.workloads.get(&owner.cgroup_id).cloned();
        }
        let verdict = classify(&life);
        self.summary.add(&life, &verdict);
        for output in &mut self.outputs {
            output.finished(&life, &verdict)?;
        }
        self.renderer.socket(&life, &verdict)
    }

    /// Looks up, once, the cgroups a record names, so that the lives they
    /// own can be given a unit and container — and records the names.
    fn learn_cgroups(&mut self, record: &Record) {
        let CgroupSource::Host { names, known } = &mut self.cgroups else {
            return;
        };
        let procs = match record {
            Record::ProcessExit { task, .. } => [Some(task), None],
            Record::Signal { .. } | Record::OomVictim { .. } => [None, None],
            Record::Drop(d) => [d.owner.as_ref(), d.context.process()],
            _ => match record.sock() {
                Some(s) => [s.owner.as_ref(), s.context.process()],
                None => [None, None],
            },
        };
        let now = record.ts_ns();
        let retry_ns = crate::cgroups::RESCAN_EVERY.as_nanos() as u64;
        for p in procs.into_iter().flatten().map(|p: &Proc| p.cgroup_id) {
            // Most records carry no cgroup id: no hashing for those.
            if p == 0 {
                continue;
            }
            match known.get(&p) {
                Some(Lookup::Found) => continue,
                Some(Lookup::MissedAt(t)) if now.saturating_sub(*t) < retry_ns => continue,
                _ => {}
            }
            if let Some(w) = names.resolve(p) {
                self.workloads.insert(p, Arc::new(w.clone()));
                if let Some(r) = &mut self.recorder {
                    r.workload(p, w);
                }
            }
            // A cgroup not found yet may appear later (a rescan is at most
            // once a second): asked again at its first record after that.
            if known.len() >= MAX_KNOWN_CGROUPS {
                known.clear();
            }
            let found = if names.knows(p) {
                Lookup::Found
            } else {
                Lookup::MissedAt(now)
            };
            known.insert(p, found);
        }
    }

    /// Does the tracker believe any socket is still open?
    pub fn has_open_lives(&self) -> bool {
        self.tracker.has_open()
    }

    /// The renderers' output.
    pub fn output(&mut self) -> &mut W {
        self.renderer.output()
    }

    /// Records that could not be decoded, and that read-time filters left out.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    pub fn filtered(&self) -> u64 {
        self.filtered
    }

    /// The tracker's own accounting.
    pub fn tracker_stats(&self) -> TrackerStats {
        self.tracker.stats()
    }

    /// The counts of every socket reported so far, for any output.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    pub fn write_summary(&self, out: &mut dyn Write, counters: &Counters) -> io::Result<()> {
        write_summary(out, &self.summary, counters, &self.tracker.stats())
    }
}

#[cfg(test)]
mod tests;
