//! The `leasehold` command line: argument parsing, the one factory that connects a command to a
//! lease manager, and dispatch to one thin module per command (see [`commands`]).
//!
//! Architecture invariant: commands reach leases only through the [`LeaseManager`] that
//! [`connect`] returns; they know neither SQLite nor the engine's concrete type.

pub mod commands;
pub mod duration;
pub mod error;
pub mod output;
pub mod signals;
pub mod workspace;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser};

use crate::clock::SystemClock;
use crate::manager::LeaseManager;
use crate::remote::RemoteManager;

pub use commands::Command;
pub use error::{exit_code, CliError, CliResult};
use output::Output;
use workspace::Workspace;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    name = "leasehold",
    version,
    about = "Leases on files and folders, so that many agents can share one workspace",
    long_about = "Leases on files and folders, so that many agents can share one workspace.\n\n\
        An agent takes a lease on a path for a time-to-live; others are refused, or wait in a \
        fair queue with --wait. Paths are relative to the current directory and become keys \
        relative to the workspace root; a path ending in / (or naming a directory) is a folder \
        lease. Durations are written 30s, 10m, 1h30m.",
    after_help = error::EXIT_CODES_HELP
)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The workspace root [default: the nearest ancestor holding .leasehold/ or .git/, else the
    /// current directory]
    #[arg(long, env = "LEASEHOLD_ROOT", value_name = "DIR", global = true)]
    pub root: Option<PathBuf>,

    /// The lease database: a SQLite file or a postgres:// URL [default:
    /// <root>/.leasehold/leases.db, created on first use]
    #[arg(long, env = "LEASEHOLD_DB", value_name = "PATH|URL", global = true)]
    pub db: Option<String>,

    /// The agent acting (commands that act as an agent also take --agent after their name)
    #[arg(long, env = "LEASEHOLD_AGENT", value_name = "ID")]
    pub agent: Option<String>,

    /// Answer with one JSON document on stdout, errors included
    #[arg(long, global = true)]
    pub json: bool,

    /// A leasehold server to use instead of the local database
    #[arg(long, env = "LEASEHOLD_SERVER", value_name = "URL", global = true)]
    pub server: Option<String>,

    /// The bearer token for --server
    #[arg(
        long,
        env = "LEASEHOLD_TOKEN",
        value_name = "TOKEN",
        global = true,
        hide_env_values = true
    )]
    pub token: Option<String>,
}

/// `--agent ID` after a command's name, for commands that act as an agent.
#[derive(Debug, Clone, Default, Args)]
pub struct AgentArg {
    /// The agent acting [default: --agent before the command, or LEASEHOLD_AGENT]
    #[arg(long = "agent", id = "as_agent", value_name = "ID")]
    pub agent: Option<String>,
}

/// What every command runs with.
#[derive(Debug)]
pub struct Context {
    /// The global options.
    pub global: GlobalArgs,
    /// Where answers go.
    pub out: Output,
}

impl Context {
    /// The acting agent: `--agent` after the command, else before it, else `LEASEHOLD_AGENT`.
    pub fn agent(&self, local: &AgentArg) -> CliResult<String> {
        let given = [&local.agent, &self.global.agent]
            .into_iter()
            .flatten()
            .find(|agent| !agent.trim().is_empty());
        match given {
            Some(agent) => Ok(agent.clone()),
            None => {
                let mut error = CliError::usage("agent_id", "no agent id given");
                error.message = "no agent id given: this command acts as an agent".to_string();
                Err(error.with_help("pass --agent ID or set LEASEHOLD_AGENT"))
            }
        }
    }

    /// The workspace seen from the current directory.
    pub fn workspace(&self) -> CliResult<Workspace> {
        Workspace::discover(&self.global)
    }
}

/// The one way commands get a lease manager: a server when `--server` is given (remote mode,
/// as the token's agent), else the workspace's database (SQLite, or PostgreSQL for a
/// `postgres://` `--db`), opened in this process.
pub async fn connect(global: &GlobalArgs) -> CliResult<Arc<dyn LeaseManager>> {
    if let Some(url) = &global.server {
        return Ok(Arc::new(remote(url, global.token.as_deref())?));
    }
    let database = Workspace::discover(global)?.database;
    let engine = crate::database::open_database_in_place(&database, Arc::new(SystemClock))
        .await
        .map_err(|e| {
            CliError::from(e)
                .context(format!(
                    "cannot open the lease database {}",
                    database.describe()
                ))
                .with_help("check --db (LEASEHOLD_DB) and that it is a leasehold database")
        })?;
    Ok(engine)
}

