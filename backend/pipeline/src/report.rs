//! Benchmark results as Markdown: one row per method and score kind, portability per hop, and what the columns are.

use unike_shared::{BenchResult, MetricSet};

/// `12.3`, or `-` for a figure the result does not have.
pub fn opt_pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |p| format!("{p:.1}"))
}

fn row(r: &BenchResult, m: &MetricSet, kind: &str) -> String {
    format!(
        "| {} | {} | {} | {} | {} | {kind} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} | {:.0} / {:.0} |",
        r.method,
        r.task,
        r.mode,
        r.k,
        r.n,
        m.reliability,
        m.t_generality,
        m.m_generality,
        m.t_locality,
        m.m_locality,
        opt_pct(m.m_locality_top1),
        opt_pct(m.portability),
        opt_pct(m.portability_base),
        r.timing.edit_ms_median,
        r.timing.edit_ms_p90
    )
}

/// The Markdown table of `results`: both scores per method, then what the columns are.
pub fn markdown(results: &[BenchResult]) -> String {
    let mut out = String::from(
        "| method | task | mode | k | n | score | Rel. | T-Gen. | M-Gen. | T-Loc. | M-Loc. | M-Loc. top-1 | Port. | \
         Port. base | edit ms (median / p90) |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in results {
        out.push_str(&row(r, &r.metrics, "token acc."));
        out.push('\n');
        out.push_str(&row(r, &r.exact_match, "exact match"));
        out.push('\n');
        if let Some(v1) = &r.metrics_v1 {
            out.push_str(&row(r, v1, "old v1 token acc."));
            out.push('\n');
        }
    }
    out.push_str(&hops_table(results));
    out.push_str(&format!("\n{}\n", CONVENTION_NOTE));
    out
}

/// Portability per number of hops (VLKEB's multi-hop questions) of the results that have it: token accuracy and
/// exact match after the edit, each beside the unedited model's on the same questions.
pub fn hops_table(results: &[BenchResult]) -> String {
    let with: Vec<&BenchResult> = results.iter().filter(|r| !r.portability_hops.is_empty()).collect();
    if with.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "\nPortability by hops (token acc. / base; exact match / base; questions):\n\n| method | task | mode | k | hops | \
         token | token base | exact | exact base | questions |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in with {
        for h in &r.portability_hops {
            out.push_str(&format!(
                "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
                r.method, r.task, r.mode, r.k, h.hop, h.token, h.token_base, h.exact, h.exact_base, h.questions
            ));
        }
    }
    out
}

/// What the token scores of the current convention are, under a table.
pub const CONVENTION_NOTE: &str = "Token scores, convention v2 (EasyEdit's multimodal evaluation): Rel. / Gen. / \
    Port. = teacher-forced token accuracy over the answer tokens (end of sequence not scored); T-Loc. = top-1 \
    agreement with the unedited model at each answer position; M-Loc. = its top-10 lists compared slot by slot at \
    each answer position (M-Loc. top-1: top-1 agreement there); Port. base = the unedited model on the same \
    portability questions. Exact match: greedy answer (answer tokens and end of sequence) equals the reference \
    (locality: the unedited model's greedy answer). Old v1 token acc.: the same edits under the convention used before \
    issue 14 (the end of sequence scored; T- and M-Loc. as top-1 agreement at the answer and end-of-sequence \
    positions), for comparison with older tables only.";
