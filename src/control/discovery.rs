//! The discovery source: polls the ngrok API for this operator's bound endpoints, normalizes and
//! aggregates their URLs (PROTOCOL.md §2), and hands each complete, good result to the control
//! loop. A failed poll changes nothing: the last good set stays in force.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::ControlEvent;
use crate::bound_url::BoundUrl;
use crate::ngrok_api::{ApiClient, ApiError, Endpoint};
use crate::telemetry;

/// Canonical bound endpoints from one API answer, plus a line for each one skipped.
pub fn normalize(endpoints: &[Endpoint]) -> (BTreeSet<BoundUrl>, BTreeSet<String>) {
    let mut good = BTreeSet::new();
    let mut skipped = BTreeSet::new();
    for ep in endpoints {
        let id = ep.id.as_deref().unwrap_or("(no id)");
        let Some(url) = ep.url.as_deref().or(ep.public_url.as_deref()) else {
            skipped.insert(format!("{id}: no url"));
            continue;
        };
        match BoundUrl::parse(url, ep.proto.as_deref()) {
            Ok(u) => {
                good.insert(u);
            }
            Err(e) => {
                skipped.insert(format!("{id}: {e}"));
            }
        }
    }
    (good, skipped)
}

/// Polls every `interval` (read afresh each round, so a reload can change it) until `shutdown`.
/// `operator_id` is read afresh each round too (a rotated identity directory may name another
/// operator).
pub async fn poll(
    api: ApiClient,
    operator_id: watch::Receiver<String>,
    interval: watch::Receiver<Duration>,
    events: mpsc::Sender<ControlEvent>,
    shutdown: CancellationToken,
) {
    let mut failures: u32 = 0;
    let mut last_skipped = BTreeSet::new();
    loop {
        telemetry::discovery_poll();
        let operator = operator_id.borrow().clone();
        let wait = match api.list_bound_endpoints(&operator).await {
            Ok(endpoints) => {
                if failures > 0 {
                    tracing::info!("ngrok API reachable again; discovery resumed");
                }
                failures = 0;
                let (good, skipped) = normalize(&endpoints);
                // Log skipped endpoints when the set changes, not on every poll.
                for line in skipped.difference(&last_skipped) {
                    tracing::warn!("bound endpoint skipped: {line}");
                }
                last_skipped = skipped;
                if events.send(ControlEvent::Discovered(good)).await.is_err() {
                    return;
                }
                *interval.borrow()
            }
            Err(e @ ApiError::Unauthorized { .. }) => {
                telemetry::discovery_failed();
                tracing::error!(
                    "discovery stopped: {e}; static listeners and the endpoints discovered last \
                     keep serving; restart with a valid key to discover again"
                );
                let _ = events
                    .send(ControlEvent::DiscoveryStopped(e.to_string()))
                    .await;
                return;
            }
            Err(e) => {
                telemetry::discovery_failed();
                failures += 1;
                tracing::warn!(
                    failures,
                    "bound endpoint poll failed; keeping the last good endpoints: {e}"
                );
                if events
                    .send(ControlEvent::DiscoveryFailed(e.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                // Back off up to 4 poll intervals; the API client already retried within the poll.
                let base = *interval.borrow();
                base.saturating_mul(failures.min(4))
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(id: &str, url: Option<&str>, public_url: Option<&str>, proto: Option<&str>) -> Endpoint {
        serde_json::from_value(serde_json::json!({
            "id": id, "url": url, "public_url": public_url, "proto": proto,
        }))
        .unwrap()
    }

    #[test]
    fn aggregates_canonical_urls_and_skips_bad_ones() {
        let (good, skipped) = normalize(&[
            ep("a", Some("http://web.ns"), None, Some("http")),
            ep("b", Some("http://web.ns:80"), None, None),
            ep("c", None, Some("tcp://db.ns:5432"), Some("tcp")),
            ep("d", Some("tcp://db.ns"), None, None),
            ep("e", Some("http://a.b.c"), None, None),
            ep("f", None, None, None),
        ]);
        let urls: Vec<String> = good.iter().map(|u| u.to_string()).collect();
        assert_eq!(urls, vec!["http://web.ns:80", "tcp://db.ns:5432"]);
        assert_eq!(skipped.len(), 3);
        assert!(
            skipped
                .iter()
                .any(|s| s.starts_with("d:") && s.contains("explicit port"))
        );
        assert!(skipped.iter().any(|s| s.starts_with("f: no url")));
    }
}
