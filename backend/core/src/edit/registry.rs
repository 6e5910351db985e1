//! The typed registry of edit methods: CLI names, and building a method from its hyper-parameter file.

use std::path::Path;
use std::sync::Arc;

use super::alphaedit::{AlphaEdit, AlphaEditParams};
use super::ft::{FineTune, FtParams};
use super::ft_vision::{FtVision, FtVisionParams};
use super::grace::{Grace, GraceParams};
use super::hparams;
use super::ike::{Ike, IkeParams};
use super::ke::{Ke, KeNet};
use super::lora::{Lora, LoraParams};
use super::memit::stats::KeyStats;
use super::memit::{Memit, MemitParams, Rome, RomeParams};
use super::mend::{Mend, MendNet};
use super::none::NoEdit;
use super::serac::Serac;
use super::t_patcher::{TPatcher, TPatcherParams};
use super::unike::{UniKe, UniKeParams};
use super::wise::{Wise, WiseParams};
use super::{EditMethod, EditSequence};
use crate::data::EditCase;
use crate::error::{Error, Result};
use crate::model::VisionLanguageModel;

/// Method names as the CLI spells them: `none` (the unedited model, an empty patch), then the paper's table order, then
/// the editors of issue 19 (FT on the vision side, LoRA, GRACE, WISE, then the locate-then-edit methods).
pub const METHODS: [&str; 15] = [
    "none",
    "ft",
    "ke",
    "t-patcher",
    "mend",
    "ike",
    "serac",
    "unike",
    "ft-vision",
    "lora",
    "grace",
    "wise",
    "rome",
    "memit",
    "alphaedit",
];

/// The methods that read the model's key statistics ([`KeyStats`], `MODEL/memit/`).
pub const USES_KEY_STATS: [&str; 3] = ["rome", "memit", "alphaedit"];

/// What building a method needs besides its name.
pub struct MethodInputs<'a> {
    /// Directory holding `hparams/<method>/<model>.toml` and `hparams/<method>/<family>.toml` (the repository root).
    pub root: &'a Path,
    /// Model name for the hyper-parameter file (`default` for the shipped model).
    pub model: &'a str,
    /// Unrelated questions from the training split (T-Patcher's memory).
    pub memory: Vec<EditSequence>,
    /// Cases of the training split's front, in file order (IKE's demonstration pool); may be empty.
    pub demonstrations: Vec<EditCase>,
    pub eos: u32,
    /// The model and its directory (methods with trained artifacts find them there, e.g. `DIR/unike/`).
    pub backbone: &'a dyn VisionLanguageModel,
    pub model_dir: &'a Path,
}

/// Splits `unike:variant` into the method name and its variant.
pub fn split_name(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((m, v)) => (m, Some(v)),
        None => (name, None),
    }
}

/// Checks a method name (with its variant) without building it.
pub fn check_name(name: &str) -> Result<()> {
    let (base, variant) = split_name(name);
    if !METHODS.contains(&base) {
        return Err(Error::Invalid(format!("unknown method {base:?} (known: {})", METHODS.join(", "))));
    }
    match (base, variant) {
        ("unike", Some(v)) => UniKeParams::default().apply_variant(v),
        (_, Some(v)) => Err(Error::Invalid(format!("method {base:?} has no variants (got {v:?})"))),
        _ => Ok(()),
    }
}

/// The one spelling of method `name` (a UniKE variant's tokens in a fixed order, see [`super::unike::variant`]):
/// names that configure the same method share it, so a server builds each method once.
pub fn canonical_name(name: &str) -> Result<String> {
    check_name(name)?;
    let (base, variant) = split_name(name.trim());
    match (base, variant) {
        ("unike", Some(v)) => {
            let v = super::unike::variant::canonical(v, |t| Error::Invalid(format!("unknown UniKE variant {t:?}")))?;
            Ok(if v.is_empty() { "unike".into() } else { format!("unike:{v}") })
        }
        _ => Ok(base.to_string()),
    }
}

/// `hparams/<method>/<model>.toml`, else the family's `hparams/<method>/<family>.toml`, else the defaults.
fn params<T: serde::de::DeserializeOwned + Default>(inputs: &MethodInputs<'_>, method: &str) -> Result<T> {
    match hparams::resolve(inputs.root, method, inputs.model, inputs.backbone.family()) {
        Some(path) => hparams::load(&path),
        None => Ok(T::default()),
    }
}

