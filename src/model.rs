//! The public vocabulary: leases, their states, and the requests and answers of every operation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::LeaseError;
use crate::time::Timestamp;

/// How a lease shares its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LeaseMode {
    /// Conflicts with every other holder.
    #[default]
    Exclusive,
    /// Conflicts only with exclusive holders.
    Shared,
}

impl LeaseMode {
    /// Whether a holder in `self` mode and one in `other` mode may not coexist.
    pub fn conflicts_with(self, other: LeaseMode) -> bool {
        self == LeaseMode::Exclusive || other == LeaseMode::Exclusive
    }

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseMode::Exclusive => "exclusive",
            LeaseMode::Shared => "shared",
        }
    }
}

impl fmt::Display for LeaseMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LeaseMode {
    type Err = LeaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "exclusive" => Ok(LeaseMode::Exclusive),
            "shared" => Ok(LeaseMode::Shared),
            _ => Err(LeaseError::invalid(
                "mode",
                format!("{s:?} is neither exclusive nor shared"),
            )),
        }
    }
}

/// Where a lease (or a queued wait) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStatus {
    /// Held, and not yet past `expires_at`.
    Active,
    /// Its time ran out without renewal.
    Expired,
    /// Given back by its holder, or force-released.
    Released,
    /// A waiter queued for the path.
    Pending,
    /// A wait that timed out, was refused or was abandoned.
    Failed,
}

impl LeaseStatus {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseStatus::Active => "active",
            LeaseStatus::Expired => "expired",
            LeaseStatus::Released => "released",
            LeaseStatus::Pending => "pending",
            LeaseStatus::Failed => "failed",
        }
    }
}

impl fmt::Display for LeaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LeaseStatus {
    type Err = LeaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "active" => LeaseStatus::Active,
            "expired" => LeaseStatus::Expired,
            "released" => LeaseStatus::Released,
            "pending" => LeaseStatus::Pending,
            "failed" => LeaseStatus::Failed,
            _ => {
                return Err(LeaseError::invalid(
                    "status",
                    format!("unknown status {s:?}"),
                ))
            }
        })
    }
}

/// A lease on one path (or, with status `pending`, a queued wait for one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Random, unguessable id.
    pub id: Uuid,
    /// The normalised key; a trailing `/` marks a folder lease.
    pub file_path: String,
    /// The holder (or waiter).
    pub agent_id: String,
    /// Exclusive or shared.
    pub mode: LeaseMode,
    /// Where it is in its life. Reads report `expired` as soon as `expires_at` has passed, even
    /// before cleanup has run.
    pub status: LeaseStatus,
    /// Grows with every grant of the path; `None` for a wait that was never granted.
    pub fencing_token: Option<u64>,
    /// When the row was created (for a waiter: when it queued).
    pub created_at: Timestamp,
    /// When it stops counting unless renewed (for a waiter: when its queue entry lapses unless
    /// the waiter is still alive to refresh it).
    pub expires_at: Timestamp,
    /// The time-to-live granted, in milliseconds.
    pub ttl_ms: u64,
    /// How many times it was renewed.
    pub renewal_count: u32,
    /// How many renewals are allowed; `None` is unlimited.
    pub max_renewals: Option<u32>,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// Free text from the holder.
    pub reason: Option<String>,
    /// Store-assigned insertion order, which is the queue order of waiters.
    #[serde(skip)]
    pub seq: i64,
}

/// A request to take leases on one or more paths, all or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LeaseAcquisitionRequest {
    /// Who asks.
    pub agent_id: String,
    /// The paths, as lease keys (see [`crate::LeasePath`]).
    pub paths: Vec<String>,
    /// Exclusive (default) or shared.
    #[serde(default)]
    pub mode: LeaseMode,
    /// Time-to-live; the `default_ttl_seconds` setting when absent.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
    /// How long to wait in the queue when a path is held; absent or 0 means do not wait.
    #[serde(default)]
    pub wait_ms: Option<u64>,
    /// Renewal limit; the `max_renewals` setting when absent.
    #[serde(default)]
    pub max_renewals: Option<u32>,
    /// Free text recorded with the lease and its history.
    #[serde(default)]
    pub reason: Option<String>,
}

/// The leases granted, one per requested path, in request order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAcquisitionResponse {
    /// The leases.
    pub leases: Vec<Lease>,
    /// How long the request waited in the queue, in milliseconds.
    pub waited_ms: u64,
}

