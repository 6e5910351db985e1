//! The whole pipeline on the other model families (issue 18 §3): copies of the tiny random BLIP-2 (OPT) and Qwen2-VL
//! checkpoints get their trained networks (`train-method`), UniKE's memory and encoders (`build-memory --data`,
//! `train-encoders`) from MMEdit-format data (`gen-data`), then `bench` runs every method on them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `unike` run in `dir` (so that `dir/hparams/` is the hyper-parameter root).
fn unike(dir: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(env!("CARGO_BIN_EXE_unike")).current_dir(dir).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "unike {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("")
    );
    Ok(out.stdout)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        std::fs::copy(e.path(), to.join(e.file_name()))?;
    }
    Ok(())
}

#[test]
fn every_method_trains_and_benchmarks_on_blip2_and_qwen2vl() -> Result<()> {
    let tmp = std::env::temp_dir().join(format!("unike-families-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        unike(&tmp, &["gen-data", "--out", "data"])?;
        for (family, skipped) in [("blip2", vec!["ike", "serac"]), ("qwen2vl", vec![])] {
            let model = format!("tiny-{family}");
            copy_dir(&root().join("tests/fixtures").join(&model), &tmp.join(&model))?;
            // The shipped family files, as `hparams/` of this run's root; the tiny models have 3 layers, fewer than
            // the 4 the paper's UniKE edits, so a model file of their own takes the last 2.
            for m in [
                "ft",
                "ike",
                "ke",
                "mend",
                "serac",
                "t-patcher",
                "unike",
                "ft-vision",
                "lora",
                "grace",
                "wise",
                "rome",
                "memit",
                "alphaedit",
            ] {
                let dir = tmp.join("hparams").join(m);
                std::fs::create_dir_all(&dir)?;
                std::fs::copy(root().join(format!("hparams/{m}/{family}.toml")), dir.join(format!("{family}.toml")))?;
            }
            let unike_file = std::fs::read_to_string(root().join(format!("hparams/unike/{family}.toml")))?;
            anyhow::ensure!(unike_file.contains("\nlayers = 4\n"), "{family}: the paper's 4 layers");
            std::fs::write(
                tmp.join(format!("hparams/unike/{model}.toml")),
                unike_file.replace("\nlayers = 4\n", "\nlayers = 2\n"),
            )?;

            // GRACE and the locate-then-edit methods: the family files name layers 4-27 of 28-32; the tiny models' own
            // files edit layers 0 and 1 (AlphaEdit's null space: every direction, as a random model's key statistics have
            // no scale to set a threshold by).
            let grace_layer = if family == "blip2" { "\nlayer = 27\n" } else { "\nlayer = 18\n" };
            for (m, from, to) in [
                ("grace", grace_layer, "\nlayer = 1\n"),
                ("wise", "\nlayer = 23\n", "\nlayer = 1\n"),
                ("rome", "\nlayer = 5\n", "\nlayer = 0\n"),
                ("memit", "\nlayers = [4, 5, 6, 7, 8]\n", "\nlayers = [0, 1]\n"),
                ("alphaedit", "\nlayers = [4, 5, 6, 7, 8]\n", "\nlayers = [0, 1]\n"),
            ] {
                let text = std::fs::read_to_string(root().join(format!("hparams/{m}/{family}.toml")))?;
                anyhow::ensure!(text.contains(from), "{family}: {m}'s family file");
                let text = text.replace(from, to).replace("nullspace_threshold = 2e-2", "nullspace_threshold = 1e30");
                std::fs::write(tmp.join(format!("hparams/{m}/{model}.toml")), text)?;
            }
            for m in ["serac", "mend", "ke"] {
                unike(&tmp, &["train-method", m, "--model", &model, "--data", "data", "--steps", "5", "--cases", "8"])?;
            }
            // BLIP-2's key statistics by the command; Qwen2-VL's on demand, by `bench`.
            if family == "blip2" {
                unike(&tmp, &["build-stats", "--model", &model, "--data", "data", "--cases", "20"])?;
                let info: Value =
                    serde_json::from_str(&std::fs::read_to_string(tmp.join(&model).join("memit/stats.json"))?)?;
                assert_eq!(
                    info["sequences"], 60,
                    "{family}: 20 cases: the edit question with its answer, two locality ones"
                );
            }
            unike(&tmp, &["build-memory", "--model", &model, "--data", "data", "--n", "8"])?;
            unike(&tmp, &["train-encoders", "--model", &model, "--steps", "5"])?;
            let methods: Vec<&str> = [
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
            ]
            .into_iter()
            .filter(|m| !skipped.contains(m))
            .collect();
            let joined = methods.join(",");
            let out = unike(
                &tmp,
                &[
                    "bench",
                    "--model",
                    &model,
                    "--data",
                    "data",
                    "--methods",
                    &joined,
                    "--n",
                    "2",
                    "--threads",
                    "1",
                    "--json",
                ],
            )?;
            let report: Value = serde_json::from_slice(&out).context("bench --json")?;
            let results = report["results"].as_array().context("results")?;
            let got: Vec<&str> = results.iter().filter_map(|r| r["method"].as_str()).collect();
            assert_eq!(got, methods, "{family}");
            let rel = |m: &str| -> f64 {
                results
                    .iter()
                    .find(|r| r["method"] == m)
                    .and_then(|r| r["metrics"]["reliability"].as_f64())
                    .unwrap_or(-1.0)
            };
            // Measured (2026-12-06, 2 cases): T-Patcher 100 / 90 and UniKE 100 / 100 reliability (BLIP-2 / Qwen2-VL);
            // both optimise until the target is the argmax (LoRA's 5 SGD steps of EasyEdit's multimodal setting reach
            // 45 on BLIP-2: not asserted). The unedited model scores 0 (the targets are the world's words, the models
            // random).
            assert_eq!(rel("none"), 0.0, "{family}");
            for m in ["t-patcher", "unike"] {
                assert!(rel(m) >= 50.0, "{family}: {m} reliability {}", rel(m));
            }
            assert!(tmp.join(&model).join("memit/stats.safetensors").is_file(), "{family}: key statistics");
            // BLIP-2's tiny checkpoint keeps 64 positions for in-context prefixes; the world's edit as a
            // demonstration often needs more (OPT's byte-level tokens of a tiny vocabulary): either the method runs or
            // the error says so, never a crash.
            for m in &skipped {
                let out = Command::new(env!("CARGO_BIN_EXE_unike"))
                    .current_dir(&tmp)
                    .args(["bench", "--model", &model, "--data", "data", "--methods", m, "--n", "2", "--threads", "1"])
                    .output()?;
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(out.status.success() || err.contains("positions"), "{family} {m}: {err}");
                eprintln!("{family} {m}: {}", if out.status.success() { "ran" } else { "too long for the window" });
            }
            // Without the model's own file, the family's 4 layers do not fit the 3-layer model: the error names the
            // file the setting came from.
            std::fs::remove_file(tmp.join(format!("hparams/unike/{model}.toml")))?;
            let out = Command::new(env!("CARGO_BIN_EXE_unike"))
                .current_dir(&tmp)
                .args(["bench", "--model", &model, "--data", "data", "--methods", "unike", "--n", "1"])
                .output()?;
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success() && err.contains(&format!("unike/{family}.toml")), "{family}: {err}");
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}
