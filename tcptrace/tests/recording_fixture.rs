//! A recording made by the first format version (checked in, never
//! regenerated) still reads, and tells the same story: whatever the format
//! becomes, files people kept stay readable.
//!
//! Made on Linux 6.18 with `tcptrace --comm python3 --write v1.tcptrace`
//! around a script that closed one connection gracefully on port 47101,
//! was refused on 47102 and was reset with SO_LINGER 0 on 47103.

use std::path::PathBuf;

use tcptrace::{
    recording::{FrameReader, read_set},
    render::{RenderOptions, View},
    replay::{feed, pipeline_for},
    tracker::TrackerOptions,
};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1.tcptrace")
}

#[test]
fn the_version_1_fixture_reads_with_its_kernel_facts() {
    let file = std::fs::File::open(fixture()).unwrap();
    let reader = FrameReader::open(file).unwrap();
    assert_eq!(reader.version(), 1);
    let h = reader.header();
    assert_eq!(h.event_size, 152);
    assert_eq!(h.filters, ["--comm", "python3"]);
    assert!(h.kernel_release.starts_with("6.18"), "{}", h.kernel_release);
    assert!(h.reset_reasons.values().any(|n| n == "NO_SOCKET"));
    // Written before drops were traced: the field reads as empty.
    assert!(h.drop_reasons.is_empty());
    assert!(
        h.kernel["tracepoints"]
            .as_array()
            .is_some_and(|t| !t.is_empty())
    );
}

#[test]
fn the_version_1_fixture_replays_its_three_paths() {
    let mut set = read_set(&[fixture()]).unwrap();
    let header = set.header().clone();
    let render = RenderOptions {
        view: View::Sockets,
        json: true,
        wall_offset_ns: i128::from(header.wall_offset_ns),
        own_netns: header.own_netns,
        ..RenderOptions::default()
    };
    let mut pipeline = pipeline_for(&header, TrackerOptions::default(), render, Vec::new());
    let fed = feed(&mut set, &mut pipeline).unwrap();
    assert!(fed.fault.is_none(), "{:?}", fed.fault);
    assert!(fed.trailer.is_some());
    let text = String::from_utf8(pipeline.output().clone()).unwrap();
    let closes: Vec<(String, String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "socket")
        .map(|v| {
            let s = |x: &serde_json::Value| x.as_str().unwrap_or("?").to_owned();
            (
                s(&v["socket"]["local"]),
                s(&v["socket"]["role"]),
                s(&v["verdict"]["close"]["kind"]),
            )
        })
        .collect();
    let has = |port: &str, role: &str, kind: &str| {
        closes.iter().any(|(local, r, k)| {
            (port.is_empty() || local.ends_with(port)) && r == role && k == kind
        })
    };
    assert!(has(":47101", "server", "passive"), "{closes:#?}");
    assert!(has("", "client", "active"), "{closes:#?}");
    assert!(has("", "client", "refused"), "{closes:#?}");
    assert!(has(":47103", "server", "reset_sent"), "{closes:#?}");
    assert!(has("", "client", "reset_received"), "{closes:#?}");
}
