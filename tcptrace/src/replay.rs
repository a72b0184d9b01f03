//! `--read`: a recording through the same pipeline as a live run, without
//! root or BPF. Every whole frame before a fault is rendered; the fault is
//! then named (file and byte offset) and the exit status is non-zero.

use std::io::{self, Write};

use anyhow::Context as _;

use crate::{
    cli::Args,
    counters::Counters,
    decode::Decoder,
    kernel::Reasons,
    pipeline::Pipeline,
    recording::{Frame, Header, RecordingSet, Trailer, read_set},
    render::RenderOptions,
    tracker::TrackerOptions,
};

/// What a replay read.
pub struct Fed {
    /// Kernel records read.
    pub events: u64,
    pub trailer: Option<Box<Trailer>>,
    /// Why reading stopped before the end, with the file and byte offset.
    pub fault: Option<String>,
}

/// Feeds every frame of `set` through `pipeline`, up to the first fault,
/// and finishes it as the live run finished.
pub fn feed<W: Write>(set: &mut RecordingSet, pipeline: &mut Pipeline<W>) -> io::Result<Fed> {
    let mut fed = Fed {
        events: 0,
        trailer: None,
        fault: None,
    };
    let mut finished = false;
    'files: for i in 0..set.len() {
        let mut reader = match set.open(i) {
            Ok(r) => r,
            Err(e) => {
                fed.fault = Some(e.to_string());
                break 'files;
            }
        };
        loop {
            let frame = match reader.next_frame() {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    fed.fault = Some(format!("{}: {e}", set.name(i)));
                    break 'files;
                }
            };
            match frame {
                Frame::Event(raw) => {
                    fed.events += 1;
                    pipeline.raw(&raw)?;
                }
                Frame::Tick(now) => pipeline.tick(now)?,
                Frame::Loss(now) => pipeline.note_loss(now),
                Frame::Workload(w) => pipeline.workload(w.id, w.workload),
                Frame::Alive(pairs) => {
                    pipeline.finish(Some(&pairs.into_iter().collect()))?;
                    finished = true;
                }
                Frame::Trailer(t) => fed.trailer = Some(t),
                Frame::Sample(sample) => pipeline.host_sample(&sample),
            }
        }
    }
    // A recording cut short ends as a live run stopped without the exit
    // check: what is open is reported open.
    if !finished {
        pipeline.finish(None)?;
    }
    pipeline.output().flush()?;
    Ok(fed)
}

/// A pipeline for a recording with `header`: its RST and drop reason names, its
/// table size, its cgroup names.
pub fn pipeline_for<W: Write>(
    header: &Header,
    tracker: TrackerOptions,
    render: RenderOptions,
    out: W,
) -> Pipeline<W> {
    let names = |pairs: &std::collections::BTreeMap<u32, String>| {
        Reasons::from_pairs(pairs.iter().map(|(code, name)| (*code, name.as_str())))
    };
    // The recording's own table size: the same evictions as live.
    let tracker = TrackerOptions {
        max_sockets: header.max_sockets as usize,
        ..tracker
    };
    Pipeline::new(tracker, render, out)
        .with_decoder(
            Decoder::new(names(&header.reset_reasons))
                .with_drop_reasons(names(&header.drop_reasons)),
        )
        .with_recorded_cgroups()
}

/// A recording could not be read to its end.
#[derive(Debug, thiserror::Error)]
#[error("{0} (everything before it was shown)")]
pub struct Unreadable(pub String);

pub fn run(args: &Args) -> anyhow::Result<()> {
    let filter = args.read_filter()?;
    let mut set = read_set(&args.read).context("--read")?;
    let header = set.header().clone();
    eprintln!("tcptrace: {}", describe(&header, set.len()));
    for note in set.notes() {
        eprintln!("tcptrace: note: {note}");
    }
    let render = RenderOptions {
        view: args.view,
        json: args.json,
        color: args.color(io::IsTerminal::is_terminal(&io::stdout())),
        timestamp: args.timestamp,
        wide: args.wide,
        wall_offset_ns: i128::from(header.wall_offset_ns),
        own_netns: header.own_netns,
    };
    // Nothing to drain meanwhile: a slow reader of stdout may hold us back.
    let out = io::BufWriter::with_capacity(64 << 10, io::stdout());
    let mut pipeline =
        pipeline_for(&header, args.tracker_options(), render, out).with_filter(filter);
    let fed = match feed(&mut set, &mut pipeline) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(e).context("writing output"),
        Ok(fed) => fed,
    };
    let Fed {
        events,
        trailer,
        fault,
    } = fed;

    if !args.no_summary {
        let counters = replay_counters(trailer.as_deref(), events, pipeline.undecodable());
        let mut err = io::stderr().lock();
        pipeline.write_summary(&mut err, &counters)?;
        match &trailer {
            Some(t) if t.events_dropped > 0 => writeln!(
                err,
                "  recording:  {} events were not recorded (the disk did not keep up)",
                t.events_dropped
            )?,
            Some(_) => {}
            None => writeln!(
                err,
                "  recording:  no trailer (cut short, or not the last file): the kernel's \
                 counts are unknown; {events} events read"
            )?,
        }
        if pipeline.filtered() > 0 {
            writeln!(
                err,
                "  read:       {} of {events} events left out by the filters given now",
                pipeline.filtered()
            )?;
        }
        let mut line = serde_json::to_value(counters)?;
        line["tracker"] = serde_json::to_value(pipeline.tracker_stats())?;
        line["summary"] = serde_json::to_value(pipeline.summary())?;
        line["read"] = serde_json::json!({
            "events": events,
            "filtered": pipeline.filtered(),
            "trailer": trailer.is_some(),
        });
        writeln!(err, "tcptrace-summary {line}")?;
    }
    match fault {
        Some(f) => Err(Unreadable(f).into()),
        None => Ok(()),
    }
}

