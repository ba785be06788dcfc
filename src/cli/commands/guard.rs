//! `leasehold guard`: a git pre-commit hook that refuses a commit touching a path on which
//! another agent holds an active exclusive lease. `install` writes the hook (moving an existing
//! one aside to `pre-commit.local`, which the hook runs first), `uninstall` puts things back,
//! and `check` is what the hook runs: it reads the staged paths and asks the lease manager.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::{Args, Subcommand};
use serde_json::json;

use super::mcp::acting_agent;
use crate::cli::error::{CliResult, EXIT_HELD};
use crate::cli::output::time_left;
use crate::cli::{connect, AgentArg, CliError, Context};
use crate::clock::{Clock, SystemClock};
use crate::database::Database;
use crate::model::{Lease, LeaseMode, LeaseQuery, LeaseStatus};
use crate::path::LeasePath;

/// A line every hook written by `guard install` carries, so a later install or uninstall knows
/// the hook is ours.
const MARKER: &str = "# leasehold-guard-hook";

/// Where `install` moves a pre-commit hook that was there before; the guard runs it first.
const LOCAL_HOOK: &str = "pre-commit.local";

/// The environment variable that softens the guard: `warn` only warns, `off` skips it.
const MODE_VAR: &str = "LEASEHOLD_GUARD";

/// Arguments of `guard`.
#[derive(Debug, Args)]
pub struct GuardArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: GuardAction,
}

/// The `guard` subcommands.
#[derive(Debug, Subcommand)]
pub enum GuardAction {
    /// Install the pre-commit hook in the current git repository (an existing hook is kept as
    /// pre-commit.local and runs first)
    Install,
    /// Remove the hook, putting back the hook it kept as pre-commit.local
    Uninstall,
    /// Refuse if a staged path is under another agent's exclusive lease (what the hook runs);
    /// LEASEHOLD_GUARD=warn only warns, LEASEHOLD_GUARD=off skips the check
    Check(CheckArgs),
}

/// Arguments of `guard check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub agent: AgentArg,
}

/// Runs `guard`.
pub async fn run(ctx: &Context, args: GuardArgs) -> CliResult<()> {
    match args.action {
        GuardAction::Install => install(ctx),
        GuardAction::Uninstall => uninstall(ctx),
        GuardAction::Check(args) => check(ctx, args).await,
    }
}

/// What the `check` environment variable asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Refuse,
    Warn,
    Off,
}

impl Mode {
    fn from_env() -> Mode {
        match std::env::var(MODE_VAR).unwrap_or_default().trim() {
            "warn" => Mode::Warn,
            "off" => Mode::Off,
            _ => Mode::Refuse,
        }
    }
}

fn install(ctx: &Context) -> CliResult<()> {
    let hooks = hooks_dir()?;
    std::fs::create_dir_all(&hooks)
        .map_err(|e| CliError::internal(format!("cannot create {}: {e}", hooks.display())))?;
    let hook = hooks.join("pre-commit");
    let local = hooks.join(LOCAL_HOOK);
    let ours = is_ours(&hook);
    let mut moved = false;
    if !ours && hook.symlink_metadata().is_ok() {
        if local.symlink_metadata().is_ok() {
            return Err(CliError::usage(
                "hook",
                format!(
                    "{} exists and so does {}; leasehold keeps the existing hook there",
                    hook.display(),
                    local.display()
                ),
            )
            .with_help(format!(
                "merge the two hooks into {} and run `leasehold guard install` again",
                local.display()
            )));
        }
        std::fs::rename(&hook, &local).map_err(|e| {
            CliError::internal(format!("cannot move {} aside: {e}", hook.display()))
        })?;
        moved = true;
    }
    let exe = std::env::current_exe()
        .and_then(|exe| exe.canonicalize())
        .map_err(|e| CliError::internal(format!("cannot find the leasehold binary: {e}")))?;
    write_hook(&hook, &hook_script(&exe))?;
    let kept = local.symlink_metadata().is_ok().then(|| local.clone());
    let document = json!({
        "hook": hook,
        "kept_hook": kept,
        "moved_existing_hook": moved,
        "updated": ours,
        "leasehold": exe,
    });
    ctx.out.answer(&document, || {
        let mut text = format!(
            "{} the leasehold guard in {}",
            if ours { "updated" } else { "installed" },
            hook.display()
        );
        if let Some(kept) = &kept {
            text.push_str(&format!(
                "\nthe existing hook {} {}; it runs first",
                if moved { "moved to" } else { "is kept as" },
                kept.display()
            ));
        }
        text
    })
}

