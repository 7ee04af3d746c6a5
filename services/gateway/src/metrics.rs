//! `/metrics`: the gateway's own request figures, its live notifications
//! (open `/events` streams, webhook deliveries and failed attempts per
//! subscription) and, read at each scrape, the system's: events in the log,
//! the projection's applied sequence and lag, the storage the service
//! account uses against its limit and the log's share of it, the
//! notifier's pending, sent and late reminders.
//!
//! The system figures are asked of the projection (`upr.query.status`) and
//! the notifier (`upr.notifier.status`) when Prometheus scrapes, not kept
//! here, so they are never older than the scrape. A source that does not
//! answer is reported as `upr_source_up{source="..."} 0` and its figures
//! are left out rather than repeated stale: an alert on lag then fires on
//! the missing source, not on a frozen number.

use std::{sync::Arc, time::Instant};

use axum::{
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use prometheus_client::{
    encoding::{
        EncodeLabelSet,
        text::{encode_eof, encode_registry},
    },
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde_json::Value;
use upr_nats::contract::{notifier, query};

use crate::http::AppState;

/// The exposition's media type (the `OpenMetrics` text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of one request count.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// The route's template (`/api/v1/reviews/{country}/{session}`), or
    /// `unmatched`: never the raw path, so a client cannot create series.
    route: String,
    method: String,
    status: u16,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

/// The gateway's own figures, shared by every request.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 8 s: a query answers in milliseconds, one waiting for
    // min_seq in up to 5 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 14,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("upr_gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by route, method and status",
            requests.clone(),
        );
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response head, by route",
            latency.clone(),
        );
        Self {
            registry,
            requests,
            latency,
        }
    }
}

/// Middleware counting every answer by route, method and status.
pub async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "OPTIONS" | "PATCH") => m.to_string(),
        _ => "other".to_string(),
    };
    let response = next.run(request).await;
    metrics
        .latency
        .get_or_create(&RouteLabels {
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route,
            method,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

/// The system's figures, as read at one scrape.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SystemFigures {
    /// `upr.query.status`: `(applied_seq, stream_last_seq)`.
    pub projection: Option<(u64, u64)>,
    /// `upr.query.status`: the storage figures, when it gave them.
    pub storage: Option<Storage>,
    /// `upr.notifier.status`: `(pending, sent, late)`.
    pub notifier: Option<(u64, u64, u64)>,
}

/// What the service account's JetStream stores, from `upr.query.status`:
/// the figures behind an alert before the log reaches its limit (at the
/// limit new events are refused; docs/operations.md, "Storage").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Storage {
    /// `storage_bytes`: every stream and bucket of the account together.
    pub bytes: u64,
    /// `storage_max_bytes`: the account's limit; `None` when it has none
    /// (a server without accounts).
    pub limit: Option<u64>,
    /// `stream_bytes`: the event log's share.
    pub log_bytes: u64,
}

