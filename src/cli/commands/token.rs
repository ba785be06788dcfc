//! `leasehold token create | list | revoke`: the server's access tokens, in the workspace's
//! database. A token's secret is printed once, at creation; only its hash is kept.

use clap::{Args, Subcommand};
use serde_json::json;

use crate::cli::error::{CliError, CliResult};
use crate::cli::output::{or_dash, table};
use crate::cli::Context;
use crate::model::TokenInfo;
use crate::server::{token_create, token_list, token_revoke};

/// Arguments of `token`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// What to do with tokens.
    #[command(subcommand)]
    pub action: TokenAction,
}

/// The token actions.
#[derive(Debug, Subcommand)]
pub enum TokenAction {
    /// Create a token for an agent and print it (once)
    Create {
        /// The agent the token acts as
        #[arg(long = "agent", id = "token_agent", value_name = "ID", required = true)]
        agent: String,
        /// Let the token force-release, clean up and change settings
        #[arg(long)]
        admin: bool,
    },
    /// List tokens (never their secrets)
    List,
    /// Revoke a token by its id (tok_...)
    Revoke {
        /// The token's id, as `token list` shows it
        id: String,
    },
}

/// Runs `token`.
pub async fn run(ctx: &Context, args: TokenArgs) -> CliResult<()> {
    if ctx.global.server.is_some() {
        return Err(CliError::usage(
            "server",
            "tokens are managed on the server's database, not through the server",
        )
        .with_help("run `leasehold token ...` where the database is (drop --server)"));
    }
    let database = ctx.workspace()?.database;
    // The token table is opened with blocking drivers.
    let outcome = tokio::task::spawn_blocking(move || match args.action {
        TokenAction::Create { agent, admin } => token_create(database, &agent, admin).map(|t| {
            let human = format!(
                "{}\n\ncreated token {} for agent {}{}; it is shown only this once",
                t.token,
                t.info.id,
                t.info.agent_id,
                if t.info.admin { " (admin)" } else { "" }
            );
            (serde_json::to_value(&t).unwrap_or_default(), human)
        }),
        TokenAction::List => token_list(database).map(|tokens| {
            let human = describe(&tokens);
            (json!({ "tokens": tokens }), human)
        }),
        TokenAction::Revoke { id } => token_revoke(database, &id).map(|t| {
            let human = format!("revoked token {} of agent {}", t.id, t.agent_id);
            (serde_json::to_value(&t).unwrap_or_default(), human)
        }),
    })
    .await
    .map_err(|e| CliError::internal(format!("token task failed: {e}")))??;
    let (document, human) = outcome;
    ctx.out.answer(&document, || human)
}

fn describe(tokens: &[TokenInfo]) -> String {
    if tokens.is_empty() {
        return "no tokens; create one with `leasehold token create --agent NAME`".to_string();
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.agent_id.clone(),
                if t.admin { "admin".into() } else { "-".into() },
                t.created_at.to_string(),
                or_dash(t.last_used_at),
                or_dash(t.revoked_at),
            ]
        })
        .collect();
    table(
        Some(&["ID", "AGENT", "ADMIN", "CREATED", "LAST USED", "REVOKED"]),
        &rows,
    )
}
