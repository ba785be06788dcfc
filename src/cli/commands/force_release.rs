//! `leasehold force-release --agent ID --reason TEXT`: release every lease of an agent on its
//! behalf (a crashed agent, a runaway job), and drop its waits.

use clap::Args;
use serde_json::json;

use super::cleanup::plural;
use crate::cli::error::CliResult;
use crate::cli::{connect, Context};

/// Arguments of `force-release`.
#[derive(Debug, Args)]
pub struct ForceReleaseArgs {
    /// The agent whose leases are released
    #[arg(
        long = "agent",
        id = "target_agent",
        value_name = "ID",
        required = true
    )]
    pub agent: String,

    /// Why (recorded in the history)
    #[arg(long, value_name = "TEXT", required = true)]
    pub reason: String,
}

/// Runs `force-release`.
pub async fn run(ctx: &Context, args: ForceReleaseArgs) -> CliResult<()> {
    let manager = connect(&ctx.global).await?;
    let released = manager
        .force_release_agent_leases(&args.agent, &args.reason)
        .await?;
    ctx.out.answer(&json!({ "released": released }), || {
        format!(
            "released {released} lease{} of {}",
            plural(released),
            args.agent
        )
    })
}
