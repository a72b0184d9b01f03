//! Developer tasks for tcptrace, run as `cargo xtask <command>`.
//!
//! - `setup`: install what a fresh machine lacks (rust-src for nightly,
//!   bpf-linker built against nightly's libLLVM, Debian packages, tracefs).
//! - `build [--release]`: setup, then build tcptrace (and its eBPF object).
//! - `run [--debug] -- ARGS`: setup, build, then exec tcptrace with ARGS.
//! - `test [-- ARGS]`: setup, then every unit and integration test.
//! - `bench`: what tracing costs, scenario by scenario (see bench.rs).

mod bench;
mod elf;
mod proc;
mod report;
mod setup;
mod util;

use std::ffi::OsString;
use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for tcptrace"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the toolchain pieces and packages (idempotent; needs root).
    Setup,
    /// Setup, then build tcptrace.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Setup, build (release unless --debug), then exec tcptrace with ARGS.
    Run {
        /// Build and run the release binary (the default).
        #[arg(long, conflicts_with = "debug")]
        release: bool,
        /// Build and run the debug binary instead.
        #[arg(long)]
        debug: bool,
        /// Arguments for tcptrace, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Setup, then run every unit and integration test (needs root).
    Test {
        /// Extra arguments for `cargo test`, after `--`.
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Measure what tracing costs: connection churn, bulk traffic, mass close (minutes).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::setup()?,
        Cmd::Build { release } => {
            setup::setup()?;
            build(release)?;
        }
        Cmd::Run {
            release: _,
            debug,
            args,
        } => {
            setup::setup()?;
            build(!debug)?;
            let profile = if debug { "debug" } else { "release" };
            let bin = util::target_dir().join(profile).join("tcptrace");
            let mut cmd = util::command(&bin)?;
            cmd.args(&args);
            // exec: tcptrace replaces us, so Ctrl-C and its exit code reach
            // the caller directly.
            let err = cmd.exec();
            return Err(err).with_context(|| format!("could not exec {}", bin.display()));
        }
        Cmd::Test { args } => return test(&args),
        Cmd::Bench(args) => bench::bench(args)?,
    }
    Ok(ExitCode::SUCCESS)
}

fn build(release: bool) -> Result<()> {
    let mut cmd = util::command(util::cargo())?;
    cmd.args(["build", "--package", "tcptrace"])
        .current_dir(util::repo_root());
    if release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)
}

fn test(extra: &[OsString]) -> Result<ExitCode> {
    setup::setup()?;
    // The CLI tests run the tcptrace binary itself: cargo test builds only
    // the test harnesses, so build the binary first.
    let mut build = util::command(util::cargo())?;
    build
        .args(["build", "--package", "tcptrace"])
        .current_dir(util::repo_root());
    println!("xtask: {}", util::describe(&build));
    if !build
        .status()
        .context("could not start cargo build")?
        .success()
    {
        println!("xtask test: FAILED (building tcptrace)");
        return Ok(ExitCode::FAILURE);
    }
    let mut cmd = util::command(util::cargo())?;
    cmd.args([
        "test",
        "--workspace",
        "--exclude",
        "tcptrace-ebpf",
        "--no-fail-fast",
    ])
    .args(extra)
    .current_dir(util::repo_root());
    println!("xtask: {}", util::describe(&cmd));
    let status = cmd.status().context("could not start cargo test")?;
    if status.success() {
        println!("xtask test: all tests passed");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("xtask test: FAILED (cargo test: {status})");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::util;

    /// tcptrace's build.rs builds the kernel object with a nested cargo the
    /// outer one cannot see into: only its build-dependency on tcptrace-ebpf
    /// makes a change to tcptrace-ebpf or tcptrace-common re-run it. Cargo
    /// silently ignores that edge if tcptrace-ebpf has no library target.
    #[test]
    fn kernel_object_sources_are_a_build_dependency_of_tcptrace() {
        let out = std::process::Command::new(util::cargo())
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .current_dir(util::repo_root())
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        let packages = meta["packages"].as_array().expect("packages");
        let package = |name: &str| {
            packages
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{name} is not in the workspace"))
        };
        let depends = |on: &serde_json::Value, name: &str, kind: serde_json::Value| {
            on["dependencies"]
                .as_array()
                .is_some_and(|deps| deps.iter().any(|d| d["name"] == name && d["kind"] == kind))
        };
        let has_target = |p: &serde_json::Value, kind: &str| {
            p["targets"].as_array().is_some_and(|targets| {
                targets.iter().any(|t| {
                    t["kind"]
                        .as_array()
                        .is_some_and(|kinds| kinds.iter().any(|k| k == kind))
                })
            })
        };
        let tcptrace = package("tcptrace");
        let ebpf = package("tcptrace-ebpf");
        assert!(
            has_target(tcptrace, "custom-build"),
            "tcptrace has no build.rs"
        );
        assert!(
            depends(tcptrace, "tcptrace-ebpf", "build".into()),
            "tcptrace must build-depend on tcptrace-ebpf"
        );
        assert!(
            has_target(ebpf, "lib"),
            "tcptrace-ebpf needs a library target, or cargo ignores the build-dependency"
        );
        assert!(
            depends(ebpf, "tcptrace-common", serde_json::Value::Null),
            "tcptrace-ebpf no longer depends on tcptrace-common"
        );
    }
}
