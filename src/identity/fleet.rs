//! Fleet hygiene for hosts that register their own operator (`ngrok.registration.fleet`): a
//! heartbeat in the operator's `metadata`, and reaping of fleet members whose heartbeat stopped
//! (a host killed without deregistering leaves a ghost operator behind, and ngrok keeps it).
//!
//! Only operators whose metadata names the same fleet are ever deleted, and never our own.

use std::time::Duration;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio_util::sync::CancellationToken;

use super::registration::{RegistrationSettings, metadata_fleet, metadata_for, rfc3339};
use super::store::StateStore;
use crate::ngrok_api::{ApiClient, Operator, OperatorUpdate};

/// The members of `fleet` other than `ours` silent for longer than `reap_after`, with when they
/// were last heard of. Both ends are the API's clock: a member's last write is its `updated_at`
/// (each heartbeat bumps it), and "now" is our own operator's `updated_at`, just bumped by our
/// heartbeat. No member's clock counts, so a host whose clock is an hour off neither reaps live
/// peers nor gets reaped while it beats. Without our own operator in the list, nobody is reaped.
pub fn silent_members<'a>(
    operators: &'a [Operator],
    fleet: &str,
    ours: &str,
    reap_after: Duration,
) -> Vec<(&'a Operator, OffsetDateTime)> {
    let updated = |op: &Operator| OffsetDateTime::parse(&op.updated_at, &Rfc3339).ok();
    let Some(now) = operators.iter().find(|op| op.id == ours).and_then(updated) else {
        return Vec::new();
    };
    operators
        .iter()
        .filter(|op| op.id != ours && metadata_fleet(&op.metadata).as_deref() == Some(fleet))
        .filter_map(|op| {
            let last = updated(op)?;
            (now - last > reap_after).then_some((op, last))
        })
        .collect()
}

/// Writes the heartbeat every `heartbeat_interval` and reaps silent members (on start, then
/// after every heartbeat), until `shutdown`. Failures are logged and tried again next round.
pub async fn run_fleet(
    api: ApiClient,
    store: StateStore,
    settings: RegistrationSettings,
    shutdown: CancellationToken,
) {
    let Some(fleet) = settings.fleet.clone() else {
        return;
    };
    loop {
        // Read each round: a renewal that found our operator gone registers a new one.
        match (store.load_operator(), store.node_id()) {
            (Ok(Some(saved)), Ok(node_id)) => {
                let ours = saved.operator_id;
                let update = OperatorUpdate {
                    metadata: Some(metadata_for(&settings, &node_id)),
                    ..Default::default()
                };
                match api.update_operator(&ours, &update).await {
                    // Our `updated_at` is "now" for the reaping: only fresh from a heartbeat.
                    Ok(_) => reap(&api, &fleet, &ours, settings.reap_after).await,
                    Err(e) => tracing::warn!(operator_id = %ours, "fleet heartbeat failed: {e}"),
                }
            }
            (Ok(None), _) => {}
            (Err(e), _) | (_, Err(e)) => tracing::warn!("fleet heartbeat: {e}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(settings.heartbeat_interval) => {}
        }
    }
}

async fn reap(api: &ApiClient, fleet: &str, ours: &str, reap_after: Duration) {
    let operators = match api.list_operators().await {
        Ok(ops) => ops,
        Err(e) => {
            tracing::warn!("fleet {fleet}: cannot list operators to reap silent members: {e}");
            return;
        }
    };
    for (op, last) in silent_members(&operators, fleet, ours, reap_after) {
        match api.delete_operator(&op.id).await {
            Ok(()) => tracing::info!(
                operator_id = %op.id,
                fleet,
                "reaped a silent fleet member (last heard of {}, in the API's clock)",
                rfc3339(last)
            ),
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                tracing::warn!(operator_id = %op.id, fleet, "cannot reap a silent fleet member: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(id: &str, metadata: &str, updated_at: &str) -> Operator {
        serde_json::from_value(serde_json::json!({
            "id": id, "metadata": metadata, "updated_at": updated_at,
        }))
        .unwrap()
    }

    #[test]
    fn only_silent_members_of_the_same_fleet_other_than_us_are_reaped() {
        // The heartbeats in the metadata are each member's own clock, off by hours here; only
        // the API's `updated_at` counts, measured from ours.
        let skewed =
            r#"{"bindgate":{"node_id":"a","fleet":"gw","heartbeat":"2020-01-01T00:00:00Z"}}"#;
        let ahead =
            r#"{"bindgate":{"node_id":"b","fleet":"gw","heartbeat":"2030-01-01T00:00:00Z"}}"#;
        let other =
            r#"{"bindgate":{"node_id":"c","fleet":"other","heartbeat":"2020-01-01T00:00:00Z"}}"#;
        let ops = [
            op("old", ahead, "2026-12-06T10:00:00Z"),
            op("fresh", skewed, "2026-12-06T11:59:00Z"),
            op("other", other, "2020-01-01T00:00:00Z"),
            op("plain", "", "2020-01-01T00:00:00Z"),
            op("us", skewed, "2026-12-06T12:00:00Z"),
            op(
                "no-beat",
                r#"{"bindgate":{"fleet":"gw"}}"#,
                "2026-12-06T09:00:00Z",
            ),
        ];
        let reaped: Vec<&str> = silent_members(&ops, "gw", "us", Duration::from_secs(3600))
            .iter()
            .map(|(o, _)| o.id.as_str())
            .collect();
        assert_eq!(reaped, ["old", "no-beat"]);
        // Without our own operator (and its time) in the list, nobody is reaped.
        assert!(silent_members(&ops[..4], "gw", "us", Duration::from_secs(3600)).is_empty());
    }
}
