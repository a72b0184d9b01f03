//! Loads tcptrace's kernel program, attaches it, and reads its event rings.
//!
//! Start-up order matters for clear errors: privileges first, then the
//! kernel's layout (its BTF), then the load (where the verifier speaks).
//! Raw tracepoints need no tracefs: nothing is mounted or read there.

use std::{
    os::fd::{AsFd, AsRawFd},
    sync::{Arc, atomic::Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray},
    programs::ProgramError,
};
use tcptrace_common::{
    Config, Filter, ListenerKey, Task, counter,
    ring::{slots_per_ring, wake_at},
};

use crate::{
    counters::Counters,
    decode::{Decoder, Record, event_from_bytes},
    input::{Collected, LiveInput, ReadCounts, RingPositions, Rings, frames},
    kernel::{self, KernelLayout},
    kernel_log::{self, KernelLog},
    owners::Owners,
    snapshot::Seeds,
};

/// The kernel object, built by build.rs (a nested cargo) from tcptrace-ebpf.
static KERNEL_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcptrace"));

/// The kernel object this binary loads (empty when built with
/// AYA_BUILD_SKIP), for checks of what the kernel will run.
pub fn kernel_object() -> &'static [u8] {
    KERNEL_OBJECT
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "tcptrace needs root, or the CAP_BPF and CAP_PERFMON capabilities \
         (CAP_SYS_ADMIN on older kernels), to load its eBPF program; \
         run it as root (`cargo xtask run` does)"
    )]
    NotPrivileged,
    #[error(transparent)]
    Layout(#[from] kernel::LayoutError),
    #[error(
        "this binary was built without its kernel program (AYA_BUILD_SKIP was set); \
         build it with `cargo xtask build`"
    )]
    NoKernelObject,
    #[error(
        "the kernel verifier rejected the `{program}` program: {io_error}\n--- verifier log ---\n{log}"
    )]
    Verifier {
        program: String,
        io_error: std::io::Error,
        log: String,
    },
    #[error("attaching to {group}:{name}: {source}")]
    Attach {
        group: &'static str,
        name: &'static str,
        source: ProgramError,
    },
    #[error("loading the kernel program: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("{0}")]
    Program(#[from] ProgramError),
    #[error("rewriting the kernel object's kfunc calls: {0}")]
    Kfuncs(#[from] kfuncs::PatchError),
    #[error("kernel map `{0}` is missing from the object")]
    MissingMap(&'static str),
    #[error("kernel program `{0}` is missing from the object")]
    MissingProgram(&'static str),
    #[error("loading the kernel program")]
    Descriptors(#[source] std::io::Error),
    #[error("kernel map {0}")]
    Map(&'static str, #[source] aya::maps::MapError),
    #[error("mapping the event rings into memory: {0}")]
    MapRings(#[source] std::io::Error),
    #[error("--ring-size {0}: must be a power of two from 262144 to 1073741824 bytes")]
    RingSize(u32),
}

/// What to load: filters and sizes, all validated by the CLI.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// Ring buffer size in bytes: a power of two, at least MIN_RING_BYTES.
    pub ring_bytes: u32,
    pub filter: Filter,
    /// Process ids (tgids) for `--pid`.
    pub pids: Vec<u32>,
    /// Owners of what existed at start (see [`crate::snapshot`]).
    pub seeds: Seeds,
    /// Follow accept(2) to give accepted sockets their acceptor as owner
    /// (costs every syscall of the host a little while attached).
    pub follow_accept: bool,
    /// Plain loads of kernel memory where the kernel allows them
    /// ([`tcptrace_common::ReadConfig`]).
    pub direct_reads: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            ring_bytes: tcptrace_common::DEFAULT_RING_BYTES,
            filter: Filter::default(),
            pids: Vec::new(),
            seeds: Seeds::default(),
            follow_accept: true,
            direct_reads: true,
        }
    }
}

/// A loaded and attached tracer. Dropping it detaches everything.
pub struct Tracer {
    ebpf: Ebpf,
    /// Until [`Tracer::live_input`] hands them to their reading thread.
    rings: Option<Rings>,
    /// The rings' positions: their heads count the events produced.
    positions: Option<RingPositions>,
    counters: PerCpuArray<MapData, u64>,
    decoder: Decoder,
    /// Owner maps, when the kernel keeps none (no process filters): for
    /// [`Tracer::drain`], until [`Tracer::take_owners`] hands them on.
    owners: Option<Owners>,
    /// Records taken from the rings (by whoever reads them), their bytes,
    /// and those the merge of the rings handed on out of order.
    read: Arc<ReadCounts>,
    /// Set by [`Tracer::detach`]: nothing more will be committed, so a
    /// drain hands on everything, held back or not.
    detached: bool,
    undecodable: u64,
    /// Skipped runs of the programs already unloaded (their fdinfo is gone).
    /// Of those, the socket programs'.
    detached_socket_misses: u64,
    detached_misses: u64,
    layout: KernelLayout,
    /// Reads the kernel program's log (None when it could not start).
    _kernel_log: Option<KernelLog>,
}

impl Tracer {
    /// Checks privileges, reads the kernel's layout, loads and attaches.
    pub fn start(opts: &TraceOptions) -> Result<Tracer, LoadError> {
        if !has_bpf_privileges() {
            return Err(LoadError::NotPrivileged);
        }
        if opts.ring_bytes < tcptrace_common::MIN_RING_BYTES || !opts.ring_bytes.is_power_of_two() {
            return Err(LoadError::RingSize(opts.ring_bytes));
        }
        if KERNEL_OBJECT.is_empty() {
            return Err(LoadError::NoKernelObject);
        }
        ensure_descriptors()?;
        raise_memlock();
        // BTF is parsed, used for offsets and argument positions, and
        // dropped before the load.
        let layout = KernelLayout::read_running()?;
        release_freed_memory();
        let mut config: Config = layout.config;
        config.filter = crate::filter::EventFilter::live(opts).filter;
        let mut layout = layout;
        let accept = programs::accept_ret_offset(opts.follow_accept, config.accept.task_files != 0);
        match &accept {
            Ok(ret) => config.accept.ret = *ret,
            Err(e) => {
                config.accept.ret = 0;
                layout.accept_unavailable = Some(e.to_string());
            }
        }
        let (rings, ring_bytes) = ring_layout(opts.ring_bytes, aya::util::nr_cpus().ok());
        let slots = slots_per_ring(ring_bytes);
        config.slot_shift = slots.ilog2();
        config.wake_at = wake_at(u64::from(slots));
        config.ring_mask = rings - 1;

        // Rust eBPF carries no CO-RE relocations, so aya needs no kernel BTF:
        // it is hidden from EbpfLoader::new where possible, else dropped here
        // (see without_kernel_btf).
        // The kernel logs only what our log filters let through: the
        // verifier drops its code for the levels above (by default, debug).
        let log_level = kernel_log::kernel_level(log::max_level());
        let rdonly_cast = layout.rdonly_cast.filter(|_| opts.direct_reads);
        config.reads.direct = u32::from(rdonly_cast.is_some());
        log::debug!(
            "kernel memory read {}",
            match (rdonly_cast, layout.rdonly_cast) {
                (Some(_), _) => "with loads (bpf_rdonly_cast)",
                (None, Some(_)) => "with bpf_probe_read_kernel (--no-direct-reads)",
                (None, None) => "with bpf_probe_read_kernel (no bpf_rdonly_cast to void here)",
            }
        );
        let (object, _) = kfuncs::with_rdonly_cast(KERNEL_OBJECT, rdonly_cast)?;
        let mut ebpf = without_kernel_btf(|| {
            let mut loader = EbpfLoader::new();
            loader
                .btf(None)
                .override_global("CONFIG", &config, true)
                .override_global(aya_log::LEVEL, &log_level, false);
            // Every ring's slots; the kernel program indexes them by ring
            // and position (see tcptrace_common::ring).
            loader.map_max_entries("SLOTS", rings * slots);
            loader.load(&object)
        })?;
        release_freed_memory();

        if !opts.pids.is_empty() {
            let map = ebpf
                .map_mut("PID_FILTER")
                .ok_or(LoadError::MissingMap("PID_FILTER"))?;
            let mut pids: BpfHashMap<_, u32, u8> =
                BpfHashMap::try_from(map).map_err(|e| LoadError::Map("PID_FILTER", e))?;
            for pid in &opts.pids {
                pids.insert(pid, 1, 0)
                    .map_err(|e| LoadError::Map("PID_FILTER", e))?;
            }
        }
        // Under process filters the kernel keeps owners; otherwise
        // userspace does (crate::owners), seeded the same way.
        let owners = if config.filter.judges_owners() {
            seed(&mut ebpf, &opts.seeds)?;
            None
        } else {
            Some(Owners::new(opts.seeds.clone()))
        };

        // softirq tracking first, so that the first socket events already
        // know their context. Nothing is attached before every program has
        // loaded, so a verifier rejection leaves nothing behind.
        let mut order: Vec<_> = layout.present.clone();
        order.sort_by_key(|tp| tp.group != "irq");
        for tp in &order {
            programs::load(&mut ebpf, tp)?;
        }
        if accept.is_ok() {
            programs::load_accept(&mut ebpf)?;
        }
        // Once the programs hold the log's map (a failed start closes our
        // descriptor of it), and before they can log anything.
        let kernel_log = KernelLog::start(&mut ebpf);
        for tp in &order {
            programs::attach(&mut ebpf, tp)?;
        }
        if accept.is_ok()
            && let Err(why) = programs::attach_accept(&mut ebpf)?
        {
            layout.accept_unavailable = Some(why);
        }
        if let Some(why) = &layout.accept_unavailable
            && opts.follow_accept
        {
            log::warn!(
                "accept(2) is not followed ({why}): accepted sockets keep their listener's owner"
            );
        }

        let ring_maps = slot_rings(&mut ebpf, rings, slots)?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("COUNTERS")
                .ok_or(LoadError::MissingMap("COUNTERS"))?,
        )
        .map_err(|e| LoadError::Map("COUNTERS", e))?;
        Ok(Tracer {
            ebpf,
            positions: ring_maps.positions(),
            rings: Some(ring_maps),
            owners,
            counters,
            decoder: Decoder::new(layout.reasons.clone())
                .with_drop_reasons(layout.drop_reasons.clone()),
            read: Arc::default(),
            detached: false,
            undecodable: 0,
            detached_socket_misses: 0,
            detached_misses: 0,
            layout,
            _kernel_log: kernel_log,
        })
    }

    /// The running kernel as tcptrace sees it (missing tracepoints, BTF).
    pub fn layout(&self) -> &KernelLayout {
        &self.layout
    }

    /// Names RST reasons as the running kernel does.
    pub fn decoder(&self) -> Decoder {
        self.decoder.clone()
    }

    /// Hands the rings to a reading thread of their own (see
    /// [`LiveInput`]); records then arrive in batches, to [`Tracer::decode`].
    pub fn live_input(&mut self) -> std::io::Result<LiveInput> {
        let rings = self
            .rings
            .take()
            .ok_or_else(|| std::io::Error::other("the event rings are already being read"))?;
        LiveInput::start(rings, self.read.clone())
    }

    /// The owner maps the kernel does not keep (no process filters), for
    /// the pipeline that reads the ring; `None` when the kernel keeps them.
    pub fn take_owners(&mut self) -> Option<Owners> {
        self.owners.take()
    }

    /// One raw record from the ring, its owner filled in where userspace
    /// keeps owners; `None` (counted) when it cannot be decoded.
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Record> {
        let decoded = event_from_bytes(bytes).and_then(|mut event| {
            if let Some(owners) = &mut self.owners {
                owners.apply(&mut event);
            }
            self.decoder.decode(&event)
        });
        match decoded {
            Ok(record) => Some(record),
            Err(e) => {
                self.undecodable += 1;
                log::debug!("undecodable event: {e}");
                None
            }
        }
    }

    /// Reads the events waiting in the event rings, in time order, on this
    /// thread (unless [`Tracer::live_input`] took the rings): all of them
    /// once detached, else those no other ring can still precede. Returns
    /// how many were read.
    pub fn drain(&mut self, mut sink: impl FnMut(Record)) -> usize {
        let Some(mut rings) = self.rings.take() else {
            return 0;
        };
        let mut read = Collected::default();
        rings.read(self.detached, &mut read);
        for bytes in frames(&read.buf) {
            if let Some(record) = self.decode(bytes) {
                sink(record);
            }
        }
        self.read.note_late(&rings);
        self.rings = Some(rings);
        let records = read.records as usize;
        self.read.take(&mut read);
        records
    }

    /// Detaches every program (the accept program on its syscall
    /// tracepoints too) so no event is produced after this; call
    /// [`Tracer::drain`] once more afterwards to make the counters add up.
    pub fn detach(&mut self) {
        self.detached = true;
        for (name, program) in self.ebpf.programs_mut() {
            let Ok(fd) = program.fd() else { continue }; // never loaded
            // Its last count, read while its fd is still open.
            if !kernel::is_backup_program(name) {
                let misses = program_misses(fd);
                self.detached_misses += misses;
                if kernel::is_socket_program(name) {
                    self.detached_socket_misses += misses;
                }
            }
            let unloaded = match program {
                aya::programs::Program::RawTracePoint(tp) => tp.unload(),
                aya::programs::Program::TracePoint(tp) => tp.unload(),
                _ => Ok(()),
            };
            if let Err(e) = unloaded {
                log::debug!("unloading {name}: {e}");
            }
        }
    }

    /// Kernel and userspace counts, summed over CPUs.
    pub fn counters(&self) -> Counters {
        // Read once: produced = reserved + lost must hold for what is shown.
        let lost = self.lost();
        Counters {
            produced: self.positions.as_ref().map_or(0, RingPositions::reserved) + lost,
            lost,
            filtered: self.kernel_count(counter::FILTERED),
            not_tcp: self.kernel_count(counter::NOT_TCP),
            received: self.read.received.load(Ordering::Relaxed),
            received_bytes: self.read.received_bytes.load(Ordering::Relaxed),
            late: self.read.late.load(Ordering::Relaxed),
            undecodable: self.undecodable,
            missed: self.recursion_misses(),
            recovered: self.kernel_count(counter::RECOVERED),
            odd: self.kernel_count(counter::ODD),
        }
    }

    /// Events that found their ring full: one map lookup, cheap enough
    /// for every drain tick.
    pub fn lost(&self) -> u64 {
        self.kernel_count(counter::LOST)
    }

    fn kernel_count(&self, index: u32) -> u64 {
        self.counters
            .get(&index, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Each loaded program's name and fdinfo counts (none once detached).
    pub fn program_stats(&self, mut each: impl FnMut(&str, ProgramStats)) {
        for (name, program) in self.ebpf.programs() {
            if let Ok(fd) = program.fd() {
                each(name, program_stats(fd));
            }
        }
    }

    /// Runs of our programs that the kernel skipped (recursion guard), from
    /// each program's fdinfo: the kernel's own count, not an estimate, less
    /// the skipped runs whose event the backup program made. The backup's
    /// own skipped runs lose nothing by themselves (it only stands in for
    /// another program, whose skip is counted). A file read per program:
    /// not for every drain tick.
    pub fn recursion_misses(&self) -> u64 {
        self.skipped().0
    }

    /// Skipped runs, net of recovered: (all programs', socket programs').
    /// Only the latter can leave a socket's transitions missing; the others
    /// cost exits, signals or softirq marks.
    pub fn skipped(&self) -> (u64, u64) {
        let (mut all, mut socket) = (self.detached_misses, self.detached_socket_misses);
        for (name, program) in self.ebpf.programs() {
            if kernel::is_backup_program(name) {
                continue;
            }
            let misses = program.fd().map_or(0, program_misses);
            all += misses;
            if kernel::is_socket_program(name) {
                socket += misses;
            }
        }
        let recovered = self.kernel_count(counter::RECOVERED);
        (
            all.saturating_sub(recovered),
            socket.saturating_sub(recovered),
        )
    }
}

/// A loaded program's `recursion_misses`, from its fdinfo.
fn program_misses(fd: &aya::programs::ProgramFd) -> u64 {
    program_stats(fd).recursion_misses
}

/// What the kernel counts for one loaded program (its fdinfo).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgramStats {
    /// Time spent running and runs: 0 unless `kernel.bpf_stats_enabled=1`.
    pub run_time_ns: u64,
    pub run_cnt: u64,
    /// Runs skipped by the kernel's recursion guard.
    pub recursion_misses: u64,
}

/// Reads a program's fdinfo into a stack buffer: cheap enough to be read
/// every second for metrics, and allocates nothing.
fn program_stats(fd: &aya::programs::ProgramFd) -> ProgramStats {
    use std::io::{Read as _, Write as _};
    let mut path = [0u8; 48];
    let len = {
        let mut w = &mut path[..];
        let _ = write!(w, "/proc/self/fdinfo/{}", fd.as_fd().as_raw_fd());
        48 - w.len()
    };
    let mut stats = ProgramStats::default();
    let Ok(path) = std::str::from_utf8(&path[..len]) else {
        return stats;
    };
    // A program's fdinfo is a few hundred bytes.
    let mut buf = [0u8; 2048];
    let Ok(n) = std::fs::File::open(path).and_then(|mut f| f.read(&mut buf)) else {
        return stats;
    };
    for line in buf[..n].split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let value = std::str::from_utf8(&line[colon + 1..])
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        match &line[..colon] {
            b"run_time_ns" => stats.run_time_ns = value,
            b"run_cnt" => stats.run_cnt = value,
            b"recursion_misses" => stats.recursion_misses = value,
            _ => {}
        }
    }
    stats
}

/// Listeners and sockets that existed at start get their owners before
/// anything is attached. A full map (more than its entries) leaves the
/// rest owner-unknown, as before: said in the log, never fatal.
fn seed(ebpf: &mut Ebpf, seeds: &Seeds) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut("LISTENERS")
        .ok_or(LoadError::MissingMap("LISTENERS"))?;
    let mut listeners: BpfHashMap<_, ListenerKey, Task> =
        BpfHashMap::try_from(map).map_err(|e| LoadError::Map("LISTENERS", e))?;
    for (key, task) in &seeds.listeners {
        if let Err(e) = listeners.insert(key, task, 0) {
            log::debug!("seeding a listener: {e}");
        }
    }
    let map = ebpf
        .map_mut("SNAPSHOT_OWNERS")
        .ok_or(LoadError::MissingMap("SNAPSHOT_OWNERS"))?;
    let mut owners: BpfHashMap<_, u64, Task> =
        BpfHashMap::try_from(map).map_err(|e| LoadError::Map("SNAPSHOT_OWNERS", e))?;
    let mut full = 0;
    for (cookie, task) in &seeds.owners {
        if owners.insert(cookie, task, 0).is_err() {
            full += 1;
        }
    }
    if full > 0 {
        log::warn!("{full} sockets open at start left owner-unknown: the snapshot map is full");
    }
    Ok(())
}

mod kfuncs;
mod limits;
mod programs;
mod rings;

use limits::{ensure_descriptors, raise_memlock, release_freed_memory, without_kernel_btf};
pub use limits::{has_bpf_privileges, raise_nofile};
pub use rings::ring_layout;
use rings::slot_rings;
