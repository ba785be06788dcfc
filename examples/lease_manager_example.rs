//! A tour of the library: open a store, take a lease, meet a conflict, renew, query, release,
//! let a lease expire and clean up, and watch two agents contend for one file.
//!
//! Run with `cargo run --example lease_manager_example`. It uses a manual clock so that the
//! expiry part takes no time; a real program passes `Arc::new(SystemClock)`.

use std::sync::Arc;
use std::time::Duration;

use leasehold::{
    LeaseAcquisitionRequest, LeaseError, LeaseManager, LeaseReleaseRequest, LeaseRenewalRequest,
    ManualClock,
};

fn request(agent: &str, path: &str, ttl_ms: u64) -> LeaseAcquisitionRequest {
    LeaseAcquisitionRequest {
        agent_id: agent.into(),
        paths: vec![path.into()],
        ttl_ms: Some(ttl_ms),
        reason: Some(format!("{agent} edits {path}")),
        ..LeaseAcquisitionRequest::default()
    }
}

#[tokio::main]
async fn main() -> Result<(), LeaseError> {
    let dir = tempfile::tempdir().map_err(LeaseError::storage)?;
    let db = dir.path().join("leases.db");
    let clock = ManualClock::new(1_800_000_000_000);
    let manager: Arc<dyn LeaseManager> =
        Arc::new(leasehold::open_sqlite(&db, Arc::new(clock.clone()))?);
    println!("opened {}", db.display());

    // Acquire.
    let lease = manager
        .acquire_lease(request("alice", "src/main.rs", 60_000))
        .await?
        .leases
        .remove(0);
    println!(
        "alice holds {} (lease {}, fencing token {}, until {})",
        lease.file_path,
        lease.id,
        lease.fencing_token.unwrap_or_default(),
        lease.expires_at
    );

    // Conflict: bob is refused, and told who holds the file and until when.
    match manager
        .acquire_lease(request("bob", "./src//main.rs", 60_000))
        .await
    {
        Err(error @ LeaseError::AlreadyHeld { .. }) => println!("bob is refused: {error}"),
        other => println!("unexpected: {other:?}"),
    }
    // A folder lease conflicts with the files under it.
    if let Err(error) = manager.acquire_lease(request("bob", "src/", 60_000)).await {
        println!("bob cannot lease the folder either: {}", error.code());
    }

    // Renew.
    clock.advance(Duration::from_secs(20));
    let renewed = manager
        .renew_lease(LeaseRenewalRequest {
            lease_id: lease.id,
            agent_id: "alice".into(),
            ttl_ms: None,
        })
        .await?
        .lease;
    println!(
        "alice renewed: now until {} (renewal {})",
        renewed.expires_at, renewed.renewal_count
    );

    // Status queries.
    let status = manager.get_path_status("src/main.rs").await?;
    println!(
        "src/main.rs locked: {}, holders: {}",
        status.locked,
        status.holders.len()
    );
    println!(
        "is src/main.rs locked? {}",
        manager.is_file_locked("src/main.rs").await?
    );
    println!(
        "does alice hold it? {}",
        manager.has_agent_lease("alice", "src/main.rs").await?
    );
    println!(
        "alice's leases: {}",
        manager.get_agent_leases("alice").await?.len()
    );

    // Release.
    let released = manager
        .release_lease(LeaseReleaseRequest {
            lease_id: lease.id,
            agent_id: "alice".into(),
        })
        .await?
        .lease;
    println!("alice released it: status {}", released.status);

    // Expiry and cleanup: a holder that dies blocks nobody once its TTL has passed.
    let crashed = manager
        .acquire_lease(request("carol", "README.md", 5_000))
        .await?
        .leases
        .remove(0);
    clock.advance(Duration::from_secs(6));
    println!(
        "carol's lease is now {}",
        manager.get_lease(crashed.id).await?.status
    );
    let taken = manager
        .acquire_lease(request("dave", "README.md", 60_000))
        .await?
        .leases
        .remove(0);
    println!(
        "dave took README.md at once (token {})",
        taken.fencing_token.unwrap_or_default()
    );
    println!(
        "cleanup marked {} expired lease(s)",
        manager.cleanup_expired_leases().await?
    );

    // Two agents contending: erin waits in the queue and gets the file the moment dave lets go.
    let waiter = {
        let manager = manager.clone();
        tokio::spawn(async move {
            let mut wait = request("erin", "README.md", 60_000);
            wait.wait_ms = Some(30_000);
            manager.acquire_lease(wait).await
        })
    };
    while manager
        .get_path_status("README.md")
        .await?
        .waiters
        .is_empty()
    {
        tokio::task::yield_now().await;
    }
    println!("erin is queued behind dave");
    manager
        .release_lease(LeaseReleaseRequest {
            lease_id: taken.id,
            agent_id: "dave".into(),
        })
        .await?;
    let granted = waiter.await.map_err(LeaseError::storage)??.leases.remove(0);
    println!(
        "dave released; erin got README.md with token {} (greater than dave's {})",
        granted.fencing_token.unwrap_or_default(),
        taken.fencing_token.unwrap_or_default()
    );

    let events = manager
        .get_history(leasehold::HistoryQuery::default())
        .await?;
    println!("history has {} events:", events.len());
    for event in events {
        println!(
            "  {} {:<14} {:<12} {}",
            event.event_at,
            event.event_type.as_str(),
            event.agent_id,
            event.file_path
        );
    }
    Ok(())
}
