//! The engine: [`LeaseManager`] over any [`Store`]. It owns the order of operations inside each
//! transaction (lock, read, decide with [`crate::rules`], write the change and its history),
//! the waiting queue, wake-ups, and the background cleanup task.
//!
//! Architecture invariant: the engine knows no SQL and no HTTP; it reads time only from its
//! [`Clock`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::clock::Clock;
use crate::error::{Conflict, LeaseError, Result, WaitEdge};
use crate::manager::LeaseManager;
use crate::model::{
    EventType, HistoryEvent, HistoryQuery, Lease, LeaseAcquisitionRequest,
    LeaseAcquisitionResponse, LeaseMode, LeaseQuery, LeaseReleaseRequest, LeaseReleaseResponse,
    LeaseRenewalRequest, LeaseRenewalResponse, LeaseStatus, PathStatus,
};
use crate::path::LeasePath;
use crate::rules::{self, WAITER_LIVENESS_MS};
use crate::settings::{validate_setting, Settings};
use crate::store::{Store, StoreTx, WriteFuture};
use crate::time::Timestamp;

/// A write transaction submitted to the store, with the history it wrote.
type WriteTask<T> = WriteFuture<(T, Vec<HistoryEvent>)>;

/// What a [`WriteTask`] gives when it completes.
type WriteDone<T> = Result<(T, Vec<HistoryEvent>)>;

/// How many history events the live event channel buffers for slow subscribers. A subscriber
/// that falls further behind is told how many it missed (and the server replays them from the
/// history). The slots (about 250 KiB) are allocated when the first subscriber comes, so a
/// process that never subscribes (a CLI call) does not pay for them.
const EVENT_BUFFER: usize = 1024;

/// The lease engine over a store.
pub struct Engine<S: Store> {
    inner: Arc<Inner<S>>,
}

impl<S: Store> Clone for Engine<S> {
    fn clone(&self) -> Self {
        Engine {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    store: Arc<S>,
    clock: Arc<dyn Clock>,
    /// Woken whenever something may have freed a path: waiters in this process look again.
    changed: Arc<Notify>,
    /// The live event channel, made by the first subscriber.
    events: OnceLock<broadcast::Sender<HistoryEvent>>,
}

/// One transaction's view: the store, the time and settings it decided with, and the history it
/// wrote (published once the transaction commits).
struct Ctx<'t> {
    tx: &'t mut dyn StoreTx,
    now: i64,
    settings: Settings,
    events: Vec<HistoryEvent>,
}

impl Ctx<'_> {
    /// Serialises this transaction with every other one touching these paths, then reads the
    /// time again: a decision about a path is made with a time taken after its lock is held.
    ///
    /// Returns whether locks were taken now, so that rows read before may have changed: a store
    /// whose transactions are already serial takes none.
    fn lock(&mut self, paths: &[LeasePath]) -> Result<bool> {
        if paths.is_empty() || !self.tx.lock_paths(paths)? {
            return Ok(false);
        }
        if let Some(now) = self.tx.server_now_ms()? {
            self.now = self.now.max(now);
        }
        Ok(true)
    }

    /// Locks the paths of `leases`; see [`Ctx::lock`].
    fn lock_leases(&mut self, leases: &[Lease]) -> Result<bool> {
        let mut paths: Vec<LeasePath> = leases
            .iter()
            .map(|l| LeasePath::from_stored(l.file_path.clone()))
            .collect();
        paths.sort();
        paths.dedup();
        self.lock(&paths)
    }

    /// One lease by id, read again after its path is locked.
    fn locked_lease(&mut self, id: Uuid) -> Result<Lease> {
        let not_found = || LeaseError::NotFound {
            lease_id: id.to_string(),
        };
        let lease = self.tx.lease(&id)?.ok_or_else(not_found)?;
        if self.lock_leases(std::slice::from_ref(&lease))? {
            return self.tx.lease(&id)?.ok_or_else(not_found);
        }
        Ok(lease)
    }

    /// The history event for `lease` as it is now.
    fn event(
        &self,
        event_type: EventType,
        lease: &Lease,
        status_before: Option<LeaseStatus>,
        reason: Option<&str>,
    ) -> HistoryEvent {
        HistoryEvent {
            id: 0,
            lease_id: lease.id,
            agent_id: lease.agent_id.clone(),
            file_path: lease.file_path.clone(),
            event_type,
            status_before,
            status_after: lease.status,
            renewal_count: lease.renewal_count,
            fencing_token: lease.fencing_token,
            event_at: Timestamp(self.now),
            reason: reason.map(str::to_string).or_else(|| lease.reason.clone()),
        }
    }

