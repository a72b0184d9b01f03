//! Recordings: the raw kernel records of a live run, and what the pipeline
//! was told besides (drain ticks, losses, cgroup names, the exit check),
//! kept in a file that replays anywhere, without root, to the same output.
//!
//! # File format (version 3)
//!
//! ```text
//! file    = magic "TCPTRACE" · version u16 · 0u16 · header_len u32 · header · frame*
//! header  = JSON (see [`Header`]): how to decode and render the records
//! frame   = kind u8 · len u32 · payload[len]              (integers little-endian)
//! kinds   = 1 event     the kernel's record: `header.event_size` bytes, or
//!                       (version 3 on) a prefix of them, 32 bytes or more
//!           2 tick      u64: the monotonic time the pipeline was ticked at
//!           3 loss      u64: when new losses were seen (lives before are marked)
//!           4 workload  JSON {id, unit, container}: a cgroup's name, before
//!                       the first record that needs it
//!           5 alive     JSON [[local, remote], ...]: the kernel's sockets at exit
//!           6 trailer   JSON (see [`Trailer`]): the run's counters, last
//!           7 sample    JSON (see [`crate::model::HostSample`]): listeners'
//!                       drop counters and namespaces' SYN-cookie counters,
//!                       sampled while tracing (version 2 on)
//! ```
//! Guarantees: every frame is whole or absent, so a file cut short replays
//! up to its last whole frame. A newer tcptrace reads older versions: the
//! kernel record ([`tcptrace_common::Event`]) only ever grows at its end,
//! and a shorter record reads with its missing fields zero ("unknown");
//! any change to it bumps [`VERSION`]. An older tcptrace refuses a newer
//! file by its version, before reading anything else.

mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::{collections::BTreeMap, net::SocketAddr};

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use crate::{cgroups::Workload, counters::Counters};

pub use reader::{FrameReader, RecordingSet, read_set};
pub use writer::{Recorder, RecorderReport, Rotation};

pub const MAGIC: &[u8; 8] = b"TCPTRACE";
/// The format this tcptrace writes; it reads 1..=VERSION. Version 2 added
/// the `sample` frame (an older tcptrace would call it corrupt); version 3
/// let event frames be shorter than `event_size` (the kernel writes each
/// record only as long as its non-zero sections).
pub const VERSION: u16 = 3;
/// magic · version · reserved · header length.
pub const PREAMBLE_LEN: usize = 8 + 2 + 2 + 4;
/// kind · length.
pub const FRAME_HEAD_LEN: usize = 1 + 4;
/// No header or control frame is larger (an exit check of a million
/// sockets is about 60 MB of JSON).
pub const MAX_PAYLOAD: u32 = 128 << 20;
/// A kernel record is never larger than this (today at most 152 bytes).
pub const MAX_EVENT_SIZE: u32 = 4096;

/// Frame kinds.
pub mod kind {
    pub const EVENT: u8 = 1;
    pub const TICK: u8 = 2;
    pub const LOSS: u8 = 3;
    pub const WORKLOAD: u8 = 4;
    pub const ALIVE: u8 = 5;
    pub const TRAILER: u8 = 6;
    pub const SAMPLE: u8 = 7;
}

/// What a recording's reader needs to decode and render its records, and
/// what a person receiving it wants to know about where it came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
// Fields added later read as their default from older files.
#[serde(default)]
pub struct Header {
    /// Size of each kernel record in this file.
    pub event_size: u32,
    /// Shared by the files of one rotated recording.
    pub recording_id: u64,
    /// 0 for the first file of a recording, then 1, 2, … as it rotates.
    pub sequence: u32,
    pub tcptrace_version: String,
    pub hostname: String,
    pub kernel_release: String,
    /// Wall-clock time (ns since the epoch) when recording started.
    pub started_wall_ns: i64,
    /// CLOCK_REALTIME − CLOCK_MONOTONIC at start: turns the records'
    /// monotonic times into wall-clock times.
    pub wall_offset_ns: i64,
    /// tcptrace's own network namespace (others are named in the output).
    pub own_netns: Option<u32>,
    /// `enum sk_rst_reason`, as the recording kernel names it.
    pub reset_reasons: BTreeMap<u32, String>,
    /// `enum skb_drop_reason`, as the recording kernel names it (empty in
    /// recordings made before drops were traced).
    pub drop_reasons: BTreeMap<u32, String>,
    /// The tracepoints, argument positions and struct offsets used.
    pub kernel: serde_json::Value,
    /// The filters in force (the command line's filter flags).
    pub filters: Vec<String>,
    pub ring_bytes: u32,
    pub max_sockets: u64,
}