/// A request to extend a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseRenewalRequest {
    /// The lease.
    pub lease_id: Uuid,
    /// Its holder.
    pub agent_id: String,
    /// New time-to-live from now; the lease's current TTL when absent.
    #[serde(default)]
    pub ttl_ms: Option<u64>,
}

/// The renewed lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRenewalResponse {
    /// The lease as it is now.
    pub lease: Lease,
}

/// A request to give a lease back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseReleaseRequest {
    /// The lease.
    pub lease_id: Uuid,
    /// Its holder.
    pub agent_id: String,
}

/// The released lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseReleaseResponse {
    /// The lease, now `released`.
    pub lease: Lease,
}

/// Which leases a listing returns.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LeaseQuery {
    /// Only this agent's.
    pub agent_id: Option<String>,
    /// Only those overlapping this path.
    pub path: Option<String>,
    /// Every status, not only active leases.
    pub include_inactive: bool,
    /// At most this many, newest first.
    pub limit: Option<u32>,
}

/// The state of one path: who holds it and who waits for it, in queue order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathStatus {
    /// The normalised key.
    pub path: String,
    /// Whether any active lease covers or lies under the path.
    pub locked: bool,
    /// The active leases overlapping the path.
    pub holders: Vec<Lease>,
    /// The queued waiters overlapping the path, oldest first.
    pub waiters: Vec<Lease>,
}

/// What happened to a lease, as written in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// A lease was granted.
    Acquired,
    /// A lease was renewed.
    Renewed,
    /// A holder released its lease.
    Released,
    /// A lease ran out and cleanup marked it.
    Expired,
    /// An agent's leases were released on its behalf.
    ForceReleased,
    /// A wait timed out, was cancelled or its waiter vanished.
    WaitFailed,
    /// A wait was refused because it would close a cycle.
    Deadlock,
}

impl EventType {
    /// Every event type.
    pub const ALL: [EventType; 7] = [
        EventType::Acquired,
        EventType::Renewed,
        EventType::Released,
        EventType::Expired,
        EventType::ForceReleased,
        EventType::WaitFailed,
        EventType::Deadlock,
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Acquired => "acquired",
            EventType::Renewed => "renewed",
            EventType::Released => "released",
            EventType::Expired => "expired",
            EventType::ForceReleased => "force_released",
            EventType::WaitFailed => "wait_failed",
            EventType::Deadlock => "deadlock",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventType {
    type Err = LeaseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventType::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| LeaseError::invalid("event_type", format!("unknown event type {s:?}")))
    }
}

/// One row of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEvent {
    /// Increasing id: a later event has a larger id.
    pub id: i64,
    /// The lease it concerns.
    pub lease_id: Uuid,
    /// The lease's agent.
    pub agent_id: String,
    /// The lease's path.
    pub file_path: String,
    /// What happened.
    pub event_type: EventType,
    /// Status before the event (none for a new lease).
    pub status_before: Option<LeaseStatus>,
    /// Status after the event.
    pub status_after: LeaseStatus,
    /// The lease's renewal count after the event.
    pub renewal_count: u32,
    /// The lease's fencing token, when it has one.
    pub fencing_token: Option<u64>,
    /// When it happened.
    pub event_at: Timestamp,
    /// Why, when known.
    pub reason: Option<String>,
}

/// Which history events to read.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HistoryQuery {
    /// Only events on paths overlapping this one.
    pub path: Option<String>,
    /// Only this agent's.
    pub agent_id: Option<String>,
    /// Only events at or after this time.
    pub since: Option<Timestamp>,
    /// Only events before this time.
    pub until: Option<Timestamp>,
    /// Only events with an id above this one (for tailing).
    pub after_id: Option<i64>,
    /// At most this many, oldest first (the newest ones when `newest_first`).
    pub limit: Option<u32>,
    /// The newest events first (the default is oldest first).
    pub newest_first: bool,
}

/// An API token of `leasehold serve`, as stored: never the secret, only facts about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Public id, to list and revoke the token by (not a secret).
    pub id: String,
    /// The agent every request made with the token acts as.
    pub agent_id: String,
    /// Whether the token may force-release, clean up and change settings.
    pub admin: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was revoked; a revoked token is refused.
    pub revoked_at: Option<Timestamp>,
    /// When it was last used (to the minute).
    pub last_used_at: Option<Timestamp>,
}
