//! Output that never blocks the drain. Renderers write into an
//! [`OutputQueue`]; full chunks go through a bounded queue to a writer
//! thread that owns the real output (stdout). A slow reader (`| jq`) holds
//! processing back ([`OutputQueue::backlogged`]): the session stops taking
//! batches while the input thread goes on emptying the ring into its own
//! bounded backlog. Nothing is dropped unless the reader stalls past every
//! buffer: then whole chunks are dropped and counted, while tcptrace keeps
//! answering signals. A closed reader (`| head -1`) is noticed even when
//! nothing more is written.

use std::{
    io::{self, Write},
    os::fd::{AsRawFd, RawFd},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Bytes gathered before a chunk is queued.
const CHUNK_BYTES: usize = 64 * 1024;
/// Chunks the queue holds: 4 MiB of output waiting for a slow reader.
const QUEUE_CHUNKS: usize = 64;
/// Past this many chunks waiting, processing pauses: the rest of the queue
/// is headroom for what one input batch renders.
const BACKLOG_CHUNKS: usize = QUEUE_CHUNKS / 2;
/// How often an idle writer checks whether its reader went away.
const IDLE_CHECK: Duration = Duration::from_millis(100);

/// Bytes on their way to the writer, with their line count (counted once,
/// here, for the accounting of a stalled reader).
struct Chunk {
    bytes: Vec<u8>,
    lines: u64,
}

/// What happened to the output, for the summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutputStats {
    pub written_bytes: u64,
    /// Lines (and bytes) dropped because the reader did not keep up.
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
    /// Time the queue spent full (the reader stalled).
    pub blocked_ms: u64,
}

#[derive(Default)]
struct Shared {
    written_bytes: AtomicU64,
    /// Queued and not yet written: chunks, bytes, lines.
    pending_chunks: AtomicUsize,
    pending_bytes: AtomicU64,
    pending_lines: AtomicU64,
    /// The reader is gone (EPIPE, or the pipe hung up).
    closed: AtomicBool,
    /// Another write error, kept for the exit status.
    error: std::sync::Mutex<Option<io::Error>>,
}

/// The renderers' `Write`: buffers, queues, never blocks.
pub struct OutputQueue {
    current: Vec<u8>,
    tx: Option<SyncSender<Chunk>>,
    shared: Arc<Shared>,
    writer: Option<JoinHandle<()>>,
    done: Receiver<()>,
    dropped_lines: u64,
    dropped_bytes: u64,
    blocked_since: Option<Instant>,
    blocked: Duration,
}