    /// Writes a history event for `lease` (unless history is off).
    fn record(
        &mut self,
        event_type: EventType,
        lease: &Lease,
        status_before: Option<LeaseStatus>,
        reason: Option<&str>,
    ) -> Result<()> {
        if !self.settings.keep_history {
            return Ok(());
        }
        let event = self.event(event_type, lease, status_before, reason);
        let stored = self.tx.insert_history(&event)?;
        self.events.push(stored);
        Ok(())
    }

    /// Moves `lease` to `status`, writing the change and its event.
    fn transition(
        &mut self,
        lease: &mut Lease,
        status: LeaseStatus,
        event_type: EventType,
        reason: Option<&str>,
    ) -> Result<()> {
        let before = lease.status;
        lease.status = status;
        lease.updated_at = Timestamp(self.now);
        self.tx.update_lease(lease)?;
        self.record(event_type, lease, Some(before), reason)
    }
}

/// A validated acquisition request.
#[derive(Clone)]
struct Prepared {
    agent: String,
    paths: Vec<LeasePath>,
    mode: LeaseMode,
    ttl_ms: Option<u64>,
    wait_ms: u64,
    max_renewals: Option<u32>,
    reason: Option<String>,
}

impl Prepared {
    fn new(request: LeaseAcquisitionRequest) -> Result<Prepared> {
        rules::validate_agent(&request.agent_id)?;
        rules::validate_reason(request.reason.as_deref())?;
        if request.paths.is_empty() {
            return Err(LeaseError::invalid(
                "paths",
                "at least one path is required",
            ));
        }
        let mut paths = Vec::with_capacity(request.paths.len());
        for raw in &request.paths {
            let path = LeasePath::parse(raw)?;
            if paths.contains(&path) {
                return Err(LeaseError::invalid(
                    "paths",
                    format!("{path} is requested twice"),
                ));
            }
            paths.push(path);
        }
        let wait_ms = request.wait_ms.unwrap_or(0);
        if wait_ms > rules::MAX_WAIT_MS {
            return Err(LeaseError::invalid(
                "wait_ms",
                format!(
                    "{wait_ms} ms is longer than the maximum of {} ms",
                    rules::MAX_WAIT_MS
                ),
            ));
        }
        if request.ttl_ms == Some(0) {
            return Err(LeaseError::invalid(
                "ttl_ms",
                "a time-to-live must be positive",
            ));
        }
        Ok(Prepared {
            agent: request.agent_id,
            paths,
            mode: request.mode,
            ttl_ms: request.ttl_ms,
            wait_ms,
            max_renewals: request.max_renewals,
            reason: request.reason,
        })
    }
}

/// What one acquisition attempt decided.
enum Attempt {
    Granted(Vec<Lease>),
    /// Blocked and not waiting.
    Refused(Vec<Conflict>),
    /// Blocked; queued (or still queued) with these entries; look again by `wake_at`.
    Queued {
        entries: Vec<Lease>,
        wake_at: i64,
    },
    /// The deadline passed; the queue entries are now failed.
    TimedOut(Vec<Conflict>),
    /// Queuing would close a wait-for cycle.
    Deadlock(Vec<WaitEdge>),
}

impl<S: Store> Engine<S> {
    /// An engine over `store`, taking time from `clock`.
    pub fn new(store: S, clock: Arc<dyn Clock>) -> Engine<S> {
        let changed = Arc::new(Notify::new());
        // A store shared with other servers wakes our waiters when they free something.
        store.attach_waker(changed.clone());
        Engine {
            inner: Arc::new(Inner {
                store: Arc::new(store),
                clock,
                changed,
                events: OnceLock::new(),
            }),
        }
    }

    /// The engine's clock.
    pub fn clock(&self) -> Arc<dyn Clock> {
        self.inner.clock.clone()
    }

    /// History events written by this process, as they commit.
    pub fn subscribe(&self) -> broadcast::Receiver<HistoryEvent> {
        self.inner
            .events
            .get_or_init(|| broadcast::channel(EVENT_BUFFER).0)
            .subscribe()
    }

    /// Runs `f` in a write transaction on a blocking thread, then publishes its events and wakes
    /// waiters if anything may have been freed.
    async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    {
        let done = self.spawn_write(f).await;
        self.finish_write(done)
    }

    /// Submits `f` as a write transaction to the store. The transaction runs to its end even if
    /// nobody awaits the task; [`Engine::finish_write`] publishes what it did.
    fn spawn_write<T, F>(&self, f: F) -> WriteTask<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Ctx<'_>) -> Result<T> + Send + 'static,
    {
        let clock = self.inner.clock.clone();
        self.inner.store.clone().submit_write(move |tx| {
            let settings = tx.settings()?;
            // Read the time only once the write lock is held, so that no decision is made
            // with a time older than another writer's.
            let now = now_in(tx, clock.as_ref())?;
            let mut cx = Ctx {
                tx,
                now,
                settings,
                events: Vec::new(),
            };
            let value = f(&mut cx)?;
            if cx.events.iter().any(|e| frees_a_path(e.event_type)) {
                cx.tx.announce_change()?;
            }
            Ok((value, cx.events))
        })
    }

