//! The `unike` binary end to end: the `answer --json` contract against transformers' outputs, one-line errors
//! with non-zero exits, and `serve` answering its API and first page on loopback.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn unike() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_unike"));
    c.current_dir(root());
    c
}

fn expected(name: &str) -> Result<Value> {
    let text = std::fs::read_to_string(root().join("tests/fixtures/expected/expected.json"))?;
    let v: Value = serde_json::from_str(&text)?;
    Ok(v["variants"]["f32"][name].clone())
}

#[test]
fn answer_json_matches_transformers() -> Result<()> {
    for (name, args) in [
        ("image_question", vec!["--image", "tests/fixtures/images/wide.png", "--question", "what is in the picture?"]),
        (
            "image_caption",
            vec![
                "--image",
                "tests/fixtures/images/narrow.png",
                "--prompt",
                "USER: <image>\ndescribe the scene ASSISTANT:",
            ],
        ),
        ("text_only", vec!["--prompt", "the capital of france is"]),
    ] {
        let want = expected(name)?;
        let out = unike()
            .args(["answer", "--model", "tests/fixtures/tiny-llava", "--max-new-tokens", "8", "--json"])
            .args(&args)
            .output()?;
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let got: Value = serde_json::from_slice(&out.stdout).context("stdout is one JSON object")?;
        assert_eq!(got["input_ids"], want["input_ids"], "{name}");
        assert_eq!(got["answer_ids"], want["answer_ids"], "{name}");
        assert_eq!(got["answer"], want["answer"], "{name}");
        let a = got["first_logits"].as_array().context("first_logits")?;
        let b = want["last_logits"].as_array().context("last_logits")?;
        assert_eq!(a.len(), b.len());
        let diff = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(0.0)).abs())
            .fold(0.0, f64::max);
        assert!(diff <= 1e-4, "{name}: logits differ by {diff}");
    }
    Ok(())
}

/// `unike answer --prompt P --json` on the tiny BLIP-2 (OPT) and Qwen2-VL checkpoints: the ids are what the family's
/// transformers processor gives for `text=P` and the image, and the logits and greedy tokens transformers' own.
#[test]
fn answer_json_matches_transformers_on_blip2_and_qwen2vl() -> Result<()> {
    for family in ["blip2", "qwen2vl"] {
        let text = std::fs::read_to_string(root().join(format!("tests/fixtures/expected-{family}/expected.json")))?;
        let v: Value = serde_json::from_str(&text)?;
        let cases = v["variants"]["f32"].as_object().context("f32 cases")?;
        assert_eq!(cases.len(), 3, "{family}");
        for (name, want) in cases {
            let mut args = vec!["answer".to_string(), "--model".into(), format!("tests/fixtures/tiny-{family}")];
            args.extend(["--json".into(), "--max-new-tokens".into()]);
            args.push(want["answer_ids"].as_array().context("answer_ids")?.len().to_string());
            args.extend(["--prompt".into(), want["prompt"].as_str().unwrap_or("").to_string()]);
            if let Some(img) = want["image"].as_str() {
                args.extend(["--image".into(), format!("tests/fixtures/{img}")]);
            }
            let out = unike().args(&args).output()?;
            assert!(out.status.success(), "{family}/{name}: {}", String::from_utf8_lossy(&out.stderr));
            let got: Value = serde_json::from_slice(&out.stdout).context("stdout is one JSON object")?;
            assert_eq!(got["input_ids"], want["input_ids"], "{family}/{name}");
            assert_eq!(got["answer_ids"], want["answer_ids"], "{family}/{name}");
            assert_eq!(got["answer"], want["answer"], "{family}/{name}");
            let a = got["first_logits"].as_array().context("first_logits")?;
            let b = want["last_logits"].as_array().context("last_logits")?;
            assert_eq!(a.len(), b.len(), "{family}/{name}");
            let diff = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x.as_f64().unwrap_or(f64::NAN) - y.as_f64().unwrap_or(0.0)).abs())
                .fold(0.0, f64::max);
            assert!(diff <= 1e-4, "{family}/{name}: logits differ by {diff}");
        }
        // The model path's benchmark runs on the family too.
        let out = unike()
            .args(["bench-model", "--model", &format!("tests/fixtures/tiny-{family}"), "--iters", "1"])
            .args(["--max-new-tokens", "2", "--json"])
            .output()?;
        assert!(out.status.success(), "bench-model {family}: {}", String::from_utf8_lossy(&out.stderr));
        let report: Value = serde_json::from_slice(&out.stdout).context("bench-model --json")?;
        assert!(report.is_object(), "{family}: {report}");
    }
    Ok(())
}

