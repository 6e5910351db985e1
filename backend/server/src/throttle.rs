//! Throttles of password work (issue 16), in every mode, not only `--demo`: sign-ins and sign-ups per address,
//! failed sign-ins per account (password guessing), and a bound on argon2 hashes at once (each takes 19 MiB and tens
//! of milliseconds of a blocking thread, so a flood of guesses could otherwise exhaust memory and the blocking pool).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, SemaphorePermit};

use super::error::{ApiErr, ApiResult};

/// Keys a bucket map holds before it forgets the idle ones (a bound on its memory).
const MAX_KEYS: usize = 100_000;
/// How long a sign-in waits for a hashing slot before it is turned away.
const HASH_WAIT: Duration = Duration::from_secs(10);

/// Token buckets per key: `burst` tokens, refilled at `per_second`.
pub struct Buckets<K> {
    burst: f64,
    per_second: f64,
    map: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq> Buckets<K> {
    pub fn new(burst: f64, per_second: f64) -> Self {
        Self { burst, per_second, map: Mutex::new(HashMap::new()) }
    }

    /// `burst` per `window` (a full bucket refills over the window).
    pub fn per_window(burst: usize, window: Duration) -> Self {
        let burst = burst as f64;
        Self::new(burst, burst / window.as_secs_f64().max(1e-9))
    }

    /// The refilled level of `key`'s bucket (`burst` for an unknown key).
    fn level(&self, map: &HashMap<K, (f64, Instant)>, key: &K, now: Instant) -> f64 {
        map.get(key).map_or(self.burst, |(tokens, last)| {
            (tokens + now.duration_since(*last).as_secs_f64() * self.per_second).min(self.burst)
        })
    }

    fn lock(&self) -> ApiResult<std::sync::MutexGuard<'_, HashMap<K, (f64, Instant)>>> {
        self.map.lock().map_err(|_| ApiErr::internal("throttle poisoned"))
    }

    /// Tokens of a full bucket, and tokens refilled per second.
    pub fn rates(&self) -> (f64, f64) {
        (self.burst, self.per_second)
    }

    /// Forgets the buckets that have refilled (they carry no state).
    pub fn prune(&self) {
        if let Ok(mut map) = self.lock() {
            let (now, full) = (Instant::now(), self.burst / self.per_second);
            map.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < full);
        }
    }

    /// Seconds until `key` has a token again, or `None` when it has one now (nothing is taken).
    pub fn wait(&self, key: &K) -> ApiResult<Option<f64>> {
        let map = self.lock()?;
        let level = self.level(&map, key, Instant::now());
        Ok((level < 1.0).then(|| ((1.0 - level) / self.per_second).ceil()))
    }

    /// Takes one token of `key`'s bucket; `Err(seconds to wait)` when it is empty.
    pub fn take(&self, key: K) -> ApiResult<Result<(), f64>> {
        let mut map = self.lock()?;
        let now = Instant::now();
        if map.len() >= MAX_KEYS && !map.contains_key(&key) {
            // Forget keys whose bucket has refilled: they carry no state.
            let full = self.burst / self.per_second;
            map.retain(|_, (_, t)| now.duration_since(*t).as_secs_f64() < full);
            if map.len() >= MAX_KEYS {
                return Ok(Err(1.0));
            }
        }
        let level = self.level(&map, &key, now);
        if level < 1.0 {
            map.insert(key, (level, now));
            return Ok(Err(((1.0 - level) / self.per_second).ceil()));
        }
        map.insert(key, (level - 1.0, now));
        Ok(Ok(()))
    }
}

/// The throttles of sign-in and sign-up (`unike serve --auth-attempts / --auth-failures / --hash-concurrency`).
pub struct AuthThrottle {
    /// Sign-in and sign-up attempts per client address.
    by_address: Buckets<IpAddr>,
    /// Failed sign-ins per account name (also unknown names, so that they cannot be told apart).
    failures: Buckets<String>,
    hashing: Semaphore,
    waiting: AtomicUsize,
    max_waiting: usize,
    /// Replicas on one PostgreSQL database count in its `rate_buckets` instead ([`super::rate_store`]).
    shared: Option<sqlx::AnyPool>,
}

/// The window the per-address and per-account throttles count over.
pub const AUTH_WINDOW: Duration = Duration::from_secs(600);

impl AuthThrottle {
    /// `attempts` per address and `failures` per account every [`AUTH_WINDOW`]; `concurrency` argon2 hashes at once,
    /// with at most `8 × concurrency` sign-ins waiting for one.
    pub fn new(attempts: usize, failures: usize, concurrency: usize, shared: Option<sqlx::AnyPool>) -> Self {
        let concurrency = concurrency.max(1);
        Self {
            by_address: Buckets::per_window(attempts, AUTH_WINDOW),
            failures: Buckets::per_window(failures, AUTH_WINDOW),
            hashing: Semaphore::new(concurrency),
            waiting: AtomicUsize::new(0),
            max_waiting: 8 * concurrency,
            shared,
        }
    }

