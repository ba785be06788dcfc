//! `leasehold acquire PATH...`: take leases on every path or none, waiting in the queue with
//! `--wait`.

use std::time::{Duration, Instant};

use clap::Args;

use crate::cli::duration::{parse_duration_ms, Wait};
use crate::cli::error::CliResult;
use crate::cli::output::{or_dash, table};
use crate::cli::signals::{interrupted, Signals};
use crate::cli::{connect, AgentArg, CliError, Context};
use crate::manager::LeaseManager;
use crate::model::{Lease, LeaseAcquisitionRequest, LeaseAcquisitionResponse, LeaseMode};

/// Arguments of `acquire`.
#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// Files or folders to lease; a trailing / or an existing directory makes a folder lease
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,

    /// Time-to-live, e.g. 30s, 10m, 1h30m [default: the default_ttl_seconds setting]
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub ttl: Option<String>,

    /// Take shared leases (they conflict only with exclusive ones)
    #[arg(long)]
    pub shared: bool,

    /// Wait in the queue while a path is held: up to DURATION, or the acquisition_timeout_ms
    /// setting when none is given
    #[arg(
        long,
        value_name = "DURATION",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    pub wait: Option<String>,

    /// How many times each lease may be renewed [default: the max_renewals setting]
    #[arg(long, value_name = "N")]
    pub max_renewals: Option<u32>,

    /// Why you take the leases (kept with them and in the history)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,

    #[command(flatten)]
    pub agent: AgentArg,
}

/// Runs `acquire`.
pub async fn run(ctx: &Context, args: AcquireArgs) -> CliResult<()> {
    let agent = ctx.agent(&args.agent)?;
    let mut paths = args.paths;
    let wait = Wait::from_arg(args.wait, &mut paths)?;
    let ttl_ms = args
        .ttl
        .map(|ttl| parse_duration_ms("ttl", &ttl, false))
        .transpose()?;
    let request = LeaseAcquisitionRequest {
        agent_id: agent,
        paths: lease_keys(ctx, &paths)?,
        mode: mode(args.shared),
        ttl_ms,
        wait_ms: None,
        max_renewals: args.max_renewals,
        reason: args.reason,
    };
    let manager = connect(&ctx.global).await?;
    let mut signals = match wait {
        Wait::No => None,
        _ => Some(Signals::catch()?),
    };
    let response = take(manager.as_ref(), request, wait, signals.as_mut()).await?;
    ctx.out.answer(&response, || {
        let rows: Vec<Vec<String>> = response.leases.iter().map(lease_line).collect();
        table(None, &rows)
    })
}

/// The lease keys for the command line's paths; at least one is required.
pub fn lease_keys(ctx: &Context, paths: &[String]) -> CliResult<Vec<String>> {
    if paths.is_empty() {
        return Err(CliError::usage("paths", "at least one path is required"));
    }
    ctx.workspace()?.lease_keys(paths)
}

/// `--shared` as a mode.
pub fn mode(shared: bool) -> LeaseMode {
    if shared {
        LeaseMode::Shared
    } else {
        LeaseMode::Exclusive
    }
}

/// Acquires with the wait `wait` asks for (reading `acquisition_timeout_ms` for a bare
/// `--wait`). When `signals` is given, a termination signal abandons the wait: the request
/// leaves the queue and the error says so.
pub async fn take(
    manager: &dyn LeaseManager,
    mut request: LeaseAcquisitionRequest,
    wait: Wait,
    signals: Option<&mut Signals>,
) -> CliResult<LeaseAcquisitionResponse> {
    request.wait_ms = match wait {
        Wait::No => None,
        Wait::For(ms) => Some(ms),
        Wait::Default => Some(manager.get_settings().await?.acquisition_timeout_ms),
    };
    let Some(signals) = signals else {
        return Ok(manager.acquire_lease(request).await?);
    };
    let tasks_before = alive_tasks();
    // The select completes (dropping the request if a signal came first) before the outcome is
    // looked at.
    let outcome = tokio::select! {
        result = manager.acquire_lease(request) => Ok(result),
        signo = signals.recv() => Err(signo),
    };
    match outcome {
        Ok(result) => Ok(result?),
        Err(signo) => {
            // Dropping the request makes the engine spawn a task that fails its queue entries;
            // let it finish, so the waiter has left the queue before the process exits.
            let deadline = Instant::now() + Duration::from_secs(3);
            while alive_tasks() > tasks_before && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Err(interrupted(signo, "while waiting for the leases"))
        }
    }
}

/// How many tasks the runtime is running.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// One lease as a row: what was taken, with its token, expiry and id.
fn lease_line(lease: &Lease) -> Vec<String> {
    vec![
        "acquired".to_string(),
        lease.file_path.clone(),
        lease.mode.to_string(),
        format!("token {}", or_dash(lease.fencing_token)),
        format!("until {}", lease.expires_at),
        format!("lease {}", lease.id),
    ]
}
