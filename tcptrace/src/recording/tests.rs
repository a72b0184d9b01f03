//! The file format: what is written reads back; every malformed file is
//! refused with the offset of its fault, after every whole frame before it.

use std::{io::Cursor, net::SocketAddr};

use bytes::BytesMut;
use proptest::prelude::*;
use tcptrace_common::{Event, record_len};

use super::*;

const EVENT_SIZE: usize = size_of::<Event>();

fn header() -> Header {
    Header {
        event_size: EVENT_SIZE as u32,
        recording_id: 7,
        tcptrace_version: "0.1.0".into(),
        hostname: "db-3".into(),
        kernel_release: "6.18.0".into(),
        reset_reasons: [(2, "NO_SOCKET".to_owned())].into(),
        ..Header::default()
    }
}

fn event(n: u8) -> Vec<u8> {
    vec![n; EVENT_SIZE]
}

/// A file: header, `events` events with a tick after each, a trailer.
fn file(events: u8) -> Vec<u8> {
    let mut b = BytesMut::new();
    put_preamble(&mut b, &header()).unwrap();
    for n in 0..events {
        put_frame(&mut b, kind::EVENT, &event(n));
        put_frame(&mut b, kind::TICK, &u64::from(n).to_le_bytes());
    }
    put_json_frame(&mut b, kind::TRAILER, &Trailer::default());
    b.to_vec()
}

/// Every frame, then the error that ended the read (if any).
fn read_all(bytes: &[u8]) -> Result<(Vec<Frame>, Option<FormatError>), FormatError> {
    let mut r = FrameReader::open(Cursor::new(bytes.to_vec()))?;
    let mut frames = Vec::new();
    loop {
        match r.next_frame() {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return Ok((frames, None)),
            Err(e) => return Ok((frames, Some(e))),
        }
    }
}

fn header_end() -> usize {
    let mut b = BytesMut::new();
    put_preamble(&mut b, &header()).unwrap();
    b.len()
}

#[test]
fn what_is_written_reads_back_in_order() {
    let (frames, err) = read_all(&file(3)).unwrap();
    assert!(err.is_none(), "{err:?}");
    assert_eq!(frames.len(), 7);
    assert_eq!(frames[0], Frame::Event(event(0).into()));
    assert_eq!(frames[1], Frame::Tick(0));
    assert_eq!(frames[5], Frame::Tick(2));
    assert!(matches!(frames[6], Frame::Trailer(_)));
    let r = FrameReader::open(Cursor::new(file(0))).unwrap();
    assert_eq!(r.header(), &header());
}

#[test]
fn control_frames_round_trip() {
    let mut b = BytesMut::new();
    put_preamble(&mut b, &header()).unwrap();
    let w = WorkloadFrame {
        id: 99,
        workload: crate::cgroups::Workload {
            unit: Some("nginx.service".into()),
            container: None,
        },
    };
    put_json_frame(&mut b, kind::WORKLOAD, &w);
    let a: SocketAddr = "127.0.0.1:80".parse().unwrap();
    let z: SocketAddr = "[::1]:5000".parse().unwrap();
    put_json_frame(&mut b, kind::ALIVE, &vec![(a, z)]);
    put_frame(&mut b, kind::LOSS, &5u64.to_le_bytes());
    let sample = crate::model::HostSample {
        ts_ns: 7,
        listeners: vec![crate::model::ListenerSample {
            cookie: 3,
            netns: 4026531840,
            local: a,
            drops: 16,
        }],
        netns: vec![crate::model::NetnsSample {
            netns: 4026531840,
            syncookies_sent: 2,
            ..Default::default()
        }],
    };
    put_json_frame(&mut b, kind::SAMPLE, &sample);
    let (frames, err) = read_all(&b).unwrap();
    assert!(err.is_none());
    assert_eq!(
        frames,
        vec![
            Frame::Workload(w),
            Frame::Alive(vec![(a, z)]),
            Frame::Loss(5),
            Frame::Sample(Box::new(sample)),
        ]
    );
}

#[test]
fn not_a_recording_is_named_so() {
    let e = FrameReader::open(Cursor::new(b"GET / HTTP/1.1\r\n".to_vec()))
        .err()
        .unwrap();
    assert!(matches!(e, FormatError::NotARecording), "{e}");
    let e = FrameReader::open(Cursor::new(Vec::new())).err().unwrap();
    assert!(matches!(e, FormatError::NotARecording), "{e}");
}

