//! Builds the kernel program (tcptrace-ebpf) with nightly and bpf-linker, and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! With AYA_BUILD_SKIP=1 (clippy, check, docs: no bpf-linker needed) an empty
//! placeholder stands in; the loader refuses it with a clear message.
//!
//! Re-run (and so the object rebuilt) when tcptrace-ebpf changes (aya-build
//! watches its directory) or tcptrace-common does (tcptrace's
//! build-dependency on tcptrace-ebpf; see README "Development").
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "tcptrace-ebpf")
        .ok_or_else(|| anyhow!("tcptrace-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("tcptrace-ebpf has no directory"))?
        .as_str()
        .to_owned();

    let skip = env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        let out = PathBuf::from(env::var("OUT_DIR")?).join("tcptrace");
        if !out.exists() {
            fs::write(&out, []).context("writing placeholder kernel object")?;
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: "tcptrace-ebpf",
            root_dir: &root_dir,
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}
