//! `unike bench-workers`: a benchmark run computed by 1, 2, 3, … `unike worker` processes. Starts a throw-away studio
//! with `--workers external` on a fresh database (a SQLite file in a temporary folder, or `--db postgres://...`), signs
//! up, and for each worker count launches the same run, starts the workers, and times the run from launch to its end.
//! Prints the wall times, and per shard the claim's round trip and what a shard costs beyond its edits (setup,
//! pre-edit outputs, scoring, storing), as medians and p99.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use unike_shared::routes;

use crate::bench_api::call;
use crate::bench_model::quantile;

#[derive(Args, Debug)]
pub struct BenchWorkersArgs {
    /// Worker counts to time, one run each.
    #[arg(long, default_value = "1,2,3", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// The run's methods.
    #[arg(long, default_value = "ft", value_delimiter = ',')]
    pub methods: Vec<String>,
    /// The run's cases (VQA, one-step).
    #[arg(long, default_value_t = 24)]
    pub n: usize,
    /// Cases per shard.
    #[arg(long, default_value_t = 4)]
    pub shard_cases: usize,
    /// The database (default: a SQLite file in a temporary folder); a PostgreSQL one needs --data-dir.
    #[arg(long)]
    pub db: Option<String>,
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn db_flags(args: &BenchWorkersArgs, db: &str) -> Vec<String> {
    let mut out = vec!["--db".to_string(), db.to_string()];
    if let Some(d) = &args.data_dir {
        out.extend(["--data-dir".to_string(), d.display().to_string()]);
    }
    out
}

/// Starts `unike serve --workers external` and returns it with its address.
fn serve(args: &BenchWorkersArgs, db: &str) -> Result<(Proc, SocketAddr)> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["serve", "--addr", "127.0.0.1:0", "--workers", "external", "--shard-cases"])
        .arg(args.shard_cases.to_string())
        .args(db_flags(args, db))
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
    let addr = loop {
        let line = lines.next().context("the studio exited")??;
        if let Some(rest) = line.split("http://").nth(1) {
            break rest.split_whitespace().next().context("address")?.parse()?;
        }
    };
    std::thread::spawn(move || for _ in lines.by_ref() {});
    Ok((Proc(child), addr))
}

fn worker(args: &BenchWorkersArgs, db: &str, name: &str) -> Result<Proc> {
    Ok(Proc(
        Command::new(std::env::current_exe()?)
            .args(["worker", "--poll-ms", "50", "--name", name])
            .args(db_flags(args, db))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    ))
}

/// `(status, json)` of a call that must answer 200.
fn ok(addr: SocketAddr, method: &str, path: &str, headers: &str, body: &str) -> Result<serde_json::Value> {
    let (status, _, text) = call(addr, method, path, headers, body)?;
    ensure!(status == 200, "{method} {path}: {status} {text}");
    Ok(serde_json::from_str(&text)?)
}

pub fn run(args: BenchWorkersArgs) -> Result<()> {
    if args.workers.is_empty() || args.workers.contains(&0) || args.n == 0 || args.shard_cases == 0 {
        bail!("--workers takes counts of at least 1; --n and --shard-cases at least 1");
    }
    let tmp = std::env::temp_dir().join(format!("unike-bench-workers-{}", std::process::id()));
    let db = match &args.db {
        Some(d) => d.clone(),
        None => format!("sqlite://{}", tmp.join("studio.db").display()),
    };
    let (_studio, addr) = serve(&args, &db)?;
    let (status, cookie, text) = call(
        addr,
        "POST",
        routes::SIGN_UP,
        "",
        &format!(r#"{{"username":"bench{}","password":"bench-password-1"}}"#, std::process::id()),
    )?;
    ensure!(status == 200, "sign-up: {status} {text}");
    let session: serde_json::Value = serde_json::from_str(&text)?;
    let csrf = session["csrf_token"].as_str().context("csrf")?;
    let headers = format!("Cookie: unike_session={}\r\nx-csrf-token: {csrf}\r\n", cookie.context("cookie")?);
    let ws = ok(addr, "GET", routes::WORKSPACES, &headers, "")?[0]["id"].as_i64().context("workspace")?;
    let request = serde_json::json!({"methods": args.methods, "task": "vqa", "mode": "one-step", "n": args.n});
    let mut rows = Vec::new();
    for &k in &args.workers {
        let run = ok(addr, "POST", &routes::runs(ws), &headers, &request.to_string())?;
        let id = run["id"].as_i64().context("run id")?;
        let t0 = Instant::now();
        let procs: Vec<Proc> = (0..k).map(|i| worker(&args, &db, &format!("bench-{k}-{i}"))).collect::<Result<_>>()?;
        let run = loop {
            let run = ok(addr, "GET", &routes::run(id), &headers, "")?;
            if !matches!(run["status"].as_str(), Some("queued" | "running")) {
                break run;
            }
            ensure!(t0.elapsed() < Duration::from_secs(3600), "run {id} did not end within an hour");
            std::thread::sleep(Duration::from_millis(50));
        };
        let wall = t0.elapsed().as_secs_f64();
        drop(procs);
        ensure!(run["status"] == "finished", "run {id}: {run}");
        rows.push((k, wall, shard_times(&db, id)?));
    }
    let base = rows.first().map_or(1.0, |r| r.1);
    if args.json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(k, wall, (claim, over))| {
                serde_json::json!({"workers": k, "wall_s": wall, "speedup": base / wall,
                    "claim_ms_p50": quantile(claim, 0.5), "claim_ms_p99": quantile(claim, 0.99),
                    "overhead_ms_p50": quantile(over, 0.5), "overhead_ms_p99": quantile(over, 0.99)})
            })
            .collect();
        println!("{}", serde_json::to_string(&out)?);
    } else {
        println!(
            "run: {} on {} VQA cases, one-step, shards of {} cases; database {}\n",
            args.methods.join(", "),
            args.n,
            args.shard_cases,
            if args.db.is_some() { "as given" } else { "SQLite in a temporary folder" }
        );
        println!("| workers | wall s | speed-up | claim ms p50 / p99 | shard overhead ms p50 / p99 |");
        println!("|---|---|---|---|---|");
        for (k, wall, (claim, over)) in &rows {
            println!(
                "| {k} | {wall:.1} | {:.2} | {:.1} / {:.1} | {:.0} / {:.0} |",
                base / wall,
                quantile(claim, 0.5),
                quantile(claim, 0.99),
                quantile(over, 0.5),
                quantile(over, 0.99)
            );
        }
        println!(
            "\nshard overhead: a shard's time from its claim to its stored outcome, less its edits (setup, pre-edit \
             outputs of its cases, scoring, storing)."
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(())
}

/// The claim round trips and the per-shard overheads (wall less edits) of run `id`, sorted.
fn shard_times(db: &str, id: i64) -> Result<(Vec<f64>, Vec<f64>)> {
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool =
            sqlx::AnyPool::connect(&format!("{db}{}", if db.starts_with("sqlite") { "?mode=ro" } else { "" })).await?;
        let rows: Vec<(f64, f64, f64)> =
            sqlx::query_as("SELECT claim_ms, wall_ms, edit_ms FROM run_shards WHERE run_id = $1 AND status = 'done'")
                .bind(id)
                .fetch_all(&pool)
                .await?;
        pool.close().await;
        let mut claim: Vec<f64> = rows.iter().map(|r| r.0).collect();
        let mut over: Vec<f64> = rows.iter().map(|r| r.1 - r.2).collect();
        claim.sort_by(f64::total_cmp);
        over.sort_by(f64::total_cmp);
        Ok((claim, over))
    })
}
