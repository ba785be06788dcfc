//! What a store must do: keep leases, history and settings, and run a closure in one
//! transaction. Stores only store and fetch; every rule lives in [`crate::rules`] and the
//! engine.

pub mod postgres;
pub mod sqlite;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use uuid::Uuid;

use crate::error::{LeaseError, Result};
use crate::model::{HistoryEvent, HistoryQuery, Lease, LeaseQuery, TokenInfo};
use crate::path::LeasePath;
use crate::settings::Settings;

/// A write in progress: completes with its result once committed.
pub type WriteFuture<T> = Pin<Box<dyn Future<Output = Result<T>> + Send>>;

/// A backend for the engine.
///
/// To ensure correctness, an implementation must guarantee that:
///
/// - [`Store::write`] runs its closure in one transaction that is serialisable with every other
///   write that touches an overlapping path, in this process or any other sharing the data
///   (SQLite: `BEGIN IMMEDIATE`; a server database: locks taken in
///   [`StoreTx::lock_paths`]). Either everything the closure wrote commits, or nothing does
///   (the closure returning `Err` rolls back).
/// - A write is durable when `write` returns `Ok`: an acknowledged grant survives a crash of
///   the process.
/// - [`StoreTx::next_fencing_token`] returns a value strictly greater than every value it
///   returned before, across restarts.
/// - `seq` is assigned in insertion order, so that it orders the queue.
pub trait Store: Send + Sync + 'static {
    /// Runs `f` in one write transaction and commits if it returns `Ok`. Blocking.
    fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreTx) -> Result<T> + Send + 'static;

    /// Submits `f` as a write and returns a future of its committed result. The write runs to
    /// its end even if the future is dropped. By default it runs [`Store::write`] on a
    /// blocking thread; a store may instead queue it for a writer that commits many writes in
    /// one transaction (group commit), as long as each caller is answered only after the
    /// commit that holds its write, and nothing of a write that fails is stored. A write that
    /// fails before changing anything (every refusal of the engine) must leave the others of
    /// its batch standing; one that fails after changing rows (a storage error) may take the
    /// writes run before it in its transaction down with it, each answered with an error.
    fn submit_write<T, F>(self: Arc<Self>, f: F) -> WriteFuture<T>
    where
        Self: Sized,
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreTx) -> Result<T> + Send + 'static,
    {
        let running = tokio::task::spawn_blocking(move || self.write(f));
        Box::pin(async move {
            running
                .await
                .map_err(|e| LeaseError::storage(format!("store task failed: {e}")))?
        })
    }

    /// Runs `f` in a read-only transaction (a consistent snapshot).
    fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut dyn StoreTx) -> Result<T>;

    /// When other processes may change the data behind this one's back without telling it,
    /// how often a waiter looks again (at most; the engine adds jitter below it).
    fn poll_interval(&self) -> Option<Duration>;

    /// Gives the store the engine's wake-up signal. A store shared with other servers that
    /// can hear their changes (PostgreSQL's LISTEN) fires it when a path may have been freed
    /// elsewhere; others ignore it.
    fn attach_waker(&self, _waker: Arc<Notify>) {}
}