impl OutputQueue {
    /// Starts the writer thread on `out`; `fd` is watched for a reader that
    /// went away while nothing is being written.
    pub fn new<W: Write + Send + 'static>(out: W, fd: Option<RawFd>) -> io::Result<OutputQueue> {
        let (tx, rx) = mpsc::sync_channel::<Chunk>(QUEUE_CHUNKS);
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let writer = std::thread::Builder::new()
            .name("tcptrace-output".into())
            .spawn(move || {
                write_chunks(out, fd, &rx, &thread_shared);
                let _ = done_tx.send(());
            })?;
        Ok(OutputQueue {
            current: Vec::with_capacity(CHUNK_BYTES),
            tx: Some(tx),
            shared,
            writer: Some(writer),
            done,
            dropped_lines: 0,
            dropped_bytes: 0,
            blocked_since: None,
            blocked: Duration::ZERO,
        })
    }

    /// On stdout (watched for its reader going away).
    pub fn stdout() -> io::Result<OutputQueue> {
        let stdout = io::stdout();
        let fd = stdout.as_raw_fd();
        OutputQueue::new(stdout, Some(fd))
    }

    /// On stderr (with `-- COMMAND`, whose stdout stays its own, as strace
    /// does).
    pub fn stderr() -> io::Result<OutputQueue> {
        let stderr = io::stderr();
        let fd = stderr.as_raw_fd();
        OutputQueue::new(stderr, Some(fd))
    }

    /// The writer is behind: take no more input until it catches up (the
    /// time spent so is reported as time blocked).
    pub fn backlogged(&mut self) -> bool {
        let behind = self.shared.pending_chunks.load(Ordering::Relaxed) >= BACKLOG_CHUNKS;
        self.note_blocked(behind);
        behind
    }

    fn note_blocked(&mut self, blocked: bool) {
        match (blocked, self.blocked_since) {
            (true, None) => self.blocked_since = Some(Instant::now()),
            (false, Some(since)) => {
                self.blocked += since.elapsed();
                self.blocked_since = None;
            }
            _ => {}
        }
    }

    /// The reader went away: time to stop.
    pub fn closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// A write error other than a closed reader.
    pub fn take_error(&self) -> Option<io::Error> {
        self.shared.error.lock().ok()?.take()
    }

    pub fn stats(&self) -> OutputStats {
        let blocked = self.blocked + self.blocked_since.map_or(Duration::ZERO, |t| t.elapsed());
        OutputStats {
            written_bytes: self.shared.written_bytes.load(Ordering::Relaxed),
            dropped_lines: self.dropped_lines,
            dropped_bytes: self.dropped_bytes,
            blocked_ms: blocked.as_millis() as u64,
        }
    }

    fn send_current(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_BYTES));
        let Some(tx) = &self.tx else {
            return self.drop_chunk(&chunk);
        };
        let (bytes, lines) = (chunk.len() as u64, count_lines(&chunk));
        match tx.try_send(Chunk {
            bytes: chunk,
            lines,
        }) {
            Ok(()) => {
                let s = &self.shared;
                s.pending_chunks.fetch_add(1, Ordering::Relaxed);
                s.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
                s.pending_lines.fetch_add(lines, Ordering::Relaxed);
            }
            Err(TrySendError::Full(chunk) | TrySendError::Disconnected(chunk)) => {
                self.note_blocked(true);
                self.dropped_bytes += bytes;
                self.dropped_lines += chunk.lines;
            }
        }
    }

    fn drop_chunk(&mut self, chunk: &[u8]) {
        self.dropped_bytes += chunk.len() as u64;
        self.dropped_lines += count_lines(chunk);
    }

    /// Queues what is left and waits up to `timeout` for the writer to
    /// finish; a stalled reader's output is then given up (and counted).
    pub fn finish(&mut self, timeout: Duration) -> OutputStats {
        self.send_current();
        self.tx = None; // the writer ends once the queue is empty
        if self.done.recv_timeout(timeout).is_ok() {
            if let Some(writer) = self.writer.take() {
                let _ = writer.join();
            }
        } else {
            // Stalled: what is still queued will never be written.
            let s = &self.shared;
            self.dropped_bytes += s.pending_bytes.swap(0, Ordering::Relaxed);
            self.dropped_lines += s.pending_lines.swap(0, Ordering::Relaxed);
            self.note_blocked(false);
        }
        self.stats()
    }
}

impl Write for OutputQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hand the chunk on before it would grow (a realloc copies it all).
        if !self.current.is_empty() && self.current.len() + buf.len() > self.current.capacity() {
            self.send_current();
        }
        self.current.extend_from_slice(buf);
        if self.current.len() >= CHUNK_BYTES {
            self.send_current();
        }
        Ok(buf.len())
    }

    /// Hands what is buffered to the writer (the drain tick calls this).
    fn flush(&mut self) -> io::Result<()> {
        self.send_current();
        Ok(())
    }
}

