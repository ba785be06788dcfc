//! API tokens: who a request speaks for. A token is shown once when it is created; the database
//! keeps only its SHA-256 hash (table `api_tokens`, migration `0002_tokens.sql`).
//!
//! The table itself lives in the store (`store::sqlite::tokens`, `store::postgres::tokens`);
//! this module decides what a token is and what it may do. The engine knows nothing of tokens. The free functions [`token_create`], [`token_list`] and [`token_revoke`]
//! are what `leasehold token ...` calls.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::clock::{Clock, SystemClock};
use crate::database::Database;
use crate::error::{LeaseError, Result};
pub use crate::model::TokenInfo;
use crate::rules;
use crate::store::postgres::tokens::PgTokens;
use crate::store::postgres::{PgOptions, PgStore};
use crate::store::sqlite::tokens::SqliteTokens;
use crate::store::TokenTable;
use crate::time::Timestamp;

/// Every token starts with this, so that a leaked one is easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "lh_";

/// How often a token's `last_used_at` is written at most: a write per request would compete
/// with lease writes for SQLite's single write lock.
const TOUCH_EVERY_MS: i64 = 60_000;

/// A token just created: the only moment its secret is known.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewToken {
    /// What is stored about it.
    #[serde(flatten)]
    pub info: TokenInfo,
    /// The secret, to put in `Authorization: Bearer ...`.
    pub token: String,
}

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's public id.
    pub token_id: String,
    /// The agent the request acts as.
    pub agent_id: String,
    /// Whether admin-only routes are open to it.
    pub admin: bool,
}

/// The tokens of one database, whichever store keeps them.
pub struct TokenStore {
    table: Box<dyn TokenTable>,
    clock: Arc<dyn Clock>,
    /// When each token's `last_used_at` was last written by this process.
    touched: Mutex<HashMap<String, i64>>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore").finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Opens the token table of the database `db` (creating and migrating it if needed).
    /// Blocking: call it from a blocking thread when the database is PostgreSQL.
    pub fn open(db: impl Into<Database>, clock: Arc<dyn Clock>) -> Result<TokenStore> {
        let table: Box<dyn TokenTable> = match db.into() {
            Database::Sqlite(path) => Box::new(SqliteTokens::open(&path, clock.now_ms())?),
            Database::Postgres(url) => {
                Box::new(PgTokens::new(PgStore::open(&url, PgOptions::default())?))
            }
        };
        Ok(TokenStore {
            table,
            clock,
            touched: Mutex::new(HashMap::new()),
        })
    }

    /// Creates a token for `agent_id` and returns it with its secret, which is not stored.
    pub fn create(&self, agent_id: &str, admin: bool) -> Result<NewToken> {
        rules::validate_agent(agent_id)?;
        let token = format!("{TOKEN_PREFIX}{}", hex(&random_bytes::<32>()));
        let info = TokenInfo {
            id: format!("tok_{}", hex(&random_bytes::<8>())),
            agent_id: agent_id.to_string(),
            admin,
            created_at: Timestamp(self.clock.now_ms()),
            revoked_at: None,
            last_used_at: None,
        };
        self.table.insert(&info, &hash(&token))?;
        Ok(NewToken { info, token })
    }

    /// Every token, revoked ones included, oldest first.
    pub fn list(&self) -> Result<Vec<TokenInfo>> {
        self.table.list()
    }

    /// Revokes the token with public id `id`; requests made with it are refused from now on.
    /// Revoking a revoked token changes nothing.
    pub fn revoke(&self, id: &str) -> Result<TokenInfo> {
        self.table
            .revoke(id, self.clock.now_ms())?
            .ok_or_else(|| LeaseError::invalid("token", format!("no token has id {id:?}")))
    }