#[test]
fn a_newer_version_is_refused_by_number() {
    let mut f = file(1);
    f[8..10].copy_from_slice(&(VERSION + 1).to_le_bytes());
    let e = FrameReader::open(Cursor::new(f)).err().unwrap();
    assert!(
        e.to_string().contains(&format!("version {}", VERSION + 1)),
        "{e}"
    );
    assert!(e.to_string().contains("newer tcptrace"), "{e}");
}

#[test]
fn a_truncated_header_says_where_and_how_much() {
    let f = file(1);
    let cut = header_end() - 10;
    let e = FrameReader::open(Cursor::new(f[..cut].to_vec()))
        .err()
        .unwrap();
    match e {
        FormatError::TruncatedHeader {
            offset,
            got,
            wanted,
        } => {
            assert_eq!(offset, cut as u64);
            assert_eq!(got + 10, wanted);
        }
        other => panic!("{other}"),
    }
    let e = FrameReader::open(Cursor::new(f[..11].to_vec()))
        .err()
        .unwrap();
    assert!(e.to_string().contains("byte 11"), "{e}");
}

#[test]
fn a_header_that_is_not_json_is_named_with_its_offset() {
    let mut f = file(1);
    f[PREAMBLE_LEN] = b'#';
    let e = FrameReader::open(Cursor::new(f)).err().unwrap();
    assert!(
        e.to_string().starts_with("header at byte 16 is not valid"),
        "{e}"
    );
}

