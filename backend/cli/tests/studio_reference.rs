//! A leaderboard that starts full, and run pages: the committed `unike reproduce` results are imported once as
//! reference runs (labelled with their commit, public, deduplicated across folders, a broken folder left out), and a
//! run's cases come back with their texts, the failing cases first.

mod common;

use anyhow::{ensure, Context, Result};
use common::*;
use serde_json::{json, Value};
use unike_shared::routes;

fn result(method: &str, task: &str, reliability: f64) -> Value {
    let m = json!({"reliability": reliability, "t_generality": 50, "m_generality": 50, "t_locality": 100,
        "m_locality": 90});
    json!({"method": method, "task": task, "mode": "one-step", "k": 1, "n": 4, "convention": "v2", "metrics": m,
        "exact_match": m, "timing": {"edit_ms_median": 3, "edit_ms_p90": 4}})
}

fn folder(root: &std::path::Path, name: &str, manifest: &Value, table1: &[Value]) -> Result<()> {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("manifest.json"), manifest.to_string())?;
    std::fs::write(dir.join("table1.json"), json!({ "results": table1 }).to_string())?;
    Ok(())
}

fn board(c: &mut Client, query: &str) -> Result<Vec<Value>> {
    let b = c.get(&format!("{}{query}", routes::LEADERBOARD))?.json()?;
    Ok(b["rows"].as_array().context("rows")?.clone())
}

