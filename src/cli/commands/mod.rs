//! One module per command, each a thin `run` over [`crate::LeaseManager`] calls, in the shape of
//! cargo's `commands/*.rs`.

pub mod acquire;
pub mod cleanup;
pub mod config;
pub mod exec;
pub mod force_release;
pub mod guard;
pub mod history;
pub mod list;
pub mod mcp;
pub mod release;
pub mod renew;
pub mod serve;
pub mod status;
pub mod token;

use clap::Subcommand;
use uuid::Uuid;

use super::error::{CliError, CliResult, EXIT_OK};
use super::Context;

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Take leases on paths, all or none
    Acquire(acquire::AcquireArgs),
    /// Extend one of your leases
    Renew(renew::RenewArgs),
    /// Give leases back, by id or by path
    Release(release::ReleaseArgs),
    /// List active leases (every lease with --all)
    List(list::ListArgs),
    /// Show who holds a path and who waits for it
    Status(status::StatusArgs),
    /// Show what happened to leases
    History(history::HistoryArgs),
    /// Mark leases past their expiry as expired
    Cleanup(cleanup::CleanupArgs),
    /// Release every lease of an agent, on its behalf
    ForceRelease(force_release::ForceReleaseArgs),
    /// Read or change the workspace's settings
    Config(config::ConfigArgs),
    /// Run a command while holding leases, renewed until it exits
    Exec(exec::ExecArgs),
    /// Run the HTTP server (API, live events, metrics, dashboard) on this database
    Serve(serve::ServeArgs),
    /// Create, list or revoke the server's access tokens
    Token(token::TokenArgs),
    /// Serve the lease tools to an AI agent over MCP (stdio)
    Mcp(mcp::McpArgs),
    /// Install or run the git pre-commit guard against committing others' leased paths
    Guard(guard::GuardArgs),
}

/// Runs `command` and returns the process exit code.
pub async fn run(ctx: &Context, command: Command) -> CliResult<u8> {
    let done = |()| EXIT_OK;
    match command {
        Command::Acquire(args) => acquire::run(ctx, args).await.map(done),
        Command::Renew(args) => renew::run(ctx, args).await.map(done),
        Command::Release(args) => release::run(ctx, args).await.map(done),
        Command::List(args) => list::run(ctx, args).await.map(done),
        Command::Status(args) => status::run(ctx, args).await.map(done),
        Command::History(args) => history::run(ctx, args).await.map(done),
        Command::Cleanup(args) => cleanup::run(ctx, args).await.map(done),
        Command::ForceRelease(args) => force_release::run(ctx, args).await.map(done),
        Command::Config(args) => config::run(ctx, args).await.map(done),
        Command::Exec(args) => exec::run(ctx, args).await,
        Command::Serve(args) => serve::run(ctx, args).await.map(done),
        Command::Token(args) => token::run(ctx, args).await.map(done),
        Command::Mcp(args) => mcp::run(ctx, args).await.map(done),
        Command::Guard(args) => guard::run(ctx, args).await.map(done),
    }
}

/// Parses a lease id given on the command line.
pub fn parse_lease_id(text: &str) -> CliResult<Uuid> {
    Uuid::parse_str(text.trim())
        .map_err(|_| CliError::usage("lease_id", format!("{text:?} is not a lease id")))
}
