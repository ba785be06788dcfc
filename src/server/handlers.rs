//! The route handlers. Each checks who asks, turns the request into one [`LeaseManager`] call
//! and answers with its result as JSON; the rules themselves live in the engine.
//!
//! [`LeaseManager`]: crate::LeaseManager

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::LeaseError;
use crate::model::{
    HistoryQuery, Lease, LeaseAcquisitionRequest, LeaseAcquisitionResponse, LeaseMode, LeaseQuery,
    LeaseReleaseRequest, LeaseRenewalRequest, PathStatus,
};
use crate::server::auth::Caller;
use crate::server::error::{ApiError, JsonBody, LeaseId, QueryParams, Segment};
use crate::server::AppState;
use crate::settings::Settings;
use crate::time::Timestamp;

/// The OpenAPI document served at `/v1/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// How long a waiter given up at shutdown may take to leave the queue before its answer.
const SETTLE_AT_SHUTDOWN: Duration = Duration::from_secs(2);

impl AppState {
    /// Runs one engine call, timing it under `operation`.
    async fn timed<T>(&self, operation: &str, call: impl Future<Output = T>) -> T {
        let started = Instant::now();
        let out = call.await;
        self.inner
            .metrics
            .operation_seconds
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        out
    }

    /// After a waiting acquisition was given up at shutdown, waits (briefly) until the engine
    /// has taken its queue entries out, so that a restarted server does not find them blocking
    /// the queue.
    async fn settle_cancelled_wait(&self, agent: &str, paths: &[String]) {
        let deadline = Instant::now() + SETTLE_AT_SHUTDOWN;
        loop {
            let mut still_queued = false;
            for path in paths {
                if let Ok(status) = self.inner.manager.get_path_status(path).await {
                    still_queued |= status.waiters.iter().any(|w| w.agent_id == agent);
                }
            }
            if !still_queued || Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Treats `?key=` as if the key were absent.
fn given(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// The body of `POST /v1/leases`. The agent comes from the token; `agent_id`, if sent, must be
/// the token's.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AcquireBody {
    paths: Vec<String>,
    ttl_ms: Option<u64>,
    mode: Option<LeaseMode>,
    wait_ms: Option<u64>,
    max_renewals: Option<u32>,
    reason: Option<String>,
    agent_id: Option<String>,
}

/// `POST /v1/leases`: takes leases on every path or none, holding the request open while it
/// waits in the queue.
pub(crate) async fn acquire(
    State(app): State<AppState>,
    caller: Caller,
    JsonBody(body): JsonBody<AcquireBody>,
) -> Result<(StatusCode, Json<LeaseAcquisitionResponse>), ApiError> {
    caller.check_agent(body.agent_id.as_deref())?;
    let waits = body.wait_ms.unwrap_or(0) > 0;
    let request = LeaseAcquisitionRequest {
        agent_id: caller.agent().to_string(),
        paths: body.paths,
        mode: body.mode.unwrap_or_default(),
        ttl_ms: body.ttl_ms,
        wait_ms: body.wait_ms,
        max_renewals: body.max_renewals,
        reason: body.reason,
    };
    let paths = request.paths.clone();
    let mut shutdown = app.inner.shutdown.subscribe();
    let manager = app.inner.manager.clone();
    // The acquisition future lives only inside the select: when shutdown wins it is dropped
    // there, which takes its queue entries out (the engine's drop guard).
    let outcome = app
        .timed("acquire", async {
            tokio::select! {
                outcome = manager.acquire_lease(request) => Some(outcome),
                _ = shutdown.wait_for(|stopping| *stopping) => None,
            }
        })
        .await;
    let metrics = &app.inner.metrics;
    let Some(outcome) = outcome else {
        metrics
            .acquisitions
            .with_label_values(&["shutting_down"])
            .inc();
        app.settle_cancelled_wait(caller.agent(), &paths).await;
        return Err(ApiError::ShuttingDown);
    };
    match outcome {
        Ok(response) => {
            metrics.acquisitions.with_label_values(&["granted"]).inc();
            if waits {
                metrics
                    .wait_seconds
                    .observe(response.waited_ms as f64 / 1000.0);
            }
            Ok((StatusCode::CREATED, Json(response)))
        }
        Err(error) => {
            metrics
                .acquisitions
                .with_label_values(&[error.code()])
                .inc();
            if let LeaseError::WaitTimeout { waited_ms, .. } = &error {
                metrics.wait_seconds.observe(*waited_ms as f64 / 1000.0);
            }
            Err(error.into())
        }
    }
}

/// The query of `GET /v1/leases`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    agent: Option<String>,
    path: Option<String>,
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/leases`: active leases (or, with `status=all`, every lease), oldest first.
pub(crate) async fn list_leases(
    State(app): State<AppState>,
    _caller: Caller,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let include_inactive = match given(query.status).as_deref() {
        None | Some("active") => false,
        Some("all") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "status",
                format!("{other:?} is neither active nor all"),
            ))
        }
    };
    let query = LeaseQuery {
        agent_id: given(query.agent),
        path: given(query.path),
        include_inactive,
        limit: query.limit,
    };
    let leases = app
        .timed("list", app.inner.manager.get_all_leases(query))
        .await?;
    Ok(Json(json!({ "leases": leases })))
}

/// `GET /v1/leases/{id}`: one lease, with its status as of now.
pub(crate) async fn get_lease(
    State(app): State<AppState>,
    _caller: Caller,
    LeaseId(id): LeaseId,
) -> Result<Json<Lease>, ApiError> {
    Ok(Json(
        app.timed("get", app.inner.manager.get_lease(id)).await?,
    ))
}

/// The body of `POST /v1/leases/{id}/renew` (may be empty).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RenewBody {
    ttl_ms: Option<u64>,
    agent_id: Option<String>,
}

/// `POST /v1/leases/{id}/renew`: extends a lease of the caller's.
pub(crate) async fn renew(
    State(app): State<AppState>,
    caller: Caller,
    LeaseId(lease_id): LeaseId,
    JsonBody(body): JsonBody<RenewBody>,
) -> Result<Json<Lease>, ApiError> {
    caller.check_agent(body.agent_id.as_deref())?;
    let request = LeaseRenewalRequest {
        lease_id,
        agent_id: caller.agent().to_string(),
        ttl_ms: body.ttl_ms,
    };
    let outcome = app
        .timed("renew", app.inner.manager.renew_lease(request))
        .await;
    let result = outcome.as_ref().map_or_else(|e| e.code(), |_| "renewed");
    app.inner
        .metrics
        .renewals
        .with_label_values(&[result])
        .inc();
    Ok(Json(outcome?.lease))
}

/// The body of `DELETE /v1/leases/{id}` (usually empty).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReleaseBody {
    agent_id: Option<String>,
}

/// `DELETE /v1/leases/{id}`: gives back a lease of the caller's.
pub(crate) async fn release(
    State(app): State<AppState>,
    caller: Caller,
    LeaseId(lease_id): LeaseId,
    JsonBody(body): JsonBody<ReleaseBody>,
) -> Result<Json<Lease>, ApiError> {
    caller.check_agent(body.agent_id.as_deref())?;
    let request = LeaseReleaseRequest {
        lease_id,
        agent_id: caller.agent().to_string(),
    };
    let outcome = app
        .timed("release", app.inner.manager.release_lease(request))
        .await;
    let result = outcome.as_ref().map_or_else(|e| e.code(), |_| "released");
    app.inner
        .metrics
        .releases
        .with_label_values(&[result])
        .inc();
    Ok(Json(outcome?.lease))
}

/// The query of `GET /v1/status`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StatusQuery {
    path: String,
}

/// `GET /v1/status?path=P`: who holds a path and who waits for it.
pub(crate) async fn status(
    State(app): State<AppState>,
    _caller: Caller,
    QueryParams(query): QueryParams<StatusQuery>,
) -> Result<Json<PathStatus>, ApiError> {
    Ok(Json(
        app.timed("status", app.inner.manager.get_path_status(&query.path))
            .await?,
    ))
}

/// The body of `POST /v1/agents/{agent}/force-release`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ForceReleaseBody {
    reason: String,
}

/// `POST /v1/agents/{agent}/force-release` (admin): releases every lease of an agent.
pub(crate) async fn force_release(
    State(app): State<AppState>,
    caller: Caller,
    Segment(agent): Segment,
    JsonBody(body): JsonBody<ForceReleaseBody>,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin("force-release")?;
    let released = app
        .timed(
            "force_release",
            app.inner
                .manager
                .force_release_agent_leases(&agent, &body.reason),
        )
        .await?;
    tracing::info!(
        admin = caller.agent(),
        agent,
        released,
        reason = body.reason,
        "force-release"
    );
    Ok(Json(json!({ "released": released })))
}

/// `POST /v1/cleanup` (admin): marks leases past their expiry.
pub(crate) async fn cleanup(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin("cleanup")?;
    let expired = app
        .timed("cleanup", app.inner.manager.cleanup_expired_leases())
        .await?;
    Ok(Json(json!({ "expired": expired })))
}

/// `POST /v1/history/purge` (admin): deletes history older than the retention setting.
pub(crate) async fn purge_history(
    State(app): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    caller.require_admin("purging history")?;
    let purged = app
        .timed("purge_history", app.inner.manager.purge_history())
        .await?;
    Ok(Json(json!({ "purged": purged })))
}

/// The query of `GET /v1/history`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HistoryParams {
    path: Option<String>,
    agent: Option<String>,
    since: Option<String>,
    until: Option<String>,
    after_id: Option<i64>,
    limit: Option<u32>,
    order: Option<String>,
}

/// Reads a time given as RFC 3339 or as milliseconds since the Unix epoch.
fn parse_time(what: &str, text: Option<String>) -> Result<Option<Timestamp>, ApiError> {
    let Some(text) = given(text) else {
        return Ok(None);
    };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(Timestamp(ms)));
    }
    Timestamp::parse_rfc3339(&text).map(Some).ok_or_else(|| {
        ApiError::invalid(
            what,
            format!("{text:?} is neither an RFC 3339 time nor milliseconds since the epoch"),
        )
    })
}

/// `GET /v1/history`: history events, oldest first unless `order=newest`.
pub(crate) async fn history(
    State(app): State<AppState>,
    _caller: Caller,
    QueryParams(params): QueryParams<HistoryParams>,
) -> Result<Json<Value>, ApiError> {
    let newest_first = match given(params.order).as_deref() {
        None | Some("oldest") => false,
        Some("newest") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("{other:?} is neither oldest nor newest"),
            ))
        }
    };
    let query = HistoryQuery {
        path: given(params.path),
        agent_id: given(params.agent),
        since: parse_time("since", params.since)?,
        until: parse_time("until", params.until)?,
        after_id: params.after_id,
        limit: params.limit,
        newest_first,
    };
    let events = app
        .timed("history", app.inner.manager.get_history(query))
        .await?;
    Ok(Json(json!({ "events": events })))
}

/// `GET /v1/config`: the settings in force.
pub(crate) async fn get_config(
    State(app): State<AppState>,
    _caller: Caller,
) -> Result<Json<Settings>, ApiError> {
    Ok(Json(
        app.timed("get_settings", app.inner.manager.get_settings())
            .await?,
    ))
}

/// The body of `PUT /v1/config/{key}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingBody {
    value: Value,
}

/// `PUT /v1/config/{key}` (admin): changes one setting; answers with all of them.
pub(crate) async fn put_config(
    State(app): State<AppState>,
    caller: Caller,
    Segment(key): Segment,
    JsonBody(body): JsonBody<SettingBody>,
) -> Result<Json<Settings>, ApiError> {
    caller.require_admin("changing settings")?;
    let value = match body.value {
        Value::String(text) => text,
        Value::Number(number) => number.to_string(),
        Value::Bool(flag) => flag.to_string(),
        other => {
            return Err(ApiError::invalid(
                "value",
                format!("a setting is a string, a number or a boolean, not {other}"),
            ))
        }
    };
    let settings = app
        .timed(
            "update_setting",
            app.inner.manager.update_setting(&key, &value),
        )
        .await?;
    tracing::info!(admin = caller.agent(), key, value, "setting changed");
    Ok(Json(settings))
}

/// `GET /v1/whoami`: the agent the token acts as, and whether it is an admin token.
pub(crate) async fn whoami(caller: Caller) -> Json<Value> {
    Json(json!({
        "agent_id": caller.0.agent_id,
        "admin": caller.0.admin,
        "token_id": caller.0.token_id,
    }))
}

/// `GET /metrics`: every metric in the Prometheus text format.
pub(crate) async fn metrics(State(app): State<AppState>, _caller: Caller) -> Response {
    let tokens = app.inner.tokens.clone();
    match tokio::task::spawn_blocking(move || tokens.live_counts()).await {
        Ok(Ok((active, waiting))) => {
            app.inner.metrics.active_leases.set(active as i64);
            app.inner.metrics.waiters.set(waiting as i64);
        }
        Ok(Err(error)) => tracing::warn!(%error, "cannot count live leases for the gauges"),
        Err(error) => tracing::warn!(%error, "gauge task failed"),
    }
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        app.inner.metrics.render(),
    )
        .into_response()
}

/// `GET /healthz` (no token): whether the server can read its database.
pub(crate) async fn healthz(State(app): State<AppState>) -> Response {
    match app.inner.manager.get_settings().await {
        Ok(_) => Json(json!({ "status": "ok" })).into_response(),
        Err(error) => {
            tracing::error!(%error, "health check cannot read the database");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable" })),
            )
                .into_response()
        }
    }
}

/// `GET /v1/openapi.json`: the description of every route.
pub(crate) async fn openapi(_caller: Caller) -> Response {
    ([(CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Answers a path no route has.
pub(crate) async fn no_route(request: axum::extract::Request) -> ApiError {
    ApiError::NoRoute {
        method: request.method().clone(),
        path: request.uri().path().to_string(),
    }
}

/// Answers a route asked with a method it does not take.
pub(crate) async fn method_not_allowed(request: axum::extract::Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: request.method().clone(),
        path: request.uri().path().to_string(),
    }
}
