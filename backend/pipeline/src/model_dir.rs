//! Resolves `--model <DIR|default>`.
//!
//! `default` is the project's shipped model: `models/default` in the repository (found from the working directory
//! or from the binary's location, `target/<profile>/unike`), or `$UNIKE_DEFAULT_MODEL`.

use std::path::{Path, PathBuf};

use crate::error::{input, Result};

/// The directory `--model` names.
pub fn resolve(model: &str) -> Result<PathBuf> {
    if model != "default" {
        let p = PathBuf::from(model);
        if !p.is_dir() {
            input!("model directory {} does not exist", p.display());
        }
        return Ok(p);
    }
    if let Ok(p) = std::env::var("UNIKE_DEFAULT_MODEL") {
        return Ok(PathBuf::from(p));
    }
    for root in roots() {
        let p = root.join("models/default");
        if p.join("config.json").is_file() {
            return Ok(p);
        }
    }
    input!("cannot find the default model (models/default) from here; run from the repository or pass --model DIR")
}

/// The working directory and the ancestors of the binary's directory.
fn roots() -> Vec<PathBuf> {
    let mut out = vec![std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))];
    if let Ok(exe) = std::env::current_exe() {
        out.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    out
}

/// The repository root (where `hparams/` and `models/` live): the first of the working directory and the binary's
/// ancestors that has `hparams/`, else the working directory.
pub fn repo_root() -> PathBuf {
    let roots = roots();
    roots.iter().find(|r| r.join("hparams").is_dir()).cloned().unwrap_or_else(|| roots[0].clone())
}
