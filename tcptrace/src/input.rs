//! The live input: a thread that only moves raw records out of the ring
//! buffer into userspace batches, so that the kernel's ring is emptied at
//! memory-copy speed while decoding, tracking and rendering (a hundred
//! times slower per event) catch up on the main thread.
//!
//! Without it a burst — a killed process closing 20,000 sockets at once on a
//! 2-CPU host, 230k events in 0.4 s — outran the reader and overflowed the
//! ring (20 % of the events lost). The backlog held here is bounded
//! ([`MAX_BACKLOG`]); past it the thread stops copying and the ring
//! overflows as before, counted by the kernel as lost: every event is still
//! either received or counted lost, in one place.
//!
//! A batch is `bytes`: records framed as a little-endian `u32` length and
//! the record's bytes, cheap to split and hand on (a recorder can keep the
//! same frames). With several rings (one per CPU) the thread also merges
//! them back into time order ([`merge`]), so that what follows sees one
//! ordered stream, as from a single ring.

mod merge;
mod rings;
mod slots;
pub use rings::Rings;
pub use slots::{RingPositions, SlotRing, open as open_slot_rings};

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// Most bytes of records waiting for the main thread.
pub const MAX_BACKLOG: usize = 64 << 20;
/// A batch is handed on once it holds this much.
const BATCH_BYTES: usize = 256 << 10;
/// Without a wakeup per event, the rings are drained at this pace (the
/// kernel wakes the reader early only when a backlog builds), and the
/// main loop's timer follows it. 50 ms rather than 20: the larger batches
/// cost the reader 8-9 % less CPU per event (an in-run A/B of the churn,
/// both modes), for at most 30 ms more before a line shows.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(50);
/// [`DRAIN_INTERVAL`] as epoll's timeout.
const POLL_MS: i32 = DRAIN_INTERVAL.as_millis() as i32;

/// The records of one batch, in ring order.
pub struct Batch {
    bytes: Bytes,
    backlog: Arc<AtomicUsize>,
    len: usize,
}

impl Batch {
    /// Each record's bytes (slices of the batch: no copy, no refcount).
    pub fn records(&self) -> impl Iterator<Item = &[u8]> + '_ {
        frames(&self.bytes)
    }
}

/// Where the rings' records go: framed ([`put_frame`]) into a buffer that
/// the sink may hand on as it fills.
pub trait Sink {
    /// The buffer to append frames to.
    fn buf(&mut self) -> &mut BytesMut;
    /// One more frame, of a record `len` bytes long, was appended to
    /// [`Sink::buf`].
    fn appended(&mut self, len: usize);
    /// Whether to read on: false leaves what is unread in the kernel's
    /// rings (where a full ring's losses are counted).
    fn has_room(&self) -> bool;
}

/// A sink that keeps everything in one buffer.
#[derive(Debug, Default)]
pub struct Collected {
    pub buf: BytesMut,
    /// Frames in `buf`.
    pub records: u64,
    /// Bytes of the records in `buf` (without their frames' lengths).
    pub bytes: u64,
}

impl Sink for Collected {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    fn appended(&mut self, len: usize) {
        self.records += 1;
        self.bytes += len as u64;
    }

    fn has_room(&self) -> bool {
        true
    }
}

/// Appends `record` to `out` as one frame: its length, little-endian `u32`,
/// then its bytes.
pub fn put_frame(out: &mut BytesMut, record: &[u8]) {
    out.put_u32_le(record.len() as u32);
    out.extend_from_slice(record);
}

/// The records of frames back to back; a frame cut short ends them.
pub fn frames(mut rest: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if rest.remaining() < 4 {
            return None;
        }
        let len = rest.get_u32_le() as usize;
        let record = rest.get(..len)?;
        rest = &rest[len..];
        Some(record)
    })
}

impl Drop for Batch {
    fn drop(&mut self) {
        self.backlog.fetch_sub(self.len, Ordering::Relaxed);
    }
}

/// The reading thread and the batches it sends.
pub struct LiveInput {
    rx: UnboundedReceiver<Batch>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    gauge: InputGauge,
}

/// How full the input is, readable from anywhere at any time (metrics).
#[derive(Clone, Debug)]
pub struct InputGauge {
    /// Bytes of records taken from the rings and not yet processed.
    backlog: Arc<AtomicUsize>,
    /// The rings' positions.
    rings: Option<RingPositions>,
}