    /// Publishes the events of a finished write and wakes waiters if it may have freed a path.
    fn finish_write<T>(&self, done: WriteDone<T>) -> Result<T> {
        let (value, events) = done?;
        let frees = events.iter().any(|e| frees_a_path(e.event_type));
        // Before the first subscriber there is no channel, and nobody to miss the events.
        if let Some(channel) = self.inner.events.get() {
            for event in events {
                let _ = channel.send(event);
            }
        }
        if frees {
            self.inner.changed.notify_waiters();
        }
        Ok(value)
    }

    /// Runs `f` in a read transaction on a blocking thread, with the current time.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreTx, i64) -> Result<T> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.store.read(|tx| {
                let now = now_in(tx, inner.clock.as_ref())?;
                f(tx, now)
            })
        })
        .await
        .map_err(|e| LeaseError::storage(format!("store task failed: {e}")))?
    }

    /// Takes a waiter that gave up (its future was dropped: cancel, disconnect) out of the
    /// queue. An attempt still running for it may have been granted just before; that lease is
    /// left alone, like any lease whose holder went quiet: the agent gets it back by
    /// re-acquiring (a retried request may already have), or it expires.
    async fn cancel_wait(&self, ids: Vec<Uuid>, reason: &'static str) -> Result<()> {
        self.write(move |cx| {
            let mut found = Vec::new();
            for id in &ids {
                found.extend(cx.tx.lease(id)?);
            }
            cx.lock_leases(&found)?;
            for id in &ids {
                if let Some(mut entry) = cx.tx.lease(id)? {
                    if entry.status == LeaseStatus::Pending {
                        cx.transition(
                            &mut entry,
                            LeaseStatus::Failed,
                            EventType::WaitFailed,
                            Some(reason),
                        )?;
                    }
                }
            }
            Ok(())
        })
        .await
    }

    /// Starts background cleanup and history purge. They run every `cleanup_interval_seconds`
    /// (read afresh each round) until the returned handle is shut down.
    pub fn spawn_background(&self) -> Background {
        let (stop, mut stopped) = watch::channel(false);
        let (rounds_tx, rounds) = watch::channel(0u64);
        let (next_round_tx, next_round) = watch::channel(None);
        let engine = self.clone();
        let task = tokio::spawn(async move {
            loop {
                let interval_s = match engine.get_settings().await {
                    Ok(settings) => settings.cleanup_interval_seconds,
                    Err(error) => {
                        tracing::warn!(%error, "cannot read settings; cleanup retries in 5 s");
                        5
                    }
                };
                let next = engine.inner.clock.now_ms() + (interval_s as i64) * 1000;
                next_round_tx.send_replace(Some(next));
                tokio::select! {
                    _ = engine.inner.clock.sleep_until(next) => {}
                    _ = stopped.changed() => break,
                }
                engine.background_round().await;
                rounds_tx.send_modify(|n| *n += 1);
            }
        });
        Background {
            stop,
            task,
            rounds,
            next_round,
        }
    }

    async fn background_round(&self) {
        match self.get_settings().await {
            Ok(settings) if settings.auto_expire_enabled => {
                match self.cleanup_expired_leases().await {
                    Ok(n) if n > 0 => tracing::info!(expired = n, "background cleanup"),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(%error, "background cleanup failed"),
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot read settings"),
        }
        match self.purge_history().await {
            Ok(n) if n > 0 => tracing::info!(purged = n, "history purge"),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "history purge failed"),
        }
    }
}

/// The running background task of [`Engine::spawn_background`].
pub struct Background {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    rounds: watch::Receiver<u64>,
    next_round: watch::Receiver<Option<i64>>,
}

impl Background {
    /// When the next round is due (clock milliseconds), once the task has planned it.
    pub fn next_round(&self) -> watch::Receiver<Option<i64>> {
        self.next_round.clone()
    }

    /// How many rounds have completed; tests wait on it after moving the clock.
    pub fn rounds(&self) -> watch::Receiver<u64> {
        self.rounds.clone()
    }

