//! `leasehold history`: the most recent lease events, oldest first.

use clap::Args;
use serde_json::json;

use crate::cli::duration::parse_duration_ms;
use crate::cli::error::CliResult;
use crate::cli::output::{or_dash, table};
use crate::cli::{connect, CliError, Context};
use crate::clock::{Clock, SystemClock};
use crate::model::HistoryQuery;
use crate::time::Timestamp;

/// Arguments of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Only events on paths overlapping this one
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,

    /// Only this agent's events
    #[arg(long = "agent", id = "filter_agent", value_name = "ID")]
    pub agent: Option<String>,

    /// Only events since this time: RFC 3339 (2026-01-31T12:00:00Z) or a duration ago (10m)
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,

    /// At most this many events: the most recent ones
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub limit: u32,
}

/// Runs `history`.
pub async fn run(ctx: &Context, args: HistoryArgs) -> CliResult<()> {
    if args.limit == 0 {
        return Err(CliError::usage("limit", "must be at least 1"));
    }
    let since = args.since.as_deref().map(parse_since).transpose()?;
    let path = match &args.path {
        Some(path) => Some(ctx.workspace()?.lease_key(path)?),
        None => None,
    };
    let manager = connect(&ctx.global).await?;
    let mut events = manager
        .get_history(HistoryQuery {
            path,
            agent_id: args.agent,
            since,
            until: None,
            after_id: None,
            limit: Some(args.limit),
            newest_first: true,
        })
        .await?;
    events.reverse();
    ctx.out.answer(&json!({ "events": events }), || {
        if events.is_empty() {
            return "no events".to_string();
        }
        let rows: Vec<Vec<String>> = events
            .iter()
            .map(|e| {
                vec![
                    e.event_at.to_string(),
                    e.event_type.to_string(),
                    e.file_path.clone(),
                    e.agent_id.clone(),
                    or_dash(e.fencing_token),
                    e.lease_id.to_string(),
                    e.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        table(
            Some(&["TIME", "EVENT", "PATH", "AGENT", "TOKEN", "LEASE", "REASON"]),
            &rows,
        )
    })
}

/// An RFC 3339 time, or a duration meaning that long ago.
fn parse_since(text: &str) -> CliResult<Timestamp> {
    if let Some(time) = Timestamp::parse_rfc3339(text.trim()) {
        return Ok(time);
    }
    let ago_ms = parse_duration_ms("since", text, true).map_err(|e| {
        e.with_help("write an RFC 3339 time (2026-01-31T12:00:00Z) or a duration ago (10m, 2h)")
    })?;
    Ok(Timestamp(
        SystemClock.now_ms().saturating_sub(ago_ms as i64),
    ))
}