/// The recording run's counters, from its trailer; without one, only what
/// was read is known.
fn replay_counters(trailer: Option<&Trailer>, events: u64, undecodable: u64) -> Counters {
    match trailer {
        Some(t) => Counters {
            undecodable,
            ..t.counters
        },
        None => Counters {
            produced: events,
            received: events,
            undecodable,
            ..Counters::default()
        },
    }
}

/// "a recording of HOST (Linux X, tcptrace Y), started …, N files".
fn describe(h: &Header, files: usize) -> String {
    let started = utc_date_time(h.started_wall_ns);
    let filters = if h.filters.is_empty() {
        "no filters".to_owned()
    } else {
        format!("filters {}", h.filters.join(" "))
    };
    format!(
        "reading a recording of {} (Linux {}, tcptrace {}) started {started}, {filters}; {files} file{}",
        crate::render::escape(&h.hostname),
        h.kernel_release,
        h.tcptrace_version,
        if files == 1 { "" } else { "s" }
    )
}

/// "YYYY-MM-DD HH:MM:SS UTC" of ns since the epoch (a recording travels
/// between time zones: UTC says when it was, anywhere).
fn utc_date_time(ns: i64) -> String {
    let at =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(ns.max(0) as u64 / 1_000_000_000);
    // RFC 3339 "2026-11-29T08:35:37Z", made easier to read.
    let text = humantime::format_rfc3339_seconds(at).to_string();
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use tcptrace_common::{AF_INET, Event, kind};

    use super::*;
    use crate::{
        recording::{kind as frame, put_frame, put_preamble},
        render::View,
    };

    #[test]
    fn a_recordings_own_drop_reason_names_name_its_drops() {
        let header = Header {
            event_size: size_of::<Event>() as u32,
            max_sockets: 64,
            drop_reasons: [(12, "NETFILTER_DROP".to_owned())].into(),
            ..Header::default()
        };
        let drop = Event {
            kind: kind::DROP,
            family: AF_INET,
            value: 12,
            seg_flags: 0x02,
            ..Event::default()
        };
        // SAFETY: viewing plain #[repr(C)] data as bytes, as the ring holds it.
        let raw = unsafe {
            std::slice::from_raw_parts((&raw const drop).cast::<u8>(), size_of::<Event>())
        };
        let mut file = BytesMut::new();
        put_preamble(&mut file, &header).unwrap();
        put_frame(&mut file, frame::EVENT, raw);
        let path = std::env::temp_dir().join(format!("tcptrace-drops-{}.rec", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        let mut set = read_set(std::slice::from_ref(&path)).unwrap();
        let render = RenderOptions {
            view: View::Stream,
            json: true,
            ..RenderOptions::default()
        };
        let mut pipeline =
            pipeline_for(set.header(), TrackerOptions::default(), render, Vec::new());
        let fed = feed(&mut set, &mut pipeline).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(fed.fault.is_none(), "{:?}", fed.fault);
        let text = String::from_utf8(pipeline.output().clone()).unwrap();
        assert!(
            text.contains(r#""reason":{"code":12,"name":"NETFILTER_DROP"},"segment_flags":2"#),
            "{text}"
        );
        assert_eq!(pipeline.summary().drops.by_name["NETFILTER_DROP"], 1);
    }

    #[test]
    fn dates_are_utc_and_civil() {
        assert_eq!(super::utc_date_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            super::utc_date_time(1_795_941_337 * 1_000_000_000),
            "2026-11-29 08:35:37 UTC"
        );
    }
}