    /// Stops the task and waits for it to finish its current round.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// The time a transaction decides with: the store's own clock where it has one (a database
/// server shared by many machines), else the engine's.
fn now_in(tx: &mut dyn StoreTx, clock: &dyn Clock) -> Result<i64> {
    Ok(tx.server_now_ms()?.unwrap_or_else(|| clock.now_ms()))
}

/// Whether an event may let a waiter through.
fn frees_a_path(event_type: EventType) -> bool {
    !matches!(event_type, EventType::Acquired | EventType::Renewed)
}

/// One attempt to take every path of `request`, in the caller's transaction.
///
/// `queued` holds the request's queue entries from earlier attempts; `deadline` is set when the
/// request may wait.
///
/// New rows take their ids from `fresh_ids` (one per path), which the caller's queue guard
/// already knows: if the caller is dropped while this transaction runs, the guard can still
/// find the queue entries it wrote and fail them.
fn attempt(
    cx: &mut Ctx<'_>,
    request: &Prepared,
    queued: &[Lease],
    fresh_ids: &[Uuid],
    deadline: Option<i64>,
) -> Result<Attempt> {
    let ttl_ms = rules::resolve_ttl(request.ttl_ms, &cx.settings)?;
    if deadline.is_some() && !cx.settings.blocking_mode_enabled {
        return Err(LeaseError::invalid(
            "wait_ms",
            "waiting is disabled (setting blocking_mode_enabled is false); retry without waiting",
        ));
    }
    let max_renewals = request.max_renewals.or(cx.settings.default_max_renewals());
    cx.lock(&request.paths)?;
    let now = cx.now;

    // Our queue entries as they are now: cleanup may have failed them if we were too slow to
    // refresh them, in which case we queue again at the back.
    // An entry still stored as pending but past its own expiry (it lapses at the deadline) is
    // ours to fail on timeout, but no longer holds a place in the queue.
    let mut stored_pending = Vec::with_capacity(queued.len());
    for entry in queued {
        let current = cx
            .tx
            .lease(&entry.id)?
            .ok_or_else(|| LeaseError::storage(format!("queue entry {} vanished", entry.id)))?;
        if current.status != LeaseStatus::Pending {
            // Someone ended our wait (force-release of our agent, or we were cancelled and this
            // attempt outlived us): never queue again on our own.
            return Err(LeaseError::LeaseLost {
                lease_id: current.id,
                status: current.status,
            });
        }
        stored_pending.push(current);
    }
    let mut entries = stored_pending.clone();
    if entries.len() != queued.len() || !entries.iter().all(|e| rules::is_live_waiter(e, now)) {
        entries.clear();
    }
    let own: HashSet<Uuid> = entries.iter().map(|e| e.id).collect();

    let mut reuse: Vec<Option<Lease>> = Vec::with_capacity(request.paths.len());
    let mut blocking: Vec<Lease> = Vec::new();
    for (i, path) in request.paths.iter().enumerate() {
        let rows = cx.tx.live_overlapping(path, now)?;
        let existing = rows.iter().find(|row| {
            row.agent_id == request.agent
                && row.file_path == path.as_str()
                && row.mode == request.mode
                && rules::is_live_holder(row, now)
        });
        reuse.push(existing.cloned());
        let queued_at = entries.get(i).map(|e| e.seq);
        for row in rules::blockers(
            &rows,
            path,
            request.mode,
            &request.agent,
            &own,
            queued_at,
            now,
        ) {
            if !blocking.iter().any(|b| b.id == row.id) {
                blocking.push(row.clone());
            }
        }
    }

    if blocking.is_empty() {
        let mut granted = Vec::with_capacity(request.paths.len());
        for (i, path) in request.paths.iter().enumerate() {
            let lease = match (reuse[i].take(), entries.get(i).cloned()) {
                (Some(mut held), entry) => {
                    // An idempotent retry: the same lease, its expiry the later of the two.
                    let before = held.status;
                    held.expires_at = Timestamp(held.expires_at.0.max(now + ttl_ms as i64));
                    held.updated_at = Timestamp(now);
                    cx.tx.update_lease(&held)?;
                    cx.record(
                        EventType::Acquired,
                        &held,
                        Some(before),
                        Some("re-acquired by its holder"),
                    )?;
                    if let Some(mut entry) = entry {
                        cx.transition(
                            &mut entry,
                            LeaseStatus::Failed,
                            EventType::WaitFailed,
                            Some("already held by the same agent"),
                        )?;
                    }
                    held
                }
                (None, Some(mut entry)) => {
                    let before = entry.status;
                    entry.status = LeaseStatus::Active;
                    entry.fencing_token = Some(cx.tx.next_fencing_token()?);
                    entry.expires_at = Timestamp(now + ttl_ms as i64);
                    entry.updated_at = Timestamp(now);
                    cx.tx.update_lease(&entry)?;
                    cx.record(EventType::Acquired, &entry, Some(before), None)?;
                    entry
                }
                (None, None) => {
                    let mut lease = new_row(
                        fresh_ids[i],
                        request,
                        path,
                        LeaseStatus::Active,
                        now,
                        now + ttl_ms as i64,
                        ttl_ms,
                        max_renewals,
                    );
                    lease.fencing_token = Some(cx.tx.next_fencing_token()?);
                    lease.seq = cx.tx.insert_lease(&lease)?;
                    cx.record(EventType::Acquired, &lease, None, None)?;
                    lease
                }
            };
            granted.push(lease);
        }
        return Ok(Attempt::Granted(granted));
    }

    let blocking_refs: Vec<&Lease> = blocking.iter().collect();
    let conflicts = rules::conflicts_of(&blocking_refs, now);
    let Some(deadline) = deadline else {
        return Ok(Attempt::Refused(conflicts));
    };

    if now >= deadline {
        for mut entry in stored_pending {
            cx.transition(
                &mut entry,
                LeaseStatus::Failed,
                EventType::WaitFailed,
                Some("wait timed out"),
            )?;
        }
        return Ok(Attempt::TimedOut(conflicts));
    }

    let entry_expiry = deadline.min(now + WAITER_LIVENESS_MS);
    if entries.is_empty() {
        // Entries that lapsed while we were away lost their place: fail them and queue anew.
        for mut stale in stored_pending {
            cx.transition(
                &mut stale,
                LeaseStatus::Failed,
                EventType::WaitFailed,
                Some("queue entry lapsed; queued again"),
            )?;
        }
        let first: Vec<WaitEdge> = blocking
            .iter()
            .map(|b| WaitEdge {
                waiter: request.agent.clone(),
                file_path: b.file_path.clone(),
                holder: b.agent_id.clone(),
            })
            .collect();
        let cycle = rules::find_cycle(&request.agent, first, |agent| waits_of(cx.tx, agent, now))?;
        if let Some(cycle) = cycle {
            let why = format!(
                "deadlock: {}",
                LeaseError::Deadlock {
                    cycle: cycle.clone()
                }
            );
            for (i, path) in request.paths.iter().enumerate() {
                let mut refused = new_row(
                    fresh_ids[i],
                    request,
                    path,
                    LeaseStatus::Failed,
                    now,
                    now,
                    ttl_ms,
                    max_renewals,
                );
                refused.seq = cx.tx.insert_lease(&refused)?;
                cx.record(EventType::Deadlock, &refused, None, Some(&why))?;
            }
            return Ok(Attempt::Deadlock(cycle));
        }
        for (i, path) in request.paths.iter().enumerate() {
            let mut entry = new_row(
                fresh_ids[i],
                request,
                path,
                LeaseStatus::Pending,
                now,
                entry_expiry,
                ttl_ms,
                max_renewals,
            );
            entry.seq = cx.tx.insert_lease(&entry)?;
            entries.push(entry);
        }
    } else {
        for entry in &mut entries {
            entry.expires_at = Timestamp(entry_expiry);
            entry.updated_at = Timestamp(now);
            cx.tx.update_lease(entry)?;
        }
    }
    // Look again no later than when a blocker lapses, our entry needs refreshing, or the
    // deadline comes; releases wake us earlier.
    let blocker_lapse = blocking
        .iter()
        .map(|b| b.expires_at.0)
        .min()
        .unwrap_or(deadline);
    let wake_at = deadline
        .min(blocker_lapse)
        .min(now + WAITER_LIVENESS_MS / 3);
    Ok(Attempt::Queued { entries, wake_at })
}

/// How many lapsed rows one cleanup transaction handles, so that a store taking a lock per path
/// never needs an unbounded number of locks in one transaction. A multiple of 32: the SQLite
/// store writes rows 32 to a statement and any rest one at a time.
const CLEANUP_BATCH: usize = 512;

/// Marks one batch of lapsed rows: active leases `expired`, queue entries `failed`. Returns how
/// many leases expired and whether more rows may be due.
fn cleanup_batch(cx: &mut Ctx<'_>) -> Result<(u64, bool)> {
    let mut due = cx.tx.due_for_expiry(cx.now, CLEANUP_BATCH)?;
    let more = due.len() == CLEANUP_BATCH;
    if cx.lock_leases(&due)? {
        // Read again under the locks: a renewal may have committed since.
        let ids: HashSet<Uuid> = due.iter().map(|d| d.id).collect();
        due = cx.tx.due_for_expiry(cx.now, CLEANUP_BATCH)?;
        due.retain(|d| ids.contains(&d.id));
    }
    // Every lapsed row of the batch is written at once, and its events after it: a store may
    // write many rows with one statement (SQLite does), which is most of cleanup's cost.
    let mut expired = 0;
    let mut events = Vec::with_capacity(due.len());
    for lease in &mut due {
        let before = lease.status;
        let (event_type, reason) = if before == LeaseStatus::Active {
            lease.status = LeaseStatus::Expired;
            expired += 1;
            (EventType::Expired, None)
        } else {
            lease.status = LeaseStatus::Failed;
            (
                EventType::WaitFailed,
                Some("waiter stopped refreshing its queue entry"),
            )
        };
        lease.updated_at = Timestamp(cx.now);
        if cx.settings.keep_history {
            events.push(cx.event(event_type, lease, Some(before), reason));
        }
    }
    // Only the status and `updated_at` changed, on rows read in this transaction.
    cx.tx.end_leases(&due)?;
    let stored = cx.tx.insert_history_many(&events)?;
    cx.events.extend(stored);
    Ok((expired, more))
}

/// The wait-for edges of `agent`: for each of its live queue entries, who stands in its way.
fn waits_of(tx: &mut dyn StoreTx, agent: &str, now: i64) -> Result<Vec<WaitEdge>> {
    let mut edges = Vec::new();
    for entry in tx.live_of_agent(agent, now)? {
        if entry.status != LeaseStatus::Pending {
            continue;
        }
        let path = LeasePath::from_stored(entry.file_path.clone());
        let rows = tx.live_overlapping(&path, now)?;
        let own = HashSet::from([entry.id]);
        for row in rules::blockers(&rows, &path, entry.mode, agent, &own, Some(entry.seq), now) {
            edges.push(WaitEdge {
                waiter: agent.to_string(),
                file_path: row.file_path.clone(),
                holder: row.agent_id.clone(),
            });
        }
    }
    Ok(edges)
}

/// A new lease id: a version 7 UUID, whose leading bits are the time (from the engine's
/// clock) and the rest random. Ids made close together sort close together, so a store's
/// index of ids takes each new one near the last instead of on a random page (on SQLite, one
/// page fewer written per acquisition; see BENCHMARKS.md). The random bits keep ids unique
/// even when a test's clock stands still. They come from the thread's CSPRNG (`rand`'s
/// `ThreadRng`, seeded from the OS): `Uuid::new_v7` asks the OS for them each time, a system
/// call per acquisition on the server's request thread.
fn new_lease_id(now_ms: i64) -> Uuid {
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(now_ms.max(0) as u64, &random).into_uuid()
}

#[allow(clippy::too_many_arguments)]
fn new_row(
    id: Uuid,
    request: &Prepared,
    path: &LeasePath,
    status: LeaseStatus,
    now: i64,
    expires_at: i64,
    ttl_ms: u64,
    max_renewals: Option<u32>,
) -> Lease {
    Lease {
        id,
        file_path: path.as_str().to_string(),
        agent_id: request.agent.clone(),
        mode: request.mode,
        status,
        fencing_token: None,
        created_at: Timestamp(now),
        expires_at: Timestamp(expires_at),
        ttl_ms,
        renewal_count: 0,
        max_renewals,
        updated_at: Timestamp(now),
        reason: request.reason.clone(),
        seq: 0,
    }
}

/// Marks a waiter's queue entries failed if its acquisition future is dropped mid-wait (an HTTP
/// client that hung up, a cancelled task), so it leaves the queue at once.
struct QueueGuard<S: Store> {
    engine: Engine<S>,
    ids: Vec<Uuid>,
    /// The attempt running for the waiter, if any: the cancel must come after it, or it could
    /// miss the queue entry that attempt is about to commit.
    in_flight: Option<WriteTask<(Attempt, i64)>>,
}

impl<S: Store> Drop for QueueGuard<S> {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let engine = self.engine.clone();
        let ids = std::mem::take(&mut self.ids);
        let in_flight = self.in_flight.take();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Some(task) = in_flight {
                    let _ = engine.finish_write(task.await);
                }
                if let Err(error) = engine.cancel_wait(ids, "waiter cancelled").await {
                    tracing::warn!(%error, "cannot drop a cancelled waiter's queue entries");
                }
            });
        }
    }
}

