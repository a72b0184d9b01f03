//! Reads recordings: one file or stdin, frame by frame, or the files of a
//! rotated recording in their order. Every whole frame before a fault is
//! returned; the fault is named with its byte offset.

use std::{
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use bytes::{Buf, BytesMut};
use tcptrace_common::{Event, record_len};

use super::{
    FRAME_HEAD_LEN, FormatError, Frame, Header, MAGIC, MAX_EVENT_SIZE, MAX_PAYLOAD, PREAMBLE_LEN,
    Trailer, VERSION, WorkloadFrame, kind, kind_name,
};

/// Bytes asked of the source at a time.
const READ_CHUNK: usize = 64 << 10;
/// Version 1's kernel record: no file has shorter ones.
pub const V1_EVENT_SIZE: u32 = 152;

/// Frames from one file (or stdin), in order.
pub struct FrameReader<R> {
    source: R,
    /// Bytes read and not yet returned; `offset` is the file offset of its
    /// first byte.
    buf: BytesMut,
    offset: u64,
    eof: bool,
    header: Header,
    version: u16,
}

impl<R: Read> FrameReader<R> {
    /// Reads and checks the preamble and header.
    pub fn open(source: R) -> Result<FrameReader<R>, FormatError> {
        let mut r = FrameReader {
            source,
            buf: BytesMut::new(),
            offset: 0,
            eof: false,
            header: Header::default(),
            version: 0,
        };
        let got = r.fill(PREAMBLE_LEN)?;
        if got < MAGIC.len() || &r.buf[..MAGIC.len()] != MAGIC {
            return Err(FormatError::NotARecording);
        }
        if got < PREAMBLE_LEN {
            return Err(FormatError::TruncatedHeader {
                offset: got as u64,
                wanted: PREAMBLE_LEN as u64,
                got: got as u64,
            });
        }
        r.buf.advance(MAGIC.len());
        let version = r.buf.get_u16_le();
        let _reserved = r.buf.get_u16_le();
        let header_len = r.buf.get_u32_le();
        r.offset = PREAMBLE_LEN as u64;
        match version {
            0 => return Err(FormatError::ZeroVersion),
            v if v > VERSION => return Err(FormatError::NewerVersion(v)),
            v => r.version = v,
        }
        if header_len > MAX_PAYLOAD {
            return Err(FormatError::BadHeader {
                offset: 12,
                why: format!("its length {header_len} is past the limit of {MAX_PAYLOAD} bytes"),
            });
        }
        let got = r.fill(header_len as usize)?;
        if got < header_len as usize {
            return Err(FormatError::TruncatedHeader {
                offset: r.offset + got as u64,
                wanted: u64::from(header_len),
                got: got as u64,
            });
        }
        let json = r.buf.split_to(header_len as usize);
        let header: Header = serde_json::from_slice(&json).map_err(|e| FormatError::BadHeader {
            offset: r.offset,
            why: e.to_string(),
        })?;
        let today = size_of::<Event>() as u32;
        if !(V1_EVENT_SIZE..=MAX_EVENT_SIZE).contains(&header.event_size) {
            return Err(FormatError::BadHeader {
                offset: r.offset,
                why: format!("records of {} bytes cannot be", header.event_size),
            });
        }
        if header.event_size > today {
            return Err(FormatError::BadHeader {
                offset: r.offset,
                why: format!(
                    "its records ({} bytes) are newer than this tcptrace's ({today} bytes): \
                     read it with the tcptrace that wrote it ({})",
                    header.event_size, header.tcptrace_version
                ),
            });
        }
        r.offset += u64::from(header_len);
        r.header = header;
        Ok(r)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The lengths an event frame may have: from version 3 on, a record is
    /// a prefix of the event (see [`tcptrace_common::record_len`]); before,
    /// every record was whole.
    fn event_lengths(&self) -> std::ops::RangeInclusive<u32> {
        if self.version >= 3 {
            record_len::BARE as u32..=self.header.event_size
        } else {
            self.header.event_size..=self.header.event_size
        }
    }

    pub fn version(&self) -> u16 {
        self.version
    }

    /// The file offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The next frame; `None` at a clean end of file.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FormatError> {
        let at = self.offset;
        let got = self.fill(FRAME_HEAD_LEN)?;
        if got == 0 {
            return Ok(None);
        }
        if got < FRAME_HEAD_LEN {
            return Err(FormatError::CutShort {
                offset: at,
                wanted: FRAME_HEAD_LEN as u64,
                got: got as u64,
            });
        }
        let kind = self.buf[0];
        let len = u32::from_le_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
        let what = kind_name(kind);
        let bad_length = || FormatError::BadLength {
            offset: at,
            len,
            what,
        };
        match kind {
            kind::EVENT if !self.event_lengths().contains(&len) => return Err(bad_length()),
            kind::TICK | kind::LOSS if len != 8 => return Err(bad_length()),
            kind::WORKLOAD | kind::ALIVE | kind::TRAILER if len > MAX_PAYLOAD => {
                return Err(bad_length());
            }
            kind::EVENT
            | kind::TICK
            | kind::LOSS
            | kind::WORKLOAD
            | kind::ALIVE
            | kind::TRAILER
            | kind::SAMPLE => {}
            _ => return Err(FormatError::UnknownKind { offset: at, kind }),
        }
        let whole = FRAME_HEAD_LEN + len as usize;
        let got = self.fill(whole)?;
        if got < whole {
            return Err(FormatError::CutShort {
                offset: at,
                wanted: whole as u64,
                got: got as u64,
            });
        }
        self.buf.advance(FRAME_HEAD_LEN);
        let payload = self.buf.split_to(len as usize).freeze();
        self.offset += whole as u64;
        let bad = |why: String| FormatError::BadPayload {
            offset: at,
            what,
            why,
        };
        Ok(Some(match kind {
            kind::EVENT => Frame::Event(payload),
            kind::TICK => Frame::Tick(payload.clone().get_u64_le()),
            kind::LOSS => Frame::Loss(payload.clone().get_u64_le()),
            kind::WORKLOAD => Frame::Workload(
                serde_json::from_slice::<WorkloadFrame>(&payload)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            kind::ALIVE => {
                Frame::Alive(serde_json::from_slice(&payload).map_err(|e| bad(e.to_string()))?)
            }
            kind::SAMPLE => Frame::Sample(Box::new(
                serde_json::from_slice(&payload).map_err(|e| bad(e.to_string()))?,
            )),
            _ => Frame::Trailer(Box::new(
                serde_json::from_slice::<Trailer>(&payload).map_err(|e| bad(e.to_string()))?,
            )),
        }))
    }

    /// Makes `buf` hold at least `n` bytes, unless the source ends first;
    /// returns how many it holds.
    fn fill(&mut self, n: usize) -> Result<usize, FormatError> {
        while self.buf.len() < n && !self.eof {
            let start = self.buf.len();
            self.buf.resize(start + READ_CHUNK.max(n - start), 0);
            let result = self.source.read(&mut self.buf[start..]);
            let kept = match &result {
                Ok(k) => *k,
                Err(_) => 0,
            };
            self.buf.truncate(start + kept);
            match result {
                Ok(0) => self.eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => {
                    return Err(FormatError::Io {
                        offset: self.offset + start as u64,
                        error,
                    });
                }
            }
        }
        Ok(self.buf.len().min(n))
    }
}

/// The files of a recording, in the order they were written (or stdin).
pub struct RecordingSet {
    /// (name for messages, path; `None` for stdin), in sequence order.
    files: Vec<(String, Option<PathBuf>, Header)>,
    stdin: Option<FrameReader<Box<dyn Read>>>,
    notes: Vec<String>,
}

/// Why a set of files cannot be read as one recording.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error("{name}: {error}")]
    Format { name: String, error: FormatError },
    #[error("{name}: {error}")]
    Open { name: String, error: io::Error },
    #[error("{0} and {1} are from different recordings: read them one at a time")]
    Mixed(String, String),
    #[error("{0} is given twice (or two files of the recording have one sequence number)")]
    Twice(String),
    #[error("`-` (stdin) cannot be read together with files")]
    StdinWithFiles,
}

/// Opens `paths` (`-` for stdin) and orders them as the recording was
/// written, whatever order the shell listed them in.
pub fn read_set(paths: &[PathBuf]) -> Result<RecordingSet, SetError> {
    if paths.iter().any(|p| p.as_os_str() == "-") {
        if paths.len() > 1 {
            return Err(SetError::StdinWithFiles);
        }
        let reader =
            FrameReader::open(Box::new(io::stdin().lock()) as Box<dyn Read>).map_err(|error| {
                SetError::Format {
                    name: "stdin".into(),
                    error,
                }
            })?;
        let header = reader.header().clone();
        return Ok(RecordingSet {
            files: vec![("stdin".into(), None, header)],
            stdin: Some(reader),
            notes: Vec::new(),
        });
    }
    let mut files = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let reader = open_file(path)?;
        files.push((name, Some(path.clone()), reader.header().clone()));
    }
    files.sort_by_key(|(_, _, h)| (h.recording_id, h.sequence));
    let mut notes = Vec::new();
    for pair in files.windows(2) {
        let ((a, _, ha), (b, _, hb)) = (&pair[0], &pair[1]);
        if ha.recording_id != hb.recording_id {
            return Err(SetError::Mixed(a.clone(), b.clone()));
        }
        if ha.sequence == hb.sequence {
            return Err(SetError::Twice(b.clone()));
        }
        if hb.sequence != ha.sequence + 1 {
            notes.push(format!(
                "files {} to {} of this recording are not given (rotated away?): \
                 sockets spanning them are told in part",
                ha.sequence + 1,
                hb.sequence - 1
            ));
        }
    }
    if let Some((first, _, h)) = files.first()
        && h.sequence > 0
    {
        notes.push(format!(
            "{first} is file {} of its recording: what came before it is not given",
            h.sequence
        ));
    }
    Ok(RecordingSet {
        files,
        stdin: None,
        notes,
    })
}

fn open_file(path: &Path) -> Result<FrameReader<Box<dyn Read>>, SetError> {
    let name = path.display().to_string();
    let file = File::open(path).map_err(|error| SetError::Open {
        name: name.clone(),
        error,
    })?;
    FrameReader::open(Box::new(file) as Box<dyn Read>)
        .map_err(|error| SetError::Format { name, error })
}

impl RecordingSet {
    /// The first file's header: decoding facts are the same in every file.
    pub fn header(&self) -> &Header {
        &self.files[0].2
    }

    /// What the reader should know about the set (files missing).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The name of file `i`, for messages.
    pub fn name(&self, i: usize) -> &str {
        &self.files[i].0
    }

    /// A reader positioned after file `i`'s header (each file is opened
    /// only when its turn comes).
    pub fn open(&mut self, i: usize) -> Result<FrameReader<Box<dyn Read>>, SetError> {
        if let Some(reader) = self.stdin.take() {
            return Ok(reader);
        }
        match &self.files[i].1 {
            Some(path) => open_file(path),
            None => Err(SetError::StdinWithFiles),
        }
    }
}
