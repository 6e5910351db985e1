//! Helpers of the studio's integration tests: a real `unike serve` process on loopback and a browser-like client.
#![allow(dead_code)] // each test crate uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use unike_shared::routes;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A running `unike serve`; killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn start(db: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_model(db, Path::new("default"), extra)
    }

    /// As [`Server::start`], on the model in `model` (a directory, or `default`). Without the committed reference
    /// results unless `extra` names `--reference-results` (the tests count the leaderboard's rows of their own runs).
    pub fn start_model(db: &Path, model: &Path, extra: &[&str]) -> Result<Self> {
        let reference: &[&str] =
            if extra.contains(&"--reference-results") { &[] } else { &["--reference-results", "none"] };
        let mut child = Command::new(env!("CARGO_BIN_EXE_unike"))
            .current_dir(root())
            .args(["serve", "--addr", "127.0.0.1:0", "--model"])
            .arg(model)
            .args(db_args(db)?)
            .args(reference)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().context("stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(120);
        let port = loop {
            ensure!(Instant::now() < deadline, "server did not start");
            let line = lines.next().context("server exited")??;
            if let Some(rest) = line.split("http://").nth(1) {
                let addr = rest.split_whitespace().next().context("addr")?;
                break addr.rsplit(':').next().context("port")?.parse::<u16>()?;
            }
        };
        // Keep draining the log so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(Self { child, port })
    }

    /// The server process's resident memory, in bytes (Linux: `VmRSS` of `/proc/PID/status`).
    pub fn rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .context("no VmRSS")?;
        Ok(kb.parse::<u64>()? * 1024)
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A browser-like client: keeps the session cookie and sends the CSRF token on writes.
#[derive(Clone)]
pub struct Client {
    pub port: u16,
    pub cookie: Option<String>,
    pub csrf: Option<String>,
}

pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body).with_context(|| format!("not JSON: {}", self.body))
    }
}

impl Client {
    pub fn new(port: u16) -> Self {
        Self { port, cookie: None, csrf: None }
    }

    pub fn raw(&mut self, method: &str, path: &str, body: Option<&str>, csrf: bool) -> Result<Reply> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
        if let Some(c) = &self.cookie {
            req.push_str(&format!("Cookie: unike_session={c}\r\n"));
        }
        if let (true, Some(t)) = (csrf, &self.csrf) {
            req.push_str(&format!("x-csrf-token: {t}\r\n"));
        }
        let body = body.unwrap_or("");
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()));
        s.write_all(req.as_bytes())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        let mut headers_seen = false;
        loop {
            let n = s.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            // A live-update stream never ends: its headers are the reply.
            if !headers_seen {
                if let Some((h, _)) = String::from_utf8_lossy(&buf).split_once("\r\n\r\n") {
                    headers_seen = true;
                    if h.contains("text/event-stream") {
                        break;
                    }
                }
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
        let status: u16 = head.split_whitespace().nth(1).context("status")?.parse()?;
        for line in head.lines() {
            if let Some(v) = line.strip_prefix("set-cookie: unike_session=") {
                let token = v.split(';').next().unwrap_or("");
                self.cookie = (!token.is_empty()).then(|| token.to_string());
            }
        }
        Ok(Reply { status, body: body.to_string() })
    }

    pub fn get(&mut self, path: &str) -> Result<Reply> {
        self.raw("GET", path, None, false)
    }

    pub fn post(&mut self, path: &str, body: &Value) -> Result<Reply> {
        self.raw("POST", path, Some(&body.to_string()), true)
    }

    /// Starts a demo guest sandbox (the CSRF header must be there; any value before a session exists) and keeps the
    /// session's CSRF token.
    pub fn guest(&mut self) -> Result<Reply> {
        self.csrf.get_or_insert_with(|| "new".into());
        let r = self.raw("POST", routes::GUEST, None, true)?;
        if r.status == 200 {
            self.csrf = r.json()?["csrf_token"].as_str().map(str::to_string);
        }
        Ok(r)
    }

    /// Signs up (or in) and keeps the session's CSRF token.
    pub fn auth(&mut self, route: &str, user: &str) -> Result<Reply> {
        let r =
            self.raw("POST", route, Some(&json!({"username": user, "password": "correct horse"}).to_string()), false)?;
        if r.status == 200 {
            self.csrf = r.json()?["csrf_token"].as_str().map(str::to_string);
        }
        Ok(r)
    }
}

pub fn expect_error(r: &Reply, status: u16, needle: &str) -> Result<()> {
    ensure!(r.status == status, "expected {status}, got {}: {}", r.status, r.body);
    let v = r.json()?;
    ensure!(v["code"] == status, "{}", r.body);
    let msg = v["error"].as_str().unwrap_or("");
    ensure!(msg.contains(needle), "expected {needle:?} in {msg:?}");
    Ok(())
}

