//! The lease rules, as pure functions: who conflicts with whom, when a lease counts as expired,
//! what a renewal or release may do, and how a wait-for cycle is found.
//!
//! Architecture invariant: nothing here knows of SQL, HTTP or the wall clock; every function
//! takes the rows and the time it needs as arguments.

use std::collections::HashSet;

use uuid::Uuid;

use crate::error::{Conflict, LeaseError, WaitEdge};
use crate::model::{Lease, LeaseMode, LeaseStatus};
use crate::path::LeasePath;
use crate::settings::Settings;

/// The longest an agent id or a reason may be, in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;

/// The longest wait a request may ask for: one day.
pub const MAX_WAIT_MS: u64 = 24 * 3600 * 1000;

/// How long a waiter's queue entry stays valid without being refreshed. A waiter refreshes it
/// well within this time while it lives; the entry of a waiter that died lapses by itself.
pub const WAITER_LIVENESS_MS: i64 = 10_000;

/// The status a lease has at `now`: a stored `active` (or `pending`) row whose `expires_at` is
/// not in the future counts as `expired` (or `failed`) at once, whether or not cleanup has run.
pub fn effective_status(lease: &Lease, now_ms: i64) -> LeaseStatus {
    match lease.status {
        LeaseStatus::Active if lease.expires_at.0 <= now_ms => LeaseStatus::Expired,
        LeaseStatus::Pending if lease.expires_at.0 <= now_ms => LeaseStatus::Failed,
        status => status,
    }
}

/// Whether `lease` holds its path at `now`.
pub fn is_live_holder(lease: &Lease, now_ms: i64) -> bool {
    effective_status(lease, now_ms) == LeaseStatus::Active
}

/// Whether `lease` is a queued waiter still alive at `now`.
pub fn is_live_waiter(lease: &Lease, now_ms: i64) -> bool {
    effective_status(lease, now_ms) == LeaseStatus::Pending
}

/// Applies [`effective_status`] to a lease read from the store.
pub fn with_effective_status(mut lease: Lease, now_ms: i64) -> Lease {
    lease.status = effective_status(&lease, now_ms);
    lease
}

/// The rows among `rows` that stand in the way of `agent` taking `path` in `mode`:
///
/// - live holders of an overlapping path whose mode conflicts, and
/// - live waiters queued before `queued_at_seq` (all waiters, for a request not yet queued) on
///   an overlapping path whose mode conflicts: a later request never overtakes them.
///
/// An agent never conflicts with itself, and the request's own queue entries (`own`) are skipped.
pub fn blockers<'a>(
    rows: &'a [Lease],
    path: &LeasePath,
    mode: LeaseMode,
    agent: &str,
    own: &HashSet<Uuid>,
    queued_at_seq: Option<i64>,
    now_ms: i64,
) -> Vec<&'a Lease> {
    rows.iter()
        .filter(|row| row.agent_id != agent && !own.contains(&row.id))
        .filter(|row| row.mode.conflicts_with(mode))
        .filter(|row| LeasePath::from_stored(row.file_path.clone()).overlaps(path))
        .filter(|row| {
            is_live_holder(row, now_ms)
                || (is_live_waiter(row, now_ms) && queued_at_seq.is_none_or(|seq| row.seq < seq))
        })
        .collect()
}

/// Describes `rows` as the conflicts of an error.
pub fn conflicts_of(rows: &[&Lease], now_ms: i64) -> Vec<Conflict> {
    let mut conflicts: Vec<Conflict> = rows
        .iter()
        .map(|row| Conflict {
            lease_id: row.id,
            file_path: row.file_path.clone(),
            agent_id: row.agent_id.clone(),
            mode: row.mode,
            status: effective_status(row, now_ms),
            expires_at: row.expires_at,
        })
        .collect();
    conflicts.sort_by(|a, b| {
        a.file_path
            .cmp(&b.file_path)
            .then(a.lease_id.cmp(&b.lease_id))
    });
    conflicts.dedup_by(|a, b| a.lease_id == b.lease_id);
    conflicts
}

