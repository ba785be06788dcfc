//! Checks a store's record for the two promises that matter most: no two conflicting holds of
//! overlapping paths ever overlapped in time, and fencing tokens only grew in grant order.
//! Used by the multi-process tests and by `leasehold-stress check`.

use std::collections::HashMap;

use serde::Serialize;
use uuid::Uuid;

use crate::model::{EventType, HistoryEvent, Lease, LeaseStatus};
use crate::path::LeasePath;

/// One grant of a lease, as reconstructed from the history and the lease's final row.
#[derive(Debug, Clone, Serialize)]
pub struct Hold {
    /// The lease.
    pub lease_id: Uuid,
    /// Its path.
    pub file_path: String,
    /// Its holder.
    pub agent_id: String,
    /// Whether it was exclusive.
    pub exclusive: bool,
    /// Its fencing token.
    pub fencing_token: Option<u64>,
    /// The history id of its grant (commit order).
    pub granted_event: i64,
    /// When it was granted (ms).
    pub start_ms: i64,
    /// When it stopped counting: its release, or its final expiry (ms).
    pub end_ms: i64,
}

/// A broken promise.
#[derive(Debug, Clone, Serialize)]
pub enum Violation {
    /// Two conflicting holds overlapped in time.
    Overlap {
        /// The earlier hold.
        first: Hold,
        /// The hold that began before the first ended.
        second: Hold,
    },
    /// A later grant got a token not greater than an earlier one.
    TokenRegression {
        /// The earlier grant.
        earlier: Hold,
        /// The later grant.
        later: Hold,
    },
}

/// Reconstructs every hold from `leases` (all statuses) and `events` (the whole history).
pub fn holds(leases: &[Lease], events: &[HistoryEvent]) -> Vec<Hold> {
    let rows: HashMap<Uuid, &Lease> = leases.iter().map(|l| (l.id, l)).collect();
    let mut released_at: HashMap<Uuid, i64> = HashMap::new();
    for event in events {
        if matches!(
            event.event_type,
            EventType::Released | EventType::ForceReleased
        ) {
            released_at.insert(event.lease_id, event.event_at.0);
        }
    }
    let mut holds = Vec::new();
    for event in events {
        // A grant: an acquisition that did not start from an already active lease (an
        // idempotent re-acquire is not a new grant).
        if event.event_type != EventType::Acquired
            || event.status_before == Some(LeaseStatus::Active)
        {
            continue;
        }
        let Some(row) = rows.get(&event.lease_id) else {
            continue;
        };
        let end_ms = match released_at.get(&row.id) {
            Some(at) => (*at).min(row.expires_at.0),
            None => row.expires_at.0,
        };
        holds.push(Hold {
            lease_id: row.id,
            file_path: row.file_path.clone(),
            agent_id: row.agent_id.clone(),
            exclusive: row.mode == crate::LeaseMode::Exclusive,
            fencing_token: event.fencing_token,
            granted_event: event.id,
            start_ms: event.event_at.0,
            end_ms,
        });
    }
    holds
}

/// Every violation in the record; empty when all promises held.
pub fn check(leases: &[Lease], events: &[HistoryEvent]) -> Vec<Violation> {
    let mut holds = holds(leases, events);
    holds.sort_by_key(|h| h.granted_event);
    let mut violations = Vec::new();
    for (i, first) in holds.iter().enumerate() {
        let first_path = LeasePath::from_stored(first.file_path.clone());
        for second in &holds[i + 1..] {
            // Tokens must grow for every later grant of an overlapping path. (Grants of
            // unrelated paths may commit in any order on a server database.)
            let related = first_path.overlaps(&LeasePath::from_stored(second.file_path.clone()));
            if related && second.fencing_token <= first.fencing_token {
                violations.push(Violation::TokenRegression {
                    earlier: first.clone(),
                    later: second.clone(),
                });
            }
            let conflicting = related
                && (first.exclusive || second.exclusive)
                && first.agent_id != second.agent_id;
            let overlapping = second.start_ms < first.end_ms && first.start_ms < second.end_ms;
            if conflicting && overlapping {
                violations.push(Violation::Overlap {
                    first: first.clone(),
                    second: second.clone(),
                });
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeaseMode, Timestamp};

    fn lease(id: Uuid, agent: &str, expires: i64) -> Lease {
        Lease {
            id,
            file_path: "x".into(),
            agent_id: agent.into(),
            mode: LeaseMode::Exclusive,
            status: LeaseStatus::Expired,
            fencing_token: Some(1),
            created_at: Timestamp(0),
            expires_at: Timestamp(expires),
            ttl_ms: 100,
            renewal_count: 0,
            max_renewals: None,
            updated_at: Timestamp(0),
            reason: None,
            seq: 0,
        }
    }

    fn granted(event_id: i64, lease: &Lease, at: i64, token: u64) -> HistoryEvent {
        HistoryEvent {
            id: event_id,
            lease_id: lease.id,
            agent_id: lease.agent_id.clone(),
            file_path: lease.file_path.clone(),
            event_type: EventType::Acquired,
            status_before: None,
            status_after: LeaseStatus::Active,
            renewal_count: 0,
            fencing_token: Some(token),
            event_at: Timestamp(at),
            reason: None,
        }
    }

    #[test]
    fn finds_overlaps_and_token_regressions_and_accepts_clean_records() {
        let a = lease(Uuid::new_v4(), "a", 100);
        let b = lease(Uuid::new_v4(), "b", 200);
        let clean = [granted(1, &a, 0, 1), granted(2, &b, 100, 2)];
        assert!(check(&[a.clone(), b.clone()], &clean).is_empty());
        let overlapping = [granted(1, &a, 0, 1), granted(2, &b, 99, 2)];
        assert!(matches!(
            check(&[a.clone(), b.clone()], &overlapping)[..],
            [Violation::Overlap { .. }]
        ));
        let regressed = [granted(1, &a, 0, 2), granted(2, &b, 100, 2)];
        assert!(matches!(
            check(&[a, b], &regressed)[..],
            [Violation::TokenRegression { .. }]
        ));
    }
}
