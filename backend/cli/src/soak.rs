//! `unike soak`: `--visitors` simulated visitors use a running studio for `--minutes`, each in a loop of what a
//! Playground visitor does: look at the gallery, ask a question, apply an edit, read the stack and the leaderboard,
//! undo the edit. Prints p50 / p99 latency per request kind, the statuses (limits and quotas — 413, 429, 503 — counted
//! apart from errors: any other 4xx or a 5xx), and, given the server's `--pid` and `--data-dir`, its resident memory
//! and data directory before and after, per visitor.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::{json, Value};
use unike_shared::routes;

use crate::bench_api::call;
use crate::bench_model::quantile;

#[derive(Args, Debug)]
pub struct SoakArgs {
    /// Address of a running `unike serve`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Simulated visitors (one thread each; sign-ups from one address are throttled: at most 30 per 10 minutes).
    #[arg(long, default_value_t = 8)]
    pub visitors: usize,
    /// How long they keep going.
    #[arg(long, default_value_t = 5.0)]
    pub minutes: f64,
    /// Edit methods the visitors take turns with.
    #[arg(long, value_delimiter = ',', default_value = "serac,t-patcher,unike")]
    pub methods: Vec<String>,
    /// The server's process id (its resident memory is read from /proc before and after).
    #[arg(long)]
    pub pid: Option<u32>,
    /// The server's data directory (`PATH.d` beside its database), measured before and after.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Default)]
struct Tally {
    latency: BTreeMap<&'static str, Vec<f64>>,
    statuses: BTreeMap<u16, usize>,
    errors: Vec<String>,
    loops: usize,
}

fn rss_mib(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = s.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// A signed-up visitor: its request headers and workspace.
struct Visitor {
    headers: String,
    ws: i64,
}

fn sign_up(addr: SocketAddr, i: usize) -> Result<Visitor> {
    let creds = json!({"username": format!("soak-{}-{i}", std::process::id()), "password": "soak test password"});
    let (status, cookie, body) = call(addr, "POST", routes::SIGN_UP, "", &creds.to_string())
        .with_context(|| format!("no studio at {addr} (start one with `unike serve`)"))?;
    if status != 200 {
        bail!("visitor {i}: sign-up failed ({status}): {body}");
    }
    let session: Value = serde_json::from_str(&body)?;
    let csrf = session["csrf_token"].as_str().context("no CSRF token")?;
    let headers = format!("Cookie: unike_session={}\r\nx-csrf-token: {csrf}\r\n", cookie.context("no cookie")?);
    let (_, _, list) = call(addr, "GET", routes::WORKSPACES, &headers, "")?;
    let ws = serde_json::from_str::<Value>(&list)?[0]["id"].as_i64().context("no workspace")?;
    Ok(Visitor { headers, ws })
}

/// One visitor's loop until `deadline`.
fn visit(addr: SocketAddr, v: &Visitor, i: usize, methods: &[String], deadline: Instant, tally: &Mutex<Tally>) {
    let mut n = i;
    while Instant::now() < deadline {
        n += 1;
        let step = |kind: &'static str, method: &str, path: &str, body: &str| -> Option<String> {
            let t = Instant::now();
            let r = call(addr, method, path, &v.headers, body);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            let mut t = tally.lock().ok()?;
            match r {
                Ok((status, _, body)) => {
                    t.latency.entry(kind).or_default().push(ms);
                    *t.statuses.entry(status).or_default() += 1;
                    let limit = [413, 429, 503].contains(&status);
                    if status >= 400 && !limit {
                        t.errors.push(format!("{kind}: {status} {}", body.chars().take(200).collect::<String>()));
                    }
                    (status == 200).then_some(body)
                }
                Err(e) => {
                    t.errors.push(format!("{kind}: {e:#}"));
                    None
                }
            }
        };
        let Some(gallery) = step("gallery", "GET", routes::GALLERY, "") else { continue };
        let Ok(gallery) = serde_json::from_str::<Value>(&gallery) else { continue };
        let items = gallery.as_array().map_or(0, Vec::len).max(1);
        let item = &gallery[n * 7 % items];
        let image = json!({"kind": "gallery", "id": item["id"]});
        step(
            "answer",
            "POST",
            &routes::answer(v.ws),
            &json!({"image": image, "question": item["question"]}).to_string(),
        );
        let method = &methods[n % methods.len()];
        let edit = json!({"image": image, "question": item["question"], "target": item["target"], "method": method,
            "seed": n});
        let applied = step("edit", "POST", &routes::edits(v.ws), &edit.to_string());
        step("stack", "GET", &routes::edits(v.ws), "");
        step("leaderboard", "GET", routes::LEADERBOARD, "");
        if let Some(id) = applied.and_then(|b| serde_json::from_str::<Value>(&b).ok()).and_then(|a| a["id"].as_i64()) {
            step("undo", "DELETE", &routes::edit(v.ws, id), "");
        }
        if let Ok(mut t) = tally.lock() {
            t.loops += 1;
        }
    }
}

pub fn run(args: SoakArgs) -> Result<()> {
    if args.visitors == 0 || args.minutes <= 0.0 || args.methods.is_empty() {
        bail!("--visitors, --minutes and --methods must be positive");
    }
    let rss0 = args.pid.and_then(rss_mib);
    let disk0 = args.data_dir.as_deref().map(dir_bytes);
    let visitors = (0..args.visitors).map(|i| sign_up(args.addr, i)).collect::<Result<Vec<_>>>()?;
    let tally = Mutex::new(Tally::default());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.minutes * 60.0);
    std::thread::scope(|s| {
        for (i, v) in visitors.iter().enumerate() {
            let (tally, methods) = (&tally, &args.methods);
            s.spawn(move || visit(args.addr, v, i, methods, deadline, tally));
        }
    });
    let wall = start.elapsed().as_secs_f64();
    let t = tally.into_inner().map_err(|_| anyhow::anyhow!("a visitor panicked"))?;
    println!(
        "{} visitors for {:.1} min ({} loops, methods {}) against {}\n",
        args.visitors,
        wall / 60.0,
        t.loops,
        args.methods.join(","),
        args.addr
    );
    println!("| request | count | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    for (kind, mut lat) in t.latency {
        lat.sort_by(f64::total_cmp);
        println!("| {kind} | {} | {:.1} | {:.1} |", lat.len(), quantile(&lat, 0.5), quantile(&lat, 0.99));
    }
    let statuses: Vec<String> = t.statuses.iter().map(|(s, n)| format!("{s}: {n}")).collect();
    println!("\nstatuses: {}", statuses.join(", "));
    println!("errors (not a limit or quota): {}", t.errors.len());
    for e in t.errors.iter().take(10) {
        println!("  {e}");
    }
    let per = |a: f64, b: f64| (b - a) / args.visitors as f64;
    if let (Some(a), Some(b)) = (rss0, args.pid.and_then(rss_mib)) {
        println!("server resident memory: {a:.0} → {b:.0} MiB ({:+.1} MiB per visitor)", per(a, b));
    }
    if let (Some(a), Some(dir)) = (disk0, args.data_dir.as_deref()) {
        let b = dir_bytes(dir);
        let mib = |x: u64| x as f64 / 1048576.0;
        println!("data directory: {:.1} → {:.1} MiB ({:+.2} MiB per visitor)", mib(a), mib(b), per(mib(a), mib(b)));
    }
    if !t.errors.is_empty() {
        bail!("{} requests failed with something other than a limit or quota", t.errors.len());
    }
    Ok(())
}
