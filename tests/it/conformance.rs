//! The conformance suite: every lease behaviour of the engine issue (#2), written once as a
//! function over a [`TestEnv`] and run against every store by `conformance_suite!`.

use std::sync::Arc;
use std::time::Duration;

use leasehold::{
    EventType, HistoryQuery, LeaseAcquisitionRequest, LeaseError, LeaseGuard, LeaseManager,
    LeaseMode, LeaseQuery, LeaseReleaseRequest, LeaseRenewalRequest, LeaseStatus, Timestamp,
};
use uuid::Uuid;

use crate::harness::{eventually, req, shared, waiters_queued, TestEnv, T0_MS};

/// Instantiates every conformance test for one store builder.
macro_rules! conformance_suite {
    ($store:ident, $builder:path) => {
        mod $store {
            conformance_suite!(@tests $builder;
                paths_are_normalised,
                bad_paths_are_refused_and_change_nothing,
                bad_ttl_agent_and_wait_are_refused,
                exclusive_conflicts_with_any_other_holder,
                shared_leases_coexist_and_conflict_with_exclusive,
                folder_lease_conflicts_with_files_below_and_above,
                conflict_error_lists_every_conflicting_lease,
                agent_never_conflicts_with_itself,
                reacquire_is_idempotent,
                expired_lease_blocks_nobody_before_cleanup,
                cleanup_marks_expired_and_writes_history,
                renewal_extends_from_now_and_counts,
                renewal_only_by_holder_and_never_resurrects,
                renewal_limit_is_enforced,
                release_only_by_holder_once,
                fencing_tokens_grow_across_releases_expiry_and_reopen,
                waiter_is_woken_by_release,
                waiters_are_served_in_arrival_order,
                later_request_cannot_overtake_a_queued_waiter,
                waiter_gets_path_when_holder_expires,
                wait_timeout_fails_the_entry_and_writes_history,
                cancelled_waiter_leaves_the_queue,
                cancelled_waiters_leave_no_orphans_at_any_moment,
                dead_waiters_entry_expires_by_itself,
                waiting_refused_when_blocking_disabled,
                multi_path_is_all_or_nothing,
                deadlock_is_detected_naming_the_cycle,
                force_release_releases_all_of_an_agents_leases,
                history_records_every_event_and_filters,
                history_off_writes_nothing_and_old_history_is_purged,
                background_cleanup_runs_on_interval_and_stops,
                keep_alive_guard_renews_reports_loss_and_releases,
                settings_take_effect_on_next_operation,
                status_queries_report_holders_and_waiters,
                listing_filters_by_agent_path_and_status
            );
        }
    };
    (@tests $builder:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let env = $builder().await;
                super::super::$name(&env).await;
            }
        )*
    };
}

mod stores {
    conformance_suite!(sqlite, crate::harness::sqlite_env);
    conformance_suite!(postgres, crate::harness::postgres_env);
}

const MIN: u64 = 60_000;

fn m(env: &TestEnv) -> &Arc<dyn LeaseManager> {
    &env.manager
}

async fn all_rows(env: &TestEnv) -> Vec<leasehold::Lease> {
    m(env)
        .get_all_leases(LeaseQuery {
            include_inactive: true,
            ..LeaseQuery::default()
        })
        .await
        .unwrap()
}

async fn history(env: &TestEnv) -> Vec<leasehold::HistoryEvent> {
    m(env).get_history(HistoryQuery::default()).await.unwrap()
}

fn release(lease: &leasehold::Lease) -> LeaseReleaseRequest {
    LeaseReleaseRequest {
        lease_id: lease.id,
        agent_id: lease.agent_id.clone(),
    }
}

fn waiting(mut request: LeaseAcquisitionRequest, wait_ms: u64) -> LeaseAcquisitionRequest {
    request.wait_ms = Some(wait_ms);
    request
}

// 1. Paths.

async fn paths_are_normalised(env: &TestEnv) {
    let got = m(env)
        .acquire_lease(req("a", &["./src//x/../b.rs", "docs/"], MIN))
        .await
        .unwrap();
    assert_eq!(got.leases[0].file_path, "src/b.rs");
    assert_eq!(got.leases[1].file_path, "docs/");
    assert!(m(env).is_file_locked("src/./b.rs").await.unwrap());
}

