//! The ablations the leaderboard charts (paper Fig. 4): sweeps of one numeric parameter of a UniKE variant (fixed α,
//! `unike:alpha=0.4`; retrieved states K, `unike:intrinsic+latent/k=10`) against the variant without it (adaptive α,
//! default K), and UniKE's treatments of the editing direction ζ (`unike:zeta-none|random|semantic` against `unike`).
//!
//! Only one-step rows count, per task; of several rows of one configuration the first one given wins (the leaderboard
//! is sorted best first, as its grouped bars are).

use crate::runs::LeaderboardRow;

/// A swept parameter of a UniKE variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Param {
    /// Fixed α of the latent shift, `alpha=X`.
    Alpha,
    /// Retrieved hidden states, `k=K`.
    K,
}

impl Param {
    fn prefix(self) -> &'static str {
        match self {
            Param::Alpha => "alpha=",
            Param::K => "k=",
        }
    }

    /// The axis label.
    pub fn label(self) -> &'static str {
        match self {
            Param::Alpha => "fixed α",
            Param::K => "K (retrieved states)",
        }
    }
}

/// One sweep: the five metrics at each value of `param`, for the variant `base` on `task`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sweep {
    pub task: String,
    pub param: Param,
    /// The method without the swept part (`unike`, `unike:intrinsic+latent`).
    pub base: String,
    /// `(value, five metrics)`, by value.
    pub points: Vec<(f64, [f64; 5])>,
    /// The five metrics of `base` itself (adaptive α, default K), when it was run.
    pub reference: Option<[f64; 5]>,
}

/// The variant parts of a UniKE method name (`None` for other methods).
fn unike_parts(method: &str) -> Option<Vec<&str>> {
    let (base, variant) = method.split_once(':').unwrap_or((method, ""));
    (base == "unike")
        .then(|| variant.split(['/', ',']).map(str::trim).filter(|p| !p.is_empty() && *p != "full").collect())
}

/// The method name of `parts` (`unike` when empty).
fn method_of(parts: &[&str]) -> String {
    if parts.is_empty() {
        "unike".into()
    } else {
        format!("unike:{}", parts.join("/"))
    }
}

