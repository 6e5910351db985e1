//! Benchmark runs computed by worker processes: a studio with `--workers external` stores a run's shards in its
//! database, four `unike worker` processes claim and compute them, and one of them is killed with SIGKILL while it
//! holds a shard. The run still finishes, with every shard stored once, and its results equal those of the same run
//! computed by a one-process studio, bit for bit (edit times aside). On a real SQLite file, or on PostgreSQL under
//! `UNIKE_TEST_POSTGRES` (`./studio test` runs it on both).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use unike_shared::routes;

mod common;
use common::*;

/// A `unike worker` process on the studio database `db`; killed on drop.
struct Worker(Child);

impl Worker {
    fn start(db: &Path, name: &str) -> Result<Self> {
        Self::start_kinds(db, name, "interactive,runs")
    }

    /// A worker taking only `kinds` (`interactive`, `runs`).
    fn start_kinds(db: &Path, name: &str, kinds: &str) -> Result<Self> {
        let child = Command::new(env!("CARGO_BIN_EXE_unike"))
            .current_dir(root())
            .arg("worker")
            .args(db_args(db)?)
            .args(["--lease-s", "3", "--poll-ms", "100", "--name", name, "--kinds", kinds])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self(child))
    }

    fn kill(&mut self) {
        let _ = self.0.kill(); // SIGKILL
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One query's rows as JSON-ish strings (`SELECT` of text and integer columns).
fn rows(db: &Path, statement: &str) -> Result<Vec<(String, i64)>> {
    let url = db_url(db)?;
    tokio::runtime::Runtime::new()?.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&url).await?;
        let out: Vec<(String, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(statement.to_string())).fetch_all(&pool).await?;
        pool.close().await;
        Ok(out)
    })
}

/// A run's results by method, without their edit times (the only figures that depend on the machine).
fn results(run: &Value) -> Result<Vec<Value>> {
    let mut out = run["results"].as_array().context("results")?.clone();
    for r in &mut out {
        r.as_object_mut().context("result")?.remove("timing");
    }
    out.sort_by_key(|r| r["method"].as_str().unwrap_or_default().to_string());
    Ok(out)
}

