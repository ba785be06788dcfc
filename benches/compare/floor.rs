//! The SQLite floor: a bare rusqlite program doing the writes leasehold does per acquisition —
//! check for a live overlapping lease, insert the lease row, insert its history row — on
//! leasehold's own schema (created by `SqliteStore::open`), WAL, `synchronous=NORMAL`, one
//! connection shared by every client thread behind a mutex. No engine, no async, no rules: what
//! SQLite itself costs on this machine.
//!
//! Three shapes:
//! - `Shape::OneTxPerAcquire`: each acquisition is its own `BEGIN IMMEDIATE ... COMMIT`. The
//!   check runs and is read, but its answer is ignored so that every operation does the same
//!   writes (nothing is ever released here, so the paths would otherwise fill up).
//! - `Shape::Batched`: the same acquisitions, but a writer thread puts up to one per client
//!   (64) into each transaction: group commit.
//! - `Shape::Pairs`: acquisition (honouring the check) and release (mark the row released,
//!   insert its history row) as two transactions, the like-for-like floor for leasehold's pairs.
//!
//! Leasehold also bumps the one-row fencing counter per grant; the floor does not, as in the
//! issue's description of it.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::drive::{BoxError, SyncTarget};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    OneTxPerAcquire,
    Batched,
    Pairs,
}

pub fn open(db: &Path) -> Result<Connection, BoxError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    drop(leasehold::SqliteStore::open(db, now)?);
    let conn = Connection::open(db)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Whether a live lease overlaps `path` (a file): the file itself or a folder above it, the
/// same condition and index leasehold's SQLite store uses.
fn live_conflict(conn: &Connection, path: &str, now: i64) -> rusqlite::Result<bool> {
    let mut keys: Vec<&str> = path.match_indices('/').map(|(i, _)| &path[..=i]).collect();
    keys.push(path);
    let mut stmt = conn.prepare_cached(
        "SELECT 1 FROM leases WHERE status IN ('active', 'pending') AND expires_at > ?1
             AND file_path IN (?2, ?3, ?4) LIMIT 1",
    )?;
    // Two folder levels above each file (`src/mN/fN.rs`); pad with the path itself otherwise.
    let key = |i: usize| keys.get(i).copied().unwrap_or(path);
    Ok(stmt
        .query_row(params![now, key(0), key(1), key(2)], |_| Ok(()))
        .optional()?
        .is_some())
}

/// The acquisition's writes: the lease row and its `acquired` history row. Returns the id.
fn insert_lease(conn: &Connection, path: &str, agent: &str, now: i64) -> rusqlite::Result<String> {
    // Time-ordered, as the ids leasehold makes.
    let id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO leases (id, file_path, agent_id, mode, status, fencing_token, created_at,
             expires_at, ttl_ms, renewal_count, max_renewals, updated_at, reason)
         VALUES (?1, ?2, ?3, 'exclusive', 'active', NULL, ?4, ?5, 30000, 0, NULL, ?4, NULL)",
    )?
    .execute(params![id, path, agent, now, now + 30_000])?;
    conn.prepare_cached(
        "INSERT INTO lease_history (lease_id, agent_id, file_path, event_type, status_before,
             status_after, renewal_count, fencing_token, event_at, reason)
         VALUES (?1, ?2, ?3, 'acquired', NULL, 'active', 0, NULL, ?4, NULL)",
    )?
    .execute(params![id, agent, path, now])?;
    Ok(id)
}

/// The release's writes: the row marked released and its `released` history row.
fn release_lease(conn: &Connection, id: &str, path: &str, agent: &str) -> rusqlite::Result<()> {
    let now = now_ms();
    conn.prepare_cached("UPDATE leases SET status = 'released', updated_at = ?2 WHERE id = ?1")?
        .execute(params![id, now])?;
    conn.prepare_cached(
        "INSERT INTO lease_history (lease_id, agent_id, file_path, event_type, status_before,
             status_after, renewal_count, fencing_token, event_at, reason)
         VALUES (?1, ?2, ?3, 'released', 'active', 'released', 0, NULL, ?4, NULL)",
    )?
    .execute(params![id, agent, path, now])?;
    Ok(())
}

