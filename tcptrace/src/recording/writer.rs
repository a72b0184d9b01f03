//! Writes a recording without ever making the drain wait: frames are
//! gathered in memory and handed, in chunks of whole frames, to a writing
//! thread; when the disk falls that far behind, chunks are dropped and
//! counted instead. Rotation (`--rotate-size`, `--rotate-count`) happens
//! between chunks, so every file holds whole frames after its own header.

use std::{
    collections::HashSet,
    fs::File,
    io::{self, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use super::{Header, Trailer, WorkloadFrame, kind, put_frame, put_json_frame, put_preamble};
use crate::{cgroups::Workload, counters::Counters};

/// A chunk is handed to the writing thread once it holds this much…
const CHUNK_BYTES: usize = 256 << 10;
/// …or once it is this old (evidence reaches the disk within a second).
const CHUNK_AGE: Duration = Duration::from_millis(500);
/// Chunks waiting for the disk: 64 × 256 KiB = 16 MiB at most.
const QUEUE_CHUNKS: usize = 64;

/// When to start a new file, as tcpdump's `-C` and `-W`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rotation {
    /// Start a new file once this many bytes are written to the current one.
    pub max_bytes: Option<u64>,
    /// Keep only the newest this many files (older ones are deleted).
    pub max_files: Option<u32>,
}

/// What the recording became, for the summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RecorderReport {
    /// The files written, first to last (those rotated away excluded).
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    pub events: u64,
    /// Kernel records not written: the disk did not keep up, or failed.
    pub events_dropped: u64,
    /// Why writing stopped, if it did.
    pub error: Option<String>,
}

struct Chunk {
    bytes: Bytes,
    events: u64,
}

/// State the writing thread shares with the recorder.
#[derive(Default)]
struct Shared {
    dropped: AtomicU64,
    bytes: AtomicU64,
    error: Mutex<Option<String>>,
    files: Mutex<Vec<PathBuf>>,
}

pub struct Recorder {
    buf: BytesMut,
    buf_events: u64,
    buf_since: Option<Instant>,
    events: u64,
    tx: Option<SyncSender<Chunk>>,
    done: Receiver<()>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Recorder {
    /// Creates the first file: called before anything is loaded, so that a
    /// bad path fails first.
    pub fn create_file(path: &Path) -> io::Result<File> {
        File::create(path).map_err(|e| with_path(e, path))
    }

    /// Writes the header to `file` (made by [`Recorder::create_file`] at
    /// `path`) and starts the writing thread.
    pub fn start(
        file: File,
        path: &Path,
        header: Header,
        rotation: Rotation,
    ) -> io::Result<Recorder> {
        let shared = Arc::new(Shared::default());
        let (tx, rx) = sync_channel::<Chunk>(QUEUE_CHUNKS);
        let (done_tx, done) = sync_channel(1);
        let mut writer = FileWriter {
            base: path.to_owned(),
            header,
            rotation,
            file,
            written: 0,
            sequence: 0,
            shared: shared.clone(),
        };
        writer.start_file()?;
        shared
            .files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.to_owned());
        let thread = std::thread::Builder::new()
            .name("tcptrace-record".into())
            .spawn(move || {
                writer.run(rx);
                let _ = done_tx.send(());
            })?;
        Ok(Recorder {
            buf: BytesMut::with_capacity(CHUNK_BYTES + 4096),
            buf_events: 0,
            buf_since: None,
            events: 0,
            tx: Some(tx),
            done,
            thread: Some(thread),
            shared,
        })
    }

    /// One kernel record, as the ring held it.
    pub fn event(&mut self, raw: &[u8]) {
        put_frame(&mut self.buf, kind::EVENT, raw);
        self.buf_events += 1;
        self.events += 1;
        self.maybe_hand_over();
    }

    /// The pipeline was ticked at `now_ns` (lingering lives expire on it);
    /// only a tick that `changed` the pipeline's state is written.
    pub fn tick(&mut self, now_ns: u64, changed: bool) {
        if changed {
            put_frame(&mut self.buf, kind::TICK, &now_ns.to_le_bytes());
        }
        if !self.buf.is_empty() {
            self.maybe_hand_over();
        }
    }

    /// New losses were seen at `now_ns`.
    pub fn loss(&mut self, now_ns: u64) {
        put_frame(&mut self.buf, kind::LOSS, &now_ns.to_le_bytes());
    }

    /// A cgroup's name (the pipeline looks each cgroup up once).
    pub fn workload(&mut self, id: u64, workload: &Workload) {
        let frame = WorkloadFrame {
            id,
            workload: workload.clone(),
        };
        put_json_frame(&mut self.buf, kind::WORKLOAD, &frame);
    }

    /// A sample of the host's handshake counters.
    pub fn host_sample(&mut self, sample: &crate::model::HostSample) {
        put_json_frame(&mut self.buf, kind::SAMPLE, sample);
    }

    /// The kernel's sockets at exit.
    pub fn alive(&mut self, alive: &HashSet<(SocketAddr, SocketAddr)>) {
        let mut pairs: Vec<_> = alive.iter().collect();
        pairs.sort_unstable();
        put_json_frame(&mut self.buf, kind::ALIVE, &pairs);
    }

