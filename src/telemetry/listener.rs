//! Per-listener series: built once per listener (when its spec is compiled), then counted with
//! atomic adds on every connection or request.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, SharedString};

use super::{
    ActiveGuard, FILTER_REJECTIONS, HTTP_LOCAL_RESPONSES, HTTP_REQUEST_DURATION, LISTENER_ACCEPTED,
    LISTENER_ACTIVE, LISTENER_RECEIVED_BYTES, LISTENER_SENT_BYTES, label, register, totals,
};

/// A listener's series, labelled `listener="<name>"`. Each method also counts the unlabelled
/// process-wide family it refines, where there is one, so the totals stay whole.
#[derive(Clone)]
pub struct ListenerMetrics {
    listener: SharedString,
    accepted: Counter,
    active: Gauge,
    received: Counter,
    sent: Counter,
    /// `http` listeners only: a tcp or tls listener has no requests, and 17 empty buckets per
    /// listener would be most of a scrape with many discovered endpoints.
    request_duration: Option<Histogram>,
}

impl ListenerMetrics {
    /// Registers the listener's series, with `bindgate_http_request_duration_seconds` when it
    /// serves `http` (a listener kept across snapshots keeps counting the same ones: registration
    /// by the same name returns them).
    pub fn new(listener: &str, http: bool) -> ListenerMetrics {
        let listener = label(listener);
        register(|| ListenerMetrics {
            accepted: metrics::counter!(LISTENER_ACCEPTED, "listener" => listener.clone()),
            active: metrics::gauge!(LISTENER_ACTIVE, "listener" => listener.clone()),
            received: metrics::counter!(LISTENER_RECEIVED_BYTES, "listener" => listener.clone()),
            sent: metrics::counter!(LISTENER_SENT_BYTES, "listener" => listener.clone()),
            request_duration: http.then(
                || metrics::histogram!(HTTP_REQUEST_DURATION, "listener" => listener.clone()),
            ),
            listener,
        })
    }

    /// A connection admitted (after the network filters): `bindgate_listener_connections_accepted_total`
    /// and `bindgate_connections_accepted_total`.
    pub fn accepted(&self) {
        self.accepted.increment(1);
        totals().connections_accepted.increment(1);
    }

    /// Counts a connection as active (by listener and in total) until the guard drops.
    pub fn open(&self) -> ActiveGuard {
        ActiveGuard::new(Some(self.active.clone()))
    }

    /// Bytes a finished connection (or request) moved: received from the client, sent to it.
    pub fn bytes(&self, received_from_client: u64, sent_to_client: u64) {
        self.received.increment(received_from_client);
        self.sent.increment(sent_to_client);
    }

    /// A connection turned away by a network filter before any upstream work:
    /// `bindgate_filter_rejections_total{filter,reason}` and `bindgate_connections_refused_total`.
    pub fn refused(&self, filter: &'static str, reason: &'static str) {
        self.rejected(filter, reason);
        totals().connections_refused.increment(1);
    }

    /// A request turned away by an http filter (the connection stays):
    /// `bindgate_filter_rejections_total{filter,reason}` only. Rare, so the series is looked up
    /// by its labels on each call.
    pub fn rejected(&self, filter: &'static str, reason: &'static str) {
        register(|| {
            metrics::counter!(
                FILTER_REJECTIONS,
                "listener" => self.listener.clone(),
                "filter" => filter,
                "reason" => reason
            )
        })
        .increment(1);
    }

    /// An HTTP answer bindgate gave itself (404 no route, 413, 429, 502, 503, 504...), looked up
    /// by status on each call.
    pub fn local_response(&self, status: u16) {
        register(|| {
            metrics::counter!(
                HTTP_LOCAL_RESPONSES,
                "listener" => self.listener.clone(),
                "status" => status.to_string()
            )
        })
        .increment(1);
    }

    /// One HTTP request, from its head read to its response head written.
    pub fn request_duration(&self, d: Duration) {
        if let Some(h) = &self.request_duration {
            h.record(d);
        }
    }
}

impl std::fmt::Debug for ListenerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerMetrics")
            .field("listener", &&*self.listener)
            .finish_non_exhaustive()
    }
}
