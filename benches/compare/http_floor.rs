//! The HTTP floor: what the server target's HTTP/1.1 and JSON cost on this machine with no
//! lease work at all, as the SQLite floor is what its storage costs with no engine.
//!
//! A child process (this binary, `--http-floor-child`) serves `POST /v1/leases` and
//! `DELETE /v1/leases/{id}` with axum on a single-threaded tokio runtime, as `leasehold serve`
//! does, parses the same JSON bodies and answers with the same JSON shapes (leasehold's own
//! `LeaseAcquisitionResponse` and `LeaseReleaseResponse`), built in memory: no token lookup, no
//! store, no conflict check, every acquisition granted. The bench's own `HttpClient` drives it,
//! so the pairs/s it makes bound what any lease server speaking this API through that client
//! can make here, however little its leases cost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{delete, post};
use axum::{Json, Router};
use serde::Deserialize;
use uuid::Uuid;

use leasehold::{
    Lease, LeaseAcquisitionResponse, LeaseMode, LeaseReleaseResponse, LeaseStatus, Timestamp,
};

use crate::drive::BoxError;

/// The body the floor accepts: the fields the bench's client sends.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AcquireBody {
    paths: Vec<String>,
    ttl_ms: Option<u64>,
}

/// The fencing counter, so that answers carry a number that changes as leasehold's do.
#[derive(Default)]
struct Floor {
    fencing: AtomicU64,
}

/// A lease as leasehold would answer it, with the request's path and TTL.
fn lease(floor: &Floor, id: Uuid, path: String, ttl_ms: u64, status: LeaseStatus) -> Lease {
    let now = Timestamp(chrono::Utc::now().timestamp_millis());
    Lease {
        id,
        file_path: path,
        agent_id: "agent".into(),
        mode: LeaseMode::Exclusive,
        status,
        fencing_token: Some(floor.fencing.fetch_add(1, Ordering::Relaxed) + 1),
        created_at: now,
        expires_at: Timestamp(now.0 + ttl_ms as i64),
        ttl_ms,
        renewal_count: 0,
        max_renewals: None,
        updated_at: now,
        reason: None,
        seq: 0,
    }
}

/// Refuses a request without a bearer token, as the real server would (without looking it up).
fn check_bearer(headers: &HeaderMap) -> Result<(), StatusCode> {
    match headers.get("authorization").map(|v| v.as_bytes()) {
        Some(value) if value.starts_with(b"Bearer ") => Ok(()),
        _ => Err(StatusCode::UNAUTHORIZED),
    }
}

async fn acquire(
    State(floor): State<Arc<Floor>>,
    headers: HeaderMap,
    Json(body): Json<AcquireBody>,
) -> Result<(StatusCode, Json<LeaseAcquisitionResponse>), StatusCode> {
    check_bearer(&headers)?;
    let ttl_ms = body.ttl_ms.unwrap_or(600_000);
    let leases = body
        .paths
        .into_iter()
        .map(|path| lease(&floor, Uuid::now_v7(), path, ttl_ms, LeaseStatus::Active))
        .collect();
    Ok((
        StatusCode::CREATED,
        Json(LeaseAcquisitionResponse {
            leases,
            waited_ms: 0,
        }),
    ))
}

async fn release(
    State(floor): State<Arc<Floor>>,
    headers: HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<LeaseReleaseResponse>, StatusCode> {
    check_bearer(&headers)?;
    Ok(Json(LeaseReleaseResponse {
        lease: lease(
            &floor,
            id,
            "src/m0/f0.rs".into(),
            30_000,
            LeaseStatus::Released,
        ),
    }))
}

/// The child side: serve on a free loopback port, print the address, run until killed (the
/// parent's `ChildServer` sends SIGTERM; the child also dies with its parent).
pub async fn serve_child() -> Result<(), BoxError> {
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
    }
    let router = Router::new()
        .route("/v1/leases", post(acquire))
        .route("/v1/leases/{id}", delete(release))
        .with_state(Arc::new(Floor::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("{}", listener.local_addr()?);
    axum::serve(listener, router).await?;
    Ok(())
}
