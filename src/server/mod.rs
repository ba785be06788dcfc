//! `leasehold serve`: the lease engine over HTTP (axum), for agents in containers, on other
//! hosts or in languages without the library. It authenticates every request by bearer token
//! (the token decides the agent), streams the history as Server-Sent Events, exports
//! Prometheus metrics, runs background cleanup, and shuts down gracefully.
//!
//! Architecture invariant: only this module knows HTTP and JSON-over-HTTP; it decides nothing
//! about leases. Every route is one [`LeaseManager`] call; errors are mapped to statuses in one
//! place, [`ApiError`]. The routes and their bodies are described in `docs/server.md` and in
//! the OpenAPI document served at `/v1/openapi.json`.

pub mod auth;
mod dashboard;
pub mod error;
mod events;
mod handlers;
pub mod metrics;
pub mod tokens;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post, put, MethodRouter};
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};

use crate::clock::{Clock, SystemClock};
use crate::database::{Database, LeaseEngine};
use crate::engine::Engine;
use crate::error::LeaseError;
use crate::manager::LeaseManager;
use crate::model::HistoryEvent;
use crate::store::Store;

pub use error::{ApiError, MAX_BODY_BYTES};
pub use metrics::Metrics;
pub use tokens::{
    token_create, token_list, token_revoke, Identity, NewToken, TokenInfo, TokenStore,
};

/// Where the server listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7373";

/// How often an idle event stream gets a heartbeat unless told otherwise.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);

/// How `leasehold serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The address to listen on (`--listen`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// The database holding leases, history, settings and tokens: a SQLite file or a
    /// PostgreSQL URL.
    pub db: Database,
    /// How often an idle event stream gets a heartbeat comment.
    pub heartbeat: Duration,
    /// Whether to run background cleanup and history purge (every `cleanup_interval_seconds`).
    pub background: bool,
}

impl ServeConfig {
    /// The defaults: [`DEFAULT_LISTEN`], [`DEFAULT_HEARTBEAT`], background tasks on.
    pub fn new(db: impl Into<Database>) -> ServeConfig {
        ServeConfig {
            listen: DEFAULT_LISTEN.parse().expect("a valid address"),
            db: db.into(),
            heartbeat: DEFAULT_HEARTBEAT,
            background: true,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the system said.
        source: io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] LeaseError),
    /// Serving failed.
    #[error("the server failed: {0}")]
    Io(#[from] io::Error),
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<StateInner>,
}

pub(crate) struct StateInner {
    pub(crate) manager: Arc<dyn LeaseManager>,
    /// A new receiver of the events the engine commits.
    pub(crate) subscribe: Box<dyn Fn() -> broadcast::Receiver<HistoryEvent> + Send + Sync>,
    pub(crate) tokens: Arc<TokenStore>,
    pub(crate) metrics: Arc<Metrics>,
    /// Set once the server is stopping: waiting acquisitions give up and event streams end.
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) heartbeat: Duration,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// The state for serving `engine` (any store), authenticating with `tokens`.
    pub fn new<S: Store>(
        engine: Engine<S>,
        tokens: Arc<TokenStore>,
        heartbeat: Duration,
    ) -> AppState {
        AppState::from_engine(Arc::new(engine), tokens, heartbeat)
    }

    /// The state for serving an engine over whichever store was opened.
    pub fn from_engine(
        engine: Arc<dyn LeaseEngine>,
        tokens: Arc<TokenStore>,
        heartbeat: Duration,
    ) -> AppState {
        let subscriber = engine.clone();
        AppState {
            inner: Arc::new(StateInner {
                manager: engine,
                subscribe: Box::new(move || subscriber.subscribe()),
                tokens,
                metrics: Arc::new(Metrics::new()),
                shutdown: watch::channel(false).0,
                heartbeat,
            }),
        }
    }

    /// Tells waiting acquisitions to give up (503 `shutting_down`) and event streams to end.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }
}