/// One client thread of the floor.
pub struct FloorClient {
    agent: String,
    conn: Arc<Mutex<Connection>>,
    shape: Shape,
    /// For `Shape::Batched`: the way to the writer thread.
    batch: Option<BatchLink>,
}

/// The writer's answer to one job.
type Answer = Result<(), String>;

struct Job {
    path: String,
    agent: String,
    answer: Sender<Answer>,
}

/// A client's end of the group-commit writer: its queue, and this client's answer channel.
struct BatchLink {
    jobs: Sender<Job>,
    answer: Sender<Answer>,
    answers: Receiver<Answer>,
}

impl SyncTarget for FloorClient {
    /// The row id and path, for `Shape::Pairs`.
    type Held = Option<(String, String)>;

    fn acquire(&mut self, path: &str) -> Result<Option<Self::Held>, BoxError> {
        if let Some(link) = &self.batch {
            link.jobs.send(Job {
                path: path.to_string(),
                agent: self.agent.clone(),
                answer: link.answer.clone(),
            })?;
            link.answers.recv()??;
            return Ok(Some(None));
        }
        let mut conn = self.conn.lock().map_err(|_| "floor connection poisoned")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms();
        let conflict = live_conflict(&tx, path, now)?;
        if conflict && self.shape == Shape::Pairs {
            tx.commit()?;
            return Ok(None);
        }
        let id = insert_lease(&tx, path, &self.agent, now)?;
        tx.commit()?;
        Ok(Some(match self.shape {
            Shape::Pairs => Some((id, path.to_string())),
            _ => None,
        }))
    }

    fn release(&mut self, held: Self::Held) -> Result<(), BoxError> {
        let Some((id, path)) = held else {
            return Ok(());
        };
        let mut conn = self.conn.lock().map_err(|_| "floor connection poisoned")?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        release_lease(&tx, &id, &path, &self.agent)?;
        tx.commit()?;
        Ok(())
    }
}

/// The group-commit writer: takes one job, then more until it has one per client or none
/// arrives for a millisecond, runs them all in one transaction, and answers each.
fn writer(
    conn: Arc<Mutex<Connection>>,
    jobs: Receiver<Job>,
    per_tx: usize,
    stats: Arc<Mutex<(u64, u64)>>,
) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < per_tx {
            match jobs.recv_timeout(Duration::from_millis(1)) {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let result = (|| -> rusqlite::Result<()> {
            let mut conn = conn.lock().expect("floor connection");
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let now = now_ms();
            for job in &batch {
                let _ = live_conflict(&tx, &job.path, now)?;
                insert_lease(&tx, &job.path, &job.agent, now)?;
            }
            tx.commit()
        })()
        .map_err(|e| e.to_string());
        if let Ok(mut stats) = stats.lock() {
            stats.0 += 1;
            stats.1 += batch.len() as u64;
        }
        for job in batch {
            let _ = job.answer.send(result.clone());
        }
    }
}

/// The floor's clients for one shape, with the group-commit writer when there is one.
pub struct FloorRun {
    pub clients: Vec<FloorClient>,
    /// For `Shape::Batched`: the writer thread; it stops once the clients are dropped.
    pub writer: Option<std::thread::JoinHandle<()>>,
    /// For `Shape::Batched`: (transactions, acquisitions) the writer committed.
    pub batches: Arc<Mutex<(u64, u64)>>,
}

/// `count` clients of the floor in `shape`.
pub fn clients(conn: Arc<Mutex<Connection>>, shape: Shape, count: usize) -> FloorRun {
    let batches = Arc::new(Mutex::new((0, 0)));
    let (jobs, writer_thread) = if shape == Shape::Batched {
        let (jobs, queue) = mpsc::channel();
        let (conn, batches) = (conn.clone(), batches.clone());
        let thread = std::thread::spawn(move || writer(conn, queue, count, batches));
        (Some(jobs), Some(thread))
    } else {
        (None, None)
    };
    let clients = (0..count)
        .map(|k| FloorClient {
            agent: format!("agent-{k}"),
            conn: conn.clone(),
            shape,
            batch: jobs.as_ref().map(|jobs| {
                let (answer, answers) = mpsc::channel();
                BatchLink {
                    jobs: jobs.clone(),
                    answer,
                    answers,
                }
            }),
        })
        .collect();
    FloorRun {
        clients,
        writer: writer_thread,
        batches,
    }
}