    /// Forgets refilled buckets.
    pub fn prune(&self) {
        self.by_address.prune();
        self.failures.prune();
    }

    /// One sign-in or sign-up attempt from `ip`: 429 past the address's allowance.
    pub async fn attempt(&self, ip: IpAddr) -> ApiResult<()> {
        let taken = match &self.shared {
            Some(db) => {
                let (burst, rate) = self.by_address.rates();
                super::rate_store::take(db, "auth_address", &ip.to_string(), burst, rate).await?
            }
            None => self.by_address.take(ip)?,
        };
        taken.map_err(|wait| {
            ApiErr::too_many(format!("too many sign-in attempts from your address; try again in {wait} s"))
        })
    }

    /// 429 while `account` has used up its failed sign-ins (checked before any hash is computed).
    pub async fn check_account(&self, account: &str) -> ApiResult<()> {
        let wait = match &self.shared {
            Some(db) => {
                let (burst, rate) = self.failures.rates();
                super::rate_store::wait(db, "auth_failures", account, burst, rate).await?
            }
            None => self.failures.wait(&account.to_string())?,
        };
        match wait {
            None => Ok(()),
            Some(wait) => {
                Err(ApiErr::too_many(format!("too many failed sign-ins for this account; try again in {wait} s")))
            }
        }
    }

    /// Counts a failed sign-in against `account`.
    pub async fn failed(&self, account: &str) -> ApiResult<()> {
        let _ = match &self.shared {
            Some(db) => {
                let (burst, rate) = self.failures.rates();
                super::rate_store::take(db, "auth_failures", account, burst, rate).await?
            }
            None => self.failures.take(account.to_string())?,
        };
        Ok(())
    }

    /// A slot for one argon2 hash: waits up to 10 s behind the others; 429 when too many already wait.
    pub async fn hash_slot(&self) -> ApiResult<SemaphorePermit<'_>> {
        let busy = || ApiErr::too_many("the server is checking too many passwords at once; try again in a few seconds");
        // Counted while waiting, also when the request is dropped mid-wait (the client went away).
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let over = self.waiting.fetch_add(1, Ordering::SeqCst) >= self.max_waiting;
        let waiting = Waiting(&self.waiting);
        if over {
            return Err(busy());
        }
        let permit = tokio::time::timeout(HASH_WAIT, self.hashing.acquire()).await;
        drop(waiting);
        match permit {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(ApiErr::internal("hashing semaphore closed")),
            Err(_) => Err(busy()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_allow_their_burst_then_refuse_per_key() -> ApiResult<()> {
        let b = Buckets::per_window(3, Duration::from_secs(3600));
        for _ in 0..3 {
            assert!(b.take("a")?.is_ok());
        }
        assert!(b.take("a")?.is_err());
        assert!(b.wait(&"a")?.is_some());
        assert!(b.take("b")?.is_ok(), "another key has its own bucket");
        assert_eq!(b.wait(&"c")?, None, "waiting takes nothing");
        Ok(())
    }

    #[tokio::test]
    async fn failures_lock_an_account_but_not_others() -> ApiResult<()> {
        let t = AuthThrottle::new(100, 2, 1, None);
        t.check_account("alice").await?;
        t.failed("alice").await?;
        t.failed("alice").await?;
        let e = t.check_account("alice").await.unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        t.check_account("bob").await?;
        Ok(())
    }

    #[tokio::test]
    async fn hashing_is_bounded_and_waiters_are_capped() -> ApiResult<()> {
        let t = AuthThrottle::new(100, 100, 1, None);
        let held = t.hash_slot().await?;
        // One permit is held: 8 may wait, the 9th is refused at once.
        let waiting: Vec<_> = (0..8).map(|_| t.hash_slot()).collect();
        let mut waiting: Vec<_> = waiting.into_iter().map(Box::pin).collect();
        for w in &mut waiting {
            assert!(futures_poll_pending(w.as_mut()).await);
        }
        let e = t.hash_slot().await.err().map(|e| e.status.as_u16());
        assert_eq!(e, Some(429));
        drop(waiting);
        drop(held);
        assert!(t.hash_slot().await.is_ok());
        Ok(())
    }

    /// Polls `f` once: true when it is still pending.
    async fn futures_poll_pending<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> bool {
        let mut f = Some(f);
        std::future::poll_fn(move |cx| {
            let pending = f.take().is_some_and(|f| f.poll(cx).is_pending());
            std::task::Poll::Ready(pending)
        })
        .await
    }
}
