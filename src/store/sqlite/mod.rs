//! The embedded store: one SQLite file in WAL mode, shared safely by every process that opens it.
//!
//! Writes take the write lock up front (`BEGIN IMMEDIATE`) and wait on a busy timeout, so two
//! processes never both decide a path is free. Only this module knows SQL for SQLite; it turns
//! rows into domain types here and database errors into [`LeaseError::Storage`] in one place.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, LazyLock, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use rusqlite::config::DbConfig;
use rusqlite::types::{ToSql, Value};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use uuid::Uuid;

use crate::error::{LeaseError, Result};
use crate::model::{HistoryEvent, HistoryQuery, Lease, LeaseQuery};
use crate::path::LeasePath;
use crate::settings::{Settings, SETTINGS};
use crate::store::{Store, StoreTx, WriteFuture};
use crate::time::Timestamp;

/// Migrations, applied in order on open and recorded in `schema_migrations`.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "tokens", include_str!("migrations/0002_tokens.sql")),
    (
        3,
        "drop_history_by_lease",
        include_str!("migrations/0003_drop_history_by_lease.sql"),
    ),
    (
        4,
        "indexes_that_stay_small",
        include_str!("migrations/0004_indexes_that_stay_small.sql"),
    ),
    (
        5,
        "agent_index_by_expiry",
        include_str!("migrations/0005_agent_index_by_expiry.sql"),
    ),
    (
        6,
        "status_check_without_a_list",
        include_str!("migrations/0006_status_check_without_a_list.sql"),
    ),
];

pub mod tokens;
mod vfs;

/// How long a write waits for another process's write lock before failing.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiter looks at the file again, since other processes do not notify it.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The columns of a lease row, in the order [`lease_from_row`] reads them; a macro so that
/// fixed statements can be written with `concat!` and prepared once.
macro_rules! lease_columns {
    () => {
        "seq, id, file_path, agent_id, mode, status, fencing_token, created_at, expires_at, \
         ttl_ms, renewal_count, max_renewals, updated_at, reason"
    };
}

const LEASE_COLUMNS: &str = lease_columns!();

const HISTORY_COLUMNS: &str = "h.id, h.lease_id, h.agent_id, h.file_path, h.event_type, \
     h.status_before, h.status_after, h.renewal_count, h.fencing_token, h.event_at, h.reason";

impl From<rusqlite::Error> for LeaseError {
    fn from(error: rusqlite::Error) -> Self {
        LeaseError::storage(format!("sqlite: {error}"))
    }
}

/// How many rows one statement of [`StoreTx::update_leases`], [`StoreTx::end_leases`] or
/// [`StoreTx::insert_history_many`] writes; the rest of a list goes one row at a time (or, for
/// `end_leases`, in one statement that repeats a row).
const ROWS_PER_STATEMENT: usize = 32;

/// Statements each connection keeps prepared (rusqlite's default is 16, fewer than the writer
/// uses).
const STATEMENT_CACHE: usize = 64;

/// How many queued writes one transaction commits at most.
const MAX_BATCH: usize = 128;

/// The write-ahead log size, in pages, at which the writer checkpoints by itself.
///
/// Under a steady stream of writes the checkpoint thread copies nearly all of the log, but never
/// all of it at the moment a batch starts, which is what lets the writer start the log over; so
/// the log grows to this size and the writer's own checkpoint (the rest of the log, and an
/// `fsync`) ends each round. That `fsync` stalls every write in flight, so it should come
/// rarely: at 20,000 pages it came about every 0.4 s through the server, and set acquire p99.
/// The log file keeps its largest size (about 50 MiB at 1 KiB pages) and is written over from
/// its start: cutting it back each round (`journal_size_limit`) cost throughput, since the
/// file system then allocates its blocks again.
const WRITER_AUTOCHECKPOINT_PAGES: i64 = 50_000;

/// How long the checkpoint thread lets commits gather before it checkpoints.
const CHECKPOINT_DELAY: Duration = Duration::from_millis(100);

/// The write-ahead log size, in bytes, above which a closing store checkpoints and empties it.
///
/// Closing a connection never checkpoints by itself (`SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE`): that
/// checkpoint cost a short-lived process (a CLI call) two `fsync`s on its way out, and it was cut
/// short by the process exiting, so the log only grew. But the next process to open the file
/// reads the whole log back, one frame per read, to rebuild its index; so when the log has grown
/// past this size, the closing writer checkpoints it and cuts it to nothing (about every 40th
/// CLI acquisition).
const CLOSE_CHECKPOINT_BYTES: u64 = 512 * 1024;

/// How long that closing checkpoint waits for other processes' readers before giving up (they
/// are long-lived then, and their own checkpoints keep the log short).
const CLOSE_CHECKPOINT_BUSY: Duration = Duration::from_millis(100);

/// The page size of a new database file, in bytes.
const PAGE_SIZE: i64 = 1024;

/// How many read connections are kept open for reuse.
const READERS: usize = 4;

/// What a queued write does once the batch it is in has committed (or failed to).
type Finish = Box<dyn FnOnce(Result<()>) + Send>;

/// A queued write: given the batch's transaction (or why there is none), it runs and says
/// whether its changes stand, and how to answer its caller once the batch commits.
type Job = Box<dyn FnOnce(Result<&mut dyn StoreTx>) -> Option<(bool, Finish)> + Send>;

/// The SQLite store.
///
/// Writes go to one writer thread that owns the write connection and commits every write
/// queued at that moment in one transaction (group commit); each caller is answered only after
/// the commit. A write that fails without having changed a row leaves the others standing; one
/// that fails after changing rows rolls the transaction back (see [`run_transaction`]). Reads use a small pool of other connections, which WAL lets run beside the writer.
pub struct SqliteStore {
    path: PathBuf,
    /// `None` only while the store is dropped, which closes the queue and ends the writer.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Option<JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    /// `now_ms` stamps the migration record and the default settings.
    pub fn open(path: &Path, now_ms: i64) -> Result<SqliteStore> {
        if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() && !parent.exists() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    LeaseError::storage(format!("cannot create {}: {e}", parent.display()))
                })?;
            }
        }
        let conn = connect(path)?;
        migrate(&conn, now_ms)?;
        // The writer checkpoints only as a last resort; a thread of its own does it otherwise,
        // so that the checkpoint's fsync is never on a commit's path.
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES)?;
        let (jobs, queue) = mpsc::channel();
        let (db, wal) = (path.to_path_buf(), beside(path, "-wal"));
        let writer = std::thread::Builder::new()
            .name("leasehold-sqlite-writer".into())
            .spawn(move || {
                let mut checkpointer = Checkpointer::new(db);
                write_batches(&conn, queue, &mut checkpointer);
                checkpointer.stop();
                checkpoint_on_close(&conn, &wal);
            })
            .map_err(|e| LeaseError::storage(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            jobs: Mutex::new(Some(jobs)),
            writer: Some(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// Queues `f` for the writer; `answer` gets its result once its batch has committed.
    fn enqueue<T, F>(&self, f: F, answer: impl FnOnce(Result<T>) + Send + 'static) -> Result<()>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreTx) -> Result<T> + Send + 'static,
    {
        let job: Job = Box::new(move |tx| match tx {
            Err(error) => {
                answer(Err(error));
                None
            }
            Ok(tx) => {
                // A panicking write must not take the writer (and every later write) with it.
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(tx)))
                    .unwrap_or_else(|_| Err(LeaseError::storage("a write panicked")));
                let stands = result.is_ok();
                let finish: Finish = Box::new(move |committed: Result<()>| {
                    answer(committed.and(result));
                });
                Some((stands, finish))
            }
        });
        self.jobs
            .lock()
            .map_err(|_| LeaseError::storage("writer queue lock poisoned"))?
            .as_ref()
            .ok_or_else(|| LeaseError::storage("the store is closed"))?
            .send(job)
            .map_err(|_| LeaseError::storage("the writer thread has stopped"))
    }
}

impl Drop for SqliteStore {
    /// Closes the writer's queue and waits for the writer to finish what was queued (and, if the
    /// log has grown long, to checkpoint it: see [`CLOSE_CHECKPOINT_BYTES`]), so that a process
    /// exiting right after does not cut that work short.
    fn drop(&mut self) {
        if let Ok(jobs) = self.jobs.get_mut() {
            jobs.take();
        }
        if let Some(writer) = self.writer.take() {
            // The last handle on the store may go inside a queued write, on the writer itself.
            if writer.thread().id() != std::thread::current().id() && writer.join().is_err() {
                tracing::warn!("the SQLite writer thread panicked");
            }
        }
    }
}

/// Opens a connection to the file at `path` through leasehold's VFS, which writes each commit's
/// WAL frames with one call (see `vfs.rs`), or through SQLite's default one if that VFS could
/// not be registered.
pub(crate) fn open_file(path: &Path) -> Result<Connection> {
    let opened = match vfs::name() {
        Some(name) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), name),
        None => Connection::open(path),
    };
    opened.map_err(|e| LeaseError::storage(format!("cannot open {}: {e}", path.display())))
}

