//! The server's metrics, in one Prometheus registry per server: lease operations by result,
//! expiries and force-releases (from the engine's events), gauges of live leases and waiters
//! (read from the database at scrape time), latencies, and HTTP requests by route and status.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};
use tokio::sync::broadcast;

use crate::model::{EventType, HistoryEvent};
use crate::server::error::{drain, ApiError, MAX_BODY_BYTES};
use crate::server::AppState;

/// Latency buckets for lease operations and HTTP requests, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets for time spent waiting in the queue, in seconds.
const WAIT_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
];

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    /// `leasehold_acquisitions_total{result}`: `granted` or the error code.
    pub acquisitions: IntCounterVec,
    /// `leasehold_renewals_total{result}`: `renewed` or the error code.
    pub renewals: IntCounterVec,
    /// `leasehold_releases_total{result}`: `released` or the error code.
    pub releases: IntCounterVec,
    /// `leasehold_expiries_total`: leases marked expired by cleanup in this process.
    pub expiries: IntCounter,
    /// `leasehold_force_releases_total`: leases force-released in this process.
    pub force_releases: IntCounter,
    /// `leasehold_active_leases`: leases held now, in the whole database.
    pub active_leases: IntGauge,
    /// `leasehold_waiters`: queued waits alive now, in the whole database.
    pub waiters: IntGauge,
    /// `leasehold_operation_duration_seconds{operation}`: time in the engine per call.
    pub operation_seconds: HistogramVec,
    /// `leasehold_wait_duration_seconds`: time acquisitions spent in the queue, granted or not.
    pub wait_seconds: Histogram,
    /// `leasehold_http_requests_total{method,route,status}`.
    pub http_requests: IntCounterVec,
    /// `leasehold_http_request_duration_seconds{method,route}`.
    pub http_seconds: HistogramVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// A fresh registry with every metric at zero.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let counter = |name: &str, help: &str| {
            let metric = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str| {
            let metric = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let histogram_vec = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let metric = HistogramVec::new(opts, labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let wait_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "leasehold_wait_duration_seconds",
                "Time acquisitions spent waiting in the queue, granted or timed out",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(wait_seconds.clone()))
            .expect("unique metric");
        Metrics {
            acquisitions: counter_vec(
                "leasehold_acquisitions_total",
                "Acquisition requests by result: granted, or the error code",
                &["result"],
            ),
            renewals: counter_vec(
                "leasehold_renewals_total",
                "Renewal requests by result: renewed, or the error code",
                &["result"],
            ),
            releases: counter_vec(
                "leasehold_releases_total",
                "Release requests by result: released, or the error code",
                &["result"],
            ),
            expiries: counter(
                "leasehold_expiries_total",
                "Leases marked expired by cleanup in this server",
            ),
            force_releases: counter(
                "leasehold_force_releases_total",
                "Leases force-released in this server",
            ),
            active_leases: gauge("leasehold_active_leases", "Leases held now"),
            waiters: gauge("leasehold_waiters", "Queued waits alive now"),
            operation_seconds: histogram_vec(
                "leasehold_operation_duration_seconds",
                "Time lease operations took in the engine, waiting included",
                &["operation"],
            ),
            wait_seconds,
            http_requests: counter_vec(
                "leasehold_http_requests_total",
                "HTTP requests by method, matched route and status",
                &["method", "route", "status"],
            ),
            http_seconds: histogram_vec(
                "leasehold_http_request_duration_seconds",
                "Time to answer HTTP requests, by method and matched route",
                &["method", "route"],
            ),
            registry,
        }
    }

    /// Counts an event the engine committed (expiries and force-releases are counted here
    /// because background cleanup makes them outside any request).
    pub fn observe_event(&self, event: &HistoryEvent) {
        match event.event_type {
            EventType::Expired => self.expiries.inc(),
            EventType::ForceReleased => self.force_releases.inc(),
            _ => {}
        }
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Counts the engine's events into `metrics` until the channel closes.
pub(crate) async fn count_events(
    metrics: std::sync::Arc<Metrics>,
    mut events: broadcast::Receiver<HistoryEvent>,
) {
    loop {
        match events.recv().await {
            Ok(event) => metrics.observe_event(&event),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "metrics missed engine events");
            }
            Err(broadcast::error::RecvError::Closed) => break,
        }
    }
}

/// Middleware: refuses oversized bodies by their declared length, then counts and times every
/// request by method, matched route (`unmatched` for none, so that the label set stays small)
/// and status, and logs it.
pub(crate) async fn track(State(app): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let response = if let Some(declared) = declared.filter(|n| *n > MAX_BODY_BYTES as u64) {
        let drained = drain(request.into_body(), 0).await;
        let mut response = ApiError::PayloadTooLarge.into_response();
        if !drained {
            tracing::debug!(
                declared,
                "oversized body not drained; closing the connection"
            );
            response
                .headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    } else {
        next.run(request).await
    };
    let status = response.status();
    let elapsed = started.elapsed();
    let metrics = &app.inner.metrics;
    metrics
        .http_requests
        .with_label_values(&[method.as_str(), &route, status.as_str()])
        .inc();
    metrics
        .http_seconds
        .with_label_values(&[method.as_str(), &route])
        .observe(elapsed.as_secs_f64());
    tracing::debug!(%method, %route, status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request");
    response
}
