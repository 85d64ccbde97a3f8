//! Bounded retries with exponential backoff and jitter for API calls.

use std::future::Future;
use std::time::Duration;

use super::ApiError;

/// How often and how patiently a failed API call is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries, the first included (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry; doubles for each further one.
    pub base_backoff: Duration,
    /// Cap on one delay (also on a server's `Retry-After`).
    pub max_backoff: Duration,
    /// Randomize each delay within [d/2, d] so many hosts do not retry in lockstep.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            base_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(5),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `retry` (0 = the first retry). `unit` is a random number in
    /// [0, 1) used for jitter.
    pub fn delay(&self, retry: u32, unit: f64) -> Duration {
        let factor = 2u32.saturating_pow(retry.min(31));
        let full = self
            .base_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff);
        if self.jitter {
            let half = full / 2;
            half + half.mul_f64(unit.clamp(0.0, 1.0))
        } else {
            full
        }
    }
}

/// The outcome of one try.
pub(crate) enum Attempt<T> {
    Done(T),
    /// Worth another try; with the server's `Retry-After` when it sent one.
    Retry(ApiError, Option<Duration>),
    Fatal(ApiError),
}

/// Runs `attempt` until it succeeds, fails fatally, or the policy's tries are used up; the last
/// error is returned.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt<T>>,
{
    let attempts = policy.attempts.max(1);
    let mut tried = 0;
    loop {
        tried += 1;
        match attempt().await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fatal(e) => return Err(e),
            Attempt::Retry(e, retry_after) => {
                if tried >= attempts {
                    return Err(e);
                }
                let delay = match retry_after {
                    Some(d) => d.min(policy.max_backoff),
                    None => policy.delay(tried - 1, rand::random::<f64>()),
                };
                tracing::debug!(error = %e, ?delay, attempt = tried, "ngrok API call failed; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            attempts: 4,
            base_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            jitter: false,
        }
    }

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_stays_in_range() {
        let p = no_jitter();
        assert_eq!(p.delay(0, 0.5), Duration::from_millis(100));
        assert_eq!(p.delay(1, 0.5), Duration::from_millis(200));
        assert_eq!(p.delay(2, 0.5), Duration::from_millis(300));
        assert_eq!(p.delay(40, 0.5), Duration::from_millis(300));
        let j = RetryPolicy { jitter: true, ..p };
        assert_eq!(j.delay(1, 0.0), Duration::from_millis(100));
        assert_eq!(j.delay(1, 0.5), Duration::from_millis(150));
        assert_eq!(j.delay(1, 1.0), Duration::from_millis(200));
    }

    fn transient() -> ApiError {
        ApiError::Api {
            status: 503,
            error_code: String::new(),
            msg: String::new(),
            operation_id: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backs_off_exponentially_then_succeeds() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let out = with_retries(&no_jitter(), || async {
            match calls.fetch_add(1, Ordering::SeqCst) {
                0..=2 => Attempt::Retry(transient(), None),
                _ => Attempt::Done(7),
            }
        })
        .await;
        assert_eq!(out, Ok(7));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        // 100 + 200 + 300 (capped), and not a millisecond more.
        assert_eq!(start.elapsed(), Duration::from_millis(600));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_the_last_attempt_and_honours_retry_after() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let out: Result<(), _> = with_retries(&no_jitter(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Attempt::Retry(transient(), Some(Duration::from_millis(50)))
        })
        .await;
        assert_eq!(out, Err(transient()));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn fatal_errors_are_not_retried() {
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let out: Result<(), _> = with_retries(&no_jitter(), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Attempt::Fatal(ApiError::NotFound {
                error_code: String::new(),
                msg: String::new(),
            })
        })
        .await;
        assert!(out.unwrap_err().is_not_found());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }
}