/// The writer thread: writes chunks in order; when idle, checks whether the
/// reader is gone.
fn write_chunks<W: Write>(mut out: W, fd: Option<RawFd>, rx: &Receiver<Chunk>, shared: &Shared) {
    loop {
        let chunk = match rx.recv_timeout(IDLE_CHECK) {
            Ok(chunk) => chunk,
            Err(RecvTimeoutError::Timeout) => {
                if fd.is_some_and(reader_gone) {
                    shared.closed.store(true, Ordering::Relaxed);
                    return;
                }
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let result = out.write_all(&chunk.bytes).and_then(|()| out.flush());
        match result {
            Ok(()) => {
                let len = chunk.bytes.len() as u64;
                shared.written_bytes.fetch_add(len, Ordering::Relaxed);
                shared.pending_chunks.fetch_sub(1, Ordering::Relaxed);
                shared.pending_bytes.fetch_sub(len, Ordering::Relaxed);
                shared
                    .pending_lines
                    .fetch_sub(chunk.lines, Ordering::Relaxed);
            }
            Err(e) => {
                shared.closed.store(true, Ordering::Relaxed);
                if e.kind() != io::ErrorKind::BrokenPipe
                    && let Ok(mut slot) = shared.error.lock()
                {
                    *slot = Some(e);
                }
                return;
            }
        }
    }
}

/// SIMD search (memchr): a byte-by-byte count cost a third of the reader's
/// CPU on JSON output.
fn count_lines(chunk: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', chunk).count() as u64
}

/// A pipe or socket whose reader closed reports POLLERR or POLLHUP on the
/// writing end; a file or terminal never does.
fn reader_gone(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that blocks until told to go on, like a stalled pipe.
    struct Stalled(Receiver<()>, Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            self.1.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_costs_dropped_lines_never_a_blocked_writer() {
        let (go, wait) = mpsc::channel();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut q = OutputQueue::new(Stalled(wait, seen.clone()), None).unwrap();
        let line = [b'x'; 1023];
        let start = Instant::now();
        let lines = (QUEUE_CHUNKS + 8) * CHUNK_BYTES / 1024;
        // Far more than the queue holds: every write returns at once, and
        // the queue says it is backlogged long before it is full.
        for i in 0..lines {
            q.write_all(&line).unwrap();
            q.write_all(b"\n").unwrap();
            if i == (BACKLOG_CHUNKS + 1) * CHUNK_BYTES / 1024 {
                assert!(q.backlogged());
            }
        }
        q.flush().unwrap();
        assert!(start.elapsed() < Duration::from_secs(2));
        let stats = q.stats();
        assert!(stats.dropped_lines > 0, "{stats:?}");
        assert_eq!(stats.dropped_bytes, stats.dropped_lines * 1024, "{stats:?}");
        // finish gives up on the stalled writer after its timeout, and what
        // was still queued counts as dropped: nothing was written.
        let start = Instant::now();
        let stats = q.finish(Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(1));
        assert_eq!(stats.dropped_lines, lines as u64, "{stats:?}");
        drop(go);
    }

    #[test]
    fn everything_is_written_in_order_when_the_reader_keeps_up() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = OutputQueue::new(Sink(seen.clone()), None).unwrap();
        let mut expected = Vec::new();
        for i in 0..100_000 {
            let line = format!("{i}\n");
            expected.extend_from_slice(line.as_bytes());
            q.write_all(line.as_bytes()).unwrap();
            if i % 1000 == 0 {
                // A slow producer: the writer keeps up, nothing is dropped.
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        let stats = q.finish(Duration::from_secs(5));
        assert_eq!(stats.dropped_lines, 0, "{stats:?}");
        assert_eq!(*seen.lock().unwrap(), expected);
        assert_eq!(stats.written_bytes, expected.len() as u64);
    }

    #[test]
    fn a_pipe_whose_reader_closed_is_noticed_without_writing() {
        let mut fds = [0; 2];
        // SAFETY: valid array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        assert!(!reader_gone(fds[1]));
        // SAFETY: closing our own read end.
        unsafe { libc::close(fds[0]) };
        assert!(reader_gone(fds[1]));
        // SAFETY: closing our own write end.
        unsafe { libc::close(fds[1]) };
    }
}
