//! Retry policy for failures before any byte went upstream: exponential backoff with jitter,
//! bounded by a per-cluster retry budget so a failing upstream is not hammered.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use rand::Rng;

use crate::config::RetryConfig;

/// Budget in thousandths of a retry: each connection deposits `budget_percent * 10`, each retry
/// withdraws 1000. It starts at, and is capped to, `RESERVE` retries, so an idle proxy can still
/// retry its first failures while a sustained failure settles at `budget_percent` extra load.
const RESERVE: i64 = 10_000;

#[derive(Debug)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    deposit: i64,
    balance: AtomicI64,
}

impl RetryPolicy {
    pub fn new(cfg: &RetryConfig) -> Self {
        RetryPolicy {
            attempts: cfg.attempts.max(1),
            base_backoff: cfg.base_backoff.get(),
            max_backoff: cfg.max_backoff.get(),
            deposit: i64::from(cfg.budget_percent) * 10,
            balance: AtomicI64::new(RESERVE),
        }
    }

    /// Called once per proxied connection.
    pub fn record_request(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((b + self.deposit).min(RESERVE))
            });
    }

    /// Whether retry number `retry` (1-based) may go ahead; withdraws from the budget if so.
    pub fn allow_retry(&self, retry: u32) -> bool {
        if retry >= self.attempts {
            return false;
        }
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                (b >= 1000).then_some(b - 1000)
            })
            .is_ok()
    }

    /// Backoff before retry number `retry` (1-based): half fixed, half random ("equal jitter").
    pub fn backoff(&self, retry: u32) -> Duration {
        let exp = self
            .base_backoff
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.max_backoff);
        let half = exp / 2;
        let jitter_ms = half.as_millis() as u64;
        let jitter = if jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_ms)
        };
        half + Duration::from_millis(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn policy(attempts: u32, budget: u32) -> RetryPolicy {
        RetryPolicy::new(&RetryConfig {
            attempts,
            base_backoff: HumanDuration::from_millis(100),
            max_backoff: HumanDuration::from_millis(1000),
            budget_percent: budget,
        })
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let p = policy(5, 20);
        for (retry, cap) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let b = p.backoff(retry).as_millis() as u64;
            assert!(
                b >= cap / 2 && b <= cap,
                "retry {retry}: {b}ms not in [{}, {cap}]",
                cap / 2
            );
        }
    }

    #[test]
    fn attempts_bound_retries() {
        let p = policy(3, 20);
        assert!(p.allow_retry(1));
        assert!(p.allow_retry(2));
        assert!(!p.allow_retry(3));
        assert!(!policy(1, 20).allow_retry(1));
    }

    #[test]
    fn budget_runs_out_then_refills_with_traffic() {
        let p = policy(100, 20);
        let allowed = (0..50).filter(|_| p.allow_retry(1)).count();
        assert_eq!(allowed, 10, "the reserve allows 10 retries with no traffic");
        for _ in 0..5 {
            p.record_request();
        }
        // 5 connections at 20% earn exactly one retry.
        assert!(p.allow_retry(1));
        assert!(!p.allow_retry(1));
    }
}