/// Opens a connection set up for leasehold: busy timeout, WAL, `synchronous = NORMAL`.
fn connect(path: &Path) -> Result<Connection> {
    let conn = open_file(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Only a brand-new file takes this (before its first table and before WAL); an existing
    // database keeps its page size. Small pages matter because nearly every index a write
    // touches is keyed by something random (a lease id, a path), so each write dirties a page of
    // its own per index, and the whole page goes to the WAL: 1 KiB pages write about a third of
    // the bytes that 4 KiB pages do for the same leases (see BENCHMARKS.md).
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    // WAL lets readers and one writer work at once across processes; NORMAL sync keeps every
    // commit safe from a process crash (the WAL is written before COMMIT returns), trading
    // only the last commits on power loss for speed.
    set_wal_mode(&conn)?;
    keep_wal_file(&conn);
    // Checkpoints run on purpose (the checkpoint thread, a closing writer, the server's
    // shutdown), never as a side effect of closing the last connection: see
    // [`CLOSE_CHECKPOINT_BYTES`].
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // A statement that may fail half-way keeps the pages it may roll back to in a statement
    // journal: in memory, not in a temporary file.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// The checkpoint thread, owned by the writer: after commits, it copies the write-ahead log
/// into the database file (PASSIVE: never blocking the writer or readers), gathering the
/// commits of a short while into one checkpoint, so that the checkpoint's `fsync` is never on
/// a commit's path.
///
/// It starts only once the process has shown it lives long enough to need it: at its second
/// batch, or when the writer has been idle [`CHECKPOINT_DELAY`] after its first. A short-lived
/// process (a CLI call commits once and exits) never starts it; the log it leaves is
/// [`checkpoint_on_close`]'s to keep short.
struct Checkpointer {
    path: PathBuf,
    state: CheckpointerState,
}

enum CheckpointerState {
    /// No batch committed yet (or the thread could not start at the last try).
    Idle,
    /// One batch committed, and no thread yet.
    OneBatch,
    Running(CheckpointThread),
}

/// The running checkpoint thread, and how the writer signals it.
struct CheckpointThread {
    /// One slot: a commit made while a checkpoint is already due adds nothing.
    dirty: mpsc::SyncSender<()>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Checkpointer {
    fn new(path: PathBuf) -> Checkpointer {
        Checkpointer {
            path,
            state: CheckpointerState::Idle,
        }
    }

    /// How long the writer may wait for its next write before [`Checkpointer::start`] is due
    /// (`None`: as long as it likes).
    fn patience(&self) -> Option<Duration> {
        matches!(self.state, CheckpointerState::OneBatch).then_some(CHECKPOINT_DELAY)
    }

    /// Told after each batch.
    fn committed(&mut self) {
        match &self.state {
            // If a checkpoint is already due, there is nothing to add.
            CheckpointerState::Running(running) => {
                let _ = running.dirty.try_send(());
            }
            CheckpointerState::OneBatch => self.start(),
            CheckpointerState::Idle => self.state = CheckpointerState::OneBatch,
        }
    }

    /// Starts the thread, with the commits made so far to checkpoint. If it cannot start, the
    /// writer's own automatic checkpoint still bounds the log.
    fn start(&mut self) {
        let (dirty, committed) = mpsc::sync_channel(1);
        let stop = Arc::new(AtomicBool::new(false));
        let (path, stopping) = (self.path.clone(), stop.clone());
        self.state = match std::thread::Builder::new()
            .name("leasehold-sqlite-checkpoint".into())
            .spawn(move || checkpoints(&path, committed, &stopping))
        {
            Ok(thread) => {
                let _ = dirty.try_send(());
                CheckpointerState::Running(CheckpointThread {
                    dirty,
                    stop,
                    thread,
                })
            }
            Err(error) => {
                tracing::warn!(%error, "cannot start the checkpoint thread");
                CheckpointerState::Idle
            }
        };
    }

    /// Ends the thread, without a last checkpoint, and waits for it: the closing checkpoint
    /// must not find the log busy with one of its own.
    fn stop(&mut self) {
        if let CheckpointerState::Running(running) =
            std::mem::replace(&mut self.state, CheckpointerState::Idle)
        {
            running.stop.store(true, Ordering::Release);
            running.thread.thread().unpark();
            drop(running.dirty);
            if running.thread.join().is_err() {
                tracing::warn!("the SQLite checkpoint thread panicked");
            }
        }
    }
}

/// The checkpoint thread's loop: see [`Checkpointer`]. Ends as soon as the writer sets `stop`
/// (and unparks it) or drops its sender.
fn checkpoints(path: &Path, committed: mpsc::Receiver<()>, stop: &AtomicBool) {
    let mut conn = None;
    while committed.recv().is_ok() {
        // Parked until the delay is over, not waiting on the channel: the commits of the
        // meantime fill its one slot without waking this thread (a wake-up per batch cost the
        // server 2-5% of its pairs/s), and the slot starts the next round at once.
        let due = Instant::now() + CHECKPOINT_DELAY;
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            let left = due.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
        if conn.is_none() {
            conn = connect(path)
                .map_err(|error| tracing::warn!(%error, "cannot open the checkpoint connection"))
                .ok();
        }
        if let Some(conn) = &conn {
            if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::debug!(%error, "checkpoint failed; the next one will retry");
            }
        }
    }
}

/// The file beside the database at `path` whose name is the database's plus `suffix` (how
/// SQLite names its `-wal` and `-shm`, and leasehold its `-revocations`).
pub(crate) fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Run by the writer once its queue has closed: if the write-ahead log has grown past
/// [`CLOSE_CHECKPOINT_BYTES`], copies it into the database and cuts it to nothing (a TRUNCATE
/// checkpoint), unless other processes' readers keep it busy.
fn checkpoint_on_close(conn: &Connection, wal: &Path) {
    let size = std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0);
    if size <= CLOSE_CHECKPOINT_BYTES {
        return;
    }
    let checkpointed = conn.busy_timeout(CLOSE_CHECKPOINT_BUSY).and_then(|()| {
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            row.get::<_, i64>(0)
        })
    });
    match checkpointed {
        Ok(0) => {}
        Ok(_) => tracing::debug!(
            size,
            "the log is in use; it is left for its readers to checkpoint"
        ),
        Err(error) => tracing::debug!(%error, size, "cannot checkpoint the log on close"),
    }
}

