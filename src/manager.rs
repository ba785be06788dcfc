//! The [`LeaseManager`] trait: every lease operation, as the CLI, the server and library users
//! call it.

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::Result;
use crate::model::{
    HistoryEvent, HistoryQuery, Lease, LeaseAcquisitionRequest, LeaseAcquisitionResponse,
    LeaseQuery, LeaseReleaseRequest, LeaseReleaseResponse, LeaseRenewalRequest,
    LeaseRenewalResponse, PathStatus,
};
use crate::settings::Settings;

/// Leases on files and folders.
///
/// Every implementation guarantees, across all processes and servers sharing its data:
///
/// - **Mutual exclusion.** At no instant do two agents hold conflicting leases on overlapping
///   paths: an exclusive lease conflicts with every other lease on the same path, a folder above
///   it or (for a folder) anything below it; a shared lease conflicts only with exclusive ones.
///   An agent never conflicts with itself.
/// - **Atomic acquisition.** A request for several paths is granted whole or not at all.
/// - **Expiry without cleanup.** A lease whose `expires_at` is not in the future blocks nobody
///   and reads as `expired`, whether or not cleanup has run. Time comes from the injected clock.
/// - **Fencing.** Every grant gets a fencing token greater than every token granted before.
/// - **Fair waiting.** Waiters for a path are served first come, first served; no later waiter
///   overtakes an earlier conflicting one. A wait that would close a cycle fails at once.
/// - **Audit.** Every change writes its history event in the same transaction (unless the
///   `keep_history` setting is off).
/// - **Bad input changes nothing.** Invalid requests fail with
///   [`crate::LeaseError::InvalidInput`] before anything is written.
#[async_trait]
pub trait LeaseManager: Send + Sync {
    /// Takes leases on every requested path, or none; waits in the queue up to `wait_ms`.
    async fn acquire_lease(
        &self,
        request: LeaseAcquisitionRequest,
    ) -> Result<LeaseAcquisitionResponse>;

    /// Extends a lease held by the requesting agent to now + TTL.
    async fn renew_lease(&self, request: LeaseRenewalRequest) -> Result<LeaseRenewalResponse>;

    /// Gives a lease back.
    async fn release_lease(&self, request: LeaseReleaseRequest) -> Result<LeaseReleaseResponse>;

    /// One lease (or queued wait) by id, with its status as of now.
    async fn get_lease(&self, lease_id: Uuid) -> Result<Lease>;

    /// The active leases overlapping `path`.
    async fn get_file_leases(&self, path: &str) -> Result<Vec<Lease>> {
        self.get_all_leases(LeaseQuery {
            path: Some(path.to_string()),
            ..LeaseQuery::default()
        })
        .await
    }

    /// The active leases of `agent_id`.
    async fn get_agent_leases(&self, agent_id: &str) -> Result<Vec<Lease>> {
        crate::rules::validate_agent(agent_id)?;
        self.get_all_leases(LeaseQuery {
            agent_id: Some(agent_id.to_string()),
            ..LeaseQuery::default()
        })
        .await
    }

    /// Leases matching `query`, oldest first.
    async fn get_all_leases(&self, query: LeaseQuery) -> Result<Vec<Lease>>;

    /// Whether any active lease overlaps `path`.
    async fn is_file_locked(&self, path: &str) -> Result<bool> {
        Ok(self.get_path_status(path).await?.locked)
    }

    /// Whether `agent_id` holds an active lease covering `path` (on it, or on a folder above).
    async fn has_agent_lease(&self, agent_id: &str, path: &str) -> Result<bool>;

    /// Marks leases past their expiry `expired` (and lapsed waits `failed`); returns how many
    /// leases expired.
    async fn cleanup_expired_leases(&self) -> Result<u64>;

    /// Releases every active lease of `agent_id` (and drops its waits); returns how many leases.
    async fn force_release_agent_leases(&self, agent_id: &str, reason: &str) -> Result<u64>;

    /// Who holds `path` and who waits for it.
    async fn get_path_status(&self, path: &str) -> Result<PathStatus>;

    /// History events matching `query`.
    async fn get_history(&self, query: HistoryQuery) -> Result<Vec<HistoryEvent>>;

    /// Deletes history older than `history_retention_days`; returns how many events.
    async fn purge_history(&self) -> Result<u64>;

    /// The settings in force.
    async fn get_settings(&self) -> Result<Settings>;

    /// Changes one setting (validated); it takes effect on the next operation.
    async fn update_setting(&self, key: &str, value: &str) -> Result<Settings>;
}
