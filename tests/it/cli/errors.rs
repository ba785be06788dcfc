//! Exit codes, error shapes, usage errors and the edges of output.

use std::io::Read;
use std::process::Stdio;

use serde_json::Value;

use super::support::{finish, wait_for_waiter, Workspace, BIN};

#[test]
fn help_documents_the_exit_codes_and_version_works() {
    let output = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    for line in [
        "Exit codes:",
        "0  success",
        "1  internal error",
        "2  invalid input or usage",
        "3  held by another agent",
        "4  wait timed out",
        "5  lease not found, not yours, expired",
        "6  deadlock detected",
    ] {
        assert!(help.contains(line), "{line:?} missing from --help");
    }
    let output = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("leasehold "));
}

#[test]
fn exit_2_for_bad_usage_in_words_and_in_json() {
    let ws = Workspace::new();
    let run = ws.run("alice", &["acquire", "--bogus"]);
    run.expect(2);
    assert!(
        run.stderr
            .starts_with("error: unexpected argument '--bogus'"),
        "{:?}",
        run.stderr
    );
    assert!(run.stdout.is_empty());
    let run = ws.run("alice", &["--json", "acquire", "--bogus"]);
    run.expect(2);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "invalid_input");
    assert_eq!(error["what"], "arguments");
    assert!(error["message"].as_str().unwrap().contains("--bogus"));
    ws.json("alice", &["frobnicate"], 2);
    ws.json("alice", &["acquire"], 2);
    ws.json("alice", &["renew"], 2);
    // A subcommand is required; the bare command shows usage.
    ws.run("alice", &[]).expect(2);
    assert!(ws.active_leases().is_empty());
}

#[test]
fn exit_2_for_a_bad_ttl_and_nothing_changes() {
    let ws = Workspace::new();
    for ttl in [
        "0s",
        "1ns",
        "--ttl=-5s",
        "30",
        "soon",
        "400d",
        "99999999999999999999s",
        "",
    ] {
        let args: Vec<&str> = match ttl.strip_prefix("--ttl=") {
            Some(_) => vec!["acquire", "a.rs", ttl],
            None => vec!["acquire", "a.rs", "--ttl", ttl],
        };
        let run = ws.run("alice", &args);
        run.expect(2);
        assert!(
            run.stderr.starts_with("error: invalid ttl"),
            "{ttl:?}: {:?}",
            run.stderr
        );
        let mut json_args = vec!["--json"];
        json_args.extend(&args);
        let run = ws.run("alice", &json_args);
        run.expect(2);
        assert_eq!(run.error_code(), "invalid_input", "{ttl:?}");
    }
    // Zero or malformed waits are refused too (zero waits are allowed: they do not wait).
    ws.json("alice", &["acquire", "a.rs", "--wait", "5x"], 2);
    assert!(ws.active_leases().is_empty());
    assert!(ws.history().is_empty());
}

#[test]
fn exit_3_4_5_in_json_name_the_error() {
    let ws = Workspace::new();
    let id = ws.acquire("alice", &["a.rs"]).remove(0);
    assert_eq!(
        ws.json("bob", &["acquire", "a.rs"], 3)["error"]["code"],
        "conflict"
    );
    assert_eq!(
        ws.json("bob", &["acquire", "a.rs", "--wait", "50ms"], 4)["error"]["code"],
        "wait_timeout"
    );
    assert_eq!(
        ws.json("bob", &["release", &id], 5)["error"]["code"],
        "not_holder"
    );
    let run = ws.run("bob", &["release", &id]);
    run.expect(5);
    assert!(
        run.stderr
            .contains(&format!("lease {id} is held by alice, not by bob")),
        "{:?}",
        run.stderr
    );
}

#[test]
fn exit_6_for_a_deadlock() {
    let ws = Workspace::new();
    ws.acquire("alice", &["x.rs"]);
    ws.acquire("bob", &["y.rs"]);
    let alice_waits = ws.spawn(
        "alice",
        &["--json", "acquire", "y.rs", "--wait", "20s"],
        &[],
    );
    wait_for_waiter(&ws, "y.rs");
    let document = ws.json("bob", &["acquire", "x.rs", "--wait", "20s"], 6);
    assert_eq!(document["error"]["code"], "deadlock");
    let cycle = document["error"]["cycle"].as_array().unwrap();
    assert_eq!(cycle[0]["waiter"], "bob");
    assert_eq!(cycle[0]["holder"], "alice");
    let run = ws.run("bob", &["acquire", "x.rs", "--wait", "20s"]);
    run.expect(6);
    assert!(
        run.stderr.starts_with("error: deadlock: "),
        "{:?}",
        run.stderr
    );
    // bob gives up y.rs, so alice's wait ends with the lease.
    ws.run("bob", &["release", "--path", "y.rs"]).expect(0);
    let run = finish(alice_waits);
    run.expect(0);
    assert_eq!(run.json()["leases"][0]["file_path"], "y.rs");
}

#[test]
fn json_mode_writes_exactly_one_document_and_nothing_on_stderr() {
    let ws = Workspace::new();
    for (args, code) in [
        (vec!["--json", "acquire", "a.rs"], 0),
        (vec!["--json", "acquire", "a.rs", "--agent", "bob"], 3),
        (vec!["--json", "status", "a.rs"], 0),
        (vec!["list", "--json"], 0),
        (vec!["--json", "renew", "x"], 2),
    ] {
        let run = ws.run("alice", &args);
        run.expect(code);
        let document: Value = run.json();
        assert!(document.is_object());
        assert!(run.stderr.is_empty(), "{args:?}: {:?}", run.stderr);
    }
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let ws = Workspace::new();
    ws.acquire("alice", &["a.rs", "b.rs", "c.rs"]);
    for args in [&["list"][..], &["--json", "history"], &["acquire", "d.rs"]] {
        let mut child = ws
            .command_in("", "alice", args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the reading end before the command writes anything.
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr:?}");
        assert!(stderr.is_empty(), "{args:?}: {stderr:?}");
    }
    // The acquisition happened even though nobody read the answer.
    assert_eq!(ws.status("d.rs")["locked"], true);
}