#[test]
fn workers_compute_a_run_in_shards_survive_a_killed_worker_and_match_one_process() -> Result<()> {
    let dir = temp_dir("workers")?;
    let request = json!({"methods": ["ft", "serac"], "task": "vqa", "mode": "one-step", "n": 8, "seed": 3});

    // The reference: the same run in one process.
    let local = Server::start(&dir.join("local.db"), &[])?;
    let (mut alice, ws) = signed_up(local.port, "alice")?;
    let r = alice.post(&routes::runs(ws), &request)?;
    ensure!(r.status == 200, "{}", r.body);
    let reference = r.json()?["id"].as_i64().context("id")?;

    // The same run on a studio whose runs the workers compute, in shards of two cases (8 shards).
    let db = dir.join("ext.db");
    let server = Server::start(&db, &["--workers", "external", "--shard-cases", "2"])?;
    let (mut bob, ws) = signed_up(server.port, "bob")?;
    let r = bob.post(&routes::runs(ws), &request)?;
    ensure!(r.status == 200, "{}", r.body);
    let id = r.json()?["id"].as_i64().context("id")?;
    let shards = rows(&db, &format!("SELECT method, end_case - first_case FROM run_shards WHERE run_id = {id}"))?;
    assert_eq!(shards.len(), 8, "{shards:?}");
    assert!(shards.iter().all(|(_, n)| *n == 2), "{shards:?}");

    let mut workers: Vec<(String, Worker)> =
        (0..4).map(|i| Ok((format!("w{i}"), Worker::start(&db, &format!("w{i}"))?))).collect::<Result<_>>()?;
    // Kill a worker seen holding a shard, mid-shard: should the shard be stored between the look and the kill (the
    // kill came too late), another one, at most twice.
    let deadline = Instant::now() + Duration::from_secs(180);
    let (victim_shard, killed) = 'kill: loop {
        let running =
            rows(&db, &format!("SELECT worker, id FROM run_shards WHERE run_id = {id} AND status = 'running'"))?;
        for (name, shard) in running {
            let Some(i) = workers.iter().position(|(n, _)| *n == name) else { continue };
            workers[i].1.kill();
            let (name, _) = workers.remove(i);
            let state =
                rows(&db, &format!("SELECT status, 0 FROM run_shards WHERE id = {shard} AND worker = '{name}'"))?;
            if state.first().is_some_and(|(s, _)| s == "running") {
                break 'kill (shard, name);
            }
            ensure!(workers.len() > 2, "two kills came too late");
        }
        ensure!(Instant::now() < deadline, "no worker claimed a shard");
        std::thread::sleep(Duration::from_millis(20));
    };

    let run = wait_run(&mut bob, id, &["finished", "failed", "cancelled"])?;
    assert_eq!(run["status"], "finished", "{run}");
    assert_eq!(run["done"], run["total"], "{run}");
    let one = wait_run(&mut alice, reference, &["finished", "failed"])?;
    assert_eq!(one["status"], "finished", "{one}");
    assert_eq!(results(&run)?, results(&one)?, "the workers' results equal one process's");

    // The killed worker's shard was claimed again after its lease and done by another; nothing was stored twice.
    let after = rows(&db, &format!("SELECT worker, attempts FROM run_shards WHERE id = {victim_shard}"))?;
    assert!(after[0].0 != killed && after[0].1 >= 2, "{after:?} (killed {killed})");
    let done = rows(&db, &format!("SELECT status, COUNT(*) FROM run_shards WHERE run_id = {id} GROUP BY status"))?;
    assert_eq!(done, [("done".to_string(), 8)], "{done:?}");
    let cases = rows(
        &db,
        &format!("SELECT method, COUNT(*) FROM run_cases WHERE run_id = {id} GROUP BY method ORDER BY method"),
    )?;
    assert_eq!(cases, [("ft".to_string(), 8), ("serac".to_string(), 8)], "{cases:?}");
    drop(workers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Two replicas of the studio on one PostgreSQL database, started at once, and three workers (one of them for answers
/// and edits): with no worker an answer is a 503 at once; an edit applied through replica A reaches a page open on
/// replica B live (`LISTEN/NOTIFY`) and holds in B's answer; a run launched on A and computed by the workers streams
/// to B's page; the sign-in throttle counts attempts on both replicas together. PostgreSQL only
/// (`UNIKE_TEST_POSTGRES`; `./studio test` sets it): one SQLite file is one process's.
#[test]
fn replicas_on_postgresql_see_each_others_events_live() -> Result<()> {
    if postgres().is_none() {
        eprintln!(
            "replicas_on_postgresql_see_each_others_events_live: UNIKE_TEST_POSTGRES is not set; PostgreSQL only"
        );
        return Ok(());
    }
    let dir = temp_dir("replicas")?;
    let db = dir.join("replicas.db");
    let flags = ["--workers", "external", "--shard-cases", "3", "--auth-attempts", "6"];
    // Both start at once on the fresh (empty) database: its schema and data migrations are made once, whoever comes
    // first.
    db_url(&db)?;
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(&db, &flags));
        let b = s.spawn(|| Server::start(&db, &flags));
        (a.join(), b.join())
    });
    let (a, b) = (a.map_err(|_| anyhow::anyhow!("replica A"))??, b.map_err(|_| anyhow::anyhow!("replica B"))??);
    // The replicas compute nothing themselves (they never load the weights): answers, edits and run shards go to the
    // worker.
    let model = Client::new(a.port).get(routes::MODEL)?.json()?;
    assert_eq!(model["device"], "cpu (workers)", "{model}");
    let (mut alice, ws) = signed_up(a.port, "alice")?;
    let gallery = alice.get(routes::GALLERY)?.json()?;
    let asked = gallery_edit(&gallery, 0, "serac");
    let ask = json!({"image": asked["image"], "question": asked["question"]});
    // No worker yet: an answer says so at once, and the health check counts none.
    expect_error(&alice.post(&routes::answer(ws), &ask)?, 503, "no worker computes")?;
    assert_eq!(Client::new(a.port).get(routes::HEALTH)?.json()?["workers"], 0);
    // Three workers: one computes answers and edits (and shards), two compute only run shards.
    let _workers = [
        Worker::start(&db, "w")?,
        Worker::start_kinds(&db, "w-runs-1", "runs")?,
        Worker::start_kinds(&db, "w-runs-2", "runs")?,
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Client::new(b.port).get(routes::HEALTH)?.json()?["workers"] != 3 {
        ensure!(Instant::now() < deadline, "the worker never reported");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Alice's session is the database's: the same cookie opens a page on replica B.
    let cookie = alice.cookie.clone().context("cookie")?;
    let mut on_b = Client { port: b.port, cookie: Some(cookie.clone()), csrf: alice.csrf.clone() };
    assert_eq!(on_b.get(routes::SESSION)?.json()?["user"]["username"], "alice");

    let events = sse_until(b.port, &cookie, ws, "edit_applied");
    std::thread::sleep(Duration::from_millis(300));
    let r = alice.post(&routes::edits(ws), &asked)?;
    ensure!(r.status == 200, "{}", r.body);
    let edit_id = r.json()?["id"].as_i64().context("edit id")?;
    let seen = events.join().map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
    assert!(seen.contains("edit_applied") && seen.contains(&format!("\"id\":{edit_id}")), "{seen}");
    // Replica B answers on the workspace's stack (the edit made through A), through the worker.
    let r = on_b.post(&routes::answer(ws), &ask)?;
    ensure!(r.status == 200, "{}", r.body);
    assert_eq!(r.json()?["answer"], asked["target"], "the edit holds on the other replica");
    // Both went through the job table (the replicas have no model thread) and left it once their replica read them:
    // the table holds only jobs in flight.
    let jobs = rows(&db, "SELECT kind, COUNT(*) FROM interactive_jobs GROUP BY kind")?;
    assert!(jobs.is_empty(), "{jobs:?}");

    // A run launched on A and computed by a worker: B's page sees it finish.
    let events = sse_until(b.port, &cookie, ws, "\"status\":\"finished\"");
    std::thread::sleep(Duration::from_millis(300));
    let r = alice.post(&routes::runs(ws), &json!({"methods": ["serac"], "task": "vqa", "mode": "one-step", "n": 6}))?;
    ensure!(r.status == 200, "{}", r.body);
    let seen = events.join().map_err(|_| anyhow::anyhow!("the stream thread panicked"))??;
    assert!(seen.contains("\"status\":\"finished\""), "{seen}");

    // Sign-in throttles count across replicas: 6 attempts per address in all (the sign-up was one), wherever they go.
    for i in 0..5 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        let r = Client::new(port).raw(
            "POST",
            routes::SIGN_IN,
            Some(r#"{"username":"alice","password":"wrong-password"}"#),
            false,
        )?;
        assert_eq!(r.status, 401, "attempt {}: {}", i + 2, r.body);
    }
    let r = Client::new(b.port).raw(
        "POST",
        routes::SIGN_IN,
        Some(r#"{"username":"alice","password":"wrong-password"}"#),
        false,
    )?;
    expect_error(&r, 429, "too many sign-in attempts")?;
    drop((a, b));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