/// The writer thread: takes every write queued, runs them in one `BEGIN IMMEDIATE` transaction
/// (see [`run_transaction`]), commits once, then answers each. Ends when the store is dropped.
fn write_batches(conn: &Connection, queue: mpsc::Receiver<Job>, checkpointer: &mut Checkpointer) {
    let settings = RefCell::new(SettingsCache::default());
    let fencing = RefCell::new(Fencing::default());
    loop {
        let first = match checkpointer.patience() {
            None => match queue.recv() {
                Ok(job) => job,
                Err(_) => return,
            },
            Some(patience) => match queue.recv_timeout(patience) {
                Ok(job) => job,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    checkpointer.start();
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        run_batch(conn, &settings, &fencing, batch);
        checkpointer.committed();
    }
}

fn run_batch(
    conn: &Connection,
    settings: &RefCell<SettingsCache>,
    fencing: &RefCell<Fencing>,
    batch: Vec<Job>,
) {
    let mut jobs = batch.into_iter().peekable();
    while jobs.peek().is_some() {
        run_transaction(conn, settings, fencing, &mut jobs);
    }
}

/// Runs queued writes in one transaction and commits it, then answers them. It stops early,
/// rolling back, when a write fails after changing rows; the writes not yet run are left in
/// `jobs` for the next transaction.
///
/// No write runs in a savepoint of its own: SQLite would copy every page a write changes into
/// the statement journal first, in case it rolls back (1–6% of the server's throughput in
/// short runs, see BENCHMARKS.md). A write that fails without having changed a row (every
/// refusal of the engine: it decides before it writes) needs no undoing, and the batch goes
/// on. One that fails after changing rows (a storage error, a panic) can only be undone with
/// the whole transaction: it rolls back, and the writes that ran before it in it are answered
/// with an error, having stored nothing. So are they, and the write itself, when an error made
/// SQLite end the transaction on its own (a full disk, an I/O error).
fn run_transaction(
    conn: &Connection,
    settings: &RefCell<SettingsCache>,
    fencing: &RefCell<Fencing>,
    jobs: &mut impl Iterator<Item = Job>,
) {
    if let Err(error) = conn.execute_batch("BEGIN IMMEDIATE") {
        let error = LeaseError::from(error);
        for job in jobs {
            job(Err(error.clone()));
        }
        return;
    }
    // Nobody else can commit while this transaction holds the write lock, so the settings
    // copy is checked against `data_version` once per batch, not once per write.
    settings.borrow_mut().check(conn);
    let mut finishes = Vec::new();
    for job in jobs.by_ref() {
        let changes_before = conn.total_changes();
        let mut tx = SqliteTx {
            conn,
            settings: Some(settings),
            fencing: Some(fencing),
        };
        let Some((stands, finish)) = job(Ok(&mut tx)) else {
            continue;
        };
        // A statement that fails is undone by SQLite itself, and is not counted in
        // `total_changes`. Some errors (a full disk, an I/O error) end the whole transaction
        // instead; then nothing of the batch is stored, whether this write stands or not, and
        // no later write may run outside a transaction.
        let ended = conn.is_autocommit();
        let changed = conn.total_changes() != changes_before;
        if !ended && (stands || !changed) {
            finishes.push(finish);
            continue;
        }
        roll_back(conn, settings, fencing);
        tracing::warn!(
            rolled_back_with_it = finishes.len(),
            ended_by_sqlite = ended,
            "a write failed after changing rows, or its transaction ended; rolled back"
        );
        let error = LeaseError::storage(
            "this write was rolled back with its batch, storing nothing: a write of the batch \
             failed after changing rows, or SQLite ended the transaction; try again",
        );
        for earlier in finishes {
            earlier(Err(error.clone()));
        }
        // A failed write keeps its own error; one that stood was rolled back all the same.
        finish(if stands { Err(error) } else { Ok(()) });
        return;
    }
    let committed: Result<()> = fencing
        .borrow_mut()
        .store(conn)
        .and_then(|()| conn.execute_batch("COMMIT").map_err(LeaseError::from));
    if committed.is_err() {
        roll_back(conn, settings, fencing);
    }
    for finish in finishes {
        finish(committed.clone());
    }
}

/// Ends the running transaction without keeping anything, and forgets what the writer had
/// counted or read inside it: the batch's fencing tokens (burnt: tokens only grow) and a copy
/// of settings that may hold a change now undone.
fn roll_back(conn: &Connection, settings: &RefCell<SettingsCache>, fencing: &RefCell<Fencing>) {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    fencing.borrow_mut().forget();
    settings.borrow_mut().copy = None;
}

impl Store for SqliteStore {
    fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreTx) -> Result<T> + Send + 'static,
    {
        let (answer, result) = mpsc::sync_channel(1);
        self.enqueue(f, move |r| {
            let _ = answer.send(r);
        })?;
        result
            .recv()
            .map_err(|_| LeaseError::storage("the writer thread dropped a write"))?
    }

    fn submit_write<T, F>(self: Arc<Self>, f: F) -> WriteFuture<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreTx) -> Result<T> + Send + 'static,
    {
        let (answer, result) = oneshot::channel();
        let queued = self.enqueue(f, move |r| {
            let _ = answer.send(r);
        });
        Box::pin(async move {
            queued?;
            result
                .await
                .map_err(|_| LeaseError::storage("the writer thread dropped a write"))?
        })
    }

    fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut dyn StoreTx) -> Result<T>,
    {
        let pooled = self.readers.lock().ok().and_then(|mut pool| pool.pop());
        let mut conn = match pooled {
            Some(conn) => conn,
            None => connect(&self.path)?,
        };
        let result = (|| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
            let value = f(&mut SqliteTx {
                conn: &tx,
                settings: None,
                fencing: None,
            })?;
            tx.commit()?;
            Ok(value)
        })();
        if let Ok(mut pool) = self.readers.lock() {
            if pool.len() < READERS {
                pool.push(conn);
            }
        }
        result
    }

    fn poll_interval(&self) -> Option<Duration> {
        Some(POLL_INTERVAL)
    }
}

/// Switches the file to WAL. On a brand-new file that other processes are creating at the same
/// moment, SQLite can answer BUSY here without calling the busy handler, so retry for a while.
fn set_wal_mode(conn: &Connection) -> Result<()> {
    // Already WAL (every open after the first): reading the mode takes no lock.
    let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Ok(()) => return Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < BUSY_TIMEOUT =>
            {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Keeps the WAL file when the last connection closes, so that the next short-lived process (a
/// CLI call) does not create it again and sync its directory.
fn keep_wal_file(conn: &Connection) {
    let mut on: std::os::raw::c_int = 1;
    // SAFETY: `conn.handle()` is this open connection's handle, valid for the call; the
    // PERSIST_WAL file control reads and writes the one int it is given.
    let code = unsafe {
        rusqlite::ffi::sqlite3_file_control(
            conn.handle(),
            c"main".as_ptr(),
            rusqlite::ffi::SQLITE_FCNTL_PERSIST_WAL,
            (&mut on as *mut std::os::raw::c_int).cast(),
        )
    };
    if code != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(code, "cannot keep the WAL file between connections");
    }
}

/// Applies the migrations not yet recorded as successful and seeds missing settings, all in one
/// transaction under the write lock, so that processes opening a new file at once apply each
/// migration exactly once and none of them sees a half-made schema.
fn migrate(conn: &Connection, now_ms: i64) -> Result<()> {
    migrate_with(conn, MIGRATIONS, now_ms)
}

/// [`migrate`] with the list of migrations given: the tests make databases of earlier
/// versions with the first few.
fn migrate_with(conn: &Connection, migrations: &[(i64, &str, &str)], now_ms: i64) -> Result<()> {
    let latest = migrations.last().map(|m| m.0).unwrap_or(0);
    // Fast path for every open after the first: a read, no write lock.
    if schema_is_current(conn, latest).unwrap_or(false) {
        return Ok(());
    }
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let mut failed_version = None;
    let result = (|| -> Result<()> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT    NOT NULL,
                 applied_at INTEGER NOT NULL,
                 success    INTEGER NOT NULL
             )",
        )?;
        let newest: i64 = conn.query_row(
            "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE success = 1",
            [],
            |r| r.get(0),
        )?;
        if newest > latest {
            return Err(LeaseError::storage(format!(
                "the database has schema version {newest} but this leasehold knows only up to \
                 {latest}; upgrade leasehold"
            )));
        }
        for (version, name, sql) in migrations.iter().filter(|m| m.0 > newest) {
            failed_version = Some((*version, *name));
            conn.execute_batch(sql)?;
            conn.execute(
                "INSERT OR REPLACE INTO schema_migrations (version, name, applied_at, success)
                 VALUES (?1, ?2, ?3, 1)",
                params![version, name, now_ms],
            )?;
        }
        failed_version = None;
        for spec in SETTINGS {
            conn.execute(
                "INSERT OR IGNORE INTO lease_configs (key, value, description, updated_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![spec.key, spec.default, spec.description, now_ms],
            )?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            conn.execute_batch("COMMIT")?;
            Ok(())
        }
        Err(error) => {
            conn.execute_batch("ROLLBACK")?;
            if let Some((version, name)) = failed_version {
                // Record the failure where it can be seen; the migration is retried on next open.
                let _ = conn.execute(
                    "INSERT OR REPLACE INTO schema_migrations (version, name, applied_at, success)
                     VALUES (?1, ?2, ?3, 0)",
                    params![version, name, now_ms],
                );
            }
            Err(error)
        }
    }
}

