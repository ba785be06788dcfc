//! What only makes sense on a local database: which file is opened and where it is found, how an unreadable one is
//! reported, many processes creating one at once, and where the agent id comes from (in
//! remote mode the token decides the agent).

use super::support::Workspace;

#[test]
fn exit_1_for_an_internal_error() {
    let ws = Workspace::new();
    let bad = ws.root().join("not-a-db");
    std::fs::write(&bad, vec![b'x'; 4096]).unwrap();
    let run = ws.run("alice", &["--db", bad.to_str().unwrap(), "acquire", "a.rs"]);
    run.expect(1);
    assert!(
        run.stderr
            .starts_with("error: cannot open the lease database "),
        "{:?}",
        run.stderr
    );
    assert!(
        run.stderr.contains("\ncaused by: storage error: "),
        "{:?}",
        run.stderr
    );
    let run = ws.run("alice", &["--json", "--db", bad.to_str().unwrap(), "list"]);
    run.expect(1);
    assert_eq!(run.error_code(), "storage");
    assert_eq!(std::fs::read(&bad).unwrap(), vec![b'x'; 4096]);
}

#[test]
fn root_and_db_can_be_given_by_flag_or_environment() {
    let ws = Workspace::new();
    ws.mkdir("a/b");
    let db = ws.root().join("custom.db");
    let db_arg = db.to_str().unwrap();
    let root = ws.root().join("a");
    let root_arg = root.to_str().unwrap();
    let run = ws.run_in(
        "a/b",
        "alice",
        &[
            "--json", "--root", root_arg, "--db", db_arg, "acquire", "f.rs",
        ],
    );
    run.expect(0);
    assert_eq!(run.json()["leases"][0]["file_path"], "b/f.rs");
    assert!(db.exists());
    assert!(!ws.root().join(".leasehold").exists());

    let mut command = ws.command_in("a/b", "alice", &["--json", "list"]);
    command
        .env("LEASEHOLD_DB", db_arg)
        .env("LEASEHOLD_ROOT", root_arg);
    let output = command.output().unwrap();
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["leases"][0]["file_path"], "b/f.rs");

    let run = ws.run("alice", &["--json", "--root", "no-such-dir", "list"]);
    run.expect(2);
    assert_eq!(run.json()["error"]["what"], "root");
}

#[test]
fn the_agent_comes_from_either_flag_or_the_environment() {
    let ws = Workspace::new();
    let run = ws.run("", &["--agent", "alice", "--json", "acquire", "a.rs"]);
    run.expect(0);
    assert_eq!(run.json()["leases"][0]["agent_id"], "alice");
    // After the command's name, --agent overrides LEASEHOLD_AGENT.
    let run = ws.run("alice", &["--json", "acquire", "b.rs", "--agent", "bob"]);
    run.expect(0);
    assert_eq!(run.json()["leases"][0]["agent_id"], "bob");
    // Missing, or empty: a usage error with a hint, and nothing changes.
    let run = ws.run("", &["acquire", "c.rs"]);
    run.expect(2);
    assert!(
        run.stderr.starts_with("error: no agent id given"),
        "{:?}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("help: pass --agent ID or set LEASEHOLD_AGENT"),
        "{:?}",
        run.stderr
    );
    let mut command = ws.command_in("", "", &["--json", "acquire", "c.rs"]);
    command.env("LEASEHOLD_AGENT", "");
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(ws.active_leases().len(), 2);
}

/// How many processes race to create the database.
const WORKERS: usize = 10;

#[test]
fn many_processes_can_create_the_database_at_once() {
    let ws = Workspace::new();
    let children: Vec<_> = (0..WORKERS)
        .map(|n| {
            ws.spawn(
                &format!("w{n}"),
                &["--json", "acquire", &format!("f{n}.rs")],
                &[],
            )
        })
        .collect();
    for child in children {
        let run = super::support::finish(child);
        run.expect(0);
        assert_eq!(run.json()["leases"].as_array().unwrap().len(), 1);
    }
    assert_eq!(ws.active_leases().len(), WORKERS);
}

#[test]
fn the_root_is_the_nearest_folder_with_leasehold_or_git() {
    let ws = Workspace::new();
    ws.mkdir("sub/.leasehold");
    ws.mkdir("sub/inner");
    // From sub/inner the nearest marker is sub/.leasehold, so keys are relative to sub.
    let run = ws.run_in("sub/inner", "alice", &["--json", "acquire", "x.rs"]);
    run.expect(0);
    assert_eq!(run.json()["leases"][0]["file_path"], "inner/x.rs");
    assert!(ws.root().join("sub/.leasehold/leases.db").exists());
    // The top workspace has its own database, created on first use.
    assert!(!ws.root().join(".leasehold").exists());
    assert!(ws.active_leases().is_empty());
    assert!(ws.root().join(".leasehold/leases.db").exists());
}