/// The last frame of a recording: how complete it is.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Trailer {
    pub counters: Counters,
    /// Wall-clock time (ns since the epoch) when recording stopped.
    pub ended_wall_ns: i64,
    /// Kernel records written, over all files of the recording.
    pub events: u64,
    /// Kernel records the disk did not take in time (the drain never
    /// waits for it): missing from the file, though rendered live.
    pub events_dropped: u64,
}

/// A cgroup's unit and container, as the recording host named them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkloadFrame {
    pub id: u64,
    #[serde(flatten)]
    pub workload: Workload,
}

/// One frame, decoded.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// A kernel record as the file holds it: a prefix of today's event
    /// when shorter, which the decoder reads with the rest zero.
    Event(bytes::Bytes),
    Tick(u64),
    Loss(u64),
    Workload(WorkloadFrame),
    Alive(Vec<(SocketAddr, SocketAddr)>),
    Trailer(Box<Trailer>),
    Sample(Box<crate::model::HostSample>),
}

/// Why a recording cannot be read further. `offset` is the byte where the
/// bad part starts, counted from the start of that file.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("not a tcptrace recording (no TCPTRACE magic at byte 0)")]
    NotARecording,
    #[error(
        "recording format version {0} is newer than this tcptrace reads (1 to {VERSION}): \
         read it with a newer tcptrace"
    )]
    NewerVersion(u16),
    #[error("recording format version 0 does not exist (byte 8): the file is corrupt")]
    ZeroVersion,
    #[error("header cut short at byte {offset}: {got} of {wanted} bytes")]
    TruncatedHeader { offset: u64, wanted: u64, got: u64 },
    #[error("header at byte {offset} is not valid: {why}")]
    BadHeader { offset: u64, why: String },
    #[error("frame cut short at byte {offset}: {got} of {wanted} bytes (the file ends there)")]
    CutShort { offset: u64, wanted: u64, got: u64 },
    #[error("frame at byte {offset} has an unknown kind {kind}: the file is corrupt")]
    UnknownKind { offset: u64, kind: u8 },
    #[error("frame at byte {offset} has a corrupt length {len} for a {what} frame")]
    BadLength {
        offset: u64,
        len: u32,
        what: &'static str,
    },
    #[error("{what} frame at byte {offset} is not valid: {why}")]
    BadPayload {
        offset: u64,
        what: &'static str,
        why: String,
    },
    #[error("reading the recording at byte {offset}: {error}")]
    Io { offset: u64, error: std::io::Error },
}

impl FormatError {
    /// Did the file simply end (cut short) rather than hold garbage?
    pub fn is_cut_short(&self) -> bool {
        matches!(
            self,
            FormatError::CutShort { .. } | FormatError::TruncatedHeader { .. }
        )
    }
}

/// The name of a frame kind, for messages.
pub fn kind_name(kind: u8) -> &'static str {
    match kind {
        kind::EVENT => "event",
        kind::TICK => "tick",
        kind::LOSS => "loss",
        kind::WORKLOAD => "workload",
        kind::ALIVE => "alive",
        kind::TRAILER => "trailer",
        kind::SAMPLE => "sample",
        _ => "unknown",
    }
}

/// Appends the preamble and header of a file.
pub fn put_preamble(out: &mut BytesMut, header: &Header) -> serde_json::Result<()> {
    let json = serde_json::to_vec(header)?;
    out.reserve(PREAMBLE_LEN + json.len());
    out.put_slice(MAGIC);
    out.put_u16_le(VERSION);
    out.put_u16_le(0);
    out.put_u32_le(json.len() as u32);
    out.put_slice(&json);
    Ok(())
}

/// Appends one frame.
pub fn put_frame(out: &mut BytesMut, kind: u8, payload: &[u8]) {
    out.reserve(FRAME_HEAD_LEN + payload.len());
    out.put_u8(kind);
    out.put_u32_le(payload.len() as u32);
    out.put_slice(payload);
}

/// Appends a frame whose payload is JSON.
pub fn put_json_frame<T: Serialize>(out: &mut BytesMut, kind: u8, value: &T) {
    // Serializing plain data into memory cannot fail.
    let json = serde_json::to_vec(value).unwrap_or_default();
    put_frame(out, kind, &json);
}

/// The host's name and kernel release, for the header.
pub fn host_facts() -> (String, String) {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    };
    (
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease"),
    )
}
