//! One spelling per UniKE variant. `unike:k=3/alpha=0.5`, `unike:alpha=0.50,k=3` and `unike:full/k=3/alpha=0.5`
//! configure the same method; a server that builds one method per distinct name would build (and keep) three. The
//! canonical name lists what a variant sets, in a fixed order: the mode (Table 4's rows), then ζ, α, k and
//! `train-keys` / `values-only`, each only when set, later tokens overriding earlier ones as [`super::UniKeParams::apply_variant`]
//! applies them. Values are bounded so that the set of names is finite: α in [0, 1] with at most two decimals, k in
//! 1..=[`MAX_TOP_K`], one mode.

use crate::error::{Error, Result};

/// The most retrieved entries a variant may ask for.
pub const MAX_TOP_K: usize = 256;

/// Table 4's rows; `full` is the method itself (no override).
const MODES: [&str; 5] = ["full", "only-intrinsic", "only-latent", "intrinsic+ike", "intrinsic+latent"];

/// What a variant string sets, after its tokens are applied in order.
#[derive(Debug, Default, PartialEq)]
struct Overrides {
    mode: Option<&'static str>,
    zeta: Option<&'static str>,
    /// `adaptive`, or α in hundredths.
    alpha: Option<Option<u32>>,
    k: Option<usize>,
    train_keys: bool,
    values_only: bool,
}

fn invalid(msg: String) -> Error {
    Error::Invalid(msg)
}

/// α = `x` in hundredths, when `x` is in [0, 1] with at most two decimals.
fn hundredths(x: &str) -> Option<u32> {
    let a: f64 = x.parse().ok().filter(|a: &f64| (0.0..=1.0).contains(a))?;
    let h = (a * 100.0).round();
    ((a * 100.0 - h).abs() < 1e-6).then_some(h as u32)
}

fn parse(variant: &str, unknown: impl Fn(&str) -> Error) -> Result<Overrides> {
    let mut o = Overrides::default();
    for v in variant.split(['/', ',']).map(str::trim).filter(|v| !v.is_empty()) {
        if let Some(&mode) = MODES.iter().find(|m| **m == v) {
            if let Some(prev) = o.mode.filter(|p| *p != mode) {
                return Err(invalid(format!("a UniKE variant names one mode; got {prev:?} and {mode:?}")));
            }
            o.mode = Some(mode);
            // A mode resets what it sets (see `apply_variant`), so earlier overrides of those are gone.
            match mode {
                "only-intrinsic" | "intrinsic+ike" => o.zeta = None,
                "only-latent" | "intrinsic+latent" => (o.zeta, o.alpha) = (None, None),
                _ => {}
            }
        } else if let Some(z) = ["zeta-none", "zeta-random", "zeta-semantic"].into_iter().find(|z| *z == v) {
            o.zeta = Some(z);
        } else if v == "adaptive" {
            o.alpha = Some(None);
        } else if v == "train-keys" || v == "values-only" {
            if (v == "train-keys" && o.values_only) || (v == "values-only" && o.train_keys) {
                return Err(invalid("a UniKE variant names one of train-keys and values-only".into()));
            }
            o.train_keys |= v == "train-keys";
            o.values_only |= v == "values-only";
        } else if let Some(x) = v.strip_prefix("alpha=") {
            let h = hundredths(x).ok_or_else(|| {
                invalid(format!("UniKE variant {v:?}: α is a number in [0, 1] with at most two decimals"))
            })?;
            o.alpha = Some(Some(h));
        } else if let Some(x) = v.strip_prefix("k=") {
            let k = x
                .parse::<usize>()
                .ok()
                .filter(|k| (1..=MAX_TOP_K).contains(k))
                .ok_or_else(|| invalid(format!("UniKE variant {v:?}: k is 1 to {MAX_TOP_K}")))?;
            o.k = Some(k);
        } else {
            return Err(unknown(v));
        }
    }
    Ok(o)
}

/// Checks `variant` (see the module note); `unknown` makes the error of a token that is not a variant.
pub fn check(variant: &str, unknown: impl Fn(&str) -> Error) -> Result<()> {
    parse(variant, unknown).map(|_| ())
}

/// The canonical spelling of `variant` (empty for the method itself).
pub fn canonical(variant: &str, unknown: impl Fn(&str) -> Error) -> Result<String> {
    Ok(render(&parse(variant, unknown)?))
}

/// The canonical spelling of what `o` sets.
fn render(o: &Overrides) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(m) = o.mode.filter(|m| *m != "full") {
        parts.push(m.to_string());
    }
    if let Some(z) = o.zeta {
        parts.push(z.to_string());
    }
    match o.alpha {
        Some(None) => parts.push("adaptive".into()),
        Some(Some(h)) => {
            let s = format!("{:.2}", h as f64 / 100.0);
            parts.push(format!("alpha={}", s.trim_end_matches('0').trim_end_matches('.')));
        }
        None => {}
    }
    if let Some(k) = o.k {
        parts.push(format!("k={k}"));
    }
    if o.train_keys {
        parts.push("train-keys".into());
    }
    if o.values_only {
        parts.push("values-only".into());
    }
    parts.join("/")
}

