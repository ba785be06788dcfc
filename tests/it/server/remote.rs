//! [`RemoteManager`] through the [`LeaseManager`] trait: the same scenario run against a local
//! engine and against a server gives the same answers and the same error variants.

use std::sync::Arc;
use std::time::Duration;

use leasehold::remote::RemoteManager;
use leasehold::{
    HistoryQuery, LeaseAcquisitionRequest, LeaseError, LeaseManager, LeaseMode, LeaseQuery,
    LeaseReleaseRequest, LeaseRenewalRequest, ManualClock,
};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::TestServer;
use crate::harness::T0_MS;

/// The managers one scenario runs against: each agent's, and an admin's.
struct Side {
    alice: Arc<dyn LeaseManager>,
    bob: Arc<dyn LeaseManager>,
    admin: Arc<dyn LeaseManager>,
    clock: ManualClock,
}

/// An outcome as comparable JSON: the value, or the error document. Lease ids (random on each
/// side) are replaced by their order of first appearance.
fn outcome<T: Serialize>(result: leasehold::Result<T>) -> Value {
    match result {
        Ok(value) => serde_json::json!({ "ok": value }),
        Err(error) => error.to_json(),
    }
}

fn normalise(outcomes: &[Value]) -> String {
    let text = serde_json::to_string_pretty(outcomes).unwrap();
    let mut ids: Vec<String> = Vec::new();
    let mut out = String::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let candidate = rest
            .get(..36)
            .filter(|c| Uuid::parse_str(c).is_ok() && c.as_bytes()[8] == b'-');
        if let Some(id) = candidate {
            let n = ids.iter().position(|known| known == id).unwrap_or_else(|| {
                ids.push(id.to_string());
                ids.len() - 1
            });
            out.push_str(&format!("<lease {n}>"));
            rest = &rest[36..];
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn request(agent: &str, paths: &[&str]) -> LeaseAcquisitionRequest {
    LeaseAcquisitionRequest {
        agent_id: agent.into(),
        paths: paths.iter().map(|p| p.to_string()).collect(),
        ttl_ms: Some(10_000),
        ..LeaseAcquisitionRequest::default()
    }
}

/// Everything the CLI does through the trait, including every refusal.
async fn scenario(side: &Side) -> Vec<Value> {
    let (alice, bob, admin) = (&side.alice, &side.bob, &side.admin);
    let mut out = Vec::new();
    let granted = alice
        .acquire_lease(request("alice", &["src/a.rs", "docs/"]))
        .await;
    let a = granted.as_ref().unwrap().leases[0].id;
    out.push(outcome(granted));
    out.push(outcome(bob.acquire_lease(request("bob", &["src/"])).await));
    out.push(outcome(
        bob.acquire_lease(request("bob", &["/etc/passwd"])).await,
    ));
    out.push(outcome(bob.acquire_lease(request("bob", &[])).await));
    out.push(outcome(
        bob.acquire_lease(LeaseAcquisitionRequest {
            ttl_ms: Some(0),
            ..request("bob", &["x"])
        })
        .await,
    ));
    out.push(outcome(bob.acquire_lease(request("", &["x"])).await));
    out.push(outcome(
        bob.acquire_lease(LeaseAcquisitionRequest {
            mode: LeaseMode::Shared,
            ..request("bob", &["lib/"])
        })
        .await,
    ));
    side.clock.advance(Duration::from_secs(1));
    let renew = |agent: &str, id: Uuid, ttl_ms: Option<u64>| LeaseRenewalRequest {
        lease_id: id,
        agent_id: agent.into(),
        ttl_ms,
    };
    out.push(outcome(bob.renew_lease(renew("bob", a, None)).await));
    out.push(outcome(
        alice.renew_lease(renew("alice", a, Some(20_000))).await,
    ));
    out.push(outcome(
        alice.renew_lease(renew("alice", Uuid::nil(), None)).await,
    ));
    out.push(outcome(alice.renew_lease(renew("alice", a, Some(0))).await));
    let release = |agent: &str, id: Uuid| LeaseReleaseRequest {
        lease_id: id,
        agent_id: agent.into(),
    };
    out.push(outcome(bob.release_lease(release("bob", a)).await));
    out.push(outcome(alice.get_lease(a).await));
    out.push(outcome(alice.get_lease(Uuid::nil()).await));
    out.push(outcome(alice.get_file_leases("src/a.rs").await));
    out.push(outcome(alice.get_file_leases("../x").await));
    out.push(outcome(alice.get_agent_leases("alice").await));
    out.push(outcome(alice.get_agent_leases("").await));
    out.push(outcome(alice.is_file_locked("src/a.rs").await));
    out.push(outcome(alice.is_file_locked("free.rs").await));
    out.push(outcome(
        bob.has_agent_lease("alice", "docs/deep/x.md").await,
    ));
    out.push(outcome(bob.has_agent_lease("alice", "docs").await));
    out.push(outcome(bob.has_agent_lease("bob", "docs/x.md").await));
    out.push(outcome(bob.get_path_status("src/").await));
    out.push(outcome(bob.get_path_status("").await));

    // A renewal limit, and a lease lost by release.
    let limited = alice
        .acquire_lease(LeaseAcquisitionRequest {
            max_renewals: Some(0),
            ..request("alice", &["limited"])
        })
        .await
        .unwrap();
    let l = limited.leases[0].id;
    out.push(outcome(alice.renew_lease(renew("alice", l, None)).await));
    out.push(outcome(alice.release_lease(release("alice", l)).await));
    out.push(outcome(alice.release_lease(release("alice", l)).await));
    out.push(outcome(alice.renew_lease(renew("alice", l, None)).await));

    // A wait that times out (the clock moves while the request waits), and a deadlock.
    let waiting = {
        let bob = bob.clone();
        let mut waits = request("bob", &["src/a.rs"]);
        waits.wait_ms = Some(2_000);
        tokio::spawn(async move { bob.acquire_lease(waits).await })
    };
    crate::harness::waiters_queued(admin, "src/a.rs", 1).await;
    side.clock.advance(Duration::from_millis(2_000));
    out.push(outcome(waiting.await.unwrap()));
    bob.acquire_lease(request("bob", &["lib/b.rs"]))
        .await
        .unwrap();
    let alice_waits = {
        let alice = alice.clone();
        let mut waits = request("alice", &["lib/b.rs"]);
        waits.wait_ms = Some(60_000);
        tokio::spawn(async move { alice.acquire_lease(waits).await })
    };
    crate::harness::waiters_queued(admin, "lib/b.rs", 1).await;
    let mut cycle = request("bob", &["src/a.rs"]);
    cycle.wait_ms = Some(60_000);
    out.push(outcome(bob.acquire_lease(cycle).await));
    out.push(outcome(
        admin
            .force_release_agent_leases("bob", "break the cycle")
            .await,
    ));
    out.push(outcome(alice_waits.await.unwrap()));

    // Settings.
    out.push(outcome(admin.get_settings().await));
    out.push(outcome(
        admin.update_setting("default_ttl_seconds", "60").await,
    ));
    out.push(outcome(
        admin.update_setting("default_ttl_seconds", "0").await,
    ));
    out.push(outcome(admin.update_setting("nonsense", "1").await));
    out.push(outcome(
        alice
            .acquire_lease(LeaseAcquisitionRequest {
                ttl_ms: None,
                ..request("alice", &["t"])
            })
            .await,
    ));

    // Listings, expiry, cleanup, force-release and history.
    out.push(outcome(
        alice
            .get_all_leases(LeaseQuery {
                include_inactive: true,
                ..LeaseQuery::default()
            })
            .await,
    ));
    out.push(outcome(
        alice
            .get_all_leases(LeaseQuery {
                agent_id: Some("alice".into()),
                path: Some("docs/".into()),
                limit: Some(1),
                ..LeaseQuery::default()
            })
            .await,
    ));
    side.clock.advance(Duration::from_secs(61));
    out.push(outcome(admin.cleanup_expired_leases().await));
    out.push(outcome(admin.cleanup_expired_leases().await));
    out.push(outcome(
        admin
            .force_release_agent_leases("alice", "end of test")
            .await,
    ));
    out.push(outcome(admin.force_release_agent_leases("alice", "").await));
    out.push(outcome(alice.get_history(HistoryQuery::default()).await));
    out.push(outcome(
        alice
            .get_history(HistoryQuery {
                path: Some("src/".into()),
                agent_id: Some("bob".into()),
                since: Some(leasehold::Timestamp(T0_MS + 1)),
                newest_first: true,
                limit: Some(3),
                ..HistoryQuery::default()
            })
            .await,
    ));
    out.push(outcome(
        alice
            .get_history(HistoryQuery {
                path: Some("/x".into()),
                ..HistoryQuery::default()
            })
            .await,
    ));
    out.push(outcome(admin.purge_history().await));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_remote_manager_answers_exactly_as_the_local_engine() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0_MS);
    let engine: Arc<dyn LeaseManager> = Arc::new(
        leasehold::open_sqlite(&dir.path().join("local.db"), Arc::new(clock.clone())).unwrap(),
    );
    let local = Side {
        alice: engine.clone(),
        bob: engine.clone(),
        admin: engine,
        clock,
    };
    let server = TestServer::start().await;
    let remote_as = |token: &str| -> Arc<dyn LeaseManager> {
        Arc::new(RemoteManager::new(&server.url(), token).unwrap())
    };
    let remote = Side {
        alice: remote_as(&server.alice),
        bob: remote_as(&server.bob),
        admin: remote_as(&server.admin),
        clock: server.clock.clone(),
    };

    let local_outcomes = scenario(&local).await;
    let remote_outcomes = scenario(&remote).await;
    let (local_text, remote_text) = (normalise(&local_outcomes), normalise(&remote_outcomes));
    if local_text != remote_text {
        for (i, (l, r)) in local_outcomes.iter().zip(&remote_outcomes).enumerate() {
            if normalise(std::slice::from_ref(l)) != normalise(std::slice::from_ref(r)) {
                panic!("step {i} differs:\nlocal:  {l}\nremote: {r}");
            }
        }
        assert_eq!(local_text, remote_text);
    }
    // The scenario did exercise the errors it means to.
    let codes: Vec<&str> = remote_outcomes
        .iter()
        .filter_map(|o| o["error"]["code"].as_str())
        .collect();
    for code in [
        "conflict",
        "invalid_input",
        "not_holder",
        "not_found",
        "renewal_limit",
        "lease_lost",
        "wait_timeout",
        "deadlock",
    ] {
        assert!(
            codes.contains(&code),
            "the scenario never hit {code}: {codes:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_only_refusals_reach_the_remote_caller_as_clear_errors() {
    let server = TestServer::start().await;
    let bob = RemoteManager::new(&server.url(), &server.bob).unwrap();
    let who = bob.whoami().await.unwrap();
    assert_eq!((who.agent_id.as_str(), who.admin), ("bob", false));
    let token_error = |error: LeaseError| match error {
        LeaseError::InvalidInput { what, why } => {
            assert_eq!(what, "token");
            why
        }
        other => panic!("expected a token error, got {other:?}"),
    };
    let why = token_error(bob.cleanup_expired_leases().await.unwrap_err());
    assert!(why.contains("admin"), "{why}");
    token_error(
        bob.force_release_agent_leases("alice", "r")
            .await
            .unwrap_err(),
    );
    token_error(
        bob.update_setting("keep_history", "false")
            .await
            .unwrap_err(),
    );
    token_error(bob.purge_history().await.unwrap_err());
    // bob's token cannot act as alice.
    let why = token_error(
        bob.acquire_lease(request("alice", &["a"]))
            .await
            .unwrap_err(),
    );
    assert!(why.contains("\"bob\""), "{why}");

    let stranger = RemoteManager::new(&server.url(), "lh_unknown").unwrap();
    let why = token_error(stranger.get_settings().await.unwrap_err());
    assert!(why.contains("unknown or has been revoked"), "{why}");

    // Nothing listens here: a storage error naming the server.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let nowhere = RemoteManager::new(&format!("http://127.0.0.1:{port}"), "lh_x").unwrap();
    match nowhere.get_settings().await.unwrap_err() {
        LeaseError::Storage { message } => assert!(message.contains("cannot reach"), "{message}"),
        other => panic!("{other:?}"),
    }
}
