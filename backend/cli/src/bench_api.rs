//! `unike bench-api`: latency of the studio's JSON API under a loopback load. Signs up a throwaway user on a running
//! `unike serve`, then sends `--requests` requests per endpoint from `--concurrency` client threads (one connection
//! per request) and prints p50 / p90 / p99 and throughput: the public leaderboard (`GET`), and an answer under the
//! user's workspace (`POST`, a gallery image, through the model worker).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use unike_shared::routes;

use crate::bench_model::quantile;

#[derive(Args, Debug)]
pub struct BenchApiArgs {
    /// Address of a running `unike serve`.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// Requests per endpoint.
    #[arg(long, default_value_t = 400)]
    pub requests: usize,
    /// Client threads.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// One request; returns the status, the `Set-Cookie` session token if any, and the body.
pub fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: &str,
) -> Result<(u16, Option<String>, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").context("malformed response")?;
    let status = head.split_whitespace().nth(1).context("no status")?.parse()?;
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: unike_session="))
        .map(|v| v.split(';').next().unwrap_or_default().to_string());
    Ok((status, cookie, body.to_string()))
}

/// Runs `n` requests over `threads` threads; returns sorted latencies (ms) and the wall time.
fn load(n: usize, threads: usize, one: &(dyn Fn() -> Result<u16> + Sync)) -> Result<(Vec<f64>, f64)> {
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let mut all: Vec<f64> = std::thread::scope(|s| -> Result<Vec<f64>> {
        let workers: Vec<_> = (0..threads.max(1))
            .map(|_| {
                s.spawn(|| -> Result<Vec<f64>> {
                    let mut out = Vec::new();
                    while next.fetch_add(1, Ordering::SeqCst) < n {
                        let t = Instant::now();
                        let status = one()?;
                        if status != 200 {
                            bail!("status {status}");
                        }
                        out.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for w in workers {
            all.extend(w.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        Ok(all)
    })?;
    let wall = t0.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((all, wall))
}

pub fn run(args: BenchApiArgs) -> Result<()> {
    if args.requests == 0 || args.concurrency == 0 {
        bail!("--requests and --concurrency must be at least 1");
    }
    let addr = args.addr;
    let user = format!("bench-{}", std::process::id());
    let creds = format!(r#"{{"username":"{user}","password":"benchmark password"}}"#);
    let (status, cookie, body) = call(addr, "POST", routes::SIGN_UP, "", &creds)
        .with_context(|| format!("no studio at {addr} (start one with `unike serve`)"))?;
    if status != 200 {
        bail!("sign-up failed ({status}): {body}");
    }
    let cookie = cookie.context("no session cookie")?;
    let session: unike_shared::auth::SessionInfo = serde_json::from_str(&body)?;
    let csrf = session.csrf_token.context("no CSRF token")?;
    let headers = format!("Cookie: unike_session={cookie}\r\nx-csrf-token: {csrf}\r\n");
    let (_, _, ws) = call(addr, "GET", routes::WORKSPACES, &headers, "")?;
    let ws: Vec<unike_shared::workspace::Workspace> = serde_json::from_str(&ws)?;
    let ws = ws.first().context("no workspace")?.id;
    let (_, _, gallery) = call(addr, "GET", routes::GALLERY, "", "")?;
    let gallery: Vec<unike_shared::playground::GalleryItem> = serde_json::from_str(&gallery)?;
    let item = gallery.first().context("empty gallery")?;
    let ask = serde_json::json!({"image": {"kind": "gallery", "id": item.id}, "question": item.question}).to_string();
    let answer_path = routes::answer(ws);

    println!("| endpoint | requests | concurrency | p50 ms | p90 ms | p99 ms | req/s |");
    println!("|---|---|---|---|---|---|---|");
    let leaderboard = || -> Result<u16> { Ok(call(addr, "GET", routes::LEADERBOARD, "", "")?.0) };
    let answer = || -> Result<u16> { Ok(call(addr, "POST", &answer_path, &headers, &ask)?.0) };
    for (name, f) in [
        ("GET /api/leaderboard", &leaderboard as &(dyn Fn() -> Result<u16> + Sync)),
        ("POST /api/workspaces/{id}/answer", &answer),
    ] {
        let (lat, wall) = load(args.requests, args.concurrency, f)?;
        println!(
            "| {name} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} |",
            args.requests,
            args.concurrency,
            quantile(&lat, 0.5),
            quantile(&lat, 0.9),
            quantile(&lat, 0.99),
            args.requests as f64 / wall
        );
    }
    Ok(())
}