impl SystemFigures {
    /// Reads the two status answers (`None` where a source did not answer
    /// or answered something else).
    pub fn from_answers(projection: Option<&Value>, notifier: Option<&Value>) -> Self {
        let u = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64);
        let projection = projection.filter(|v| v["ok"] == true);
        Self {
            projection: projection
                .and_then(|v| Some((u(v, "applied_seq")?, u(v, "stream_last_seq")?))),
            storage: projection.and_then(|v| {
                Some(Storage {
                    bytes: u(v, "storage_bytes")?,
                    limit: u(v, "storage_max_bytes"),
                    log_bytes: u(v, "stream_bytes")?,
                })
            }),
            notifier: notifier.and_then(|v| Some((u(v, "pending")?, u(v, "sent")?, u(v, "late")?))),
        }
    }

    /// The figures as a registry of gauges, for one exposition.
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("upr");
        let gauge = |registry: &mut Registry, name: &str, help: &str, value: u64| {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(value).unwrap_or(i64::MAX));
            registry.register(name, help, g);
        };
        let up: Family<SourceLabels, Gauge> = Family::default();
        for (source, answered) in [
            ("projection", self.projection.is_some()),
            ("notifier", self.notifier.is_some()),
        ] {
            up.get_or_create(&SourceLabels {
                source: source.to_string(),
            })
            .set(i64::from(answered));
        }
        registry.register(
            "source_up",
            "1 when the source answered its status request at this scrape",
            up,
        );
        if let Some((applied, last)) = self.projection {
            gauge(
                &mut registry,
                "events_in_log",
                "Last sequence of UPR_EVENTS: events in the log",
                last,
            );
            gauge(
                &mut registry,
                "projection_applied_seq",
                "Last event sequence the projection applied",
                applied,
            );
            gauge(
                &mut registry,
                "projection_lag",
                "Events in the log the projection has not applied yet",
                last.saturating_sub(applied),
            );
        }
        if let Some(storage) = self.storage {
            gauge(
                &mut registry,
                "storage_bytes",
                "Bytes the service account's JetStream stores, every stream and bucket together",
                storage.bytes,
            );
            if let Some(limit) = storage.limit {
                gauge(
                    &mut registry,
                    "storage_limit_bytes",
                    "The service account's JetStream storage limit; at it new events are refused",
                    limit,
                );
            }
            gauge(
                &mut registry,
                "event_log_bytes",
                "Bytes of UPR_EVENTS, the event log",
                storage.log_bytes,
            );
        }
        if let Some((pending, sent, late)) = self.notifier {
            gauge(
                &mut registry,
                "notifier_reminders_pending",
                "Reminders planned and not sent yet",
                pending,
            );
            gauge(
                &mut registry,
                "notifier_reminders_sent",
                "Reminders the answering notifier sent since it started",
                sent,
            );
            gauge(
                &mut registry,
                "notifier_reminders_late",
                "Of those, reminders sent after their time",
                late,
            );
        }
        registry
    }
}

/// The gateway's live notifications, as read at one scrape.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LiveFigures {
    /// `/events` streams open now.
    pub event_streams: u64,
    /// Per webhook subscription, in the file's order: `(name, delivered,
    /// failed attempts)` since the gateway started.
    pub webhooks: Vec<(String, u64, u64)>,
}

impl LiveFigures {
    /// Reads the hub's open streams and the webhook counters.
    pub fn read(hub: Option<&crate::events::Hub>, webhooks: &crate::webhooks::Metrics) -> Self {
        Self {
            event_streams: hub.map_or(0, |h| u64::try_from(h.clients()).unwrap_or(u64::MAX)),
            webhooks: webhooks
                .subscriptions()
                .iter()
                .map(|c| (c.name.clone(), c.delivered(), c.failed_attempts()))
                .collect(),
        }
    }

    /// The figures as a registry, for one exposition. The webhook series
    /// are counters (they only rise while the gateway runs; Prometheus'
    /// `rate()` and `increase()` handle the reset of a restart).
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("upr_gateway");
        let streams: Gauge = Gauge::default();
        streams.set(i64::try_from(self.event_streams).unwrap_or(i64::MAX));
        registry.register(
            "events_streams_open",
            "GET /events streams open now (at most UPR_SSE_MAX_CLIENTS)",
            streams,
        );
        let delivered: Family<SubscriptionLabels, Counter> = Family::default();
        let failed: Family<SubscriptionLabels, Counter> = Family::default();
        for (name, ok, failures) in &self.webhooks {
            let labels = SubscriptionLabels {
                subscription: name.clone(),
            };
            delivered.get_or_create(&labels).inc_by(*ok);
            failed.get_or_create(&labels).inc_by(*failures);
        }
        registry.register(
            "webhook_delivered",
            "Notifications a webhook receiver accepted (2xx), by subscription",
            delivered,
        );
        registry.register(
            "webhook_failed_attempts",
            "Webhook attempts that failed (non-2xx, timeout, no connection), by subscription",
            failed,
        );
        registry
    }
}

/// Label of the webhook series: the subscription's name from
/// `UPR_WEBHOOKS` (a set the operator wrote, so a bounded number).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubscriptionLabels {
    subscription: String,
}

/// Label of [`SystemFigures`]' `source_up`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: String,
}

/// The exposition: the gateway's figures, its live notifications, then the
/// system's.
pub fn exposition(metrics: &Metrics, live: &LiveFigures, system: &SystemFigures) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode_registry(&mut text, &metrics.registry);
    let _ = encode_registry(&mut text, &live.registry());
    let _ = encode_registry(&mut text, &system.registry());
    let _ = encode_eof(&mut text);
    text
}

