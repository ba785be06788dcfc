//! `leasehold exec`: leases held while a command runs, its exit code passed on, signals
//! forwarded, and a lost lease stopping the command.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::support::{finish, signal, wait_for_holder, wait_until, Workspace, BIN};

/// Waits until the command has created `name` at the root: it is running past that point.
fn wait_for_file(ws: &Workspace, name: &str) {
    let path = ws.root().join(name);
    wait_until(&format!("{name} exists"), Duration::from_secs(10), || {
        path.exists()
    });
}

#[test]
fn the_command_runs_holding_the_leases_and_they_are_released_after() {
    let ws = Workspace::new();
    ws.mkdir("src");
    // The command itself asks leasehold who holds the path, and shows what exec gave it.
    let script = format!(
        "{BIN} --json status a.rs; echo \"ids=$LEASEHOLD_LEASE_IDS tokens=$LEASEHOLD_FENCING_TOKENS agent=$LEASEHOLD_AGENT\""
    );
    let run = ws.run_in(
        "src",
        "alice",
        &[
            "exec", "a.rs", "b.rs", "--ttl", "30s", "--", "sh", "-c", &script,
        ],
    );
    run.expect(0);
    assert!(run.stderr.is_empty(), "{:?}", run.stderr);
    let mut lines = run.stdout.lines();
    let status: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(status["locked"], true);
    let holder = &status["holders"][0];
    assert_eq!(holder["agent_id"], "alice");
    assert_eq!(holder["ttl_ms"], 30_000);
    let env_line = lines.next().unwrap();
    let id = holder["id"].as_str().unwrap();
    assert!(env_line.starts_with(&format!("ids={id} ")), "{env_line:?}");
    assert!(
        env_line.contains(&format!("tokens={} ", holder["fencing_token"])),
        "{env_line:?}"
    );
    assert!(env_line.ends_with("agent=alice"), "{env_line:?}");
    assert_eq!(
        env_line
            .split(' ')
            .next()
            .unwrap()
            .split_whitespace()
            .count(),
        1
    );

    assert!(ws.active_leases().is_empty());
    let released = ws
        .history()
        .iter()
        .filter(|e| e["event_type"] == "released")
        .count();
    assert_eq!(released, 2);
}

#[test]
fn the_commands_exit_code_is_passed_on() {
    let ws = Workspace::new();
    ws.run("alice", &["exec", "a.rs", "--", "sh", "-c", "exit 7"])
        .expect(7);
    assert!(ws.active_leases().is_empty());
    ws.run("alice", &["exec", "a.rs", "--", "false"]).expect(1);
    // Killed by a signal: 128 + its number.
    ws.run(
        "alice",
        &["exec", "a.rs", "--", "sh", "-c", "kill -KILL $$"],
    )
    .expect(128 + 9);
    assert!(ws.active_leases().is_empty());
}

#[test]
fn a_held_path_is_refused_and_the_command_never_runs() {
    let ws = Workspace::new();
    ws.acquire("bob", &["a.rs"]);
    let marker = ws.root().join("ran");
    let script = format!("touch {}", marker.display());
    let run = ws.run("alice", &["exec", "a.rs", "--", "sh", "-c", &script]);
    run.expect(3);
    assert!(run.stderr.contains("bob"), "{:?}", run.stderr);
    let run = ws.run(
        "alice",
        &["--json", "exec", "a.rs", "--", "sh", "-c", &script],
    );
    run.expect(3);
    assert_eq!(run.error_code(), "conflict");
    assert!(!marker.exists());
    // A bad TTL or a missing command: usage errors.
    ws.run("alice", &["exec", "b.rs", "--ttl", "0s", "--", "true"])
        .expect(2);
    ws.run("alice", &["exec", "b.rs"]).expect(2);
    assert_eq!(ws.active_leases().len(), 1);
}

#[test]
fn exec_waits_for_the_path_when_asked() {
    let ws = Workspace::new();
    let held = ws.acquire("bob", &["a.rs"]).remove(0);
    let child = ws.spawn(
        "alice",
        &["exec", "a.rs", "--wait", "20s", "--", "echo", "ran"],
        &[],
    );
    super::support::wait_for_waiter(&ws, "a.rs");
    ws.run("bob", &["release", &held]).expect(0);
    let run = finish(child);
    run.expect(0);
    assert_eq!(run.stdout, "ran\n");
}

