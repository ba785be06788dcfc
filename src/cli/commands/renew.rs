//! `leasehold renew LEASE_ID`: extend one of your leases to now + TTL.

use clap::Args;

use super::parse_lease_id;
use crate::cli::duration::parse_duration_ms;
use crate::cli::error::CliResult;
use crate::cli::{connect, AgentArg, Context};
use crate::model::LeaseRenewalRequest;

/// Arguments of `renew`.
#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The lease to renew
    #[arg(value_name = "LEASE_ID")]
    pub lease_id: String,

    /// New time-to-live from now [default: the lease's own]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub ttl: Option<String>,

    #[command(flatten)]
    pub agent: AgentArg,
}

/// Runs `renew`.
pub async fn run(ctx: &Context, args: RenewArgs) -> CliResult<()> {
    let agent = ctx.agent(&args.agent)?;
    let lease_id = parse_lease_id(&args.lease_id)?;
    let ttl_ms = args
        .ttl
        .map(|ttl| parse_duration_ms("ttl", &ttl, false))
        .transpose()?;
    let manager = connect(&ctx.global).await?;
    let renewed = manager
        .renew_lease(LeaseRenewalRequest {
            lease_id,
            agent_id: agent,
            ttl_ms,
        })
        .await?;
    let lease = &renewed.lease;
    ctx.out.answer(&renewed, || {
        let limit = lease
            .max_renewals
            .map_or_else(String::new, |max| format!(" of {max}"));
        format!(
            "renewed {} until {} (renewal {}{limit})  lease {}",
            lease.file_path, lease.expires_at, lease.renewal_count, lease.id
        )
    })
}
