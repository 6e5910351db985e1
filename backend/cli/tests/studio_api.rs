//! The studio's JSON API against a real server process (`unike serve` on the shipped default model) and a real SQLite
//! file: accounts, CSRF, roles, edits with probes, undo, live events, MMEdit import/export, benchmark runs (finished,
//! cancelled, resumed after the server is killed), the leaderboard, demo sandboxes, and clear 4xx errors for bad
//! input that leave nothing half-written.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use base64::Engine;
use serde_json::{json, Value};
use unike_server::store::{parse_epoch, stamp};
use unike_shared::routes;

mod common;
use common::*;

#[test]
fn accounts_roles_edits_runs_and_leaderboard_over_a_real_database() -> Result<()> {
    let dir = temp_dir("api")?;
    let db = dir.join("studio.db");
    let mut server = Server::start(&db, &[])?;
    let port = server.port;

    // Accounts.
    let mut anon = Client::new(port);
    let s = anon.get(routes::SESSION)?.json()?;
    assert_eq!(s["user"], Value::Null);
    assert_eq!(s["demo"], false);
    let mut alice = Client::new(port);
    assert_eq!(alice.auth(routes::SIGN_UP, "alice")?.status, 200);
    expect_error(&Client::new(port).auth(routes::SIGN_UP, "alice")?, 409, "taken")?;
    expect_error(&Client::new(port).auth(routes::SIGN_UP, "Not Valid!")?, 400, "username")?;
    // NUL in any text is refused before it reaches the database (PostgreSQL's text cannot hold it).
    let r = Client::new(port).raw("POST", routes::SIGN_IN, Some(r#"{"username":"a\u0000b","password":"x"}"#), false)?;
    expect_error(&r, 400, "NUL")?;
    expect_error(&Client::new(port).get(&format!("{}?model=a%00b", routes::LEADERBOARD))?, 400, "NUL")?;
    let r = Client::new(port).raw("POST", routes::SIGN_UP, Some(r#"{"username":"eve","password":"short"}"#), false)?;
    expect_error(&r, 400, "password")?;
    let r = Client::new(port).raw(
        "POST",
        routes::SIGN_IN,
        Some(r#"{"username":"alice","password":"wrong one"}"#),
        false,
    )?;
    expect_error(&r, 401, "wrong username or password")?;
    let mut alice2 = Client::new(port);
    assert_eq!(alice2.auth(routes::SIGN_IN, "alice")?.status, 200);
    expect_error(&anon.get(routes::WORKSPACES)?, 401, "sign in")?;

    let ws = alice.get(routes::WORKSPACES)?.json()?;
    let ws_id = ws[0]["id"].as_i64().context("workspace id")?;
    assert_eq!(ws[0]["role"], "owner");

    // The gallery, and an answer before any edit.
    let gallery = alice.get(routes::GALLERY)?.json()?;
    let item = &gallery[0];
    let (gid, question, target) = (
        item["id"].as_str().context("id")?,
        item["question"].as_str().context("q")?,
        item["target"].as_str().context("t")?,
    );
    let img = alice.get(&routes::image(gid))?;
    assert_eq!(img.status, 200);
    let ask = json!({"image": {"kind": "gallery", "id": gid}, "question": question});
    let mut no_csrf = alice.clone();
    no_csrf.csrf = None;
    expect_error(&no_csrf.post(&routes::answer(ws_id), &ask)?, 403, "x-csrf-token")?;
    let before = alice.post(&routes::answer(ws_id), &ask)?.json()?;
    let before = before["answer"].as_str().context("answer")?.to_string();
    assert_ne!(before, target, "the gallery's target is a counterfactual");

    // Bad input: 4xx with a message, nothing written.
    let edit = |q: &str, t: &str, m: &str| json!({"image": {"kind": "gallery", "id": gid}, "question": q, "target": t, "method": m});
    expect_error(&alice.post(&routes::edits(ws_id), &edit("", target, "serac"))?, 400, "question is empty")?;
    expect_error(&alice.post(&routes::edits(ws_id), &edit(question, " ", "serac"))?, 400, "target is empty")?;
    expect_error(&alice.post(&routes::edits(ws_id), &edit(&"why ".repeat(100), target, "serac"))?, 400, "longer than")?;
    expect_error(&alice.post(&routes::edits(ws_id), &edit(question, target, "rogue"))?, 400, "unknown method")?;
    // UniKE variants have one spelling each and bounded values, so a visitor cannot make the server build (and keep)
    // a method per made-up name.
    let e = edit(question, target, "unike:alpha=0.5000001");
    expect_error(&alice.post(&routes::edits(ws_id), &e)?, 400, "at most two decimals")?;
    expect_error(&alice.post(&routes::edits(ws_id), &edit(question, target, "unike:k=100000"))?, 400, "k is 1 to")?;
    let twice =
        json!({"methods": ["unike:k=3/alpha=0.5", "unike:alpha=0.50,k=3"], "task": "vqa", "mode": "one-step", "n": 5});
    expect_error(&alice.post(&routes::runs(ws_id), &twice)?, 400, "are the same method (unike:alpha=0.5/k=3)")?;
    expect_error(&alice.post(&routes::edits(ws_id), &edit(question, target, "unike:nope"))?, 400, "variant")?;
    let bad_img = |b: &str| json!({"image": {"kind": "upload", "base64": b}, "question": question, "target": target, "method": "serac"});
    expect_error(&alice.post(&routes::edits(ws_id), &bad_img("***"))?, 400, "base64")?;
    expect_error(&alice.post(&routes::edits(ws_id), &bad_img("aGVsbG8gd29ybGQ="))?, 400, "not a PNG or JPEG")?;
    let gid_bad =
        json!({"image": {"kind": "gallery", "id": "nope"}, "question": question, "target": target, "method": "serac"});
    expect_error(&alice.post(&routes::edits(ws_id), &gid_bad)?, 400, "no gallery image")?;
    let r = alice.raw("POST", &routes::edits(ws_id), Some("{\"question\": "), true)?;
    ensure!(r.status == 400 && r.json()?["error"].is_string(), "{}", r.body);
    expect_error(&alice.post(&routes::edits(9999), &edit(question, target, "serac"))?, 404, "workspace 9999")?;
    expect_error(&alice.raw("DELETE", &routes::edit(ws_id, 77), None, true)?, 404, "edit 77")?;
    expect_error(&alice.get("/api/nothing-here")?, 404, "no such API route")?;
    // What axum itself rejects (a path id that is no number, a malformed query, a method the route lacks) is JSON too.
    expect_error(&alice.get("/api/workspaces/abc")?, 400, "parse")?;
    expect_error(&alice.get("/api/runs/99999999999999999999")?, 400, "parse")?;
    expect_error(&alice.get(routes::EVENTS)?, 400, "workspace")?;
    expect_error(&alice.get(&format!("{}?workspace=x", routes::EVENTS))?, 400, "workspace")?;
    expect_error(&alice.raw("PUT", &routes::workspace(ws_id), Some("{}"), true)?, 405, "method not allowed")?;
    // An image whose header claims more than 4096 pixels a side is refused before it is decoded.
    let mut png = Vec::new();
    image::RgbImage::new(5000, 1).write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)?;
    let wide = base64::engine::general_purpose::STANDARD.encode(&png);
    expect_error(&alice.post(&routes::edits(ws_id), &bad_img(&wide))?, 400, "sides must be 1 to 4096")?;
    assert_eq!(alice.get(&routes::edits(ws_id))?.json()?["edits"].as_array().map(Vec::len), Some(0));
    assert_eq!(alice.get(&routes::cases(ws_id))?.json()?.as_array().map(Vec::len), Some(0));

    // Live events: a teammate's page sees the edit arrive.
    let events = sse_until(port, alice2.cookie.as_deref().context("cookie")?, ws_id, "edit_applied");
    std::thread::sleep(Duration::from_millis(300));

    // Apply an edit: the post-edit answer is the target; probes are reported.
    let applied = alice.post(&routes::edits(ws_id), &edit(question, target, "serac"))?;
    ensure!(applied.status == 200, "{}", applied.body);
    let applied = applied.json()?;
    assert_eq!(applied["after"], target);
    assert_eq!(applied["before"], before.as_str());
    let probes = applied["probes"].as_array().context("probes")?;
    let kinds: Vec<&str> = probes.iter().filter_map(|p| p["kind"].as_str()).collect();
    for k in ["reliability", "t_generality", "m_generality", "t_locality", "m_locality"] {
        assert!(kinds.contains(&k), "{k} missing from {kinds:?}");
    }
    assert_eq!(probes[0]["pass"], true);
    let seen = events.join().map_err(|_| anyhow::anyhow!("sse thread panicked"))??;
    assert!(seen.contains("text/event-stream") && seen.contains(target), "{seen}");
    let after = alice.post(&routes::answer(ws_id), &ask)?.json()?;
    assert_eq!(after["answer"], target);
    assert_eq!(after["edits"], 1);
    let first_edit = applied["id"].as_i64().context("edit id")?;

    // The model's description names no server path.
    let source = Client::new(port).get(routes::MODEL)?.json()?["source"].as_str().unwrap_or("/").to_string();
    assert!(!Path::new(&source).is_absolute() && !source.contains(".."), "{source}");

    // Roles: a stranger sees nothing; a viewer reads but cannot edit; an editor can.
    let mut bob = Client::new(port);
    assert_eq!(bob.auth(routes::SIGN_UP, "bob")?.status, 200);
    expect_error(&bob.get(&routes::edits(ws_id))?, 404, "workspace")?;
    let invite = |role: &str| json!({"username": "bob", "role": role});
    expect_error(&bob.post(&routes::invitations(ws_id), &invite("owner"))?, 404, "workspace")?;
    expect_error(
        &alice.post(&routes::invitations(ws_id), &json!({"username": "nobody", "role": "editor"}))?,
        404,
        "user",
    )?;
    expect_error(
        &alice.post(&routes::invitations(ws_id), &json!({"username": "alice", "role": "editor"}))?,
        409,
        "already",
    )?;
    // An invitation is pending until bob accepts it: before that he sees nothing of the workspace.
    let inv = alice.post(&routes::invitations(ws_id), &invite("viewer"))?;
    ensure!(inv.status == 200, "{}", inv.body);
    let inv_id = inv.json()?["id"].as_i64().context("invitation id")?;
    expect_error(&bob.get(&routes::edits(ws_id))?, 404, "workspace")?;
    let mine = bob.get(routes::MY_INVITATIONS)?.json()?;
    assert_eq!(mine[0]["invited_by"], "alice");
    assert_eq!(mine[0]["role"], "viewer");
    expect_error(&alice.post(&routes::invitation_accept(inv_id), &json!({}))?, 404, "invitation")?;
    let joined = bob.post(&routes::invitation_accept(inv_id), &json!({}))?;
    ensure!(joined.status == 200, "{}", joined.body);
    assert_eq!(joined.json()?["role"], "viewer");
    assert_eq!(bob.get(routes::MY_INVITATIONS)?.json()?.as_array().map(Vec::len), Some(0));
    expect_error(&bob.post(&routes::invitation_accept(inv_id), &json!({}))?, 404, "invitation")?;
    expect_error(&alice.post(&routes::invitations(ws_id), &invite("editor"))?, 409, "already a member")?;
    assert_eq!(bob.get(&routes::edits(ws_id))?.json()?["edits"].as_array().map(Vec::len), Some(1));
    expect_error(&bob.post(&routes::edits(ws_id), &edit(question, "lebel", "serac"))?, 403, "needs editor")?;
    expect_error(&bob.post(&routes::invitations(ws_id), &invite("owner"))?, 403, "needs owner")?;
    let bob_id = bob.get(routes::SESSION)?.json()?["user"]["id"].as_i64().context("bob's id")?;
    let alice_id = alice.get(routes::SESSION)?.json()?["user"]["id"].as_i64().context("alice's id")?;
    expect_error(&bob.post(&routes::member(ws_id, bob_id), &json!({"role": "owner"}))?, 403, "needs owner")?;
    expect_error(
        &alice.post(&routes::member(ws_id, alice_id), &json!({"role": "viewer"}))?,
        409,
        "at least one owner",
    )?;
    let promoted = alice.post(&routes::member(ws_id, bob_id), &json!({"role": "editor"}))?;
    ensure!(promoted.status == 200, "{}", promoted.body);
    assert_eq!(promoted.json()?["role"], "editor");
    // Another fact (the next cases can be the same fact asked another way, which alice's SERAC edit already covers:
    // its counterfactual model would answer them).
    let other = gallery
        .as_array()
        .and_then(|g| g.iter().find(|g| g["task"] == "vqa" && g["pre_edit"] != item["pre_edit"]))
        .context("a gallery item about another fact")?;
    let e2 = json!({"image": {"kind": "gallery", "id": other["id"]}, "question": other["question"],
        "target": other["target"], "method": "ft", "seed": 3});
    let r = bob.post(&routes::edits(ws_id), &e2)?;
    ensure!(r.status == 200, "{}", r.body);
    assert_eq!(r.json()?["author"], "bob");
    assert_eq!(r.json()?["after"], other["target"], "{}", r.body);
    let q2 = json!({"image": {"kind": "gallery", "id": other["id"]}, "question": other["question"]});
    assert_eq!(alice.post(&routes::answer(ws_id), &q2)?.json()?["answer"], other["target"]);

    // Undo the first edit from under the second: the first question answers as before, the second edit stays.
    let stack = alice.raw("DELETE", &routes::edit(ws_id, first_edit), None, true)?.json()?;
    let ids: Vec<i64> = stack["edits"].as_array().context("edits")?.iter().filter_map(|e| e["id"].as_i64()).collect();
    assert_eq!(ids.len(), 1);
    assert_ne!(ids[0], first_edit);
    assert_eq!(alice.post(&routes::answer(ws_id), &ask)?.json()?["answer"], before.as_str());
    let q2_after_undo = alice.post(&routes::answer(ws_id), &q2)?.json()?["answer"].clone();

    // Cases: exported as MMEdit, imported into another workspace, all or nothing.
    let cases = alice.get(&routes::cases(ws_id))?.json()?;
    assert_eq!(cases.as_array().map(Vec::len), Some(2));
    assert_eq!(cases[0]["src"], question);
    assert_eq!(cases[0]["alt"], target);
    let bob_ws = bob.get(routes::WORKSPACES)?.json()?;
    let bob_own = bob_ws.as_array().context("ws")?.iter().find(|w| w["role"] == "owner").context("bob's own")?["id"]
        .as_i64()
        .context("id")?;
    let mut bad_cases = cases.clone();
    bad_cases[1]["alt"] = json!("");
    expect_error(&bob.post(&routes::cases(bob_own), &json!({ "cases": bad_cases }))?, 400, "case 1")?;
    let mut long_cases = cases.clone();
    long_cases[0]["rephrase"] = json!("why ".repeat(200));
    expect_error(&bob.post(&routes::cases(bob_own), &json!({ "cases": long_cases }))?, 400, "rephrase is longer")?;
    assert_eq!(bob.get(&routes::cases(bob_own))?.json()?.as_array().map(Vec::len), Some(0));
    assert_eq!(bob.post(&routes::cases(bob_own), &json!({ "cases": cases }))?.json()?["imported"], 2);

    // Benchmark runs: a run finishes with results; the public leaderboard lists them (JSON and CSV, filtered).
    let bad_run = |m: Value| alice.clone().post(&routes::runs(ws_id), &m);
    expect_error(
        &bad_run(json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 0}))?,
        400,
        "n must be",
    )?;
    expect_error(&bad_run(json!({"methods": [], "task": "vqa", "mode": "one-step", "n": 4}))?, 400, "methods")?;
    expect_error(&bad_run(json!({"methods": ["serac"], "task": "nope", "mode": "one-step", "n": 4}))?, 400, "task")?;
    // `none`, the unedited model, is a method like the others.
    let run = alice.post(
        &routes::runs(ws_id),
        &json!({"methods": ["serac", "ike", "none"], "task": "vqa", "mode": "one-step", "n": 6}),
    )?;
    ensure!(run.status == 200, "{}", run.body);
    let run_id = run.json()?["id"].as_i64().context("run id")?;
    let run = wait_run(&mut alice, run_id, &["finished", "failed"])?;
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["results"].as_array().map(Vec::len), Some(3));
    assert_eq!(run["done"], run["total"]);
    let board = anon.get(routes::LEADERBOARD)?.json()?;
    let rows = board["rows"].as_array().context("rows")?;
    assert_eq!(rows.len(), 3);
    assert!(rows[0]["score"].as_f64() >= rows[1]["score"].as_f64());
    // Every row says its metric convention; new runs are v2 (answer tokens, M-Locality top-10).
    for r in rows {
        assert_eq!((r["convention"].as_str(), r["result"]["convention"].as_str()), (Some("v2"), Some("v2")), "{r}");
        assert!(r["convention_label"].as_str().is_some_and(|l| l.contains("top-10")), "{r}");
    }
    let none = anon.get(&format!("{}?method=none", routes::LEADERBOARD))?.json()?;
    let m = &none["rows"][0]["result"]["metrics"];
    assert_eq!((m["t_locality"].as_f64(), m["m_locality"].as_f64()), (Some(100.0), Some(100.0)), "{none}");
    assert_eq!(m["portability"], m["portability_base"], "{none}");
    assert_eq!(
        anon.get(&format!("{}?convention=v1", routes::LEADERBOARD))?.json()?["rows"].as_array().map(Vec::len),
        Some(0)
    );
    let only = anon.get(&format!("{}?method=ike", routes::LEADERBOARD))?.json()?;
    assert_eq!(only["rows"].as_array().map(Vec::len), Some(1));
    assert_eq!(only["rows"][0]["result"]["method"], "ike");
    let csv = anon.get(routes::LEADERBOARD_CSV)?;
    assert_eq!(csv.status, 200);
    assert!(csv.body.starts_with("run_id,model,method,task,mode,k,n,seed,convention"), "{}", csv.body);
    assert!(csv.body.lines().skip(1).all(|l| l.contains(",v2,")), "{}", csv.body);
    assert_eq!(csv.body.lines().count(), 4);

    // A run on the workspace's own cases: its two Playground cases (probes completed from their gallery cases);
    // private to the workspace, so not on the public leaderboard.
    let on_ws =
        |task: &str| json!({"methods": ["serac"], "task": task, "mode": "one-step", "n": 10, "data": "workspace"});
    expect_error(&alice.post(&routes::runs(ws_id), &on_ws("cross"))?, 400, "cross-task")?;
    let wr = alice.post(&routes::runs(ws_id), &on_ws("vqa"))?;
    ensure!(wr.status == 200, "{}", wr.body);
    let wr = wr.json()?;
    assert_eq!(wr["request"]["n"], 2, "{wr}");
    assert_eq!(wr["note"], Value::Null, "{wr}");
    let wr_id = wr["id"].as_i64().context("id")?;
    let wr = wait_run(&mut alice, wr_id, &["finished", "failed"])?;
    assert_eq!(wr["status"], "finished", "{wr}");
    assert_eq!(wr["results"][0]["n"], 2, "{wr}");
    expect_error(&anon.get(&routes::run(wr_id))?, 401, "sign in")?;
    assert_eq!(anon.get(routes::LEADERBOARD)?.json()?["rows"].as_array().map(Vec::len), Some(3));
    // Bob's workspace: the two imported cases, and one whose image is not in this studio (left out, and said so).
    let foreign = json!({"src": "What is this?", "alt": "a cat", "image": "val2014/a.jpg", "rephrase": "What's this?",
        "image_rephrase": "val2014/b.jpg", "loc": "q", "loc_ans": "a", "m_loc": "c.jpg", "m_loc_q": "mq", "m_loc_a": "ma"});
    // And one on a gallery image with a question of its own and no rephrasing: the gallery cannot complete it.
    let own_question = json!({"src": "Is this a drawing?", "alt": "yes", "image": routes::image(gid)});
    let imported = bob.post(&routes::cases(bob_own), &json!({ "cases": [foreign, own_question] }))?;
    assert_eq!(imported.json()?["imported"], 2, "{}", imported.body);
    // A folder left where the next run's data goes (a run id SQLite gives out again) is replaced, not a 500.
    let stale = dir.join("studio.db.d").join("runs").join((wr_id + 1).to_string());
    std::fs::create_dir_all(&stale)?;
    std::fs::write(stale.join("left-over"), "x")?;
    let br = bob.post(&routes::runs(bob_own), &on_ws("vqa"))?;
    ensure!(br.status == 200, "{}", br.body);
    let br = br.json()?;
    assert_eq!(br["id"].as_i64(), Some(wr_id + 1), "{br}");
    assert!(!stale.join("left-over").exists());
    assert_eq!(br["request"]["n"], 2, "{br}");
    let note = br["note"].as_str().context("note")?;
    assert!(note.contains("2 of the workspace's cases") && note.contains("val2014/a.jpg"), "{note}");
    assert!(note.contains("no rephrased question") && !note.contains("no other image"), "{note}");
    let br = wait_run(&mut bob, br["id"].as_i64().context("id")?, &["finished", "failed"])?;
    assert_eq!(br["status"], "finished", "{br}");
    let (mut empty, dave_ws) = signed_up(port, "dave")?;
    expect_error(&empty.post(&routes::runs(dave_ws), &on_ws("vqa"))?, 400, "no cases yet")?;

    // Cancel a long run.
    let long = alice
        .post(&routes::runs(ws_id), &json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 400}))?;
    let long_id = long.json()?["id"].as_i64().context("id")?;
    let r = alice.post(&routes::run_cancel(long_id), &json!({}))?;
    ensure!(r.status == 200, "{}", r.body);
    let cancelled = wait_run(&mut alice, long_id, &["cancelled", "finished", "failed"])?;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    expect_error(&alice.post(&routes::run_cancel(long_id), &json!({}))?, 409, "already cancelled")?;
    // A stranger learns nothing from cancelling it: the same 404 as reading it, without the workspace's id.
    for r in [empty.get(&routes::run(long_id))?, empty.post(&routes::run_cancel(long_id), &json!({}))?] {
        expect_error(&r, 404, &format!("run {long_id}"))?;
        assert!(!r.body.contains("workspace"), "{}", r.body);
    }
    // One author's unfinished runs are bounded (the run worker's queue cannot grow without end); cancelling frees room.
    let long_run = json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 400});
    let mut queued = Vec::new();
    for _ in 0..4 {
        let r = alice.post(&routes::runs(ws_id), &long_run)?;
        ensure!(r.status == 200, "{}", r.body);
        queued.push(r.json()?["id"].as_i64().context("id")?);
    }
    expect_error(&alice.post(&routes::runs(ws_id), &long_run)?, 429, "unfinished runs")?;
    for id in queued.iter().rev() {
        let r = alice.post(&routes::run_cancel(*id), &json!({}))?;
        ensure!(r.status == 200, "{}", r.body);
    }
    for id in &queued {
        assert_eq!(wait_run(&mut alice, *id, &["cancelled", "finished", "failed"])?["status"], "cancelled");
    }

    // A run the server is killed in the middle of resumes on restart, keeping what it had stored.
    let resumed = alice.post(
        &routes::runs(ws_id),
        &json!({"methods": ["ike", "serac"], "task": "vqa", "mode": "one-step", "n": 40}),
    )?;
    let resumed_id = resumed.json()?["id"].as_i64().context("id")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while alice.get(&routes::run(resumed_id))?.json()?["status"] != "running" {
        ensure!(Instant::now() < deadline, "run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.kill();
    let server2 = Server::start(&db, &[])?;
    alice.port = server2.port;
    anon.port = server2.port;
    bob.port = server2.port;
    let done = wait_run(&mut alice, resumed_id, &["finished", "failed", "cancelled"])?;
    assert_eq!(done["status"], "finished", "{done}");
    assert_eq!(done["results"].as_array().map(Vec::len), Some(2));

    // The activity feed and the persisted stack survive the restart.
    let feed = alice.get(&routes::audit(ws_id))?.json()?;
    let actions: Vec<&str> = feed.as_array().context("feed")?.iter().filter_map(|e| e["action"].as_str()).collect();
    for a in [
        "workspace.create",
        "member.invite",
        "member.join",
        "member.role",
        "edit.apply",
        "edit.undo",
        "run.start",
        "run.cancel",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
    assert_eq!(alice.get(&routes::edits(ws_id))?.json()?["edits"].as_array().map(Vec::len), Some(1));
    // The stack reloaded from its saved patches answers as it did before the restart.
    assert_eq!(alice.post(&routes::answer(ws_id), &q2)?.json()?["answer"], q2_after_undo);

    // Members: a declined invitation adds nobody; a revoked one cannot be accepted; the last owner cannot leave;
    // an owner removes a member, who then sees nothing of the workspace.
    let mut carol = Client::new(alice.port);
    assert_eq!(carol.auth(routes::SIGN_UP, "carol")?.status, 200);
    let to_carol = json!({"username": "carol", "role": "editor"});
    let inv = alice.post(&routes::invitations(ws_id), &to_carol)?.json()?["id"].as_i64().context("id")?;
    assert_eq!(carol.post(&routes::invitation_decline(inv), &json!({}))?.json()?.as_array().map(Vec::len), Some(0));
    let inv = alice.post(&routes::invitations(ws_id), &to_carol)?.json()?["id"].as_i64().context("id")?;
    assert_eq!(alice.get(&routes::invitations(ws_id))?.json()?.as_array().map(Vec::len), Some(1));
    let left = alice.raw("DELETE", &routes::invitation(ws_id, inv), None, true)?.json()?;
    assert_eq!(left.as_array().map(Vec::len), Some(0));
    expect_error(&carol.post(&routes::invitation_accept(inv), &json!({}))?, 404, "invitation")?;
    expect_error(&carol.get(&routes::edits(ws_id))?, 404, "workspace")?;
    expect_error(&alice.raw("DELETE", &routes::member(ws_id, alice_id), None, true)?, 409, "at least one owner")?;
    expect_error(&carol.raw("DELETE", &routes::member(ws_id, bob_id), None, true)?, 404, "workspace")?;
    // Bob's open page stops receiving the workspace's events once he is removed.
    let bob_events = sse_until(bob.port, bob.cookie.as_deref().context("cookie")?, ws_id, "edit_undone");
    std::thread::sleep(Duration::from_millis(300));
    let members = alice.raw("DELETE", &routes::member(ws_id, bob_id), None, true)?;
    ensure!(members.status == 200, "{}", members.body);
    assert_eq!(members.json()?.as_array().map(Vec::len), Some(1));
    expect_error(&bob.get(&routes::edits(ws_id))?, 404, "workspace")?;
    let last = alice.get(&routes::edits(ws_id))?.json()?["edits"][0]["id"].as_i64().context("edit id")?;
    let r = alice.raw("DELETE", &routes::edit(ws_id, last), None, true)?;
    ensure!(r.status == 200, "{}", r.body);
    let seen = bob_events.join().map_err(|_| anyhow::anyhow!("sse thread panicked"))??;
    assert!(!seen.contains("edit_undone") && seen.ends_with("0\r\n\r\n"), "bob's stream: {seen}");

    // The OpenAPI document lists every route.
    let doc = anon.get(routes::OPENAPI)?.json()?;
    assert_eq!(doc["openapi"], "3.1.0");
    for r in routes::ALL {
        assert!(doc["paths"][r.path][r.method].is_object(), "{} {} missing", r.method, r.path);
        for name in r.request.into_iter().chain([r.response]) {
            let name = name.trim_end_matches("[]");
            if !["binary", "text", "object"].contains(&name) {
                assert!(
                    doc["components"]["schemas"][name]["properties"].is_object()
                        || doc["components"]["schemas"][name]["oneOf"].is_array(),
                    "schema of {name}: {}",
                    doc["components"]["schemas"][name]
                );
            }
        }
    }
    assert!(doc["components"]["schemas"]["EditRequest"]["properties"]["target"].is_object());
    drop(server2);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn demo_mode_gives_each_visitor_an_isolated_capped_rate_limited_sandbox() -> Result<()> {
    let dir = temp_dir("demo")?;
    let server = Server::start(&dir.join("demo.db"), &["--demo"])?;
    let port = server.port;
    // Loading a page creates nothing: a cookie-less session request answers without a user, and a guest sandbox is
    // created only by an explicit POST carrying the CSRF header (a third-party page can send neither).
    let mut stranger = Client::new(port);
    let s = stranger.get(routes::SESSION)?.json()?;
    assert_eq!((s["demo"].clone(), s["user"].clone()), (json!(true), Value::Null), "{s}");
    assert!(stranger.cookie.is_none());
    expect_error(&stranger.raw("POST", routes::GUEST, None, false)?, 403, "header")?;
    let visitor = |port| -> Result<(Client, i64)> {
        let mut c = Client::new(port);
        let s = c.guest()?.json()?;
        assert_eq!(s["demo"], true);
        assert_eq!(s["user"]["guest"], true);
        c.csrf = s["csrf_token"].as_str().map(str::to_string);
        let ws = c.get(routes::WORKSPACES)?.json()?[0]["id"].as_i64().context("sandbox")?;
        Ok((c, ws))
    };
    let (mut a, a_ws) = visitor(port)?;
    let (mut b, b_ws) = visitor(port)?;
    assert_ne!(a_ws, b_ws);
    // The same session comes back as the same guest.
    assert_eq!(a.get(routes::SESSION)?.json()?["user"]["id"], a.get(routes::SESSION)?.json()?["user"]["id"]);
    expect_error(&a.get(&routes::edits(b_ws))?, 404, "workspace")?;

    let gallery = a.get(routes::GALLERY)?.json()?;
    let item = &gallery[2];
    let ask = json!({"image": {"kind": "gallery", "id": item["id"]}, "question": item["question"]});
    let before = b.post(&routes::answer(b_ws), &ask)?.json()?["answer"].clone();
    let e = json!({"image": {"kind": "gallery", "id": item["id"]}, "question": item["question"], "target": item["target"], "method": "serac"});
    let r = a.post(&routes::edits(a_ws), &e)?;
    ensure!(r.status == 200, "{}", r.body);
    assert_eq!(a.post(&routes::answer(a_ws), &ask)?.json()?["answer"], item["target"]);
    // Visitor b's model is untouched by a's edit.
    assert_eq!(b.post(&routes::answer(b_ws), &ask)?.json()?["answer"], before);

    // Caps: no team workspaces, small runs only.
    expect_error(&a.post(routes::WORKSPACES, &json!({"name": "team"}))?, 403, "sandbox")?;
    let big = json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 200});
    expect_error(&a.post(&routes::runs(a_ws), &big)?, 400, "n must be 1 to 30")?;
    // The leaderboard is public and read-only.
    assert_eq!(Client::new(port).get(routes::LEADERBOARD)?.status, 200);
    assert_eq!(Client::new(port).raw("POST", routes::LEADERBOARD, Some("{}"), false)?.status, 405);

    // A guest cannot invite anyone into its sandbox.
    expect_error(&a.post(&routes::invitations(a_ws), &json!({"username": "x", "role": "editor"}))?, 403, "guests")?;
    // Sandboxes per address and hour are capped by the guests created, so signing out does not make room.
    let mut refused = None;
    for _ in 0..30 {
        let mut g = Client::new(port);
        let r = g.guest()?;
        if r.status == 429 {
            refused = Some(r);
            break;
        }
        // Signing out a live session needs its CSRF token (a third-party page cannot sign a visitor out).
        expect_error(&g.raw("POST", routes::SIGN_OUT, None, false)?, 403, "csrf")?;
        g.csrf = r.json()?["csrf_token"].as_str().map(str::to_string);
        assert_eq!(g.raw("POST", routes::SIGN_OUT, None, true)?.status, 200);
    }
    expect_error(&refused.context("guests never capped")?, 429, "too many demo sandboxes")?;

    // Per-address rate limit: a burst of writes ends in 429 with a message.
    let mut limited = None;
    for _ in 0..60 {
        let r = a.post(&routes::answer(a_ws), &ask)?;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    expect_error(&limited.context("never rate limited")?, 429, "too many requests")?;
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn password_guessing_is_throttled_per_account_and_per_address_outside_demo_mode() -> Result<()> {
    let dir = temp_dir("throttle")?;
    let server = Server::start(&dir.join("t.db"), &["--auth-attempts", "8", "--auth-failures", "3"])?;
    let port = server.port;
    let guess = |user: &str, password: &str| -> Result<Reply> {
        let body = json!({"username": user, "password": password}).to_string();
        Client::new(port).raw("POST", routes::SIGN_IN, Some(&body), false)
    };
    // Attempts 1-2: two accounts.
    assert_eq!(Client::new(port).auth(routes::SIGN_UP, "alice")?.status, 200);
    assert_eq!(Client::new(port).auth(routes::SIGN_UP, "bob")?.status, 200);
    // Attempts 3-5: three wrong passwords for alice, then her account is locked, even with the right password (6).
    for _ in 0..3 {
        expect_error(&guess("alice", "wrong guess")?, 401, "wrong username or password")?;
    }
    expect_error(&guess("alice", "correct horse")?, 429, "too many failed sign-ins for this account")?;
    // Bob is not locked out by guesses at alice (7, 8).
    assert_eq!(Client::new(port).auth(routes::SIGN_IN, "bob")?.status, 200);
    expect_error(&guess("nobody", "wrong guess")?, 401, "wrong username or password")?;
    // The address has used its 8 attempts: the 9th is refused before any password work.
    expect_error(&Client::new(port).auth(routes::SIGN_IN, "bob")?, 429, "too many sign-in attempts from your address")?;
    drop(server);
    // Bad flags are refused with a message.
    let out = Command::new(env!("CARGO_BIN_EXE_unike")).args(["serve", "--hash-concurrency", "0"]).output()?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("hash-concurrency"));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_member_removed_while_an_edit_runs_commits_nothing() -> Result<()> {
    let dir = temp_dir("recheck")?;
    let server = Server::start(&dir.join("r.db"), &[])?;
    let port = server.port;
    let (mut alice, ws) = signed_up(port, "alice")?;
    let mut bob = Client::new(port);
    assert_eq!(bob.auth(routes::SIGN_UP, "bob")?.status, 200);
    let bob_id = bob.get(routes::SESSION)?.json()?["user"]["id"].as_i64().context("bob's id")?;
    let inv = alice.post(&routes::invitations(ws), &json!({"username": "bob", "role": "editor"}))?;
    let inv_id = inv.json()?["id"].as_i64().context("invitation")?;
    assert_eq!(bob.post(&routes::invitation_accept(inv_id), &json!({}))?.status, 200);
    let gallery = alice.get(routes::GALLERY)?.json()?;
    let edit = |i: usize, method: &str| gallery_edit(&gallery, i, method);
    // Alice's T-Patcher edit holds the model worker (seconds); Bob's edit waits behind it, and Alice removes Bob
    // meanwhile. His edit passed the role check when it started, but must not be stored when it ends.
    let (e_alice, e_bob) = (edit(0, "t-patcher"), edit(1, "t-patcher"));
    let mut a2 = alice.clone();
    let first = std::thread::spawn(move || a2.post(&routes::edits(ws), &e_alice));
    std::thread::sleep(Duration::from_millis(300));
    let mut b2 = bob.clone();
    let second = std::thread::spawn(move || b2.post(&routes::edits(ws), &e_bob));
    std::thread::sleep(Duration::from_millis(300));
    let removed = alice.raw("DELETE", &routes::member(ws, bob_id), None, true)?;
    ensure!(removed.status == 200, "{}", removed.body);
    let first = first.join().map_err(|_| anyhow::anyhow!("alice's edit panicked"))??;
    ensure!(first.status == 200, "{}", first.body);
    let second = second.join().map_err(|_| anyhow::anyhow!("bob's edit panicked"))??;
    expect_error(&second, 404, "workspace")?;
    // Only Alice's edit is on the stack, and only her patch (its .json and .safetensors) is on disk.
    let edits = alice.get(&routes::edits(ws))?.json()?;
    assert_eq!(edits["edits"].as_array().map(Vec::len), Some(1), "{edits}");
    let patches = dir.join("r.db.d").join("patches").join(format!("ws{ws}"));
    let names: Vec<String> =
        std::fs::read_dir(&patches)?.filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned())).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Sends a request and hangs up after `wait` (a visitor who closes the tab).
fn hang_up(c: &Client, path: &str, body: &Value, wait: Duration) -> Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", c.port))?;
    let body = body.to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nCookie: unike_session={}\r\nx-csrf-token: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        c.cookie.as_deref().unwrap_or(""),
        c.csrf.as_deref().unwrap_or(""),
        body.len()
    );
    s.write_all(req.as_bytes())?;
    std::thread::sleep(wait);
    s.shutdown(std::net::Shutdown::Both)?;
    Ok(())
}

