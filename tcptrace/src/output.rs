//! Output that never blocks the drain. Renderers write into an
//! [`OutputQueue`]; full chunks go through a bounded queue to a writer
//! thread that owns the real output (stdout). A slow reader (`| jq`) holds
//! processing back ([`OutputQueue::backlogged`]): the session stops taking
//! batches while the input thread goes on emptying the ring into its own
//! bounded backlog. A batch already taken can render more than the queue
//! holds (a burst of closes in JSON): then the renderer waits for room, as
//! long as the reader takes chunks ([`QUEUE_ROOM_WAIT`]), so that a file or a
//! reader that is only slower than a burst loses nothing. Only a reader
//! that stalls past that gets whole chunks dropped and counted (and no more
//! waits until it catches up), while tcptrace keeps answering signals. A
//! closed reader (`| head -1`) is noticed even when nothing more is
//! written.
//!
//! Chunks hold whole lines, and a pipe or socket gets them in pieces of
//! whole lines (see [`pipe`]): whatever is dropped or given up at exit,
//! the reader never sees a line cut short, and every line rendered is
//! counted once, as written or as dropped.

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
/// How long a renderer waits for the writer to take a chunk off a full
/// queue before it takes the reader for stalled. A file's writes take
/// microseconds a chunk, and the kernel's dirty-page throttling pauses a
/// writer for at most 200 ms; a reader stalled for longer than that is
/// what the drops are for.
const QUEUE_ROOM_WAIT: Duration = Duration::from_millis(300);

/// Bytes on their way to the writer, with their line count (counted once,
/// here, for the accounting of a stalled reader).
struct Chunk {
    bytes: Vec<u8>,
    lines: u64,
}

/// How long [`OutputQueue::finish`] waits, past its timeout, for a writer
/// told to stop: a pipe's writer stops at its next line boundary within
/// [`pipe::ROOM_WAIT`]; a `write(2)` blocked on a file or terminal does not
/// return at all.
const STOP_WAIT: Duration = Duration::from_millis(300);

/// What happened to the output, for the summary. Every line rendered is
/// either written or dropped: lines rendered = `written_lines` +
/// `dropped_lines`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutputStats {
    pub written_bytes: u64,
    /// Whole lines the reader was given (a line counts once its newline is
    /// written).
    pub written_lines: u64,
    /// Lines (and bytes) dropped because the reader did not keep up.
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
    /// Time the queue spent full (the reader stalled).
    pub blocked_ms: u64,
}

#[derive(Default)]
struct Shared {
    written_bytes: AtomicU64,
    written_lines: AtomicU64,
    /// Queued and not yet written: chunks, bytes, lines.
    pending_chunks: AtomicUsize,
    pending_bytes: AtomicU64,
    pending_lines: AtomicU64,
    /// The reader is gone (EPIPE, or the pipe hung up).
    closed: AtomicBool,
    /// Another write error, kept for the exit status.
    error: std::sync::Mutex<Option<io::Error>>,
    /// The reader stalled past the grace at exit: write no further line.
    stop: AtomicBool,
    /// Signalled (under `room_lock`) each time the writer takes a chunk off
    /// the queue: a renderer waiting for room then tries again.
    room: std::sync::Condvar,
    room_lock: std::sync::Mutex<()>,
}

impl Shared {
    /// `bytes` holding `lines` newlines were written; `chunk_done` when
    /// they were the last of their chunk.
    fn wrote(&self, bytes: u64, lines: u64, chunk_done: bool) {
        self.written_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.written_lines.fetch_add(lines, Ordering::Relaxed);
        self.no_longer_pending(bytes, lines, chunk_done);
    }

    /// A chunk of `bytes` holding `lines` newlines is on its way to the
    /// writer.
    fn pending(&self, bytes: u64, lines: u64) {
        self.pending_chunks.fetch_add(1, Ordering::Relaxed);
        self.pending_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.pending_lines.fetch_add(lines, Ordering::Relaxed);
    }

