//! The PostgreSQL store: one database shared by many `leasehold serve` instances and CLI or
//! library users on many machines.
//!
//! - **Exclusion** comes from transaction-scoped advisory locks, taken in one global order:
//!   exclusive on each requested key, shared on each folder above it. Two requests on
//!   overlapping keys therefore serialise (a folder's exclusive lock meets the shared lock that
//!   every key below it takes), while requests on unrelated keys run in parallel.
//! - **One clock**: every decision uses the database server's `clock_timestamp()`, read after the
//!   locks are held, so skew between the machines of agents and servers does not matter.
//! - **Wake-ups** across servers: a transaction that may free a path sends `NOTIFY`; a listener
//!   thread per store wakes the engine's waiters (with a slow poll as a safety net).
//! - **Connections** come from a small pool; a broken connection is dropped and replaced on the
//!   next use, so requests fail clearly while the database is down and work again when it is back.
//!
//! Only this module knows PostgreSQL's SQL; rows become domain types here, and database errors
//! become [`LeaseError::Storage`] in one `From` impl, without the connection password.

pub mod tokens;

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::types::ToSql;
use postgres::{Client, Config, NoTls, Row};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::error::{LeaseError, Result};
use crate::model::{HistoryEvent, HistoryQuery, Lease, LeaseQuery};
use crate::path::LeasePath;
use crate::settings::SETTINGS;
use crate::store::{Store, StoreTx};
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
];

/// The channel on which stores announce that a path may have been freed.
const CHANNEL: &str = "leasehold_changes";

/// How often waiters look again even without a notification (a safety net while the listener
/// reconnects).
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// Connections kept open for reuse.
const POOL_SIZE: usize = 8;

const LEASE_COLUMNS: &str = "seq, id, file_path, agent_id, mode, status, fencing_token, \
     created_at, expires_at, ttl_ms, renewal_count, max_renewals, updated_at, reason";

const HISTORY_COLUMNS: &str = "id, lease_id, agent_id, file_path, event_type, status_before, \
     status_after, renewal_count, fencing_token, event_at, reason";

impl From<postgres::Error> for LeaseError {
    fn from(error: postgres::Error) -> Self {
        // Neither text names connection parameters, so no password leaks.
        match error.as_db_error() {
            Some(db) => {
                LeaseError::storage(format!("postgres: {} ({})", db.message(), db.code().code()))
            }
            None => LeaseError::storage(format!("postgres: {error}")),
        }
    }
}

/// How a [`PgStore`] is set up.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// The schema holding the tables (created if missing); `None` uses the connection's default
    /// (`public`). Tests give each run its own.
    pub schema: Option<String>,
    /// Whether decisions use the database server's clock (true in production). Tests turn it off
    /// to drive time with the engine's manual clock.
    pub server_time: bool,
    /// How often waiters look again without a notification, as a safety net while the listener
    /// reconnects; `None` relies on notifications alone (tests use it to prove they work).
    pub poll_interval: Option<Duration>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            schema: None,
            server_time: true,
            poll_interval: Some(POLL_INTERVAL),
        }
    }
}

/// The PostgreSQL store.
pub struct PgStore {
    config: Config,
    /// Where the database is, for messages: never the password.
    target: String,
    schema: Option<String>,
    server_time: bool,
    poll_interval: Option<Duration>,
    /// Mixed into advisory lock keys, so stores in different schemas do not contend.
    lock_salt: String,
    pool: Mutex<Vec<Client>>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.target)
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

/// Describes a connection string without its password: `user@host:port/dbname`.
pub fn redact(url: &str) -> String {
    match Config::from_str(url) {
        Ok(config) => describe(&config),
        Err(_) => "an unparsable PostgreSQL connection string".to_string(),
    }
}

