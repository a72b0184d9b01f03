//! The pipeline's own stages, with the tracker's recorded sequences.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use super::Pipeline;
use crate::{
    cgroups::CgroupNames,
    render::{RenderOptions, View},
    tracker::{
        TrackerOptions,
        fixtures::{client, python},
    },
};

const CLOSE: u8 = 7;
const SYN_SENT: u8 = 2;

/// A cgroup the host does not have (yet, or any more: a container that
/// exited) is not looked up again on every record, only once a second of
/// record time has passed and its names may have been rescanned.
#[test]
fn a_cgroup_not_found_is_asked_again_only_after_a_rescan_is_due() {
    let base = std::env::temp_dir().join(format!("tcptrace-pipeline-cg-{}", std::process::id()));
    let root = base.join("root");
    std::fs::create_dir_all(root.join("system.slice")).unwrap();
    // Made outside the tree and moved in later: its id is known first.
    let outside = base.join("tt-late.service");
    std::fs::create_dir_all(&outside).unwrap();
    let id = std::fs::metadata(&outside).unwrap().ino();
    let render = RenderOptions {
        view: View::None,
        ..RenderOptions::default()
    };
    let mut p = Pipeline::new(TrackerOptions::default(), render, std::io::sink())
        .with_cgroup_names(CgroupNames::with_root(Some(root.clone())));
    let mut owner = python();
    owner.cgroup_id = id;
    let at = |seconds: f64| {
        client()
            .by((seconds * 1e6) as u64, &owner)
            .st(CLOSE, SYN_SENT)
    };

    p.learn_cgroups(&at(0.0));
    assert!(!p.workloads.contains_key(&id), "not in the tree yet");
    std::fs::rename(&outside, root.join("system.slice/tt-late.service")).unwrap();
    // Past the names' own rescan limit (wall time), so that only the
    // pipeline's memory of the miss holds the next record back.
    std::thread::sleep(Duration::from_millis(1100));
    p.learn_cgroups(&at(0.5));
    let too_soon = p.workloads.get(&id).cloned();
    p.learn_cgroups(&at(1.1));
    let unit = p.workloads.get(&id).and_then(|w| w.unit.clone());
    std::fs::remove_dir_all(&base).unwrap();
    assert!(too_soon.is_none(), "asked again half a second after a miss");
    assert_eq!(unit.as_deref(), Some("tt-late.service"));
}