    /// `bytes` holding `lines` newlines are no longer on their way (written,
    /// or their chunk never queued); `chunk_done` when they were the last of
    /// their chunk.
    fn no_longer_pending(&self, bytes: u64, lines: u64, chunk_done: bool) {
        self.pending_bytes.fetch_sub(bytes, Ordering::Relaxed);
        self.pending_lines.fetch_sub(lines, Ordering::Relaxed);
        if chunk_done {
            self.pending_chunks.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The writer took a chunk off the queue: room for another.
    fn took(&self) {
        let _guard = self.room_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.room.notify_all();
    }

    /// Writing failed: the reader is gone (EPIPE), or another error is kept
    /// for the exit status.
    fn failed(&self, e: io::Error) {
        self.closed.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe
            && let Ok(mut slot) = self.error.lock()
        {
            *slot = Some(e);
        }
    }
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
    /// A wait for room ran out: the reader is stalled, and chunks are
    /// dropped without waiting until it has caught up.
    stalled: bool,
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
            stalled: false,
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
        if !behind {
            // Caught up: a full queue is worth waiting on again.
            self.stalled = false;
        }
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
            written_lines: self.shared.written_lines.load(Ordering::Relaxed),
            dropped_lines: self.dropped_lines,
            dropped_bytes: self.dropped_bytes,
            blocked_ms: blocked.as_millis() as u64,
        }
    }

    /// Queues the whole lines buffered so far; an unfinished line stays for
    /// the next chunk, so that a dropped chunk never leaves half a line
    /// behind (nor a written one half a line ahead).
    fn send_lines(&mut self) {
        let Some(last) = memchr::memrchr(b'\n', &self.current) else {
            return;
        };
        let mut rest = Vec::with_capacity(CHUNK_BYTES.max(self.current.len() - last - 1));
        rest.extend_from_slice(&self.current[last + 1..]);
        self.current.truncate(last + 1);
        self.send_current();
        self.current = rest;
    }

    /// Queues everything buffered.
    fn send_current(&mut self) {
        if self.current.is_empty() {
            return;
        }
        let chunk = std::mem::replace(&mut self.current, Vec::with_capacity(CHUNK_BYTES));
        if self.tx.is_none() {
            return self.drop_chunk(&chunk);
        }
        let (bytes, lines) = (chunk.len() as u64, count_lines(&chunk));
        let chunk = Chunk {
            bytes: chunk,
            lines,
        };
        // Counted as pending before it is in the queue: the writer may take
        // it (and count it written) at once.
        self.shared.pending(bytes, lines);
        if self.queue(chunk).is_err() {
            self.shared.no_longer_pending(bytes, lines, true);
            self.note_blocked(true);
            self.dropped_bytes += bytes;
            self.dropped_lines += lines;
        }
    }

    /// Puts `chunk` in the queue, waiting up to [`QUEUE_ROOM_WAIT`] for room
    /// while the writer is taking chunks; hands it back when the reader
    /// is gone or stalled.
    fn queue(&mut self, chunk: Chunk) -> Result<(), Chunk> {
        let Some(tx) = &self.tx else {
            return Err(chunk);
        };
        let mut chunk = match tx.try_send(chunk) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(chunk)) => return Err(chunk),
            Err(TrySendError::Full(chunk)) if self.stalled => return Err(chunk),
            Err(TrySendError::Full(chunk)) => chunk,
        };
        let deadline = Instant::now() + QUEUE_ROOM_WAIT;
        let shared = &self.shared;
        let mut guard = shared.room_lock.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            // Under the lock: the writer's signal cannot come between this
            // try and the wait.
            match tx.try_send(chunk) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Disconnected(c)) => return Err(c),
                Err(TrySendError::Full(c)) => chunk = c,
            }
            let now = Instant::now();
            if now >= deadline || shared.closed.load(Ordering::Relaxed) {
                self.stalled = true;
                return Err(chunk);
            }
            guard = shared
                .room
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
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
        let mut ended = self.done.recv_timeout(timeout).is_ok();
        if !ended {
            // Stalled: no further line is written. A pipe's writer stops
            // between two lines; then the counts below are exact.
            self.shared.stop.store(true, Ordering::Relaxed);
            ended = self.done.recv_timeout(STOP_WAIT).is_ok();
        }
        if ended && let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
        // What is still queued (after a stall, or a reader that went away)
        // will never be written.
        let s = &self.shared;
        self.dropped_bytes += s.pending_bytes.swap(0, Ordering::Relaxed);
        self.dropped_lines += s.pending_lines.swap(0, Ordering::Relaxed);
        self.note_blocked(false);
        self.stats()
    }
}