/// A method name written before 2026-12-06, when a UniKE variant's fixed `alpha=X` weighted the input, in today's
/// meaning (`alpha=1−X`, canonical spelling); `None` when it names no fixed α (nothing to rename). Names that do
/// not parse are left as they are.
pub fn from_input_weight_alpha(name: &str) -> Option<String> {
    let variant = name.strip_prefix("unike:")?;
    let mut o = parse(variant, |t| invalid(t.to_string())).ok()?;
    let Some(Some(h)) = o.alpha else { return None };
    o.alpha = Some(Some(100 - h.min(100)));
    Some(format!("unike:{}", render(&o)).trim_end_matches(':').to_string())
}

#[cfg(test)]
mod tests {
    use super::super::UniKeParams;
    use super::*;

    fn unknown(v: &str) -> Error {
        Error::Invalid(format!("unknown {v}"))
    }

    fn applied(base: &UniKeParams, v: &str) -> UniKeParams {
        let mut p = base.clone();
        p.apply_variant(v).unwrap();
        p
    }

    #[test]
    fn spellings_of_one_variant_share_a_name() -> Result<()> {
        let c = |v: &str| canonical(v, unknown);
        assert_eq!(c("k=3/alpha=0.5")?, "alpha=0.5/k=3");
        assert_eq!(c(" alpha=0.50 , k=3 ")?, "alpha=0.5/k=3");
        assert_eq!(c("full/k=3/alpha=0.5/full")?, "alpha=0.5/k=3");
        assert_eq!(c("")?, "");
        assert_eq!(c("full")?, "");
        assert_eq!(c("alpha=1.0")?, "alpha=1");
        assert_eq!(c("alpha=0")?, "alpha=0");
        assert_eq!(c("zeta-random/only-intrinsic")?, "only-intrinsic");
        assert_eq!(c("only-intrinsic/zeta-random")?, "only-intrinsic/zeta-random");
        assert_eq!(c("alpha=0.3/adaptive/k=2/k=5")?, "adaptive/k=5");
        // Bounded values: the set of names is finite.
        for bad in ["alpha=0.5000001", "alpha=1.5", "alpha=x", "k=0", "k=257", "k=-1", "only-latent/only-intrinsic"] {
            assert!(c(bad).is_err(), "{bad}");
        }
        assert!(c("k=256").is_ok() && c("only-latent/only-latent").is_ok());
        assert!(c("nonsense").unwrap_err().to_string().contains("unknown nonsense"));
        Ok(())
    }

    #[test]
    fn the_canonical_name_configures_the_same_method() -> Result<()> {
        let other = UniKeParams { top_k: 7, alpha: super::super::latent::Alpha::Fixed(0.25), ..UniKeParams::default() };
        let tokens = [
            "full",
            "only-intrinsic",
            "only-latent",
            "intrinsic+ike",
            "intrinsic+latent",
            "zeta-none",
            "zeta-random",
            "zeta-semantic",
            "adaptive",
            "alpha=0.4",
            "k=3",
            "train-keys",
            "values-only",
        ];
        // Every sequence of up to three tokens (those with two different modes are refused by both).
        let mut n = 0;
        for a in tokens {
            for b in tokens {
                for c in tokens {
                    let v = format!("{a}/{b}/{c}");
                    let Ok(canon) = canonical(&v, unknown) else { continue };
                    for base in [UniKeParams::default(), other.clone()] {
                        assert_eq!(applied(&base, &v), applied(&base, &canon), "{v} vs {canon}");
                    }
                    n += 1;
                }
            }
        }
        assert!(n > 1000, "{n}");
        Ok(())
    }

    #[test]
    fn names_from_before_the_alpha_meaning_change_are_renamed() {
        assert_eq!(from_input_weight_alpha("unike:alpha=0.8").as_deref(), Some("unike:alpha=0.2"));
        assert_eq!(from_input_weight_alpha("unike:k=3/alpha=0.25").as_deref(), Some("unike:alpha=0.75/k=3"));
        assert_eq!(from_input_weight_alpha("unike:alpha=1").as_deref(), Some("unike:alpha=0"));
        assert_eq!(from_input_weight_alpha("unike:only-latent/alpha=0").as_deref(), Some("unike:only-latent/alpha=1"));
        for unchanged in ["unike", "unike:adaptive", "unike:only-latent", "unike:k=5", "t-patcher", "unike:nope"] {
            assert_eq!(from_input_weight_alpha(unchanged), None, "{unchanged}");
        }
    }
}
