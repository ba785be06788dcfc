//! `leasehold list`: the active leases (every lease with `--all`) as a table with time left.

use clap::Args;
use serde_json::json;

use crate::cli::error::CliResult;
use crate::cli::output::{or_dash, table, time_left};
use crate::cli::{connect, Context};
use crate::clock::{Clock, SystemClock};
use crate::model::LeaseQuery;

/// Arguments of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this agent's leases
    #[arg(long = "agent", id = "filter_agent", value_name = "ID")]
    pub agent: Option<String>,

    /// Only leases overlapping this path (on it, on a folder above it, or below it)
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,

    /// Every lease, whatever its status (released, expired, pending waits, failed waits)
    #[arg(long)]
    pub all: bool,
}

/// Runs `list`.
pub async fn run(ctx: &Context, args: ListArgs) -> CliResult<()> {
    let path = match &args.path {
        Some(path) => Some(ctx.workspace()?.lease_key(path)?),
        None => None,
    };
    let manager = connect(&ctx.global).await?;
    let leases = manager
        .get_all_leases(LeaseQuery {
            agent_id: args.agent,
            path,
            include_inactive: args.all,
            limit: None,
        })
        .await?;
    let now_ms = SystemClock.now_ms();
    ctx.out.answer(&json!({ "leases": leases }), || {
        if leases.is_empty() {
            return if args.all {
                "no leases"
            } else {
                "no active leases"
            }
            .to_string();
        }
        let mut header = vec!["PATH", "MODE", "HOLDER", "TOKEN", "LEFT", "ID"];
        if args.all {
            header.insert(4, "STATUS");
        }
        let rows: Vec<Vec<String>> = leases
            .iter()
            .map(|lease| {
                let mut row = vec![
                    lease.file_path.clone(),
                    lease.mode.to_string(),
                    lease.agent_id.clone(),
                    or_dash(lease.fencing_token),
                    time_left(lease.expires_at, now_ms),
                    lease.id.to_string(),
                ];
                if args.all {
                    row.insert(4, lease.status.to_string());
                    if lease.status != crate::model::LeaseStatus::Active {
                        row[5] = "-".to_string();
                    }
                }
                row
            })
            .collect();
        table(Some(&header), &rows)
    })
}
