//! Many `leasehold` processes contending for a few paths at once, then a check of the history
//! that no two conflicting holds overlapped and that fencing tokens grew in grant order.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use leasehold::{EventType, HistoryEvent, Lease, LeaseMode, LeasePath, LeaseStatus};

use super::support::Workspace;

/// Concurrent worker processes (each runs its `leasehold` calls one after another).
const WORKERS: usize = 10;
/// Holds per worker.
const ROUNDS: usize = 8;
/// The contended keys: two files, a folder and a file inside it.
const PATHS: [&str; 4] = ["a.rs", "b.rs", "src/", "src/c.rs"];

/// What worker `worker` asks for in round `round`: paths and whether shared.
fn request(worker: usize, round: usize) -> (Vec<&'static str>, bool) {
    let first = PATHS[(worker + round) % PATHS.len()];
    let paths = if (worker + round).is_multiple_of(5) {
        // Some requests take two paths at once, all or none.
        vec![first, PATHS[(worker + round + 1) % PATHS.len()]]
    } else {
        vec![first]
    };
    (paths, worker % 4 == 1 && round.is_multiple_of(2))
}

/// One worker: even ones acquire then release through two calls, odd ones use `exec`.
fn worker(ws: &Workspace, worker: usize) -> usize {
    let agent = format!("w{worker}");
    let mut grants = 0;
    let mut last_token = 0;
    for round in 0..ROUNDS {
        let (paths, shared) = request(worker, round);
        let mut args = vec!["--json"];
        args.push(if worker.is_multiple_of(2) {
            "acquire"
        } else {
            "exec"
        });
        args.extend(["--wait", "15s", "--ttl", "30s"]);
        if shared {
            args.push("--shared");
        }
        args.extend(&paths);
        if worker.is_multiple_of(2) {
            let run = ws.run(&agent, &args);
            run.expect(0);
            let document = run.json();
            let leases = document["leases"].as_array().unwrap();
            assert_eq!(leases.len(), paths.len());
            for lease in leases {
                let token = lease["fencing_token"].as_u64().unwrap();
                assert!(
                    token > last_token,
                    "{agent}: token {token} after {last_token}"
                );
                last_token = token;
            }
            let ids: Vec<&str> = leases.iter().map(|l| l["id"].as_str().unwrap()).collect();
            let mut release = vec!["release"];
            release.extend(ids);
            ws.run(&agent, &release).expect(0);
        } else {
            args.extend(["--", "sleep", "0.02"]);
            ws.run(&agent, &args).expect(0);
        }
        grants += paths.len();
    }
    grants
}

#[test]
fn concurrent_processes_never_hold_conflicting_leases_at_once() {
    let ws = Workspace::new();
    ws.mkdir("src");
    // Create the database before the crowd arrives.
    ws.run("", &["config", "list"]).expect(0);
    let started = Instant::now();
    let grants: usize = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|n| {
                let ws = &ws;
                scope.spawn(move || worker(ws, n))
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );

    let events: Vec<HistoryEvent> =
        serde_json::from_value(ws.json("", &["history", "--limit", "100000"], 0)["events"].clone())
            .unwrap();
    let leases: Vec<Lease> =
        serde_json::from_value(ws.json("", &["list", "--all"], 0)["leases"].clone()).unwrap();
    assert!(ws.active_leases().is_empty(), "every lease was given back");

    // Replay the history in commit order (event ids): a grant must not meet a conflicting hold.
    let modes: HashMap<_, _> = leases.iter().map(|l| (l.id, l.mode)).collect();
    let mut holding: HashMap<uuid::Uuid, &HistoryEvent> = HashMap::new();
    let mut last_token = 0;
    let mut granted = 0;
    let mut granted_after_waiting = 0;
    for event in &events {
        assert_ne!(
            event.event_type,
            EventType::Expired,
            "no lease should outlive its 30 s TTL"
        );
        match event.event_type {
            EventType::Acquired if event.status_before != Some(LeaseStatus::Active) => {
                let token = event.fencing_token.expect("a grant has a token");
                assert!(
                    token > last_token,
                    "token {token} granted after {last_token}"
                );
                last_token = token;
                let path = LeasePath::from_stored(event.file_path.clone());
                let exclusive = modes[&event.lease_id] == LeaseMode::Exclusive;
                for held in holding.values() {
                    let overlaps = path.overlaps(&LeasePath::from_stored(held.file_path.clone()));
                    let conflicts = exclusive || modes[&held.lease_id] == LeaseMode::Exclusive;
                    assert!(
                        !(overlaps && conflicts && held.agent_id != event.agent_id),
                        "{} took {} while {} held {}",
                        event.agent_id,
                        event.file_path,
                        held.agent_id,
                        held.file_path
                    );
                }
                holding.insert(event.lease_id, event);
                granted += 1;
                if event.status_before == Some(LeaseStatus::Pending) {
                    granted_after_waiting += 1;
                }
            }
            EventType::Released | EventType::ForceReleased => {
                assert!(
                    holding.remove(&event.lease_id).is_some(),
                    "release of a lease not held"
                );
            }
            _ => {}
        }
    }
    assert!(holding.is_empty());
    assert_eq!(granted, grants);
    eprintln!("{granted} grants, {granted_after_waiting} after waiting in the queue");
    assert!(granted_after_waiting > 0, "the processes never contended");
    // The library's own auditor, over the same record, agrees.
    let violations = leasehold::audit::check(&leases, &events);
    assert!(violations.is_empty(), "{violations:?}");
}
