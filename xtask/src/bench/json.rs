//! The json scenario: the `replay` example's comparison of tcptrace's
//! direct JSON writer against serde's derives.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use super::Ctx;
use crate::util::{self, command, run};

/// The `replay` example's comparison of the two JSON writers, as it
/// prints it (seconds of CPU per million events, best of the reps).
pub(super) fn json_paths(ctx: &Ctx, root: &Path) -> Result<String> {
    println!("bench: json: the direct JSON writer against serde's derives");
    if !ctx.args.no_build {
        run(command(util::cargo())?
            .args([
                "build",
                "--release",
                "--package",
                "tcptrace",
                "--example",
                "replay",
            ])
            .current_dir(root))?;
    }
    let example = util::target_dir().join("release/examples/replay");
    let reps = ctx.args.reps.max(3).to_string();
    let out = command(&example)?
        .args(["--only", "json-paths", "-n", "200000", "--reps", &reps])
        .output()
        .with_context(|| format!("running {}", example.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            example.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    print!("{text}");
    Ok(text)
}
