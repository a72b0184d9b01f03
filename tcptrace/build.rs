//! Builds the kernel program (tcptrace-ebpf) with nightly and bpf-linker, and
//! leaves the object in OUT_DIR for `include_bytes_aligned!`.
//!
//! With AYA_BUILD_SKIP=1 (clippy, check, docs: no bpf-linker needed) an empty
//! placeholder stands in; the loader refuses it with a clear message.
//!
//! Re-run (and so the object rebuilt) when tcptrace-ebpf changes (watched
//! below) or tcptrace-common does (tcptrace's build-dependency on
//! tcptrace-ebpf; see README "Development").
//!
//! The nested cargo is started here rather than through aya-build, which
//! does the same but cannot choose the BPF CPU version: tcptrace's kernel
//! program needs v3 (`-C target-cpu=v3`), whose atomic compare-and-exchange
//! (Linux 5.12+: the loader checks) reserves a slot in the event rings (see
//! tcptrace-ebpf's `submit`). The default (v1) has only an atomic add that
//! returns nothing.
use std::{
    env, fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::{Artifact, CompilerMessage, Message};

const SKIP: &str = "AYA_BUILD_SKIP";
/// The BPF CPU version the program is compiled for (see the module's doc).
const BPF_CPU: &str = "v3";

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
        .as_std_path()
        .to_owned();
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object = out_dir.join("tcptrace");

    println!("cargo:rerun-if-env-changed={SKIP}");
    let skip = env::var(SKIP).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:warning={SKIP} is set: the kernel object is an empty placeholder");
        if !object.exists() {
            fs::write(&object, []).context("writing placeholder kernel object")?;
        }
        return Ok(());
    }
    println!("cargo:rerun-if-changed={}", root_dir.display());
    build_kernel_object(&root_dir, &out_dir, &object)?;
    strip_dwarf(&object)
}

/// `cargo +nightly build` of tcptrace-ebpf for BPF, in a target directory of
/// its own under OUT_DIR (cargo would otherwise wait on its own lock), its
/// messages passed on as build warnings; the binary is copied to `object`.
fn build_kernel_object(root_dir: &Path, out_dir: &Path, object: &Path) -> anyhow::Result<()> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN")?;
    if endian != "little" {
        bail!("tcptrace builds its kernel program for little-endian hosts only");
    }
    // aya-ebpf picks the layout of the host's registers from this cfg.
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        format!("-Ctarget-cpu={BPF_CPU}"),
    ]
    .join("\x1f");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--package",
        "tcptrace-ebpf",
    ])
    .args(["--bins", "--message-format=json", "--release"])
    .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(out_dir.join("ebpf-target"))
    .current_dir(root_dir)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
    // The outer build's compiler and wrappers are stable's.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {cmd:?} (is rustup installed?)"))?;
    let stderr = child.stderr.take().context("nested cargo's stderr")?;
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            println!("cargo:warning={line}");
        }
    });
    let stdout = child.stdout.take().context("nested cargo's stdout")?;
    let mut binary = None;
    for message in Message::parse_stream(BufReader::new(stdout)) {
        match message.context("nested cargo's JSON messages")? {
            Message::CompilerArtifact(Artifact {
                executable: Some(path),
                target,
                ..
            }) if target.name == "tcptrace" => binary = Some(path.into_std_path_buf()),
            Message::CompilerMessage(CompilerMessage { message, .. }) => {
                for line in message.rendered.unwrap_or_default().lines() {
                    println!("cargo:warning={line}");
                }
            }
            Message::TextLine(line) => println!("cargo:warning={line}"),
            _ => {}
        }
    }
    let status = child.wait().context("waiting for the nested cargo")?;
    let _ = relay.join();
    if !status.success() {
        bail!("building the kernel program failed ({status}): {cmd:?}");
    }
    let binary = binary.ok_or_else(|| anyhow!("the nested cargo built no kernel object"))?;
    fs::copy(&binary, object)
        .with_context(|| format!("copying {} to {}", binary.display(), object.display()))?;
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
