//! The one error type of the library. Each variant carries what a caller needs to act on it.

use serde::Serialize;
use uuid::Uuid;

use crate::model::{LeaseMode, LeaseStatus};
use crate::time::Timestamp;

/// A lease that stands in the way of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    /// The conflicting lease (or queued wait).
    pub lease_id: Uuid,
    /// The path it is held on.
    pub file_path: String,
    /// Who holds it.
    pub agent_id: String,
    /// Its mode.
    pub mode: LeaseMode,
    /// `active` for a holder, `pending` for an earlier waiter the request may not overtake.
    pub status: LeaseStatus,
    /// When it expires unless renewed.
    pub expires_at: Timestamp,
}

/// One edge of a wait-for cycle: `waiter` waits for `path`, which `holder` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitEdge {
    /// The agent that waits.
    pub waiter: String,
    /// The path it waits for.
    pub file_path: String,
    /// The agent holding that path.
    pub holder: String,
}

/// Everything that can go wrong in a lease operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseError {
    /// Another agent holds (or is queued first for) a requested path.
    #[error("{} is held by {}", conflict_path(.conflicts), describe(.conflicts))]
    AlreadyHeld {
        /// Every lease that conflicts with the request.
        conflicts: Vec<Conflict>,
    },
    /// A blocking acquisition gave up after waiting its full duration.
    #[error("gave up after waiting {waited_ms} ms: {} is held by {}", conflict_path(.conflicts), describe(.conflicts))]
    WaitTimeout {
        /// How long the request waited.
        waited_ms: u64,
        /// The leases still in the way at the deadline.
        conflicts: Vec<Conflict>,
    },
    /// Waiting would close a cycle in the wait-for graph.
    #[error("deadlock: {}", describe_cycle(.cycle))]
    Deadlock {
        /// The cycle, starting with the requesting agent.
        cycle: Vec<WaitEdge>,
    },
    /// No lease has this id.
    #[error("no lease has id {lease_id}")]
    NotFound {
        /// The id asked for.
        lease_id: String,
    },
    /// The lease belongs to another agent.
    #[error("lease {lease_id} is held by {holder}, not by {agent_id}")]
    NotHolder {
        /// The lease.
        lease_id: Uuid,
        /// Its holder.
        holder: String,
        /// The agent that asked.
        agent_id: String,
    },
    /// The lease is no longer held: it expired, was released or was force-released.
    #[error("lease {lease_id} is lost: it is {status}")]
    LeaseLost {
        /// The lease.
        lease_id: Uuid,
        /// What it is now.
        status: LeaseStatus,
    },
    /// The lease was renewed as many times as allowed.
    #[error("lease {lease_id} reached its limit of {max_renewals} renewals")]
    RenewalLimitReached {
        /// The lease.
        lease_id: Uuid,
        /// Its limit.
        max_renewals: u32,
    },
    /// The request itself is wrong; nothing was changed.
    #[error("invalid {what}: {why}")]
    InvalidInput {
        /// Which input (`path`, `ttl_ms`, a setting's name, ...).
        what: String,
        /// Why it was refused.
        why: String,
    },
    /// The store failed (I/O, corruption, lost connection). Nothing was changed.
    #[error("storage error: {message}")]
    Storage {
        /// What the store said.
        message: String,
    },
}

impl LeaseError {
    /// An [`LeaseError::InvalidInput`].
    pub fn invalid(what: impl Into<String>, why: impl Into<String>) -> LeaseError {
        LeaseError::InvalidInput {
            what: what.into(),
            why: why.into(),
        }
    }

    /// A [`LeaseError::Storage`].
    pub fn storage(message: impl std::fmt::Display) -> LeaseError {
        LeaseError::Storage {
            message: message.to_string(),
        }
    }

    /// A short stable code naming the kind of error, as used in JSON answers.
    pub fn code(&self) -> &'static str {
        match self {
            LeaseError::AlreadyHeld { .. } => "conflict",
            LeaseError::WaitTimeout { .. } => "wait_timeout",
            LeaseError::Deadlock { .. } => "deadlock",
            LeaseError::NotFound { .. } => "not_found",
            LeaseError::NotHolder { .. } => "not_holder",
            LeaseError::LeaseLost { .. } => "lease_lost",
            LeaseError::RenewalLimitReached { .. } => "renewal_limit",
            LeaseError::InvalidInput { .. } => "invalid_input",
            LeaseError::Storage { .. } => "storage",
        }
    }
}

fn conflict_path(conflicts: &[Conflict]) -> String {
    let mut paths: Vec<&str> = conflicts.iter().map(|c| c.file_path.as_str()).collect();
    paths.dedup();
    paths.join(", ")
}

fn describe(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(|c| {
            let what = if c.status == LeaseStatus::Pending {
                "queued waiter"
            } else {
                "holder"
            };
            format!(
                "{} ({what}, {} lease {} on {}, until {})",
                c.agent_id, c.mode, c.lease_id, c.file_path, c.expires_at
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_cycle(cycle: &[WaitEdge]) -> String {
    cycle
        .iter()
        .map(|e| format!("{} waits for {} held by {}", e.waiter, e.file_path, e.holder))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The library's result type.
pub type Result<T, E = LeaseError> = std::result::Result<T, E>;