fn schema_is_current(conn: &Connection, latest: i64) -> Result<bool> {
    let newest: Option<i64> = conn.query_row(
        "SELECT max(version) FROM schema_migrations WHERE success = 1",
        [],
        |r| r.get(0),
    )?;
    let settings: i64 = conn.query_row("SELECT count(*) FROM lease_configs", [], |r| r.get(0))?;
    Ok(newest == Some(latest) && settings as usize >= SETTINGS.len())
}

struct SqliteTx<'c> {
    conn: &'c Connection,
    /// The writer's copy of the settings, when this transaction is the writer's.
    settings: Option<&'c RefCell<SettingsCache>>,
    /// The writer's fencing counter for the running batch, when this transaction is the
    /// writer's.
    fencing: Option<&'c RefCell<Fencing>>,
}

/// The fencing counter as the writer hands it out within one batch: read from the `fencing`
/// row at the batch's first grant (the write lock is held, so the row is current), counted up
/// in memory, and written back once before the batch commits. A write that fails, or a batch
/// that rolls back, burns the tokens it took; that only leaves gaps, and tokens still only
/// grow.
#[derive(Default)]
struct Fencing {
    /// The last token handed out in the running batch, once one has been.
    current: Option<i64>,
    /// The highest token this writer ever handed out, kept across batches so that a batch
    /// whose commit failed (its tokens never stored) is never followed by smaller ones.
    highest: i64,
}

impl Fencing {
    fn next(&mut self, conn: &Connection) -> Result<u64> {
        let last = match self.current {
            Some(last) => last,
            None => {
                let mut stmt =
                    conn.prepare_cached("SELECT last_token FROM fencing WHERE id = 1")?;
                let stored: i64 = stmt.query_row([], |r| r.get(0))?;
                stored.max(self.highest)
            }
        };
        let token = last + 1;
        self.current = Some(token);
        self.highest = token;
        Ok(token as u64)
    }

    /// Drops the running batch's tokens after its transaction rolled back. They stay burnt:
    /// the next batch counts on from the highest handed out.
    fn forget(&mut self) {
        self.current = None;
    }

    /// Stores the batch's last token, if it handed any out, and starts afresh for the next.
    fn store(&mut self, conn: &Connection) -> Result<()> {
        if let Some(last) = self.current.take() {
            conn.prepare_cached("UPDATE fencing SET last_token = ?1 WHERE id = 1")?
                .execute([last])?;
        }
        Ok(())
    }
}

/// The settings as last read by the writer, with its connection's `PRAGMA data_version` at the
/// time: the version changes whenever another connection commits, and the writer's own changes
/// to the settings clear the copy, so a copy with the current version is current.
#[derive(Default)]
struct SettingsCache {
    copy: Option<SettingsCopy>,
    /// `data_version` as read at the start of the running batch.
    version: i64,
}

/// The settings as read at one `data_version`.
struct SettingsCopy {
    version: i64,
    typed: Settings,
}

impl SettingsCache {
    /// Reads `data_version` for the batch about to run and drops a copy it makes stale. If the
    /// version cannot be read, the copy is dropped: the settings are then read afresh.
    fn check(&mut self, conn: &Connection) {
        let version = conn
            .prepare_cached("PRAGMA data_version")
            .and_then(|mut stmt| stmt.query_row([], |r| r.get(0)));
        match version {
            Ok(version) => self.version = version,
            Err(_) => self.copy = None,
        }
        if self
            .copy
            .as_ref()
            .is_some_and(|copy| copy.version != self.version)
        {
            self.copy = None;
        }
    }
}

fn read_settings(conn: &Connection) -> Result<Vec<(String, String)>> {
    let mut stmt = conn.prepare_cached("SELECT key, value FROM lease_configs")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn conversion_error(what: &str, error: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("bad {what} in database: {error}").into(),
    )
}

fn lease_from_row(row: &Row<'_>) -> rusqlite::Result<Lease> {
    let id: String = row.get(1)?;
    let mode: String = row.get(4)?;
    let status: String = row.get(5)?;
    Ok(Lease {
        seq: row.get(0)?,
        id: Uuid::parse_str(&id).map_err(|e| conversion_error("lease id", e))?,
        file_path: row.get(2)?,
        agent_id: row.get(3)?,
        mode: mode.parse().map_err(|e| conversion_error("mode", e))?,
        status: status.parse().map_err(|e| conversion_error("status", e))?,
        fencing_token: row.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        created_at: Timestamp(row.get(7)?),
        expires_at: Timestamp(row.get(8)?),
        ttl_ms: row.get::<_, i64>(9)? as u64,
        renewal_count: row.get::<_, i64>(10)? as u32,
        max_renewals: row.get::<_, Option<i64>>(11)?.map(|m| m as u32),
        updated_at: Timestamp(row.get(12)?),
        reason: row.get(13)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<HistoryEvent> {
    let lease_id: String = row.get(1)?;
    let event_type: String = row.get(4)?;
    let before: Option<String> = row.get(5)?;
    let after: String = row.get(6)?;
    Ok(HistoryEvent {
        id: row.get(0)?,
        lease_id: Uuid::parse_str(&lease_id).map_err(|e| conversion_error("lease id", e))?,
        agent_id: row.get(2)?,
        file_path: row.get(3)?,
        event_type: event_type
            .parse()
            .map_err(|e| conversion_error("event type", e))?,
        status_before: before
            .map(|s| s.parse())
            .transpose()
            .map_err(|e| conversion_error("status", e))?,
        status_after: after.parse().map_err(|e| conversion_error("status", e))?,
        renewal_count: row.get::<_, i64>(7)? as u32,
        fencing_token: row.get::<_, Option<i64>>(8)?.map(|t| t as u64),
        event_at: Timestamp(row.get(9)?),
        reason: row.get(10)?,
    })
}

/// The SQL condition "`column` (a path) overlaps `path`": the path itself, a folder above it,
/// or (for a folder) anything below it, with its parameters.
fn overlap_condition(column: &str, path: &LeasePath, params: &mut Vec<Value>) -> String {
    let mut keys = path.ancestors();
    keys.push(path.as_str().to_string());
    let marks = vec!["?"; keys.len()].join(", ");
    params.extend(keys.into_iter().map(Value::Text));
    let mut condition = format!("({column} IN ({marks})");
    if let Some((start, end)) = path.descendant_range() {
        condition.push_str(&format!(" OR ({column} >= ? AND {column} < ?)"));
        params.push(Value::Text(start));
        params.push(Value::Text(end));
    }
    condition.push(')');
    condition
}

/// The `WHERE` condition (and `ORDER BY`, `LIMIT`) for [`StoreTx::query_leases`], with its
/// parameters.
fn lease_query_condition(
    query: &LeaseQuery,
    path: Option<&LeasePath>,
    now_ms: i64,
) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let mut conditions = vec!["1 = 1".to_string()];
    if let Some(agent) = &query.agent_id {
        conditions.push("agent_id = ?".into());
        params.push(Value::Text(agent.clone()));
    }
    if let Some(path) = path {
        conditions.push(overlap_condition("file_path", path, &mut params));
    }
    if !query.include_inactive {
        // The first term is implied by the second, but SQLite uses an index that covers only
        // live rows (`WHERE status IN ('active', 'pending')`) only when the query says so.
        conditions.push(
            "status IN ('active', 'pending') AND status = 'active' AND expires_at > ?".into(),
        );
        params.push(Value::Integer(now_ms));
    }
    let mut condition = format!("{} ORDER BY seq", conditions.join(" AND "));
    if let Some(limit) = query.limit {
        condition.push_str(" LIMIT ?");
        params.push(Value::Integer(limit as i64));
    }
    (condition, params)
}

/// What an update writes of one lease, in the order of the update statements' `?1`..`?10`
/// and of the columns of [`SAME_EXPIRY_UPDATES`]'s `v`.
struct LeaseChange<'a> {
    id: String,
    status: &'static str,
    fencing_token: Option<i64>,
    expires_at: i64,
    ttl_ms: i64,
    renewal_count: i64,
    max_renewals: Option<i64>,
    updated_at: i64,
    reason: Option<&'a str>,
    seq: i64,
}

impl<'a> LeaseChange<'a> {
    fn of(lease: &'a Lease) -> LeaseChange<'a> {
        LeaseChange {
            id: lease.id.to_string(),
            status: lease.status.as_str(),
            fencing_token: lease.fencing_token.map(|t| t as i64),
            expires_at: lease.expires_at.0,
            ttl_ms: lease.ttl_ms as i64,
            renewal_count: lease.renewal_count as i64,
            max_renewals: lease.max_renewals.map(|m| m as i64),
            updated_at: lease.updated_at.0,
            reason: lease.reason.as_deref(),
            seq: lease.seq,
        }
    }

    fn values(&self) -> [&dyn ToSql; 10] {
        [
            &self.id,
            &self.status,
            &self.fencing_token,
            &self.expires_at,
            &self.ttl_ms,
            &self.renewal_count,
            &self.max_renewals,
            &self.updated_at,
            &self.reason,
            &self.seq,
        ]
    }
}

/// One history row as stored, in the order of the columns of the history inserts.
struct EventRow<'a> {
    lease_id: String,
    agent_id: &'a str,
    file_path: &'a str,
    event_type: &'static str,
    status_before: Option<&'static str>,
    status_after: &'static str,
    renewal_count: i64,
    fencing_token: Option<i64>,
    event_at: i64,
    reason: Option<&'a str>,
}

impl<'a> EventRow<'a> {
    fn of(event: &'a HistoryEvent) -> EventRow<'a> {
        EventRow {
            lease_id: event.lease_id.to_string(),
            agent_id: &event.agent_id,
            file_path: &event.file_path,
            event_type: event.event_type.as_str(),
            status_before: event.status_before.map(|s| s.as_str()),
            status_after: event.status_after.as_str(),
            renewal_count: event.renewal_count as i64,
            fencing_token: event.fencing_token.map(|t| t as i64),
            event_at: event.event_at.0,
            reason: event.reason.as_deref(),
        }
    }

    fn values(&self) -> [&dyn ToSql; 10] {
        [
            &self.lease_id,
            &self.agent_id,
            &self.file_path,
            &self.event_type,
            &self.status_before,
            &self.status_after,
            &self.renewal_count,
            &self.fencing_token,
            &self.event_at,
            &self.reason,
        ]
    }
}

/// `UPDATE` of [`ROWS_PER_STATEMENT`] leases whose expiry stays as it is (see
/// `update_lease`).
static SAME_EXPIRY_UPDATES: LazyLock<String> = LazyLock::new(|| {
    let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; ROWS_PER_STATEMENT].join(", ");
    format!(
        "WITH v(id, status, fencing_token, expires_at, ttl_ms, renewal_count, max_renewals,
                updated_at, reason, seq) AS (VALUES {rows})
         UPDATE leases SET status = v.status, fencing_token = v.fencing_token,
             renewal_count = v.renewal_count, max_renewals = v.max_renewals,
             updated_at = v.updated_at, reason = v.reason
         FROM v WHERE leases.seq = v.seq AND leases.id = v.id
             AND leases.expires_at = v.expires_at AND leases.ttl_ms = v.ttl_ms"
    )
});