/// Every sweep in `rows` with at least two values.
pub fn sweeps(rows: &[LeaderboardRow]) -> Vec<Sweep> {
    let one_step: Vec<&LeaderboardRow> = rows.iter().filter(|r| r.result.mode == "one-step").collect();
    let mut out: Vec<Sweep> = Vec::new();
    for r in &one_step {
        let Some(parts) = unike_parts(&r.result.method) else { continue };
        for param in [Param::Alpha, Param::K] {
            let swept: Vec<&str> = parts.iter().copied().filter(|p| p.starts_with(param.prefix())).collect();
            let [one] = swept.as_slice() else { continue };
            let Ok(x) = one[param.prefix().len()..].parse::<f64>() else { continue };
            let rest: Vec<&str> = parts.iter().copied().filter(|p| p != one).collect();
            let base = method_of(&rest);
            let task = r.result.task.clone();
            let i = match out.iter().position(|s| s.task == task && s.param == param && s.base == base) {
                Some(i) => i,
                None => {
                    let reference = one_step
                        .iter()
                        .find(|b| b.result.task == task && unike_parts(&b.result.method).as_deref() == Some(&rest[..]))
                        .map(|b| b.result.metrics.five());
                    out.push(Sweep { task, param, base, points: Vec::new(), reference });
                    out.len() - 1
                }
            };
            if !out[i].points.iter().any(|(v, _)| *v == x) {
                out[i].points.push((x, r.result.metrics.five()));
            }
        }
    }
    out.retain(|s| s.points.len() >= 2);
    for s in &mut out {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// UniKE's treatments of ζ on one task: `(label, five metrics)`, UniKE (ζ from the truthfulness space) first.
#[derive(Debug, Clone, PartialEq)]
pub struct ZetaComparison {
    pub task: String,
    pub bars: Vec<(String, [f64; 5])>,
}

/// ζ comparisons of every task with at least one `zeta-*` variant.
pub fn zeta(rows: &[LeaderboardRow]) -> Vec<ZetaComparison> {
    const LABELS: [(&str, &str); 4] = [
        ("unike", "UniKE (truthfulness ζ)"),
        ("unike:zeta-semantic", "semantic ζ"),
        ("unike:zeta-random", "random ζ"),
        ("unike:zeta-none", "no ζ"),
    ];
    let mut tasks: Vec<String> = rows.iter().map(|r| r.result.task.clone()).collect();
    tasks.sort();
    tasks.dedup();
    let mut out = Vec::new();
    for task in tasks {
        let bars: Vec<(String, [f64; 5])> = LABELS
            .iter()
            .filter_map(|(method, label)| {
                rows.iter()
                    .find(|r| r.result.mode == "one-step" && r.result.task == task && r.result.method == *method)
                    .map(|r| (label.to_string(), r.result.metrics.five()))
            })
            .collect();
        if bars.iter().any(|(l, _)| !l.starts_with("UniKE")) {
            out.push(ZetaComparison { task, bars });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BenchResult, MetricSet, Timing};

    fn row(method: &str, task: &str, mode: &str, rel: f64) -> LeaderboardRow {
        let metrics = MetricSet {
            reliability: rel,
            t_generality: 90.0,
            m_generality: 80.0,
            t_locality: 70.0,
            m_locality: 60.0,
            ..Default::default()
        };
        LeaderboardRow {
            run_id: 1,
            model: "default".into(),
            seed: 0,
            finished_at: String::new(),
            score: metrics.mean5(),
            convention: Default::default(),
            convention_label: String::new(),
            reference: None,
            result: BenchResult {
                method: method.into(),
                task: task.into(),
                mode: mode.into(),
                k: 1,
                n: 30,
                convention: Default::default(),
                exact_match: metrics.clone(),
                metrics_v1: None,
                metrics,
                portability_hops: Vec::new(),
                timing: Timing { edit_ms_median: 1.0, edit_ms_p90: 2.0 },
            },
        }
    }

    #[test]
    fn finds_alpha_and_k_sweeps_with_their_references() {
        let rows = vec![
            row("unike:alpha=0.8", "vqa", "one-step", 99.0),
            row("unike:alpha=0.2", "vqa", "one-step", 95.0),
            row("unike:alpha=0.2", "vqa", "one-step", 10.0), // a worse run of the same configuration
            row("unike:alpha=0.5", "vqa", "sequential", 50.0), // not one-step
            row("unike:alpha=0.4", "caption", "one-step", 91.0), // a single point on captions
            row("unike", "vqa", "one-step", 97.0),
            row("unike:intrinsic+latent/k=5", "vqa", "one-step", 93.0),
            row("unike:k=40/intrinsic+latent", "vqa", "one-step", 94.0),
            row("serac", "vqa", "one-step", 99.0),
        ];
        let s = sweeps(&rows);
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!((s[0].param, s[0].base.as_str(), s[0].task.as_str()), (Param::Alpha, "unike", "vqa"));
        assert_eq!(s[0].points.iter().map(|p| (p.0, p.1[0])).collect::<Vec<_>>(), vec![(0.2, 95.0), (0.8, 99.0)]);
        assert_eq!(s[0].reference.map(|r| r[0]), Some(97.0));
        assert_eq!((s[1].param, s[1].base.as_str()), (Param::K, "unike:intrinsic+latent"));
        assert_eq!(s[1].points.iter().map(|p| p.0).collect::<Vec<_>>(), vec![5.0, 40.0]);
        assert_eq!(s[1].reference, None);
    }

    #[test]
    fn compares_zeta_treatments_per_task_only_when_a_variant_ran() {
        let rows = vec![
            row("unike", "vqa", "one-step", 97.0),
            row("unike:zeta-none", "vqa", "one-step", 90.0),
            row("unike:zeta-random", "vqa", "one-step", 85.0),
            row("unike", "caption", "one-step", 96.0),
        ];
        let z = zeta(&rows);
        assert_eq!(z.len(), 1);
        assert_eq!(z[0].task, "vqa");
        let labels: Vec<&str> = z[0].bars.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(labels, ["UniKE (truthfulness ζ)", "random ζ", "no ζ"]);
        assert_eq!(z[0].bars[1].1[0], 85.0);
    }
}