async fn bad_paths_are_refused_and_change_nothing(env: &TestEnv) {
    let long = "a".repeat(4097);
    for bad in [
        "",
        "../x",
        "a/../../x",
        "/etc/passwd",
        "a\0b",
        "a\u{7}b",
        long.as_str(),
        "./",
    ] {
        let err = m(env)
            .acquire_lease(req("a", &["ok.rs", bad], MIN))
            .await
            .unwrap_err();
        assert!(
            matches!(err, LeaseError::InvalidInput { ref what, .. } if what == "path"),
            "{bad:?}: {err}"
        );
    }
    let err = m(env).acquire_lease(req("a", &[], MIN)).await.unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    let err = m(env)
        .acquire_lease(req("a", &["x", "./x"], MIN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_input");
    assert!(all_rows(env).await.is_empty());
    assert!(history(env).await.is_empty());
}

async fn bad_ttl_agent_and_wait_are_refused(env: &TestEnv) {
    let cases = vec![
        req("a", &["x"], 0),
        req("a", &["x"], 7 * 24 * 3600 * 1000 + 1),
        req("", &["x"], MIN),
        req("a\nb", &["x"], MIN),
        waiting(req("a", &["x"], MIN), 24 * 3600 * 1000 + 1),
        LeaseAcquisitionRequest {
            reason: Some("r".repeat(5000)),
            ..req("a", &["x"], MIN)
        },
    ];
    for request in cases {
        let err = m(env).acquire_lease(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), "invalid_input", "{request:?}");
    }
    // The largest TTL allowed is accepted.
    m(env)
        .acquire_lease(req("a", &["y"], 7 * 24 * 3600 * 1000))
        .await
        .unwrap();
    assert_eq!(all_rows(env).await.len(), 1);
}

// 2. Modes and conflicts.

async fn exclusive_conflicts_with_any_other_holder(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    for request in [req("b", &["x"], MIN), shared("b", &["x"], MIN)] {
        match m(env).acquire_lease(request).await.unwrap_err() {
            LeaseError::AlreadyHeld { conflicts } => {
                assert_eq!(conflicts.len(), 1);
                assert_eq!(conflicts[0].lease_id, held.id);
                assert_eq!(conflicts[0].agent_id, "a");
                assert_eq!(conflicts[0].mode, LeaseMode::Exclusive);
                assert_eq!(conflicts[0].expires_at, held.expires_at);
            }
            other => panic!("expected AlreadyHeld, got {other}"),
        }
    }
    assert_eq!(all_rows(env).await.len(), 1);
}

async fn shared_leases_coexist_and_conflict_with_exclusive(env: &TestEnv) {
    m(env)
        .acquire_lease(shared("a", &["x"], MIN))
        .await
        .unwrap();
    m(env)
        .acquire_lease(shared("b", &["x"], MIN))
        .await
        .unwrap();
    let err = m(env)
        .acquire_lease(req("c", &["x"], MIN))
        .await
        .unwrap_err();
    match err {
        LeaseError::AlreadyHeld { conflicts } => assert_eq!(conflicts.len(), 2),
        other => panic!("expected AlreadyHeld, got {other}"),
    }
    assert_eq!(m(env).get_file_leases("x").await.unwrap().len(), 2);
}

async fn folder_lease_conflicts_with_files_below_and_above(env: &TestEnv) {
    m(env)
        .acquire_lease(req("a", &["src/"], MIN))
        .await
        .unwrap();
    for path in ["src/main.rs", "src/deep/mod.rs", "src/", "src/deep/"] {
        assert_eq!(
            m(env)
                .acquire_lease(req("b", &[path], MIN))
                .await
                .unwrap_err()
                .code(),
            "conflict",
            "{path}"
        );
    }
    // Siblings with a common prefix are not below the folder.
    m(env)
        .acquire_lease(req("b", &["srcx/main.rs", "src"], MIN))
        .await
        .unwrap();
    // A file lease blocks a folder lease above it.
    m(env)
        .acquire_lease(req("c", &["lib/a/b.rs"], MIN))
        .await
        .unwrap();
    assert_eq!(
        m(env)
            .acquire_lease(req("d", &["lib/"], MIN))
            .await
            .unwrap_err()
            .code(),
        "conflict"
    );
    assert_eq!(
        m(env)
            .acquire_lease(shared("d", &["lib/a/"], MIN))
            .await
            .unwrap_err()
            .code(),
        "conflict"
    );
    m(env)
        .acquire_lease(req("d", &["lib/c/"], MIN))
        .await
        .unwrap();
}

async fn conflict_error_lists_every_conflicting_lease(env: &TestEnv) {
    let a = m(env)
        .acquire_lease(shared("a", &["docs/"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    let b = m(env)
        .acquire_lease(shared("b", &["docs/guide.md"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    let c = m(env).acquire_lease(req("c", &["docs/other/"], MIN)).await;
    assert_eq!(
        c.unwrap_err().code(),
        "conflict",
        "exclusive under a shared folder lease"
    );
    match m(env)
        .acquire_lease(req("d", &["docs/"], MIN))
        .await
        .unwrap_err()
    {
        LeaseError::AlreadyHeld { conflicts } => {
            let mut ids: Vec<Uuid> = conflicts.iter().map(|c| c.lease_id).collect();
            ids.sort();
            let mut want = vec![a.id, b.id];
            want.sort();
            assert_eq!(ids, want);
        }
        other => panic!("expected AlreadyHeld, got {other}"),
    }
}

async fn agent_never_conflicts_with_itself(env: &TestEnv) {
    m(env)
        .acquire_lease(req("a", &["src/"], MIN))
        .await
        .unwrap();
    let inner = m(env)
        .acquire_lease(req("a", &["src/lib.rs"], MIN))
        .await
        .unwrap();
    assert_eq!(inner.leases[0].file_path, "src/lib.rs");
    assert_eq!(m(env).get_agent_leases("a").await.unwrap().len(), 2);
}

// 3. Idempotent re-acquire.

async fn reacquire_is_idempotent(env: &TestEnv) {
    let first = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    env.clock.advance(Duration::from_secs(30));
    let again = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    assert_eq!(again.id, first.id);
    assert_eq!(again.fencing_token, first.fencing_token);
    assert_eq!(again.expires_at, Timestamp(T0_MS + 30_000 + MIN as i64));
    // A shorter TTL never shortens the lease: the later expiry wins.
    let shorter = m(env)
        .acquire_lease(req("a", &["x"], 1_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    assert_eq!(shorter.expires_at, again.expires_at);
    assert_eq!(m(env).get_agent_leases("a").await.unwrap().len(), 1);
}

// 4. Expiry.

async fn expired_lease_blocks_nobody_before_cleanup(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], 1_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    env.clock.advance(Duration::from_millis(999));
    assert!(m(env).is_file_locked("x").await.unwrap());
    env.clock.advance(Duration::from_millis(1));
    assert!(!m(env).is_file_locked("x").await.unwrap());
    assert_eq!(
        m(env).get_lease(held.id).await.unwrap().status,
        LeaseStatus::Expired
    );
    assert!(m(env).get_file_leases("x").await.unwrap().is_empty());
    assert!(!m(env).has_agent_lease("a", "x").await.unwrap());
    let taken = m(env)
        .acquire_lease(req("b", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    assert_eq!(taken.agent_id, "b");
}

async fn cleanup_marks_expired_and_writes_history(env: &TestEnv) {
    let short = m(env)
        .acquire_lease(req("a", &["x"], 1_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    m(env).acquire_lease(req("a", &["y"], MIN)).await.unwrap();
    assert_eq!(m(env).cleanup_expired_leases().await.unwrap(), 0);
    env.clock.advance(Duration::from_secs(2));
    assert_eq!(m(env).cleanup_expired_leases().await.unwrap(), 1);
    assert_eq!(
        m(env).cleanup_expired_leases().await.unwrap(),
        0,
        "cleanup is idempotent"
    );
    let events = history(env).await;
    let expired: Vec<_> = events
        .iter()
        .filter(|e| e.event_type == EventType::Expired)
        .collect();
    assert_eq!(expired.len(), 1);
    assert_eq!(expired[0].lease_id, short.id);
    assert_eq!(expired[0].status_before, Some(LeaseStatus::Active));
    assert_eq!(expired[0].status_after, LeaseStatus::Expired);
}

// 5. Renewal.

async fn renewal_extends_from_now_and_counts(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], 10_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    env.clock.advance(Duration::from_secs(5));
    let renewed = m(env)
        .renew_lease(LeaseRenewalRequest {
            lease_id: held.id,
            agent_id: "a".into(),
            ttl_ms: None,
        })
        .await
        .unwrap()
        .lease;
    assert_eq!(renewed.expires_at, Timestamp(T0_MS + 5_000 + 10_000));
    assert_eq!(renewed.renewal_count, 1);
    assert_eq!(renewed.fencing_token, held.fencing_token);
    let longer = m(env)
        .renew_lease(LeaseRenewalRequest {
            lease_id: held.id,
            agent_id: "a".into(),
            ttl_ms: Some(MIN),
        })
        .await
        .unwrap()
        .lease;
    assert_eq!(longer.ttl_ms, MIN);
    assert_eq!(longer.expires_at, Timestamp(T0_MS + 5_000 + MIN as i64));
    assert_eq!(m(env).get_lease(held.id).await.unwrap().renewal_count, 2);
    let bad = m(env)
        .renew_lease(LeaseRenewalRequest {
            lease_id: held.id,
            agent_id: "a".into(),
            ttl_ms: Some(0),
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), "invalid_input");
    assert_eq!(m(env).get_lease(held.id).await.unwrap().renewal_count, 2);
}

async fn renewal_only_by_holder_and_never_resurrects(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], 1_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    let renew = |agent: &str| LeaseRenewalRequest {
        lease_id: held.id,
        agent_id: agent.into(),
        ttl_ms: None,
    };
    assert!(
        matches!(m(env).renew_lease(renew("b")).await.unwrap_err(), LeaseError::NotHolder { ref holder, .. } if holder == "a")
    );
    let unknown = LeaseRenewalRequest {
        lease_id: Uuid::new_v4(),
        agent_id: "a".into(),
        ttl_ms: None,
    };
    assert_eq!(
        m(env).renew_lease(unknown).await.unwrap_err().code(),
        "not_found"
    );
    env.clock.advance(Duration::from_secs(1));
    match m(env).renew_lease(renew("a")).await.unwrap_err() {
        LeaseError::LeaseLost { status, .. } => assert_eq!(status, LeaseStatus::Expired),
        other => panic!("expected LeaseLost, got {other}"),
    }
    let other = m(env)
        .acquire_lease(req("a", &["y"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    m(env).release_lease(release(&other)).await.unwrap();
    let again = LeaseRenewalRequest {
        lease_id: other.id,
        agent_id: "a".into(),
        ttl_ms: None,
    };
    match m(env).renew_lease(again).await.unwrap_err() {
        LeaseError::LeaseLost { status, .. } => assert_eq!(status, LeaseStatus::Released),
        other => panic!("expected LeaseLost, got {other}"),
    }
    assert_eq!(
        m(env).get_lease(other.id).await.unwrap().status,
        LeaseStatus::Released
    );
}

async fn renewal_limit_is_enforced(env: &TestEnv) {
    let request = LeaseAcquisitionRequest {
        max_renewals: Some(2),
        ..req("a", &["x"], MIN)
    };
    let held = m(env)
        .acquire_lease(request)
        .await
        .unwrap()
        .leases
        .remove(0);
    assert_eq!(held.max_renewals, Some(2));
    let renew = LeaseRenewalRequest {
        lease_id: held.id,
        agent_id: "a".into(),
        ttl_ms: None,
    };
    m(env).renew_lease(renew.clone()).await.unwrap();
    m(env).renew_lease(renew.clone()).await.unwrap();
    match m(env).renew_lease(renew.clone()).await.unwrap_err() {
        LeaseError::RenewalLimitReached { max_renewals, .. } => assert_eq!(max_renewals, 2),
        other => panic!("expected RenewalLimitReached, got {other}"),
    }
    assert_eq!(m(env).get_lease(held.id).await.unwrap().renewal_count, 2);
    // The setting gives the default limit.
    m(env).update_setting("max_renewals", "0").await.unwrap();
    let capped = m(env)
        .acquire_lease(req("a", &["y"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    assert_eq!(capped.max_renewals, Some(0));
    let renew = LeaseRenewalRequest {
        lease_id: capped.id,
        agent_id: "a".into(),
        ttl_ms: None,
    };
    assert_eq!(
        m(env).renew_lease(renew).await.unwrap_err().code(),
        "renewal_limit"
    );
}

// 6. Release.

async fn release_only_by_holder_once(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    let by_b = LeaseReleaseRequest {
        lease_id: held.id,
        agent_id: "b".into(),
    };
    assert_eq!(
        m(env).release_lease(by_b).await.unwrap_err().code(),
        "not_holder"
    );
    assert!(m(env).is_file_locked("x").await.unwrap());
    let released = m(env).release_lease(release(&held)).await.unwrap().lease;
    assert_eq!(released.status, LeaseStatus::Released);
    assert!(!m(env).is_file_locked("x").await.unwrap());
    match m(env).release_lease(release(&held)).await.unwrap_err() {
        LeaseError::LeaseLost { status, .. } => assert_eq!(status, LeaseStatus::Released),
        other => panic!("expected LeaseLost, got {other}"),
    }
    let unknown = LeaseReleaseRequest {
        lease_id: Uuid::new_v4(),
        agent_id: "a".into(),
    };
    assert_eq!(
        m(env).release_lease(unknown).await.unwrap_err().code(),
        "not_found"
    );
}

// 7. Fencing tokens.

async fn fencing_tokens_grow_across_releases_expiry_and_reopen(env: &TestEnv) {
    let token = |l: &leasehold::Lease| l.fencing_token.expect("a granted lease has a token");
    let first = m(env)
        .acquire_lease(req("a", &["x"], 1_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    env.clock.advance(Duration::from_secs(2));
    let second = m(env)
        .acquire_lease(req("b", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    assert!(token(&second) > token(&first));
    m(env).release_lease(release(&second)).await.unwrap();
    let other = env.reopen();
    let third = other
        .acquire_lease(req("c", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    assert!(token(&third) > token(&second));
    let both = m(env)
        .acquire_lease(shared("d", &["y", "z"], MIN))
        .await
        .unwrap();
    assert!(both.leases.iter().all(|l| token(l) > token(&third)));
}

// 8. Blocking acquisition.

async fn waiter_is_woken_by_release(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    let manager = m(env).clone();
    let waiter = tokio::spawn(async move {
        manager
            .acquire_lease(waiting(req("b", &["x"], MIN), 60_000))
            .await
    });
    waiters_queued(m(env), "x", 1).await;
    let status = m(env).get_path_status("x").await.unwrap();
    assert_eq!(status.waiters[0].agent_id, "b");
    assert_eq!(status.waiters[0].status, LeaseStatus::Pending);
    m(env).release_lease(release(&held)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.leases[0].agent_id, "b");
    assert!(got.leases[0].fencing_token > held.fencing_token);
    // The queue entry became the lease: no pending row is left behind.
    assert!(m(env)
        .get_path_status("x")
        .await
        .unwrap()
        .waiters
        .is_empty());
}

async fn waiters_are_served_in_arrival_order(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    let mut tasks = Vec::new();
    for (i, agent) in ["w1", "w2", "w3"].into_iter().enumerate() {
        let manager = m(env).clone();
        tasks.push(tokio::spawn(async move {
            manager
                .acquire_lease(waiting(req(agent, &["x"], MIN), 60_000))
                .await
        }));
        waiters_queued(m(env), "x", i + 1).await;
    }
    let mut previous = held;
    for (i, task) in tasks.into_iter().enumerate() {
        m(env).release_lease(release(&previous)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.leases[0].agent_id, format!("w{}", i + 1));
        let status = m(env).get_path_status("x").await.unwrap();
        assert_eq!(status.waiters.len(), 2 - i, "the others still wait");
        previous = got.leases.into_iter().next().unwrap();
    }
}

async fn later_request_cannot_overtake_a_queued_waiter(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    let manager = m(env).clone();
    let waiter = tokio::spawn(async move {
        manager
            .acquire_lease(waiting(req("b", &["x"], MIN), 60_000))
            .await
    });
    waiters_queued(m(env), "x", 1).await;
    // A shared request is queued behind the exclusive waiter too: writers do not starve.
    match m(env)
        .acquire_lease(shared("c", &["x"], MIN))
        .await
        .unwrap_err()
    {
        LeaseError::AlreadyHeld { conflicts } => {
            assert!(conflicts
                .iter()
                .any(|c| c.agent_id == "b" && c.status == LeaseStatus::Pending));
        }
        other => panic!("expected AlreadyHeld, got {other}"),
    }
    m(env).release_lease(release(&held)).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.leases[0].agent_id, "b");
}

async fn waiter_gets_path_when_holder_expires(env: &TestEnv) {
    m(env).acquire_lease(req("a", &["x"], 1_000)).await.unwrap();
    let manager = m(env).clone();
    let waiter = tokio::spawn(async move {
        manager
            .acquire_lease(waiting(req("b", &["x"], MIN), 5_000))
            .await
    });
    waiters_queued(m(env), "x", 1).await;
    env.clock.advance(Duration::from_millis(1_000));
    let got = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.leases[0].agent_id, "b");
    assert_eq!(got.waited_ms, 1_000);
}

async fn wait_timeout_fails_the_entry_and_writes_history(env: &TestEnv) {
    m(env).acquire_lease(req("a", &["x"], MIN)).await.unwrap();
    let manager = m(env).clone();
    let waiter = tokio::spawn(async move {
        manager
            .acquire_lease(waiting(req("b", &["x"], MIN), 5_000))
            .await
    });
    waiters_queued(m(env), "x", 1).await;
    env.clock.advance(Duration::from_millis(5_000));
    match tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err()
    {
        LeaseError::WaitTimeout {
            waited_ms,
            conflicts,
        } => {
            assert_eq!(waited_ms, 5_000);
            assert_eq!(conflicts[0].agent_id, "a");
        }
        other => panic!("expected WaitTimeout, got {other}"),
    }
    let rows = all_rows(env).await;
    let entry = rows.iter().find(|l| l.agent_id == "b").unwrap();
    assert_eq!(entry.status, LeaseStatus::Failed);
    assert_eq!(entry.fencing_token, None);
    let events = history(env).await;
    assert!(events
        .iter()
        .any(|e| e.event_type == EventType::WaitFailed && e.agent_id == "b"));
    assert!(m(env)
        .get_path_status("x")
        .await
        .unwrap()
        .waiters
        .is_empty());
}

async fn cancelled_waiter_leaves_the_queue(env: &TestEnv) {
    m(env).acquire_lease(req("a", &["x"], MIN)).await.unwrap();
    let manager = m(env).clone();
    let waiter = tokio::spawn(async move {
        manager
            .acquire_lease(waiting(req("b", &["x"], MIN), 60_000))
            .await
    });
    waiters_queued(m(env), "x", 1).await;
    waiter.abort();
    waiters_queued(m(env), "x", 0).await;
    let entry = all_rows(env)
        .await
        .into_iter()
        .find(|l| l.agent_id == "b")
        .unwrap();
    assert_eq!(entry.status, LeaseStatus::Failed);
}

/// A waiter can be dropped while its transaction is still running on the store's thread; a
/// queue entry that transaction wrote must still leave the queue. (A grant it made stays with
/// the agent: a retry of the same agent may already have been handed that very lease.)
async fn cancelled_waiters_leave_no_orphans_at_any_moment(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    for i in 0..20 {
        if i == 10 {
            // Half of the waiters are dropped around the moment they are granted.
            m(env).release_lease(release(&held)).await.unwrap();
        }
        let manager = m(env).clone();
        let waiter = tokio::spawn(async move {
            manager
                .acquire_lease(waiting(req("b", &["x"], MIN), 60_000))
                .await
        });
        for _ in 0..(i % 5) {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_micros(200 * (i % 3))).await;
        waiter.abort();
        let _ = waiter.await;
    }
    let manager = m(env).clone();
    eventually("every cancelled waiter is out of the queue", || {
        let manager = manager.clone();
        async move {
            manager
                .get_path_status("x")
                .await
                .unwrap()
                .waiters
                .is_empty()
        }
    })
    .await;
    // b holds x at most once (every grant after the first was an idempotent re-acquire).
    let holders = m(env).get_path_status("x").await.unwrap().holders;
    assert!(
        holders.len() <= 1 && holders.iter().all(|h| h.agent_id == "b"),
        "{holders:?}"
    );
    // Nothing is left in the queue for anyone else either.
    let pending = all_rows(env)
        .await
        .into_iter()
        .filter(|l| l.status == LeaseStatus::Pending)
        .count();
    assert_eq!(pending, 0);
}

async fn dead_waiters_entry_expires_by_itself(env: &TestEnv) {
    let held = m(env)
        .acquire_lease(req("a", &["x"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    // A waiter in another "process": its own runtime, shut down without any chance to clean up.
    let other = env.reopen();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let other_for_task = other.clone();
    runtime.spawn(async move {
        other_for_task
            .acquire_lease(waiting(req("dead", &["x"], MIN), 60_000))
            .await
    });
    waiters_queued(m(env), "x", 1).await;
    // Kill the waiter. A dead process runs nothing more, but a stopped runtime may still finish
    // an attempt it had in flight (a blocking task, or a write queued on its store's writer):
    // let those finish first, or one could run after the release below and take the lease.
    // (A flake seen on PostgreSQL under load: the dead waiter was granted "x".)
    tokio::task::spawn_blocking(move || runtime.shutdown_timeout(Duration::from_secs(10)))
        .await
        .unwrap();
    // Writes through one store are served in order: this one commits after any the waiter
    // had queued there. There is nothing to expire yet.
    assert_eq!(other.cleanup_expired_leases().await.unwrap(), 0);
    m(env).release_lease(release(&held)).await.unwrap();
    // The dead waiter still stands first in the queue until its entry lapses.
    assert_eq!(
        m(env)
            .acquire_lease(req("c", &["x"], MIN))
            .await
            .unwrap_err()
            .code(),
        "conflict"
    );
    env.clock.advance(Duration::from_millis(
        leasehold::rules::WAITER_LIVENESS_MS as u64,
    ));
    let got = m(env).acquire_lease(req("c", &["x"], MIN)).await.unwrap();
    assert_eq!(got.leases[0].agent_id, "c");
    assert_eq!(m(env).cleanup_expired_leases().await.unwrap(), 0);
    let entry = all_rows(env)
        .await
        .into_iter()
        .find(|l| l.agent_id == "dead")
        .unwrap();
    assert_eq!(entry.status, LeaseStatus::Failed);
}

async fn waiting_refused_when_blocking_disabled(env: &TestEnv) {
    m(env)
        .update_setting("blocking_mode_enabled", "false")
        .await
        .unwrap();
    m(env).acquire_lease(req("a", &["x"], MIN)).await.unwrap();
    let err = m(env)
        .acquire_lease(waiting(req("b", &["x"], MIN), 1_000))
        .await
        .unwrap_err();
    assert!(
        matches!(err, LeaseError::InvalidInput { ref why, .. } if why.contains("blocking_mode_enabled"))
    );
    assert_eq!(all_rows(env).await.len(), 1);
}

// 9. Several paths at once.

async fn multi_path_is_all_or_nothing(env: &TestEnv) {
    m(env).acquire_lease(req("a", &["b"], MIN)).await.unwrap();
    let err = m(env)
        .acquire_lease(req("z", &["a", "b", "c"], MIN))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "conflict");
    assert!(!m(env).is_file_locked("a").await.unwrap());
    assert!(!m(env).is_file_locked("c").await.unwrap());
    assert!(m(env).get_agent_leases("z").await.unwrap().is_empty());
    let got = m(env)
        .acquire_lease(req("z", &["a", "c"], MIN))
        .await
        .unwrap();
    let paths: Vec<_> = got.leases.iter().map(|l| l.file_path.as_str()).collect();
    assert_eq!(paths, ["a", "c"]);
}

// 10. Deadlock detection.

async fn deadlock_is_detected_naming_the_cycle(env: &TestEnv) {
    m(env).acquire_lease(req("a", &["x"], MIN)).await.unwrap();
    m(env).acquire_lease(req("b", &["y"], MIN)).await.unwrap();
    let manager = m(env).clone();
    let a_waits = tokio::spawn(async move {
        manager
            .acquire_lease(waiting(req("a", &["y"], MIN), 60_000))
            .await
    });
    waiters_queued(m(env), "y", 1).await;
    match m(env)
        .acquire_lease(waiting(req("b", &["x"], MIN), 60_000))
        .await
        .unwrap_err()
    {
        LeaseError::Deadlock { cycle } => {
            assert_eq!(cycle.len(), 2);
            assert_eq!(
                (
                    cycle[0].waiter.as_str(),
                    cycle[0].file_path.as_str(),
                    cycle[0].holder.as_str()
                ),
                ("b", "x", "a")
            );
            assert_eq!(
                (
                    cycle[1].waiter.as_str(),
                    cycle[1].file_path.as_str(),
                    cycle[1].holder.as_str()
                ),
                ("a", "y", "b")
            );
        }
        other => panic!("expected Deadlock, got {other}"),
    }
    assert!(history(env)
        .await
        .iter()
        .any(|e| e.event_type == EventType::Deadlock && e.agent_id == "b"));
    // The refused request did not queue; a still waits and gets y once b lets go.
    assert!(m(env)
        .get_path_status("x")
        .await
        .unwrap()
        .waiters
        .is_empty());
    m(env)
        .force_release_agent_leases("b", "deadlock resolved by test")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), a_waits)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.leases[0].file_path, "y");
}

// 11. Force-release.

async fn force_release_releases_all_of_an_agents_leases(env: &TestEnv) {
    m(env)
        .acquire_lease(req("dead", &["x", "y"], MIN))
        .await
        .unwrap();
    m(env)
        .acquire_lease(req("alive", &["z"], MIN))
        .await
        .unwrap();
    assert_eq!(
        m(env)
            .force_release_agent_leases("dead", "")
            .await
            .unwrap_err()
            .code(),
        "invalid_input"
    );
    assert_eq!(
        m(env)
            .force_release_agent_leases("dead", "process crashed")
            .await
            .unwrap(),
        2
    );
    assert!(m(env).get_agent_leases("dead").await.unwrap().is_empty());
    assert_eq!(m(env).get_agent_leases("alive").await.unwrap().len(), 1);
    let events: Vec<_> = history(env)
        .await
        .into_iter()
        .filter(|e| e.event_type == EventType::ForceReleased)
        .collect();
    assert_eq!(events.len(), 2);
    assert!(events
        .iter()
        .all(|e| e.reason.as_deref() == Some("process crashed")
            && e.status_after == LeaseStatus::Released));
    assert_eq!(
        m(env)
            .force_release_agent_leases("dead", "again")
            .await
            .unwrap(),
        0
    );
    m(env).acquire_lease(req("b", &["x"], MIN)).await.unwrap();
}

// 12. History.

async fn history_records_every_event_and_filters(env: &TestEnv) {
    let x = m(env)
        .acquire_lease(req("a", &["src/x.rs"], MIN))
        .await
        .unwrap()
        .leases
        .remove(0);
    m(env)
        .renew_lease(LeaseRenewalRequest {
            lease_id: x.id,
            agent_id: "a".into(),
            ttl_ms: None,
        })
        .await
        .unwrap();
    env.clock.advance(Duration::from_secs(10));
    m(env).release_lease(release(&x)).await.unwrap();
    m(env)
        .acquire_lease(req("b", &["docs/y.md"], 1_000))
        .await
        .unwrap();
    env.clock.advance(Duration::from_secs(10));
    m(env).cleanup_expired_leases().await.unwrap();

    let kinds: Vec<EventType> = history(env).await.iter().map(|e| e.event_type).collect();
    assert_eq!(
        kinds,
        [
            EventType::Acquired,
            EventType::Renewed,
            EventType::Released,
            EventType::Acquired,
            EventType::Expired
        ]
    );
    let all = history(env).await;
    assert!(all
        .windows(2)
        .all(|w| w[0].id < w[1].id && w[0].event_at <= w[1].event_at));
    assert_eq!(all[1].renewal_count, 1);
    assert_eq!(all[2].status_before, Some(LeaseStatus::Active));
    assert_eq!(all[2].status_after, LeaseStatus::Released);

    let by_path = m(env)
        .get_history(HistoryQuery {
            path: Some("src/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_path.len(), 3);
    let by_agent = m(env)
        .get_history(HistoryQuery {
            agent_id: Some("b".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_agent.len(), 2);
    let since = m(env)
        .get_history(HistoryQuery {
            since: Some(Timestamp(T0_MS + 10_000)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(since.len(), 3);
    let until = m(env)
        .get_history(HistoryQuery {
            until: Some(Timestamp(T0_MS + 10_000)),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(until.len(), 2);
    let newest = m(env)
        .get_history(HistoryQuery {
            limit: Some(1),
            newest_first: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(newest[0].event_type, EventType::Expired);
    let after = m(env)
        .get_history(HistoryQuery {
            after_id: Some(all[3].id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
}

async fn history_off_writes_nothing_and_old_history_is_purged(env: &TestEnv) {
    m(env).acquire_lease(req("a", &["old"], MIN)).await.unwrap();
    env.clock.advance(Duration::from_secs(31 * 24 * 3600));
    m(env)
        .update_setting("keep_history", "false")
        .await
        .unwrap();
    m(env)
        .acquire_lease(req("a", &["quiet"], MIN))
        .await
        .unwrap();
    assert_eq!(history(env).await.len(), 1);
    m(env).update_setting("keep_history", "true").await.unwrap();
    m(env).acquire_lease(req("a", &["new"], MIN)).await.unwrap();
    assert_eq!(
        m(env).purge_history().await.unwrap(),
        1,
        "only the event older than 30 days goes"
    );
    let left: Vec<String> = history(env)
        .await
        .into_iter()
        .map(|e| e.file_path)
        .collect();
    assert_eq!(left, ["new"]);
}

// 13. Background cleanup.

async fn background_cleanup_runs_on_interval_and_stops(env: &TestEnv) {
    m(env)
        .update_setting("cleanup_interval_seconds", "60")
        .await
        .unwrap();
    let short = m(env)
        .acquire_lease(req("a", &["x"], 1_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    let background = env.spawn_background();
    let mut rounds = background.rounds();
    let mut next = background.next_round();
    tokio::time::timeout(
        Duration::from_secs(5),
        next.wait_for(|n| *n == Some(T0_MS + 60_000)),
    )
    .await
    .unwrap()
    .unwrap();
    env.clock.advance(Duration::from_secs(60));
    tokio::time::timeout(Duration::from_secs(5), rounds.wait_for(|n| *n >= 1))
        .await
        .unwrap()
        .unwrap();
    assert!(history(env)
        .await
        .iter()
        .any(|e| e.event_type == EventType::Expired && e.lease_id == short.id));

    // With auto-expiry off, a round marks nothing.
    m(env)
        .update_setting("auto_expire_enabled", "false")
        .await
        .unwrap();
    let second = m(env)
        .acquire_lease(req("a", &["y"], 1_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    tokio::time::timeout(
        Duration::from_secs(5),
        next.wait_for(|n| *n == Some(T0_MS + 120_000)),
    )
    .await
    .unwrap()
    .unwrap();
    env.clock.advance(Duration::from_secs(60));
    tokio::time::timeout(Duration::from_secs(5), rounds.wait_for(|n| *n >= 2))
        .await
        .unwrap()
        .unwrap();
    assert!(!history(env)
        .await
        .iter()
        .any(|e| e.event_type == EventType::Expired && e.lease_id == second.id));
    tokio::time::timeout(Duration::from_secs(5), background.shutdown())
        .await
        .expect("shutdown is prompt");
}

// 14. Keep-alive guard.

async fn keep_alive_guard_renews_reports_loss_and_releases(env: &TestEnv) {
    let leases = m(env)
        .acquire_lease(req("a", &["x"], 9_000))
        .await
        .unwrap()
        .leases;
    let id = leases[0].id;
    let guard = LeaseGuard::new(m(env).clone(), Arc::new(env.clock.clone()), "a", leases);
    env.clock.advance(Duration::from_millis(3_000));
    let manager = m(env).clone();
    eventually("the guard renews at a third of the TTL", || {
        let manager = manager.clone();
        async move { manager.get_lease(id).await.unwrap().renewal_count == 1 }
    })
    .await;
    assert_eq!(
        m(env).get_lease(id).await.unwrap().expires_at,
        Timestamp(T0_MS + 3_000 + 9_000)
    );
    // The guard keeps it past its first TTL.
    env.clock.advance(Duration::from_millis(3_000));
    eventually("the guard renews again", || {
        let manager = manager.clone();
        async move { manager.get_lease(id).await.unwrap().renewal_count == 2 }
    })
    .await;
    env.clock.advance(Duration::from_millis(4_000));
    assert!(m(env).is_file_locked("x").await.unwrap());
    guard.release().await.unwrap();
    assert_eq!(
        m(env).get_lease(id).await.unwrap().status,
        LeaseStatus::Released
    );

    // Loss is reported at once when a renewal is refused.
    let leases = m(env)
        .acquire_lease(req("a", &["y"], 9_000))
        .await
        .unwrap()
        .leases;
    let guard = LeaseGuard::new(m(env).clone(), Arc::new(env.clock.clone()), "a", leases);
    m(env)
        .force_release_agent_leases("a", "test")
        .await
        .unwrap();
    env.clock.advance(Duration::from_millis(3_000));
    let lost = tokio::time::timeout(Duration::from_secs(5), guard.lost())
        .await
        .unwrap();
    assert_eq!(lost.code(), "lease_lost");

    // Dropping a guard releases its leases.
    let leases = m(env)
        .acquire_lease(req("a", &["z"], 9_000))
        .await
        .unwrap()
        .leases;
    drop(LeaseGuard::new(
        m(env).clone(),
        Arc::new(env.clock.clone()),
        "a",
        leases,
    ));
    let manager = m(env).clone();
    eventually("a dropped guard releases", || {
        let manager = manager.clone();
        async move { !manager.is_file_locked("z").await.unwrap() }
    })
    .await;
}

// Settings.

async fn settings_take_effect_on_next_operation(env: &TestEnv) {
    let settings = m(env).get_settings().await.unwrap();
    assert_eq!(settings, leasehold::Settings::default());
    m(env)
        .update_setting("default_ttl_seconds", "120")
        .await
        .unwrap();
    let request = LeaseAcquisitionRequest {
        ttl_ms: None,
        ..req("a", &["x"], 1)
    };
    let lease = m(env)
        .acquire_lease(request)
        .await
        .unwrap()
        .leases
        .remove(0);
    assert_eq!(lease.ttl_ms, 120_000);
    // Changed through another handle on the same data: seen without a restart.
    env.reopen()
        .update_setting("max_ttl_seconds", "200")
        .await
        .unwrap();
    assert_eq!(
        m(env)
            .acquire_lease(req("a", &["y"], 201_000))
            .await
            .unwrap_err()
            .code(),
        "invalid_input"
    );
    for (key, value) in [
        ("nope", "1"),
        ("keep_history", "maybe"),
        ("default_ttl_seconds", "0"),
        ("default_ttl_seconds", "300"),
        ("max_renewals", "-5"),
        ("acquisition_timeout_ms", "1e3"),
    ] {
        assert_eq!(
            m(env).update_setting(key, value).await.unwrap_err().code(),
            "invalid_input",
            "{key}={value}"
        );
    }
    let after = m(env).get_settings().await.unwrap();
    assert_eq!(after.default_ttl_seconds, 120);
    assert_eq!(after.max_ttl_seconds, 200);
    assert!(after.keep_history);
}

// Status and listing.

async fn status_queries_report_holders_and_waiters(env: &TestEnv) {
    let status = m(env).get_path_status("src/a.rs").await.unwrap();
    assert!(!status.locked && status.holders.is_empty() && status.waiters.is_empty());
    m(env)
        .acquire_lease(req("a", &["src/"], MIN))
        .await
        .unwrap();
    let status = m(env).get_path_status("src/a.rs").await.unwrap();
    assert!(status.locked);
    assert_eq!(status.holders[0].file_path, "src/");
    assert!(m(env).has_agent_lease("a", "src/a.rs").await.unwrap());
    assert!(!m(env).has_agent_lease("a", "lib/a.rs").await.unwrap());
    assert!(!m(env).has_agent_lease("b", "src/a.rs").await.unwrap());
    assert!(m(env).is_file_locked("src/").await.unwrap());
    assert!(!m(env).is_file_locked("srcx").await.unwrap());
    assert_eq!(
        m(env).get_lease(Uuid::new_v4()).await.unwrap_err().code(),
        "not_found"
    );
    assert_eq!(
        m(env).get_path_status("../x").await.unwrap_err().code(),
        "invalid_input"
    );
}

async fn listing_filters_by_agent_path_and_status(env: &TestEnv) {
    let a = m(env)
        .acquire_lease(req("a", &["x", "d/y"], MIN))
        .await
        .unwrap()
        .leases;
    m(env).acquire_lease(req("b", &["z"], MIN)).await.unwrap();
    m(env).release_lease(release(&a[0])).await.unwrap();
    assert_eq!(
        m(env)
            .get_all_leases(LeaseQuery::default())
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(all_rows(env).await.len(), 3);
    let mine = m(env).get_agent_leases("a").await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].file_path, "d/y");
    let under_d = m(env)
        .get_all_leases(LeaseQuery {
            path: Some("d/".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(under_d.len(), 1);
    let limited = m(env)
        .get_all_leases(LeaseQuery {
            include_inactive: true,
            limit: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    let json = serde_json::to_value(&mine[0]).unwrap();
    for key in [
        "id",
        "file_path",
        "agent_id",
        "mode",
        "status",
        "fencing_token",
        "created_at",
        "expires_at",
        "ttl_ms",
        "renewal_count",
        "max_renewals",
        "updated_at",
        "reason",
    ] {
        assert!(json.get(key).is_some(), "lease JSON lacks {key}");
    }
    assert_eq!(
        json["expires_at"],
        serde_json::json!(Timestamp(T0_MS + MIN as i64).to_rfc3339())
    );
}