fn uninstall(ctx: &Context) -> CliResult<()> {
    let hooks = hooks_dir()?;
    let hook = hooks.join("pre-commit");
    let local = hooks.join(LOCAL_HOOK);
    if !is_ours(&hook) {
        return ctx
            .out
            .answer(&json!({ "removed": false, "restored": null }), || {
                format!("no leasehold guard in {}", hook.display())
            });
    }
    std::fs::remove_file(&hook)
        .map_err(|e| CliError::internal(format!("cannot remove {}: {e}", hook.display())))?;
    let restored = if local.symlink_metadata().is_ok() {
        std::fs::rename(&local, &hook)
            .map_err(|e| CliError::internal(format!("cannot put {} back: {e}", local.display())))?;
        true
    } else {
        false
    };
    ctx.out.answer(
        &json!({ "removed": true, "restored": restored.then_some(&hook) }),
        || {
            let mut text = format!("removed the leasehold guard from {}", hook.display());
            if restored {
                text.push_str(&format!(
                    "\nput {} back as {}",
                    local.display(),
                    hook.display()
                ));
            }
            text
        },
    )
}

/// The hook: runs the hook kept aside, then `leasehold guard check` with the binary that
/// installed it (or the first `leasehold` on PATH if that one is gone).
fn hook_script(exe: &Path) -> String {
    format!(
        r#"#!/bin/sh
# The leasehold guard: refuses a commit that touches a path on which another agent holds an
# active exclusive lease. Installed by `leasehold guard install`; removed by
# `leasehold guard uninstall`. LEASEHOLD_GUARD=warn only warns; LEASEHOLD_GUARD=off skips it.
# A pre-commit hook that was here before was moved to {LOCAL_HOOK}; it runs first.
{MARKER}
hooks=$(dirname "$0")
if [ -x "$hooks/{LOCAL_HOOK}" ]; then
    "$hooks/{LOCAL_HOOK}" "$@" || exit $?
fi
if [ "${{LEASEHOLD_GUARD:-}}" = off ]; then
    exit 0
fi
leasehold={exe}
if [ ! -x "$leasehold" ]; then
    leasehold=$(command -v leasehold) || {{
        echo "leasehold guard: cannot find leasehold (installed from {exe_text}, not on PATH either)" >&2
        echo "help: reinstall with 'leasehold guard install', or commit with LEASEHOLD_GUARD=off" >&2
        if [ "${{LEASEHOLD_GUARD:-}}" = warn ]; then exit 0; fi
        exit 1
    }}
fi
exec "$leasehold" guard check
"#,
        exe = shell_quote(&exe.to_string_lossy()),
        exe_text = exe.to_string_lossy().replace(['"', '$', '`', '\\'], "?"),
    )
}

/// `text` as one single-quoted shell word.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn write_hook(hook: &Path, script: &str) -> CliResult<()> {
    use std::os::unix::fs::PermissionsExt;
    let fail =
        |e: std::io::Error| CliError::internal(format!("cannot write {}: {e}", hook.display()));
    // Replace a hook of ours that may be a symlink with a plain file.
    if is_ours(hook) {
        std::fs::remove_file(hook).map_err(fail)?;
    }
    std::fs::write(hook, script).map_err(fail)?;
    std::fs::set_permissions(hook, std::fs::Permissions::from_mode(0o755)).map_err(fail)
}

fn is_ours(hook: &Path) -> bool {
    std::fs::read_to_string(hook).is_ok_and(|text| text.lines().any(|line| line == MARKER))
}

