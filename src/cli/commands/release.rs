//! `leasehold release LEASE_ID...` and `leasehold release --path PATH...`: give your leases
//! back. Every lease is checked before any is released, so a refused request changes nothing.

use clap::Args;
use serde_json::json;

use super::acquire::lease_keys;
use super::parse_lease_id;
use crate::cli::error::{CliResult, EXIT_LOST};
use crate::cli::output::table;
use crate::cli::{connect, AgentArg, CliError, Context};
use crate::error::LeaseError;
use crate::manager::LeaseManager;
use crate::model::{Lease, LeaseQuery, LeaseReleaseRequest, LeaseStatus};

/// Arguments of `release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The leases to release
    #[arg(
        value_name = "LEASE_ID",
        required_unless_present = "path",
        conflicts_with = "path"
    )]
    pub lease_ids: Vec<String>,

    /// Release your own active leases on these paths instead (exact keys: a folder lease is
    /// released by naming the folder)
    #[arg(long = "path", id = "path", value_name = "PATH", num_args = 1..)]
    pub paths: Vec<String>,

    #[command(flatten)]
    pub agent: AgentArg,
}

/// Runs `release`.
pub async fn run(ctx: &Context, args: ReleaseArgs) -> CliResult<()> {
    let agent = ctx.agent(&args.agent)?;
    let mut ids = Vec::new();
    for text in &args.lease_ids {
        let id = parse_lease_id(text)?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let keys = if args.paths.is_empty() {
        Vec::new()
    } else {
        lease_keys(ctx, &args.paths)?
    };
    let manager = connect(&ctx.global).await?;
    let mut leases = Vec::new();
    for id in ids {
        leases.push(check_held(&agent, manager.get_lease(id).await?)?);
    }
    for key in &keys {
        for lease in own_leases_on(manager.as_ref(), &agent, key).await? {
            if !leases.iter().any(|l: &Lease| l.id == lease.id) {
                leases.push(lease);
            }
        }
    }
    let mut released = Vec::with_capacity(leases.len());
    for lease in leases {
        let request = LeaseReleaseRequest {
            lease_id: lease.id,
            agent_id: agent.clone(),
        };
        released.push(manager.release_lease(request).await?.lease);
    }
    ctx.out.answer(&json!({ "leases": released }), || {
        let rows: Vec<Vec<String>> = released
            .iter()
            .map(|l| {
                vec![
                    "released".into(),
                    l.file_path.clone(),
                    format!("lease {}", l.id),
                ]
            })
            .collect();
        table(None, &rows)
    })
}

/// Checks, before anything is released, that `agent` holds `lease` and that it is active.
fn check_held(agent: &str, lease: Lease) -> CliResult<Lease> {
    if lease.agent_id != agent {
        return Err(LeaseError::NotHolder {
            lease_id: lease.id,
            holder: lease.agent_id,
            agent_id: agent.to_string(),
        }
        .into());
    }
    if lease.status != LeaseStatus::Active {
        return Err(LeaseError::LeaseLost {
            lease_id: lease.id,
            status: lease.status,
        }
        .into());
    }
    Ok(lease)
}

/// The active leases of `agent` whose key is exactly `key`; an error when there are none.
async fn own_leases_on(
    manager: &dyn LeaseManager,
    agent: &str,
    key: &str,
) -> CliResult<Vec<Lease>> {
    let query = LeaseQuery {
        agent_id: Some(agent.to_string()),
        path: Some(key.to_string()),
        include_inactive: false,
        limit: None,
    };
    let leases: Vec<Lease> = manager
        .get_all_leases(query)
        .await?
        .into_iter()
        .filter(|l| l.file_path == key && l.status == LeaseStatus::Active)
        .collect();
    if leases.is_empty() {
        return Err(CliError::new(
            "not_found",
            EXIT_LOST,
            format!("{agent} holds no active lease on {key}"),
        )
        .with_field("path", key)
        .with_field("agent_id", agent)
        .with_help(format!(
            "`leasehold list --agent {agent}` shows your active leases"
        )));
    }
    Ok(leases)
}
