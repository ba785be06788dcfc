//! `leasehold mcp` driven as a real MCP client drives it (issue 8): the official Rust SDK's
//! client spawns the binary and talks to it over stdio, lists the tools and calls each one,
//! including conflicts, a wait that ends when the holder releases, retried acquisitions and bad
//! input. Other agents act through the CLI on the same workspace.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// Every variable the CLI reads, removed so the caller's environment cannot leak in.
const CLI_VARS: &[&str] = &[
    "LEASEHOLD_ROOT",
    "LEASEHOLD_DB",
    "LEASEHOLD_AGENT",
    "LEASEHOLD_SERVER",
    "LEASEHOLD_TOKEN",
    "LEASEHOLD_LOG",
    "LEASEHOLD_GUARD",
];

type Client = RunningService<RoleClient, ()>;

/// A temporary workspace (a folder with `.git/`).
struct Workspace {
    root: PathBuf,
    _dir: TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        std::fs::create_dir_all(root.join(".git")).expect(".git");
        std::fs::create_dir_all(root.join("docs")).expect("docs/");
        Workspace { root, _dir: dir }
    }

    /// The CLI, run at the root as `agent`; returns its exit code and JSON answer.
    fn cli(&self, agent: &str, args: &[&str]) -> (i32, Value) {
        cli(&self.root, agent, args)
    }

    /// `leasehold mcp` as `agent`, started in `docs/` (paths must still be root-relative),
    /// with an MCP client connected to it.
    async fn mcp(&self, agent: &str) -> Client {
        self.mcp_with(&["mcp", "--agent", agent]).await
    }

    async fn mcp_with(&self, args: &[&str]) -> Client {
        let mut command = tokio::process::Command::new(BIN);
        command.args(args).current_dir(self.root.join("docs"));
        for var in CLI_VARS {
            command.env_remove(var);
        }
        command.env("LEASEHOLD_ROOT", &self.root);
        let transport = TokioChildProcess::new(command).expect("spawn leasehold mcp");
        ().serve(transport).await.expect("MCP initialize")
    }
}

/// The CLI, run in `root` as `agent`; returns its exit code and JSON answer.
fn cli(root: &Path, agent: &str, args: &[&str]) -> (i32, Value) {
    let mut command = Command::new(BIN);
    command.arg("--json").args(args).current_dir(root);
    for var in CLI_VARS {
        command.env_remove(var);
    }
    command.env("LEASEHOLD_AGENT", agent);
    let output = command.output().expect("run leasehold");
    let document = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (output.status.code().unwrap_or(-1), document)
}

/// What one tool call answered.
struct Called {
    is_error: bool,
    json: Value,
    summary: String,
}

impl Called {
    /// The error code of a refusal (empty for a success).
    fn code(&self) -> &str {
        self.json["error"]["code"].as_str().unwrap_or_default()
    }

    #[track_caller]
    fn ok(self) -> Value {
        assert!(!self.is_error, "expected success: {}", self.json);
        self.json
    }

    #[track_caller]
    fn refused(self, code: &str) -> Value {
        assert!(self.is_error, "expected an error: {}", self.json);
        assert_eq!(self.code(), code, "error code: {}", self.json);
        self.json
    }
}

async fn call(client: &Client, tool: &str, arguments: Value) -> Called {
    let arguments = arguments.as_object().cloned().expect("arguments object");
    let result: CallToolResult = client
        .call_tool(CallToolRequestParams::new(tool.to_string()).with_arguments(arguments))
        .await
        .unwrap_or_else(|e| panic!("{tool} failed at the protocol level: {e}"));
    let summary = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default();
    let json = result
        .structured_content
        .clone()
        .expect("structured content");
    // The same JSON comes as text for clients that ignore structured content.
    let text = result
        .content
        .get(1)
        .and_then(|c| c.as_text())
        .expect("JSON text");
    assert_eq!(serde_json::from_str::<Value>(&text.text).unwrap(), json);
    assert!(
        json["next"].as_str().is_some_and(|n| !n.is_empty()),
        "{json}"
    );
    Called {
        is_error: result.is_error == Some(true),
        json,
        summary,
    }
}

