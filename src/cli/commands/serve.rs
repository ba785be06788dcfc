//! `leasehold serve`: run the HTTP server on the workspace's database until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::cli::error::{CliError, CliResult};
use crate::cli::Context;
use crate::clock::SystemClock;
use crate::server::{shutdown_signal, ServeConfig, Server, DEFAULT_LISTEN};

/// Arguments of `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address to listen on (port 0 picks a free one)
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Do not run background cleanup and history purge in this server
    #[arg(long)]
    pub no_background: bool,

    /// How often an idle event stream gets a heartbeat
    #[arg(long, value_name = "DURATION", default_value = "15s", value_parser = humantime::parse_duration, hide = true)]
    pub heartbeat: Duration,
}

/// Runs `serve`.
pub async fn run(ctx: &Context, args: ServeArgs) -> CliResult<()> {
    if ctx.global.server.is_some() {
        return Err(
            CliError::usage("server", "serve runs a server; it does not talk to one")
                .with_help("drop --server (or unset LEASEHOLD_SERVER)"),
        );
    }
    let database = ctx.workspace()?.database;
    let mut config = ServeConfig::new(database.clone());
    config.listen = args.listen;
    config.background = !args.no_background;
    config.heartbeat = args.heartbeat;
    let server = Server::bind(config, Arc::new(SystemClock))
        .await
        .map_err(|e| {
            CliError::internal(e.to_string())
                .with_help("is another server on that port? try --listen 127.0.0.1:0")
        })?;
    let url = format!("http://{}", server.local_addr());
    // Where it listens and how to get in, for the person who started it (stderr keeps stdout
    // clean for --json).
    eprintln!(
        "leasehold serve: listening on {url} (database {})",
        database.describe()
    );
    eprintln!("  dashboard:  {url}/");
    eprintln!("  a token:    leasehold token create --agent NAME [--admin]");
    eprintln!("  use it:     LEASEHOLD_SERVER={url} LEASEHOLD_TOKEN=... leasehold list");
    if ctx.out.is_json() {
        ctx.out.answer(
            &serde_json::json!({ "listening": url, "database": database.describe() }),
            String::new,
        )?;
    }
    server
        .run(shutdown_signal())
        .await
        .map_err(|e| CliError::internal(e.to_string()))
}
