//! `cargo xtask setup`: everything a fresh machine needs beyond rustup's
//! stable and nightly toolchains. Idempotent; each step checks first and
//! skips quickly when already done.

use std::ffi::CString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

use crate::elf;
use crate::util::{self, command, output, run};

/// The bpf-linker release that works with LLVM 22 and the pinned aya crates.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the integration tests and the benchmark use.
pub const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",   // ip netns, ip link (veth pairs) in the tests
    "nftables",   // nft, to provoke resets in the tests
    "bpftrace",   // the benchmark's reference tracer
    "python3",    // helper peers in the tests
    "procps",     // sysctl, inside the tests' network namespaces
    "util-linux", // taskset for the benchmark, mount
    "bpftool",    // inspecting loaded programs and maps when debugging
    "nginx",      // a real pre-fork server (master + workers) in the owner tests
    "prometheus", // a real scraper of --metrics, and promtool, in the metrics tests
    "strace",     // the deployment test checks the unit's syscall filter against a run
];

const TRACEFS: &str = "/sys/kernel/tracing";

fn step(msg: std::fmt::Arguments<'_>) {
    println!("setup: {msg}");
}

pub fn setup() -> Result<()> {
    let started = Instant::now();
    util::require_root("setup")?;
    let nightly = nightly_info()?;
    rust_src(&nightly)?;
    bpf_linker(&nightly)?;
    debian_packages()?;
    tracefs()?;
    step(format_args!(
        "done in {:.1}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

struct Nightly {
    sysroot: PathBuf,
    llvm_major: u32,
    release: String,
}

fn rustup() -> Result<Command> {
    command(util::find_program("rustup").context(
        "rustup not found on PATH or in $CARGO_HOME/bin; this project needs rustup with the \
         stable and nightly toolchains",
    )?)
}

fn nightly_rustc(args: &[&str]) -> Result<String> {
    let mut cmd = rustup()?;
    cmd.args(["run", "nightly", "rustc"]).args(args);
    output(&mut cmd)
}

fn nightly_info() -> Result<Nightly> {
    let vv = match nightly_rustc(&["-vV"]) {
        Ok(v) => v,
        Err(first) => {
            step(format_args!(
                "nightly toolchain missing ({first:#}); installing it (minimal profile)"
            ));
            let mut cmd = rustup()?;
            cmd.args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]);
            run(&mut cmd).context("installing the nightly toolchain")?;
            nightly_rustc(&["-vV"])?
        }
    };
    let field = |name: &str| {
        vv.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    let llvm = field("LLVM version:").context("`rustc +nightly -vV` printed no LLVM version")?;
    let llvm_major = llvm
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {llvm:?}"))?;
    let release = field("release:").unwrap_or_else(|| "nightly".into());
    let sysroot = PathBuf::from(nightly_rustc(&["--print", "sysroot"])?.trim());
    Ok(Nightly {
        sysroot,
        llvm_major,
        release,
    })
}

fn rust_src(nightly: &Nightly) -> Result<()> {
    let src = nightly.sysroot.join("lib/rustlib/src/rust/library");
    if src.is_dir() {
        step(format_args!(
            "rust-src (nightly {}): present",
            nightly.release
        ));
        return Ok(());
    }
    step(format_args!("rust-src (nightly): installing"));
    let mut cmd = rustup()?;
    cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    run(&mut cmd)
}

/// The nightly's own shared libLLVM (`libLLVM.so.<major>.<minor>-rust-*-nightly`).
fn nightly_libllvm(nightly: &Nightly) -> Result<PathBuf> {
    let lib = nightly.sysroot.join("lib");
    let prefix = format!("libLLVM.so.{}.", nightly.llvm_major);
    let mut found: Vec<PathBuf> = fs::read_dir(&lib)
        .with_context(|| format!("listing {}", lib.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.contains("-rust-") && name.ends_with("-nightly")
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    match found.pop() {
        Some(p) if found.is_empty() => Ok(p),
        Some(p) => {
            step(format_args!(
                "several libLLVM files in {}; using {}",
                lib.display(),
                p.display()
            ));
            Ok(p)
        }
        None => bail!(
            "no {prefix}*-rust-*-nightly in {}: the nightly toolchain does not ship a shared \
             libLLVM, so bpf-linker cannot be built against it",
            lib.display()
        ),
    }
}

/// Where the libLLVM symlinks live: stable, outside `target/`, because
/// bpf-linker's RUNPATH points at `<prefix>/lib` for good.
pub fn llvm_prefix() -> Result<PathBuf> {
    Ok(util::home()?.join(".local/share/tcptrace/llvm-prefix"))
}

/// Makes `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<file name>` point at
/// `libllvm`, removing stale libLLVM links. Returns whether anything changed.
fn link_libllvm(prefix: &Path, libllvm: &Path) -> Result<bool> {
    let lib = prefix.join("lib");
    let file_name = libllvm
        .file_name()
        .context("libLLVM path has no file name")?;
    let wanted = [lib.join("libLLVM.so"), lib.join(file_name)];
    let all_good = wanted
        .iter()
        .all(|l| fs::read_link(l).is_ok_and(|t| t == libllvm));
    if all_good {
        return Ok(false);
    }
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for entry in fs::read_dir(&lib).with_context(|| format!("listing {}", lib.display()))? {
        let path = entry?.path();
        let is_llvm = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM"));
        if is_llvm {
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    for link in &wanted {
        symlink(libllvm, link)
            .with_context(|| format!("linking {} -> {}", link.display(), libllvm.display()))?;
    }
    Ok(true)
}

/// Why the bpf-linker on PATH cannot be used with this nightly, if it can't.
fn bpf_linker_problem(prefix: &Path, libllvm: &Path) -> Option<String> {
    let Some(bin) = util::find_program("bpf-linker") else {
        return Some("not installed".into());
    };
    let lib_dir = prefix.join("lib");
    let file_name = libllvm.file_name()?.to_string_lossy().into_owned();
    match elf::dynamic(&bin) {
        Err(e) => return Some(format!("cannot read {}: {e:#}", bin.display())),
        Ok(d) => {
            if !d.needed.contains(&file_name) {
                let llvm: Vec<_> = d.needed.iter().filter(|n| n.contains("LLVM")).collect();
                return Some(format!(
                    "{} is linked against {llvm:?}, not the nightly's {file_name}",
                    bin.display()
                ));
            }
            if !d.search_path.iter().any(|p| Path::new(p) == lib_dir) {
                return Some(format!(
                    "{} looks for libraries in {:?}, not {}",
                    bin.display(),
                    d.search_path,
                    lib_dir.display()
                ));
            }
        }
    }
    let version = Command::new(&bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output();
    match version {
        Ok(out) if out.status.success() => {
            let v = String::from_utf8_lossy(&out.stdout);
            if v.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
                None
            } else {
                Some(format!(
                    "{} is {}, not {BPF_LINKER_VERSION}",
                    bin.display(),
                    v.trim()
                ))
            }
        }
        Ok(out) => Some(format!(
            "`{} --version` failed ({}): {}",
            bin.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run {}: {e}", bin.display())),
    }
}

fn bpf_linker(nightly: &Nightly) -> Result<()> {
    let libllvm = nightly_libllvm(nightly)?;
    let prefix = llvm_prefix()?;
    let relinked = link_libllvm(&prefix, &libllvm)?;
    let Some(problem) = bpf_linker_problem(&prefix, &libllvm) else {
        step(format_args!(
            "bpf-linker {BPF_LINKER_VERSION}: present, uses {}{}",
            libllvm.display(),
            if relinked {
                " (symlinks refreshed)"
            } else {
                ""
            }
        ));
        return Ok(());
    };
    step(format_args!(
        "bpf-linker: {problem}; building {BPF_LINKER_VERSION} against {} (LLVM {}), \
         this takes a few minutes",
        libllvm.display(),
        nightly.llvm_major
    ));
    let mut cmd = command(util::cargo())?;
    cmd.args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
        "--no-default-features",
        "--features",
        &format!("llvm-{}", nightly.llvm_major),
    ])
    .env("LLVM_PREFIX", &prefix)
    // Outside the workspace, so its config and target dir play no part.
    .current_dir(&prefix)
    .stdin(Stdio::null());
    run(&mut cmd).context("building bpf-linker")?;
    if let Some(problem) = bpf_linker_problem(&prefix, &libllvm) {
        bail!("bpf-linker was built but still cannot be used: {problem}");
    }
    step(format_args!("bpf-linker {BPF_LINKER_VERSION}: installed"));
    Ok(())
}

fn debian_packages() -> Result<()> {
    let mut cmd = command("dpkg-query")?;
    cmd.args(["-W", "-f=${Package} ${Status}\\n"])
        .args(DEBIAN_PACKAGES)
        .stdin(Stdio::null());
    // dpkg-query exits 1 when a package is unknown; its stdout still lists
    // the known ones, which is all we need.
    let out = cmd
        .output()
        .context("could not run dpkg-query (this setup expects Debian)")?;
    let listed = String::from_utf8_lossy(&out.stdout);
    let installed: Vec<&str> = listed
        .lines()
        .filter(|l| l.ends_with(" install ok installed"))
        .filter_map(|l| l.split_whitespace().next())
        .map(|name| name.split(':').next().unwrap_or(name))
        .collect();
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed.contains(p))
        .collect();
    if missing.is_empty() {
        step(format_args!(
            "Debian packages: all present ({})",
            DEBIAN_PACKAGES.join(" ")
        ));
        return Ok(());
    }
    step(format_args!(
        "Debian packages: installing {}",
        missing.join(" ")
    ));
    let apt = |args: &[&str]| -> Result<()> {
        let mut cmd = command("apt-get")?;
        cmd.args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        run(&mut cmd)
    };
    apt(&["update", "-q"])?;
    let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
    args.extend(&missing);
    // Servers (nginx, prometheus) must not start as system services on
    // install: the tests start their own, on loopback, with their own
    // configuration and storage.
    let _no_services = NoServiceStarts::new()?;
    apt(&args)
}

/// Debian's policy-rc.d convention: while it exits 101, package scripts
/// start no services. Put in place only if absent, removed afterwards.
struct NoServiceStarts(Option<&'static str>);

impl NoServiceStarts {
    fn new() -> Result<NoServiceStarts> {
        const PATH: &str = "/usr/sbin/policy-rc.d";
        if Path::new(PATH).exists() {
            return Ok(NoServiceStarts(None));
        }
        fs::write(
            PATH,
            "#!/bin/sh\n# tcptrace xtask setup: no service starts\nexit 101\n",
        )
        .with_context(|| format!("writing {PATH}"))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(PATH, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("chmod {PATH}"))?;
        Ok(NoServiceStarts(Some(PATH)))
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if let Some(path) = self.0 {
            let _ = fs::remove_file(path);
        }
    }
}

fn tracefs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    Ok(mounts.lines().any(|l| {
        let mut f = l.split_whitespace();
        let (_dev, dir, fstype) = (f.next(), f.next(), f.next());
        dir == Some(TRACEFS) && fstype == Some("tracefs")
    }))
}

fn tracefs() -> Result<()> {
    if tracefs_mounted()? {
        step(format_args!("tracefs: mounted at {TRACEFS}"));
        return Ok(());
    }
    step(format_args!("tracefs: mounting at {TRACEFS}"));
    let c = |s: &str| CString::new(s).context("path with a NUL byte");
    let (src, dir, fstype) = (c("tracefs")?, c(TRACEFS)?, c("tracefs")?);
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the
    // call; a null `data` is allowed.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            dir.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        if err.kind() == ErrorKind::NotFound {
            bail!("{TRACEFS} does not exist: this kernel has no tracefs (CONFIG_TRACING)");
        }
        bail!("mount -t tracefs tracefs {TRACEFS}: {err}");
    }
    Ok(())
}