/// Every route: its method, its path (in axum's and OpenAPI's `{param}` syntax) and handler.
/// The router is built from this list, so the list is the router's route table.
fn routes() -> Vec<(&'static str, &'static str, MethodRouter<AppState>)> {
    vec![
        ("POST", "/v1/leases", post(handlers::acquire)),
        ("GET", "/v1/leases", get(handlers::list_leases)),
        ("GET", "/v1/leases/{id}", get(handlers::get_lease)),
        ("DELETE", "/v1/leases/{id}", delete(handlers::release)),
        ("POST", "/v1/leases/{id}/renew", post(handlers::renew)),
        ("GET", "/v1/status", get(handlers::status)),
        (
            "POST",
            "/v1/agents/{agent}/force-release",
            post(handlers::force_release),
        ),
        ("POST", "/v1/cleanup", post(handlers::cleanup)),
        ("GET", "/v1/history", get(handlers::history)),
        ("POST", "/v1/history/purge", post(handlers::purge_history)),
        ("GET", "/v1/config", get(handlers::get_config)),
        ("PUT", "/v1/config/{key}", put(handlers::put_config)),
        ("GET", "/v1/events", get(events::events)),
        ("GET", "/v1/whoami", get(handlers::whoami)),
        ("GET", "/metrics", get(handlers::metrics)),
        ("GET", "/healthz", get(handlers::healthz)),
        ("GET", "/v1/openapi.json", get(handlers::openapi)),
    ]
}

/// The `(method, path)` of every route the router serves.
pub fn route_table() -> Vec<(&'static str, &'static str)> {
    routes()
        .into_iter()
        .map(|(method, path, _)| (method, path))
        .collect()
}

/// The OpenAPI document served at `/v1/openapi.json`.
pub fn openapi_document() -> &'static str {
    handlers::OPENAPI
}

/// The HTTP API over `state`: every route of [`route_table`], JSON errors for unknown routes
/// and methods, the body limit, and request metrics.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for (_, path, handler) in routes() {
        router = router.route(path, handler);
    }
    router
        .merge(dashboard::router())
        .fallback(handlers::no_route)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(from_fn_with_state(state.clone(), metrics::track))
        .with_state(state)
}

/// A server bound to its address and ready to run.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AppState,
    engine: Arc<dyn LeaseEngine>,
    background: bool,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the database (migrating it) and binds the address, taking time from `clock`.
    pub async fn bind(config: ServeConfig, clock: Arc<dyn Clock>) -> Result<Server, ServeError> {
        tracing::info!(db = %config.db.describe(), "opening the database");
        let engine = crate::open_database(&config.db, clock.clone()).await?;
        let db = config.db.clone();
        let tokens = tokio::task::spawn_blocking(move || TokenStore::open(db, clock))
            .await
            .map_err(|e| LeaseError::storage(format!("opening the token table failed: {e}")))??;
        let state = AppState::from_engine(engine.clone(), Arc::new(tokens), config.heartbeat);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr()?;
        Ok(Server {
            listener,
            local_addr,
            state,
            engine,
            background: config.background,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The state the handlers share (for metrics and tests).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then stops gracefully: no new connections, waiting
    /// acquisitions answered `503 shutting_down` (their queue entries taken out), event streams
    /// ended, requests in flight answered, background tasks stopped, the write-ahead log
    /// checkpointed. Every acknowledged change is already committed to the database.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            listener,
            local_addr,
            state,
            engine,
            background,
        } = self;
        let background = background.then(|| engine.spawn_background());
        let counter = tokio::spawn(metrics::count_events(state.metrics(), engine.subscribe()));
        let signal_state = state.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new connections, answering those in flight");
            signal_state.begin_shutdown();
        };
        tracing::info!(addr = %local_addr, "leasehold server listening");
        let served = axum::serve(listener, router(state.clone()))
            .with_graceful_shutdown(signal)
            .await;
        if let Some(background) = background {
            background.shutdown().await;
        }
        counter.abort();
        let tokens = state.inner.tokens.clone();
        match tokio::task::spawn_blocking(move || tokens.checkpoint()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "cannot checkpoint the write-ahead log"),
            Err(error) => tracing::warn!(%error, "checkpoint task failed"),
        }
        served?;
        tracing::info!("leasehold server stopped");
        Ok(())
    }
}

/// Runs `leasehold serve` with the system clock until `shutdown` completes (see
/// [`Server::run`]); pass [`shutdown_signal`] to stop on SIGINT or SIGTERM.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    Server::bind(config, Arc::new(SystemClock))
        .await?
        .run(shutdown)
        .await
}

/// Completes on the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
