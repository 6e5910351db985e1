//! The typed registry of edit methods: CLI names, and building a method from its hyper-parameter file.

use std::path::Path;

use super::ft::{FineTune, FtParams};
use super::hparams;
use super::t_patcher::{TPatcher, TPatcherParams};
use super::{EditMethod, EditSequence};
use crate::error::{Error, Result};

/// Method names as the CLI spells them, in the paper's table order.
pub const METHODS: [&str; 7] = ["ft", "ke", "t-patcher", "mend", "ike", "serac", "unike"];

/// What building a method needs besides its name.
pub struct MethodInputs<'a> {
    /// Directory holding `hparams/<method>/<model>.toml` (the repository root).
    pub root: &'a Path,
    /// Model name for the hyper-parameter file (`default` for the shipped model).
    pub model: &'a str,
    /// Unrelated questions from the training split (T-Patcher's memory).
    pub memory: Vec<EditSequence>,
    pub eos: u32,
}

fn params<T: serde::de::DeserializeOwned + Default>(inputs: &MethodInputs<'_>, method: &str) -> Result<T> {
    let path = hparams::hparams_path(inputs.root, method, inputs.model);
    if path.is_file() {
        hparams::load(&path)
    } else {
        Ok(T::default())
    }
}

/// Builds method `name`.
pub fn build(name: &str, inputs: MethodInputs<'_>) -> Result<Box<dyn EditMethod>> {
    match name {
        "ft" => Ok(Box::new(FineTune::new(params::<FtParams>(&inputs, name)?, inputs.eos))),
        "t-patcher" => Ok(Box::new(TPatcher::new(params::<TPatcherParams>(&inputs, name)?, inputs.memory, inputs.eos))),
        known if METHODS.contains(&known) => {
            Err(Error::Invalid(format!("method {known:?} is not implemented yet (implemented: ft, t-patcher)")))
        }
        other => Err(Error::Invalid(format!("unknown method {other:?} (known: {})", METHODS.join(", ")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hparams_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let inputs = |model: &'static str| MethodInputs { root: &root, model, memory: vec![], eos: 2 };
        assert_eq!(
            build("t-patcher", inputs("default")).map(|m| m.name().to_string()).ok().as_deref(),
            Some("t-patcher")
        );
        let e = build("rome", inputs("default")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unknown method \"rome\"") && e.contains("t-patcher"), "{e}");
        // The shipped file parses; a typo in a key is an error naming the file.
        let dir = std::env::temp_dir().join(format!("unike-hp-{}", std::process::id()));
        let file = hparams::hparams_path(&dir, "t-patcher", "m");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let good = std::fs::read_to_string(hparams::hparams_path(&root, "t-patcher", "default")).unwrap();
        std::fs::write(&file, good.replace("edit_margin", "edit_margn")).unwrap();
        let e = build("t-patcher", MethodInputs { root: &dir, model: "m", memory: vec![], eos: 2 }).err();
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("edit_margn") && e.contains("m.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
