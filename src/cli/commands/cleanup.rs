//! `leasehold cleanup`: mark leases past their expiry `expired` (expired leases block nobody
//! either way; this tidies the table and writes their history).

use clap::Args;
use serde_json::json;

use crate::cli::error::CliResult;
use crate::cli::{connect, Context};

/// Arguments of `cleanup` (none).
#[derive(Debug, Args)]
pub struct CleanupArgs {}

/// Runs `cleanup`.
pub async fn run(ctx: &Context, _args: CleanupArgs) -> CliResult<()> {
    let manager = connect(&ctx.global).await?;
    let expired = manager.cleanup_expired_leases().await?;
    ctx.out.answer(&json!({ "expired": expired }), || {
        format!("marked {expired} expired lease{}", plural(expired))
    })
}

/// `s` unless there is exactly one.
pub fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