fn parse_path(path: &str) -> Result<LeasePath> {
    LeasePath::parse(path)
}

#[async_trait]
impl<S: Store> LeaseManager for Engine<S> {
    async fn acquire_lease(
        &self,
        request: LeaseAcquisitionRequest,
    ) -> Result<LeaseAcquisitionResponse> {
        let request = Arc::new(Prepared::new(request)?);
        // The wait is measured in the time of the store, from the first attempt.
        let mut started: Option<i64> = None;
        let poll = self.inner.store.poll_interval();
        let mut guard = QueueGuard {
            engine: self.clone(),
            ids: Vec::new(),
            in_flight: None,
        };
        let mut entries: Vec<Lease> = Vec::new();
        loop {
            // Register for wake-ups before looking, so a release between our look and our
            // sleep still wakes us.
            let notified = self.inner.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let (req, queued) = (request.clone(), entries.clone());
            let fresh_ids: Vec<Uuid> = request
                .paths
                .iter()
                .map(|_| new_lease_id(self.inner.clock.now_ms()))
                .collect();
            guard.ids = entries
                .iter()
                .map(|e| e.id)
                .chain(fresh_ids.iter().copied())
                .collect();
            let first = started;
            let task = guard.in_flight.insert(self.spawn_write(move |cx| {
                let started = first.unwrap_or(cx.now);
                let deadline = (req.wait_ms > 0).then(|| started + req.wait_ms as i64);
                Ok((attempt(cx, &req, &queued, &fresh_ids, deadline)?, cx.now))
            }));
            let done = task.await;
            guard.in_flight = None;
            let (outcome, now) = match self.finish_write(done) {
                Ok(looked) => looked,
                Err(error) => {
                    // The transaction rolled back: only earlier queue entries are left for the
                    // guard to fail.
                    guard.ids = entries.iter().map(|e| e.id).collect();
                    return Err(error);
                }
            };
            let waited_ms = (now - *started.get_or_insert(now)).max(0) as u64;
            match outcome {
                Attempt::Granted(leases) => {
                    guard.ids.clear();
                    return Ok(LeaseAcquisitionResponse { leases, waited_ms });
                }
                Attempt::Refused(conflicts) => {
                    guard.ids.clear();
                    return Err(LeaseError::AlreadyHeld { conflicts });
                }
                Attempt::TimedOut(conflicts) => {
                    guard.ids.clear();
                    return Err(LeaseError::WaitTimeout {
                        waited_ms,
                        conflicts,
                    });
                }
                Attempt::Deadlock(cycle) => {
                    guard.ids.clear();
                    return Err(LeaseError::Deadlock { cycle });
                }
                Attempt::Queued {
                    entries: now_queued,
                    wake_at,
                } => {
                    guard.ids = now_queued.iter().map(|e| e.id).collect();
                    entries = now_queued;
                    // `wake_at` is in the store's time; sleep the same span on our clock.
                    let local_wake = self.inner.clock.now_ms() + (wake_at - now).max(0);
                    let wake = self.inner.clock.sleep_until(local_wake);
                    let poll_sleep = async {
                        match poll {
                            // Other processes cannot notify us: look again after a jittered
                            // pause, so many pollers do not fall into step.
                            Some(max) => {
                                let max_ms = max.as_millis().max(2) as u64;
                                let ms = rand::thread_rng().gen_range(max_ms / 2..=max_ms);
                                tokio::time::sleep(Duration::from_millis(ms)).await
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = notified => {}
                        _ = wake => {}
                        _ = poll_sleep => {}
                    }
                }
            }
        }
    }

    async fn renew_lease(&self, request: LeaseRenewalRequest) -> Result<LeaseRenewalResponse> {
        rules::validate_agent(&request.agent_id)?;
        if request.ttl_ms == Some(0) {
            return Err(LeaseError::invalid(
                "ttl_ms",
                "a time-to-live must be positive",
            ));
        }
        self.write(move |cx| {
            let lease = cx.locked_lease(request.lease_id)?;
            let ttl_ms =
                rules::resolve_ttl(Some(request.ttl_ms.unwrap_or(lease.ttl_ms)), &cx.settings)?;
            let renewed = rules::renew(&lease, &request.agent_id, ttl_ms, cx.now)?;
            cx.tx.update_lease(&renewed)?;
            cx.record(EventType::Renewed, &renewed, Some(lease.status), None)?;
            Ok(LeaseRenewalResponse { lease: renewed })
        })
        .await
    }

    async fn release_lease(&self, request: LeaseReleaseRequest) -> Result<LeaseReleaseResponse> {
        rules::validate_agent(&request.agent_id)?;
        self.write(move |cx| {
            let mut lease = cx.locked_lease(request.lease_id)?;
            rules::check_holder(&lease, &request.agent_id, cx.now)?;
            cx.transition(&mut lease, LeaseStatus::Released, EventType::Released, None)?;
            Ok(LeaseReleaseResponse { lease })
        })
        .await
    }

    async fn get_lease(&self, lease_id: Uuid) -> Result<Lease> {
        self.read(move |tx, now| {
            tx.lease(&lease_id)?
                .map(|lease| rules::with_effective_status(lease, now))
                .ok_or_else(|| LeaseError::NotFound {
                    lease_id: lease_id.to_string(),
                })
        })
        .await
    }

    async fn get_all_leases(&self, query: LeaseQuery) -> Result<Vec<Lease>> {
        let path = query.path.as_deref().map(parse_path).transpose()?;
        self.read(move |tx, now| {
            let rows = tx.query_leases(&query, path.as_ref(), now)?;
            Ok(rows
                .into_iter()
                .map(|l| rules::with_effective_status(l, now))
                .collect())
        })
        .await
    }

    async fn has_agent_lease(&self, agent_id: &str, path: &str) -> Result<bool> {
        rules::validate_agent(agent_id)?;
        let path = parse_path(path)?;
        let agent = agent_id.to_string();
        self.read(move |tx, now| {
            Ok(tx.live_overlapping(&path, now)?.iter().any(|row| {
                row.agent_id == agent
                    && rules::is_live_holder(row, now)
                    && LeasePath::from_stored(row.file_path.clone()).covers(&path)
            }))
        })
        .await
    }

    async fn cleanup_expired_leases(&self) -> Result<u64> {
        let mut expired = 0;
        loop {
            let (batch_expired, more) = self.write(cleanup_batch).await?;
            expired += batch_expired;
            if !more {
                return Ok(expired);
            }
        }
    }

    async fn force_release_agent_leases(&self, agent_id: &str, reason: &str) -> Result<u64> {
        rules::validate_agent(agent_id)?;
        if reason.trim().is_empty() {
            return Err(LeaseError::invalid(
                "reason",
                "a force-release needs a reason",
            ));
        }
        rules::validate_reason(Some(reason))?;
        let (agent, reason) = (agent_id.to_string(), reason.to_string());
        self.write(move |cx| {
            let mut live = cx.tx.live_of_agent(&agent, cx.now)?;
            if cx.lock_leases(&live)? {
                live = cx.tx.live_of_agent(&agent, cx.now)?;
            }
            let mut released = 0;
            for mut lease in live {
                if lease.status == LeaseStatus::Active {
                    cx.transition(
                        &mut lease,
                        LeaseStatus::Released,
                        EventType::ForceReleased,
                        Some(&reason),
                    )?;
                    released += 1;
                } else {
                    cx.transition(
                        &mut lease,
                        LeaseStatus::Failed,
                        EventType::WaitFailed,
                        Some(&reason),
                    )?;
                }
            }
            Ok(released)
        })
        .await
    }

    async fn get_path_status(&self, path: &str) -> Result<PathStatus> {
        let path = parse_path(path)?;
        self.read(move |tx, now| {
            let rows = tx.live_overlapping(&path, now)?;
            let (holders, waiters): (Vec<Lease>, Vec<Lease>) = rows
                .into_iter()
                .partition(|row| row.status == LeaseStatus::Active);
            Ok(PathStatus {
                path: path.as_str().to_string(),
                locked: !holders.is_empty(),
                holders,
                waiters,
            })
        })
        .await
    }

    async fn get_history(&self, query: HistoryQuery) -> Result<Vec<HistoryEvent>> {
        let path = query.path.as_deref().map(parse_path).transpose()?;
        if let Some(agent) = &query.agent_id {
            rules::validate_agent(agent)?;
        }
        self.read(move |tx, _| tx.query_history(&query, path.as_ref()))
            .await
    }

    async fn purge_history(&self) -> Result<u64> {
        self.write(|cx| {
            let keep_ms = cx.settings.history_retention_days as i64 * 24 * 3600 * 1000;
            cx.tx.purge_history(cx.now - keep_ms)
        })
        .await
    }

    async fn get_settings(&self) -> Result<Settings> {
        self.read(|tx, _| tx.settings()).await
    }

    async fn update_setting(&self, key: &str, value: &str) -> Result<Settings> {
        let normalised = validate_setting(key, value)?;
        let key = key.to_string();
        self.write(move |cx| {
            let mut pairs: HashMap<String, String> = cx.tx.load_settings()?.into_iter().collect();
            pairs.insert(key.clone(), normalised.clone());
            let settings =
                Settings::from_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;
            if settings.default_ttl_seconds > settings.max_ttl_seconds {
                return Err(LeaseError::invalid(
                    key,
                    format!(
                        "default_ttl_seconds ({}) may not exceed max_ttl_seconds ({})",
                        settings.default_ttl_seconds, settings.max_ttl_seconds
                    ),
                ));
            }
            cx.tx.save_setting(&key, &normalised, cx.now)?;
            Ok(settings)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_version_7_carry_the_clock_and_differ_within_a_millisecond() {
        let now = 1_764_806_400_123;
        let (a, b) = (new_lease_id(now), new_lease_id(now));
        assert_ne!(a, b);
        for id in [a, b] {
            assert_eq!(id.get_version_num(), 7);
            let (secs, nanos) = id.get_timestamp().expect("a v7 id has a time").to_unix();
            assert_eq!(secs * 1000 + u64::from(nanos / 1_000_000), now as u64);
        }
        assert!(
            new_lease_id(now + 1) > a.max(b),
            "later ids sort after earlier ones"
        );
    }
}