fn describe(config: &Config) -> String {
    let host = config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",");
    let port = config
        .get_ports()
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(",");
    format!(
        "{}@{}:{}/{}",
        config.get_user().unwrap_or("?"),
        host,
        if port.is_empty() { "5432".into() } else { port },
        config.get_dbname().unwrap_or("?")
    )
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A stable 64-bit key for an advisory lock (FNV-1a).
fn lock_key(salt: &str, key: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in salt.bytes().chain([0u8]).chain(key.bytes()) {
        hash ^= byte as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

impl PgStore {
    /// Connects to `url`, applies pending migrations (safe when several servers start at once)
    /// and returns the store. Blocking: call it from a blocking thread.
    pub fn open(url: &str, options: PgOptions) -> Result<PgStore> {
        let config = Config::from_str(url).map_err(|e| {
            LeaseError::invalid("db", format!("not a PostgreSQL connection string: {e}"))
        })?;
        let store = PgStore {
            target: describe(&config),
            config,
            lock_salt: options.schema.clone().unwrap_or_default(),
            schema: options.schema,
            server_time: options.server_time,
            poll_interval: options.poll_interval,
            pool: Mutex::new(Vec::new()),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let mut client = store.connect()?;
        store.migrate(&mut client)?;
        store.give_back(client);
        Ok(store)
    }

    fn connect(&self) -> Result<Client> {
        let mut client = self.config.connect(NoTls).map_err(|e| {
            LeaseError::storage(format!(
                "cannot connect to PostgreSQL at {}: {e}",
                self.target
            ))
        })?;
        // Name the connection after the schema, so an operator can find a store's sessions.
        let schema = self.schema.as_deref().unwrap_or("public");
        client.execute(
            "SELECT set_config('application_name', $1, false)",
            &[&format!("leasehold:{schema}")],
        )?;
        if let Some(schema) = &self.schema {
            // The schema itself is created by the migration, under its lock: CREATE SCHEMA IF
            // NOT EXISTS is not safe against itself in concurrent sessions.
            client.batch_execute(&format!("SET search_path TO {}", quote_ident(schema)))?;
        }
        Ok(client)
    }

    fn take(&self) -> Result<Client> {
        let pooled = self.pool.lock().ok().and_then(|mut pool| pool.pop());
        match pooled {
            Some(client) if !client.is_closed() => Ok(client),
            _ => self.connect(),
        }
    }

    fn give_back(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        if let Ok(mut pool) = self.pool.lock() {
            if pool.len() < POOL_SIZE {
                pool.push(client);
            }
        }
    }

    fn migrate(&self, client: &mut Client) -> Result<()> {
        let mut tx = client.transaction()?;
        // Servers starting at once take turns here.
        tx.execute(
            "SELECT pg_advisory_xact_lock($1)",
            &[&lock_key(&self.lock_salt, "migrate")],
        )?;
        if let Some(schema) = &self.schema {
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(schema)
            ))?;
        }
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                 version    BIGINT  PRIMARY KEY,
                 name       TEXT    NOT NULL,
                 applied_at BIGINT  NOT NULL,
                 success    BOOLEAN NOT NULL
             )",
        )?;
        let newest: i64 = tx
            .query_one(
                "SELECT coalesce(max(version), 0) FROM schema_migrations WHERE success",
                &[],
            )?
            .get(0);
        let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
        if newest > latest {
            return Err(LeaseError::storage(format!(
                "the database has schema version {newest} but this leasehold knows only up to \
                 {latest}; upgrade leasehold"
            )));
        }
        let now: i64 = tx
            .query_one(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
                &[],
            )?
            .get(0);
        for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > newest) {
            tx.batch_execute(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, applied_at, success)
                 VALUES ($1, $2, $3, true)
                 ON CONFLICT (version) DO UPDATE SET applied_at = $3, success = true",
                &[version, name, &now],
            )?;
        }
        for spec in SETTINGS {
            tx.execute(
                "INSERT INTO lease_configs (key, value, description, updated_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (key) DO NOTHING",
                &[&spec.key, &spec.default, &spec.description, &now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Runs `f` on a pooled connection outside any transaction (single statements).
    pub(crate) fn with_client<T>(&self, f: impl FnOnce(&mut Client) -> Result<T>) -> Result<T> {
        let mut client = self.take()?;
        let result = f(&mut client);
        self.give_back(client);
        result
    }

    fn run<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut dyn StoreTx) -> Result<T>,
    {
        let mut client = self.take()?;
        // A pooled connection may have died since its last use (server restart, network cut).
        // If BEGIN fails on it, nothing was done yet, so one fresh connection is worth trying.
        if let Err(error) = client.batch_execute("BEGIN") {
            tracing::debug!(%error, "pooled connection is dead; reconnecting");
            client = self.connect()?;
            client.batch_execute("BEGIN")?;
        }
        let mut store_tx = PgTx {
            tx: &mut client,
            server_time: self.server_time,
            lock_salt: &self.lock_salt,
            schema: self.schema.as_deref().unwrap_or(""),
        };
        let result = f(&mut store_tx).and_then(|value| {
            client.batch_execute("COMMIT")?;
            Ok(value)
        });
        if result.is_err() && !client.is_closed() {
            // Rolls back a failed transaction; a failed COMMIT has already ended it.
            let _ = client.batch_execute("ROLLBACK");
        }
        self.give_back(client);
        result
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Closing a connection blocks on the driver's own runtime, which must not happen on an
        // async worker thread: close them on a thread of their own.
        let clients: Vec<Client> = self
            .pool
            .lock()
            .map(|mut p| p.drain(..).collect())
            .unwrap_or_default();
        if !clients.is_empty() {
            std::thread::spawn(move || drop(clients));
        }
    }
}

impl Store for PgStore {
    fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut dyn StoreTx) -> Result<T> + Send + 'static,
    {
        self.run(f)
    }

    fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut dyn StoreTx) -> Result<T>,
    {
        self.run(f)
    }

    fn poll_interval(&self) -> Option<Duration> {
        self.poll_interval
    }

    fn attach_waker(&self, waker: Arc<Notify>) {
        let (config, schema, stop) = (
            self.config.clone(),
            self.schema.clone().unwrap_or_default(),
            self.stop.clone(),
        );
        let target = self.target.clone();
        std::thread::Builder::new()
            .name("leasehold-pg-listen".into())
            .spawn(move || listen(config, target, schema, stop, waker))
            .ok();
    }
}