/// A client of the server at `url`, with the token from `--token` (`LEASEHOLD_TOKEN`).
fn remote(url: &str, token: Option<&str>) -> CliResult<RemoteManager> {
    let token = token.filter(|t| !t.trim().is_empty()).ok_or_else(|| {
        CliError::usage("token", "--server needs a token")
            .with_help("pass --token TOKEN or set LEASEHOLD_TOKEN (see `leasehold token create`)")
    })?;
    Ok(RemoteManager::new(url, token)?)
}

/// In remote mode without `--agent`, the agent is the token's: ask the server once, so that
/// commands acting as an agent need no `--agent` (the server refuses any other agent anyway).
async fn remote_identity(global: &mut GlobalArgs) -> CliResult<()> {
    if let (Some(url), None) = (&global.server, &global.agent) {
        let whoami = remote(url, global.token.as_deref())?.whoami().await?;
        global.agent = Some(whoami.agent_id);
    }
    Ok(())
}

/// Runs the command line of this process.
pub fn main() -> ExitCode {
    ExitCode::from(run(std::env::args_os().collect()))
}

/// Runs one command line (`args[0]` is the program name) and returns the exit code.
pub fn run(args: Vec<OsString>) -> u8 {
    let json = wants_json(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(error) => return report_parse_error(error, json),
    };
    init_tracing(matches!(cli.command, Command::Serve(_)));
    let ctx = Context {
        out: Output::new(cli.global.json),
        global: cli.global,
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return ctx.out.report(&CliError::internal(format!(
                "cannot start the runtime: {e}"
            )))
        }
    };
    let serving = matches!(cli.command, Command::Serve(_));
    let mut ctx = ctx;
    let result = runtime.block_on(async {
        if !serving && needs_agent(&cli.command) {
            remote_identity(&mut ctx.global).await?;
        }
        commands::run(&ctx, cli.command).await
    });
    // Dropping the runtime waits for database work already started (such as a cancelled
    // waiter leaving the queue), so it happens before the process exits.
    drop(runtime);
    match result {
        Ok(code) => code,
        Err(error) => ctx.out.report(&error),
    }
}

/// Whether `--json` appears before any `--` (best effort, for reporting parse errors).
fn wants_json(args: &[OsString]) -> bool {
    args.iter()
        .skip(1)
        .take_while(|arg| *arg != "--")
        .any(|arg| arg == "--json")
}

/// Prints a clap error (help and version are not errors) and returns its exit code.
fn report_parse_error(error: clap::Error, json: bool) -> u8 {
    use clap::error::ErrorKind;
    let informational = matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    if json && !informational {
        let rendered = error.render().to_string();
        let first = rendered.lines().next().unwrap_or_default();
        let why = first.strip_prefix("error: ").unwrap_or(first).to_string();
        return Output::new(true).report(&CliError::usage("arguments", why));
    }
    let _ = error.print();
    match error.exit_code() {
        0 => error::EXIT_OK,
        _ => error::EXIT_USAGE,
    }
}

/// Whether a command acts as an agent (and so, in remote mode, needs the token's agent).
fn needs_agent(command: &Command) -> bool {
    matches!(
        command,
        Command::Acquire(_) | Command::Renew(_) | Command::Release(_) | Command::Exec(_)
    )
}

/// Logs go to stderr: warnings by default, or as `LEASEHOLD_LOG` says (`debug`, `leasehold=trace`).
/// The server logs its own way: `info` by default, or as `RUST_LOG` says.
fn init_tracing(serving: bool) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false);
    if serving {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = builder.with_env_filter(filter).try_init();
        return;
    }
    let _ = match std::env::var("LEASEHOLD_LOG") {
        Ok(filter) => builder
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .try_init(),
        Err(_) => builder.with_max_level(tracing::Level::WARN).try_init(),
    };
}
