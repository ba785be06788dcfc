//! Every command's outcome, in words and in JSON.

use std::time::Duration;

use leasehold::Timestamp;
use serde_json::Value;

use super::support::{finish, wait_for_waiter, Workspace};

fn millis(value: &Value) -> i64 {
    Timestamp::parse_rfc3339(value.as_str().expect("a time"))
        .expect("RFC 3339")
        .0
}

#[test]
fn acquire_answers_each_lease_with_every_field() {
    let ws = Workspace::new();
    let document = ws.json(
        "alice",
        &[
            "acquire",
            "a.rs",
            "b.rs",
            "--ttl",
            "10m",
            "--max-renewals",
            "3",
            "--reason",
            "refactor",
        ],
        0,
    );
    let leases = document["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), 2);
    for (lease, path) in leases.iter().zip(["a.rs", "b.rs"]) {
        assert!(uuid::Uuid::parse_str(lease["id"].as_str().unwrap()).is_ok());
        assert_eq!(lease["file_path"], path);
        assert_eq!(lease["agent_id"], "alice");
        assert_eq!(lease["mode"], "exclusive");
        assert_eq!(lease["status"], "active");
        assert!(lease["fencing_token"].as_u64().unwrap() >= 1);
        assert_eq!(lease["ttl_ms"], 600_000);
        assert_eq!(
            millis(&lease["expires_at"]) - millis(&lease["created_at"]),
            600_000
        );
        assert_eq!(lease["renewal_count"], 0);
        assert_eq!(lease["max_renewals"], 3);
        assert_eq!(lease["reason"], "refactor");
    }
    assert!(leases[1]["fencing_token"].as_u64() > leases[0]["fencing_token"].as_u64());

    let run = ws.run("bob", &["acquire", "c.rs", "--shared", "--ttl", "1h30m"]);
    run.expect(0);
    let line = run.stdout.trim();
    assert_eq!(run.stdout.lines().count(), 1, "{:?}", run.stdout);
    let lease = &ws.json("", &["list", "--path", "c.rs"], 0)["leases"][0];
    for part in [
        "acquired",
        "c.rs",
        "shared",
        &format!("token {}", lease["fencing_token"]),
        &format!("until {}", lease["expires_at"].as_str().unwrap()),
        &format!("lease {}", lease["id"].as_str().unwrap()),
    ] {
        assert!(line.contains(part), "{part:?} missing from {line:?}");
    }
    assert_eq!(lease["ttl_ms"], 5_400_000);
}

#[test]
fn acquire_takes_all_paths_or_none() {
    let ws = Workspace::new();
    let held = ws.acquire("bob", &["b.rs"]);
    let run = ws.run("alice", &["acquire", "a.rs", "b.rs"]);
    run.expect(3);
    // The message names the holder, its lease id and when it expires.
    let expires = ws.status("b.rs")["holders"][0]["expires_at"]
        .as_str()
        .unwrap()
        .to_string();
    for part in ["error: ", "b.rs", "bob", &held[0], &expires] {
        assert!(
            run.stderr.contains(part),
            "{part:?} missing from {:?}",
            run.stderr
        );
    }
    assert!(run.stderr.contains("help: "), "{:?}", run.stderr);
    assert!(run.stdout.is_empty());
    assert_eq!(ws.status("a.rs")["locked"], false);

    let document = ws.json("alice", &["acquire", "a.rs", "b.rs"], 3);
    assert_eq!(document["error"]["code"], "conflict");
    assert_eq!(document["error"]["holders"][0]["agent_id"], "bob");
    assert_eq!(
        document["error"]["holders"][0]["lease_id"],
        held[0].as_str()
    );
    assert_eq!(ws.active_leases().len(), 1);
}

#[test]
fn shared_leases_coexist_and_exclude_exclusive_ones() {
    let ws = Workspace::new();
    ws.acquire("alice", &["doc.md", "--shared"]);
    ws.acquire("bob", &["doc.md", "--shared"]);
    assert_eq!(ws.status("doc.md")["holders"].as_array().unwrap().len(), 2);
    let document = ws.json("carol", &["acquire", "doc.md"], 3);
    assert_eq!(document["error"]["holders"].as_array().unwrap().len(), 2);
}

#[test]
fn a_waiter_gets_the_path_when_the_holder_releases() {
    let ws = Workspace::new();
    let held = ws.acquire("alice", &["a.rs"]);
    let waiter = ws.spawn("bob", &["--json", "acquire", "a.rs", "--wait", "20s"], &[]);
    wait_for_waiter(&ws, "a.rs");
    let status = ws.status("a.rs");
    assert_eq!(status["waiters"][0]["agent_id"], "bob");
    assert_eq!(status["waiters"][0]["status"], "pending");
    let human = ws.run("", &["status", "a.rs"]);
    assert!(
        human.stdout.starts_with("a.rs: held\n"),
        "{:?}",
        human.stdout
    );
    assert!(human.stdout.contains("waiter 1  bob"), "{:?}", human.stdout);

    ws.run("alice", &["release", &held[0]]).expect(0);
    let run = finish(waiter);
    run.expect(0);
    let document = run.json();
    assert_eq!(document["leases"][0]["agent_id"], "bob");
    assert!(document["waited_ms"].as_u64().unwrap() > 0);
    assert_eq!(ws.status("a.rs")["holders"][0]["agent_id"], "bob");
}

#[test]
fn wait_without_a_value_waits_acquisition_timeout_ms() {
    let ws = Workspace::new();
    ws.acquire("alice", &["a.rs"]);
    ws.run("", &["config", "set", "acquisition_timeout_ms", "300"])
        .expect(0);
    let started = std::time::Instant::now();
    let document = ws.json("bob", &["acquire", "a.rs", "--wait"], 4);
    assert_eq!(document["error"]["code"], "wait_timeout");
    let waited_ms = document["error"]["waited_ms"].as_u64().unwrap();
    assert!((300..5_000).contains(&waited_ms), "waited {waited_ms} ms");
    assert!(started.elapsed() < Duration::from_secs(10));
    // A word after a bare --wait that is not a duration is a path.
    let document = ws.json("bob", &["acquire", "--wait", "b.rs"], 0);
    assert_eq!(document["leases"][0]["file_path"], "b.rs");
}

#[test]
fn a_timed_out_wait_leaves_the_queue() {
    let ws = Workspace::new();
    ws.acquire("alice", &["a.rs"]);
    let run = ws.run("bob", &["acquire", "a.rs", "--wait", "200ms"]);
    run.expect(4);
    assert!(
        run.stderr.starts_with("error: gave up after waiting"),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.contains("alice"));
    assert_eq!(ws.status("a.rs")["waiters"], Value::Array(vec![]));
}

#[test]
fn renew_extends_your_lease_and_refuses_everything_else() {
    let ws = Workspace::new();
    let id = ws.acquire("alice", &["a.rs", "--ttl", "1m"]).remove(0);
    let before = millis(&ws.active_leases()[0]["expires_at"]);
    let document = ws.json("alice", &["renew", &id, "--ttl", "20m"], 0);
    let lease = &document["lease"];
    assert_eq!(lease["id"], id.as_str());
    assert_eq!(lease["renewal_count"], 1);
    assert_eq!(lease["ttl_ms"], 1_200_000);
    assert!(millis(&lease["expires_at"]) > before + 1_000_000);

    let run = ws.run("alice", &["renew", &id]);
    run.expect(0);
    assert!(
        run.stdout.starts_with("renewed a.rs until "),
        "{:?}",
        run.stdout
    );
    assert!(run.stdout.contains("(renewal 2)"), "{:?}", run.stdout);

    // Another agent's lease.
    let document = ws.json("bob", &["renew", &id], 5);
    assert_eq!(document["error"]["code"], "not_holder");
    assert_eq!(document["error"]["holder"], "alice");
    // No such lease; not a lease id at all.
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_eq!(
        ws.json("alice", &["renew", &unknown], 5)["error"]["code"],
        "not_found"
    );
    assert_eq!(
        ws.json("alice", &["renew", "nope"], 2)["error"]["code"],
        "invalid_input"
    );
    // A zero TTL changes nothing.
    let expires = ws.active_leases()[0]["expires_at"].clone();
    ws.json("alice", &["renew", &id, "--ttl", "0s"], 2);
    assert_eq!(ws.active_leases()[0]["expires_at"], expires);
    assert_eq!(ws.active_leases()[0]["renewal_count"], 2);
    // A released lease is lost.
    ws.run("alice", &["release", &id]).expect(0);
    let document = ws.json("alice", &["renew", &id], 5);
    assert_eq!(document["error"]["code"], "lease_lost");
    assert_eq!(document["error"]["status"], "released");
}

#[test]
fn renew_beyond_max_renewals_is_refused() {
    let ws = Workspace::new();
    let id = ws
        .acquire("alice", &["a.rs", "--max-renewals", "1"])
        .remove(0);
    ws.json("alice", &["renew", &id], 0);
    let document = ws.json("alice", &["renew", &id], 5);
    assert_eq!(document["error"]["code"], "renewal_limit");
    assert_eq!(document["error"]["max_renewals"], 1);
}

#[test]
fn an_expired_lease_is_lost_and_cleanup_marks_it() {
    let ws = Workspace::new();
    assert_eq!(
        ws.json("", &["cleanup"], 0),
        serde_json::json!({ "expired": 0 })
    );
    // A 1 ms lease has expired by the time the next process starts: no sleeping needed.
    let id = ws.acquire("alice", &["a.rs", "--ttl", "1ms"]).remove(0);
    assert!(ws.active_leases().is_empty());
    let document = ws.json("alice", &["renew", &id], 5);
    assert_eq!(document["error"]["code"], "lease_lost");
    assert_eq!(document["error"]["status"], "expired");
    assert_eq!(
        ws.json("", &["cleanup"], 0),
        serde_json::json!({ "expired": 1 })
    );
    let run = ws.run("", &["cleanup"]);
    run.expect(0);
    assert_eq!(run.stdout, "marked 0 expired leases\n");
    let all = ws.json("", &["list", "--all"], 0);
    assert_eq!(all["leases"][0]["status"], "expired");
    let events: Vec<Value> = ws.history();
    assert_eq!(events.last().unwrap()["event_type"], "expired");
}

#[test]
fn release_by_id_checks_every_lease_before_releasing_any() {
    let ws = Workspace::new();
    let mine = ws.acquire("alice", &["a.rs", "b.rs"]);
    let theirs = ws.acquire("bob", &["c.rs"]).remove(0);
    // One of the ids is not alice's: nothing is released.
    let document = ws.json("alice", &["release", &mine[0], &theirs], 5);
    assert_eq!(document["error"]["code"], "not_holder");
    assert_eq!(ws.active_leases().len(), 3);

    let document = ws.json("alice", &["release", &mine[0], &mine[1]], 0);
    let released = document["leases"].as_array().unwrap();
    assert_eq!(released.len(), 2);
    assert!(released.iter().all(|l| l["status"] == "released"));
    assert_eq!(released[0]["id"], mine[0].as_str());
    assert_eq!(ws.active_leases().len(), 1);
    // Released twice: lost.
    assert_eq!(
        ws.json("alice", &["release", &mine[0]], 5)["error"]["code"],
        "lease_lost"
    );
    let run = ws.run("bob", &["release", &theirs]);
    run.expect(0);
    assert_eq!(run.stdout, format!("released  c.rs  lease {theirs}\n"));
}

#[test]
fn release_by_path_releases_your_own_leases_on_those_keys() {
    let ws = Workspace::new();
    ws.mkdir("src");
    ws.acquire("alice", &["src/a.rs", "src/b.rs", "notes/"]);
    ws.acquire("bob", &["other.rs"]);
    // bob holds nothing on src/a.rs: refused, nothing released.
    let document = ws.json("bob", &["release", "--path", "src/a.rs", "other.rs"], 5);
    assert_eq!(document["error"]["code"], "not_found");
    assert_eq!(document["error"]["path"], "src/a.rs");
    assert_eq!(ws.active_leases().len(), 4);

    let run = ws.run_in(
        "src",
        "alice",
        &["--json", "release", "--path", "a.rs", "../notes/"],
    );
    run.expect(0);
    let document = run.json();
    let paths: Vec<&str> = document["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["file_path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["src/a.rs", "notes/"]);
    let left: Vec<String> = ws
        .active_leases()
        .iter()
        .map(|l| l["file_path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, ["src/b.rs", "other.rs"]);
    // Neither ids nor --path: a usage error.
    ws.run("alice", &["release"]).expect(2);
}

#[test]
fn list_shows_active_leases_filtered_by_agent_and_path() {
    let ws = Workspace::new();
    assert_eq!(ws.run("", &["list"]).stdout, "no active leases\n");
    ws.acquire("alice", &["src/a.rs", "docs/"]);
    let released = ws.acquire("bob", &["src/b.rs"]).remove(0);
    ws.run("bob", &["release", &released]).expect(0);

    let everyone = ws.json("", &["list"], 0)["leases"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(everyone, 2);
    let bobs = ws.json("", &["list", "--agent", "bob"], 0);
    assert_eq!(bobs["leases"], Value::Array(vec![]));
    let alices = ws.json(
        "",
        &["list", "--agent", "alice", "--path", "docs/readme.md"],
        0,
    );
    assert_eq!(alices["leases"][0]["file_path"], "docs/");
    let all = ws.json("", &["list", "--all"], 0);
    let statuses: Vec<&str> = all["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["active", "active", "released"]);

    let table = ws.run("", &["list"]).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["PATH", "MODE", "HOLDER", "TOKEN", "LEFT", "ID"]);
    assert!(lines[1].starts_with("src/a.rs "), "{table:?}");
    assert!(lines[1].contains(" alice "), "{table:?}");
    assert!(
        lines[1].contains("59m") || lines[1].contains("1h00m"),
        "time left in {table:?}"
    );
    let all_table = ws.run("", &["list", "--all"]).stdout;
    assert!(all_table.lines().next().unwrap().contains("STATUS"));
    assert!(all_table.contains(" released "), "{all_table:?}");
}

#[test]
fn status_tells_free_from_held() {
    let ws = Workspace::new();
    assert_eq!(
        ws.status("a.rs"),
        serde_json::json!({ "path": "a.rs", "locked": false, "holders": [], "waiters": [] })
    );
    assert_eq!(ws.run("", &["status", "a.rs"]).stdout, "a.rs: free\n");
    let id = ws.acquire("alice", &["src/"]).remove(0);
    let status = ws.status("src/a.rs");
    assert_eq!(status["path"], "src/a.rs");
    assert_eq!(status["locked"], true);
    assert_eq!(status["holders"][0]["id"], id.as_str());
    assert_eq!(status["holders"][0]["file_path"], "src/");
    let human = ws.run("", &["status", "src/a.rs"]).stdout;
    assert!(
        human.starts_with("src/a.rs: held\n  holder  alice  src/  exclusive  token 1  until "),
        "{human:?}"
    );
    assert!(human.contains(&format!("lease {id}")));
}

#[test]
fn history_lists_events_with_filters() {
    let ws = Workspace::new();
    let a = ws
        .acquire("alice", &["a.rs", "--reason", "first"])
        .remove(0);
    ws.acquire("bob", &["b.rs"]);
    ws.run("alice", &["release", &a]).expect(0);

    let events = ws.history();
    let kinds: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                e["agent_id"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("acquired", "alice"),
            ("acquired", "bob"),
            ("released", "alice")
        ]
    );
    for key in [
        "id",
        "lease_id",
        "agent_id",
        "file_path",
        "event_type",
        "status_before",
        "status_after",
        "renewal_count",
        "fencing_token",
        "event_at",
        "reason",
    ] {
        assert!(
            events[0].get(key).is_some(),
            "{key} missing from {}",
            events[0]
        );
    }
    assert_eq!(events[0]["reason"], "first");
    assert_eq!(events[0]["lease_id"], a.as_str());

    let by_agent = ws.json("", &["history", "--agent", "bob"], 0);
    assert_eq!(by_agent["events"].as_array().unwrap().len(), 1);
    let by_path = ws.json("", &["history", "--path", "a.rs"], 0);
    assert_eq!(by_path["events"].as_array().unwrap().len(), 2);
    // --limit keeps the most recent, oldest first.
    let last = ws.json("", &["history", "--limit", "2"], 0);
    let ids: Vec<i64> = last["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            events[1]["id"].as_i64().unwrap(),
            events[2]["id"].as_i64().unwrap()
        ]
    );
    // --since: a duration ago, or an RFC 3339 time.
    assert_eq!(
        ws.json("", &["history", "--since", "1h"], 0)["events"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let future = ws.json("", &["history", "--since", "2999-01-01T00:00:00Z"], 0);
    assert_eq!(future["events"], Value::Array(vec![]));
    ws.json("", &["history", "--since", "yesterday-ish"], 2);
    ws.json("", &["history", "--limit", "0"], 2);

    let table = ws.run("", &["history"]).stdout;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["TIME", "EVENT", "PATH", "AGENT", "TOKEN", "LEASE", "REASON"]
    );
    assert_eq!(table.lines().count(), 4);
}

#[test]
fn force_release_frees_every_lease_of_an_agent() {
    let ws = Workspace::new();
    ws.acquire("alice", &["a.rs", "b.rs"]);
    ws.acquire("bob", &["c.rs"]);
    // The reason is required.
    ws.run("", &["force-release", "--agent", "alice"]).expect(2);
    assert_eq!(ws.active_leases().len(), 3);
    let document = ws.json(
        "",
        &["force-release", "--agent", "alice", "--reason", "crashed"],
        0,
    );
    assert_eq!(document, serde_json::json!({ "released": 2 }));
    assert_eq!(ws.active_leases().len(), 1);
    let events = ws.json("", &["history", "--agent", "alice"], 0);
    let last = events["events"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event_type"], "force_released");
    assert_eq!(last["reason"], "crashed");
    let run = ws.run("", &["force-release", "--agent", "bob", "--reason", "done"]);
    run.expect(0);
    assert_eq!(run.stdout, "released 1 lease of bob\n");
}

#[test]
fn config_lists_gets_and_sets_settings() {
    let ws = Workspace::new();
    let settings = ws.json("", &["config", "list"], 0)["settings"].clone();
    assert_eq!(settings["default_ttl_seconds"], 3600);
    assert_eq!(settings["acquisition_timeout_ms"], 30_000);
    assert_eq!(settings["keep_history"], true);
    assert_eq!(
        settings.as_object().unwrap().len(),
        leasehold::SETTINGS.len()
    );
    assert_eq!(
        ws.run("", &["config", "get", "default_ttl_seconds"]).stdout,
        "3600\n"
    );

    let document = ws.json("", &["config", "set", "default_ttl_seconds", "120"], 0);
    assert_eq!(
        document,
        serde_json::json!({ "key": "default_ttl_seconds", "value": 120 })
    );
    assert_eq!(
        ws.json("", &["config", "get", "default_ttl_seconds"], 0)["value"],
        120
    );
    assert_eq!(
        ws.run("", &["config", "set", "max_renewals", "-1"]).stdout,
        "max_renewals = -1\n"
    );
    // The new default applies to the next lease.
    let lease = ws.json("alice", &["acquire", "a.rs"], 0);
    assert_eq!(lease["leases"][0]["ttl_ms"], 120_000);

    // Bad values and unknown keys change nothing.
    assert_eq!(
        ws.json("", &["config", "set", "default_ttl_seconds", "0"], 2)["error"]["code"],
        "invalid_input"
    );
    assert_eq!(
        ws.json("", &["config", "set", "keep_history", "maybe"], 2)["error"]["what"],
        "keep_history"
    );
    assert_eq!(
        ws.json("", &["config", "get", "nope"], 2)["error"]["code"],
        "invalid_input"
    );
    ws.json("", &["config", "set", "nope", "1"], 2);
    assert_eq!(
        ws.json("", &["config", "list"], 0)["settings"]["default_ttl_seconds"],
        120
    );
    let table = ws.run("", &["config", "list"]).stdout;
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("default_ttl_seconds") && l.contains(" 120 ")),
        "{table}"
    );
}

#[test]
fn a_signal_abandons_a_wait_and_leaves_the_queue() {
    let ws = Workspace::new();
    ws.acquire("alice", &["a.rs"]);
    let waiter = ws.spawn("bob", &["acquire", "a.rs", "--wait", "30s"], &[]);
    wait_for_waiter(&ws, "a.rs");
    super::support::signal(&waiter, libc::SIGINT);
    let run = finish(waiter);
    run.expect(130);
    assert!(run.stderr.contains("interrupted"), "{:?}", run.stderr);
    assert_eq!(ws.status("a.rs")["waiters"], Value::Array(vec![]));
}
