//! `leasehold-stress`: hammers one database from many processes, then checks the record.
//!
//! `leasehold-stress worker --db FILE --agent NAME` contends for a few paths with short TTLs,
//! renewals, waits, multi-path requests and abandoned (never released) leases; run several at
//! once. `leasehold-stress check --db FILE` then proves from the history and fencing tokens that
//! no two conflicting holds overlapped. Use it to test a filesystem before sharing a database
//! file on it.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use leasehold::{
    HistoryQuery, LeaseAcquisitionRequest, LeaseError, LeaseManager, LeaseMode, LeaseQuery,
    LeaseReleaseRequest, LeaseRenewalRequest, SystemClock,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(about = "Contend for leases from many processes and check that exclusion held")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Contend for leases on the database.
    Worker {
        /// The SQLite database file.
        #[arg(long)]
        db: PathBuf,
        /// This worker's agent id.
        #[arg(long)]
        agent: String,
        /// The paths to contend for, comma-separated.
        #[arg(long, default_value = "a.rs,b.rs,dir/,dir/c.rs")]
        paths: String,
        /// How many acquisitions to attempt.
        #[arg(long, default_value_t = 40)]
        iterations: u32,
        /// The TTL of each lease, in milliseconds.
        #[arg(long, default_value_t = 300)]
        ttl_ms: u64,
        /// How long a request waits in the queue, in milliseconds.
        #[arg(long, default_value_t = 3_000)]
        wait_ms: u64,
        /// Seed for the random choices.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Check the record of a database: exit 1 and print the violations if exclusion broke.
    Check {
        /// The SQLite database file.
        #[arg(long)]
        db: PathBuf,
    },
}

#[derive(Default, serde::Serialize)]
struct Tally {
    /// Distinct leases granted (a multi-path request counts each path).
    granted: u32,
    conflicts: u32,
    timeouts: u32,
    deadlocks: u32,
    renewed: u32,
    released: u32,
    abandoned: u32,
    lost: u32,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(2)
        }
    }
}

async fn run(command: Command) -> Result<ExitCode, LeaseError> {
    match command {
        Command::Worker {
            db,
            agent,
            paths,
            iterations,
            ttl_ms,
            wait_ms,
            seed,
        } => {
            let manager = leasehold::open_sqlite(&db, Arc::new(SystemClock))?;
            let paths: Vec<String> = paths.split(',').map(str::to_string).collect();
            let tally = work(&manager, &agent, &paths, iterations, ttl_ms, wait_ms, seed).await?;
            println!("{}", serde_json::to_string(&tally).unwrap_or_default());
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { db } => {
            let manager = leasehold::open_sqlite(&db, Arc::new(SystemClock))?;
            let leases = manager
                .get_all_leases(LeaseQuery {
                    include_inactive: true,
                    ..LeaseQuery::default()
                })
                .await?;
            let events = manager.get_history(HistoryQuery::default()).await?;
            let holds = leasehold::audit::holds(&leases, &events).len();
            let violations = leasehold::audit::check(&leases, &events);
            let report = serde_json::json!({ "holds": holds, "violations": violations });
            println!("{report}");
            Ok(if violations.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

async fn work(
    manager: &dyn LeaseManager,
    agent: &str,
    paths: &[String],
    iterations: u32,
    ttl_ms: u64,
    wait_ms: u64,
    seed: u64,
) -> Result<Tally, LeaseError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    // An idempotent re-acquire of an abandoned lease returns the same lease: count leases, not
    // answers.
    let mut granted = std::collections::HashSet::new();
    for _ in 0..iterations {
        let mut chosen = vec![paths[rng.gen_range(0..paths.len())].clone()];
        if rng.gen_bool(0.2) {
            let other = paths[rng.gen_range(0..paths.len())].clone();
            if !chosen.contains(&other) {
                chosen.push(other);
            }
        }
        let request = LeaseAcquisitionRequest {
            agent_id: agent.to_string(),
            paths: chosen,
            mode: if rng.gen_bool(0.2) {
                LeaseMode::Shared
            } else {
                LeaseMode::Exclusive
            },
            ttl_ms: Some(ttl_ms),
            wait_ms: rng.gen_bool(0.8).then_some(wait_ms),
            max_renewals: None,
            reason: Some("stress".into()),
        };
        let leases = match manager.acquire_lease(request).await {
            Ok(granted) => granted.leases,
            Err(LeaseError::AlreadyHeld { .. }) => {
                tally.conflicts += 1;
                continue;
            }
            Err(LeaseError::WaitTimeout { .. }) => {
                tally.timeouts += 1;
                continue;
            }
            Err(LeaseError::Deadlock { .. }) => {
                tally.deadlocks += 1;
                continue;
            }
            Err(other) => return Err(other),
        };
        granted.extend(leases.iter().map(|l| l.id));
        tally.granted = granted.len() as u32;
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..5))).await;
        if rng.gen_bool(0.2) {
            for lease in &leases {
                let renewal = LeaseRenewalRequest {
                    lease_id: lease.id,
                    agent_id: agent.into(),
                    ttl_ms: None,
                };
                match manager.renew_lease(renewal).await {
                    Ok(_) => tally.renewed += 1,
                    Err(LeaseError::LeaseLost { .. }) => tally.lost += 1,
                    Err(other) => return Err(other),
                }
            }
        }
        if rng.gen_bool(0.05) {
            // A holder that dies: its lease must expire by itself.
            tally.abandoned += 1;
            continue;
        }
        for lease in leases {
            match manager
                .release_lease(LeaseReleaseRequest {
                    lease_id: lease.id,
                    agent_id: agent.into(),
                })
                .await
            {
                Ok(_) => tally.released += 1,
                Err(LeaseError::LeaseLost { .. }) => tally.lost += 1,
                Err(other) => return Err(other),
            }
        }
    }
    Ok(tally)
}