    /// Kernel records not written so far: the disk did not keep up.
    pub fn events_dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Writes the trailer and what is left, waiting at most `grace` for a
    /// stalled disk.
    pub fn finish(
        mut self,
        counters: Counters,
        wall_now_ns: i64,
        grace: Duration,
    ) -> RecorderReport {
        let dropped_so_far = self.shared.dropped.load(Ordering::Relaxed);
        let trailer = Trailer {
            counters,
            ended_wall_ns: wall_now_ns,
            events: self.events,
            events_dropped: dropped_so_far,
        };
        put_json_frame(&mut self.buf, kind::TRAILER, &trailer);
        let deadline = Instant::now() + grace;
        let chunk = self.take_chunk();
        if let Some(tx) = self.tx.take() {
            let mut chunk = Some(chunk);
            while let Some(c) = chunk.take() {
                match tx.try_send(c) {
                    Ok(()) => {}
                    Err(TrySendError::Full(c)) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(10));
                        chunk = Some(c);
                    }
                    Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) => {
                        self.shared.dropped.fetch_add(c.events, Ordering::Relaxed);
                    }
                }
            }
        }
        // The thread ends once the channel is empty; a disk stalled past
        // the grace is given up (the thread dies with the process).
        let left = deadline.saturating_duration_since(Instant::now());
        match self.done.recv_timeout(left.max(Duration::from_millis(10))) {
            Ok(()) | Err(RecvTimeoutError::Disconnected) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                let mut error = self.shared.error.lock().unwrap_or_else(|e| e.into_inner());
                error.get_or_insert_with(|| {
                    format!(
                        "the disk took longer than {} s: the rest was given up",
                        grace.as_secs()
                    )
                });
            }
        }
        RecorderReport {
            files: self
                .shared
                .files
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            bytes: self.shared.bytes.load(Ordering::Relaxed),
            events: self.events,
            events_dropped: self.shared.dropped.load(Ordering::Relaxed),
            error: self
                .shared
                .error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    fn maybe_hand_over(&mut self) {
        let since = *self.buf_since.get_or_insert_with(Instant::now);
        if self.buf.len() < CHUNK_BYTES && since.elapsed() < CHUNK_AGE {
            return;
        }
        let chunk = self.take_chunk();
        let Some(tx) = &self.tx else { return };
        if let Err(TrySendError::Full(c) | TrySendError::Disconnected(c)) = tx.try_send(chunk) {
            // Never wait for the disk: the ring must keep draining.
            self.shared.dropped.fetch_add(c.events, Ordering::Relaxed);
        }
    }

    fn take_chunk(&mut self) -> Chunk {
        self.buf_since = None;
        let events = std::mem::take(&mut self.buf_events);
        Chunk {
            bytes: self.buf.split().freeze(),
            events,
        }
    }
}

/// The writing thread's side: the current file and when to rotate.
struct FileWriter {
    base: PathBuf,
    header: Header,
    rotation: Rotation,
    file: File,
    written: u64,
    sequence: u32,
    shared: Arc<Shared>,
}

impl FileWriter {
    fn run(&mut self, rx: Receiver<Chunk>) {
        let mut failed = false;
        for chunk in rx {
            if failed {
                self.shared
                    .dropped
                    .fetch_add(chunk.events, Ordering::Relaxed);
                continue;
            }
            if let Err(e) = self.write_chunk(&chunk) {
                self.shared
                    .dropped
                    .fetch_add(chunk.events, Ordering::Relaxed);
                eprintln!("tcptrace: recording stopped: {e}; tracing goes on");
                *self.shared.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                failed = true;
            }
        }
        let _ = self.file.flush();
    }

    fn write_chunk(&mut self, chunk: &Chunk) -> io::Result<()> {
        if self
            .rotation
            .max_bytes
            .is_some_and(|max| self.written >= max)
        {
            self.rotate()?;
        }
        self.file
            .write_all(&chunk.bytes)
            .map_err(|e| with_path(e, &self.path(self.sequence)))?;
        self.written += chunk.bytes.len() as u64;
        self.shared
            .bytes
            .fetch_add(chunk.bytes.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the preamble and header to the current file.
    fn start_file(&mut self) -> io::Result<()> {
        self.header.sequence = self.sequence;
        let mut head = BytesMut::new();
        put_preamble(&mut head, &self.header).map_err(io::Error::other)?;
        self.file
            .write_all(&head)
            .map_err(|e| with_path(e, &self.path(self.sequence)))?;
        self.written = head.len() as u64;
        self.shared
            .bytes
            .fetch_add(head.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.sequence += 1;
        let path = self.path(self.sequence);
        self.file = File::create(&path).map_err(|e| with_path(e, &path))?;
        self.start_file()?;
        let mut files = self.shared.files.lock().unwrap_or_else(|e| e.into_inner());
        files.push(path);
        if let Some(keep) = self.rotation.max_files {
            while files.len() > keep as usize {
                let old = files.remove(0);
                if let Err(e) = std::fs::remove_file(&old) {
                    log::warn!("removing {} (--rotate-count): {e}", old.display());
                }
            }
        }
        Ok(())
    }

    /// FILE, then FILE.1, FILE.2, … (the header's sequence orders them).
    fn path(&self, sequence: u32) -> PathBuf {
        rotated_path(&self.base, sequence)
    }
}

/// The name of file `sequence` of a recording written to `base`.
pub fn rotated_path(base: &Path, sequence: u32) -> PathBuf {
    if sequence == 0 {
        return base.to_owned();
    }
    let mut name = base.as_os_str().to_owned();
    name.push(format!(".{sequence}"));
    PathBuf::from(name)
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}
