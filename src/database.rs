//! Choosing the store from a `--db` value (or `LEASEHOLD_DB`): a `postgres://` (or
//! `postgresql://`) URL selects the PostgreSQL store, anything else is a SQLite file path.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::clock::Clock;
use crate::engine::{Background, Engine};
use crate::error::{LeaseError, Result};
use crate::manager::LeaseManager;
use crate::model::HistoryEvent;
use crate::store::postgres::{redact, PgOptions, PgStore};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;

/// Where the leases are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL server, by connection URL.
    Postgres(String),
}

impl Database {
    /// Reads a `--db` value.
    pub fn parse(value: &str) -> Database {
        if value.starts_with("postgres://") || value.starts_with("postgresql://") {
            Database::Postgres(value.to_string())
        } else {
            Database::Sqlite(PathBuf::from(value))
        }
    }

    /// A description safe to print or log: the file, or `user@host:port/db` without password.
    pub fn describe(&self) -> String {
        match self {
            Database::Sqlite(path) => path.display().to_string(),
            Database::Postgres(url) => format!("postgres://{}", redact(url)),
        }
    }
}

impl From<PathBuf> for Database {
    fn from(path: PathBuf) -> Database {
        Database::Sqlite(path)
    }
}

impl From<&PathBuf> for Database {
    fn from(path: &PathBuf) -> Database {
        Database::Sqlite(path.clone())
    }
}

impl From<&std::path::Path> for Database {
    fn from(path: &std::path::Path) -> Database {
        Database::Sqlite(path.to_path_buf())
    }
}

impl From<&Database> for Database {
    fn from(db: &Database) -> Database {
        db.clone()
    }
}

/// An engine over whichever store was chosen: every lease operation, plus what a server needs.
pub trait LeaseEngine: LeaseManager {
    /// History events committed by this process, as they commit.
    fn subscribe(&self) -> broadcast::Receiver<HistoryEvent>;
    /// Starts background cleanup and history purge.
    fn spawn_background(&self) -> Background;
    /// The engine's clock.
    fn clock(&self) -> Arc<dyn Clock>;
}

impl<S: Store> LeaseEngine for Engine<S> {
    fn subscribe(&self) -> broadcast::Receiver<HistoryEvent> {
        Engine::subscribe(self)
    }

    fn spawn_background(&self) -> Background {
        Engine::spawn_background(self)
    }

    fn clock(&self) -> Arc<dyn Clock> {
        Engine::clock(self)
    }
}

/// Opens the store at `database` (creating and migrating it as needed).
pub async fn open_database(
    database: &Database,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn LeaseEngine>> {
    let database = database.clone();
    // Both drivers block: open on a blocking thread.
    tokio::task::spawn_blocking(move || open_here(&database, clock))
        .await
        .map_err(|e| LeaseError::storage(format!("opening the database failed: {e}")))?
}

/// [`open_database`] for a process with nothing else to run meanwhile (one CLI command, on a
/// one-thread runtime): a SQLite file is opened on the calling thread, which spares starting a
/// blocking thread (about 0.2 ms of a CLI call, see BENCHMARKS.md). PostgreSQL still opens on
/// a blocking thread: its synchronous client cannot start inside a runtime.
pub(crate) async fn open_database_in_place(
    database: &Database,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn LeaseEngine>> {
    match database {
        Database::Sqlite(_) => open_here(database, clock),
        Database::Postgres(_) => open_database(database, clock).await,
    }
}

/// Opens the store at `database` on the calling thread, blocking it.
fn open_here(database: &Database, clock: Arc<dyn Clock>) -> Result<Arc<dyn LeaseEngine>> {
    Ok(match database {
        Database::Sqlite(path) => {
            Arc::new(Engine::new(SqliteStore::open(path, clock.now_ms())?, clock))
        }
        Database::Postgres(url) => Arc::new(Engine::new(
            PgStore::open(url, PgOptions::default())?,
            clock,
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_select_postgres_and_hide_the_password() {
        assert_eq!(Database::parse("a/b.db"), Database::Sqlite("a/b.db".into()));
        let pg = Database::parse("postgresql://u:pw@db.example:5433/leases");
        assert!(matches!(pg, Database::Postgres(_)));
        assert_eq!(pg.describe(), "postgres://u@db.example:5433/leases");
    }
}
