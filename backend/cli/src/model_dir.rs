//! Resolves `--model <DIR|default>`.
//!
//! `default` is the project's shipped model: `models/default` in the repository (found from the working directory
//! or from the binary's location, `target/<profile>/unike`), or `$UNIKE_DEFAULT_MODEL`. Until the default model
//! ships (Substrate II), `default` falls back to the tiny parity fixture `tests/fixtures/tiny-llava`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// The directory `--model` names.
pub fn resolve(model: &str) -> Result<PathBuf> {
    if model != "default" {
        let p = PathBuf::from(model);
        if !p.is_dir() {
            bail!("model directory {} does not exist", p.display());
        }
        return Ok(p);
    }
    if let Ok(p) = std::env::var("UNIKE_DEFAULT_MODEL") {
        return Ok(PathBuf::from(p));
    }
    for root in roots() {
        for rel in ["models/default", "tests/fixtures/tiny-llava"] {
            let p = root.join(rel);
            if p.join("config.json").is_file() {
                return Ok(p);
            }
        }
    }
    bail!("cannot find the default model (models/default) from here; run from the repository or pass --model DIR")
}

/// The working directory and the ancestors of the binary's directory.
fn roots() -> Vec<PathBuf> {
    let mut out = vec![std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))];
    if let Ok(exe) = std::env::current_exe() {
        out.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    out
}
