//! `leasehold guard` in real temporary git repositories (issue 8): the pre-commit hook refuses
//! a commit touching a path another agent holds exclusively (files under a leased folder
//! included), lets through your own leases and paths nobody holds, only warns with
//! `LEASEHOLD_GUARD=warn`, and keeps an existing hook running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// Every variable the CLI or the hook reads, removed so the caller's environment cannot leak in.
const CLI_VARS: &[&str] = &[
    "LEASEHOLD_ROOT",
    "LEASEHOLD_DB",
    "LEASEHOLD_AGENT",
    "LEASEHOLD_SERVER",
    "LEASEHOLD_TOKEN",
    "LEASEHOLD_LOG",
    "LEASEHOLD_GUARD",
];

/// A temporary git repository with one commit, isolated from the user's git configuration.
struct Repo {
    root: PathBuf,
    _dir: TempDir,
}

impl Repo {
    fn new() -> Repo {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().canonicalize().expect("canonical temp dir");
        let repo = Repo { root, _dir: dir };
        repo.git_ok(&["init", "-q", "-b", "main"]);
        repo.git_ok(&["config", "user.name", "Test"]);
        repo.git_ok(&["config", "user.email", "test@example.com"]);
        repo.git_ok(&["config", "commit.gpgsign", "false"]);
        repo.write("README.md", "hello\n");
        repo.git_ok(&["add", "README.md"]);
        repo.git_ok(&["commit", "-q", "-m", "start"]);
        repo
    }

    /// A command in the repository with a clean environment: no leasehold variables, no
    /// global or system git configuration.
    fn command(&self, program: &str, env: &[(&str, &str)]) -> Command {
        let mut command = Command::new(program);
        command.current_dir(&self.root);
        for var in CLI_VARS {
            command.env_remove(var);
        }
        command
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1");
        for (key, value) in env {
            command.env(key, value);
        }
        command
    }

    fn git(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command("git", env)
            .args(args)
            .output()
            .expect("run git")
    }