/// Listens for changes announced by other servers and wakes this process's waiters, reconnecting
/// whenever the connection drops, until the store is dropped.
fn listen(
    config: Config,
    target: String,
    schema: String,
    stop: Arc<AtomicBool>,
    waker: Arc<Notify>,
) {
    while !stop.load(Ordering::SeqCst) {
        let mut client = match config.connect(NoTls) {
            Ok(client) => client,
            Err(error) => {
                tracing::warn!(%target, %error, "cannot listen for lease changes; retrying");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        if let Err(error) = client.batch_execute(&format!("LISTEN {CHANNEL}")) {
            tracing::warn!(%target, %error, "LISTEN failed; retrying");
            continue;
        }
        // Anything may have changed while we were not listening.
        waker.notify_waiters();
        while !stop.load(Ordering::SeqCst) && !client.is_closed() {
            let mut notifications = client.notifications();
            let mut iter = notifications.timeout_iter(Duration::from_millis(250));
            let lost = loop {
                match postgres::fallible_iterator::FallibleIterator::next(&mut iter) {
                    Ok(Some(notification)) => {
                        if notification.payload() == schema {
                            waker.notify_waiters();
                        }
                    }
                    Ok(None) => break false,
                    Err(error) => {
                        tracing::warn!(%target, %error, "lost the LISTEN connection; reconnecting");
                        break true;
                    }
                }
            };
            if lost {
                break;
            }
        }
    }
}

struct PgTx<'a> {
    /// The connection, inside a transaction opened by [`PgStore::run`].
    tx: &'a mut Client,
    server_time: bool,
    lock_salt: &'a str,
    schema: &'a str,
}

fn lease_from_row(row: &Row) -> Result<Lease> {
    let mode: String = row.try_get(4)?;
    let status: String = row.try_get(5)?;
    Ok(Lease {
        seq: row.try_get(0)?,
        id: row.try_get(1)?,
        file_path: row.try_get(2)?,
        agent_id: row.try_get(3)?,
        mode: mode.parse()?,
        status: status.parse()?,
        fencing_token: row.try_get::<_, Option<i64>>(6)?.map(|t| t as u64),
        created_at: Timestamp(row.try_get(7)?),
        expires_at: Timestamp(row.try_get(8)?),
        ttl_ms: row.try_get::<_, i64>(9)? as u64,
        renewal_count: row.try_get::<_, i64>(10)? as u32,
        max_renewals: row.try_get::<_, Option<i64>>(11)?.map(|m| m as u32),
        updated_at: Timestamp(row.try_get(12)?),
        reason: row.try_get(13)?,
    })
}

fn event_from_row(row: &Row) -> Result<HistoryEvent> {
    let event_type: String = row.try_get(4)?;
    let before: Option<String> = row.try_get(5)?;
    let after: String = row.try_get(6)?;
    Ok(HistoryEvent {
        id: row.try_get(0)?,
        lease_id: row.try_get(1)?,
        agent_id: row.try_get(2)?,
        file_path: row.try_get(3)?,
        event_type: event_type.parse()?,
        status_before: before.map(|s| s.parse()).transpose()?,
        status_after: after.parse()?,
        renewal_count: row.try_get::<_, i64>(7)? as u32,
        fencing_token: row.try_get::<_, Option<i64>>(8)?.map(|t| t as u64),
        event_at: Timestamp(row.try_get(9)?),
        reason: row.try_get(10)?,
    })
}

type Params = Vec<Box<dyn ToSql + Sync>>;

/// The SQL condition "`file_path` overlaps `path`", adding its parameters to `params`.
fn overlap_condition(path: &LeasePath, params: &mut Params) -> String {
    let mut keys = path.ancestors();
    keys.push(path.as_str().to_string());
    params.push(Box::new(keys));
    let mut condition = format!("(file_path = ANY(${}::text[])", params.len());
    if let Some((start, end)) = path.descendant_range() {
        params.push(Box::new(start));
        params.push(Box::new(end));
        condition.push_str(&format!(
            " OR (file_path >= ${} AND file_path < ${})",
            params.len() - 1,
            params.len()
        ));
    }
    condition.push(')');
    condition
}

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref()).collect()
}