#[test]
fn committed_results_fill_a_fresh_leaderboard_once_labelled_with_their_commit() -> Result<()> {
    let dir = temp_dir("reference")?;
    let results = dir.join("results");
    let newer = json!({"commit": "aaaaaaa", "model": "default", "seed": 0, "date": "2026-01-02T00:00:00Z",
        "sections": ["table1"], "command": "unike reproduce --out results/newer"});
    folder(
        &results,
        "newer",
        &newer,
        &[result("ft", "vqa", 90.0), result("serac", "vqa", 99.0), result("ft", "caption", 80.0)],
    )?;
    // An older folder: its `ft` VQA row is the newer folder's configuration (left out), its `ike` row is new.
    let older = json!({"commit": "bbbbbbb", "model": "default", "seed": 0, "date": "2026-01-01T00:00:00Z",
        "sections": ["table1"], "command": "unike reproduce --out results/older"});
    folder(&results, "older", &older, &[result("ft", "vqa", 10.0), result("ike", "vqa", 70.0)])?;
    // A broken manifest and a manifest naming a missing section: both left out whole, the studio still starts.
    std::fs::create_dir_all(results.join("broken"))?;
    std::fs::write(results.join("broken/manifest.json"), "{ not json")?;
    let missing = json!({"commit": "ccccccc", "model": "default", "seed": 0, "date": "2026-01-03T00:00:00Z",
        "sections": ["table1", "gap"], "command": "x"});
    folder(&results, "missing", &missing, &[result("grace", "vqa", 60.0)])?;
    // A folder without a manifest (results made before manifests) is not imported.
    std::fs::create_dir_all(results.join("plain"))?;
    std::fs::write(results.join("plain/table1.json"), json!({"results": [result("mend", "vqa", 1.0)]}).to_string())?;

    let db = dir.join("studio.db");
    let results_arg = results.display().to_string();
    let mut server = Server::start(&db, &["--reference-results", &results_arg])?;
    let mut anon = Client::new(server.port);
    let rows = board(&mut anon, "")?;
    let mut got: Vec<(String, String, f64, String)> = rows
        .iter()
        .map(|r| {
            (
                r["result"]["method"].as_str().unwrap_or("").to_string(),
                r["result"]["task"].as_str().unwrap_or("").to_string(),
                r["result"]["metrics"]["reliability"].as_f64().unwrap_or(-1.0),
                r["reference"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    got.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let want = [
        ("ft", "caption", 80.0, "commit aaaaaaa, results/newer/table1.json"),
        ("ft", "vqa", 90.0, "commit aaaaaaa, results/newer/table1.json"),
        ("ike", "vqa", 70.0, "commit bbbbbbb, results/older/table1.json"),
        ("serac", "vqa", 99.0, "commit aaaaaaa, results/newer/table1.json"),
    ];
    let want: Vec<(String, String, f64, String)> =
        want.iter().map(|(m, t, r, s)| (m.to_string(), t.to_string(), *r, s.to_string())).collect();
    assert_eq!(got, want);
    assert_eq!(board(&mut anon, "?source=reference")?.len(), 4);
    assert_eq!(board(&mut anon, "?source=studio")?.len(), 0);
    expect_error(&anon.get(&format!("{}?source=elsewhere", routes::LEADERBOARD))?, 400, "unknown source")?;
    let csv = anon.get(&format!("{}?source=reference", routes::LEADERBOARD_CSV))?.body;
    ensure!(csv.lines().nth(1).is_some_and(|l| l.contains("\"commit ")), "{csv}");

    // A reference run is public, says where it comes from, and keeps no cases.
    let run_id =
        rows.iter().find(|r| r["result"]["method"] == "serac").context("serac")?["run_id"].as_i64().context("id")?;
    let run = anon.get(&routes::run(run_id))?.json()?;
    assert_eq!(run["status"], "finished");
    assert_eq!(run["author"], "unike reference");
    assert_eq!(run["request"]["methods"], json!(["ft", "serac"]), "one run per configuration: {run}");
    ensure!(run["note"].as_str().is_some_and(|n| n.contains("unike reproduce --out results/newer")), "{run}");
    let cases = anon.get(&routes::run_cases(run_id))?.json()?;
    assert_eq!(cases["cases"], json!([]));
    ensure!(cases["note"].as_str().is_some_and(|n| n.contains("reference run")), "{cases}");
    // The reference account cannot sign in, whatever the password.
    let r = Client::new(server.port).raw(
        "POST",
        routes::SIGN_IN,
        Some(r#"{"username":"unike reference","password":"any password"}"#),
        false,
    )?;
    expect_error(&r, 401, "wrong username or password")?;

    // Imported once: a restart on the same database adds nothing.
    server.kill();
    let server = Server::start(&db, &["--reference-results", &results_arg])?;
    assert_eq!(board(&mut Client::new(server.port), "")?.len(), 4);
    Ok(())
}

#[test]
fn the_repositorys_committed_results_are_the_reference_rows_of_a_fresh_studio() -> Result<()> {
    let dir = temp_dir("reference-repo")?;
    let results = root().join("results");
    let server = Server::start(&dir.join("studio.db"), &["--reference-results", &results.display().to_string()])?;
    let mut anon = Client::new(server.port);
    let rows = board(&mut anon, "?task=vqa&mode=one-step&source=reference")?;
    // Each committed row as it is in its folder: WISE's one-step VQA row of the all-methods run.
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(results.join("world-seed0-n100-methods/table1.json"))?)?;
    let want = file["results"]
        .as_array()
        .context("results")?
        .iter()
        .find(|r| r["method"] == "wise" && r["task"] == "vqa")
        .context("wise in table1")?;
    let wise = rows.iter().find(|r| r["result"]["method"] == "wise").context("wise on the leaderboard")?;
    assert_eq!(&wise["result"], want);
    ensure!(wise["reference"].as_str().is_some_and(|s| s.starts_with("commit ad57c7a")), "{wise}");
    // Every method of the all-methods folder has its one-step VQA row, once.
    let methods: Vec<&str> = want_methods(&file);
    for m in methods {
        let n = rows.iter().filter(|r| r["result"]["method"] == m).count();
        assert_eq!(n, 1, "{m}: {n} one-step VQA reference rows");
    }
    Ok(())
}

fn want_methods(file: &Value) -> Vec<&str> {
    let mut v: Vec<&str> =
        file["results"].as_array().map(|a| a.iter().filter_map(|r| r["method"].as_str()).collect()).unwrap_or_default();
    v.sort();
    v.dedup();
    v
}

#[test]
fn a_runs_cases_come_with_their_texts_the_failing_ones_first() -> Result<()> {
    let dir = temp_dir("run-cases")?;
    let server = Server::start(&dir.join("studio.db"), &[])?;
    let (mut alice, ws) = signed_up(server.port, "alice")?;
    let run = alice
        .post(&routes::runs(ws), &json!({"methods": ["none", "ft"], "task": "vqa", "mode": "one-step", "n": 4}))?;
    ensure!(run.status == 200, "{}", run.body);
    let id = run.json()?["id"].as_i64().context("id")?;
    let run = wait_run(&mut alice, id, &["finished", "failed"])?;
    assert_eq!(run["status"], "finished", "{run}");
    // Public once finished on the world: read without signing in.
    let mut anon = Client::new(server.port);
    let none = anon.get(&format!("{}?method=none", routes::run_cases(id)))?.json()?;
    let cases = none["cases"].as_array().context("cases")?;
    assert_eq!(cases.len(), 4, "{none}");
    // The unedited model does not know the counterfactual targets: every case fails reliability, and keeps locality.
    for c in cases {
        assert_eq!(c["method"], "none");
        ensure!(c["failed"].as_array().is_some_and(|f| f.iter().any(|p| p == "reliability")), "{c}");
        ensure!(!c["failed"].as_array().is_some_and(|f| f.iter().any(|p| p == "t_locality")), "{c}");
        ensure!(c["case"]["question"].as_str().is_some_and(|q| !q.is_empty()), "{c}");
        ensure!(c["case"]["target"].as_str().is_some_and(|q| !q.is_empty()), "{c}");
        // Its answer as reliability reads it: the same before and after no edit, and not the target it failed.
        ensure!(c["answer_before"].is_string() && c["answer_after"] == c["answer_before"], "{c}");
        ensure!(c["answer_after"] != c["case"]["target"], "{c}");
    }
    // The same four cases, in the run's order, for every method; failing ones first.
    let ft = anon.get(&routes::run_cases(id))?.json()?;
    let ft_cases = ft["cases"].as_array().context("cases")?;
    assert_eq!(ft_cases.len(), 4);
    assert_eq!(ft_cases[0]["method"], "none", "the run's first method by default");
    let ft = anon.get(&format!("{}?method=ft", routes::run_cases(id)))?.json()?;
    let ft_cases = ft["cases"].as_array().context("cases")?;
    let failed: Vec<usize> = ft_cases.iter().map(|c| c["failed"].as_array().map_or(0, Vec::len)).collect();
    ensure!(failed.windows(2).all(|w| w[0] >= w[1]), "failing cases first: {failed:?}");
    let mut idx: Vec<i64> = ft_cases.iter().filter_map(|c| c["index"].as_i64()).collect();
    idx.sort();
    assert_eq!(idx, [0, 1, 2, 3]);
    for c in ft_cases {
        let i = c["index"].as_u64().context("index")? as usize;
        let n = cases.iter().find(|x| x["index"] == i).context("same case")?;
        assert_eq!(c["case"], n["case"], "case {i} is the same edit for every method");
        // The unedited answer is the method's too; a case whose reliability passed reads the target after the edit.
        assert_eq!(c["answer_before"], n["answer_before"], "case {i}");
        if c["reliability"] == 100.0 {
            let norm = |v: &serde_json::Value| v.as_str().unwrap_or("").trim().to_lowercase();
            ensure!(norm(&c["answer_after"]) == norm(&c["case"]["target"]), "{c}");
        }
    }
    expect_error(&anon.get(&format!("{}?method=rogue", routes::run_cases(id)))?, 404, "method \"rogue\"")?;
    expect_error(&anon.get(&routes::run_cases(9999))?, 404, "run 9999")?;
    Ok(())
}