    #[track_caller]
    fn git_ok(&self, args: &[&str]) -> String {
        let output = self.git(args, &[]);
        assert!(
            output.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The leasehold CLI as `agent`, with `--json`; returns its exit code and answer.
    #[track_caller]
    fn leasehold(&self, agent: &str, args: &[&str]) -> (i32, Value) {
        let output = self
            .command(BIN, &[("LEASEHOLD_AGENT", agent)])
            .arg("--json")
            .args(args)
            .output()
            .expect("run leasehold");
        let document = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
        (output.status.code().unwrap_or(-1), document)
    }

    #[track_caller]
    fn acquire(&self, agent: &str, args: &[&str]) -> Value {
        let mut all = vec!["acquire", "--ttl", "10m"];
        all.extend_from_slice(args);
        let (code, answer) = self.leasehold(agent, &all);
        assert_eq!(code, 0, "acquire {args:?}: {answer}");
        answer
    }

    fn install(&self) -> Value {
        let (code, answer) = self.leasehold("", &["guard", "install"]);
        assert_eq!(code, 0, "guard install: {answer}");
        answer
    }

    fn write(&self, relative: &str, text: &str) {
        let path = self.root.join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    fn head(&self) -> String {
        self.git_ok(&["rev-parse", "HEAD"])
    }

    /// Changes `relative`, stages it and commits with `env`; returns what git did.
    fn commit(&self, relative: &str, env: &[(&str, &str)]) -> Commit {
        self.write(
            relative,
            &format!("changed at {:?}\n", std::time::Instant::now()),
        );
        self.git_ok(&["add", relative]);
        self.commit_staged(env)
    }

    fn commit_staged(&self, env: &[(&str, &str)]) -> Commit {
        let before = self.head();
        let output = self.git(&["commit", "-q", "-m", "change"], env);
        Commit {
            committed: output.status.success() && self.head() != before,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// What one `git commit` did.
#[derive(Debug)]
struct Commit {
    committed: bool,
    stderr: String,
}

const AS_A: &[(&str, &str)] = &[("LEASEHOLD_AGENT", "agent-a")];

fn hook_text(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read the hook")
}

#[test]
fn install_writes_an_executable_hook_once_and_unowned_paths_commit() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::new();
    let answer = repo.install();
    let hook = repo.root.join(".git/hooks/pre-commit");
    assert_eq!(answer["hook"], hook.to_str().unwrap());
    assert_eq!(answer["moved_existing_hook"], false);
    let mode = std::fs::metadata(&hook).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "the hook must be executable");
    let text = hook_text(&hook);
    let exe = Path::new(BIN).canonicalize().unwrap();
    assert!(text.contains(exe.to_str().unwrap()), "{text}");
    assert!(text.contains("guard check"), "{text}");

    // Installing again updates the hook in place: no second copy, nothing moved aside.
    let again = repo.install();
    assert_eq!(again["updated"], true);
    assert_eq!(again["moved_existing_hook"], false);
    assert!(!repo.root.join(".git/hooks/pre-commit.local").exists());
    assert_eq!(hook_text(&hook), text);

    // No lease database yet: the guard passes and creates none.
    let commit = repo.commit("src/main.rs", AS_A);
    assert!(commit.committed, "{commit:?}");
    assert!(!repo.root.join(".leasehold").exists());

    // A database, leases on other paths, a shared lease on this one: still passes.
    repo.acquire("agent-b", &["src/other.rs"]);
    repo.acquire("agent-b", &["--shared", "src/main.rs"]);
    let commit = repo.commit("src/main.rs", AS_A);
    assert!(commit.committed, "{commit:?}");
    assert_eq!(commit.stderr, "");
}

#[test]
fn another_agents_exclusive_lease_refuses_the_commit_naming_holder_and_expiry() {
    let repo = Repo::new();
    repo.install();
    repo.write("src/main.rs", "fn main() {}\n");
    repo.git_ok(&["add", "src/main.rs"]);
    assert!(repo.commit_staged(AS_A).committed);
    let held = repo.acquire("agent-b", &["src/main.rs"]);
    let lease = &held["leases"][0];

    let commit = repo.commit("src/main.rs", AS_A);
    assert!(!commit.committed, "{commit:?}");
    let stderr = &commit.stderr;
    assert!(stderr.contains("commit refused"), "{stderr}");
    assert!(stderr.contains("src/main.rs: held by agent-b"), "{stderr}");
    assert!(stderr.contains(lease["id"].as_str().unwrap()), "{stderr}");
    assert!(
        stderr.contains(lease["expires_at"].as_str().unwrap()),
        "{stderr}"
    );
    assert!(stderr.contains("help:"), "{stderr}");

    // Deleting the file touches it too.
    repo.git_ok(&["reset", "-q", "HEAD", "src/main.rs"]);
    repo.git_ok(&["checkout", "-q", "--", "src/main.rs"]);
    repo.git_ok(&["rm", "-q", "src/main.rs"]);
    let commit = repo.commit_staged(AS_A);
    assert!(!commit.committed, "{commit:?}");
    assert!(commit.stderr.contains("held by agent-b"), "{commit:?}");

    // `guard check` says the same with --json, exit 3.
    let (code, answer) = repo.leasehold("agent-a", &["guard", "check"]);
    assert_eq!(code, 3, "{answer}");
    assert_eq!(answer["error"]["code"], "conflict");
    assert_eq!(answer["error"]["blocked"][0]["holder"], "agent-b");
    assert_eq!(answer["error"]["blocked"][0]["lease_id"], lease["id"]);

    // Once agent-b releases, the commit goes through.
    let (code, _) = repo.leasehold("agent-b", &["release", "--path", "src/main.rs"]);
    assert_eq!(code, 0);
    let commit = repo.commit_staged(AS_A);
    assert!(commit.committed, "{commit:?}");
}

#[test]
fn a_file_under_a_folder_leased_by_another_agent_is_refused() {
    let repo = Repo::new();
    repo.install();
    assert!(repo.commit("lib/old.rs", AS_A).committed);
    repo.acquire("agent-b", &["lib/"]);
    // Moving a file out of the folder touches the folder too.
    repo.git_ok(&["mv", "lib/old.rs", "old.rs"]);
    let commit = repo.commit_staged(AS_A);
    assert!(!commit.committed, "{commit:?}");
    assert!(
        commit.stderr.contains("lib/old.rs: held by agent-b"),
        "{commit:?}"
    );
    repo.git_ok(&["mv", "old.rs", "lib/old.rs"]);
    let commit = repo.commit("lib/deep/x.rs", AS_A);
    assert!(!commit.committed, "{commit:?}");
    assert!(
        commit
            .stderr
            .contains("lib/deep/x.rs: held by agent-b (through its lease on lib/)"),
        "{commit:?}"
    );
    // A sibling folder is not covered.
    repo.git_ok(&["reset", "-q"]);
    let commit = repo.commit("library/x.rs", AS_A);
    assert!(commit.committed, "{commit:?}");
}

#[test]
fn your_own_lease_passes_and_without_an_agent_every_lease_counts() {
    let repo = Repo::new();
    repo.install();
    repo.acquire("agent-a", &["src/mine.rs"]);
    let commit = repo.commit("src/mine.rs", AS_A);
    assert!(commit.committed, "{commit:?}");
    // Without LEASEHOLD_AGENT the guard cannot tell whose the lease is: it refuses.
    let commit = repo.commit("src/mine.rs", &[]);
    assert!(!commit.committed, "{commit:?}");
    assert!(commit.stderr.contains("held by agent-a"), "{commit:?}");
}

#[test]
fn warn_mode_commits_with_a_warning_and_off_skips_the_check() {
    let repo = Repo::new();
    repo.install();
    repo.acquire("agent-b", &["src/main.rs"]);
    let warned = repo.commit(
        "src/main.rs",
        &[("LEASEHOLD_AGENT", "agent-a"), ("LEASEHOLD_GUARD", "warn")],
    );
    assert!(warned.committed, "{warned:?}");
    assert!(
        warned.stderr.contains("warning: leasehold guard"),
        "{warned:?}"
    );
    assert!(warned.stderr.contains("held by agent-b"), "{warned:?}");
    let off = repo.commit(
        "src/main.rs",
        &[("LEASEHOLD_AGENT", "agent-a"), ("LEASEHOLD_GUARD", "off")],
    );
    assert!(off.committed, "{off:?}");
    assert_eq!(off.stderr, "");
}

#[test]
fn an_existing_hook_is_kept_runs_first_and_comes_back_on_uninstall() {
    use std::os::unix::fs::PermissionsExt;
    let repo = Repo::new();
    let hooks = repo.root.join(".git/hooks");
    let original = "#!/bin/sh\necho ran >> \"$(git rev-parse --git-dir)/local-hook-ran\"\n\
                    [ -z \"$FAIL_LOCAL_HOOK\" ]\n";
    std::fs::write(hooks.join("pre-commit"), original).unwrap();
    std::fs::set_permissions(
        hooks.join("pre-commit"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();

    let answer = repo.install();
    assert_eq!(answer["moved_existing_hook"], true);
    assert_eq!(hook_text(&hooks.join("pre-commit.local")), original);
    // Installing again keeps it where it is.
    assert_eq!(repo.install()["moved_existing_hook"], false);
    assert_eq!(hook_text(&hooks.join("pre-commit.local")), original);

    let commit = repo.commit("a.txt", AS_A);
    assert!(commit.committed, "{commit:?}");
    let ran = repo.root.join(".git/local-hook-ran");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "ran\n");

    // The kept hook still decides: when it fails, the commit fails.
    let commit = repo.commit("a.txt", &[("FAIL_LOCAL_HOOK", "1")]);
    assert!(!commit.committed, "{commit:?}");
    // And the guard still runs after it.
    repo.acquire("agent-b", &["a.txt"]);
    let commit = repo.commit_staged(AS_A);
    assert!(!commit.committed, "{commit:?}");
    assert!(commit.stderr.contains("held by agent-b"), "{commit:?}");
    assert_eq!(std::fs::read_to_string(&ran).unwrap(), "ran\nran\nran\n");

    let (code, answer) = repo.leasehold("", &["guard", "uninstall"]);
    assert_eq!(code, 0, "{answer}");
    assert_eq!(hook_text(&hooks.join("pre-commit")), original);
    assert!(!hooks.join("pre-commit.local").exists());
}

#[test]
fn core_hooks_path_is_respected() {
    let repo = Repo::new();
    repo.git_ok(&["config", "core.hooksPath", "githooks"]);
    let answer = repo.install();
    let hook = repo.root.join("githooks/pre-commit");
    assert_eq!(answer["hook"], hook.to_str().unwrap());
    assert!(hook_text(&hook).contains("guard check"));
    assert!(!repo.root.join(".git/hooks/pre-commit").exists());
    repo.acquire("agent-b", &["x.rs"]);
    let commit = repo.commit("x.rs", AS_A);
    assert!(!commit.committed, "{commit:?}");
    assert!(commit.stderr.contains("held by agent-b"), "{commit:?}");
}
