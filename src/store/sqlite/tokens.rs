//! The `api_tokens` table (migration `0002_tokens.sql`) on a connection of its own, and the
//! cache that spares the server a read transaction per request.
//!
//! Looking a token up is a read transaction, and a read transaction after any write (the writer
//! commits all the time) starts with SQLite dropping the connection's page cache and reading the
//! token's pages again: about a fifth of the server's request thread under load. Tokens change
//! only by being created or revoked, and a lookup that finds nothing is never cached, so only
//! a revocation can make a cached answer wrong. Each revocation therefore appends a byte to a
//! file beside the database (`<database>-revocations`), and the cache is good only while that
//! file's length and modification time are what they were when its entries were looked up: one
//! `stat` per request instead of a read transaction, and a revocation made by any process (the
//! CLI, another server, a test) is honoured from the next request on.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::error::{LeaseError, Result};
use crate::model::TokenInfo;
use crate::store::sqlite::{beside, SqliteStore, BUSY_TIMEOUT};
use crate::store::TokenTable;
use crate::time::Timestamp;

/// How long recording a token's last use waits for the write lock before giving up.
const TOUCH_BUSY_TIMEOUT: Duration = Duration::from_millis(50);

const TOKEN_COLUMNS: &str = "id, agent_id, is_admin, created_at, revoked_at, last_used_at";

/// How many connections are kept for token lookups, so that request threads rarely share one.
const LOOKUP_CONNECTIONS: usize = 4;

/// Live tokens cached at most; past this the cache starts over (only live tokens are cached,
/// so this bounds memory against nothing an outsider controls).
const CACHED_TOKENS: usize = 10_000;

/// The token table of one SQLite file.
pub struct SqliteTokens {
    path: PathBuf,
    /// For writes, listings and the gauges.
    conn: Mutex<Connection>,
    /// For [`TokenTable::try_find_live`]: idle connections, taken and put back per lookup.
    lookups: Mutex<Vec<Connection>>,
    /// The file each revocation appends to (see the module's documentation).
    revocations: PathBuf,
    /// Live tokens by hash, as looked up while the revocations file was as stamped.
    cache: Mutex<TokenCache>,
}

/// What the revocations file looked like: its length grows by one with every revocation, and
/// the time tells a file deleted and made again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    Absent,
    Present { len: u64, modified: SystemTime },
}

/// Live tokens looked up since the revocations file last changed.
#[derive(Default)]
struct TokenCache {
    stamp: Option<Stamp>,
    live: HashMap<String, TokenInfo>,
}

impl SqliteTokens {
    /// Opens the token table of the database at `path`, creating and migrating it if needed.
    pub fn open(path: &Path, now_ms: i64) -> Result<SqliteTokens> {
        drop(SqliteStore::open(path, now_ms)?);
        Ok(SqliteTokens {
            path: path.to_path_buf(),
            conn: Mutex::new(connect(path)?),
            lookups: Mutex::new(Vec::new()),
            revocations: beside(path, "-revocations"),
            cache: Mutex::new(TokenCache::default()),
        })
    }

    /// The revocations file now, or `None` when it cannot be told (then nothing is cached).
    fn stamp(&self) -> Option<Stamp> {
        match std::fs::metadata(&self.revocations) {
            Ok(meta) => Some(Stamp::Present {
                len: meta.len(),
                modified: meta.modified().ok()?,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Stamp::Absent),
            Err(_) => None,
        }
    }

    /// The cached answer for `token_hash`, if the revocations file has not changed since it
    /// was looked up; with the stamp to cache a fresh lookup under.
    fn cached(&self, token_hash: &str) -> (Option<TokenInfo>, Option<Stamp>) {
        let stamp = self.stamp();
        let Ok(mut cache) = self.cache.lock() else {
            return (None, None);
        };
        if cache.stamp != stamp || stamp.is_none() {
            cache.live.clear();
            cache.stamp = stamp;
        }
        (cache.live.get(token_hash).cloned(), stamp)
    }

    /// Keeps a live token looked up after the revocations file showed `stamp`, unless the file
    /// has changed since (a revocation may have come in between).
    fn remember(&self, token_hash: &str, info: &TokenInfo, stamp: Option<Stamp>) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if stamp.is_none() || cache.stamp != stamp {
            return;
        }
        if cache.live.len() >= CACHED_TOKENS {
            cache.live.clear();
        }
        cache.live.insert(token_hash.to_string(), info.clone());
    }

