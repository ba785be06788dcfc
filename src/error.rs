//! The one error type of the library. Each variant carries what a caller needs to act on it.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::model::{LeaseMode, LeaseStatus};
use crate::time::Timestamp;

/// A lease that stands in the way of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

impl LeaseError {
    /// The error as the JSON document that the CLI (`--json`) and the HTTP API answer with:
    /// `{"error": {"code": ..., "message": ..., <the variant's fields>}}`. Conflicts are listed
    /// under `holders`.
    pub fn to_json(&self) -> Value {
        let mut body = json!({ "code": self.code(), "message": self.to_string() });
        let fields = match self {
            LeaseError::AlreadyHeld { conflicts } => json!({ "holders": conflicts }),
            LeaseError::WaitTimeout {
                waited_ms,
                conflicts,
            } => {
                json!({ "waited_ms": waited_ms, "holders": conflicts })
            }
            LeaseError::Deadlock { cycle } => json!({ "cycle": cycle }),
            LeaseError::NotFound { lease_id } => json!({ "lease_id": lease_id }),
            LeaseError::NotHolder {
                lease_id,
                holder,
                agent_id,
            } => {
                json!({ "lease_id": lease_id, "holder": holder, "agent_id": agent_id })
            }
            LeaseError::LeaseLost { lease_id, status } => {
                json!({ "lease_id": lease_id, "status": status })
            }
            LeaseError::RenewalLimitReached {
                lease_id,
                max_renewals,
            } => {
                json!({ "lease_id": lease_id, "max_renewals": max_renewals })
            }
            LeaseError::InvalidInput { what, why } => json!({ "what": what, "why": why }),
            LeaseError::Storage { .. } => json!({}),
        };
        if let (Some(body), Some(fields)) = (body.as_object_mut(), fields.as_object()) {
            body.extend(fields.clone());
        }
        json!({ "error": body })
    }

    /// Rebuilds an error from the document [`LeaseError::to_json`] makes (the `error` object or
    /// the whole document). Unknown codes and missing fields become [`LeaseError::Storage`]
    /// carrying the message.
    pub fn from_json(document: &Value) -> LeaseError {
        let body = document.get("error").unwrap_or(document);
        let text = |key: &str| {
            body.get(key)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let parse = |key: &str| body.get(key).cloned().unwrap_or(Value::Null);
        let message = text("message");
        let rebuilt = (|| -> Option<LeaseError> {
            Some(match body.get("code")?.as_str()? {
                "conflict" => LeaseError::AlreadyHeld {
                    conflicts: serde_json::from_value(parse("holders")).ok()?,
                },
                "wait_timeout" => LeaseError::WaitTimeout {
                    waited_ms: body.get("waited_ms")?.as_u64()?,
                    conflicts: serde_json::from_value(parse("holders")).ok()?,
                },
                "deadlock" => LeaseError::Deadlock {
                    cycle: serde_json::from_value(parse("cycle")).ok()?,
                },
                "not_found" => LeaseError::NotFound {
                    lease_id: text("lease_id"),
                },
                "not_holder" => LeaseError::NotHolder {
                    lease_id: serde_json::from_value(parse("lease_id")).ok()?,
                    holder: text("holder"),
                    agent_id: text("agent_id"),
                },
                "lease_lost" => LeaseError::LeaseLost {
                    lease_id: serde_json::from_value(parse("lease_id")).ok()?,
                    status: serde_json::from_value(parse("status")).ok()?,
                },
                "renewal_limit" => LeaseError::RenewalLimitReached {
                    lease_id: serde_json::from_value(parse("lease_id")).ok()?,
                    max_renewals: serde_json::from_value(parse("max_renewals")).ok()?,
                },
                "invalid_input" => LeaseError::InvalidInput {
                    what: text("what"),
                    why: text("why"),
                },
                _ => return None,
            })
        })();
        rebuilt.unwrap_or(LeaseError::Storage { message })
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
        .map(|e| {
            format!(
                "{} waits for {} held by {}",
                e.waiter, e.file_path, e.holder
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The library's result type.
pub type Result<T, E = LeaseError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_round_trips_through_json() {
        let id = Uuid::new_v4();
        let conflict = Conflict {
            lease_id: id,
            file_path: "src/a.rs".into(),
            agent_id: "alice".into(),
            mode: LeaseMode::Exclusive,
            status: LeaseStatus::Active,
            expires_at: Timestamp(1_000),
        };
        let errors = vec![
            LeaseError::AlreadyHeld {
                conflicts: vec![conflict.clone()],
            },
            LeaseError::WaitTimeout {
                waited_ms: 5,
                conflicts: vec![conflict],
            },
            LeaseError::Deadlock {
                cycle: vec![WaitEdge {
                    waiter: "a".into(),
                    file_path: "x".into(),
                    holder: "b".into(),
                }],
            },
            LeaseError::NotFound {
                lease_id: id.to_string(),
            },
            LeaseError::NotHolder {
                lease_id: id,
                holder: "a".into(),
                agent_id: "b".into(),
            },
            LeaseError::LeaseLost {
                lease_id: id,
                status: LeaseStatus::Expired,
            },
            LeaseError::RenewalLimitReached {
                lease_id: id,
                max_renewals: 3,
            },
            LeaseError::invalid("ttl_ms", "a time-to-live must be positive"),
        ];
        for error in errors {
            let json = error.to_json();
            assert_eq!(json["error"]["code"], error.code());
            let back = LeaseError::from_json(&json);
            assert_eq!(back.to_string(), error.to_string());
            assert_eq!(back.code(), error.code());
        }
        assert_eq!(
            LeaseError::AlreadyHeld { conflicts: vec![] }.to_json()["error"]["holders"],
            json!([])
        );
    }
}
