//! Many OS processes on one SQLite file (issue #2): exclusion and fencing must hold across
//! processes, as proven from the record by `leasehold::audit`.

use std::process::{Command, Stdio};
use std::sync::Arc;

use leasehold::{HistoryQuery, LeaseManager, LeaseQuery, SystemClock};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_processes_never_overlap_and_tokens_only_grow() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("leases.db");
    let children: Vec<_> = (0..8)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_leasehold-stress"))
                .args(["worker", "--db"])
                .arg(&db)
                .args([
                    "--agent",
                    &format!("agent-{i}"),
                    "--iterations",
                    "25",
                    "--seed",
                    &i.to_string(),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a stress worker")
        })
        .collect();
    let mut granted = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tally: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        granted += tally["granted"].as_u64().unwrap();
    }
    assert!(
        granted >= 40,
        "the workers got only {granted} grants: too little contention to prove anything"
    );

    let manager = leasehold::open_sqlite(&db, Arc::new(SystemClock)).unwrap();
    let leases = manager
        .get_all_leases(LeaseQuery {
            include_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let events = manager.get_history(HistoryQuery::default()).await.unwrap();
    let holds = leasehold::audit::holds(&leases, &events);
    assert_eq!(
        holds.len() as u64,
        granted,
        "every grant a worker saw is in the record"
    );
    let violations = leasehold::audit::check(&leases, &events);
    assert!(
        violations.is_empty(),
        "{}",
        serde_json::to_string_pretty(&violations).unwrap()
    );

    // The checker binary agrees.
    let check = Command::new(env!("CARGO_BIN_EXE_leasehold-stress"))
        .args(["check", "--db"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
}