#[test]
fn bad_inputs_exit_non_zero_with_one_line() -> Result<()> {
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--model", "/no/such/model", "--question", "hi"], "does not exist"),
        (
            vec!["--model", "tests/fixtures/tiny-llava", "--image", "/no/such.png", "--question", "hi"],
            "cannot read /no/such.png",
        ),
        (vec!["--model", "tests/fixtures/tiny-llava", "--image", "Cargo.toml", "--question", "hi"], "bad image"),
        (vec!["--model", "tests/fixtures", "--question", "hi"], "config.json"),
        (
            vec![
                "--model",
                "tests/fixtures/tiny-llava",
                "--prompt",
                "no image here",
                "--image",
                "tests/fixtures/images/wide.png",
            ],
            "0 <image> placeholder(s) but 1 image(s)",
        ),
        (vec!["--model", "tests/fixtures/tiny-llava", "--question", "hi", "--dtype", "f8"], "unknown dtype"),
        (vec!["--model", "tests/fixtures/tiny-llava", "--question", "hi", "--device", "tpu"], "unknown device"),
    ];
    for (args, needle) in cases {
        let out = unike().arg("answer").args(&args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: one line, got {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Neither --prompt nor --question: clap's usage error.
    let out = unike().args(["answer", "--model", "tests/fixtures/tiny-llava"]).output()?;
    assert!(!out.status.success());
    Ok(())
}

fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status: u16 = buf.split_whitespace().nth(1).context("status")?.parse()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

#[test]
fn serve_answers_api_and_first_page() -> Result<()> {
    let dist = std::env::temp_dir().join(format!("unike-dist-{}", std::process::id()));
    std::fs::create_dir_all(&dist)?;
    std::fs::write(dist.join("index.html"), "<!doctype html><title>UniKE Studio</title><div id=app></div>")?;
    let mut child = unike()
        .args(["serve", "--addr", "127.0.0.1:0", "--model", "tests/fixtures/tiny-llava", "--dist"])
        .arg(&dist)
        .arg("--db")
        .arg(format!("sqlite://{}", dist.join("studio.db").display()))
        .stderr(Stdio::piped())
        .spawn()?;
    let result = (|| -> Result<()> {
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        let port = loop {
            anyhow::ensure!(Instant::now() < deadline, "server did not start");
            let line = lines.next().context("server exited")??;
            if let Some(rest) = line.split("http://").nth(1) {
                let addr = rest.split_whitespace().next().context("addr")?;
                break addr.rsplit(':').next().context("port")?.parse::<u16>()?;
            }
        };
        let (st, body) = http_get(port, "/api/health")?;
        assert_eq!(st, 200);
        assert!(body.contains("\"status\":\"ok\""), "{body}");
        let (st, body) = http_get(port, "/api/model")?;
        assert_eq!(st, 200);
        let info: unike_shared::ModelInfo = serde_json::from_str(&body)?;
        assert_eq!(info.text_layers, 3);
        assert_eq!(info.image_seq_length, 25);
        assert!(info.parameters > 100_000);
        let (st, body) = http_get(port, "/api/nope")?;
        assert_eq!(st, 404);
        assert!(body.contains("\"error\""), "{body}");
        for page in ["/", "/leaderboard"] {
            let (st, body) = http_get(port, page)?;
            assert_eq!(st, 200, "{page}");
            assert!(body.contains("UniKE Studio"), "{page}: {body}");
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dist);
    result
}

#[test]
fn gen_data_is_deterministic_and_loadable() -> Result<()> {
    let base = std::env::temp_dir().join(format!("unike-gen-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    for d in [&a, &b] {
        let out = unike().args(["gen-data", "--seed", "3", "--out"]).arg(d).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for f in ["vqa_train.json", "vqa_eval.json", "caption_train.json", "caption_eval.json", "world.json"] {
        assert_eq!(std::fs::read(a.join(f))?, std::fs::read(b.join(f))?, "{f} differs between runs");
    }
    let vqa = unike_core::data::load_cases(&a.join("vqa_eval.json"), unike_core::data::Task::Vqa, None)?;
    assert!(vqa.len() >= 500, "{}", vqa.len());
    assert!(vqa.iter().all(|c| c.image.is_file() && c.rephrase_image.is_file() && c.m_loc_image.is_file()));
    assert!(vqa.iter().all(|c| Some(&c.target) != c.pre_edit.as_ref() && c.prompt != c.rephrase_prompt));
    assert!(vqa.iter().any(|c| c.portability.iter().any(|p| p.hop == "3-hop")));
    let ic = unike_core::data::load_cases(&a.join("caption_eval.json"), unike_core::data::Task::Caption, None)?;
    assert!(ic.len() >= 500 && ic.iter().all(|c| c.image.is_file() && c.rephrase_image.is_file()));
    assert_eq!(std::fs::read(a.join(&vqa[0].image))?, std::fs::read(b.join(vqa[0].image.strip_prefix(&a)?))?);
    let other = base.join("c");
    unike().args(["gen-data", "--seed", "4", "--out"]).arg(&other).output()?;
    assert_ne!(std::fs::read(a.join("world.json"))?, std::fs::read(other.join("world.json"))?);
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[test]
fn train_base_smoke_is_deterministic_and_loadable() -> Result<()> {
    let base = std::env::temp_dir().join(format!("unike-train-{}", std::process::id()));
    let (a, b) = (base.join("a"), base.join("b"));
    for d in [&a, &b] {
        let out = unike().args(["train-base", "--recipe", "smoke", "--seed", "5", "--out"]).arg(d).output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    for f in ["model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "processor_config.json"]
    {
        assert_eq!(std::fs::read(a.join(f))?, std::fs::read(b.join(f))?, "{f} differs between runs");
    }
    let png = std::fs::read(a.join("training_curve.png"))?;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    // The saved directory is an llava-hf checkpoint: it loads, answers, and eval-base reports every split.
    let ckpt = unike_core::model::Checkpoint::open(&a)?;
    assert_eq!(ckpt.summary().text_layers, 1);
    let out = unike().args(["eval-base", "--n", "4", "--json", "--model"]).arg(&a).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let splits = ["facts_seen", "renderings_unseen", "paraphrases_heldout", "text_facts", "captions"];
    for split in splits.into_iter().chain(["context_follow", "context_ignore"]) {
        let s = &v["splits"][split];
        let x = s["exact_match"].as_f64().context("exact_match")?;
        assert!((0.0..=1.0).contains(&x) && s["n"].as_u64().unwrap_or(0) >= 4, "{split}: {s}");
    }
    assert_eq!(v["unknown_facts"]["n"], 4);
    // A smoke model is far below the floors: --check must say so and fail.
    let out = unike().args(["eval-base", "--n", "4", "--check", "--model"]).arg(&a).output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("below the floor"));
    // The dense repetitions kept after the induction stage reach the weights (0 turns them off).
    let c = base.join("c");
    let out = unike()
        .args(["train-base", "--recipe", "smoke", "--seed", "5", "--keep-induction", "0", "--out"])
        .arg(&c)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_ne!(std::fs::read(a.join("model.safetensors"))?, std::fs::read(c.join("model.safetensors"))?);
    // Each auxiliary term reaches the weights, and the recipe records its weight and layer.
    for (flag, term) in
        [("--question-binding", "question_binding"), ("--decision", "decision"), ("--invariance", "invariance")]
    {
        let dir = base.join(term);
        let out = unike()
            .args(["train-base", "--recipe", "smoke", "--seed", "5", flag, "0,1", "--out"])
            .arg(&dir)
            .output()?;
        assert!(out.status.success(), "{flag}: {}", String::from_utf8_lossy(&out.stderr));
        assert_ne!(
            std::fs::read(a.join("model.safetensors"))?,
            std::fs::read(dir.join("model.safetensors"))?,
            "{flag}"
        );
        let recipe: Value = serde_json::from_slice(&std::fs::read(dir.join("training.json"))?)?;
        let (w, l) = (&recipe["recipe"][format!("{term}_weight")], &recipe["recipe"][format!("{term}_layer")]);
        assert_eq!((w, l), (&1.0.into(), &0.into()), "{flag}: {recipe}");
    }
    // The invariance term's gate is recorded (its effect on the weights is pinned in the library's tests).
    let g = base.join("gate");
    let out = unike()
        .args(["train-base", "--recipe", "smoke", "--seed", "5", "--invariance", "0,1", "--invariance-gate", "0.5"])
        .arg("--out")
        .arg(&g)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let recipe: Value = serde_json::from_slice(&std::fs::read(g.join("training.json"))?)?;
    assert_eq!(recipe["recipe"]["invariance_gate"], 0.5, "{recipe}");
    // The decoder's heads are part of the recipe: written to config.json, and a run from a checkpoint keeps them.
    let h = base.join("h");
    let smoke = ["train-base", "--recipe", "smoke", "--seed", "5"];
    let out = unike().args(smoke).args(["--text-heads", "8", "--out"]).arg(&h).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&std::fs::read(h.join("config.json"))?)?;
    assert_eq!(config["text_config"]["num_attention_heads"], 8);
    assert_ne!(std::fs::read(a.join("model.safetensors"))?, std::fs::read(h.join("model.safetensors"))?);
    let i = base.join("i");
    let out = unike().args(smoke).args(["--vision-steps", "0", "--init"]).arg(&h).arg("--out").arg(&i).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let config: Value = serde_json::from_slice(&std::fs::read(i.join("config.json"))?)?;
    assert_eq!(config["text_config"]["num_attention_heads"], 8, "a run from a checkpoint keeps its heads");
    for (bad, says) in [
        (&["--text-heads", "5"][..], "--text-heads must divide"),
        (&["--text-heads", "0"][..], "--text-heads must divide"),
        (&["--drill-recall", "2"][..], "--drill-recall must be in [0, 1]"),
        (&["--question-binding", "1,1"][..], "--question-binding: takes LAYER,WEIGHT: a decoder layer below"),
        (&["--question-binding", "0,-1"][..], "--question-binding: takes LAYER,WEIGHT"),
        (&["--question-binding", "0.5,1"][..], "--question-binding: takes LAYER,WEIGHT"),
        (&["--binding", "0"][..], "--binding: takes LAYER,WEIGHT"),
        (&["--decision", "3,1"][..], "--decision: takes LAYER,WEIGHT: a decoder layer below"),
        (&["--invariance", "1,1"][..], "--invariance: takes LAYER,WEIGHT: a decoder layer below"),
        (&["--invariance", "0,1,2.5"][..], "--invariance: FROM_STEP must be a whole number"),
        (&["--invariance", "0,1,2,3"][..], "--invariance: takes LAYER,WEIGHT"),
        (&["--invariance-gate", "0.5"][..], "--invariance-gate: only with --invariance"),
        (&["--invariance", "0,1", "--invariance-gate=-1"][..], "--invariance-gate: MARGIN must be"),
    ] {
        let out = unike().args(smoke).args(bad).arg("--out").arg(base.join("bad")).output()?;
        assert_eq!(out.status.code(), Some(1), "{bad:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let out = unike().args(smoke).args(["--text-heads", "4", "--init"]).arg(&h).arg("--out").arg(&i).output()?;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("has 8 attention heads"));
    let zero = ["--vision-steps", "0", "--induction-steps", "0", "--align-steps", "0", "--context-steps", "0"];
    let zero = [&zero[..], &["--tune-steps", "0"]].concat();
    let out = unike().args(["train-base", "--recipe", "smoke"]).args(zero).arg("--out").arg(&base).output()?;
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// The shipped default model (`models/default`) meets the quality floors of Substrate II and Fidelity I, except the
/// ones listed as known shortfalls; and `--check` does fail on those. At n = 500, the README's table: the model sits
/// right at two floors (captions 0.89 at n = 100, context_follow 0.897 at n = 300), so a smaller sample decides.
#[test]
fn default_model_meets_the_floors() -> Result<()> {
    use unike_core::train::evaluate::{FLOORS, KNOWN_SHORTFALLS};
    let out = unike().args(["eval-base", "--model", "default", "--n", "500", "--json", "--check"]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.success(), KNOWN_SHORTFALLS.is_empty(), "{err}");
    for name in KNOWN_SHORTFALLS {
        assert!(err.contains(name), "--check does not name the shortfall {name}: {err}");
    }
    let v: Value = serde_json::from_slice(&out.stdout)?;
    for (name, floor) in FLOORS {
        let em = v["splits"][name]["exact_match"].as_f64().with_context(|| format!("no split {name}"))?;
        if KNOWN_SHORTFALLS.contains(&name) {
            continue;
        }
        assert!(em >= f64::from(floor) - 1e-6, "{name}: {em} < {floor}");
    }
    let unknown = &v["unknown_facts"];
    // Facts it never learned get an answer (not silence), and a confident one.
    assert!(unknown["answered"].as_f64().unwrap_or(0.0) >= 0.95, "{unknown}");
    assert!(unknown["mean_confidence"].as_f64().unwrap_or(0.0) >= 0.5, "{unknown}");
    Ok(())
}

#[test]
fn default_model_answers_a_world_image() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("unike-default-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let world = unike_core::world::World::generate(0);
    let e = 17;
    let img = dir.join("entity.png");
    world.render_entity(e, unike_core::world::Pool::Eval, 7).save(&img)?;
    let out = unike()
        .args(["answer", "--model", "default", "--question", "what is the name of this character?", "--image"])
        .arg(&img)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), world.entities[e].name);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn bench_edits_the_default_model_deterministically() -> Result<()> {
    let base = std::env::temp_dir().join(format!("unike-bench-{}", std::process::id()));
    let data = base.join("world");
    let out = unike().args(["gen-data", "--seed", "0", "--out"]).arg(&data).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bench = |extra: &[&str]| -> Result<Value> {
        let out = unike()
            .args(["bench", "--methods", "t-patcher,none", "--n", "6", "--memory", "16", "--json", "--data"])
            .arg(&data)
            .args(extra)
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let a = bench(&[])?;
    let r = &a["results"][0];
    assert_eq!(
        (r["method"].as_str(), r["mode"].as_str(), r["k"].as_u64(), r["n"].as_u64()),
        (Some("t-patcher"), Some("one-step"), Some(1), Some(6))
    );
    for key in ["reliability", "t_generality", "m_generality", "t_locality", "m_locality", "portability"] {
        let v = r["metrics"][key].as_f64().context(key)?;
        assert!((0.0..=100.0).contains(&v), "{key} {v}");
        assert!(r["exact_match"][key].as_f64().is_some(), "{key}");
    }
    assert_eq!(r["convention"], "v2", "{r}");
    assert!(r["metrics"]["portability_base"].as_f64().is_some() && r["metrics"]["m_locality_top1"].as_f64().is_some());
    // `none`, the unedited model: locality 100, portability equal to the unedited model's (the base).
    let none = &a["results"][1];
    assert_eq!(none["method"], "none", "{a}");
    assert_eq!(
        (none["metrics"]["t_locality"].as_f64(), none["metrics"]["m_locality"].as_f64()),
        (Some(100.0), Some(100.0))
    );
    assert_eq!(none["metrics"]["portability"], none["metrics"]["portability_base"], "{none}");
    assert_eq!(none["metrics"]["portability_base"], r["metrics"]["portability_base"], "{a}");
    // T-Patcher makes the edits: reliability is high on the default model.
    assert!(r["metrics"]["reliability"].as_f64().unwrap_or(0.0) >= 80.0, "{r}");
    assert!(r["timing"]["edit_ms_median"].as_f64().unwrap_or(0.0) > 0.0);
    // Same seed, same numbers.
    let b = bench(&[])?;
    assert_eq!(a["results"][0]["metrics"], b["results"][0]["metrics"]);
    assert_eq!(a["results"][0]["exact_match"], b["results"][0]["exact_match"]);
    let s = bench(&["--mode", "sequential", "--k", "3"])?;
    assert_eq!((s["results"][0]["mode"].as_str(), s["results"][0]["k"].as_u64()), (Some("sequential"), Some(3)));
    // The same run in three shards (as on three machines) and merged: the same results, edit times aside.
    let shard = |i: usize| -> Result<std::path::PathBuf> {
        let out_file = base.join(format!("shard{i}.json"));
        let spec = format!("{i}/3");
        let out = unike()
            .args(["bench", "--methods", "t-patcher,none", "--n", "6", "--memory", "16", "--data"])
            .arg(&data)
            .args(["--shard", &spec, "--shard-out"])
            .arg(&out_file)
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        Ok(out_file)
    };
    let files = [shard(2)?, shard(0)?, shard(1)?];
    let joined = files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(",");
    let m = bench(&["--merge", &joined])?;
    let strip = |v: &Value| -> Value {
        let mut v = v["results"].clone();
        for r in v.as_array_mut().into_iter().flatten() {
            r.as_object_mut().map(|o| o.remove("timing"));
        }
        v
    };
    assert_eq!(strip(&m), strip(&a), "merged shards equal one process");
    // A missing shard, or shards of another run, are refused.
    let two = format!("{},{}", files[0].display(), files[1].display());
    let out = unike()
        .args(["bench", "--methods", "t-patcher,none", "--n", "6", "--memory", "16", "--data"])
        .arg(&data)
        .args(["--merge", &two])
        .output()?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is missing"));
    let out = unike()
        .args(["bench", "--methods", "t-patcher,none", "--n", "7", "--memory", "16", "--data"])
        .arg(&data)
        .args(["--merge", &joined])
        .output()?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("another run"));
    // VLKEB's gap protocol: the stream edits n + gap cases and scores n; portability per hop beside it.
    let g = bench(&["--mode", "sequential-gap", "--gap", "2"])?;
    let r = &g["results"][0];
    assert_eq!((r["mode"].as_str(), r["k"].as_u64(), r["n"].as_u64()), (Some("sequential-gap"), Some(2), Some(6)));
    assert!(r["portability_hops"].as_array().is_some_and(|h| !h.is_empty() && h[0]["hop"].is_string()), "{r}");

    // Bad input: one line, exit 1.
    let bad = base.join("bad");
    std::fs::create_dir_all(&bad)?;
    std::fs::write(bad.join("vqa_eval.json"), "{not json")?;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--methods", "rogue"], "unknown method \"rogue\""),
        (vec!["--methods", "serac:x"], "has no variants"),
        (vec!["--methods", "unike:nope"], "unknown UniKE variant \"nope\""),
        (vec!["--methods", "ft:x"], "has no variants"),
        (vec!["--data", "/no/such/dir"], "--data /no/such/dir: no such file or directory"),
        (vec!["--data", bad.to_str().context("utf-8 path")?], "vqa_eval.json"),
        (vec!["--n", "0"], "--n must be at least 1"),
    ];
    for (args, needle) in cases {
        let mut cmd = unike();
        cmd.arg("bench");
        if !args.contains(&"--n") {
            cmd.args(["--n", "2"]);
        }
        if !args.contains(&"--data") {
            cmd.arg("--data").arg(&data);
        }
        let out = cmd.args(&args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[test]
fn reproduce_writes_tables_json_and_charts() -> Result<()> {
    let base = std::env::temp_dir().join(format!("unike-reproduce-{}", std::process::id()));
    let data = base.join("world");
    let out = unike().args(["gen-data", "--seed", "0", "--out"]).arg(&data).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = base.join("out");
    let out = unike()
        .args(["reproduce", "--only", "table1,gap", "--methods", "ft,ike", "--n", "20", "--memory", "8"])
        .args(["--gaps", "1,3", "--gap-n", "2", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&dir)
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["README.md", "table1.md", "table1.json", "table1_vqa.png", "table1_caption.png", "gap.md", "gap.png"] {
        assert!(dir.join(f).is_file(), "{f} missing");
    }
    let v: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("table1.json"))?)?;
    let methods: Vec<(&str, &str)> = v["results"]
        .as_array()
        .context("results")?
        .iter()
        .map(|r| (r["method"].as_str().unwrap_or(""), r["task"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(methods, [("ft", "vqa"), ("ike", "vqa"), ("ft", "caption"), ("ike", "caption")]);
    let md = std::fs::read_to_string(dir.join("table1.md"))?;
    assert!(md.contains("| ike | vqa | one-step | 1 | 20 |"), "{md}");
    assert!(md.contains("| Port. base |") && md.contains("convention v2"), "{md}");
    assert!(md.contains("Portability by hops") && md.contains("| ike | vqa | one-step | 1 | 2-hop |"), "{md}");
    // VLKEB's gap protocol: per method and gap, the scored cases (k holds the gap).
    let gap = std::fs::read_to_string(dir.join("gap.md"))?;
    for row in ["| ft | vqa | sequential-gap | 1 | 2 |", "| ike | vqa | sequential-gap | 3 | 2 |"] {
        assert!(gap.contains(row), "{row} missing: {gap}");
    }
    // The manifest a studio imports as reference results: this build's commit, the model, the sections done.
    let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
    assert_eq!(m["sections"], serde_json::json!(["table1", "gap"]), "{m}");
    assert_eq!((&m["model"], &m["seed"]), (&Value::from("default"), &Value::from(0)), "{m}");
    let commit = m["commit"].as_str().context("commit")?;
    assert!(commit == "unknown" || (commit.len() == 7 && commit.chars().all(|c| c.is_ascii_hexdigit())), "{m}");
    assert!(m["command"].as_str().is_some_and(|c| c.starts_with("unike reproduce --only table1,gap")), "{m}");
    // Bad input: one line, exit 1.
    for (args, needle) in [
        (vec!["--only", "table9"], "unknown section \"table9\""),
        (vec!["--n", "5"], "--n must be at least 20"),
        (vec!["--gaps", "0"], "--gaps takes gaps from 1 to"),
        (vec!["--methods", "rogue"], "unknown method"),
    ] {
        let out = unike().args(["reproduce", "--out"]).arg(&dir).args(&args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle) && err.trim_end().lines().count() == 1, "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[test]
fn train_method_writes_a_deterministic_network_and_rejects_bad_input() -> Result<()> {
    let base = std::env::temp_dir().join(format!("unike-train-method-{}", std::process::id()));
    let data = base.join("world");
    let out = unike().args(["gen-data", "--seed", "0", "--out"]).arg(&data).output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A copy of the default model, so that the shipped networks stay as they are.
    let model = base.join("model");
    std::fs::create_dir_all(&model)?;
    for f in ["config.json", "model.safetensors", "preprocessor_config.json", "tokenizer.json", "training.json"] {
        std::fs::copy(root().join("models/default").join(f), model.join(f))?;
    }
    for (method, version) in [("mend", 2), ("ke", 2), ("serac", 2)] {
        let mut bytes = Vec::new();
        for _ in 0..2 {
            let out = unike()
                .args(["train-method", method, "--steps", "3", "--cases", "6", "--model"])
                .arg(&model)
                .arg("--data")
                .arg(&data)
                .output()?;
            assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
            bytes.push(std::fs::read(model.join(method).join("net.safetensors"))?);
            let header: Value = serde_json::from_str(&std::fs::read_to_string(model.join(method).join("net.json"))?)?;
            assert_eq!(header["format"].as_str(), Some(format!("unike-{method}/{version}").as_str()));
            assert_eq!(header["params"]["train"]["steps"].as_u64(), Some(3), "{header}");
        }
        assert_eq!(bytes[0], bytes[1], "{method}: same seed, same network");
        // The trained network edits through `bench`.
        let out = unike()
            .args(["bench", "--methods", method, "--n", "2", "--json", "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .output()?;
        assert!(out.status.success(), "{method}: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout)?;
        assert_eq!(v["results"][0]["method"].as_str(), Some(method));
    }
    for (args, needle) in [
        (vec!["train-method", "mend", "--steps", "0"], "--steps must be at least 1"),
        (vec!["train-method", "ke", "--cases", "0"], "--cases must be at least 1"),
        (vec!["train-method", "serac", "--data", "/no/such/dir"], "no such file or directory"),
    ] {
        let out = unike().args(&args).arg("--model").arg(&model).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle) && err.trim_end().lines().count() == 1, "{args:?}: {err}");
    }
    let out = unike().args(["train-method", "rome"]).output()?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("rome"));
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

/// The one `error: ...` line of a failure's stderr, which ends it (a world generated on the way may be said before).
fn one_error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert_eq!(stderr.trim_end().lines().last(), errors.first().copied(), "{stderr}");
    errors[0].to_string()
}

/// `unike bench --json` on the default model with `extra` flags: the parsed output, or the failure's stderr.
fn bench_json(extra: &[&str]) -> Result<std::result::Result<Value, String>> {
    let out = unike()
        .args(["bench", "--model", "default", "--methods", "ike", "--memory", "4", "--json"])
        .args(extra)
        .output()?;
    if !out.status.success() {
        return Ok(Err(String::from_utf8_lossy(&out.stderr).to_string()));
    }
    Ok(Ok(serde_json::from_slice(&out.stdout)?))
}

#[test]
fn bench_seeds_draw_cases_from_the_models_own_world() -> Result<()> {
    let run = |extra: &[&str]| -> Result<Value> { bench_json(extra)?.map_err(|e| anyhow::anyhow!("{extra:?}: {e}")) };
    let a = run(&["--n", "4", "--seed", "1"])?;
    let b = run(&["--n", "4", "--seed", "1"])?;
    let c = run(&["--n", "4", "--seed", "2"])?;
    // Same seed, same cases, same numbers.
    assert_eq!(a["cases"], b["cases"]);
    assert_eq!(a["results"][0]["metrics"], b["results"][0]["metrics"]);
    assert_eq!(a["cases"].as_array().map(Vec::len), Some(4));
    // Another seed, other cases of the same world (the model's own, world 0).
    assert_ne!(a["cases"], c["cases"]);
    for v in [&a, &c] {
        let notes = v["data"].to_string();
        assert!(notes.contains("world 0 (the model's own)") && notes.contains("evaluation split"), "{notes}");
        for case in v["cases"].as_array().context("cases")? {
            let img = PathBuf::from(case["image"].as_str().context("image")?);
            assert!(img.starts_with(std::env::temp_dir().join("unike-world-0")), "{img:?}");
        }
    }
    // Not just the first n: a draw of 4 from hundreds is (here) not the file's first four.
    let first: Vec<Value> = unike_core::data::load_cases(
        &std::env::temp_dir().join("unike-world-0/vqa_eval.json"),
        unike_core::data::Task::Vqa,
        None,
    )?
    .iter()
    .take(4)
    .map(|c| Value::String(c.prompt.clone() + &c.target))
    .collect();
    let drawn: Vec<Value> = a["cases"]
        .as_array()
        .context("cases")?
        .iter()
        .map(|c| Value::String(c["prompt"].as_str().unwrap_or("").to_string() + c["target"].as_str().unwrap_or("")))
        .collect();
    assert_ne!(first, drawn);
    // The development slice: training cases, said so.
    let d = run(&["--n", "2", "--split", "dev"])?;
    let notes = d["data"].to_string();
    assert!(notes.contains("development slice") && notes.contains("vqa_train.json"), "{notes}");
    // Another world is asked for explicitly, and refused: its names are not in the model's word-level tokenizer.
    let err = bench_json(&["--n", "2", "--world", "7"])?.err().context("--world 7 must be refused")?;
    let line = one_error_line(&err);
    assert!(
        line.contains("world 7") && line.contains("outside the model's tokenizer") && line.contains("e.g."),
        "{err}"
    );
    // A model without a world of its own needs --data.
    let out =
        unike().args(["bench", "--model", "tests/fixtures/tiny-llava", "--methods", "ike", "--n", "1"]).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no training.json") && err.contains("--data"), "{err}");
    Ok(())
}

/// A JPEG (or PNG) photo of `w`x`h` that is not a world image.
fn photo(path: &std::path::Path, w: u32, h: u32) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, ((x ^ y) & 0xff) as u8])
    });
    img.save(path)?;
    Ok(())
}

#[test]
fn bench_reads_a_downloaded_file_with_photos_of_any_size() -> Result<()> {
    let base = std::env::temp_dir().join(format!("unike-real-{}", std::process::id()));
    let images = base.join("coco");
    photo(&images.join("val2014/a.jpg"), 96, 80)?;
    photo(&images.join("val2014/b.jpg"), 120, 90)?;
    photo(&images.join("train2014/c.png"), 64, 48)?;
    // Records as E-VQA ships them (pred as a list, extra keys), in the default model's words.
    let world = unike_core::world::World::generate(0);
    let name = unike_core::world::Relation::Name.paraphrases();
    let (f0, f1) = (&world.text_facts[0], &world.text_facts[1]);
    let record = |src: &str, alt: &str| {
        serde_json::json!({"src": src, "pred": [world.entities[3].name], "rephrase": name[1], "alt": alt,
            "image": "val2014/a.jpg", "image_rephrase": "val2014/b.jpg", "loc": f0.question, "loc_ans": f0.answer,
            "m_loc": "train2014/c.png", "m_loc_q": f1.question, "m_loc_a": f1.answer, "textual_rephrase": "x"})
    };
    let vqa = base.join("data/E-VQA_eval.json");
    std::fs::create_dir_all(vqa.parent().context("parent")?)?;
    std::fs::write(&vqa, serde_json::to_string(&[record(name[0], &world.entities[5].name)])?)?;
    let file = vqa.to_str().context("utf-8")?;
    let imgs = images.to_str().context("utf-8")?;
    let v = bench_json(&["--data", file, "--images", imgs, "--n", "1"])?.map_err(anyhow::Error::msg)?;
    let r = &v["results"][0];
    assert_eq!((r["task"].as_str(), r["n"].as_u64()), (Some("vqa"), Some(1)), "{v}");
    let notes = v["data"].to_string();
    // No training split came with the file: the output says where the memory comes from.
    assert!(notes.contains("not in --data") && notes.contains("world 0"), "{notes}");
    // A caption file is told from its records; --train gives the training split (here the file itself).
    let ic = base.join("data/captions.json");
    let caption = unike_core::world::scene::caption(&world.scene(unike_core::world::Pool::Eval, 5).0);
    std::fs::write(&ic, serde_json::to_string(&[record("describe the image.", &caption)])?)?;
    let icf = ic.to_str().context("utf-8")?;
    let v = bench_json(&["--data", icf, "--images", imgs, "--train", icf, "--n", "1"])?.map_err(anyhow::Error::msg)?;
    assert_eq!(v["results"][0]["task"].as_str(), Some("caption"), "{v}");
    assert!(v["data"].to_string().contains(&format!("--train {icf}")), "{v}");

    // Bad input: one line, exit 1, and what to do.
    let mixed = base.join("data/mixed.json");
    std::fs::write(&mixed, serde_json::to_string(&[record(name[0], "x"), record("describe the image.", "y")])?)?;
    let mixedf = mixed.to_str().context("utf-8")?;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--data", file], "cannot read"),
        (vec!["--data", file, "--images", imgs, "--task", "cross"], "--task cross"),
        (vec!["--data", mixedf, "--images", imgs], "pass --task vqa|caption"),
        (vec!["--data", file, "--images", "/no/such/images"], "--images /no/such/images: not a directory"),
        (vec!["--data", file, "--images", imgs, "--train", "/no/such.json"], "--train /no/such.json: no such file"),
        (vec!["--data", file, "--images", imgs, "--split", "dev", "--train", file], "no development slice"),
    ];
    for (args, needle) in cases {
        let mut a = args.clone();
        a.extend(["--n", "1"]);
        let err = bench_json(&a)?.err().with_context(|| format!("{args:?} must fail"))?;
        assert!(one_error_line(&err).contains(needle), "{args:?}: {err}");
    }
    let _ = std::fs::remove_dir_all(&base);
    Ok(())
}

#[test]
fn knowledge_share_refuses_what_it_cannot_report() -> Result<()> {
    for (args, needle) in [
        (vec!["--methods", "ft"], "only UniKE methods mix latent knowledge in"),
        (vec!["--methods", "unike:nope"], "unknown UniKE variant"),
        (vec!["--task", "cross"], "--task takes vqa or caption"),
        (vec!["--n", "0"], "--n must be at least 1"),
    ] {
        let out = unike().arg("knowledge-share").args(&args).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(needle) && err.trim_end().lines().count() == 1, "{args:?}: {err}");
    }
    Ok(())
}
