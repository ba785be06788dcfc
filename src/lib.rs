//! leasehold: leases on files and folders, so that many agents can work in one set of files
//! without clobbering each other.
//!
//! Start with [`open_sqlite`], then call the [`LeaseManager`] methods; long-running holders
//! keep their leases with a [`LeaseGuard`]. See `ARCHITECTURE.md` for the map of the code.

pub mod audit;
pub mod cli;
pub mod clock;
pub mod database;
pub mod engine;
pub mod error;
pub mod keepalive;
pub mod manager;
pub mod mcp;
pub mod model;
pub mod path;
pub mod remote;
pub mod rules;
pub mod server;
pub mod settings;
pub mod store;
pub mod time;

use std::path::Path;
use std::sync::Arc;

pub use clock::{Clock, ManualClock, SystemClock};
pub use database::{open_database, Database, LeaseEngine};
pub use engine::{Background, Engine};
pub use error::{Conflict, LeaseError, Result, WaitEdge};
pub use keepalive::LeaseGuard;
pub use manager::LeaseManager;
pub use model::{
    EventType, HistoryEvent, HistoryQuery, Lease, LeaseAcquisitionRequest,
    LeaseAcquisitionResponse, LeaseMode, LeaseQuery, LeaseReleaseRequest, LeaseReleaseResponse,
    LeaseRenewalRequest, LeaseRenewalResponse, LeaseStatus, PathStatus,
};
pub use path::LeasePath;
pub use settings::{Settings, SETTINGS};
pub use store::sqlite::SqliteStore;
pub use time::Timestamp;

/// Opens (creating if needed) the SQLite database at `path` with the given clock.
pub fn open_sqlite(path: &Path, clock: Arc<dyn Clock>) -> Result<Engine<SqliteStore>> {
    let store = SqliteStore::open(path, clock.now_ms())?;
    Ok(Engine::new(store, clock))
}
