//! A temporary workspace and helpers to run the real `leasehold` binary in it.
//!
//! In the `remote` copy of the suite (`super::REMOTE`), every workspace also runs a real
//! `leasehold serve` on its database, and every command talks to it with `--server` and a token
//! of the acting agent: the same tests, through HTTP.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// Every variable the CLI reads, removed so the caller's environment cannot leak into a test.
const CLI_VARS: &[&str] = &[
    "LEASEHOLD_ROOT",
    "LEASEHOLD_DB",
    "LEASEHOLD_AGENT",
    "LEASEHOLD_SERVER",
    "LEASEHOLD_TOKEN",
    "LEASEHOLD_KILL_GRACE",
    "LEASEHOLD_LOG",
];

/// A temporary directory with a `.git/` folder, so it is a workspace root.
pub struct Workspace {
    root: PathBuf,
    /// In remote mode: the server serving this workspace's database.
    server: Option<ServerProcess>,
    /// Field order matters: the server stops before the directory goes.
    _dir: TempDir,
}

/// A `leasehold serve` child process and the tokens minted for it, one per agent.
struct ServerProcess {
    child: Child,
    url: String,
    tokens: Mutex<HashMap<String, String>>,
}

impl ServerProcess {
    /// Starts `leasehold serve` on a free port in `root` and waits until it listens.
    fn start(root: &Path) -> ServerProcess {
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
        let mut url = None;
        let mut line = String::new();
        while url.is_none() {
            line.clear();
            if stderr
                .read_line(&mut line)
                .expect("read the server's stderr")
                == 0
            {
                panic!("leasehold serve exited before listening");
            }
            url = line
                .split_once("listening on ")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .map(str::to_string);
        }
        // Keep draining its stderr so that it never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        ServerProcess {
            child,
            url: url.unwrap(),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    /// The token of `agent` (created on first use, with admin rights so that every command of
    /// the suite may run; the server still lets an agent act only on its own leases).
    fn token(&self, root: &Path, agent: &str) -> String {
        let mut tokens = self.tokens.lock().unwrap();
        if let Some(token) = tokens.get(agent) {
            return token.clone();
        }
        let mut command = Command::new(BIN);
        command
            .args(["--json", "token", "create", "--agent", agent, "--admin"])
            .current_dir(root);
        for var in CLI_VARS {
            command.env_remove(var);
        }
        let output = command.output().expect("leasehold token create");
        assert!(
            output.status.success(),
            "token create: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let document: Value = serde_json::from_slice(&output.stdout).expect("token JSON");
        let token = document["token"].as_str().expect("token").to_string();
        tokens.insert(agent.to_string(), token.clone());
        token
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The agent a command acts as: `--agent X` in its arguments, else the environment's agent,
/// else an observer (for commands that act as nobody).
fn acting_agent<'a>(agent: &'a str, args: &[&'a str]) -> &'a str {
    let flag = args.windows(2).find(|w| w[0] == "--agent").map(|w| w[1]);
    match (flag, agent) {
        (Some(flag), _) => flag,
        (None, "") => "observer",
        (None, agent) => agent,
    }
}

/// What one run of the binary did.
#[derive(Debug)]
pub struct Run {
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Stdout as the one JSON document it must be (one line, nothing else).
    pub fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "expected one JSON line on stdout, got {:?}",
            self.stdout
        );
        serde_json::from_str(lines[0])
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }

    /// Asserts the exit code, showing the output when it differs.
    #[track_caller]
    pub fn expect(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code; stdout: {:?} stderr: {:?}",
            self.stdout, self.stderr
        );
        self
    }

    /// The `code` of a JSON error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

impl Workspace {
    /// A fresh workspace.
    pub fn new() -> Workspace {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        std::fs::create_dir(root.join(".git")).expect(".git");
        let server = super::REMOTE.then(|| ServerProcess::start(&root));
        Workspace {
            root,
            server,
            _dir: dir,
        }
    }

    /// The root, canonical.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// In remote mode, the URL of the workspace's server.
    #[allow(dead_code)]
    pub fn server_url(&self) -> Option<String> {
        self.server.as_ref().map(|s| s.url.clone())
    }

    /// Creates `relative` (and its parents) as a directory.
    pub fn mkdir(&self, relative: &str) -> PathBuf {
        let path = self.root.join(relative);
        std::fs::create_dir_all(&path).expect("mkdir");
        path
    }

    /// The binary, run in `dir` (relative to the root) as `agent` (none when empty).
    pub fn command_in(&self, dir: &str, agent: &str, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command.args(args).current_dir(self.root.join(dir));
        for var in CLI_VARS {
            command.env_remove(var);
        }
        if !agent.is_empty() {
            command.env("LEASEHOLD_AGENT", agent);
        }
        if let Some(server) = &self.server {
            command.env("LEASEHOLD_SERVER", &server.url);
            command.env(
                "LEASEHOLD_TOKEN",
                server.token(&self.root, acting_agent(agent, args)),
            );
        }
        command.stdin(Stdio::null());
        command
    }

    /// Runs the binary at the root as `agent` and waits for it.
    pub fn run(&self, agent: &str, args: &[&str]) -> Run {
        self.run_in("", agent, args)
    }

    /// Runs the binary in `dir` as `agent` and waits for it.
    pub fn run_in(&self, dir: &str, agent: &str, args: &[&str]) -> Run {
        let output = self
            .command_in(dir, agent, args)
            .output()
            .expect("run leasehold");
        Run::from_output(output)
    }

    /// Runs with `--json`, expects `code`, and returns the document.
    #[track_caller]
    pub fn json(&self, agent: &str, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = self.run(agent, &all);
        run.expect(code);
        run.json()
    }

    /// Starts the binary in the background at the root, with piped output.
    pub fn spawn(&self, agent: &str, args: &[&str], envs: &[(&str, &str)]) -> Child {
        let mut command = self.command_in("", agent, args);
        command.envs(envs.iter().copied());
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().expect("spawn leasehold")
    }

    /// Acquires `paths` as `agent` and returns the lease ids, in order.
    #[track_caller]
    pub fn acquire(&self, agent: &str, args: &[&str]) -> Vec<String> {
        let mut all = vec!["acquire"];
        all.extend_from_slice(args);
        let document = self.json(agent, &all, 0);
        document["leases"]
            .as_array()
            .expect("leases")
            .iter()
            .map(|l| l["id"].as_str().expect("id").to_string())
            .collect()
    }

    /// `status PATH --json`.
    pub fn status(&self, path: &str) -> Value {
        self.json("", &["status", path], 0)
    }

    /// The active leases, as JSON.
    pub fn active_leases(&self) -> Vec<Value> {
        self.json("", &["list"], 0)["leases"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The whole history, as JSON events.
    pub fn history(&self) -> Vec<Value> {
        self.json("", &["history", "--limit", "1000000"], 0)["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

/// Waits for a child and collects its output.
pub fn finish(child: Child) -> Run {
    Run::from_output(child.wait_with_output().expect("wait for leasehold"))
}

/// Polls `condition` every 20 ms until it holds; panics after `timeout` (waiting on a state,
/// never on the passing of a lease's time).
#[track_caller]
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < timeout,
            "timed out waiting until {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to a child process.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) with our own child's pid, which is not reaped until we wait for it.
    let result = unsafe { libc::kill(child.id() as i32, signal) };
    assert_eq!(result, 0, "kill failed");
}

/// Waits until `path` has a queued waiter.
#[track_caller]
pub fn wait_for_waiter(ws: &Workspace, path: &str) {
    wait_until(
        &format!("{path} has a waiter"),
        Duration::from_secs(10),
        || {
            !ws.status(path)["waiters"]
                .as_array()
                .expect("waiters")
                .is_empty()
        },
    );
}

/// Waits until `path` is held.
#[track_caller]
pub fn wait_for_holder(ws: &Workspace, path: &str) {
    wait_until(&format!("{path} is held"), Duration::from_secs(10), || {
        ws.status(path)["locked"] == true
    });
}