    /// A lookup on a pooled connection that never waits for a lock: `None` when it would have.
    fn try_query_live(&self, token_hash: &str) -> Option<Result<Option<TokenInfo>>> {
        // A read of a small table in a local file takes microseconds. The pool's lock is held
        // only to take or put back a connection; a new connection is opened only when every
        // pooled one is in use (the first lookups, or more request threads than connections).
        // These connections never wait for a lock (busy timeout 0): a read that would (another
        // connection recovering or restarting the WAL) sends the caller to a blocking thread.
        let pooled = self.lookups.lock().ok()?.pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => match connect(&self.path).and_then(|conn| {
                conn.busy_timeout(Duration::ZERO)?;
                Ok(conn)
            }) {
                Ok(conn) => conn,
                Err(error) => return Some(Err(error)),
            },
        };
        let found = query_live(&conn, token_hash);
        if let Ok(mut pool) = self.lookups.lock() {
            if pool.len() < LOOKUP_CONNECTIONS {
                pool.push(conn);
            }
        }
        at_once(found)
    }

    /// Tells every process's cache that a token was revoked.
    fn signal_revocation(&self) -> Result<()> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.revocations)
            .and_then(|mut file| file.write_all(b"\n"))
            .map_err(|e| {
                LeaseError::storage(format!(
                    "the token is revoked in the database, but running servers could not be \
                     told: cannot write {}: {e}; restart them so that they stop accepting it",
                    self.revocations.display()
                ))
            })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        self.conn
            .lock()
            .map_err(|_| LeaseError::storage("token connection lock poisoned"))
    }

    /// The stored hash of a token (for tests that check no secret is stored).
    pub fn stored_hashes(&self) -> Result<Vec<String>> {
        let conn = self.conn()?;
        let mut statement = conn.prepare("SELECT token_hash FROM api_tokens")?;
        let rows = statement.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let conn = super::open_file(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// The answer of a read that must not wait: `None` when SQLite would have had to wait for a
/// lock, else the result.
fn at_once<T>(read: rusqlite::Result<T>) -> Option<Result<T>> {
    match read {
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(
                e.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            None
        }
        read => Some(read.map_err(LeaseError::from)),
    }
}

fn query_live(conn: &Connection, token_hash: &str) -> rusqlite::Result<Option<TokenInfo>> {
    // TOKEN_COLUMNS, written out so that the cached statement needs no string built per call.
    let mut statement = conn.prepare_cached(
        "SELECT id, agent_id, is_admin, created_at, revoked_at, last_used_at
         FROM api_tokens WHERE token_hash = ?1 AND revoked_at IS NULL",
    )?;
    statement.query_row([token_hash], token_from_row).optional()
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<TokenInfo> {
    Ok(TokenInfo {
        id: row.get(0)?,
        agent_id: row.get(1)?,
        admin: row.get(2)?,
        created_at: Timestamp(row.get(3)?),
        revoked_at: row.get::<_, Option<i64>>(4)?.map(Timestamp),
        last_used_at: row.get::<_, Option<i64>>(5)?.map(Timestamp),
    })
}

impl TokenTable for SqliteTokens {
    fn insert(&self, info: &TokenInfo, token_hash: &str) -> Result<()> {
        self.conn()?.execute(
            "INSERT INTO api_tokens (id, agent_id, is_admin, token_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                info.id,
                info.agent_id,
                info.admin,
                token_hash,
                info.created_at.0
            ],
        )?;
        Ok(())
    }

    fn find_live(&self, token_hash: &str) -> Result<Option<TokenInfo>> {
        let (hit, stamp) = self.cached(token_hash);
        if hit.is_some() {
            return Ok(hit);
        }
        let found = query_live(&*self.conn()?, token_hash)?;
        if let Some(info) = &found {
            self.remember(token_hash, info, stamp);
        }
        Ok(found)
    }

    fn try_find_live(&self, token_hash: &str) -> Option<Result<Option<TokenInfo>>> {
        let (hit, stamp) = self.cached(token_hash);
        if hit.is_some() {
            return Some(Ok(hit));
        }
        let found = self.try_query_live(token_hash)?;
        if let Ok(Some(info)) = &found {
            self.remember(token_hash, info, stamp);
        }
        Some(found)
    }

    fn list(&self) -> Result<Vec<TokenInfo>> {
        let conn = self.conn()?;
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at, id");
        let mut statement = conn.prepare(&sql)?;
        let rows = statement.query_map([], token_from_row)?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    fn revoke(&self, id: &str, now_ms: i64) -> Result<Option<TokenInfo>> {
        let conn = self.conn()?;
        let revoked = conn.execute(
            "UPDATE api_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now_ms],
        )?;
        if revoked > 0 {
            self.signal_revocation()?;
        }
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE id = ?1");
        Ok(conn.query_row(&sql, [id], token_from_row).optional()?)
    }

    fn touch(&self, id: &str, now_ms: i64) -> Result<()> {
        let conn = self.conn()?;
        // A busy database must neither fail nor hold up the request: wait only briefly.
        conn.busy_timeout(TOUCH_BUSY_TIMEOUT)?;
        let touched = conn.execute(
            "UPDATE api_tokens SET last_used_at = ?2 WHERE id = ?1",
            params![id, now_ms],
        );
        conn.busy_timeout(BUSY_TIMEOUT)?;
        touched?;
        Ok(())
    }

    fn live_counts(&self, now_ms: i64) -> Result<(u64, u64)> {
        Ok(self.conn()?.query_row(
            "SELECT coalesce(sum(status = 'active'), 0), coalesce(sum(status = 'pending'), 0)
             FROM leases WHERE status IN ('active', 'pending') AND expires_at > ?1",
            [now_ms],
            |row| Ok((row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64)),
        )?)
    }

    fn checkpoint(&self) -> Result<()> {
        self.conn()?
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A live, non-admin token of agent `alice`.
    fn alices(id: &str) -> TokenInfo {
        TokenInfo {
            id: id.into(),
            agent_id: "alice".into(),
            admin: false,
            created_at: Timestamp(0),
            revoked_at: None,
            last_used_at: None,
        }
    }

    /// The server calls `try_find_live` on its request threads: it answers from the file, and
    /// a read that would have to wait for a lock says so at once (the caller then takes a
    /// blocking thread) instead of waiting on the request thread.
    #[test]
    fn lookups_answer_at_once_or_say_they_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.db");
        let tokens = SqliteTokens::open(&path, 0).unwrap();
        tokens.insert(&alices("tok_1"), "hash-1").unwrap();
        let found = tokens.try_find_live("hash-1").unwrap().unwrap();
        assert_eq!(found.map(|t| t.agent_id), Some("alice".to_string()));
        assert_eq!(tokens.try_find_live("hash-2").unwrap().unwrap(), None);
        tokens.revoke("tok_1", 5).unwrap();
        assert_eq!(tokens.try_find_live("hash-1").unwrap().unwrap(), None);

        let failure = |code| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        let busy: rusqlite::Result<()> = Err(failure(rusqlite::ffi::SQLITE_BUSY));
        assert!(at_once(busy).is_none());
        let locked: rusqlite::Result<()> = Err(failure(rusqlite::ffi::SQLITE_LOCKED));
        assert!(at_once(locked).is_none());
        let corrupt: rusqlite::Result<()> = Err(failure(rusqlite::ffi::SQLITE_CORRUPT));
        assert_eq!(at_once(corrupt).unwrap().unwrap_err().code(), "storage");
        assert_eq!(at_once(Ok(7)).unwrap().unwrap(), 7);
    }

    /// Lookups are cached, and a revocation through any other `SqliteTokens` on the file (as
    /// by another process) counts from the next lookup on, because it appends to the
    /// revocations file, which every cache checks first.
    #[test]
    fn cached_lookups_end_with_a_revocation_made_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leases.db");
        let server = SqliteTokens::open(&path, 0).unwrap();
        let cli = SqliteTokens::open(&path, 0).unwrap();
        for (id, hash) in [("tok_1", "hash-1"), ("tok_2", "hash-2")] {
            cli.insert(&alices(id), hash).unwrap();
        }
        assert!(server.find_live("hash-1").unwrap().is_some());
        assert!(server.try_find_live("hash-2").unwrap().unwrap().is_some());

        // Answers come from the cache: a change the revocations file does not show (here a
        // revocation written with bare SQL, bypassing leasehold) is not seen...
        cli.conn()
            .unwrap()
            .execute(
                "UPDATE api_tokens SET revoked_at = 1 WHERE id = 'tok_2'",
                [],
            )
            .unwrap();
        assert!(server.try_find_live("hash-2").unwrap().unwrap().is_some());

        // ...while a revocation through leasehold is seen by the very next lookup, of either
        // kind, and drops the whole cache (tok_2's revocation shows now too).
        cli.revoke("tok_1", 5).unwrap();
        assert_eq!(std::fs::metadata(&server.revocations).unwrap().len(), 1);
        assert_eq!(server.try_find_live("hash-1").unwrap().unwrap(), None);
        assert_eq!(server.find_live("hash-1").unwrap(), None);
        assert_eq!(server.find_live("hash-2").unwrap(), None);

        // Revoking a revoked token changes nothing, so it signals nothing.
        cli.revoke("tok_1", 6).unwrap();
        assert_eq!(std::fs::metadata(&server.revocations).unwrap().len(), 1);
    }
}