fn lease_id(answer: &Value, index: usize) -> String {
    answer["leases"][index]["id"]
        .as_str()
        .expect("lease id")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_the_six_tools_with_descriptions_and_input_schemas() {
    let ws = Workspace::new();
    let client = ws.mcp("agent-a").await;
    let info = client.peer_info().expect("server info");
    assert_eq!(
        info.server_info.as_ref().expect("server info").name,
        "leasehold"
    );
    assert!(info.instructions.as_deref().unwrap().contains("agent-a"));
    let tools = client.list_all_tools().await.expect("tools/list");
    let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    names.sort();
    let mut expected = leasehold::mcp::TOOL_NAMES.to_vec();
    expected.sort();
    assert_eq!(names, expected);
    for tool in &tools {
        assert!(
            tool.description.as_deref().is_some_and(|d| d.len() > 40),
            "{} needs a real description",
            tool.name
        );
        assert_eq!(
            tool.input_schema.get("type"),
            Some(&json!("object")),
            "{}",
            tool.name
        );
        assert!(
            tool.input_schema.contains_key("properties"),
            "{}",
            tool.name
        );
    }
    let acquire = tools.iter().find(|t| t.name == "acquire_leases").unwrap();
    let properties = acquire.input_schema["properties"].as_object().unwrap();
    let mut keys: Vec<&str> = properties.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["paths", "reason", "shared", "ttl", "wait"]);
    assert_eq!(acquire.input_schema["required"], json!(["paths"]));
    let status = tools.iter().find(|t| t.name == "lease_status").unwrap();
    assert_eq!(
        status.annotations.as_ref().unwrap().read_only_hint,
        Some(true)
    );
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_retry_renew_status_list_history_release() {
    let ws = Workspace::new();
    let client = ws.mcp("agent-a").await;
    let args = json!({ "paths": ["src/a.rs"], "ttl": "10m", "reason": "refactor" });
    let first = call(&client, "acquire_leases", args.clone()).await;
    assert!(
        first.summary.starts_with("acquired src/a.rs"),
        "{}",
        first.summary
    );
    let first = first.ok();
    assert_eq!(first["agent_id"], "agent-a");
    assert_eq!(first["leases"][0]["file_path"], "src/a.rs");
    assert_eq!(first["leases"][0]["ttl_ms"], 600_000);
    assert!(first["leases"][0]["time_left_ms"].as_u64().unwrap() > 590_000);
    let id = lease_id(&first, 0);

    // A retried call (say, after a lost answer) gets the same lease back.
    let again = call(&client, "acquire_leases", args).await.ok();
    assert_eq!(lease_id(&again, 0), id);
    assert_eq!(again["leases"].as_array().unwrap().len(), 1);

    // The CLI sees the lease under the MCP agent's name.
    let (code, status) = ws.cli("observer", &["status", "src/a.rs"]);
    assert_eq!(code, 0);
    assert_eq!(status["holders"][0]["agent_id"], "agent-a");
    assert_eq!(status["holders"][0]["id"], json!(id));

    let status = call(&client, "lease_status", json!({ "path": "src/a.rs" }))
        .await
        .ok();
    assert_eq!(status["held_by_you"], true);
    assert_eq!(status["held_by_others"], false);
    assert_eq!(status["holders"][0]["id"], json!(id));

    let renewed = call(
        &client,
        "renew_lease",
        json!({ "lease_id": id, "ttl": 1200 }),
    )
    .await;
    let renewed = renewed.ok();
    assert_eq!(renewed["lease"]["ttl_ms"], 1_200_000);
    assert_eq!(renewed["lease"]["renewal_count"], 1);

    ws.cli("agent-b", &["acquire", "src/b.rs", "--ttl", "5m"]);
    let mine = call(&client, "list_leases", json!({})).await.ok();
    assert_eq!(mine["leases"].as_array().unwrap().len(), 1);
    assert_eq!(mine["leases"][0]["file_path"], "src/a.rs");
    let all = call(&client, "list_leases", json!({ "all_agents": true }))
        .await
        .ok();
    let paths: Vec<&str> = all["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["file_path"].as_str().unwrap())
        .collect();
    assert_eq!(paths, ["src/a.rs", "src/b.rs"]);
    let on_b = call(
        &client,
        "list_leases",
        json!({ "all_agents": true, "path": "src/" }),
    )
    .await;
    assert_eq!(on_b.ok()["leases"].as_array().unwrap().len(), 2);

    let history = call(&client, "lease_history", json!({ "path": "src/a.rs" }))
        .await
        .ok();
    let events: Vec<(&str, &str)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap(),
                e["lease_id"].as_str().unwrap(),
            )
        })
        .collect();
    // The retried acquisition is recorded, on the same lease.
    assert_eq!(
        events,
        [
            ("acquired", id.as_str()),
            ("acquired", id.as_str()),
            ("renewed", id.as_str())
        ]
    );
    let by_b = call(
        &client,
        "lease_history",
        json!({ "agent": "agent-b", "since": "1h" }),
    )
    .await;
    assert_eq!(by_b.ok()["events"][0]["file_path"], "src/b.rs");

    let released = call(&client, "release_leases", json!({ "lease_ids": [id] }))
        .await
        .ok();
    assert_eq!(released["released"][0]["status"], "released");
    let status = call(&client, "lease_status", json!({ "path": "src/a.rs" })).await;
    assert!(
        status.summary.starts_with("src/a.rs is free"),
        "{}",
        status.summary
    );
    assert_eq!(status.ok()["locked"], false);
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_names_the_holder_its_expiry_and_how_to_wait() {
    let ws = Workspace::new();
    let (code, held) = ws.cli("agent-b", &["acquire", "src/", "--ttl", "5m"]);
    assert_eq!(code, 0, "{held}");
    let client = ws.mcp("agent-a").await;

    let refused = call(
        &client,
        "acquire_leases",
        json!({ "paths": ["src/main.rs"] }),
    )
    .await;
    assert!(refused.summary.contains("agent-b"), "{}", refused.summary);
    let refused = refused.refused("conflict");
    let holder = &refused["error"]["holders"][0];
    assert_eq!(holder["agent_id"], "agent-b");
    assert_eq!(holder["file_path"], "src/");
    assert_eq!(holder["mode"], "exclusive");
    assert_eq!(holder["lease_id"], held["leases"][0]["id"]);
    assert_eq!(holder["expires_at"], held["leases"][0]["expires_at"]);
    assert!(holder["time_left_ms"].as_u64().unwrap() > 290_000);
    let next = refused["next"].as_str().unwrap();
    assert!(next.contains("wait=\"120s\""), "{next}");
    assert!(next.contains("ask agent-b"), "{next}");

    let status = call(&client, "lease_status", json!({ "path": "src/main.rs" })).await;
    assert!(
        status.summary.contains("held by agent-b"),
        "{}",
        status.summary
    );
    let status = status.ok();
    assert_eq!(status["held_by_others"], true);
    assert_eq!(status["holders"][0]["agent_id"], "agent-b");

    // A wait that runs out says who still holds it.
    let timed_out = call(
        &client,
        "acquire_leases",
        json!({ "paths": ["src/main.rs"], "wait": "200ms" }),
    )
    .await;
    let timed_out = timed_out.refused("wait_timeout");
    assert_eq!(timed_out["error"]["holders"][0]["agent_id"], "agent-b");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_is_granted_when_the_holder_releases() {
    let ws = Workspace::new();
    let (code, held) = ws.cli("agent-b", &["acquire", "src/lib.rs", "--ttl", "5m"]);
    assert_eq!(code, 0, "{held}");
    let client = ws.mcp("agent-a").await;
    let root = ws.root.clone();
    let waiting = call(
        &client,
        "acquire_leases",
        json!({ "paths": ["src/lib.rs"], "wait": "20s", "ttl": "1m" }),
    );
    let release = tokio::task::spawn_blocking(move || {
        // Release once agent-a is in the queue, as another process would.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, status) = cli(&root, "observer", &["status", "src/lib.rs"]);
            if status["waiters"][0]["agent_id"] == "agent-a" {
                break;
            }
            assert!(Instant::now() < deadline, "agent-a never queued: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
        cli(&root, "agent-b", &["release", "--path", "src/lib.rs"])
    });
    let (granted, released) = tokio::join!(waiting, release);
    let (code, released) = released.unwrap();
    assert_eq!(code, 0, "{released}");
    let granted = granted.ok();
    assert_eq!(granted["leases"][0]["agent_id"], "agent-a");
    assert!(granted["waited_ms"].as_u64().unwrap() > 0);
    let (_, status) = ws.cli("observer", &["status", "src/lib.rs"]);
    assert_eq!(status["holders"][0]["agent_id"], "agent-a");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_leaves_the_queue() {
    let ws = Workspace::new();
    let (code, held) = ws.cli("agent-b", &["acquire", "src/lib.rs", "--ttl", "5m"]);
    assert_eq!(code, 0, "{held}");
    let client = ws.mcp("agent-a").await;
    let root = ws.root.clone();
    let queued = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, status) = cli(&root, "observer", &["status", "src/lib.rs"]);
            if status["waiters"][0]["agent_id"] == "agent-a" {
                return;
            }
            assert!(Instant::now() < deadline, "agent-a never queued: {status}");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let waiting = call(
        &client,
        "acquire_leases",
        json!({ "paths": ["src/lib.rs"], "wait": "1m" }),
    );
    // The client gives up once the wait is queued: dropping the call cancels it.
    tokio::select! {
        _ = waiting => panic!("the wait ended while agent-b held the path"),
        queued = queued => queued.unwrap(),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, status) = ws.cli("observer", &["status", "src/lib.rs"]);
        if status["waiters"] == json!([]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the cancelled waiter is still queued: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The server goes on serving.
    let status = call(&client, "lease_status", json!({ "path": "src/lib.rs" }))
        .await
        .ok();
    assert_eq!(status["holders"][0]["agent_id"], "agent-b");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_by_paths_and_everything_of_mine() {
    let ws = Workspace::new();
    let client = ws.mcp("agent-a").await;
    let paths = json!({ "paths": ["a.rs", "b.rs", "lib/"], "ttl": "5m" });
    let taken = call(&client, "acquire_leases", paths).await.ok();
    assert_eq!(taken["leases"][2]["file_path"], "lib/");
    ws.cli("agent-b", &["acquire", "c.rs"]);

    let by_path = call(&client, "release_leases", json!({ "paths": ["a.rs"] }))
        .await
        .ok();
    assert_eq!(by_path["released"].as_array().unwrap().len(), 1);
    assert_eq!(by_path["released"][0]["file_path"], "a.rs");

    // Nothing of mine on that path: refused, and nothing else was released.
    let none = call(
        &client,
        "release_leases",
        json!({ "paths": ["b.rs", "c.rs"] }),
    )
    .await;
    assert_eq!(none.refused("not_found")["error"]["path"], "c.rs");
    let (_, b) = ws.cli("observer", &["status", "b.rs"]);
    assert_eq!(b["holders"][0]["agent_id"], "agent-a");

    // Someone else's lease: refused by id.
    let (_, theirs) = ws.cli("observer", &["status", "c.rs"]);
    let their_id = theirs["holders"][0]["id"].clone();
    let not_mine = call(
        &client,
        "release_leases",
        json!({ "lease_ids": [their_id] }),
    )
    .await;
    assert_eq!(not_mine.refused("not_holder")["error"]["holder"], "agent-b");

    // No arguments: every active lease of mine, and only mine.
    let all = call(&client, "release_leases", json!({})).await.ok();
    let mut released: Vec<&str> = all["released"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["file_path"].as_str().unwrap())
        .collect();
    released.sort();
    assert_eq!(released, ["b.rs", "lib/"]);
    let (_, c) = ws.cli("observer", &["status", "c.rs"]);
    assert_eq!(c["holders"][0]["agent_id"], "agent-b");
    let again = call(&client, "release_leases", json!({})).await;
    assert!(
        again.summary.contains("no active lease"),
        "{}",
        again.summary
    );
    assert_eq!(again.ok()["released"], json!([]));

    // A retried release by id finds the lease already released: reported, not refused.
    let id = lease_id(&taken, 0);
    let retried = call(&client, "release_leases", json!({ "lease_ids": [id] }))
        .await
        .ok();
    assert_eq!(retried["released"], json!([]));
    assert_eq!(retried["not_held"][0]["id"], json!(id));
    assert_eq!(retried["not_held"][0]["status"], "released");
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_an_invalid_input_error_that_changes_nothing() {
    let ws = Workspace::new();
    let client = ws.mcp("agent-a").await;
    let cases = [
        (
            "acquire_leases",
            json!({ "paths": ["../outside.rs"] }),
            "path",
        ),
        ("acquire_leases", json!({ "paths": [] }), "paths"),
        (
            "acquire_leases",
            json!({ "paths": ["a.rs"], "ttl": "0s" }),
            "ttl",
        ),
        (
            "acquire_leases",
            json!({ "paths": ["a.rs"], "ttl": 0 }),
            "ttl",
        ),
        (
            "acquire_leases",
            json!({ "paths": ["a.rs"], "ttl": "soon" }),
            "ttl",
        ),
        (
            "acquire_leases",
            json!({ "paths": ["a.rs"], "wait": "-1s" }),
            "wait",
        ),
        ("renew_lease", json!({ "lease_id": "nope" }), "lease_id"),
        (
            "release_leases",
            json!({ "lease_ids": ["nope"] }),
            "lease_id",
        ),
        ("lease_status", json!({ "path": "/elsewhere/x.rs" }), "path"),
        ("lease_history", json!({ "limit": 0 }), "limit"),
        (
            "lease_history",
            json!({ "since": "yesterday-ish" }),
            "since",
        ),
    ];
    for (tool, arguments, what) in cases {
        let answer = call(&client, tool, arguments.clone()).await;
        let answer = answer.refused("invalid_input");
        assert_eq!(
            answer["error"]["what"], what,
            "{tool} {arguments}: {answer}"
        );
    }
    // A lease that does not exist.
    let missing = json!({ "lease_id": "00000000-0000-4000-8000-000000000000" });
    call(&client, "renew_lease", missing)
        .await
        .refused("not_found");
    // Arguments that do not fit the schema: the same kind of refusal, naming the problem.
    let wrong_type = call(&client, "acquire_leases", json!({ "paths": "a.rs" })).await;
    let wrong_type = wrong_type.refused("invalid_input");
    assert_eq!(wrong_type["error"]["what"], "arguments");
    assert!(
        wrong_type["error"]["why"]
            .as_str()
            .unwrap()
            .contains("expected a sequence"),
        "{wrong_type}"
    );
    let unknown = call(&client, "list_leases", json!({ "everyone": true })).await;
    let unknown = unknown.refused("invalid_input");
    assert!(
        unknown["error"]["why"]
            .as_str()
            .unwrap()
            .contains("everyone"),
        "{unknown}"
    );
    let missing = call(&client, "lease_status", json!({})).await;
    assert_eq!(
        missing.refused("invalid_input")["error"]["what"],
        "arguments"
    );
    // An unknown tool is a protocol error.
    let no_such_tool = CallToolRequestParams::new("steal_leases");
    assert!(client.call_tool(no_such_tool).await.is_err());
    // Nothing was taken.
    let (_, all) = ws.cli("observer", &["list"]);
    assert_eq!(all["leases"], json!([]));
    client.cancel().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_server_the_tools_act_as_the_tokens_agent() {
    let ws = Workspace::new();
    let server = Server::start(&ws.root);
    let (code, token) = ws.cli("observer", &["token", "create", "--agent", "agent-r"]);
    assert_eq!(code, 0, "{token}");
    let token = token["token"].as_str().unwrap().to_string();
    let client = ws
        .mcp_with(&["mcp", "--server", &server.url, "--token", &token])
        .await;
    let taken = call(&client, "acquire_leases", json!({ "paths": ["docs/x.md"] }))
        .await
        .ok();
    assert_eq!(taken["agent_id"], "agent-r");
    let (_, status) = ws.cli("observer", &["status", "docs/x.md"]);
    assert_eq!(status["holders"][0]["agent_id"], "agent-r");
    client.cancel().await.unwrap();
}

/// A `leasehold serve` on a workspace's database, stopped on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(root: &Path) -> Server {
        let mut command = Command::new(BIN);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--no-background"])
            .current_dir(root);
        for var in CLI_VARS {
            command.env_remove(var);
        }
        command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start leasehold serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut line = String::new();
        let url = loop {
            line.clear();
            let read = stderr
                .read_line(&mut line)
                .expect("read the server's stderr");
            assert!(read > 0, "leasehold serve exited before listening");
            if let Some((_, rest)) = line.split_once("listening on ") {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Server { child, url }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