impl PgTx<'_> {
    fn leases_where(&mut self, condition: &str, params: Params) -> Result<Vec<Lease>> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE {condition}");
        let rows = self.tx.query(&sql, &refs(&params))?;
        rows.iter().map(lease_from_row).collect()
    }
}

impl StoreTx for PgTx<'_> {
    fn lock_paths(&mut self, paths: &[LeasePath]) -> Result<bool> {
        // Exclusive on each key, shared on each folder above it; exclusive wins where both are
        // asked. Taking them in key order means two transactions never wait on each other in
        // a circle.
        let mut locks: Vec<(i64, bool)> = Vec::new();
        for path in paths {
            locks.push((lock_key(self.lock_salt, path.as_str()), true));
            for ancestor in path.ancestors() {
                locks.push((lock_key(self.lock_salt, &ancestor), false));
            }
        }
        locks.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        locks.dedup_by_key(|l| l.0);
        for (key, exclusive) in locks {
            let sql = if exclusive {
                "SELECT pg_advisory_xact_lock($1)"
            } else {
                "SELECT pg_advisory_xact_lock_shared($1)"
            };
            self.tx.execute(sql, &[&key])?;
        }
        Ok(true)
    }

    fn server_now_ms(&mut self) -> Result<Option<i64>> {
        if !self.server_time {
            return Ok(None);
        }
        let row = self.tx.query_one(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint",
            &[],
        )?;
        Ok(Some(row.get(0)))
    }

    fn announce_change(&mut self) -> Result<()> {
        // Delivered to every listener when this transaction commits, and not at all if it rolls back.
        self.tx
            .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.schema])?;
        Ok(())
    }

    fn load_settings(&mut self) -> Result<Vec<(String, String)>> {
        let rows = self.tx.query("SELECT key, value FROM lease_configs", &[])?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    fn save_setting(&mut self, key: &str, value: &str, now_ms: i64) -> Result<()> {
        let description = SETTINGS
            .iter()
            .find(|s| s.key == key)
            .map(|s| s.description)
            .unwrap_or_default();
        self.tx.execute(
            "INSERT INTO lease_configs (key, value, description, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            &[&key, &value, &description, &now_ms],
        )?;
        Ok(())
    }

    fn live_overlapping(&mut self, path: &LeasePath, now_ms: i64) -> Result<Vec<Lease>> {
        let mut params: Params = vec![Box::new(now_ms)];
        let overlap = overlap_condition(path, &mut params);
        self.leases_where(
            &format!(
                "status IN ('active', 'pending') AND expires_at > $1 AND {overlap} ORDER BY seq"
            ),
            params,
        )
    }

    fn live_of_agent(&mut self, agent: &str, now_ms: i64) -> Result<Vec<Lease>> {
        self.leases_where(
            "agent_id = $1 AND status IN ('active', 'pending') AND expires_at > $2 ORDER BY seq",
            vec![Box::new(agent.to_string()), Box::new(now_ms)],
        )
    }

    fn lease(&mut self, id: &Uuid) -> Result<Option<Lease>> {
        let sql = format!("SELECT {LEASE_COLUMNS} FROM leases WHERE id = $1");
        self.tx
            .query_opt(&sql, &[id])?
            .as_ref()
            .map(lease_from_row)
            .transpose()
    }

    fn insert_lease(&mut self, lease: &Lease) -> Result<i64> {
        let row = self.tx.query_one(
            "INSERT INTO leases (id, file_path, agent_id, mode, status, fencing_token, created_at,
                 expires_at, ttl_ms, renewal_count, max_renewals, updated_at, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING seq",
            &[
                &lease.id,
                &lease.file_path,
                &lease.agent_id,
                &lease.mode.as_str(),
                &lease.status.as_str(),
                &lease.fencing_token.map(|t| t as i64),
                &lease.created_at.0,
                &lease.expires_at.0,
                &(lease.ttl_ms as i64),
                &(lease.renewal_count as i64),
                &lease.max_renewals.map(|m| m as i64),
                &lease.updated_at.0,
                &lease.reason,
            ],
        )?;
        Ok(row.get(0))
    }

    fn update_lease(&mut self, lease: &Lease) -> Result<()> {
        let changed = self.tx.execute(
            "UPDATE leases SET status = $2, fencing_token = $3, expires_at = $4, ttl_ms = $5,
                 renewal_count = $6, max_renewals = $7, updated_at = $8, reason = $9
             WHERE id = $1",
            &[
                &lease.id,
                &lease.status.as_str(),
                &lease.fencing_token.map(|t| t as i64),
                &lease.expires_at.0,
                &(lease.ttl_ms as i64),
                &(lease.renewal_count as i64),
                &lease.max_renewals.map(|m| m as i64),
                &lease.updated_at.0,
                &lease.reason,
            ],
        )?;
        if changed != 1 {
            return Err(LeaseError::storage(format!(
                "lease {} vanished during update",
                lease.id
            )));
        }
        Ok(())
    }

    fn next_fencing_token(&mut self) -> Result<u64> {
        let row = self.tx.query_one("SELECT nextval('lease_fencing')", &[])?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    fn query_leases(
        &mut self,
        query: &LeaseQuery,
        path: Option<&LeasePath>,
        now_ms: i64,
    ) -> Result<Vec<Lease>> {
        let mut params: Params = Vec::new();
        let mut conditions = vec!["true".to_string()];
        if let Some(agent) = &query.agent_id {
            params.push(Box::new(agent.clone()));
            conditions.push(format!("agent_id = ${}", params.len()));
        }
        if let Some(path) = path {
            conditions.push(overlap_condition(path, &mut params));
        }
        if !query.include_inactive {
            params.push(Box::new(now_ms));
            conditions.push(format!(
                "status = 'active' AND expires_at > ${}",
                params.len()
            ));
        }
        let mut condition = format!("{} ORDER BY seq", conditions.join(" AND "));
        if let Some(limit) = query.limit {
            params.push(Box::new(limit as i64));
            condition.push_str(&format!(" LIMIT ${}", params.len()));
        }
        self.leases_where(&condition, params)
    }

    fn due_for_expiry(&mut self, now_ms: i64, limit: usize) -> Result<Vec<Lease>> {
        self.leases_where(
            "status IN ('active', 'pending') AND expires_at <= $1 ORDER BY expires_at, seq LIMIT $2",
            vec![Box::new(now_ms), Box::new(limit as i64)],
        )
    }

    fn insert_history(&mut self, event: &HistoryEvent) -> Result<HistoryEvent> {
        let row = self.tx.query_one(
            "INSERT INTO lease_history (lease_id, agent_id, file_path, event_type, status_before,
                 status_after, renewal_count, fencing_token, event_at, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
            &[
                &event.lease_id,
                &event.agent_id,
                &event.file_path,
                &event.event_type.as_str(),
                &event.status_before.map(|s| s.as_str()),
                &event.status_after.as_str(),
                &(event.renewal_count as i64),
                &event.fencing_token.map(|t| t as i64),
                &event.event_at.0,
                &event.reason,
            ],
        )?;
        let mut stored = event.clone();
        stored.id = row.get(0);
        Ok(stored)
    }

    fn query_history(
        &mut self,
        query: &HistoryQuery,
        path: Option<&LeasePath>,
    ) -> Result<Vec<HistoryEvent>> {
        let mut params: Params = Vec::new();
        let mut conditions = vec!["true".to_string()];
        if let Some(path) = path {
            conditions.push(overlap_condition(path, &mut params));
        }
        if let Some(agent) = &query.agent_id {
            params.push(Box::new(agent.clone()));
            conditions.push(format!("agent_id = ${}", params.len()));
        }
        if let Some(since) = query.since {
            params.push(Box::new(since.0));
            conditions.push(format!("event_at >= ${}", params.len()));
        }
        if let Some(until) = query.until {
            params.push(Box::new(until.0));
            conditions.push(format!("event_at < ${}", params.len()));
        }
        if let Some(after) = query.after_id {
            params.push(Box::new(after));
            conditions.push(format!("id > ${}", params.len()));
        }
        let order = if query.newest_first { "DESC" } else { "ASC" };
        let mut sql = format!(
            "SELECT {HISTORY_COLUMNS} FROM lease_history WHERE {} ORDER BY id {order}",
            conditions.join(" AND ")
        );
        if let Some(limit) = query.limit {
            params.push(Box::new(limit as i64));
            sql.push_str(&format!(" LIMIT ${}", params.len()));
        }
        let rows = self.tx.query(&sql, &refs(&params))?;
        rows.iter().map(event_from_row).collect()
    }

    fn purge_history(&mut self, before_ms: i64) -> Result<u64> {
        Ok(self.tx.execute(
            "DELETE FROM lease_history WHERE event_at < $1",
            &[&before_ms],
        )?)
    }
}
