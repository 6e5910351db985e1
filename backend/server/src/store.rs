//! The studio's database: SQLite (one file, the embedded default) or PostgreSQL (shared by several server replicas),
//! through sqlx's `Any` driver, so every query is written once. The SQL the handlers write is the common subset of
//! both: `$N` parameters, `ON CONFLICT`, `RETURNING`, `CASE`, no date functions (timestamps are ISO 8601 UTC text,
//! made here and bound, so they compare as text on both), flags as integers 0 / 1, and no row order but an explicit
//! column. Each back end has its migrations (`migrations/sqlite`, `migrations/postgres`), with one version number for
//! the same schema.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Transaction};

/// Which database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The back end of `url` (`sqlite://PATH`, `postgres://...` or `postgresql://...`).
    pub fn of(url: &str) -> Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            bail!("--db {url:?}: expected sqlite://PATH or postgres://USER@HOST/DB")
        }
    }
}

/// The SQLite file of a `sqlite://PATH` URL (a file: the studio keeps its data folder beside it).
fn sqlite_path(url: &str) -> Result<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .with_context(|| format!("--db {url:?}: expected sqlite://PATH"))?;
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(':') {
        bail!("--db {url:?}: the studio needs a database file (sqlite://PATH)");
    }
    Ok(PathBuf::from(path))
}

/// Opens (creating a SQLite file if needed) the database of `url`, brings its schema up to date, and returns it with
/// the data folder (patches, uploads, run snapshots): `data_dir` if given, else `PATH.d` beside a SQLite file. A
/// PostgreSQL database needs `data_dir`: a folder every process that serves it reaches.
pub async fn open(url: &str, data_dir: Option<&Path>) -> Result<(AnyPool, PathBuf)> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    let (pool, data) = match backend {
        Backend::Sqlite => {
            let path = sqlite_path(url)?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
            }
            let full = format!("sqlite://{}?mode=rwc", path.display());
            let pool = AnyPoolOptions::new()
                .max_connections(8)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL lets readers run beside the one writer; a writer waits up to 10 s for the lock.
                        sqlx::raw_sql(
                            "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                        )
                        .execute(conn)
                        .await?;
                        Ok(())
                    })
                })
                .connect(&full)
                .await
                .with_context(|| format!("cannot open the database {}", path.display()))?;
            sqlx::migrate!("./migrations/sqlite").run(&pool).await.context("database migration failed")?;
            let mut data = path.into_os_string();
            data.push(".d");
            (pool, data_dir.map_or_else(|| PathBuf::from(data), Path::to_path_buf))
        }
        Backend::Postgres => {
            let Some(dir) = data_dir else {
                bail!(
                    "--db {}: a PostgreSQL studio needs --data-dir DIR, a folder every server and worker reaches \
                     (patches, uploads, run snapshots)",
                    redact(url)
                )
            };
            let pool = AnyPoolOptions::new()
                .max_connections(16)
                .connect(url)
                .await
                .with_context(|| format!("cannot connect to {}", redact(url)))?;
            sqlx::migrate!("./migrations/postgres").run(&pool).await.context("database migration failed")?;
            (pool, dir.to_path_buf())
        }
    };
    crate::relabel::run(&pool).await.context("database migration failed")?;
    Ok((pool, data))
}

/// `url` without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let cred = &url[s + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &cred[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The back end of an open pool.
pub fn backend(db: &AnyPool) -> Backend {
    let url = db.connect_options().database_url.as_str().to_string();
    Backend::of(&url).unwrap_or(Backend::Sqlite)
}

/// Starts a write transaction that runs alone among writers, as SQLite's one writer does. SQLite: `BEGIN IMMEDIATE`
/// takes the write lock at once (waiting up to the busy timeout): a deferred transaction that reads and then writes
/// fails with `SQLITE_BUSY` when another connection wrote in between, which WAL mode cannot wait out. PostgreSQL: a
/// transaction-scoped advisory lock, so the read-check-write sequences of the handlers (quotas, the last owner, a
/// run's state) see no other writer between their read and their write, across every replica.
pub async fn write_tx(db: &AnyPool) -> Result<Transaction<'static, Any>, sqlx::Error> {
    match backend(db) {
        Backend::Sqlite => db.begin_with("BEGIN IMMEDIATE").await,
        Backend::Postgres => {
            let mut tx = db.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(7305)").execute(&mut *tx).await?;
            Ok(tx)
        }
    }
}

/// A transaction for a claim (`UPDATE … WHERE id = (SELECT … FOR UPDATE SKIP LOCKED)` on PostgreSQL, whose row
/// locks keep concurrent claimers apart without waiting); SQLite has no row locks, so its one writer's transaction
/// makes the claim atomic there.
pub async fn claim_tx(db: &AnyPool) -> Result<Transaction<'static, Any>, sqlx::Error> {
    match backend(db) {
        Backend::Sqlite => write_tx(db).await,
        Backend::Postgres => db.begin().await,
    }
}

/// `" FOR UPDATE[ OF table] SKIP LOCKED"` on PostgreSQL (`of`: the table to lock in a join), nothing on SQLite.
pub fn skip_locked(db: &AnyPool, of: Option<&str>) -> String {
    match (backend(db), of) {
        (Backend::Postgres, Some(t)) => format!(" FOR UPDATE OF {t} SKIP LOCKED"),
        (Backend::Postgres, None) => " FOR UPDATE SKIP LOCKED".to_string(),
        (Backend::Sqlite, _) => String::new(),
    }
}

/// Now plus `offset_s` seconds as the studio's timestamps are stored: `YYYY-MM-DDTHH:MM:SSZ`, UTC.
pub fn stamp(offset_s: i64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    format_epoch(now + offset_s)
}

/// Now, as [`stamp`] writes it.
pub fn now() -> String {
    stamp(0)
}

/// Seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_epoch(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// A stored timestamp (`YYYY-MM-DDTHH:MM:SSZ`) as seconds since the Unix epoch.
pub fn parse_epoch(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip_and_sort_as_text() {
        for t in [0, 951_782_400, 1_796_547_849, 4_102_444_799, 1_709_164_800] {
            let s = format_epoch(t);
            assert_eq!(parse_epoch(&s), Some(t), "{s}");
        }
        assert_eq!(format_epoch(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(format_epoch(1_709_164_800), "2024-02-29T00:00:00Z");
        assert!(format_epoch(1_000) < format_epoch(1_001));
        assert_eq!(parse_epoch("2026-12-06T09:00:00"), None);
    }

    #[test]
    fn urls_name_their_back_end_and_passwords_are_hidden() {
        assert_eq!(Backend::of("sqlite://x.db").ok(), Some(Backend::Sqlite));
        assert_eq!(Backend::of("postgres://u@h/db").ok(), Some(Backend::Postgres));
        assert!(Backend::of("mysql://u@h/db").is_err());
        assert_eq!(redact("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