#[test]
fn a_visitor_who_hangs_up_leaves_no_work_and_no_files_behind() -> Result<()> {
    let dir = temp_dir("hangup")?;
    let db = dir.join("h.db");
    let mut server = Server::start(&db, &[])?;
    let port = server.port;
    let (mut alice, a_ws) = signed_up(port, "alice")?;
    let (mut bob, b_ws) = signed_up(port, "bob")?;
    let gallery = alice.get(routes::GALLERY)?.json()?;
    let edit = |i: usize| gallery_edit(&gallery, i, "t-patcher");
    // Alice's edit holds the model worker; Bob asks for three edits and hangs up each time once they are queued.
    let mut a2 = alice.clone();
    let e0 = edit(0);
    let first = std::thread::spawn(move || a2.post(&routes::edits(a_ws), &e0));
    std::thread::sleep(Duration::from_millis(300));
    for i in 1..4 {
        hang_up(&bob, &routes::edits(b_ws), &edit(i), Duration::from_millis(150))?;
    }
    let first = first.join().map_err(|_| anyhow::anyhow!("alice's edit panicked"))??;
    ensure!(first.status == 200, "{}", first.body);
    // An answer queued behind Bob's jobs returns once the worker has passed them.
    let g = &gallery[0];
    let ask = json!({"image": {"kind": "gallery", "id": g["id"]}, "question": g["question"]});
    assert_eq!(alice.post(&routes::answer(a_ws), &ask)?.status, 200);
    assert_eq!(bob.get(&routes::edits(b_ws))?.json()?["edits"].as_array().map(Vec::len), Some(0));
    let patches = dir.join("h.db.d").join("patches");
    let count = |ws: i64| std::fs::read_dir(patches.join(format!("ws{ws}"))).map_or(0, |d| d.count());
    assert_eq!(count(b_ws), 0, "no patch of a dropped edit stays on disk");
    assert_eq!(count(a_ws), 2);
    // A patch nobody refers to (a server stopped between saving and recording it) is removed at start-up.
    let orphan = patches.join(format!("ws{a_ws}")).join("0123456789abcdef.json");
    std::fs::write(&orphan, "{}")?;
    // An hour old (on PostgreSQL, younger files may be another process's edit in flight and are left alone).
    std::fs::File::options()
        .write(true)
        .open(&orphan)?
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))?;
    server.kill();
    let _server = Server::start(&db, &[])?;
    assert!(!orphan.exists());
    assert_eq!(count(a_ws), 2, "the recorded patch stays");
    // An undone edit's patch goes with it (an undone edit is never applied again; its case stays in the history).
    let id = first.json()?["id"].as_i64().context("edit id")?;
    alice.port = _server.port; // the restarted server listens elsewhere; the session lives in the database
    let undone = alice.raw("DELETE", &routes::edit(a_ws, id), None, true)?;
    ensure!(undone.status == 200, "{}", undone.body);
    assert_eq!(count(a_ws), 0, "the undone edit's patch is removed");
    assert_eq!(alice.post(&routes::answer(a_ws), &ask)?.status, 200, "the stack without it answers");
    drop(_server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Opens an event stream and reads its status line; the connection stays open while the stream lives.
fn open_stream(c: &Client, workspace: i64) -> Result<(u16, TcpStream)> {
    let mut s = TcpStream::connect(("127.0.0.1", c.port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {}?workspace={workspace} HTTP/1.1\r\nHost: x\r\nCookie: unike_session={}\r\n\r\n",
        routes::EVENTS,
        c.cookie.as_deref().unwrap_or("")
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        ensure!(s.read(&mut byte)? == 1, "closed before a status line");
        head.push(byte[0]);
    }
    let status = String::from_utf8_lossy(&head).split_whitespace().nth(1).context("status")?.parse()?;
    Ok((status, s))
}

#[test]
fn live_update_streams_are_capped_per_session_and_address() -> Result<()> {
    let dir = temp_dir("streams")?;
    let server = Server::start(&dir.join("s.db"), &["--streams-per-session", "3", "--streams-per-address", "5"])?;
    let port = server.port;
    let (alice, ws) = signed_up(port, "alice")?;
    let mut open = Vec::new();
    for _ in 0..3 {
        let (status, s) = open_stream(&alice, ws)?;
        assert_eq!(status, 200);
        open.push(s);
    }
    assert_eq!(open_stream(&alice, ws)?.0, 429, "a fourth stream of one session");
    // A closed page frees its slot.
    drop(open.pop());
    std::thread::sleep(Duration::from_millis(300));
    let (status, s) = open_stream(&alice, ws)?;
    assert_eq!(status, 200);
    open.push(s);
    // Another session from the same address: two more, then the address is full.
    let (bob, bws) = signed_up(port, "bob")?;
    for _ in 0..2 {
        let (status, s) = open_stream(&bob, bws)?;
        assert_eq!(status, 200);
        open.push(s);
    }
    assert_eq!(open_stream(&bob, bws)?.0, 429, "a sixth stream from one address");
    drop(open);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn a_workspace_holds_at_most_its_case_quota_and_an_account_its_workspace_quota() -> Result<()> {
    let dir = temp_dir("quota")?;
    let server = Server::start(&dir.join("q.db"), &["--cases-per-workspace", "3", "--workspaces-per-user", "2"])?;
    let port = server.port;
    let (mut alice, ws) = signed_up(port, "alice")?;
    // The sign-up's workspace and one more; a third is refused, and another account is not affected.
    assert_eq!(alice.post(routes::WORKSPACES, &json!({"name": "second"}))?.status, 200);
    expect_error(&alice.post(routes::WORKSPACES, &json!({"name": "third"}))?, 413, "at most 2 workspaces")?;
    assert_eq!(alice.get(routes::WORKSPACES)?.json()?.as_array().map(Vec::len), Some(2));
    let (mut bob, _) = signed_up(port, "bob")?;
    assert_eq!(bob.post(routes::WORKSPACES, &json!({"name": "bob's second"}))?.status, 200);
    let case = |q: &str| json!({"src": q, "alt": "yes", "image": "a.jpg"});
    let two = json!({"cases": [case("one?"), case("two?")]});
    assert_eq!(alice.post(&routes::cases(ws), &two)?.status, 200);
    let r = alice.post(&routes::cases(ws), &two)?;
    expect_error(&r, 413, "at most 3 cases")?;
    assert_eq!(alice.get(&routes::cases(ws))?.json()?.as_array().map(Vec::len), Some(2), "all or nothing");
    // A Playground edit adds a case too: the third fits, a fourth does not (and leaves no patch behind).
    let gallery = alice.get(routes::GALLERY)?.json()?;
    let edit = |i: usize| gallery_edit(&gallery, i, "serac");
    let r = alice.post(&routes::edits(ws), &edit(0))?;
    ensure!(r.status == 200, "{}", r.body);
    expect_error(&alice.post(&routes::edits(ws), &edit(1))?, 413, "at most 3 cases")?;
    let patches = dir.join("q.db.d").join("patches").join(format!("ws{ws}"));
    assert_eq!(std::fs::read_dir(&patches)?.count(), 2, "only the stored edit's patch");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

const DAY: i64 = 86_400;

/// The first column of the first row of `statement` on the studio's database, as text.
fn sql_text(db: &Path, statement: &str) -> Result<String> {
    let url = db_url(db)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await?;
        let v: String = sqlx::query_scalar(sqlx::AssertSqlSafe(statement.to_string())).fetch_one(&pool).await?;
        pool.close().await;
        Ok(v)
    })
}

/// Runs `sql` on the studio's database (the server may be running: SQLite serialises writers).
fn sql(db: &Path, statements: &[&str]) -> Result<Vec<i64>> {
    let url = db_url(db)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await?;
        let mut out = Vec::new();
        for s in statements {
            if s.trim_start().to_uppercase().starts_with("SELECT") {
                out.push(sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(s.to_string())).fetch_one(&pool).await?);
            } else {
                sqlx::query(sqlx::AssertSqlSafe(s.to_string())).execute(&pool).await?;
            }
        }
        pool.close().await;
        Ok(out)
    })
}

