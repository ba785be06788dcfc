//! leasehold as a library: the embedded workload, the scale measurements (goal 5) and the
//! keep-alive cost (goal 6), all in this process over `open_sqlite`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use uuid::Uuid;

use leasehold::{
    Engine, LeaseAcquisitionRequest, LeaseError, LeaseGuard, LeaseManager, LeaseReleaseRequest,
    SqliteStore, SystemClock,
};

use crate::drive::{self, BoxError, Target};
use crate::stats::{Round, Samples};

pub type SqliteEngine = Arc<Engine<SqliteStore>>;

pub fn open(db: &Path) -> Result<SqliteEngine, BoxError> {
    Ok(Arc::new(leasehold::open_sqlite(db, Arc::new(SystemClock))?))
}

/// One task acting as one agent on the shared engine.
pub struct EmbeddedClient {
    pub engine: SqliteEngine,
    pub agent: String,
}

impl Target for EmbeddedClient {
    type Held = Uuid;

    async fn acquire(&mut self, path: &str) -> Result<Option<Uuid>, BoxError> {
        let request = LeaseAcquisitionRequest {
            agent_id: self.agent.clone(),
            paths: vec![path.to_string()],
            ttl_ms: Some(30_000),
            ..LeaseAcquisitionRequest::default()
        };
        match self.engine.acquire_lease(request).await {
            Ok(granted) => Ok(granted.leases.first().map(|lease| lease.id)),
            Err(LeaseError::AlreadyHeld { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    async fn release(&mut self, lease_id: Uuid) -> Result<(), BoxError> {
        self.engine
            .release_lease(LeaseReleaseRequest {
                lease_id,
                agent_id: self.agent.clone(),
            })
            .await?;
        Ok(())
    }
}

pub fn clients(engine: &SqliteEngine, count: usize) -> Vec<EmbeddedClient> {
    (0..count)
        .map(|k| EmbeddedClient {
            engine: engine.clone(),
            agent: format!("agent-{k}"),
        })
        .collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A batch of leases for [`prefill`]: paths `{prefix}/d{i/100}/f{i}.rs`, agents
/// `{agent_prefix}{i % agents}`, `expires_at` = now + `expires_in_ms` (negative: already past,
/// with status still `active`, as cleanup finds them).
pub struct Fill {
    pub count: usize,
    pub prefix: String,
    pub agent_prefix: &'static str,
    pub agents: usize,
    pub expires_in_ms: i64,
}

/// Inserts leases straight into `leases`, in leasehold's own schema (the file is created by
/// `SqliteStore::open` first), in one transaction. With `rebuild_indexes` the secondary indexes
/// of `leases` are dropped during the load and re-created from their stored definitions after
/// it, which builds them sorted instead of one row at a time (worth it for a large load into a
/// small table, not for a small load into a large one).
pub fn prefill(db: &Path, fills: &[Fill], rebuild_indexes: bool) -> Result<(), BoxError> {
    drop(SqliteStore::open(db, now_ms())?);
    let mut conn = Connection::open(db)?;
    conn.pragma_update(None, "cache_size", -262_144)?; // 256 MiB, for the index builds
    let tx = conn.transaction()?;
    let mut indexes: Vec<(String, String)> = Vec::new();
    if rebuild_indexes {
        indexes = tx
            .prepare(
                "SELECT name, sql FROM sqlite_master
                 WHERE type = 'index' AND tbl_name = 'leases' AND sql IS NOT NULL",
            )?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (name, _) in &indexes {
            tx.execute_batch(&format!("DROP INDEX {name}"))?;
        }
    }
    let mut token: i64 = tx.query_row("SELECT last_token FROM fencing", [], |r| r.get(0))?;
    let now = now_ms();
    {
        let mut insert = tx.prepare(
            "INSERT INTO leases (id, file_path, agent_id, mode, status, fencing_token, created_at,
                 expires_at, ttl_ms, renewal_count, max_renewals, updated_at, reason)
             VALUES (?1, ?2, ?3, 'exclusive', 'active', ?4, ?5, ?6, ?7, 0, NULL, ?5, NULL)",
        )?;
        for fill in fills {
            for i in 0..fill.count {
                token += 1;
                insert.execute(params![
                    // Time-ordered, as the ids leasehold makes.
                    Uuid::now_v7().to_string(),
                    format!("{}/d{}/f{i}.rs", fill.prefix, i / 100),
                    format!("{}{}", fill.agent_prefix, i % fill.agents.max(1)),
                    token,
                    now,
                    now + fill.expires_in_ms,
                    fill.expires_in_ms.max(1),
                ])?;
            }
        }
    }
    tx.execute("UPDATE fencing SET last_token = ?1", [token])?;
    for (_, sql) in &indexes {
        tx.execute_batch(sql)?;
    }
    tx.commit()?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
    Ok(())
}

/// Goal 5 at one size.
pub struct ScalePoint {
    pub active: usize,
    pub prefill: Duration,
    /// The workload with every client.
    pub round: Round,
    /// One client alone, for the cost of an acquisition without queueing.
    pub alone: Round,
    /// `get_agent_leases` for an agent holding 10 leases, 1,000 times.
    pub agent_listing: Samples,
    /// Each round's cleanup of `expired` leases already past their expiry: how many it
    /// expired and how long it took.
    pub cleanup: Vec<(u64, Duration)>,
}

/// Fills a fresh database with `active` live leases, runs the embedded workload on it (with
/// every client, then with one client for a third of the time), times
/// listing one agent's leases, and (when `expired` > 0) `cleanup_rounds` cleanups of `expired`
/// lapsed leases each.
pub async fn scale_point(
    dir: &Path,
    active: usize,
    expired: usize,
    cleanup_rounds: usize,
    client_count: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<ScalePoint, BoxError> {
    let db = dir.join(format!("scale-{active}.db"));
    let started = Instant::now();
    let filler = db.clone();
    tokio::task::spawn_blocking(move || {
        let fills = [
            Fill {
                count: active,
                prefix: "fill".into(),
                agent_prefix: "holder-",
                agents: 1000,
                expires_in_ms: 3_600_000,
            },
            // The agent whose listing is timed: 10 leases among everyone else's.
            Fill {
                count: 10,
                prefix: "lister".into(),
                agent_prefix: "lister",
                agents: 1,
                expires_in_ms: 3_600_000,
            },
        ];
        prefill(&filler, &fills, true).map_err(|e| e.to_string())
    })
    .await??;
    let prefill_time = started.elapsed();
    let engine = open(&db)?;
    let round = drive::drive(
        clients(&engine, client_count),
        drive::paths("scale", 100_000),
        warmup,
        measure,
    )
    .await;
    let alone = drive::drive(
        clients(&engine, 1),
        drive::paths("alone", 100_000),
        warmup / 2,
        measure / 3,
    )
    .await;
    // The kernel writes back what the rounds left now, not while the listing is timed: its
    // figures are tens of microseconds, and in a full run writeback beside them once made the
    // median 104 µs against 25–42 µs in the runs alone after it.
    tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await?;
    let mut agent_listing = Samples::default();
    for _ in 0..1_000 {
        let t0 = Instant::now();
        let held = engine.get_agent_leases("lister0").await?;
        agent_listing.push(t0.elapsed());
        if held.len() != 10 {
            return Err(format!("the lister holds {} leases, not 10", held.len()).into());
        }
    }
    // Each round adds `expired` lapsed leases and times their cleanup; the report takes the
    // median round, as for the throughput rounds.
    let mut cleanup = Vec::new();
    for round in 0..if expired > 0 { cleanup_rounds } else { 0 } {
        let filler = db.clone();
        tokio::task::spawn_blocking(move || {
            let lapsed = Fill {
                count: expired,
                prefix: format!("lapsed{round}"),
                agent_prefix: "lapsed-",
                agents: 1000,
                expires_in_ms: -1_000,
            };
            prefill(&filler, &[lapsed], false).map_err(|e| e.to_string())?;
            // The kernel writes the load back now, not while the cleanup is timed.
            unsafe { libc::sync() };
            Ok::<_, String>(())
        })
        .await??;
        let t0 = Instant::now();
        let count = engine.cleanup_expired_leases().await?;
        cleanup.push((count, t0.elapsed()));
    }
    // A large database leaves hundreds of megabytes for the kernel to write back: remove it and
    // wait for that here, so that the next measurement does not pay for it.
    drop(engine);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    tokio::task::spawn_blocking(|| unsafe { libc::sync() }).await?;
    Ok(ScalePoint {
        active,
        prefill: prefill_time,
        round,
        alone,
        agent_listing,
        cleanup,
    })
}

/// Goal 6's load: 10,000 leases, each renewed once per 10 s (a third of a 30 s TTL).
pub const GOAL_RENEWALS_PER_S: f64 = 1_000.0;

/// Goal 6: what keeping leases alive costs.
pub struct KeepAlive {
    pub leases: usize,
    pub ttl_ms: u64,
    pub window: Duration,
    /// Process CPU time (user + system) spent during the window.
    pub cpu: Duration,
    /// Renewals committed during the window (counted in the history).
    pub renewals: u64,
}

impl KeepAlive {
    /// CPU used, in percent of one core.
    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu.as_secs_f64() / self.window.as_secs_f64()
    }

    pub fn measured_rate(&self) -> f64 {
        self.renewals as f64 / self.window.as_secs_f64()
    }

    /// CPU scaled to the goal's load, 10,000 leases with a 30 s TTL renewed every 10 s, that is
    /// 1,000 renewals per second, assuming the cost is proportional to renewals per second.
    pub fn cpu_percent_at_goal(&self) -> f64 {
        let measured = self.measured_rate();
        if measured <= 0.0 {
            return f64::NAN;
        }
        self.cpu_percent() * GOAL_RENEWALS_PER_S / measured
    }
}

/// Process CPU time so far (user + system, every thread).
pub fn process_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Holds `leases` leases with `LeaseGuard`s, 100 leases per agent and guard, at `ttl_ms`, and
/// measures the process's CPU over one renewal period (a third of the TTL) in steady state: the
/// agents acquire one after the other, spread evenly over the first period, so that in the
/// second period each guard renews its leases at its own moment, once, as holders that came
/// and went over time would.
pub async fn keep_alive(dir: &Path, leases: usize, ttl_ms: u64) -> Result<KeepAlive, BoxError> {
    let db = dir.join("keepalive.db");
    let engine = open(&db)?;
    let manager: Arc<dyn LeaseManager> = engine.clone();
    let clock = Arc::new(SystemClock);
    let per_agent = 100;
    let agents = leases.div_ceil(per_agent);
    let period = Duration::from_millis(ttl_ms / 3);
    let start = tokio::time::Instant::now();
    let mut guards = Vec::new();
    for agent in 0..agents {
        tokio::time::sleep_until(start + period.mul_f64(agent as f64 / agents as f64)).await;
        let agent_id = format!("keeper-{agent}");
        let paths: Vec<String> = (0..per_agent.min(leases - agent * per_agent))
            .map(|i| format!("keep/a{agent}/f{i}.rs"))
            .collect();
        let granted = engine
            .acquire_lease(LeaseAcquisitionRequest {
                agent_id: agent_id.clone(),
                paths,
                ttl_ms: Some(ttl_ms),
                ..LeaseAcquisitionRequest::default()
            })
            .await?;
        guards.push(LeaseGuard::new(
            manager.clone(),
            clock.clone(),
            agent_id,
            granted.leases,
        ));
    }
    if tokio::time::Instant::now() > start + period {
        return Err(format!("acquiring {leases} leases took longer than a renewal period").into());
    }
    tokio::time::sleep_until(start + period).await;
    let renewed = |db: &Path| -> Result<u64, BoxError> {
        let conn = Connection::open(db)?;
        Ok(conn.query_row(
            "SELECT count(*) FROM lease_history WHERE event_type = 'renewed'",
            [],
            |r| r.get::<_, i64>(0),
        )? as u64)
    };
    let renewals_before = renewed(&db)?;
    let cpu_before = process_cpu();
    let wall_before = Instant::now();
    tokio::time::sleep(period).await;
    let cpu = process_cpu() - cpu_before;
    let window = wall_before.elapsed();
    let renewals = renewed(&db)? - renewals_before;
    for guard in guards {
        if let Some(reason) = guard.lost_reason() {
            return Err(format!("a kept lease was lost: {reason}").into());
        }
        guard.release().await?;
    }
    Ok(KeepAlive {
        leases,
        ttl_ms,
        window,
        cpu,
        renewals,
    })
}
