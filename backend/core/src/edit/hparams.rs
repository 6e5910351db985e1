//! Hyper-parameters of edit methods, per method and model, in TOML files `hparams/<method>/<model>.toml` (else
//! `hparams/<method>/<family>.toml`, see [`resolve`]). Each
//! method's parameter struct rejects unknown keys, so a typo is an error rather than a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// `root/hparams/<method>/<model>.toml`.
pub fn hparams_path(root: &Path, method: &str, model: &str) -> PathBuf {
    root.join("hparams").join(method).join(format!("{model}.toml"))
}

/// The file that configures `method` for model `model` of `family`: `hparams/<method>/<model>.toml`, else the
/// family's `hparams/<method>/<family>.toml` (`llava`, `blip2`, `qwen2vl`); `None` when neither exists (defaults).
pub fn resolve(root: &Path, method: &str, model: &str, family: crate::model::Family) -> Option<PathBuf> {
    [model, family.stem()].into_iter().map(|name| hparams_path(root, method, name)).find(|p| p.is_file())
}

/// Parses TOML text into `T` (whose `Deserialize` should deny unknown fields).
pub fn parse<T: DeserializeOwned>(text: &str, origin: &Path) -> Result<T> {
    toml::from_str(text).map_err(|e| Error::Config { path: origin.to_path_buf(), msg: e.to_string().trim().into() })
}

/// Reads `path` into `T`.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|err| Error::Io { path: path.to_path_buf(), err })?;
    parse(&text, path)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct P {
        lr: f64,
        steps: usize,
    }

    #[test]
    fn unknown_keys_are_rejected_with_the_file_named() {
        let p: P = parse("lr = 0.01\nsteps = 5\n", Path::new("a.toml")).unwrap();
        assert_eq!(p, P { lr: 0.01, steps: 5 });
        let e = parse::<P>("lr = 0.01\nsteps = 5\nstpes = 3\n", Path::new("hparams/x/y.toml")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("hparams/x/y.toml") && msg.contains("stpes"), "{msg}");
    }
}
