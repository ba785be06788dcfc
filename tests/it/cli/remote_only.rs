//! What only remote mode has: the token decides the agent, and a missing, bad or misdirected
//! token or server is refused clearly without changing anything.

use super::support::{Workspace, BIN};

/// Runs the binary against `server` with `token`, outside any workspace server.
fn run_against(
    ws: &Workspace,
    server: &str,
    token: Option<&str>,
    args: &[&str],
) -> std::process::Output {
    let mut command = std::process::Command::new(BIN);
    command
        .args(args)
        .current_dir(ws.root())
        .env_remove("LEASEHOLD_AGENT")
        .env_remove("LEASEHOLD_DB");
    command
        .env("LEASEHOLD_SERVER", server)
        .env_remove("LEASEHOLD_TOKEN");
    if let Some(token) = token {
        command.env("LEASEHOLD_TOKEN", token);
    }
    command.output().expect("run leasehold")
}

fn error_code(output: &std::process::Output) -> String {
    let document: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("one JSON document");
    document["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn the_token_decides_the_agent_when_none_is_given() {
    let ws = Workspace::new();
    // No LEASEHOLD_AGENT and no --agent: the harness uses the `observer` token, whose agent
    // then acts.
    let document = ws.json("", &["acquire", "a.rs"], 0);
    assert_eq!(document["leases"][0]["agent_id"], "observer");
}

#[test]
fn another_agents_token_cannot_release_your_lease() {
    let ws = Workspace::new();
    let alice = ws.run("alice", &["--json", "acquire", "a.rs"]);
    alice.expect(0);
    let lease_id = alice.json()["leases"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let bob_releases = ws.run("bob", &["--json", "release", &lease_id]);
    bob_releases.expect(5);
    assert_eq!(bob_releases.error_code(), "not_holder");
    assert_eq!(ws.active_leases().len(), 1, "nothing changed");
}

#[test]
fn a_missing_or_bad_token_or_server_is_refused_and_changes_nothing() {
    let ws = Workspace::new();
    let server = ws.server_url().expect("remote mode runs a server");

    let missing = run_against(&ws, &server, None, &["--json", "list"]);
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(error_code(&missing), "invalid_input");
    let words = run_against(&ws, &server, None, &["list"]);
    let stderr = String::from_utf8_lossy(&words.stderr);
    assert!(
        stderr.contains("--server needs a token") && stderr.contains("help: "),
        "{stderr}"
    );

    let bad = run_against(
        &ws,
        &server,
        Some("lh_not-a-real-token"),
        &["--json", "acquire", "a.rs"],
    );
    assert_eq!(
        bad.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&bad.stdout)
    );
    assert_eq!(error_code(&bad), "invalid_input");

    let nowhere = run_against(&ws, "http://127.0.0.1:1", Some("lh_x"), &["--json", "list"]);
    assert_eq!(
        nowhere.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&nowhere.stdout)
    );
    assert_eq!(error_code(&nowhere), "storage");

    let not_http = run_against(
        &ws,
        "https://127.0.0.1:1",
        Some("lh_x"),
        &["--json", "list"],
    );
    assert_eq!(not_http.status.code(), Some(2));
    assert!(ws.active_leases().is_empty(), "nothing changed");
}

#[test]
fn token_and_serve_commands_refuse_to_go_through_a_server() {
    let ws = Workspace::new();
    let server = ws.server_url().unwrap();
    for args in [
        &["--json", "token", "list"][..],
        &["--json", "serve", "--listen", "127.0.0.1:0"][..],
    ] {
        let output = run_against(&ws, &server, Some("lh_x"), args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert_eq!(error_code(&output), "invalid_input");
    }
}
