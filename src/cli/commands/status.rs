//! `leasehold status PATH`: whether a path is free or held, by whom and until when, and who
//! waits for it.

use clap::Args;

use crate::cli::error::CliResult;
use crate::cli::output::{or_dash, table, time_left};
use crate::cli::{connect, Context};
use crate::clock::{Clock, SystemClock};

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The file or folder to look at
    #[arg(value_name = "PATH")]
    pub path: String,
}

/// Runs `status`.
pub async fn run(ctx: &Context, args: StatusArgs) -> CliResult<()> {
    let key = ctx.workspace()?.lease_key(&args.path)?;
    let manager = connect(&ctx.global).await?;
    let status = manager.get_path_status(&key).await?;
    let now_ms = SystemClock.now_ms();
    ctx.out.answer(&status, || {
        let mut text = format!(
            "{}: {}\n",
            status.path,
            if status.locked { "held" } else { "free" }
        );
        let mut rows = Vec::new();
        for lease in &status.holders {
            rows.push(vec![
                "holder".to_string(),
                lease.agent_id.clone(),
                lease.file_path.clone(),
                lease.mode.to_string(),
                format!("token {}", or_dash(lease.fencing_token)),
                format!(
                    "until {} ({} left)",
                    lease.expires_at,
                    time_left(lease.expires_at, now_ms)
                ),
                format!("lease {}", lease.id),
            ]);
        }
        for (place, lease) in status.waiters.iter().enumerate() {
            rows.push(vec![
                format!("waiter {}", place + 1),
                lease.agent_id.clone(),
                lease.file_path.clone(),
                lease.mode.to_string(),
                "queued".to_string(),
                format!("since {}", lease.created_at),
                format!("lease {}", lease.id),
            ]);
        }
        for line in table(None, &rows).lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
        text
    })
}