impl Write for OutputQueue {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Hand the chunk on before it would grow (a realloc copies it all).
        if !self.current.is_empty() && self.current.len() + buf.len() > self.current.capacity() {
            self.send_lines();
        }
        self.current.extend_from_slice(buf);
        if self.current.len() >= CHUNK_BYTES {
            self.send_lines();
        }
        Ok(buf.len())
    }

    /// Hands the whole lines buffered to the writer (the drain tick calls
    /// this).
    fn flush(&mut self) -> io::Result<()> {
        self.send_lines();
        Ok(())
    }
}

/// The writer thread: a pipe or socket gets whole lines whenever it has
/// room ([`pipe::write_chunks`]); a file or terminal gets whole chunks.
fn write_chunks<W: Write>(out: W, fd: Option<RawFd>, rx: &Receiver<Chunk>, shared: &Shared) {
    match fd.filter(|&fd| pipe::is_pipe(fd)) {
        Some(fd) => pipe::write_chunks(fd, rx, shared),
        None => write_whole_chunks(out, fd, rx, shared),
    }
}

/// The next chunk; `None` once the queue is closed, or when the reader went
/// away while the writer waited.
fn next_chunk(fd: Option<RawFd>, rx: &Receiver<Chunk>, shared: &Shared) -> Option<Chunk> {
    loop {
        match rx.recv_timeout(IDLE_CHECK) {
            Ok(chunk) => {
                shared.took();
                return Some(chunk);
            }
            Err(RecvTimeoutError::Timeout) => {
                if fd.is_some_and(reader_gone) {
                    shared.closed.store(true, Ordering::Relaxed);
                    return None;
                }
            }
            Err(RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Chunks in order with blocking writes: a file or terminal (whose writes
/// finish, or fail) or a test's writer.
fn write_whole_chunks<W: Write>(
    mut out: W,
    fd: Option<RawFd>,
    rx: &Receiver<Chunk>,
    shared: &Shared,
) {
    while let Some(chunk) = next_chunk(fd, rx, shared) {
        if let Err(e) = out.write_all(&chunk.bytes).and_then(|()| out.flush()) {
            return shared.failed(e);
        }
        shared.wrote(chunk.bytes.len() as u64, chunk.lines, true);
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

mod pipe;

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

    /// A reader that takes every chunk, each after a pause: with one, only
    /// slower than chunks are rendered (a file while a burst of closes is
    /// rendered as JSON).
    struct Collect(Arc<std::sync::Mutex<Vec<u8>>>, Duration);

    impl Write for Collect {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            std::thread::sleep(self.1);
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_costs_dropped_lines_and_one_wait_never_a_blocked_renderer() {
        let (go, wait) = mpsc::channel();
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut q = OutputQueue::new(Stalled(wait, seen.clone()), None).unwrap();
        let line = [b'x'; 1023];
        let start = Instant::now();
        let lines = (QUEUE_CHUNKS + 8) * CHUNK_BYTES / 1024;
        // Far more than the queue holds: the queue says it is backlogged
        // long before it is full; once full, one wait for room runs out,
        // and every later write returns at once.
        for i in 0..lines {
            q.write_all(&line).unwrap();
            q.write_all(b"\n").unwrap();
            if i == (BACKLOG_CHUNKS + 1) * CHUNK_BYTES / 1024 {
                assert!(q.backlogged());
            }
        }
        q.flush().unwrap();
        let took = start.elapsed();
        assert!(
            took >= QUEUE_ROOM_WAIT && took < QUEUE_ROOM_WAIT + Duration::from_secs(1),
            "one wait of {QUEUE_ROOM_WAIT:?}, then drops without waiting: took {took:?}"
        );
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
        let mut q = OutputQueue::new(Collect(seen.clone(), Duration::ZERO), None).unwrap();
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
    fn a_burst_larger_than_the_queue_waits_for_a_slow_reader_and_loses_nothing() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut q =
            OutputQueue::new(Collect(seen.clone(), Duration::from_millis(1)), None).unwrap();
        let line = [b'y'; 1023];
        // Three times what the queue holds, rendered at once.
        let lines = 3 * QUEUE_CHUNKS * CHUNK_BYTES / 1024;
        for _ in 0..lines {
            q.write_all(&line).unwrap();
            q.write_all(b"\n").unwrap();
        }
        let stats = q.finish(Duration::from_secs(10));
        assert_eq!(stats.dropped_lines, 0, "{stats:?}");
        assert_eq!(stats.written_lines, lines as u64, "{stats:?}");
        assert_eq!(seen.lock().unwrap().len(), lines * 1024);
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
