//! The knowledge-space explorer's API (issue 20 §1) against a real server on the shipped model with a small knowledge
//! memory of its own: the memory in three spaces, a workspace's UniKE edit placed among it, a focus's retrieval as
//! latent editing scores it, who may see what, and bad input.

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use unike_shared::routes;

mod common;
use common::*;

fn explorer(c: &mut Client, query: &str) -> Result<Value> {
    let r = c.get(&format!("{}?{query}", routes::EXPLORER))?;
    ensure!(r.status == 200, "{query}: {} {}", r.status, r.body);
    r.json()
}

/// Index of the entry called `id`.
fn entry(v: &Value, id: &str) -> Option<usize> {
    v["entries"].as_array()?.iter().position(|e| e["id"] == id)
}

#[test]
fn explorer_draws_the_memory_and_a_workspaces_unike_edit_with_its_retrieval() -> Result<()> {
    let dir = temp_dir("explorer")?;
    let model = model_with_small_memory(&dir)?;
    let server = Server::start_model(&dir.join("x.db"), &model, &[])?;
    let mut anon = Client::new(server.port);

    // The memory alone, for anyone: three spaces, every sampled triplet with both states, texts of the memory.
    let v = explorer(&mut anon, "projection=pca")?;
    let sampled = v["sampled"].as_u64().context("sampled")? as usize;
    ensure!(v["memory_size"] == 300 && (100..=300).contains(&sampled), "{} of {}", sampled, v["memory_size"]);
    ensure!(v["layers"].as_array().is_some_and(|l| l.contains(&v["layer"])), "{}", v["layers"]);
    let spaces: Vec<&str> =
        v["spaces"].as_array().context("spaces")?.iter().filter_map(|s| s["space"].as_str()).collect();
    ensure!(spaces == ["raw", "semantic", "truthful"], "{spaces:?}");
    for s in v["spaces"].as_array().context("spaces")? {
        let points = s["points"].as_array().context("points")?;
        ensure!(points.len() == 2 * sampled, "{} points for {sampled} triplets", points.len());
        let pos = points.iter().filter(|p| p["kind"] == "positive").count();
        ensure!(pos == sampled, "positives {pos}");
        ensure!(points.iter().all(|p| p["x"].as_f64().is_some_and(|x| x.abs() <= 1.0 + 1e-6)), "fitted points span ±1");
        let a = s["kind_agreement"].as_f64().context("agreement")?;
        ensure!((0.0..=1.0).contains(&a), "{a}");
    }
    // The spaces are the encoders' own: the semantic and truthfulness pictures differ.
    ensure!(
        v["spaces"][1]["points"] != v["spaces"][2]["points"],
        "the semantic and truthfulness spaces are one picture"
    );
    let e0 = &v["entries"][0];
    ensure!(e0["id"].as_str().is_some_and(|i| i.starts_with("m:")) && e0["sampled"] == true, "{e0}");
    ensure!(!e0["question"].as_str().unwrap_or("").is_empty() && !e0["negative"].as_str().unwrap_or("").is_empty());
    // t-SNE (the default) draws the same triplets; the same request gives the same picture (cached, and seeded).
    let t = explorer(&mut anon, "")?;
    ensure!(t["projection"] == "tsne" && t["entries"] == v["entries"], "t-SNE samples the same triplets");
    ensure!(explorer(&mut anon, "")?["spaces"] == t["spaces"], "the same request, another picture");

    // A focus on a memory question retrieves its K best entries, best first, without itself.
    let f = explorer(&mut anon, "projection=pca&focus=m:0&k=12")?;
    let focus = &f["focus"];
    let links = focus["links"].as_array().context("links")?;
    ensure!((11..=12).contains(&links.len()), "{} links for K = 12", links.len());
    let scores: Vec<f64> = links.iter().filter_map(|l| l["score"].as_f64()).collect();
    ensure!(scores.windows(2).all(|w| w[0] >= w[1] - 1e-6), "links best first: {scores:?}");
    ensure!(f["entries"][focus["entry"].as_u64().context("entry")? as usize]["id"] == "m:0", "{focus}");
    // Retrieved entries outside the sample are drawn too, placed, with both states in every space.
    let n = f["entries"].as_array().context("entries")?.len();
    let placed = f["entries"].as_array().context("entries")?.iter().filter(|e| e["sampled"] == false).count();
    ensure!(n == sampled + placed, "{n} entries, {sampled} sampled, {placed} placed");
    for s in f["spaces"].as_array().context("spaces")? {
        ensure!(s["points"].as_array().map_or(0, Vec::len) == 2 * n, "every entry has both states");
    }

    // Bad input is a 400 that says why; a workspace needs its viewers.
    expect_error(&anon.get(&format!("{}?layer=99", routes::EXPLORER))?, 400, "not in the memory")?;
    expect_error(&anon.get(&format!("{}?projection=umap", routes::EXPLORER))?, 400, "tsne or pca")?;
    expect_error(&anon.get(&format!("{}?focus=m:300", routes::EXPLORER))?, 400, "300 entries")?;
    expect_error(&anon.get(&format!("{}?focus=q:1", routes::EXPLORER))?, 400, "neither")?;
    expect_error(&anon.get(&format!("{}?k=65", routes::EXPLORER))?, 400, "k must be")?;
    expect_error(&anon.get(&format!("{}?focus=e:1", routes::EXPLORER))?, 400, "needs its workspace")?;
    expect_error(&anon.get(&format!("{}?workspace=1", routes::EXPLORER))?, 401, "sign in")?;

    // A workspace's UniKE edit is drawn among the memory (its positive state in every space); an edit without latent
    // knowledge is listed as having no state.
    let (mut alice, ws) = signed_up(server.port, "alice")?;
    let gallery = alice.get(routes::GALLERY)?.json()?;
    let r = alice.post(&routes::edits(ws), &gallery_edit(&gallery, 0, "unike"))?;
    ensure!(r.status == 200, "{}", r.body);
    let unike_id = r.json()?["id"].as_i64().context("id")?;
    let r = alice.post(&routes::edits(ws), &gallery_edit(&gallery, 1, "ft"))?;
    ensure!(r.status == 200, "{}", r.body);
    let ft_id = r.json()?["id"].as_i64().context("id")?;
    let w = explorer(&mut alice, &format!("projection=pca&workspace={ws}&focus=e:{unike_id}&k=8"))?;
    let at = entry(&w, &format!("e:{unike_id}")).context("the edit is not drawn")?;
    ensure!(w["entries"][at]["level"] == "edit" && w["entries"][at]["positive"] == gallery[0]["target"]);
    for s in w["spaces"].as_array().context("spaces")? {
        let mine: Vec<&Value> = s["points"].as_array().context("points")?.iter().filter(|p| p["entry"] == at).collect();
        ensure!(mine.len() == 1 && mine[0]["kind"] == "positive", "the edit's state in {}: {mine:?}", s["space"]);
    }
    ensure!(w["edits_without_states"] == serde_json::json!([ft_id]), "{}", w["edits_without_states"]);
    ensure!(w["focus"]["entry"] == at && w["focus"]["links"].as_array().map_or(0, Vec::len) >= 7, "{}", w["focus"]);
    // Another account sees no one else's workspace.
    let (mut bob, _) = signed_up(server.port, "bob")?;
    let r = bob.get(&format!("{}?workspace={ws}", routes::EXPLORER))?;
    ensure!(r.status == 403 || r.status == 404, "bob reads alice's edits: {}", r.status);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn explorer_without_a_built_memory_says_so() -> Result<()> {
    let dir = temp_dir("explorer-unbuilt")?;
    let model = shipped_model_files(&dir)?;
    let server = Server::start_model(&dir.join("x.db"), &model, &[])?;
    let mut anon = Client::new(server.port);
    expect_error(&anon.get(routes::EXPLORER)?, 503, "not built yet")?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
