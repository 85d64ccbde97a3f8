//! The renewal task: keeps the client certificate ahead of expiry while bindgate runs.

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::client_identity::ClientIdentity;
use super::registration::{Credentials, IdentityError, Registrar, RegistrationSettings, rfc3339};
use super::store::StateStore;
use crate::ngrok_api::ApiClient;

/// Longest sleep between checks, so a suspended host or a changed clock is noticed.
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest pause after a successful renewal (guards against a server issuing certificates
/// that are due at once).
pub const MIN_INTERVAL_AFTER_RENEWAL: Duration = Duration::from_secs(60);
const FAILURE_BACKOFF_BASE: Duration = Duration::from_secs(10);
const FAILURE_BACKOFF_MAX: Duration = Duration::from_secs(15 * 60);
/// Cap on the retry delay once the certificate has expired: every full handshake with the
/// ingress fails until renewal succeeds, so the API is asked again soon after it returns.
const EXPIRED_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// How long to wait before checking again, given the current certificate's renewal time.
/// `None` means renew now.
pub fn next_check(renew_at: Option<OffsetDateTime>, now: OffsetDateTime) -> Option<Duration> {
    let renew_at = renew_at?;
    if now >= renew_at {
        return None;
    }
    let until = Duration::try_from(renew_at - now).unwrap_or(MAX_CHECK_INTERVAL);
    Some(until.min(MAX_CHECK_INTERVAL))
}

/// Delay after the `failures`-th consecutive failure (1-based): 10 s doubling to 15 min, with
/// jitter in [d/2, d].
pub fn failure_backoff(failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    let full = FAILURE_BACKOFF_BASE
        .saturating_mul(1 << exp)
        .min(FAILURE_BACKOFF_MAX);
    full / 2 + (full / 2).mul_f64(unit.clamp(0.0, 1.0))
}

/// The retry delay after a failed renewal: [`failure_backoff`], capped at
/// [`EXPIRED_BACKOFF_MAX`] once the certificate (valid until `not_after`) has expired, and never
/// sleeping past half the time left before expiry, so tries come closer together as it nears
/// (but not under 1 s apart).
pub fn retry_delay(
    failures: u32,
    unit: f64,
    not_after: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Duration {
    let delay = failure_backoff(failures, unit);
    match not_after {
        Some(not_after) if now >= not_after => delay.min(EXPIRED_BACKOFF_MAX),
        Some(not_after) => {
            let until = Duration::try_from(not_after - now).unwrap_or(delay);
            delay.min((until / 2).max(Duration::from_secs(1)))
        }
        None => delay,
    }
}

/// Renews the client certificate when due (new key + CSR via PATCH), stores it, and swaps it
/// into `identity`, until `shutdown` is cancelled. If the operator was deleted meanwhile, the
/// host registers again. Failures are retried with backoff; the current certificate stays in
/// use meanwhile.
pub async fn run_renewal(
    api: ApiClient,
    store: StateStore,
    settings: RegistrationSettings,
    identity: Arc<ClientIdentity>,
    shutdown: CancellationToken,
) {
    let mut failures = 0u32;
    let mut just_renewed = false;
    if let Ok(info) = identity.certificate_info() {
        crate::telemetry::set_certificate_expiry(info.not_after.unix_timestamp());
    }
    loop {
        let renew_at = identity
            .certificate_info()
            .ok()
            .map(|info| info.renew_at(settings.renew_before));
        let wait = match next_check(renew_at, OffsetDateTime::now_utc()) {
            Some(wait) => wait,
            None if just_renewed => MIN_INTERVAL_AFTER_RENEWAL,
            None => match renew_once(&api, &store, &settings, &identity).await {
                Ok(creds) => {
                    failures = 0;
                    just_renewed = true;
                    crate::telemetry::certificate_renewal(true);
                    crate::telemetry::set_certificate_expiry(creds.not_after.unix_timestamp());
                    tracing::info!(
                        operator_id = %creds.operator_id,
                        "client certificate renewed; valid until {}",
                        rfc3339(creds.not_after)
                    );
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    crate::telemetry::certificate_renewal(false);
                    let now = OffsetDateTime::now_utc();
                    let not_after = identity.certificate_info().ok().map(|i| i.not_after);
                    let delay = retry_delay(failures, rand::random::<f64>(), not_after, now);
                    match not_after {
                        Some(not_after) if now >= not_after => tracing::error!(
                            failures,
                            "client certificate expired at {}: new connections to the ingress \
                             fail until renewal succeeds; retrying in {delay:?}: {e}",
                            rfc3339(not_after)
                        ),
                        _ => tracing::warn!(
                            failures,
                            "client certificate renewal failed; retrying in {delay:?}: {e}"
                        ),
                    }
                    delay
                }
            },
        };
        just_renewed = false;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

pub(crate) async fn renew_once(
    api: &ApiClient,
    store: &StateStore,
    settings: &RegistrationSettings,
    identity: &ClientIdentity,
) -> Result<Credentials, IdentityError> {
    let creds = match Registrar::renew(api, store, settings).await {
        Err(e) if e.api_error().is_some_and(|a| a.is_not_found()) => {
            tracing::warn!("the ngrok operator no longer exists; registering again");
            Registrar::ensure(api, store, settings).await?
        }
        other => other?,
    };
    identity.replace(&creds.cert_pem, &creds.key)?;
    Ok(creds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_at_most_hourly_and_renews_when_due() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1000);
        assert_eq!(next_check(None, now), None);
        assert_eq!(next_check(Some(now), now), None);
        assert_eq!(
            next_check(Some(now - time::Duration::seconds(1)), now),
            None
        );
        assert_eq!(
            next_check(Some(now + time::Duration::seconds(90)), now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            next_check(Some(now + time::Duration::days(20)), now),
            Some(MAX_CHECK_INTERVAL)
        );
    }

    #[test]
    fn failure_backoff_grows_and_is_capped() {
        assert_eq!(failure_backoff(1, 1.0), Duration::from_secs(10));
        assert_eq!(failure_backoff(1, 0.0), Duration::from_secs(5));
        assert_eq!(failure_backoff(3, 1.0), Duration::from_secs(40));
        assert_eq!(failure_backoff(40, 1.0), FAILURE_BACKOFF_MAX);
    }

    #[test]
    fn retries_never_sleep_past_expiry_and_stay_brisk_after_it() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(1000);
        let in_a_day = Some(now + time::Duration::days(1));
        assert_eq!(retry_delay(3, 1.0, in_a_day, now), Duration::from_secs(40));
        assert_eq!(retry_delay(40, 1.0, in_a_day, now), FAILURE_BACKOFF_MAX);
        let soon = Some(now + time::Duration::seconds(20));
        assert_eq!(retry_delay(3, 1.0, soon, now), Duration::from_secs(10));
        let now_ish = Some(now + time::Duration::milliseconds(10));
        assert_eq!(retry_delay(3, 1.0, now_ish, now), Duration::from_secs(1));
        let expired = Some(now - time::Duration::seconds(1));
        assert_eq!(retry_delay(40, 1.0, expired, now), EXPIRED_BACKOFF_MAX);
        assert_eq!(retry_delay(1, 0.0, expired, now), Duration::from_secs(5));
        assert_eq!(retry_delay(40, 1.0, None, now), FAILURE_BACKOFF_MAX);
    }
}