/// `GET /metrics`.
pub async fn handler(State(state): State<AppState>) -> Response {
    let ask = |subject: &'static str| {
        let nats = state.nats.clone();
        async move {
            let message = crate::query::ask_within(
                &nats,
                subject.to_string(),
                bytes::Bytes::new(),
                crate::ops::HEALTH_TIMEOUT,
            )
            .await
            .ok()?;
            serde_json::from_slice::<Value>(&message.payload).ok()
        }
    };
    let (projection, notifier) = tokio::join!(ask(query::STATUS), ask(notifier::STATUS));
    let system = SystemFigures::from_answers(projection.as_ref(), notifier.as_ref());
    let live = LiveFigures::read(state.events.as_ref(), &state.webhooks);
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
        exposition(&state.metrics, &live, &system),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_system_figures_come_from_the_two_status_answers() {
        let figures = SystemFigures::from_answers(
            Some(
                &json!({"ok": true, "applied_seq": 90, "stream_last_seq": 100,
                         "stream_bytes": 4096, "stream_max_bytes": null,
                         "storage_bytes": 9000, "storage_max_bytes": 21_474_836_480_u64}),
            ),
            Some(&json!({"ok": true, "pending": 3, "sent": 7, "late": 1, "skipped": 0})),
        );
        assert_eq!(figures.projection, Some((90, 100)));
        assert_eq!(
            figures.storage,
            Some(Storage {
                bytes: 9000,
                limit: Some(21_474_836_480),
                log_bytes: 4096
            })
        );
        assert_eq!(figures.notifier, Some((3, 7, 1)));
        let live = LiveFigures {
            event_streams: 2,
            webhooks: vec![("chat".into(), 5, 0), ("down".into(), 0, 3)],
        };
        let text = exposition(&Metrics::default(), &live, &figures);
        for line in [
            "upr_gateway_events_streams_open 2",
            "upr_gateway_webhook_delivered_total{subscription=\"chat\"} 5",
            "upr_gateway_webhook_failed_attempts_total{subscription=\"chat\"} 0",
            "upr_gateway_webhook_delivered_total{subscription=\"down\"} 0",
            "upr_gateway_webhook_failed_attempts_total{subscription=\"down\"} 3",
            "upr_events_in_log 100",
            "upr_projection_applied_seq 90",
            "upr_projection_lag 10",
            "upr_storage_bytes 9000",
            "upr_storage_limit_bytes 21474836480",
            "upr_event_log_bytes 4096",
            "upr_notifier_reminders_pending 3",
            "upr_notifier_reminders_sent 7",
            "upr_notifier_reminders_late 1",
            "upr_source_up{source=\"projection\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn a_source_that_does_not_answer_is_down_and_its_figures_are_left_out() {
        let figures = SystemFigures::from_answers(
            Some(&json!({"ok": false, "error": {"code": "unavailable"}})),
            None,
        );
        assert_eq!(figures, SystemFigures::default());
        let text = exposition(&Metrics::default(), &LiveFigures::default(), &figures);
        assert!(
            text.contains("upr_source_up{source=\"projection\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("upr_source_up{source=\"notifier\"} 0"),
            "{text}"
        );
        assert!(!text.contains("upr_projection_lag"), "{text}");
        assert!(!text.contains("upr_storage_bytes"), "{text}");
    }

    #[test]
    fn without_an_account_limit_the_limit_series_is_left_out() {
        let figures = SystemFigures::from_answers(
            Some(&json!({"ok": true, "applied_seq": 1, "stream_last_seq": 1,
                         "stream_bytes": 300, "stream_max_bytes": null,
                         "storage_bytes": 700, "storage_max_bytes": null})),
            None,
        );
        let text = exposition(&Metrics::default(), &LiveFigures::default(), &figures);
        assert!(text.contains("upr_storage_bytes 700"), "{text}");
        assert!(text.contains("upr_event_log_bytes 300"), "{text}");
        assert!(!text.contains("upr_storage_limit_bytes"), "{text}");
        assert!(
            text.contains("# HELP upr_storage_bytes ")
                && text.contains("# TYPE upr_storage_bytes gauge"),
            "{text}"
        );
    }
}