    /// Who `token` speaks for, or `None` when it is unknown or revoked. Blocking.
    pub fn authenticate(&self, token: &str) -> Result<Option<Identity>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Ok(None);
        }
        let Some(info) = self.table.find_live(&hash(token))? else {
            return Ok(None);
        };
        if self.touch_due(&info, true)? {
            self.touch(&info.id);
        }
        Ok(Some(identity(info)))
    }

    /// [`TokenStore::authenticate`] without blocking, for the server's request threads: `None`
    /// when the answer needs a blocking thread (a database across the network, a busy
    /// connection, or a last use to record, which happens at most once a minute per token and
    /// is written before the request is answered, as by `authenticate`). The token is looked
    /// up afresh every time, so a revocation by any process takes effect on the next request.
    pub(crate) fn try_authenticate(&self, token: &str) -> Option<Result<Option<Identity>>> {
        if !token.starts_with(TOKEN_PREFIX) {
            return Some(Ok(None));
        }
        let info = match self.table.try_find_live(&hash(token))? {
            Ok(Some(info)) => info,
            other => return Some(other.map(|_| None)),
        };
        match self.touch_due(&info, false) {
            Ok(false) => Some(Ok(Some(identity(info)))),
            Ok(true) => None,
            Err(error) => Some(Err(error)),
        }
    }

    /// Whether this token's last use is due to be written (at most once a minute per token).
    /// With `claim`, a due write is also marked as done now, so that only the caller makes it.
    fn touch_due(&self, info: &TokenInfo, claim: bool) -> Result<bool> {
        let now = self.clock.now_ms();
        let mut touched = self
            .touched
            .lock()
            .map_err(|_| LeaseError::storage("token cache lock poisoned"))?;
        let due = touched
            .get(&info.id)
            .is_none_or(|at| now - at >= TOUCH_EVERY_MS);
        if due && claim {
            touched.insert(info.id.clone(), now);
        }
        Ok(due)
    }

    /// Records a token's last use. Bookkeeping only: a busy database must neither fail nor
    /// hold up a request.
    fn touch(&self, id: &str) {
        if let Err(error) = self.table.touch(id, self.clock.now_ms()) {
            tracing::debug!(%error, "cannot record a token's last use");
        }
    }

    /// Counts the live leases and waiters (rows not yet past `expires_at`), for the gauges.
    pub(crate) fn live_counts(&self) -> Result<(u64, u64)> {
        self.table.live_counts(self.clock.now_ms())
    }

    /// Flushes the store's buffers at shutdown.
    pub(crate) fn checkpoint(&self) -> Result<()> {
        self.table.checkpoint()
    }
}

fn identity(info: TokenInfo) -> Identity {
    Identity {
        token_id: info.id,
        agent_id: info.agent_id,
        admin: info.admin,
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    OsRng.fill_bytes(&mut bytes);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Creates a token for `agent_id` in the database `db` and returns it with its secret
/// (`leasehold token create`). Print the secret once; it cannot be read back.
pub fn token_create(db: impl Into<Database>, agent_id: &str, admin: bool) -> Result<NewToken> {
    TokenStore::open(db, Arc::new(SystemClock))?.create(agent_id, admin)
}

/// Every token of the database `db`, revoked ones included (`leasehold token list`).
pub fn token_list(db: impl Into<Database>) -> Result<Vec<TokenInfo>> {
    TokenStore::open(db, Arc::new(SystemClock))?.list()
}

/// Revokes the token with public id `id` (`leasehold token revoke`).
pub fn token_revoke(db: impl Into<Database>, id: &str) -> Result<TokenInfo> {
    TokenStore::open(db, Arc::new(SystemClock))?.revoke(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_token_is_stored_only_as_its_hash_and_stops_working_when_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("leases.db");
        let clock = Arc::new(ManualClock::new(1_000));
        let store = TokenStore::open(&db, clock.clone()).unwrap();
        let new = store.create("alice", false).unwrap();
        assert!(new.token.starts_with(TOKEN_PREFIX));
        assert_eq!(new.token.len(), TOKEN_PREFIX.len() + 64);

        let stored = SqliteTokens::open(&db, 1_000)
            .unwrap()
            .stored_hashes()
            .unwrap();
        assert_eq!(stored, vec![hash(&new.token)]);
        let stored = &stored[0];
        assert!(!stored.contains(&new.token[TOKEN_PREFIX.len()..]));

        let who = store.authenticate(&new.token).unwrap().unwrap();
        assert_eq!((who.agent_id.as_str(), who.admin), ("alice", false));
        assert_eq!(store.authenticate("lh_nope").unwrap(), None);
        assert_eq!(store.authenticate("").unwrap(), None);

        let revoked = store.revoke(&new.info.id).unwrap();
        assert_eq!(revoked.revoked_at, Some(Timestamp(1_000)));
        assert_eq!(store.authenticate(&new.token).unwrap(), None);
        assert_eq!(
            store.list().unwrap(),
            vec![TokenInfo {
                last_used_at: Some(Timestamp(1_000)),
                ..revoked
            }]
        );
        assert_eq!(
            store.revoke("tok_missing").unwrap_err().code(),
            "invalid_input"
        );
        assert_eq!(store.create("", true).unwrap_err().code(), "invalid_input");
    }
}