#[test]
fn a_frame_cut_short_keeps_every_whole_frame_before_it() {
    let f = file(3);
    // Cut in the middle of the third event (frames: E T E T E…).
    let third = header_end() + 2 * (FRAME_HEAD_LEN + EVENT_SIZE + FRAME_HEAD_LEN + 8);
    let (frames, err) = read_all(&f[..third + 40]).unwrap();
    assert_eq!(frames.len(), 4);
    match err.unwrap() {
        FormatError::CutShort { offset, got, .. } => {
            assert_eq!(offset, third as u64);
            assert_eq!(got, 40);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_corrupt_length_or_kind_is_named_with_its_offset() {
    let at = header_end();
    // Shorter than every record's head, or longer than the header says.
    for len in [record_len::BARE as u32 - 8, EVENT_SIZE as u32 + 8] {
        let mut f = file(2);
        f[at + 1..at + 5].copy_from_slice(&len.to_le_bytes());
        let (frames, err) = read_all(&f).unwrap();
        assert!(frames.is_empty());
        let msg = err.unwrap().to_string();
        assert_eq!(
            msg,
            format!("frame at byte {at} has a corrupt length {len} for a event frame")
        );
    }

    let mut f = file(2);
    let second = at + FRAME_HEAD_LEN + EVENT_SIZE;
    f[second] = 0xee;
    let (frames, err) = read_all(&f).unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        err.unwrap().to_string(),
        format!("frame at byte {second} has an unknown kind 238: the file is corrupt")
    );
}

#[test]
fn a_bad_json_payload_is_named_with_its_offset() {
    let mut b = BytesMut::new();
    put_preamble(&mut b, &header()).unwrap();
    let at = b.len();
    put_frame(&mut b, kind::TRAILER, b"{not json");
    let (_, err) = read_all(&b).unwrap();
    let msg = err.unwrap().to_string();
    assert!(
        msg.starts_with(&format!("trailer frame at byte {at} is not valid")),
        "{msg}"
    );
}

#[test]
fn older_shorter_records_read_with_their_new_fields_zero() {
    let mut h = header();
    h.event_size = reader::V1_EVENT_SIZE;
    let mut b = BytesMut::new();
    put_preamble(&mut b, &h).unwrap();
    put_frame(
        &mut b,
        kind::EVENT,
        &vec![1u8; reader::V1_EVENT_SIZE as usize],
    );
    let (frames, err) = read_all(&b).unwrap();
    assert!(err.is_none());
    let Frame::Event(raw) = &frames[0] else {
        panic!()
    };
    assert_eq!(raw.len(), EVENT_SIZE);
    assert!(
        raw[reader::V1_EVENT_SIZE as usize..]
            .iter()
            .all(|&b| b == 0)
    );
    // Records larger than today's come from a newer tcptrace.
    h.event_size = EVENT_SIZE as u32 + 8;
    let mut b = BytesMut::new();
    put_preamble(&mut b, &h).unwrap();
    let e = FrameReader::open(Cursor::new(b.to_vec())).err().unwrap();
    assert!(e.to_string().contains("newer than this tcptrace"), "{e}");
}

#[test]
fn a_record_cut_at_a_section_reads_with_the_rest_zero_but_only_from_version_3() {
    let mut b = BytesMut::new();
    put_preamble(&mut b, &header()).unwrap();
    put_frame(&mut b, kind::EVENT, &[5u8; record_len::TO_OWNER]);
    let (frames, err) = read_all(&b).unwrap();
    assert!(err.is_none(), "{err:?}");
    let Frame::Event(raw) = &frames[0] else {
        panic!("{:?}", frames[0])
    };
    // Handed on as written; the decoder reads the rest as zero.
    assert_eq!(&raw[..], &[5u8; record_len::TO_OWNER]);
    let event = crate::decode::event_from_bytes(raw).unwrap();
    // SAFETY: viewing plain data as bytes.
    let decoded =
        unsafe { std::slice::from_raw_parts(std::ptr::from_ref(&event).cast::<u8>(), EVENT_SIZE) };
    assert_eq!(decoded.len(), EVENT_SIZE);
    assert!(decoded[..record_len::TO_OWNER].iter().all(|&b| b == 5));
    assert!(decoded[record_len::TO_OWNER..].iter().all(|&b| b == 0));

    // Version 2 wrote every record whole: a short one there is corruption.
    let mut v2 = b.to_vec();
    v2[MAGIC.len()..MAGIC.len() + 2].copy_from_slice(&2u16.to_le_bytes());
    let (frames, err) = read_all(&v2).unwrap();
    assert!(frames.is_empty());
    assert!(
        err.unwrap().to_string().contains("corrupt length 112"),
        "a short record in a version 2 file"
    );
}

#[test]
fn rotated_files_are_named_after_the_first() {
    use std::path::Path;
    assert_eq!(
        writer::rotated_path(Path::new("/tmp/t.rec"), 0),
        Path::new("/tmp/t.rec")
    );
    assert_eq!(
        writer::rotated_path(Path::new("/tmp/t.rec"), 12),
        Path::new("/tmp/t.rec.12")
    );
}

proptest! {
    // Bounded: CI runs these 512 cases in well under a second.
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any bytes: an error or frames, never a panic; an error's offset lies
    /// within the input.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut with_magic = MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        for input in [bytes, with_magic] {
            if let Ok((_, Some(e))) = read_all(&input) {
                let text = e.to_string();
                prop_assert!(!text.is_empty());
            }
        }
    }

    /// A valid file with one byte changed or cut anywhere: every frame
    /// before the damage still reads, and nothing panics.
    #[test]
    fn damage_anywhere_keeps_what_precedes_it(
        events in 1u8..6,
        at in any::<prop::sample::Index>(),
        value in any::<u8>(),
        cut in any::<bool>(),
    ) {
        let good = file(events);
        let i = at.index(good.len());
        let mut bad = good.clone();
        if cut { bad.truncate(i) } else { bad[i] = value }
        let (all, _) = read_all(&good).unwrap();
        if let Ok((frames, err)) = read_all(&bad) {
            // The frames before the damaged one are all there, unchanged.
            let whole_before = frame_ends(&good).iter().filter(|&&end| end <= i).count();
            prop_assert!(frames.len() >= whole_before, "{} < {whole_before}", frames.len());
            prop_assert_eq!(&frames[..whole_before], &all[..whole_before]);
            if cut {
                prop_assert_eq!(frames.len(), whole_before);
                prop_assert_eq!(err.is_some(), !frame_ends(&good).contains(&i) && i != header_end());
            }
        }
    }
}

/// The offset just past each frame of a valid file.
fn frame_ends(f: &[u8]) -> Vec<usize> {
    let mut ends = Vec::new();
    let mut at = header_end();
    while at + FRAME_HEAD_LEN <= f.len() {
        let len = u32::from_le_bytes(f[at + 1..at + 5].try_into().unwrap()) as usize;
        at += FRAME_HEAD_LEN + len;
        ends.push(at);
    }
    ends
}
