//! Per-key limits (issue 23, 3): how many readings a second a key may write and how many of its requests may run at
//! once. One stolen or runaway client then slows only itself; the others keep their share.
//!
//! - **Readings a second** is a token bucket that may go into debt: a request is admitted while the bucket is not
//!   in debt, and its readings are taken from it batch by batch as they are decoded (the count is known only then).
//!   Over any stretch of time a key gets at most its rate plus one second's burst plus one batch; beyond that it
//!   gets `429` with `Retry-After` saying when the debt is paid. A request refused mid-way keeps what it had stored
//!   (its answer says how much), as for any failure mid-body.
//! - **Concurrent requests** is a semaphore per key: a request over the limit is refused at once with `429` (no
//!   queue: a queue would hold the client's connection and memory).
//!
//! A key's limits come from the key file (`readings_per_second`, `concurrent_requests`) or, for a key without its
//! own, from `--key-readings-per-second` / `--key-concurrent-requests` (default: none).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one key; `None`: unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLimits {
    pub readings_per_second: Option<u64>,
    pub concurrent_requests: Option<u32>,
}

impl KeyLimits {
    /// These limits, each that is unset taken from `defaults`.
    pub fn or(self, defaults: KeyLimits) -> KeyLimits {
        KeyLimits {
            readings_per_second: self.readings_per_second.or(defaults.readings_per_second),
            concurrent_requests: self.concurrent_requests.or(defaults.concurrent_requests),
        }
    }

    fn is_unlimited(&self) -> bool {
        self.readings_per_second.is_none() && self.concurrent_requests.is_none()
    }
}

/// The state of one key's limits, shared by all its requests (and kept across key file reloads while the limits
/// stay the same).
#[derive(Debug)]
pub struct KeyLimiter {
    limits: KeyLimits,
    slots: Option<Arc<Semaphore>>,
    bucket: Option<Mutex<Bucket>>,
}

impl PartialEq for KeyLimiter {
    fn eq(&self, other: &Self) -> bool {
        self.limits == other.limits
    }
}

impl Eq for KeyLimiter {}

impl KeyLimiter {
    /// A limiter for `limits`; `None` when nothing is limited.
    pub fn new(limits: KeyLimits) -> Option<Arc<KeyLimiter>> {
        if limits.is_unlimited() {
            return None;
        }
        Some(Arc::new(KeyLimiter {
            limits,
            slots: limits.concurrent_requests.map(|n| Arc::new(Semaphore::new(n as usize))),
            bucket: limits.readings_per_second.map(|rate| Mutex::new(Bucket::new(rate, Instant::now()))),
        }))
    }

    pub fn limits(&self) -> KeyLimits {
        self.limits
    }

    /// A place among the key's concurrent requests, held until dropped; `Err` with the limit when all are taken.
    pub fn enter(&self) -> Result<Option<OwnedSemaphorePermit>, LimitExceeded> {
        match &self.slots {
            None => Ok(None),
            Some(slots) => slots
                .clone()
                .try_acquire_owned()
                .map(Some)
                .map_err(|_| LimitExceeded::Concurrency { limit: self.limits.concurrent_requests.unwrap_or(0) }),
        }
    }

    /// Takes `readings` from the key's rate; `Err` says how long until the key may write again.
    pub fn take(&self, readings: u64) -> Result<(), LimitExceeded> {
        let Some(bucket) = &self.bucket else { return Ok(()) };
        let mut bucket = bucket.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        bucket.take(readings, Instant::now()).map_err(|retry_after| LimitExceeded::Rate {
            limit: self.limits.readings_per_second.unwrap_or(0),
            retry_after,
        })
    }
}

/// Why a key's request is refused (429).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    #[error("this key may write {limit} readings a second and has used them: retry after the time Retry-After gives")]
    Rate { limit: u64, retry_after: Duration },
    #[error("this key may run {limit} requests at once and all are running: retry when one has ended")]
    Concurrency { limit: u32 },
}

impl LimitExceeded {
    /// When to retry: the rate's debt, or one second for a concurrency slot.
    pub fn retry_after(&self) -> Duration {
        match self {
            LimitExceeded::Rate { retry_after, .. } => *retry_after,
            LimitExceeded::Concurrency { .. } => Duration::from_secs(1),
        }
    }
}

/// A token bucket of `rate` tokens a second, holding at most one second's worth, that may go into debt.
#[derive(Debug, Clone)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1) as f64;
        Bucket { rate, tokens: rate, at: now }
    }

    fn take(&mut self, n: u64, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.at = now;
        if self.tokens < 0.0 {
            return Err(Duration::from_secs_f64(-self.tokens / self.rate).max(Duration::from_millis(1)));
        }
        self.tokens -= n as f64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever the request sizes and their timing, what a key is let write over a stretch of time is at most its
        /// rate times the stretch, plus one second's burst, plus the one request that went into debt; and a refusal
        /// says a wait after which the next request is admitted.
        #[test]
        fn admitted_readings_stay_within_rate_burst_and_one_request(
            rate in 1u64..10_000,
            requests in prop::collection::vec((1u64..5_000, 0u64..2_000), 1..200),
        ) {
            let start = Instant::now();
            let mut bucket = Bucket::new(rate, start);
            let (mut now, mut admitted, mut largest) = (start, 0u64, 0u64);
            for (n, gap_ms) in requests {
                now += Duration::from_millis(gap_ms);
                match bucket.take(n, now) {
                    Ok(()) => {
                        admitted += n;
                        largest = largest.max(n);
                    }
                    Err(wait) => {
                        let mut retry = bucket.clone();
                        prop_assert!(retry.take(1, now + wait + Duration::from_millis(1)).is_ok());
                    }
                }
                let elapsed = now.duration_since(start).as_secs_f64();
                prop_assert!(admitted as f64 <= rate as f64 * (elapsed + 1.0) + largest as f64 + 1e-6);
            }
        }
    }

    #[test]
    fn concurrency_is_refused_beyond_the_limit_and_given_back_when_a_request_ends() {
        let limiter = KeyLimiter::new(KeyLimits { readings_per_second: None, concurrent_requests: Some(2) }).unwrap();
        let a = limiter.enter().unwrap();
        let _b = limiter.enter().unwrap();
        assert_eq!(limiter.enter().unwrap_err(), LimitExceeded::Concurrency { limit: 2 });
        drop(a);
        assert!(limiter.enter().is_ok());
        assert!(KeyLimiter::new(KeyLimits::default()).is_none(), "no limits, no limiter");
    }
}
