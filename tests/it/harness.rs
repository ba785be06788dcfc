//! Shared helpers for the integration tests: store builders for the conformance suite, request
//! shorthands, and a bounded wait for another task's progress (never for expiry: tests move the
//! clock for that).

#![allow(dead_code)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use leasehold::store::postgres::{PgOptions, PgStore};
use leasehold::{
    Background, LeaseAcquisitionRequest, LeaseManager, LeaseMode, ManualClock, SqliteStore,
};

/// Where the manual clock starts: a fixed, ordinary time.
pub const T0_MS: i64 = 1_800_000_000_000;

/// One store, opened for a test, with its clock. Dropping it removes its data.
pub struct TestEnv {
    /// The engine under test, through the trait that every store shares.
    pub manager: Arc<dyn LeaseManager>,
    /// The clock the engine reads; move it with `advance`.
    pub clock: ManualClock,
    background: Box<dyn Fn() -> Background + Send + Sync>,
    reopen: Box<dyn Fn() -> Arc<dyn LeaseManager> + Send + Sync>,
    _cleanup: Box<dyn std::any::Any + Send + Sync>,
}

impl TestEnv {
    /// Starts the engine's background cleanup task.
    pub fn spawn_background(&self) -> Background {
        (self.background)()
    }

    /// A second engine on the same data, as another process (or, after a crash, a restart)
    /// would open it, sharing the clock.
    pub fn reopen(&self) -> Arc<dyn LeaseManager> {
        (self.reopen)()
    }
}

/// A fresh SQLite database in a temporary directory.
pub async fn sqlite_env() -> TestEnv {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let db: PathBuf = dir.path().join("leases.db");
    let clock = ManualClock::new(T0_MS);
    let open = {
        let (db, clock) = (db.clone(), clock.clone());
        move || {
            let store = SqliteStore::open(&db, T0_MS).expect("open sqlite store");
            leasehold::Engine::new(store, Arc::new(clock.clone()))
        }
    };
    let engine = open();
    let manager: Arc<dyn LeaseManager> = Arc::new(engine.clone());
    let reopen_fn = open.clone();
    TestEnv {
        manager,
        clock,
        background: Box::new(move || engine.spawn_background()),
        reopen: Box::new(move || Arc::new(reopen_fn()) as Arc<dyn LeaseManager>),
        _cleanup: Box::new(dir),
    }
}

/// The PostgreSQL server the tests use, from `LEASEHOLD_TEST_PG_URL`. Without it the test fails
/// and says how to get one: nothing is skipped silently.
pub fn pg_url() -> String {
    std::env::var("LEASEHOLD_TEST_PG_URL").unwrap_or_else(|_| {
        panic!(
            "LEASEHOLD_TEST_PG_URL is not set: the PostgreSQL tests need a server. Run them with \
             `scripts/with-postgres.sh cargo test` (it starts a throwaway cluster), or point \
             LEASEHOLD_TEST_PG_URL at a database you may create schemas in."
        )
    })
}

/// Runs blocking PostgreSQL work on a thread of its own (the driver blocks on its own runtime,
/// which must not happen on an async worker thread).
pub fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f)
        .join()
        .expect("blocking PostgreSQL work panicked")
}

/// Drops a test's schema when the test ends.
struct DropSchema {
    url: String,
    schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        blocking(move || {
            if let Ok(mut client) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ =
                    client.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"));
            }
        });
    }
}

/// A fresh schema in the test PostgreSQL server, with the engine's manual clock deciding time.
pub async fn postgres_env() -> TestEnv {
    let url = pg_url();
    let schema = format!("lh_test_{}", uuid::Uuid::new_v4().simple());
    let clock = ManualClock::new(T0_MS);
    let open = {
        let (url, schema, clock) = (url.clone(), schema.clone(), clock.clone());
        move || {
            let (url, schema) = (url.clone(), schema.clone());
            let store = blocking(move || {
                PgStore::open(
                    &url,
                    PgOptions {
                        schema: Some(schema),
                        server_time: false,
                        ..PgOptions::default()
                    },
                )
                .expect("open the PostgreSQL store")
            });
            leasehold::Engine::new(store, Arc::new(clock.clone()))
        }
    };
    let engine = open();
    let manager: Arc<dyn LeaseManager> = Arc::new(engine.clone());
    let reopen_fn = open.clone();
    TestEnv {
        manager,
        clock,
        background: Box::new(move || engine.spawn_background()),
        reopen: Box::new(move || Arc::new(reopen_fn()) as Arc<dyn LeaseManager>),
        _cleanup: Box::new(DropSchema { url, schema }),
    }
}

/// An exclusive request for `paths` by `agent` with a TTL.
pub fn req(agent: &str, paths: &[&str], ttl_ms: u64) -> LeaseAcquisitionRequest {
    LeaseAcquisitionRequest {
        agent_id: agent.to_string(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        mode: LeaseMode::Exclusive,
        ttl_ms: Some(ttl_ms),
        ..LeaseAcquisitionRequest::default()
    }
}

/// A shared request for `paths` by `agent` with a TTL.
pub fn shared(agent: &str, paths: &[&str], ttl_ms: u64) -> LeaseAcquisitionRequest {
    LeaseAcquisitionRequest {
        mode: LeaseMode::Shared,
        ..req(agent, paths, ttl_ms)
    }
}

/// Waits (boundedly, in real time) until `check` holds: for another task to reach a state, such
/// as a waiter having queued. Panics with `what` after five seconds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `path` has `n` queued waiters.
pub async fn waiters_queued(manager: &Arc<dyn LeaseManager>, path: &str, n: usize) {
    eventually(&format!("{n} waiter(s) queue for {path}"), || {
        let manager = manager.clone();
        let path = path.to_string();
        async move { manager.get_path_status(&path).await.unwrap().waiters.len() == n }
    })
    .await;
}