/// The status and `updated_at` of [`ROWS_PER_STATEMENT`] leases, by row id
/// ([`StoreTx::end_leases`]).
static END_LEASES: LazyLock<String> = LazyLock::new(|| {
    let seqs = (3..3 + ROWS_PER_STATEMENT)
        .map(|k| format!("?{k}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("UPDATE leases SET status = ?1, updated_at = ?2 WHERE seq IN ({seqs})")
});

/// `INSERT` of [`ROWS_PER_STATEMENT`] history events.
static HISTORY_INSERTS: LazyLock<String> = LazyLock::new(|| {
    let rows = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; ROWS_PER_STATEMENT].join(", ");
    format!(
        "INSERT INTO lease_history (lease_id, agent_id, file_path, event_type, status_before,
             status_after, renewal_count, fencing_token, event_at, reason) VALUES {rows}"
    )
});

/// The query for [`StoreTx::query_history`], with its parameters.
///
/// History has no index by path or agent (each would cost a page written per event): every
/// event's path and agent are those of its lease, so those filters go through the leases'
/// indexes to the events of the leases found (`lease_history_by_lease`). The `CROSS JOIN` keeps
/// SQLite from scanning the history instead.
fn history_sql(query: &HistoryQuery, path: Option<&LeasePath>) -> (String, Vec<Value>) {
    let mut params = Vec::new();
    let mut conditions = vec!["1 = 1".to_string()];
    let by_lease = path.is_some() || query.agent_id.is_some();
    if let Some(path) = path {
        conditions.push(overlap_condition("l.file_path", path, &mut params));
    }
    if let Some(agent) = &query.agent_id {
        conditions.push("l.agent_id = ?".into());
        params.push(Value::Text(agent.clone()));
    }
    if let Some(since) = query.since {
        conditions.push("h.event_at >= ?".into());
        params.push(Value::Integer(since.0));
    }
    if let Some(until) = query.until {
        conditions.push("h.event_at < ?".into());
        params.push(Value::Integer(until.0));
    }
    if let Some(after) = query.after_id {
        conditions.push("h.id > ?".into());
        params.push(Value::Integer(after));
    }
    let from = if by_lease {
        "leases l CROSS JOIN lease_history h ON h.lease_id = l.id"
    } else {
        "lease_history h"
    };
    let order = if query.newest_first { "DESC" } else { "ASC" };
    let mut sql = format!(
        "SELECT {HISTORY_COLUMNS} FROM {from} WHERE {} ORDER BY h.id {order}",
        conditions.join(" AND ")
    );
    if let Some(limit) = query.limit {
        sql.push_str(" LIMIT ?");
        params.push(Value::Integer(limit as i64));
    }
    (sql, params)
}

impl SqliteTx<'_> {
    /// The settings, typed: the writer's copy when it is current, else read (and, for the
    /// writer, kept).
    fn cached_settings(&self) -> Result<Settings> {
        let Some(cache) = self.settings else {
            return Settings::from_stored(&read_settings(self.conn)?);
        };
        if let Some(copy) = &cache.borrow().copy {
            return Ok(copy.typed.clone());
        }
        let typed = Settings::from_stored(&read_settings(self.conn)?)?;
        let mut cache = cache.borrow_mut();
        cache.copy = Some(SettingsCopy {
            version: cache.version,
            typed: typed.clone(),
        });
        Ok(typed)
    }

    fn leases_where(&self, condition: &str, params: Vec<Value>) -> Result<Vec<Lease>> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE {condition}");
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), lease_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