#[test]
fn sessions_slide_and_old_guests_are_cleaned_up_with_their_sandboxes() -> Result<()> {
    let dir = temp_dir("cleanup")?;
    let db = dir.join("c.db");
    let mut server = Server::start(&db, &["--demo"])?;
    let mut guest = Client::new(server.port);
    let s = guest.guest()?.json()?;
    guest.csrf = s["csrf_token"].as_str().map(str::to_string);
    let ws = guest.get(routes::WORKSPACES)?.json()?[0]["id"].as_i64().context("sandbox")?;
    let g = &guest.get(routes::GALLERY)?.json()?[0];
    let e = json!({"image": {"kind": "gallery", "id": g["id"]}, "question": g["question"], "target": g["target"], "method": "serac"});
    let r = guest.post(&routes::edits(ws), &e)?;
    ensure!(r.status == 200, "{}", r.body);
    let patches = dir.join("c.db.d").join("patches").join(format!("ws{ws}"));
    assert!(patches.is_dir());

    // A session in use in its last week gets a full two weeks again.
    sql(&db, &[&format!("UPDATE sessions SET expires_at = '{}'", stamp(2 * DAY))])?;
    assert_eq!(guest.get(routes::SESSION)?.json()?["user"]["id"], s["user"]["id"]);
    let expires = sql_text(&db, "SELECT expires_at FROM sessions")?;
    let left = parse_epoch(&expires).context("expires_at")? - parse_epoch(&stamp(0)).context("now")?;
    assert!((14 * DAY - 60..=14 * DAY).contains(&left), "slid to 14 days: {left} s left");
    // An expired session is not a session (and a demo visitor gets a new guest).
    sql(&db, &[&format!("UPDATE sessions SET expires_at = '{}'", stamp(-60))])?;
    assert_eq!(guest.get(routes::SESSION)?.json()?["user"], Value::Null);
    let again = guest.guest()?.json()?;
    assert_ne!(again["user"]["id"], s["user"]["id"]);

    // A day later the first guest, its sandbox, its edit and its patch are gone (the clean-up runs at start-up and
    // then every 10 minutes); the second guest, with a live session, stays.
    server.kill();
    let old = s["user"]["id"].as_i64().context("id")?;
    sql(&db, &[&format!("UPDATE users SET created_at = '{}' WHERE id = {old}", stamp(-2 * DAY))])?;
    let _server = Server::start(&db, &["--demo"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql(&db, &[&format!("SELECT COUNT(*) FROM users WHERE id = {old}")])? != [0] {
        ensure!(Instant::now() < deadline, "the old guest was not cleaned up");
        std::thread::sleep(Duration::from_millis(200));
    }
    let counts = sql(
        &db,
        &[
            &format!("SELECT COUNT(*) FROM workspaces WHERE id = {ws}"),
            &format!("SELECT COUNT(*) FROM applied_edits WHERE workspace_id = {ws}"),
            &format!("SELECT COUNT(*) FROM sessions WHERE expires_at <= '{}'", stamp(0)),
            "SELECT COUNT(*) FROM users WHERE guest = 1",
        ],
    )?;
    assert_eq!(counts, [0, 0, 0, 1]);
    assert!(!patches.exists());
    drop(_server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn the_benchmark_queue_is_bounded() -> Result<()> {
    let dir = temp_dir("runqueue")?;
    let server = Server::start(&dir.join("q.db"), &["--run-queue", "1"])?;
    let (mut alice, ws) = signed_up(server.port, "alice")?;
    let long = json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 400});
    // The first run is taken by the worker, the second waits in the queue (of one), the third is refused.
    let first = alice.post(&routes::runs(ws), &long)?.json()?["id"].as_i64().context("first")?;
    wait_run(&mut alice, first, &["running", "finished", "failed"])?;
    let second = alice.post(&routes::runs(ws), &long)?;
    ensure!(second.status == 200, "{}", second.body);
    let third = alice.post(&routes::runs(ws), &long)?;
    expect_error(&third, 503, "benchmark queue is full")?;
    let runs = alice.get(&routes::runs(ws))?.json()?;
    assert_eq!(runs[0]["status"], "failed", "the refused run says why: {}", runs[0]);
    assert!(runs[0]["error"].as_str().unwrap_or("").contains("queue is full"), "{}", runs[0]);
    for r in [first, second.json()?["id"].as_i64().context("second")?] {
        alice.post(&routes::run_cancel(r), &json!({}))?;
    }
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A PNG of `side` x `side` noise (incompressible), base64.
fn noise_png(side: u32, seed: u32) -> Result<String> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    let img = image::RgbImage::from_fn(side, side, |_, _| {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        image::Rgb([x as u8, (x >> 8) as u8, (x >> 16) as u8])
    });
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[test]
fn uploads_are_kept_only_for_edits_within_a_quota_and_collected_when_unused() -> Result<()> {
    let dir = temp_dir("uploads")?;
    let db = dir.join("u.db");
    let mut server = Server::start(&db, &["--uploads-mb", "1"])?;
    let (mut alice, ws) = signed_up(server.port, "alice")?;
    let uploads = dir.join("u.db.d").join("uploads");
    let kept = || std::fs::read_dir(&uploads).map_or(0, |d| d.flatten().filter(|e| e.path().is_file()).count());
    // An answer's upload is not kept.
    let (a, b) = (noise_png(400, 1)?, noise_png(400, 2)?);
    let ask = json!({"image": {"kind": "upload", "base64": a}, "question": "what is this?"});
    assert_eq!(alice.post(&routes::answer(ws), &ask)?.status, 200);
    assert_eq!(kept(), 0);
    // An edit's is (~470 KB); a second one passes the 1 MB quota, a third does not.
    let edit = |img: &str, target: &str| json!({"image": {"kind": "upload", "base64": img}, "question": "what is this?", "target": target, "method": "serac"});
    for (img, target) in [(&a, "noise"), (&b, "static")] {
        let r = alice.post(&routes::edits(ws), &edit(img, target))?;
        ensure!(r.status == 200, "{}", r.body);
    }
    assert_eq!(kept(), 2);
    expect_error(&alice.post(&routes::edits(ws), &edit(&noise_png(400, 3)?, "snow"))?, 413, "quota")?;
    assert_eq!(kept(), 2);
    // Undone edits keep their cases (and so their images); an image no case refers to is collected after an hour.
    let stray = uploads.join("upload-00000000000000000000000000000000.png");
    std::fs::write(&stray, b"x")?;
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options().write(true).open(&stray)?.set_modified(hour_ago)?;
    server.kill();
    let _server = Server::start(&db, &[])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while stray.exists() {
        ensure!(Instant::now() < deadline, "the stray upload was not collected");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(kept(), 2, "referenced uploads stay");
    drop(_server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The files of `dir` (recursively), by inode: (inode, links, bytes).
fn inodes(dir: &Path) -> Result<Vec<(u64, u64, u64)>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_dir() {
            out.extend(inodes(&e.path())?);
        } else {
            out.push((m.ino(), m.nlink(), m.len()));
        }
    }
    out.sort();
    Ok(out)
}

#[test]
fn run_data_shares_images_within_a_disk_quota_and_goes_when_the_run_ends() -> Result<()> {
    let dir = temp_dir("snapshots")?;
    let server = Server::start(&dir.join("s.db"), &["--snapshot-mb", "4"])?;
    let (mut alice, ws) = signed_up(server.port, "alice")?;
    let data = dir.join("s.db.d");
    let gallery = alice.get(routes::GALLERY)?.json()?;
    // Cases: two Playground edits on gallery images, and an imported one on a large upload (~1.5 MB of noise).
    for i in 0..2 {
        let r = alice.post(&routes::edits(ws), &gallery_edit(&gallery, i, "serac"))?;
        ensure!(r.status == 200, "{}", r.body);
    }
    let noise = json!({"image": {"kind": "upload", "base64": noise_png(700, 9)?}, "question": "what is this?",
        "target": "noise", "method": "serac"});
    ensure!(alice.post(&routes::edits(ws), &noise)?.status == 200);
    let upload = std::fs::read_dir(data.join("uploads"))?
        .flatten()
        .find_map(|e| e.path().file_stem().and_then(|s| s.to_str()).map(str::to_string))
        .context("the upload")?;
    // Its words are the gallery's (a run refuses words outside the model's tokenizer).
    let (q, a) = (|i: usize| gallery[i]["question"].clone(), |i: usize| gallery[i]["target"].clone());
    let case = json!({"src": q(0), "alt": a(0), "image": upload, "rephrase": q(1), "image_rephrase": upload,
        "loc": q(2), "loc_ans": a(2), "m_loc": upload, "m_loc_q": q(3), "m_loc_a": a(3)});
    let imported = alice.post(&routes::cases(ws), &json!({ "cases": [case] }))?;
    ensure!(imported.status == 200, "{}", imported.body);
    // The run worker is kept busy, so runs on the workspace's cases wait with their data on disk.
    let long = json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 400});
    let busy = alice.post(&routes::runs(ws), &long)?.json()?["id"].as_i64().context("busy")?;
    wait_run(&mut alice, busy, &["running"])?;
    let on_ws = json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 10, "data": "workspace"});
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = alice.post(&routes::runs(ws), &on_ws)?;
        ensure!(r.status == 200, "{}", r.body);
        ids.push(r.json()?["id"].as_i64().context("id")?);
    }
    // Both runs' images are the same files, stored once: each linked from the store and from the two runs.
    let runs = data.join("runs");
    let (a, b) = (inodes(&runs.join(ids[0].to_string()))?, inodes(&runs.join(ids[1].to_string()))?);
    let images = |files: &[(u64, u64, u64)], bytes: u64| files.iter().filter(|f| f.2 >= bytes).count();
    ensure!(images(&a, 1_000_000) == 3, "the upload is the case's three images: {a:?}");
    let stored = inodes(&data.join("blobs"))?;
    let shared: std::collections::BTreeSet<u64> = a.iter().chain(&b).filter(|f| f.2 > 1_000_000).map(|f| f.0).collect();
    assert_eq!(shared.len(), 1, "one copy of the upload: {a:?} {b:?}");
    assert!(stored.iter().all(|f| f.1 >= 3), "every stored image is linked from both runs: {stored:?}");
    let stored_bytes: u64 = stored.iter().map(|f| f.2).sum();
    ensure!(stored_bytes < 2_000_000, "the two runs' ~3.2 MB of images take {stored_bytes} bytes");
    // A third run would pass the 4 MB quota counted per run (each ~1.6 MB): refused before anything is written.
    let before = inodes(&data)?.len();
    expect_error(&alice.post(&routes::runs(ws), &on_ws)?, 413, "snapshot quota")?;
    assert_eq!(inodes(&data)?.len(), before, "nothing written for the refused run");
    // When the runs end, their data goes, and the stored images with it; the quota is free again.
    alice.post(&routes::run_cancel(busy), &json!({}))?;
    for id in &ids {
        let r = wait_run(&mut alice, *id, &["finished", "failed"])?;
        assert_eq!(r["status"], "finished", "{r}");
        assert_eq!(r["results"][0]["n"], 3, "{r}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while runs.join(ids[1].to_string()).exists() || !inodes(&data.join("blobs"))?.is_empty() {
        ensure!(Instant::now() < deadline, "run data left: {:?}", inodes(&runs)?);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!runs.join(ids[0].to_string()).exists());
    let again = alice.post(&routes::runs(ws), &on_ws)?;
    ensure!(again.status == 200, "{}", again.body);
    let again = wait_run(&mut alice, again.json()?["id"].as_i64().context("id")?, &["finished", "failed"])?;
    assert_eq!(again["status"], "finished", "{again}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn an_outdated_serac_patch_is_made_again_from_its_provenance() -> Result<()> {
    let dir = temp_dir("outdated")?;
    let db = dir.join("o.db");
    let server = Server::start(&db, &[])?;
    let (mut alice, ws) = signed_up(server.port, "alice")?;
    let gallery = alice.get(routes::GALLERY)?.json()?;
    let r = alice.post(&routes::edits(ws), &gallery_edit(&gallery, 0, "serac"))?;
    ensure!(r.status == 200, "{}", r.body);
    let ask = json!({"image": {"kind": "gallery", "id": gallery[0]["id"]}, "question": gallery[0]["question"]});
    assert_eq!(alice.post(&routes::answer(ws), &ask)?.json()?["answer"], gallery[0]["target"]);
    // The server goes; the patch on disk becomes one the former per-position SERAC wrote.
    drop(server);
    let patches = dir.join("o.db.d").join("patches").join(format!("ws{ws}"));
    let st = std::fs::read_dir(&patches)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .context("the patch's tensors")?;
    let zeros = |shape: &[usize]| candle_core::Tensor::zeros(shape, candle_core::DType::F32, &candle_core::Device::Cpu);
    let old: std::collections::HashMap<String, candle_core::Tensor> = [
        ("serac.0.states".to_string(), zeros(&[3, 4])?),
        ("serac.0.next".to_string(), zeros(&[3, 4])?),
        ("serac.0.key".to_string(), zeros(&[4])?),
    ]
    .into_iter()
    .collect();
    candle_core::safetensors::save(&old, &st)?;
    // On restart the stack loads: the edit is made again from its provenance, in place, and answers as before.
    let server = Server::start(&db, &[])?;
    alice.port = server.port;
    assert_eq!(alice.post(&routes::answer(ws), &ask)?.json()?["answer"], gallery[0]["target"]);
    let bytes = std::fs::read(&st)?;
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"serac.key") && !has(b"serac.0.states"), "the patch was rewritten in today's form");
    assert_eq!(alice.get(&routes::edits(ws))?.json()?["edits"].as_array().map(Vec::len), Some(1));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