impl InputGauge {
    /// Bytes read out of the ring that the main thread has not processed.
    pub fn backlog_bytes(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    /// Bytes in the kernel's rings not yet consumed (`None` when their
    /// positions could not be mapped).
    pub fn ring_used_bytes(&self) -> Option<u64> {
        self.rings.as_ref().map(RingPositions::used_bytes)
    }
}

impl LiveInput {
    /// Starts reading `rings`, counting what it hands on in `read`.
    pub fn start(rings: Rings, read: Arc<ReadCounts>) -> std::io::Result<LiveInput> {
        let (tx, rx) = unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let gauge = InputGauge {
            backlog: Arc::new(AtomicUsize::new(0)),
            rings: rings.positions(),
        };
        let counts = Counts {
            read,
            backlog: gauge.backlog.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("tcptrace-ring".into())
            .spawn(move || read_rings(rings, &tx, &thread_stop, &counts))?;
        Ok(LiveInput {
            rx,
            stop,
            thread: Some(thread),
            gauge,
        })
    }

    /// Bytes read out of the rings that the main thread has not processed.
    pub fn backlog_bytes(&self) -> usize {
        self.gauge.backlog_bytes()
    }

    /// How full the ring and the backlog are.
    pub fn gauge(&self) -> InputGauge {
        self.gauge.clone()
    }

    /// The next batch; `None` once the thread has ended (after [`stop`]).
    ///
    /// [`stop`]: LiveInput::stop
    pub async fn next(&mut self) -> Option<Batch> {
        self.rx.recv().await
    }

    /// Asks for a last complete drain (call it after detaching the
    /// programs), then waits for the thread; [`LiveInput::next`] then
    /// yields what is left and ends.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// A batch already waiting, without blocking.
    pub fn try_next(&mut self) -> Option<Batch> {
        self.rx.try_recv().ok()
    }
}

/// What was read from the rings, counted where it is read.
#[derive(Debug, Default)]
pub struct ReadCounts {
    /// Records handed on.
    pub received: AtomicU64,
    /// Their bytes, as the kernel wrote them (each record is only as long
    /// as its non-zero sections: see `tcptrace_common::record_len`).
    pub received_bytes: AtomicU64,
    /// Records the merge handed on out of time order.
    pub late: AtomicU64,
}

impl ReadCounts {
    /// Takes in the tallies of what one read took from the rings, leaving
    /// them at zero (the buffer stays with the reader).
    pub fn take(&self, read: &mut Collected) {
        let records = std::mem::take(&mut read.records);
        let bytes = std::mem::take(&mut read.bytes);
        self.received.fetch_add(records, Ordering::Relaxed);
        self.received_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The rings' count of late records, as it stands after a read.
    pub fn note_late(&self, rings: &Rings) {
        self.late.store(rings.late(), Ordering::Relaxed);
    }
}

/// What the reading thread counts, shared with the rest.
struct Counts {
    read: Arc<ReadCounts>,
    backlog: Arc<AtomicUsize>,
}

fn read_rings(mut rings: Rings, tx: &UnboundedSender<Batch>, stop: &AtomicBool, counts: &Counts) {
    let backlog = &counts.backlog;
    let mut batches = Batches {
        pending: Collected {
            buf: BytesMut::with_capacity(BATCH_BYTES),
            ..Collected::default()
        },
        counts,
        tx,
        open: true,
        stopping: false,
    };
    loop {
        // Read before draining: the last drain after stop sees everything.
        let stopping = stop.load(Ordering::Acquire);
        batches.stopping = stopping;
        rings.read(stopping, &mut batches);
        counts.read.note_late(&rings);
        if !batches.send() || stopping {
            return;
        }
        rings.wait(if backlog.load(Ordering::Relaxed) < MAX_BACKLOG {
            POLL_MS
        } else {
            // Backlogged: come back soon to see whether it shrank.
            1
        });
    }
}

/// The reading thread's sink: batches of about [`BATCH_BYTES`], handed to
/// the main thread as they fill, so that it starts on a large drain early
/// and no batch grows past what one drain holds.
struct Batches<'a> {
    /// The batch being filled.
    pending: Collected,
    counts: &'a Counts,
    tx: &'a UnboundedSender<Batch>,
    /// False once the main thread is gone: nothing more to read for.
    open: bool,
    /// The last drain, after the programs are detached.
    stopping: bool,
}

impl Sink for Batches<'_> {
    fn buf(&mut self) -> &mut BytesMut {
        &mut self.pending.buf
    }

    fn appended(&mut self, len: usize) {
        self.pending.appended(len);
        if self.pending.buf.len() >= BATCH_BYTES {
            self.send();
        }
    }

    /// Past the backlog bound the rings are left to fill (and the kernel
    /// counts what they cannot take); the final drain takes everything.
    fn has_room(&self) -> bool {
        self.open && (self.stopping || self.counts.backlog.load(Ordering::Relaxed) < MAX_BACKLOG)
    }
}

impl Batches<'_> {
    /// Hands what `buf` holds to the main thread; false once it is gone.
    fn send(&mut self) -> bool {
        if self.pending.buf.is_empty() || !self.open {
            return self.open;
        }
        let counts = self.counts;
        counts.read.take(&mut self.pending);
        let bytes = self.pending.buf.split().freeze();
        // One fresh allocation per batch, not a series of regrowths.
        self.pending.buf.reserve(BATCH_BYTES);
        let len = bytes.len();
        counts.backlog.fetch_add(len, Ordering::Relaxed);
        let batch = Batch {
            bytes,
            backlog: counts.backlog.clone(),
            len,
        };
        self.open = self.tx.send(batch).is_ok();
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_yields_its_framed_records_and_releases_its_backlog() {
        let backlog = Arc::new(AtomicUsize::new(0));
        let mut buf = BytesMut::new();
        for rec in [&b"abc"[..], b"", b"0123456789"] {
            buf.put_u32_le(rec.len() as u32);
            buf.extend_from_slice(rec);
        }
        // A frame cut short ends the batch, never a panic.
        buf.put_u32_le(100);
        buf.extend_from_slice(b"xy");
        let len = buf.len();
        backlog.fetch_add(len, Ordering::Relaxed);
        let batch = Batch {
            bytes: buf.freeze(),
            backlog: backlog.clone(),
            len,
        };
        let records: Vec<&[u8]> = batch.records().collect();
        assert_eq!(records, [&b"abc"[..], b"", b"0123456789"]);
        drop(batch);
        assert_eq!(backlog.load(Ordering::Relaxed), 0);
    }
}
