//! Public demo mode (`--demo`): per-IP rate limits on writes and caps on what a guest sandbox may hold.

use std::net::IpAddr;

use super::error::{ApiErr, ApiResult};
use super::throttle::Buckets;

/// Caps of a demo guest's sandbox.
#[derive(Debug, Clone, Copy)]
pub struct DemoCaps {
    /// Edits on a sandbox's stack at once.
    pub edits: usize,
    /// Edits a sandbox may make in all (undone ones count: their patches stay on disk).
    pub edits_total: usize,
    /// Benchmark runs a guest may launch.
    pub runs: usize,
    /// Cases per run.
    pub run_n: usize,
    /// Seeds a guest's runs may use, `0..seeds` (each draws other cases from the model's world).
    pub seeds: u64,
    /// Guest accounts one address may create per hour.
    pub guests_per_hour: usize,
    /// Cases a sandbox may hold (imports and edits together).
    pub cases: usize,
}

pub const DEMO_CAPS: DemoCaps =
    DemoCaps { edits: 10, edits_total: 50, runs: 3, run_n: 30, seeds: 10, guests_per_hour: 20, cases: 200 };

/// A token bucket per client address: `burst` writes at once, refilled at `per_second` (the buckets of
/// [`Buckets`], shared with the sign-in throttles).
pub struct RateLimits {
    enabled: bool,
    buckets: Buckets<IpAddr>,
    /// Replicas on one PostgreSQL database count in its `rate_buckets` instead ([`super::rate_store`]).
    shared: Option<sqlx::AnyPool>,
}

impl RateLimits {
    /// Limits that apply only in demo mode.
    pub fn new(enabled: bool, burst: f64, per_second: f64, shared: Option<sqlx::AnyPool>) -> Self {
        Self { enabled, buckets: Buckets::new(burst, per_second), shared }
    }

    /// Forgets the buckets that have refilled (they carry no state).
    pub fn prune(&self) {
        self.buckets.prune();
    }

    /// Takes one token of `ip`'s bucket, or answers 429.
    pub async fn check(&self, ip: IpAddr) -> ApiResult<()> {
        if !self.enabled {
            return Ok(());
        }
        let taken = match &self.shared {
            Some(db) => {
                let (burst, rate) = self.buckets.rates();
                super::rate_store::take(db, "demo_writes", &ip.to_string(), burst, rate).await?
            }
            None => self.buckets.take(ip)?,
        };
        taken.map_err(|wait| ApiErr::too_many(format!("too many requests from your address; try again in {wait} s")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bucket_allows_its_burst_then_refuses_and_other_addresses_are_separate() {
        let l = RateLimits::new(true, 3.0, 0.001, None);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            l.check(a).await.unwrap();
        }
        let e = l.check(a).await.unwrap_err();
        assert_eq!(e.status.as_u16(), 429);
        l.check(b).await.unwrap();
        let off = RateLimits::new(false, 0.0, 0.0, None);
        off.check(a).await.unwrap();
    }
}