pub fn wait_run(c: &mut Client, id: i64, want: &[&str]) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let run = c.get(&routes::run(id))?.json()?;
        if want.contains(&run["status"].as_str().unwrap_or("")) {
            return Ok(run);
        }
        ensure!(Instant::now() < deadline, "run {id} stuck: {run}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The PostgreSQL server the studio tests run against instead of SQLite files, when `UNIKE_TEST_POSTGRES` names one
/// (`postgres://USER@HOST:PORT`, e.g. the throw-away cluster `./studio test` starts).
pub fn postgres() -> Option<String> {
    std::env::var("UNIKE_TEST_POSTGRES").ok().filter(|u| !u.is_empty())
}

/// The database URL of a test's database `db` (a file path): `sqlite://db`, or under [`postgres`] a database of its
/// own on that server, named after the path (created on first use; the path holds the test's process id, so every
/// run gets fresh ones).
pub fn db_url(db: &Path) -> Result<String> {
    let Some(server) = postgres() else { return Ok(format!("sqlite://{}", db.display())) };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    db.hash(&mut h);
    let name = format!("unike_test_{:016x}", h.finish());
    tokio::runtime::Runtime::new()?.block_on(async {
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&format!("{server}/postgres")).await?;
        let exists: Option<i64> = sqlx::query_scalar("SELECT 1::BIGINT FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&admin)
            .await?;
        if exists.is_none() {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&admin).await?;
        }
        admin.close().await;
        anyhow::Ok(())
    })?;
    Ok(format!("{server}/{name}"))
}

/// `unike serve`'s flags for the test database `db`: `--db URL`, and with PostgreSQL `--data-dir PATH.d` (where a
/// SQLite studio keeps its data beside the file, so the tests find it at the same place).
pub fn db_args(db: &Path) -> Result<Vec<String>> {
    let mut out = vec!["--db".to_string(), db_url(db)?];
    if postgres().is_some() {
        let mut data = db.as_os_str().to_owned();
        data.push(".d");
        out.extend(["--data-dir".to_string(), PathBuf::from(data).display().to_string()]);
    }
    Ok(out)
}

pub fn temp_dir(name: &str) -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("unike-studio-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// Reads a server-sent event stream until `needle` shows up or the stream ends; returns what it read.
pub fn sse_until(port: u16, cookie: &str, workspace: i64, needle: &str) -> std::thread::JoinHandle<Result<String>> {
    let (cookie, needle) = (cookie.to_string(), needle.to_string());
    let mut s = TcpStream::connect(("127.0.0.1", port));
    if let Ok(s) = &mut s {
        let _ = write!(
            s,
            "GET {}?workspace={workspace} HTTP/1.1\r\nHost: x\r\nCookie: unike_session={cookie}\r\n\r\n",
            routes::EVENTS
        );
    }
    std::thread::spawn(move || {
        let mut s = s?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        // Until the needle shows up or the server ends the (chunked) stream.
        while !seen.contains(&needle) && !seen.ends_with("\r\n0\r\n\r\n") {
            let n = s.read(&mut buf)?;
            ensure!(n > 0, "connection closed: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(seen)
    })
}

/// A new account `user` signed up on `port`, with the id of its own first workspace.
pub fn signed_up(port: u16, user: &str) -> Result<(Client, i64)> {
    let mut c = Client::new(port);
    let r = c.auth(routes::SIGN_UP, user)?;
    ensure!(r.status == 200, "{}", r.body);
    let ws = c.get(routes::WORKSPACES)?.json()?[0]["id"].as_i64().context("workspace")?;
    Ok((c, ws))
}

/// An edit request on gallery item `i` with its own question and target.
pub fn gallery_edit(gallery: &Value, i: usize, method: &str) -> Value {
    let g = &gallery[i];
    json!({"image": {"kind": "gallery", "id": g["id"]}, "question": g["question"], "target": g["target"], "method": method})
}

/// The shipped model's files, its UniKE encoders and a small knowledge memory of its own (the shipped 6,000 entries
/// take minutes to build) in `dir/models/default`, where the hyper-parameters of `default` apply.
pub fn model_with_small_memory(dir: &Path) -> Result<PathBuf> {
    let from = root().join("models/default");
    let model = shipped_model_files(dir)?;
    std::fs::create_dir_all(model.join("unike"))?;
    for f in ["encoders.json", "encoders.safetensors"] {
        std::fs::copy(from.join("unike").join(f), model.join("unike").join(f))?;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_unike"))
        .current_dir(root())
        .args(["build-memory", "--n", "300", "--model"])
        .arg(&model)
        .output()?;
    ensure!(out.status.success(), "build-memory: {}", String::from_utf8_lossy(&out.stderr));
    Ok(model)
}

/// The shipped model's own files (no trained networks, no UniKE artifacts) in `dir/models/default`, where the
/// hyper-parameters of `default` apply.
pub fn shipped_model_files(dir: &Path) -> Result<PathBuf> {
    let from = root().join("models/default");
    let model = dir.join("models/default");
    std::fs::create_dir_all(&model)?;
    for entry in std::fs::read_dir(&from)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), model.join(entry.file_name()))?;
        }
    }
    Ok(model)
}
