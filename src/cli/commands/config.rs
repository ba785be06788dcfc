//! `leasehold config list | get KEY | set KEY VALUE`: the workspace's settings.

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::cli::error::CliResult;
use crate::cli::output::table;
use crate::cli::{connect, CliError, Context};
use crate::settings::{Settings, SETTINGS};

/// Arguments of `config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// What to do with the settings.
    #[command(subcommand)]
    pub action: ConfigAction,
}

/// The `config` subcommands.
#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Every setting with its value and meaning
    List,
    /// One setting's value
    Get {
        /// The setting
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Change a setting; it takes effect on the next operation
    Set {
        /// The setting
        #[arg(value_name = "KEY")]
        key: String,
        /// Its new value
        #[arg(value_name = "VALUE", allow_hyphen_values = true)]
        value: String,
    },
}

/// Runs `config`.
pub async fn run(ctx: &Context, args: ConfigArgs) -> CliResult<()> {
    match args.action {
        ConfigAction::List => {
            let manager = connect(&ctx.global).await?;
            let settings = manager.get_settings().await?;
            ctx.out.answer(&json!({ "settings": settings }), || {
                let rows: Vec<Vec<String>> = settings
                    .to_pairs()
                    .into_iter()
                    .zip(SETTINGS)
                    .map(|((key, value), spec)| {
                        vec![key.to_string(), value, spec.description.to_string()]
                    })
                    .collect();
                table(Some(&["KEY", "VALUE", "DESCRIPTION"]), &rows)
            })
        }
        ConfigAction::Get { key } => {
            known(&key)?;
            let manager = connect(&ctx.global).await?;
            let settings = manager.get_settings().await?;
            answer_one(ctx, &settings, &key, false)
        }
        ConfigAction::Set { key, value } => {
            known(&key)?;
            let manager = connect(&ctx.global).await?;
            let settings = manager.update_setting(&key, &value).await?;
            answer_one(ctx, &settings, &key, true)
        }
    }
}

/// Refuses an unknown setting, listing the known ones.
fn known(key: &str) -> CliResult<()> {
    if SETTINGS.iter().any(|s| s.key == key) {
        return Ok(());
    }
    let keys: Vec<&str> = SETTINGS.iter().map(|s| s.key).collect();
    Err(
        CliError::usage("setting", format!("unknown setting {key:?}"))
            .with_help(format!("known settings: {}", keys.join(", "))),
    )
}

/// Answers `{"key": ..., "value": ...}` (the value typed), or in words the bare value (easy to
/// use in a shell), or `key = value` after a change.
fn answer_one(ctx: &Context, settings: &Settings, key: &str, changed: bool) -> CliResult<()> {
    let typed = serde_json::to_value(settings)
        .ok()
        .and_then(|all| all.get(key).cloned())
        .unwrap_or(Value::Null);
    let text = settings
        .to_pairs()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
        .unwrap_or_default();
    ctx.out
        .answer(&json!({ "key": key, "value": typed }), || match changed {
            true => format!("{key} = {text}"),
            false => text,
        })
}