/// The operations of one transaction.
pub trait StoreTx {
    /// Serialises this transaction with others touching these paths, their ancestors and
    /// their descendants, and returns true; stores whose writes are already serial do nothing
    /// and return false (rows read earlier in the transaction are then still current).
    fn lock_paths(&mut self, paths: &[LeasePath]) -> Result<bool>;
    /// The store's own time, when decisions must use one clock shared by every machine (a
    /// database server's); `None` lets the engine use its injected clock.
    fn server_now_ms(&mut self) -> Result<Option<i64>> {
        Ok(None)
    }
    /// Tells other servers sharing the store, when this transaction commits, that a path may
    /// have been freed. Stores without such a channel do nothing.
    fn announce_change(&mut self) -> Result<()> {
        Ok(())
    }
    /// The stored settings as `(key, value)`.
    fn load_settings(&mut self) -> Result<Vec<(String, String)>>;
    /// The stored settings, typed. A store that keeps a copy of the settings may keep the typed
    /// copy too, instead of parsing them for every transaction.
    fn settings(&mut self) -> Result<Settings> {
        Settings::from_stored(&self.load_settings()?)
    }
    /// Stores one setting, already validated.
    fn save_setting(&mut self, key: &str, value: &str, now_ms: i64) -> Result<()>;
    /// Active and pending rows whose path overlaps `path` and whose `expires_at` is after `now_ms`.
    fn live_overlapping(&mut self, path: &LeasePath, now_ms: i64) -> Result<Vec<Lease>>;
    /// Active and pending rows of `agent` whose `expires_at` is after `now_ms`.
    fn live_of_agent(&mut self, agent: &str, now_ms: i64) -> Result<Vec<Lease>>;
    /// One lease by id.
    fn lease(&mut self, id: &Uuid) -> Result<Option<Lease>>;
    /// Inserts a lease and returns the `seq` it was given.
    fn insert_lease(&mut self, lease: &Lease) -> Result<i64>;
    /// Writes every field of an existing lease (matched by id).
    fn update_lease(&mut self, lease: &Lease) -> Result<()>;
    /// [`StoreTx::update_lease`] for each of `leases`; a store may write them together.
    fn update_leases(&mut self, leases: &[Lease]) -> Result<()> {
        leases.iter().try_for_each(|lease| self.update_lease(lease))
    }
    /// Writes the new `status` and `updated_at` of leases read earlier in this same
    /// transaction, whose other fields are as they were read (cleanup's path: many rows that
    /// only ended). A store may write just those two columns; by default, as
    /// [`StoreTx::update_leases`].
    fn end_leases(&mut self, leases: &[Lease]) -> Result<()> {
        self.update_leases(leases)
    }
    /// The next fencing token.
    fn next_fencing_token(&mut self) -> Result<u64>;
    /// Leases matching `query`; with `include_inactive` false, only those active at `now_ms`.
    fn query_leases(
        &mut self,
        query: &LeaseQuery,
        path: Option<&LeasePath>,
        now_ms: i64,
    ) -> Result<Vec<Lease>>;
    /// Up to `limit` active and pending rows whose `expires_at` is at or before `now_ms`,
    /// oldest first.
    fn due_for_expiry(&mut self, now_ms: i64, limit: usize) -> Result<Vec<Lease>>;
    /// Appends a history event (its `id` is ignored) and returns it with the id it was given.
    fn insert_history(&mut self, event: &HistoryEvent) -> Result<HistoryEvent>;
    /// [`StoreTx::insert_history`] for each of `events`, in order; a store may write them
    /// together. Returns them with their ids, in the same order.
    fn insert_history_many(&mut self, events: &[HistoryEvent]) -> Result<Vec<HistoryEvent>> {
        events
            .iter()
            .map(|event| self.insert_history(event))
            .collect()
    }
    /// History events matching `query`.
    fn query_history(
        &mut self,
        query: &HistoryQuery,
        path: Option<&LeasePath>,
    ) -> Result<Vec<HistoryEvent>>;
    /// Deletes history events older than `before_ms`; returns how many.
    fn purge_history(&mut self, before_ms: i64) -> Result<u64>;
}

/// The API tokens of `leasehold serve`, kept in the same database as the leases. Only a hash of
/// each secret is stored; the server decides what a token may do.
pub trait TokenTable: Send + Sync {
    /// Stores a new token by its hash.
    fn insert(&self, info: &TokenInfo, token_hash: &str) -> Result<()>;
    /// The token with this hash, unless it is unknown or revoked. A store may answer from a
    /// cache, so `last_used_at` may be older than the stored one; a revocation by any process
    /// must count from the next lookup on.
    fn find_live(&self, token_hash: &str) -> Result<Option<TokenInfo>>;
    /// [`TokenTable::find_live`] if it can be answered at once, without waiting on a lock or the
    /// network (a local file whose connection is free); `None` otherwise. The server calls this
    /// on its request threads and falls back to a blocking thread when it gets `None`.
    fn try_find_live(&self, _token_hash: &str) -> Option<Result<Option<TokenInfo>>> {
        None
    }
    /// Every token, revoked ones included, oldest first.
    fn list(&self) -> Result<Vec<TokenInfo>>;
    /// Revokes a token (once; revoking again changes nothing) and returns it, or `None` when
    /// no token has this id.
    fn revoke(&self, id: &str, now_ms: i64) -> Result<Option<TokenInfo>>;
    /// Records a token's last use. Bookkeeping: it may give up quickly when the store is busy.
    fn touch(&self, id: &str, now_ms: i64) -> Result<()>;
    /// How many leases and waiters are live at `now_ms` (for the server's gauges).
    fn live_counts(&self, now_ms: i64) -> Result<(u64, u64)>;
    /// Flushes what the store buffers (SQLite's write-ahead log), at shutdown.
    fn checkpoint(&self) -> Result<()> {
        Ok(())
    }
}
