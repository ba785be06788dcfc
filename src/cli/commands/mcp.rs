//! `leasehold mcp`: the MCP server over stdio ([`crate::mcp`]), acting as one agent on the
//! workspace's database or, with `--server`, on a `leasehold serve`. Stdout is the MCP channel;
//! everything else goes to stderr.

use std::sync::Arc;

use clap::Args;

use crate::cli::error::CliResult;
use crate::cli::{connect, AgentArg, CliError, Context, GlobalArgs};
use crate::clock::SystemClock;
use crate::error::LeaseError;
use crate::mcp::{serve_stdio, KeyMapper, LeaseTools};
use crate::remote::RemoteManager;

/// Arguments of `mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub agent: AgentArg,
}

/// Runs `mcp` until the client closes stdin.
pub async fn run(ctx: &Context, args: McpArgs) -> CliResult<()> {
    // Stdout carries MCP messages only: errors are reported on stderr, even with --json.
    ctx.out.hand_stdout_to_child();
    // Find the agent before opening a local database (so a missing agent creates nothing),
    // but after checking a server's arguments (so a missing token is reported as such).
    let remote = match ctx.global.server {
        Some(_) => Some(connect(&ctx.global).await?),
        None => None,
    };
    let agent = match acting_agent(ctx, &args.agent).await? {
        Some(agent) => agent,
        None => ctx.agent(&args.agent)?,
    };
    let workspace = ctx.workspace()?;
    let manager = match remote {
        Some(manager) => manager,
        None => connect(&ctx.global).await?,
    };
    // Tools name paths relative to the workspace root (or absolute inside it), wherever the
    // client started the server.
    let mut from_root = workspace;
    from_root.cwd = from_root.root.clone();
    let keys: KeyMapper = Arc::new(move |path: &str| {
        from_root.lease_key(path).map_err(|e| {
            let why = e
                .fields
                .get("why")
                .and_then(|w| w.as_str())
                .map(str::to_string);
            LeaseError::invalid("path", why.unwrap_or(e.message))
        })
    });
    let tools = LeaseTools::new(manager, agent.clone(), keys, Arc::new(SystemClock));
    tracing::info!(agent = %agent, "serving MCP on stdio");
    serve_stdio(tools)
        .await
        .map_err(|e| CliError::internal(format!("the MCP connection failed: {e}")))
}

/// The agent a command acts as: `--agent` (after or before the command) or `LEASEHOLD_AGENT`;
/// in remote mode without one, the token's agent (asked from the server). `None` when there is
/// none.
pub async fn acting_agent(ctx: &Context, local: &AgentArg) -> CliResult<Option<String>> {
    if let Ok(agent) = ctx.agent(local) {
        return Ok(Some(agent));
    }
    match &ctx.global {
        GlobalArgs {
            server: Some(url),
            token: Some(token),
            ..
        } => Ok(Some(
            RemoteManager::new(url, token)?.whoami().await?.agent_id,
        )),
        _ => Ok(None),
    }
}
