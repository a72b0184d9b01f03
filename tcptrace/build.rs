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
    )?;
    if !skip {
        strip_dwarf(&PathBuf::from(env::var("OUT_DIR")?).join("tcptrace"))?;
    }
    Ok(())
}

/// Removes the object's DWARF sections (and their relocations), two thirds
/// of its bytes: bpf-linker has already turned them into BTF, which is all
/// aya and the kernel use. The loader copies the object to rewrite its
/// kfunc calls, so every byte left here is resident at start-up.
fn strip_dwarf(path: &std::path::Path) -> anyhow::Result<()> {
    let data = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data)
        .map_err(|e| anyhow!("parsing the kernel object: {e}"))?;
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug_") || name.starts_with(b".rel.debug_") {
            section.delete = true;
        }
    }
    elf.delete_orphans();
    // LLVM's BPF objects name their sections from the symbol string table;
    // the writer wants a table of section names of its own.
    let has_names = elf
        .sections
        .iter()
        .any(|s| matches!(s.data, object::build::elf::SectionData::SectionString));
    if !has_names {
        let names = elf.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.sh_addralign = 1;
        names.data = object::build::elf::SectionData::SectionString;
    }
    let mut stripped = Vec::new();
    elf.write(&mut stripped)
        .map_err(|e| anyhow!("writing the stripped kernel object: {e}"))?;
    fs::write(path, stripped).with_context(|| format!("writing {}", path.display()))
}
