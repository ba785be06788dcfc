//! [`LeaseGuard`]: holds leases for a long-running holder, renewing them in the background at
//! about a third of their TTL, telling the owner at once when one is lost, and releasing them on
//! close or drop.

use std::sync::{Arc, Mutex};

use futures_util::future::join_all;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::error::LeaseError;
use crate::manager::LeaseManager;
use crate::model::{Lease, LeaseReleaseRequest, LeaseRenewalRequest};

/// Leases kept alive in the background until released or dropped.
pub struct LeaseGuard {
    manager: Arc<dyn LeaseManager>,
    agent_id: String,
    leases: Arc<Mutex<Vec<Lease>>>,
    lost: watch::Receiver<Option<LeaseError>>,
    task: Option<JoinHandle<()>>,
}

impl LeaseGuard {
    /// Starts keeping `leases` (held by `agent_id`) alive.
    pub fn new(
        manager: Arc<dyn LeaseManager>,
        clock: Arc<dyn Clock>,
        agent_id: impl Into<String>,
        leases: Vec<Lease>,
    ) -> LeaseGuard {
        let agent_id = agent_id.into();
        let (lost_tx, lost) = watch::channel(None);
        let leases = Arc::new(Mutex::new(leases));
        let task = tokio::spawn(keep_alive(
            manager.clone(),
            clock,
            agent_id.clone(),
            leases.clone(),
            lost_tx,
        ));
        LeaseGuard {
            manager,
            agent_id,
            leases,
            lost,
            task: Some(task),
        }
    }

    /// The leases as last renewed.
    pub fn leases(&self) -> Vec<Lease> {
        self.leases.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Why a lease was lost, if one was.
    pub fn lost_reason(&self) -> Option<LeaseError> {
        self.lost.borrow().clone()
    }

    /// Completes as soon as a lease is lost (refused renewal, or expiry passed while the store was
    /// unreachable), with the reason.
    pub async fn lost(&self) -> LeaseError {
        let mut lost = self.lost.clone();
        let reason = match lost.wait_for(|reason| reason.is_some()).await {
            Ok(reason) => reason.clone(),
            // The keeper stopped without reporting a loss: the guard is closing.
            Err(_) => None,
        };
        match reason {
            Some(reason) => reason,
            None => std::future::pending().await,
        }
    }

    /// Stops renewing and releases every lease still held; returns the first error.
    pub async fn release(mut self) -> Result<(), LeaseError> {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        let mut first_error = None;
        for lease in self.leases() {
            let result = self
                .manager
                .release_lease(LeaseReleaseRequest {
                    lease_id: lease.id,
                    agent_id: self.agent_id.clone(),
                })
                .await;
            if let Err(error) = result {
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else { return };
        task.abort();
        let (manager, agent_id, leases) =
            (self.manager.clone(), self.agent_id.clone(), self.leases());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                for lease in leases {
                    let _ = manager
                        .release_lease(LeaseReleaseRequest {
                            lease_id: lease.id,
                            agent_id: agent_id.clone(),
                        })
                        .await;
                }
            });
        }
    }
}

async fn keep_alive(
    manager: Arc<dyn LeaseManager>,
    clock: Arc<dyn Clock>,
    agent_id: String,
    leases: Arc<Mutex<Vec<Lease>>>,
    lost: watch::Sender<Option<LeaseError>>,
) {
    // Each lease is renewed when a third of its TTL has passed since its last renewal.
    let due_at = |lease: &Lease| lease.expires_at.0 - (lease.ttl_ms as i64 * 2 / 3);
    loop {
        let snapshot = leases.lock().map(|l| l.clone()).unwrap_or_default();
        let Some(next) = snapshot.iter().map(due_at).min() else {
            return;
        };
        clock.sleep_until(next).await;
        let now = clock.now_ms();
        let due: Vec<(usize, &Lease)> = snapshot
            .iter()
            .enumerate()
            .filter(|(_, lease)| due_at(lease) <= now)
            .collect();
        // Every due lease is renewed at once, so that a store with group commit (SQLite's
        // writer) commits them together instead of one commit each.
        let renewals = join_all(due.iter().map(|(_, lease)| {
            manager.renew_lease(LeaseRenewalRequest {
                lease_id: lease.id,
                agent_id: agent_id.clone(),
                ttl_ms: Some(lease.ttl_ms),
            })
        }))
        .await;
        let mut retry_at: Option<i64> = None;
        for ((i, lease), result) in due.into_iter().zip(renewals) {
            match result {
                Ok(renewed) => {
                    if let Ok(mut held) = leases.lock() {
                        held[i] = renewed.lease;
                    }
                }
                Err(LeaseError::Storage { message }) if clock.now_ms() < lease.expires_at.0 => {
                    // The store may come back before the lease runs out: try again soon.
                    tracing::warn!(lease_id = %lease.id, %message, "renewal failed; retrying");
                    let at = clock.now_ms() + (lease.ttl_ms as i64 / 10).clamp(10, 1000);
                    retry_at = Some(retry_at.map_or(at, |earlier| earlier.min(at)));
                }
                Err(error) => {
                    let _ = lost.send(Some(error));
                    return;
                }
            }
        }
        if let Some(at) = retry_at {
            clock.sleep_until(at).await;
        }
    }
}