impl StoreTx for SqliteTx<'_> {
    fn lock_paths(&mut self, _paths: &[LeasePath]) -> Result<bool> {
        // BEGIN IMMEDIATE already holds the database's single write lock.
        Ok(false)
    }

    fn load_settings(&mut self) -> Result<Vec<(String, String)>> {
        // Only a change of settings reads them as text; every write reads them typed.
        read_settings(self.conn)
    }

    fn settings(&mut self) -> Result<Settings> {
        self.cached_settings()
    }

    fn save_setting(&mut self, key: &str, value: &str, now_ms: i64) -> Result<()> {
        if let Some(cache) = self.settings {
            cache.borrow_mut().copy = None;
        }
        let description = SETTINGS
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.description)
            .unwrap_or_default();
        self.conn.execute(
            "INSERT INTO lease_configs (key, value, description, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            params![key, value, description, now_ms],
        )?;
        Ok(())
    }

    fn live_overlapping(&mut self, path: &LeasePath, now_ms: i64) -> Result<Vec<Lease>> {
        // One indexed point lookup per key (the path and each folder above it), and for a
        // folder one range scan below it, each a statement prepared once. A single query with
        // `file_path IN (...)` and `ORDER BY` would build a temporary table and a sorter on
        // every call; this is the hottest read of every acquisition.
        let mut rows = Vec::new();
        let mut at_key = self.conn.prepare_cached(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases WHERE status IN ('active', 'pending') AND file_path = ?1 \
             AND expires_at > ?2"
        ))?;
        for key in path.ancestors() {
            for row in at_key.query_map(params![key, now_ms], lease_from_row)? {
                rows.push(row?);
            }
        }
        match path.descendant_range() {
            // The range starts at the folder itself.
            Some((start, end)) => {
                let mut below = self.conn.prepare_cached(concat!(
                    "SELECT ",
                    lease_columns!(),
                    " FROM leases WHERE status IN ('active', 'pending') AND file_path >= ?1 \
                     AND file_path < ?2 AND expires_at > ?3"
                ))?;
                for row in below.query_map(params![start, end, now_ms], lease_from_row)? {
                    rows.push(row?);
                }
            }
            None => {
                for row in at_key.query_map(params![path.as_str(), now_ms], lease_from_row)? {
                    rows.push(row?);
                }
            }
        }
        rows.sort_unstable_by_key(|lease| lease.seq);
        Ok(rows)
    }

    fn live_of_agent(&mut self, agent: &str, now_ms: i64) -> Result<Vec<Lease>> {
        self.leases_where(
            "agent_id = ? AND status IN ('active', 'pending') AND expires_at > ? ORDER BY seq",
            vec![Value::Text(agent.to_string()), Value::Integer(now_ms)],
        )
    }

    fn lease(&mut self, id: &Uuid) -> Result<Option<Lease>> {
        let mut stmt = self.conn.prepare_cached(concat!(
            "SELECT ",
            lease_columns!(),
            " FROM leases WHERE id = ?1"
        ))?;
        Ok(stmt
            .query_row([id.to_string()], lease_from_row)
            .optional()?)
    }

    fn insert_lease(&mut self, lease: &Lease) -> Result<i64> {
        let mut stmt = self.conn.prepare_cached(
            "INSERT INTO leases (id, file_path, agent_id, mode, status, fencing_token, created_at,
                 expires_at, ttl_ms, renewal_count, max_renewals, updated_at, reason)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        )?;
        stmt.execute(params![
            lease.id.to_string(),
            lease.file_path,
            lease.agent_id,
            lease.mode.as_str(),
            lease.status.as_str(),
            lease.fencing_token.map(|t| t as i64),
            lease.created_at.0,
            lease.expires_at.0,
            lease.ttl_ms as i64,
            lease.renewal_count as i64,
            lease.max_renewals.map(|m| m as i64),
            lease.updated_at.0,
            lease.reason,
        ])?;
        Ok(self.conn.last_insert_rowid())
    }

    fn update_lease(&mut self, lease: &Lease) -> Result<()> {
        // By `seq`, the row id, which every stored lease carries: no lookup in the index of
        // ids. The id must still match, so a stale `seq` changes nothing.
        //
        // Most updates (a release, an expiry, a failed wait) leave the expiry as it was. SQLite
        // rewrites an index entry whenever a column of that index is in the SET list, changed or
        // not, so those go first through a statement without `expires_at` and `ttl_ms`, which
        // matches only when both are unchanged; the index by agent and expiry is then left
        // alone. Anything else (a renewal, a grant) takes the full statement. Both take the
        // same parameters.
        let change = LeaseChange::of(lease);
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE leases SET status = ?2, fencing_token = ?3, renewal_count = ?6,
                     max_renewals = ?7, updated_at = ?8, reason = ?9
                 WHERE seq = ?10 AND id = ?1 AND expires_at = ?4 AND ttl_ms = ?5",
            )?
            .execute(&change.values()[..])?;
        if changed == 1 {
            return Ok(());
        }
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE leases SET status = ?2, fencing_token = ?3, expires_at = ?4, ttl_ms = ?5,
                     renewal_count = ?6, max_renewals = ?7, updated_at = ?8, reason = ?9
                 WHERE seq = ?10 AND id = ?1",
            )?
            .execute(&change.values()[..])?;
        if changed != 1 {
            return Err(LeaseError::storage(format!(
                "lease {} vanished during update",
                lease.id
            )));
        }
        Ok(())
    }

    fn update_leases(&mut self, leases: &[Lease]) -> Result<()> {
        // Whole chunks in one statement each, for the updates that keep the expiry (as in
        // `update_lease`). A chunk the statement did not match whole (some expiry changed)
        // goes again through `update_lease`, which writes the matched rows once more with the
        // same values; so does the rest of the list. The count of changed rows says which case
        // it is: a `RETURNING` clause, to tell the rows apart, cost cleanup an ephemeral table.
        let mut chunks = leases.chunks_exact(ROWS_PER_STATEMENT);
        for chunk in &mut chunks {
            let mut stmt = self.conn.prepare_cached(&SAME_EXPIRY_UPDATES)?;
            let changes: Vec<LeaseChange> = chunk.iter().map(LeaseChange::of).collect();
            let params = changes.iter().flat_map(|change| change.values());
            let changed = stmt.execute(rusqlite::params_from_iter(params))?;
            drop(stmt);
            if changed != chunk.len() {
                chunk
                    .iter()
                    .try_for_each(|lease| self.update_lease(lease))?;
            }
        }
        chunks
            .remainder()
            .iter()
            .try_for_each(|lease| self.update_lease(lease))
    }

    fn end_leases(&mut self, leases: &[Lease]) -> Result<()> {
        // Only the two columns, by row id, up to 32 rows a statement: neither the values of a
        // whole row nor the checks of `update_leases` (the rows were read in this transaction,
        // under the write lock). Setting only these, rather than every column from a list of
        // values, made Python's replay of a cleanup 15-25% faster (see BENCHMARKS.md).
        let mut groups: Vec<((&str, i64), Vec<i64>)> = Vec::new();
        for lease in leases {
            let key = (lease.status.as_str(), lease.updated_at.0);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, seqs)) => seqs.push(lease.seq),
                None => groups.push((key, vec![lease.seq])),
            }
        }
        for ((status, updated_at), seqs) in groups {
            for chunk in seqs.chunks(ROWS_PER_STATEMENT) {
                let mut params = vec![Value::Text(status.into()), Value::Integer(updated_at)];
                // A short chunk repeats its last row, which changes nothing twice.
                let last = chunk[chunk.len() - 1];
                params.extend(
                    (0..ROWS_PER_STATEMENT)
                        .map(|k| Value::Integer(chunk.get(k).copied().unwrap_or(last))),
                );
                let changed = self
                    .conn
                    .prepare_cached(&END_LEASES)?
                    .execute(rusqlite::params_from_iter(params))?;
                if changed != chunk.len() {
                    return Err(LeaseError::storage(format!(
                        "{} of {} leases vanished while they ended",
                        chunk.len() - changed,
                        chunk.len()
                    )));
                }
            }
        }
        Ok(())
    }

    fn next_fencing_token(&mut self) -> Result<u64> {
        if let Some(fencing) = self.fencing {
            return fencing.borrow_mut().next(self.conn);
        }
        let mut stmt = self.conn.prepare_cached(
            "UPDATE fencing SET last_token = last_token + 1 WHERE id = 1 RETURNING last_token",
        )?;
        let token: i64 = stmt.query_row([], |r| r.get(0))?;
        Ok(token as u64)
    }

    fn query_leases(
        &mut self,
        query: &LeaseQuery,
        path: Option<&LeasePath>,
        now_ms: i64,
    ) -> Result<Vec<Lease>> {
        let (condition, params) = lease_query_condition(query, path, now_ms);
        self.leases_where(&condition, params)
    }

    fn due_for_expiry(&mut self, now_ms: i64, limit: usize) -> Result<Vec<Lease>> {
        self.leases_where(
            "status IN ('active', 'pending') AND expires_at <= ? ORDER BY expires_at, seq LIMIT ?",
            vec![Value::Integer(now_ms), Value::Integer(limit as i64)],
        )
    }

    fn insert_history(&mut self, event: &HistoryEvent) -> Result<HistoryEvent> {
        self.conn
            .prepare_cached(
                "INSERT INTO lease_history (lease_id, agent_id, file_path, event_type,
                     status_before, status_after, renewal_count, fencing_token, event_at, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(&EventRow::of(event).values()[..])?;
        let mut stored = event.clone();
        stored.id = self.conn.last_insert_rowid();
        Ok(stored)
    }

    fn insert_history_many(&mut self, events: &[HistoryEvent]) -> Result<Vec<HistoryEvent>> {
        let mut stored = Vec::with_capacity(events.len());
        let mut chunks = events.chunks_exact(ROWS_PER_STATEMENT);
        for chunk in &mut chunks {
            let mut stmt = self.conn.prepare_cached(&HISTORY_INSERTS)?;
            let rows: Vec<EventRow> = chunk.iter().map(EventRow::of).collect();
            let params = rows.iter().flat_map(|row| row.values());
            stmt.execute(rusqlite::params_from_iter(params))?;
            // One INSERT stores its rows in the order of its VALUES, and AUTOINCREMENT gives
            // each new row one more than the largest id the table ever had: the chunk's ids
            // are the ones just below the last.
            let last = self.conn.last_insert_rowid();
            let first = last - chunk.len() as i64 + 1;
            stored.extend(chunk.iter().zip(first..).map(|(event, id)| HistoryEvent {
                id,
                ..event.clone()
            }));
        }
        for event in chunks.remainder() {
            stored.push(self.insert_history(event)?);
        }
        Ok(stored)
    }

    fn query_history(
        &mut self,
        query: &HistoryQuery,
        path: Option<&LeasePath>,
    ) -> Result<Vec<HistoryEvent>> {
        let (sql, params) = history_sql(query, path);
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), event_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn purge_history(&mut self, before_ms: i64) -> Result<u64> {
        let deleted = self
            .conn
            .execute("DELETE FROM lease_history WHERE event_at < ?1", [before_ms])?;
        Ok(deleted as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LeaseMode, LeaseStatus};

    fn lease(n: usize) -> Lease {
        Lease {
            id: Uuid::new_v4(),
            file_path: format!("f{n}.rs"),
            agent_id: "a".into(),
            mode: LeaseMode::Exclusive,
            status: LeaseStatus::Active,
            fencing_token: Some(n as u64),
            created_at: Timestamp(0),
            expires_at: Timestamp(1_000),
            ttl_ms: 1_000,
            renewal_count: 0,
            max_renewals: None,
            updated_at: Timestamp(0),
            reason: None,
            seq: 0,
        }
    }

    /// Many rows written with one statement (cleanup's path) come out exactly as one at a
    /// time would: every field of every lease, whether its expiry changed or not, and every
    /// event with the id it was stored under, in order.
    #[test]
    fn rows_written_together_are_stored_as_written() {
        use crate::model::EventType;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("l.db"), 0).unwrap();
        let count = ROWS_PER_STATEMENT * 2 + 5;
        let (leases, events) = store
            .write(move |tx| {
                let mut leases = Vec::new();
                for n in 0..count {
                    let mut row = lease(n);
                    row.seq = tx.insert_lease(&row)?;
                    leases.push(row);
                }
                for (n, row) in leases.iter_mut().enumerate() {
                    row.status = LeaseStatus::Expired;
                    row.updated_at = Timestamp(500 + n as i64);
                    row.renewal_count = n as u32;
                    row.reason = (n % 2 == 0).then(|| format!("why {n}"));
                    if n % 7 == 0 {
                        // A changed expiry: not for the one-statement path.
                        row.expires_at = Timestamp(9_000 + n as i64);
                    }
                }
                tx.update_leases(&leases)?;
                let events: Vec<HistoryEvent> = leases
                    .iter()
                    .map(|row| HistoryEvent {
                        id: 0,
                        lease_id: row.id,
                        agent_id: row.agent_id.clone(),
                        file_path: row.file_path.clone(),
                        event_type: EventType::Expired,
                        status_before: Some(LeaseStatus::Active),
                        status_after: row.status,
                        renewal_count: row.renewal_count,
                        fencing_token: row.fencing_token,
                        event_at: row.updated_at,
                        reason: row.reason.clone(),
                    })
                    .collect();
                let stored = tx.insert_history_many(&events)?;
                Ok((leases, stored))
            })
            .unwrap();
        let (stored_leases, history) = store
            .read(|tx| {
                let mut rows = Vec::new();
                for row in &leases {
                    rows.push(tx.lease(&row.id)?.unwrap());
                }
                Ok((rows, tx.query_history(&HistoryQuery::default(), None)?))
            })
            .unwrap();
        assert_eq!(stored_leases, leases);
        assert_eq!(history, events);
        assert!(events.windows(2).all(|w| w[0].id < w[1].id));
    }

    /// Ending many leases at once (cleanup's path) writes their status and `updated_at`, in
    /// groups by those values and in short chunks as in full ones, and touches no other row
    /// or field.
    #[test]
    fn ended_rows_change_only_their_status() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("l.db"), 0).unwrap();
        let count = ROWS_PER_STATEMENT * 2 + 5;
        let (before, expected) = store
            .write(move |tx| {
                let mut leases = Vec::new();
                for n in 0..count + 3 {
                    let mut row = lease(n);
                    row.reason = Some(format!("why {n}"));
                    row.renewal_count = n as u32;
                    row.seq = tx.insert_lease(&row)?;
                    leases.push(row);
                }
                // The last three stay as they are.
                let mut ended = leases[..count].to_vec();
                for (n, row) in ended.iter_mut().enumerate() {
                    if n % 3 == 0 {
                        row.status = LeaseStatus::Failed;
                        row.updated_at = Timestamp(700);
                    } else {
                        row.status = LeaseStatus::Expired;
                        row.updated_at = Timestamp(500 + (n % 2) as i64);
                    }
                }
                tx.end_leases(&ended)?;
                ended.extend_from_slice(&leases[count..]);
                Ok((leases, ended))
            })
            .unwrap();
        let stored = store
            .read(move |tx| {
                before
                    .iter()
                    .map(|row| Ok(tx.lease(&row.id)?.unwrap()))
                    .collect::<Result<Vec<_>>>()
            })
            .unwrap();
        assert_eq!(stored, expected);
        // A row that is not there is an error, not a silent no-op.
        let mut gone = expected[0].clone();
        gone.seq = 10_000;
        assert!(store.write(move |tx| tx.end_leases(&[gone])).is_err());
    }

    /// Short-lived stores in a row (as CLI calls are) leave the write-ahead log short: closing
    /// never checkpoints by itself, so the log grows by what each store wrote until it passes
    /// the bound, when the closing writer empties it. Every lease is still there afterwards.
    #[test]
    fn closing_stores_keep_the_log_short() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let wal = beside(&db, "-wal");
        let size = || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
        let mut largest = 0;
        let mut emptied = 0;
        let (stores, each) = (200, 8);
        for n in 0..stores {
            let store = SqliteStore::open(&db, 0).unwrap();
            store
                .write(move |tx| {
                    (n * each..(n + 1) * each)
                        .try_for_each(|k| tx.insert_lease(&lease(k)).map(drop))
                })
                .unwrap();
            drop(store);
            let now = size();
            if now == 0 {
                emptied += 1;
            }
            largest = largest.max(now);
        }
        assert!(
            largest <= CLOSE_CHECKPOINT_BYTES + 64 * 1024,
            "the log grew to {largest} bytes"
        );
        assert!(emptied > 0, "the log was never emptied");
        let store = SqliteStore::open(&db, 0).unwrap();
        let stored = store
            .read(|tx| tx.query_leases(&LeaseQuery::default(), None, 0))
            .unwrap();
        assert_eq!(stored.len(), stores * each);
    }

    /// A store that lives on after its one write (the checkpoint thread starts when the writer
    /// has been idle a while) gets its log copied into the database file without closing.
    #[test]
    fn a_long_lived_store_checkpoints_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let store = SqliteStore::open(&db, 0).unwrap();
        store.write(|tx| tx.insert_lease(&lease(1))).unwrap();
        let file_size = || std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
        let written = file_size();
        // Polls for the background thread's work (not for any expiry), for at most 10 s.
        let deadline = Instant::now() + Duration::from_secs(10);
        while file_size() <= written && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            file_size() > written,
            "the database file is still {written} bytes: no checkpoint ran"
        );
    }

    /// Tokens handed out within a batch are counted in memory and stored once per batch: they
    /// are still unique and growing when writes of the batch fail, and a store opened afresh on
    /// the file continues above every token handed out, including those of failed writes.
    #[test]
    fn fencing_tokens_grow_across_batches_failures_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        let store = Arc::new(SqliteStore::open(&db, 0).unwrap());
        let writers: Vec<_> = (0..48)
            .map(|n| {
                let store = store.clone();
                std::thread::spawn(move || {
                    store.write(move |tx| {
                        let token = tx.next_fencing_token()?;
                        if n % 3 == 0 {
                            return Err(LeaseError::invalid("test", "this write fails"));
                        }
                        Ok(token)
                    })
                })
            })
            .collect();
        let mut tokens: Vec<u64> = writers
            .into_iter()
            .filter_map(|w| w.join().unwrap().ok())
            .collect();
        assert_eq!(tokens.len(), 32);
        tokens.sort_unstable();
        tokens.dedup();
        assert_eq!(tokens.len(), 32, "a token was handed out twice");
        let highest = *tokens.last().unwrap();
        drop(store);
        let reopened = SqliteStore::open(&db, 0).unwrap();
        let next = reopened.write(|tx| tx.next_fencing_token()).unwrap();
        assert!(next > highest, "{next} after {highest}");
    }

    /// History by path or agent, and an agent's live leases, are found through the indexes
    /// meant for them: never by scanning the history, nor every lease the agent ever held.
    #[test]
    fn filtered_reads_use_the_indexes_meant_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("l.db");
        drop(SqliteStore::open(&db, 0).unwrap());
        let conn = connect(&db).unwrap();
        let plan = |sql: &str, params: Vec<Value>| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let steps = stmt
                .query_map(rusqlite::params_from_iter(params), |r| {
                    r.get::<_, String>(3)
                })
                .unwrap();
            steps.map(|s| s.unwrap()).collect::<Vec<_>>().join("; ")
        };
        let folder = LeasePath::parse("src/").unwrap();
        let file = LeasePath::parse("src/a/b.rs").unwrap();
        let by_agent = HistoryQuery {
            agent_id: Some("a".into()),
            ..HistoryQuery::default()
        };
        for (query, path) in [
            (&HistoryQuery::default(), Some(&folder)),
            (&HistoryQuery::default(), Some(&file)),
            (&by_agent, None),
        ] {
            let (sql, params) = history_sql(query, path);
            let steps = plan(&sql, params);
            assert!(
                steps.contains("lease_history_by_lease") && !steps.contains("SCAN"),
                "history query scans: {steps}"
            );
        }
        let live = LeaseQuery {
            agent_id: Some("a".into()),
            ..LeaseQuery::default()
        };
        let (condition, params) = lease_query_condition(&live, None, 0);
        let steps = plan(&format!("SELECT seq FROM leases WHERE {condition}"), params);
        assert!(
            steps.contains("leases_by_agent (agent_id=? AND expires_at>?)"),
            "{steps}"
        );
    }

    /// Writes queued together share a commit, but one that fails rolls back alone and every
    /// caller gets its own answer.
    #[test]
    fn a_write_refused_before_it_changes_anything_leaves_its_batch_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("l.db"), 0).unwrap());
        let writers: Vec<_> = (0..48)
            .map(|n| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let row = lease(n);
                    let id = row.id;
                    let answer = store.write(move |tx| {
                        // As the engine refuses: after reading, before writing.
                        tx.lease(&row.id)?;
                        if n % 3 == 0 {
                            return Err(LeaseError::invalid("test", "this write fails"));
                        }
                        tx.insert_lease(&row)?;
                        Ok(n)
                    });
                    (n, id, answer)
                })
            })
            .collect();
        let answers: Vec<_> = writers.into_iter().map(|w| w.join().unwrap()).collect();
        for (n, id, answer) in answers {
            let stored = store.read(move |tx| tx.lease(&id)).unwrap();
            if n % 3 == 0 {
                assert_eq!(answer.unwrap_err().code(), "invalid_input");
                assert!(stored.is_none(), "write {n} failed, yet its row is there");
            } else {
                assert_eq!(answer.unwrap(), n);
                assert!(
                    stored.is_some(),
                    "write {n} succeeded, yet its row is missing"
                );
            }
        }
    }

    /// A write that fails after changing rows can only be undone with its whole transaction:
    /// the writes that ran before it in its batch are answered with an error and stored
    /// nothing; those after it run in the next transaction and stand.
    #[test]
    fn a_write_failing_after_changing_rows_takes_down_only_the_writes_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("l.db"), 0).unwrap());
        // The writer is held inside a first write until the others are queued, so that they
        // make one batch, in the order submitted.
        let (started_tx, started) = mpsc::channel();
        let (open_gate, gate) = mpsc::channel::<()>();
        let first = store.clone().submit_write(move |_tx| {
            started_tx.send(()).unwrap();
            gate.recv().unwrap();
            Ok(())
        });
        started.recv().unwrap();
        let rows: Vec<Lease> = (0..3).map(lease).collect();
        let submit = |row: Lease, fail: bool| {
            store.clone().submit_write(move |tx| {
                tx.insert_lease(&row)?;
                if fail {
                    return Err(LeaseError::invalid("test", "fails after writing"));
                }
                Ok(())
            })
        };
        let before = submit(rows[0].clone(), false);
        let failing = submit(rows[1].clone(), true);
        let after = submit(rows[2].clone(), false);
        open_gate.send(()).unwrap();

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(first).unwrap();
        assert_eq!(runtime.block_on(before).unwrap_err().code(), "storage");
        assert_eq!(
            runtime.block_on(failing).unwrap_err().code(),
            "invalid_input"
        );
        runtime.block_on(after).unwrap();
        let stored = |row: &Lease| {
            let id = row.id;
            store.read(move |tx| tx.lease(&id)).unwrap().is_some()
        };
        assert_eq!(
            rows.iter().map(stored).collect::<Vec<_>>(),
            [false, false, true]
        );
    }

    /// A database made before migration 6 (which rebuilds `leases` for its status check) keeps
    /// every lease as it was, its queue order, and its `seq` counter's high-water mark, and
    /// the rebuilt table still refuses a status that does not exist.
    #[test]
    fn rebuilding_the_lease_table_keeps_its_rows_and_its_counter() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let before_6 = MIGRATIONS.iter().position(|m| m.0 == 6).unwrap();
        let mut kept = Vec::new();
        {
            let conn = connect(&path).unwrap();
            migrate_with(&conn, &MIGRATIONS[..before_6], 0).unwrap();
            let mut tx = SqliteTx {
                conn: &conn,
                settings: None,
                fencing: None,
            };
            for n in 0..6 {
                let mut row = lease(n);
                row.status = [LeaseStatus::Active, LeaseStatus::Released][n % 2];
                row.reason = (n == 3).then(|| "why".to_string());
                row.seq = tx.insert_lease(&row).unwrap();
                kept.push(row);
            }
            // The newest row goes, as if it had never been: its seq must not come back.
            let gone = kept.pop().unwrap();
            conn.execute("DELETE FROM leases WHERE seq = ?1", [gone.seq])
                .unwrap();
        }
        let store = SqliteStore::open(&path, 0).unwrap();
        let (stored, fresh) = store
            .write(move |tx| {
                let mut stored = Vec::new();
                for row in &kept {
                    stored.push((row.clone(), tx.lease(&row.id)?.unwrap()));
                }
                let fresh = tx.insert_lease(&lease(99))?;
                Ok((stored, fresh))
            })
            .unwrap();
        for (before, after) in &stored {
            assert_eq!(before, after);
        }
        assert_eq!(fresh, stored.last().unwrap().0.seq + 2);
        drop(store);
        let conn = open_file(&path).unwrap();
        let refused = conn.execute("UPDATE leases SET status = 'lost' WHERE seq = 1", []);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("CHECK")),
            "{refused:?}"
        );
        let version: i64 = conn
            .query_row(
                "SELECT max(version) FROM schema_migrations WHERE success = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(version, 6);
    }
}