#[test]
fn a_missing_command_is_127_and_releases_the_leases() {
    let ws = Workspace::new();
    let run = ws.run("alice", &["exec", "a.rs", "--", "no-such-command-here"]);
    run.expect(127);
    assert!(
        run.stderr
            .starts_with("error: cannot run \"no-such-command-here\""),
        "{:?}",
        run.stderr
    );
    let run = ws.run(
        "alice",
        &["--json", "exec", "a.rs", "--", "no-such-command-here"],
    );
    run.expect(127);
    assert_eq!(run.error_code(), "command_failed");
    assert!(ws.active_leases().is_empty());
}

#[test]
fn sigterm_is_passed_to_the_command_and_the_leases_released() {
    let ws = Workspace::new();
    let script = "touch started; exec sleep 30";
    let child = ws.spawn("alice", &["exec", "a.rs", "--", "sh", "-c", script], &[]);
    wait_for_file(&ws, "started");
    let started = Instant::now();
    signal(&child, libc::SIGTERM);
    let run = finish(child);
    // sleep died of the SIGTERM it was passed.
    run.expect(128 + libc::SIGTERM);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(ws.active_leases().is_empty());
}

#[test]
fn sigint_is_passed_to_the_command_which_decides_the_exit_code() {
    let ws = Workspace::new();
    let script = "trap 'exit 42' INT; touch started; while :; do sleep 0.05; done";
    let child = ws.spawn("alice", &["exec", "a.rs", "--", "sh", "-c", script], &[]);
    wait_for_file(&ws, "started");
    signal(&child, libc::SIGINT);
    finish(child).expect(42);
    assert!(ws.active_leases().is_empty());
}

#[test]
fn a_lost_lease_stops_the_command_and_exits_5() {
    let ws = Workspace::new();
    // A short TTL so the keeper renews (and notices the loss) about every 670 ms.
    let child = ws.spawn(
        "alice",
        &["exec", "a.rs", "--ttl", "2s", "--", "sleep", "30"],
        &[("LEASEHOLD_KILL_GRACE", "200ms")],
    );
    wait_for_holder(&ws, "a.rs");
    let started = Instant::now();
    ws.run(
        "",
        &["force-release", "--agent", "alice", "--reason", "test"],
    )
    .expect(0);
    let run = finish(child);
    run.expect(5);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        run.stderr
            .starts_with("error: a lease was lost while the command ran"),
        "{:?}",
        run.stderr
    );
    assert!(run.stderr.contains("caused by: lease "), "{:?}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn a_command_that_ignores_sigterm_is_killed_after_the_grace_period() {
    let ws = Workspace::new();
    ws.mkdir("src");
    let child = ws.spawn(
        "alice",
        &[
            "--json",
            "exec",
            "src/",
            "b.rs",
            "--ttl",
            "2s",
            "--",
            "sh",
            "-c",
            "trap '' TERM; exec sleep 30",
        ],
        &[("LEASEHOLD_KILL_GRACE", "300ms")],
    );
    wait_for_holder(&ws, "b.rs");
    // Only one of the two leases is lost; the other is released when exec ends.
    let document = ws.json("", &["list", "--path", "src/"], 0);
    let id = document["leases"][0]["id"].as_str().unwrap().to_string();
    let other = ws.json("", &["list", "--path", "b.rs"], 0)["leases"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    ws.run("alice", &["release", &id]).expect(0);
    let started = Instant::now();
    let run = finish(child);
    run.expect(5);
    assert!(started.elapsed() < Duration::from_secs(10));
    // In JSON mode the report goes to stderr: stdout belongs to the command.
    assert!(run.stdout.is_empty());
    let report: Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(report["error"]["code"], "lease_lost");
    assert_eq!(report["error"]["command_exit"], 128 + libc::SIGKILL);
    let other_event = ws
        .history()
        .into_iter()
        .rfind(|e| e["lease_id"] == other.as_str())
        .unwrap();
    assert_eq!(other_event["event_type"], "released");
    assert!(ws.active_leases().is_empty());
}