/// Builds method `name`. A setting the model cannot take (e.g. more layers than it has) is an error naming the
/// hyper-parameter file it came from.
pub fn build(name: &str, inputs: MethodInputs<'_>) -> Result<Box<dyn EditMethod>> {
    check_name(name)?;
    let (base, _) = split_name(name);
    let file = hparams::resolve(inputs.root, base, inputs.model, inputs.backbone.family());
    build_with(name, inputs).map_err(|e| match (e, file) {
        (Error::Invalid(msg), Some(f)) => Error::Invalid(format!("{msg} (hyper-parameters from {})", f.display())),
        (e, _) => e,
    })
}

fn build_with(name: &str, inputs: MethodInputs<'_>) -> Result<Box<dyn EditMethod>> {
    let (base, variant) = split_name(name);
    match base {
        "none" => Ok(Box::new(NoEdit)),
        "ft" => Ok(Box::new(FineTune::new(params::<FtParams>(&inputs, base)?, inputs.eos))),
        "t-patcher" => Ok(Box::new(TPatcher::new(params::<TPatcherParams>(&inputs, base)?, inputs.memory, inputs.eos))),
        "ike" => Ok(Box::new(Ike::new(params::<IkeParams>(&inputs, base)?, inputs.demonstrations, inputs.backbone))),
        "unike" => {
            let mut p = params::<UniKeParams>(&inputs, base)?;
            if let Some(v) = variant {
                p.apply_variant(v)?;
            }
            Ok(Box::new(UniKe::from_dir(name, p, inputs.backbone, inputs.model_dir, inputs.memory, inputs.eos)?))
        }
        "mend" => {
            let net = MendNet::load(&inputs.model_dir.join("mend"), inputs.backbone)?;
            Ok(Box::new(Mend { net: Arc::new(net), eos: inputs.eos }))
        }
        "ke" => {
            let net = KeNet::load(&inputs.model_dir.join("ke"), inputs.backbone)?;
            Ok(Box::new(Ke { net: Arc::new(net), eos: inputs.eos }))
        }
        "serac" => Ok(Box::new(Serac::load(&inputs.model_dir.join("serac"), inputs.backbone, inputs.eos)?)),
        "ft-vision" => Ok(Box::new(FtVision { params: params::<FtVisionParams>(&inputs, base)?, eos: inputs.eos })),
        "lora" => Ok(Box::new(Lora::new(params::<LoraParams>(&inputs, base)?, inputs.backbone, inputs.eos)?)),
        "wise" => {
            Ok(Box::new(Wise::new(params::<WiseParams>(&inputs, base)?, inputs.backbone, inputs.memory, inputs.eos)?))
        }
        "grace" => Ok(Box::new(Grace::new(params::<GraceParams>(&inputs, base)?, inputs.backbone, inputs.eos)?)),
        "rome" | "memit" | "alphaedit" => {
            let (m, eos) = (inputs.backbone, inputs.eos);
            let width = m.ffn_parts(0)?.width()?;
            let stats = std::sync::Arc::new(KeyStats::load(&inputs.model_dir.join("memit"), width)?);
            Ok(match base {
                "rome" => Box::new(Rome::new(params::<RomeParams>(&inputs, base)?, stats, m, eos)?),
                "memit" => Box::new(Memit::new(params::<MemitParams>(&inputs, base)?, stats, m, eos)?),
                _ => Box::new(AlphaEdit::new(params::<AlphaEditParams>(&inputs, base)?, stats, m, eos)?),
            })
        }
        known => Err(Error::Invalid(format!("method {known:?} is not known"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hparams_files() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let world_cfg = crate::train::world_config_json(40, 8, 1, 8, 4, 4);
        let llava = crate::train::Trainable::new(&world_cfg, 0, &candle_core::Device::Cpu).unwrap().model;
        let inputs = |model: &'static str| MethodInputs {
            root: &root,
            model,
            memory: vec![],
            demonstrations: vec![],
            eos: 2,
            backbone: &llava,
            model_dir: Path::new("/nonexistent"),
        };
        assert_eq!(
            build("t-patcher", inputs("default")).map(|m| m.name().to_string()).ok().as_deref(),
            Some("t-patcher")
        );
        let e = build("rome2", inputs("default")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("unknown method \"rome2\"") && e.contains("t-patcher"), "{e}");
        let e = build("memit", inputs("default")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("build-stats"), "missing statistics say how to make them: {e}");
        // The shipped file parses; a typo in a key is an error naming the file.
        let dir = std::env::temp_dir().join(format!("unike-hp-{}", std::process::id()));
        let file = hparams::hparams_path(&dir, "t-patcher", "m");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let good = std::fs::read_to_string(hparams::hparams_path(&root, "t-patcher", "default")).unwrap();
        std::fs::write(&file, good.replace("edit_margin", "edit_margn")).unwrap();
        let e = build("t-patcher", MethodInputs { root: &dir, model: "m", ..inputs("default") }).err();
        // UniKE variants are checked; missing artifacts say how to build them.
        assert!(check_name("unike:zeta-random/k=10/alpha=0.3").is_ok());
        let e2 = check_name("unike:wrong").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e2.contains("unknown UniKE variant") && e2.contains("only-intrinsic"), "{e2}");
        assert!(check_name("unike:alpha=2").is_err() && check_name("ft:x").is_err());
        assert!(check_name("none").is_ok() && check_name("none:x").is_err());
        assert_eq!(canonical_name("unike:k=3/alpha=0.50").ok().as_deref(), Some("unike:alpha=0.5/k=3"));
        assert_eq!(canonical_name("unike:full").ok().as_deref(), Some("unike"));
        assert_eq!(canonical_name("serac").ok().as_deref(), Some("serac"));
        assert!(canonical_name("unike:alpha=0.5000001").is_err() && canonical_name("rome2").is_err());
        assert_eq!(build("none", inputs("default")).map(|m| m.name().to_string()).ok().as_deref(), Some("none"));
        let e3 = build("unike", inputs("default")).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e3.contains("build-memory"), "{e3}");
        let e = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("edit_margn") && e.contains("m.toml"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn every_shipped_hparams_file_parses_and_families_fall_back_to_theirs() {
        use crate::model::Family;
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut parsed = 0;
        let methods = METHODS.iter().filter(|m| **m != "none");
        for method in methods {
            for stem in ["default", "llava", "blip2", "qwen2vl"] {
                let path = hparams::hparams_path(&root, method, stem);
                assert!(path.is_file(), "{} is missing", path.display());
                let ok = match *method {
                    "ft" => hparams::load::<FtParams>(&path).map(|_| ()),
                    "ke" => hparams::load::<super::super::ke::KeParams>(&path).map(|_| ()),
                    "t-patcher" => hparams::load::<TPatcherParams>(&path).map(|_| ()),
                    "mend" => hparams::load::<super::super::mend::MendParams>(&path).map(|_| ()),
                    "ike" => hparams::load::<IkeParams>(&path).map(|_| ()),
                    "serac" => hparams::load::<super::super::serac::SeracParams>(&path).map(|_| ()),
                    "lora" => hparams::load::<LoraParams>(&path).map(|_| ()),
                    "ft-vision" => hparams::load::<FtVisionParams>(&path).map(|_| ()),
                    "grace" => hparams::load::<GraceParams>(&path).map(|_| ()),
                    "wise" => hparams::load::<WiseParams>(&path).map(|_| ()),
                    "rome" => hparams::load::<RomeParams>(&path).map(|_| ()),
                    "memit" => hparams::load::<MemitParams>(&path).map(|_| ()),
                    "alphaedit" => hparams::load::<AlphaEditParams>(&path).map(|_| ()),
                    _ => hparams::load::<UniKeParams>(&path).map(|_| ()),
                };
                assert!(ok.is_ok(), "{}: {:?}", path.display(), ok.err());
                parsed += 1;
            }
        }
        assert_eq!(parsed, 56);
        // A model without a file of its own takes its family's; the shipped model keeps its own.
        let blip2 = hparams::resolve(&root, "unike", "blip2-opt-2.7b", Family::Blip2).unwrap();
        assert!(blip2.ends_with("hparams/unike/blip2.toml"), "{}", blip2.display());
        let p: UniKeParams = hparams::load(&blip2).unwrap();
        assert_eq!(p.layers, 4, "the paper edits BLIP-2 OPT's last 4 layers");
        let own = hparams::resolve(&root, "unike", "default", Family::Llava).unwrap();
        assert!(own.ends_with("hparams/unike/default.toml"));
        assert!(hparams::resolve(&root, "rome2", "default", Family::Qwen2Vl).is_none());
    }
}
