//! `leasehold exec PATH... -- CMD [ARGS...]`: acquire, run a command while a [`LeaseGuard`]
//! keeps the leases renewed, release when it exits, and exit with its code.
//!
//! Termination signals are passed on to the command. If a lease is lost while the command runs,
//! the command gets SIGTERM, then SIGKILL after a grace period, and `exec` exits 5.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use super::acquire::{lease_keys, mode, take};
use crate::cli::duration::{parse_duration_ms, Wait};
use crate::cli::error::{exit_code, CliResult, EXIT_INTERNAL, EXIT_LOST};
use crate::cli::signals::Signals;
use crate::cli::{connect, AgentArg, CliError, Context};
use crate::clock::SystemClock;
use crate::database::Database;
use crate::keepalive::LeaseGuard;
use crate::model::LeaseAcquisitionRequest;

/// The leases' time-to-live when `--ttl` is not given. Short, because they are renewed every
/// third of it while the command runs, and a crashed `exec` should not block others for long.
pub const DEFAULT_TTL_MS: u64 = 60_000;

/// Arguments of `exec`.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Files or folders to lease while the command runs
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,

    /// Time-to-live of the leases, renewed every third of it while the command runs [default: 1m]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub ttl: Option<String>,

    /// Wait in the queue while a path is held: up to DURATION, or the acquisition_timeout_ms
    /// setting when none is given
    #[arg(long, value_name = "DURATION", num_args = 0..=1, default_missing_value = "")]
    pub wait: Option<String>,

    /// Take shared leases (they conflict only with exclusive ones)
    #[arg(long)]
    pub shared: bool,

    /// Why you take the leases (kept with them and in the history)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    /// Time between SIGTERM and SIGKILL for a command whose lease was lost
    #[arg(
        long,
        value_name = "DURATION",
        env = "LEASEHOLD_KILL_GRACE",
        default_value = "5s",
        hide = true
    )]
    pub kill_grace: String,

    #[command(flatten)]
    pub agent: AgentArg,

    /// The command and its arguments, after `--`
    #[arg(value_name = "CMD", last = true, required = true)]
    pub command: Vec<String>,
}

/// How the command's run ended.
enum Ending {
    /// It exited by itself (or after a signal we passed on).
    Exited(std::io::Result<ExitStatus>),
    /// A lease was lost first.
    Lost(crate::error::LeaseError),
}

/// Runs `exec` and returns the command's exit code.
pub async fn run(ctx: &Context, args: ExecArgs) -> CliResult<u8> {
    let agent = ctx.agent(&args.agent)?;
    let mut paths = args.paths;
    let wait = Wait::from_arg(args.wait, &mut paths)?;
    let ttl_ms = match &args.ttl {
        Some(ttl) => parse_duration_ms("ttl", ttl, false)?,
        None => DEFAULT_TTL_MS,
    };
    let grace = Duration::from_millis(parse_duration_ms("kill_grace", &args.kill_grace, true)?);
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(CliError::usage("command", "no command given after --"));
    };
    let request = LeaseAcquisitionRequest {
        agent_id: agent.clone(),
        paths: lease_keys(ctx, &paths)?,
        mode: mode(args.shared),
        ttl_ms: Some(ttl_ms),
        wait_ms: None,
        max_renewals: None,
        reason: args.reason,
    };
    let workspace = ctx.workspace()?;
    // Catch signals before taking the leases, so none can end the process while it holds them
    // without releasing them.
    let mut signals = Signals::catch()?;
    let manager = connect(&ctx.global).await?;
    let granted = take(manager.as_ref(), request, wait, Some(&mut signals)).await?;
    let ids: Vec<String> = granted.leases.iter().map(|l| l.id.to_string()).collect();
    let tokens: Vec<String> = granted
        .leases
        .iter()
        .filter_map(|l| l.fencing_token.map(|t| t.to_string()))
        .collect();
    let guard = LeaseGuard::new(
        manager,
        Arc::new(SystemClock),
        agent.clone(),
        granted.leases,
    );

    let mut command = tokio::process::Command::new(program);
    command
        .args(program_args)
        .env("LEASEHOLD_AGENT", &agent)
        .env("LEASEHOLD_ROOT", &workspace.root)
        .env("LEASEHOLD_DB", database_env(&workspace.database))
        .env("LEASEHOLD_LEASE_IDS", ids.join(" "))
        .env("LEASEHOLD_FENCING_TOKENS", tokens.join(" "));
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = guard.release().await;
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            return Err(CliError::new(
                "command_failed",
                code,
                format!("cannot run {program:?}: {e}"),
            )
            .with_help("the leases were released; check the command's name and permissions"));
        }
    };
    // From here on stdout is the command's: leasehold reports only on stderr.
    ctx.out.hand_stdout_to_child();
    let pid = child.id().and_then(|pid| i32::try_from(pid).ok());

    let ending = loop {
        tokio::select! {
            status = child.wait() => break Ending::Exited(status),
            reason = guard.lost() => break Ending::Lost(reason),
            signo = signals.recv() => send_signal(pid, signo),
        }
    };
    match ending {
        Ending::Exited(Ok(status)) => {
            let code = exit_code_of(status);
            match guard.release().await {
                Ok(()) => Ok(code),
                Err(error) => {
                    let lost = exit_code(&error) == EXIT_LOST;
                    let headline = match lost {
                        true => format!(
                            "a lease was lost before the command finished (it exited with {code})"
                        ),
                        false => format!(
                            "the command exited with {code} but its leases could not be released"
                        ),
                    };
                    let mut error = CliError::from(error)
                        .context(headline)
                        .with_field("command_exit", code);
                    error.exit = if lost { EXIT_LOST } else { EXIT_INTERNAL };
                    Err(error)
                }
            }
        }
        Ending::Exited(Err(e)) => {
            let _ = guard.release().await;
            Err(CliError::internal(format!(
                "cannot wait for the command: {e}"
            )))
        }
        Ending::Lost(reason) => {
            send_signal(pid, libc::SIGTERM);
            let status = tokio::select! {
                status = child.wait() => status,
                () = tokio::time::sleep(grace) => {
                    send_signal(pid, libc::SIGKILL);
                    child.wait().await
                }
            };
            // Release whatever is still held (other paths of the same run).
            let _ = guard.release().await;
            let code = status.map(exit_code_of).unwrap_or(EXIT_INTERNAL);
            let mut error = CliError::from(reason)
                .context("a lease was lost while the command ran, so the command was stopped")
                .with_field("command_exit", code)
                .with_help("acquire the paths again before redoing the work; another agent may have changed them");
            error.exit = EXIT_LOST;
            Err(error)
        }
    }
}

/// `--db` as a child should receive it: the SQLite file, or the server URL.
fn database_env(database: &Database) -> std::ffi::OsString {
    match database {
        Database::Sqlite(file) => file.clone().into_os_string(),
        Database::Postgres(url) => url.into(),
    }
}

/// Sends `signo` to the command, if it was started.
fn send_signal(pid: Option<i32>, signo: i32) {
    if let Some(pid) = pid {
        // SAFETY: kill(2) takes plain integers and touches no memory of ours. The pid is our
        // child's, not yet reaped (we only signal before `wait` has returned), so it cannot
        // have been reused by another process.
        unsafe {
            libc::kill(pid, signo);
        }
    }
}

/// The exit code a shell would report for `status`: the code, or 128+N after signal N.
fn exit_code_of(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(signo)) => (128 + signo).clamp(0, 255) as u8,
        (None, None) => EXIT_INTERNAL,
    }
}