/// Checks an agent id: not empty, no control characters, at most [`MAX_TEXT_BYTES`].
pub fn validate_agent(agent: &str) -> Result<(), LeaseError> {
    if agent.trim().is_empty() {
        return Err(LeaseError::invalid("agent_id", "an agent id is required"));
    }
    if agent.len() > MAX_TEXT_BYTES || agent.chars().any(char::is_control) {
        return Err(LeaseError::invalid(
            "agent_id",
            format!("must be at most {MAX_TEXT_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Checks a reason: at most [`MAX_TEXT_BYTES`] bytes, no NUL.
pub fn validate_reason(reason: Option<&str>) -> Result<(), LeaseError> {
    match reason {
        Some(text) if text.len() > MAX_TEXT_BYTES || text.contains('\0') => {
            Err(LeaseError::invalid(
                "reason",
                format!("must be at most {MAX_TEXT_BYTES} bytes without NUL"),
            ))
        }
        _ => Ok(()),
    }
}

/// The TTL a request gets: its own, or the default; refused when zero or above the maximum.
pub fn resolve_ttl(requested_ms: Option<u64>, settings: &Settings) -> Result<u64, LeaseError> {
    let ttl_ms = requested_ms.unwrap_or(settings.default_ttl_seconds.saturating_mul(1000));
    let max_ms = settings.max_ttl_seconds.saturating_mul(1000);
    if ttl_ms == 0 {
        return Err(LeaseError::invalid(
            "ttl_ms",
            "a time-to-live must be positive",
        ));
    }
    if ttl_ms > max_ms {
        return Err(LeaseError::invalid(
            "ttl_ms",
            format!(
                "{ttl_ms} ms is longer than the maximum of {max_ms} ms (setting max_ttl_seconds)"
            ),
        ));
    }
    Ok(ttl_ms)
}

/// Checks that `agent` may act on `lease` as its holder, and that it is still held at `now`.
pub fn check_holder(lease: &Lease, agent: &str, now_ms: i64) -> Result<(), LeaseError> {
    if lease.agent_id != agent {
        return Err(LeaseError::NotHolder {
            lease_id: lease.id,
            holder: lease.agent_id.clone(),
            agent_id: agent.to_string(),
        });
    }
    match effective_status(lease, now_ms) {
        LeaseStatus::Active => Ok(()),
        status => Err(LeaseError::LeaseLost {
            lease_id: lease.id,
            status,
        }),
    }
}

/// Checks a renewal and returns the renewed lease: new expiry now + TTL, one more renewal.
/// An expired or released lease is never resurrected.
pub fn renew(lease: &Lease, agent: &str, ttl_ms: u64, now_ms: i64) -> Result<Lease, LeaseError> {
    check_holder(lease, agent, now_ms)?;
    if let Some(max) = lease.max_renewals {
        if lease.renewal_count >= max {
            return Err(LeaseError::RenewalLimitReached {
                lease_id: lease.id,
                max_renewals: max,
            });
        }
    }
    let mut renewed = lease.clone();
    renewed.ttl_ms = ttl_ms;
    renewed.expires_at = crate::Timestamp(now_ms + ttl_ms as i64);
    renewed.renewal_count += 1;
    renewed.updated_at = crate::Timestamp(now_ms);
    Ok(renewed)
}

/// Searches the wait-for graph for a cycle back to `requester`.
///
/// `first` holds the edges of the new wait (`requester` waits for a path held or queued for by
/// another agent); `edges_of(agent)` gives the edges of that agent's own live waits. Returns the
/// cycle, starting with the requester's edge, if the new wait would close one.
pub fn find_cycle(
    requester: &str,
    first: Vec<WaitEdge>,
    mut edges_of: impl FnMut(&str) -> Result<Vec<WaitEdge>, LeaseError>,
) -> Result<Option<Vec<WaitEdge>>, LeaseError> {
    let mut visited: HashSet<String> = HashSet::new();
    // Depth-first search keeping the path of edges that led to each frontier entry.
    let mut stack: Vec<(WaitEdge, Vec<WaitEdge>)> =
        first.into_iter().map(|edge| (edge, Vec::new())).collect();
    while let Some((edge, mut trail)) = stack.pop() {
        trail.push(edge.clone());
        if edge.holder == requester {
            return Ok(Some(trail));
        }
        if !visited.insert(edge.holder.clone()) {
            continue;
        }
        for next in edges_of(&edge.holder)? {
            stack.push((next, trail.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    fn lease(
        agent: &str,
        path: &str,
        mode: LeaseMode,
        status: LeaseStatus,
        expires: i64,
        seq: i64,
    ) -> Lease {
        Lease {
            id: Uuid::new_v4(),
            file_path: path.into(),
            agent_id: agent.into(),
            mode,
            status,
            fencing_token: Some(1),
            created_at: Timestamp(0),
            expires_at: Timestamp(expires),
            ttl_ms: 1000,
            renewal_count: 0,
            max_renewals: None,
            updated_at: Timestamp(0),
            reason: None,
            seq,
        }
    }

    #[test]
    fn expired_rows_block_nobody_even_before_cleanup() {
        let rows = vec![lease(
            "a",
            "x",
            LeaseMode::Exclusive,
            LeaseStatus::Active,
            100,
            1,
        )];
        let p = LeasePath::parse("x").unwrap();
        let own = HashSet::new();
        assert_eq!(
            blockers(&rows, &p, LeaseMode::Exclusive, "b", &own, None, 99).len(),
            1
        );
        assert!(blockers(&rows, &p, LeaseMode::Exclusive, "b", &own, None, 100).is_empty());
        assert_eq!(effective_status(&rows[0], 100), LeaseStatus::Expired);
    }

    #[test]
    fn waiters_block_only_later_requests() {
        let rows = vec![lease(
            "a",
            "x",
            LeaseMode::Exclusive,
            LeaseStatus::Pending,
            100,
            5,
        )];
        let p = LeasePath::parse("x").unwrap();
        let own = HashSet::new();
        assert_eq!(
            blockers(&rows, &p, LeaseMode::Shared, "b", &own, None, 0).len(),
            1
        );
        assert_eq!(
            blockers(&rows, &p, LeaseMode::Shared, "b", &own, Some(6), 0).len(),
            1
        );
        assert!(blockers(&rows, &p, LeaseMode::Shared, "b", &own, Some(4), 0).is_empty());
    }

    #[test]
    fn cycle_is_found_through_other_agents() {
        let edge = |w: &str, p: &str, h: &str| WaitEdge {
            waiter: w.into(),
            file_path: p.into(),
            holder: h.into(),
        };
        let cycle = find_cycle("a", vec![edge("a", "y", "b")], |agent| {
            Ok(match agent {
                "b" => vec![edge("b", "z", "c")],
                "c" => vec![edge("c", "x", "a")],
                _ => vec![],
            })
        })
        .unwrap()
        .unwrap();
        assert_eq!(cycle.len(), 3);
        assert_eq!(cycle[2], edge("c", "x", "a"));
        let none = find_cycle("a", vec![edge("a", "y", "b")], |_| Ok(vec![])).unwrap();
        assert!(none.is_none());
    }
}