/// The hooks folder of the current repository (`core.hooksPath` when set).
fn hooks_dir() -> CliResult<PathBuf> {
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::internal(format!("cannot read the current directory: {e}")))?;
    let text = git_text(&["rev-parse", "--git-path", "hooks"])?;
    Ok(cwd.join(text.trim_end_matches(['\n', '\r'])))
}

/// Runs git with `args` in the current directory and returns its stdout.
fn git(args: &[&str]) -> CliResult<Vec<u8>> {
    let output = Command::new("git").args(args).output().map_err(|e| {
        CliError::internal(format!("cannot run git: {e}"))
            .with_help("install git, or put it on PATH")
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(CliError::usage(
            "repository",
            format!("`git {}` failed: {}", args.join(" "), stderr.trim()),
        )
        .with_help("run this inside a git working tree"));
    }
    Ok(output.stdout)
}

fn git_text(args: &[&str]) -> CliResult<String> {
    String::from_utf8(git(args)?).map_err(|_| {
        CliError::internal(format!("`git {}` printed a non-UTF-8 path", args.join(" ")))
    })
}

/// A staged path blocked by another agent's exclusive lease.
struct Blocked {
    path: String,
    lease: Lease,
}

async fn check(ctx: &Context, args: CheckArgs) -> CliResult<()> {
    let mode = Mode::from_env();
    if mode == Mode::Off {
        return ctx.out.answer(
            &json!({ "mode": "off", "checked": 0, "blocked": [] }),
            String::new,
        );
    }
    match find_blocked(ctx, &args).await {
        Ok((checked, blocked)) if blocked.is_empty() => ctx
            .out
            .answer(&json!({ "checked": checked, "blocked": [] }), String::new),
        Ok((_, blocked)) => {
            let error = refusal(&blocked, mode == Mode::Warn);
            if mode == Mode::Warn {
                warn(&error);
                Ok(())
            } else {
                Err(error)
            }
        }
        Err(error) if mode == Mode::Warn => {
            warn(&error);
            Ok(())
        }
        Err(error) => Err(error.with_help(
            "fix the problem above, or commit with LEASEHOLD_GUARD=warn (or git commit --no-verify)",
        )),
    }
}

/// Prints `error` as a warning, for `LEASEHOLD_GUARD=warn`.
fn warn(error: &CliError) {
    eprintln!("warning: leasehold guard: {error}\nwarning: committing anyway ({MODE_VAR}=warn)");
}

/// The staged paths (how many were checked) and those another agent holds exclusively.
async fn find_blocked(ctx: &Context, args: &CheckArgs) -> CliResult<(usize, Vec<Blocked>)> {
    let toplevel = PathBuf::from(git_text(&["rev-parse", "--show-toplevel"])?.trim_end());
    let toplevel = toplevel.canonicalize().unwrap_or(toplevel);
    let staged = git(&["diff", "--cached", "--name-only", "-z", "--no-renames"])?;
    let staged: Vec<&[u8]> = staged
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .collect();
    let workspace = ctx.workspace()?;
    if staged.is_empty() {
        return Ok((0, Vec::new()));
    }
    if ctx.global.server.is_none() {
        if let Database::Sqlite(file) = &workspace.database {
            if !file.exists() {
                // No database yet, so no leases: do not create one on every commit.
                return Ok((staged.len(), Vec::new()));
            }
        }
    }
    let manager = connect(&ctx.global).await?;
    let me = acting_agent(ctx, &args.agent).await?;
    let now_ms = SystemClock.now_ms();
    let others: Vec<Lease> = manager
        .get_all_leases(LeaseQuery::default())
        .await?
        .into_iter()
        .filter(|l| {
            l.status == LeaseStatus::Active
                && l.mode == LeaseMode::Exclusive
                && l.expires_at.0 > now_ms
                && me.as_deref() != Some(l.agent_id.as_str())
        })
        .collect();
    let mut blocked = Vec::new();
    for raw in &staged {
        let path = String::from_utf8_lossy(raw);
        let Some(key) = lease_key(&toplevel, &workspace.root, OsStr::new(path.as_ref())) else {
            continue;
        };
        for lease in &others {
            if LeasePath::from_stored(lease.file_path.clone()).covers(&key) {
                blocked.push(Blocked {
                    path: key.to_string(),
                    lease: lease.clone(),
                });
            }
        }
    }
    Ok((staged.len(), blocked))
}

/// The lease key of `path` (relative to the repository's top level) in the workspace at
/// `root`; `None` for a path outside the workspace or one that cannot be a key.
fn lease_key(toplevel: &Path, root: &Path, path: &OsStr) -> Option<LeasePath> {
    let absolute = toplevel.join(path);
    let relative = absolute.strip_prefix(root).ok()?;
    let parts: Vec<&str> = relative
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<_>>()?;
    LeasePath::parse(&parts.join("/")).ok()
}

/// How many blocked paths the message lists (the JSON error lists them all).
const LISTED_MAX: usize = 20;

/// The error refusing the commit (or, `warning`, the warning): every blocked path with its
/// holder, lease and expiry.
fn refusal(blocked: &[Blocked], warning: bool) -> CliError {
    let now_ms = SystemClock.now_ms();
    let mut message = match blocked.len() {
        1 => "a staged path is under another agent's exclusive lease".to_string(),
        n => format!("{n} staged paths are under other agents' exclusive leases"),
    };
    if !warning {
        message.insert_str(0, "commit refused: ");
    }
    for b in blocked.iter().take(LISTED_MAX) {
        let on = if b.lease.file_path == b.path {
            String::new()
        } else {
            format!(" (through its lease on {})", b.lease.file_path)
        };
        message.push_str(&format!(
            "\n  {}: held by {}{on} until {} ({} left), lease {}",
            b.path,
            b.lease.agent_id,
            b.lease.expires_at,
            time_left(b.lease.expires_at, now_ms),
            b.lease.id
        ));
    }
    if blocked.len() > LISTED_MAX {
        message.push_str(&format!("\n  and {} more", blocked.len() - LISTED_MAX));
    }
    let first = &blocked[0];
    let details: Vec<_> = blocked
        .iter()
        .map(|b| {
            json!({
                "path": b.path,
                "holder": b.lease.agent_id,
                "lease_id": b.lease.id,
                "lease_path": b.lease.file_path,
                "mode": b.lease.mode,
                "expires_at": b.lease.expires_at,
            })
        })
        .collect();
    CliError::new("conflict", EXIT_HELD, message)
        .with_field("blocked", details)
        .with_help(format!(
            "wait until {} releases it (`leasehold status {}`), unstage it (`git restore --staged {}`), \
             or commit anyway with {MODE_VAR}=warn",
            first.lease.agent_id, first.path, first.path
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_quote_survives_quotes_and_spaces() {
        assert_eq!(
            shell_quote("/opt/my bin/leasehold"),
            "'/opt/my bin/leasehold'"
        );
        assert_eq!(shell_quote("/it's/here"), r"'/it'\''s/here'");
    }

    #[test]
    fn staged_paths_become_keys_relative_to_the_workspace_root() {
        let key = |top: &str, root: &str, path: &str| {
            lease_key(Path::new(top), Path::new(root), OsStr::new(path)).map(|k| k.to_string())
        };
        assert_eq!(key("/r", "/r", "src/a.rs"), Some("src/a.rs".into()));
        // A repository inside a larger workspace.
        assert_eq!(key("/w/repo", "/w", "a.rs"), Some("repo/a.rs".into()));
        // A workspace inside the repository: paths outside it are not leased there.
        assert_eq!(key("/r", "/r/sub", "a.rs"), None);
        assert_eq!(key("/r", "/r/sub", "sub/a.rs"), Some("a.rs".into()));
    }

    #[test]
    fn the_hook_runs_the_kept_hook_first_then_the_check() {
        let script = hook_script(Path::new("/usr/bin/leasehold"));
        assert!(script.starts_with("#!/bin/sh\n"));
        assert!(script.lines().any(|l| l == MARKER));
        let local = script.find("pre-commit.local\" \"$@\"").unwrap();
        let check = script.find("exec \"$leasehold\" guard check").unwrap();
        assert!(local < check);
        assert!(script.contains("leasehold='/usr/bin/leasehold'"));
    }
}
