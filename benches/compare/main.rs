//! The comparison benchmark of issue 7: the same lock workload — 64 concurrent clients, each
//! acquiring then releasing random paths out of 100,000 — against Redis, etcd, leasehold's HTTP
//! server and leasehold as a library, with the bare-SQLite floor beside them; then hand-off
//! latency, behaviour at a million leases, and the cost of keep-alives. It prints one table and
//! the goals as met or not met; it asserts nothing.
//!
//! `scripts/bench.sh` builds it, starts Redis, etcd and PostgreSQL, and runs it; see
//! BENCHMARKS.md for what each figure means. Directly: `cargo bench --bench compare -- --help`.
//! Run without any argument (as `cargo test --all-targets` does) it makes a short smoke run of
//! leasehold's parts instead.

mod drive;
mod embedded;
mod etcd;
mod floor;
mod http_floor;
mod postgres;
mod redis;
mod server;
mod stats;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

use drive::BoxError;
use stats::{fmt_duration, fmt_rate, Measurement};

/// Every workload is optional; by default all those whose services were given run.
#[derive(Debug, Parser)]
#[command(name = "compare", about = "leasehold against Redis and etcd (issue 7)")]
struct Args {
    /// Redis to measure, as HOST:PORT (skipped when absent).
    #[arg(long)]
    redis: Option<String>,
    /// etcd's client endpoint to measure, as HOST:PORT (skipped when absent).
    #[arg(long)]
    etcd: Option<String>,
    /// PostgreSQL to measure, as a connection URL (skipped when absent).
    #[arg(long)]
    postgres: Option<String>,
    /// Run only these parts, comma-separated: redis, etcd, postgres, server, httpfloor,
    /// embedded, floor, handoff, scale, keepalive; `leasehold` means every part but redis, etcd
    /// and postgres.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Concurrent clients per target.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// How many distinct paths clients pick from at random.
    #[arg(long, default_value_t = 100_000)]
    paths: usize,
    /// Rounds per target; targets take turns within a round, and the table shows the median
    /// round's rate and the percentiles over all rounds.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Measured time per target and round, in milliseconds.
    #[arg(long, default_value_t = 3000)]
    measure_ms: u64,
    /// Unmeasured warm-up before each measurement, in milliseconds.
    #[arg(long, default_value_t = 500)]
    warmup_ms: u64,
    /// Hand-offs timed through the server.
    #[arg(long, default_value_t = 200)]
    handoffs: usize,
    /// Active leases in the small and the large scale database.
    #[arg(long, default_value_t = 1_000)]
    scale_small: usize,
    #[arg(long, default_value_t = 1_000_000)]
    scale_large: usize,
    /// Expired leases for the timed cleanup (in the large scale database).
    #[arg(long, default_value_t = 100_000)]
    cleanup_expired: usize,
    /// Cleanups timed, each of `cleanup_expired` new lapsed leases; the median counts.
    #[arg(long, default_value_t = 3)]
    cleanup_rounds: usize,
    /// Leases kept alive by `LeaseGuard`s, and their TTL in milliseconds; the CPU is measured
    /// over one renewal period (a third of the TTL).
    #[arg(long, default_value_t = 10_000)]
    keepalive_leases: usize,
    #[arg(long, default_value_t = 30_000)]
    keepalive_ttl_ms: u64,
    /// A quick run of every part with small sizes, for CI (figures meaningless).
    #[arg(long)]
    smoke: bool,
    /// Internal: run a leasehold server on this database and print its address.
    #[arg(long, hide = true, value_name = "DB")]
    serve_child: Option<PathBuf>,
    /// Internal: run the HTTP floor's server and print its address.
    #[arg(long, hide = true)]
    http_floor_child: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Args {
    fn apply_smoke(&mut self) {
        if !self.smoke {
            return;
        }
        self.clients = self.clients.min(8);
        self.paths = self.paths.min(1_000);
        self.rounds = 1;
        self.measure_ms = 300;
        self.warmup_ms = 100;
        self.handoffs = 10;
        self.scale_small = 100;
        self.scale_large = 2_000;
        self.cleanup_expired = 1_000;
        self.cleanup_rounds = 1;
        self.keepalive_leases = 200;
        // Renewals every 2 s: short, yet with room for a slow CI machine.
        self.keepalive_ttl_ms = 6_000;
    }

    fn wants(&self, part: &str) -> bool {
        self.only.is_empty()
            || self.only.iter().any(|o| o == part)
            || (self.only.iter().any(|o| o == "leasehold")
                && !matches!(part, "redis" | "etcd" | "postgres"))
    }

    fn warmup(&self) -> Duration {
        Duration::from_millis(self.warmup_ms)
    }

    fn measure(&self) -> Duration {
        Duration::from_millis(self.measure_ms)
    }
}

/// The cleanup round of median time (the slower of the middle two), if any ran.
fn median_cleanup(rounds: &[(u64, Duration)]) -> Option<(u64, Duration)> {
    let mut sorted = rounds.to_vec();
    sorted.sort_by_key(|(_, took)| *took);
    sorted.get(sorted.len() / 2).copied()
}

const PARTS: &[&str] = &[
    "redis",
    "etcd",
    "postgres",
    "server",
    "httpfloor",
    "embedded",
    "floor",
    "handoff",
    "scale",
    "keepalive",
];

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs every bench target too, with
    // no argument at all. That run is the test suite's smoke run of this harness, so that it
    // cannot rot: leasehold's parts only (no other service needed), for a moment each.
    let run_by_cargo_test = std::env::args_os().len() == 1;
    let mut args = Args::parse();
    if run_by_cargo_test {
        eprintln!(
            "compare: run without arguments (as by `cargo test`): a smoke run of leasehold's \
             parts; for figures, `scripts/bench.sh` or `cargo bench --bench compare`"
        );
        args.smoke = true;
        args.only = vec!["leasehold".to_string()];
    }
    if args.serve_child.is_some() || args.http_floor_child {
        // The runtime `leasehold serve` runs on (`src/cli/mod.rs`): one thread for the HTTP
        // side, beside the store's writer and checkpoint threads. The HTTP floor gets the same.
        let served = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(BoxError::from)
            .and_then(|runtime| match args.serve_child.take() {
                Some(db) => runtime.block_on(server::serve_child(db)),
                None => runtime.block_on(http_floor::serve_child()),
            });
        if let Err(error) = served {
            eprintln!("error: a server child of the bench failed: {error}");
            std::process::exit(1);
        }
        return;
    }
    if let Some(unknown) = args
        .only
        .iter()
        .find(|o| !PARTS.contains(&o.as_str()) && *o != "leasehold")
    {
        eprintln!(
            "error: --only {unknown}: not one of {} or leasehold",
            PARTS.join(", ")
        );
        std::process::exit(2);
    }
    args.apply_smoke();
    let measured = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BoxError::from)
        .and_then(|runtime| runtime.block_on(run(&args)));
    if let Err(error) = measured {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

/// Everything measured, for the table and the goal checks.
#[derive(Default)]
struct Report {
    measurements: Vec<Measurement>,
    server_memory_kib: Option<(u64, u64)>,
    handoff: Option<server::Handoff>,
    scale: Vec<embedded::ScalePoint>,
    keepalive: Option<embedded::KeepAlive>,
}

async fn run(args: &Args) -> Result<(), BoxError> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    let paths = drive::paths("src", args.paths);
    let (warmup, measure) = (args.warmup(), args.measure());
    eprintln!(
        "compare: {} clients, {} paths, {} round(s) of {} ms (+{} ms warm-up) per target",
        args.clients, args.paths, args.rounds, args.measure_ms, args.warmup_ms
    );

    let redis = args.redis.as_deref().filter(|_| args.wants("redis"));
    let etcd = args.etcd.as_deref().filter(|_| args.wants("etcd"));
    let pg = args.postgres.as_deref().filter(|_| args.wants("postgres"));
    if let Some(url) = pg {
        let url = url.to_string();
        tokio::task::spawn_blocking(move || postgres::prepare(&url).map_err(|e| e.to_string()))
            .await??;
    }
    for (part, given) in [
        ("redis", redis.is_some()),
        ("etcd", etcd.is_some()),
        ("postgres", pg.is_some()),
    ] {
        if !given && args.only.iter().any(|o| o == part) {
            return Err(format!("--only {part} needs --{part}").into());
        }
    }

    let server = if args.wants("server") || args.wants("handoff") {
        let server = server::ServerProcess::start(&dir.path().join("server.db"))?;
        eprintln!(
            "compare: leasehold server (pid {}) on {}",
            server.pid(),
            server.addr()
        );
        Some(server)
    } else {
        None
    };
    let server_tokens = match &server {
        Some(server) if args.wants("server") => (0..args.clients)
            .map(|k| server.token(&format!("agent-{k}")))
            .collect::<Result<Vec<_>, _>>()?,
        _ => Vec::new(),
    };
    let http_floor = if args.wants("httpfloor") {
        let floor = server::ChildServer::start(&[std::ffi::OsStr::new("--http-floor-child")])?;
        eprintln!(
            "compare: HTTP floor (pid {}) on {}",
            floor.pid(),
            floor.addr
        );
        Some(floor)
    } else {
        None
    };
    let embedded = if args.wants("embedded") {
        Some(embedded::open(&dir.path().join("embedded.db"))?)
    } else {
        None
    };
    let floor_conns = if args.wants("floor") {
        let mut conns = Vec::new();
        for name in ["floor-1tx", "floor-batched", "floor-pairs"] {
            conns.push(Arc::new(Mutex::new(floor::open(
                &dir.path().join(format!("{name}.db")),
            )?)));
        }
        conns
    } else {
        Vec::new()
    };

    let mut report = Report::default();
    let mut m_redis = Measurement::new("Redis (SET NX PX + DEL)", "pair");
    let mut m_etcd = Measurement::new("etcd (grant + txn + revoke)", "pair");
    let mut m_pg = Measurement::new("PostgreSQL (upsert + delete)", "pair");
    let mut m_server = Measurement::new("leasehold server (HTTP, SQLite)", "pair");
    let mut m_http_floor = Measurement::new("HTTP floor (axum, same JSON, no leases)", "pair");
    let mut m_embedded = Measurement::new("leasehold embedded (library, SQLite)", "pair");
    let mut m_floor_1tx = Measurement::new("SQLite floor, 1 tx per acquire", "acquire");
    let mut m_floor_batched = Measurement::new(
        format!("SQLite floor, up to {} acquires per tx", args.clients),
        "acquire",
    );
    let mut m_floor_pairs = Measurement::new("SQLite floor, pairs (2 tx)", "pair");
    let mut batch_stats = (0u64, 0u64);

    for round in 0..args.rounds {
        eprintln!("compare: round {} of {}", round + 1, args.rounds);
        if let Some(addr) = redis {
            let mut clients = Vec::new();
            for k in 0..args.clients {
                clients.push(redis::RedisClient::connect(addr, k).await?);
            }
            m_redis.add(drive::drive(clients, paths.clone(), warmup, measure).await);
        }
        if let Some(addr) = etcd {
            let mut clients = Vec::new();
            for k in 0..args.clients {
                clients.push(etcd::EtcdClient::connect(addr, k).await?);
            }
            m_etcd.add(drive::drive(clients, paths.clone(), warmup, measure).await);
        }
        if let Some(url) = pg {
            let (url, paths, clients) = (url.to_string(), paths.clone(), args.clients);
            let round = tokio::task::spawn_blocking(move || -> Result<_, String> {
                let clients = (0..clients)
                    .map(|k| postgres::PgClient::connect(&url, k))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())?;
                Ok(drive::drive_threads(clients, paths, warmup, measure))
            })
            .await??;
            m_pg.add(round);
        }
        if let (Some(server), true) = (&server, args.wants("server")) {
            let mut clients = Vec::new();
            for token in &server_tokens {
                clients.push(server::HttpClient::connect(server.addr(), token).await?);
            }
            m_server.add(drive::drive(clients, paths.clone(), warmup, measure).await);
        }
        if let Some(floor) = &http_floor {
            let mut clients = Vec::new();
            for k in 0..args.clients {
                clients.push(server::HttpClient::connect(floor.addr, &format!("floor-{k}")).await?);
            }
            m_http_floor.add(drive::drive(clients, paths.clone(), warmup, measure).await);
        }
        if let Some(engine) = &embedded {
            let clients = embedded::clients(engine, args.clients);
            m_embedded.add(drive::drive(clients, paths.clone(), warmup, measure).await);
        }
        if !floor_conns.is_empty() {
            for (conn, shape, m) in [
                (
                    &floor_conns[0],
                    floor::Shape::OneTxPerAcquire,
                    &mut m_floor_1tx,
                ),
                (&floor_conns[1], floor::Shape::Batched, &mut m_floor_batched),
                (&floor_conns[2], floor::Shape::Pairs, &mut m_floor_pairs),
            ] {
                let (conn, paths, clients) = (conn.clone(), paths.clone(), args.clients);
                let (result, stats) = tokio::task::spawn_blocking(move || {
                    let run = floor::clients(conn, shape, clients);
                    let round = drive::drive_threads(run.clients, paths, warmup, measure);
                    if let Some(writer) = run.writer {
                        let _ = writer.join();
                    }
                    let stats = *run.batches.lock().expect("batch stats");
                    (round, stats)
                })
                .await?;
                m.add(result);
                if shape == floor::Shape::Batched {
                    batch_stats.0 += stats.0;
                    batch_stats.1 += stats.1;
                }
            }
        }
    }
    if batch_stats.0 > 0 {
        m_floor_batched.note = Some(format!(
            "{:.1} acquisitions per transaction on average",
            batch_stats.1 as f64 / batch_stats.0 as f64
        ));
    }
    for m in [
        m_redis,
        m_etcd,
        m_pg,
        m_server,
        m_http_floor,
        m_embedded,
        m_floor_1tx,
        m_floor_batched,
        m_floor_pairs,
    ] {
        if !m.rates.is_empty() {
            report.measurements.push(m);
        }
    }
    if let Some(server) = &server {
        report.server_memory_kib = server.memory_kib();
    }

    if let (Some(server), true) = (&server, args.wants("handoff")) {
        eprintln!("compare: hand-off, {} times", args.handoffs);
        report.handoff = Some(server::handoff(server, args.handoffs).await?);
    }
    drop(server);
    drop(http_floor);
    drop(embedded);

    if args.wants("scale") {
        for (active, expired) in [
            (args.scale_small, 0),
            (args.scale_large, args.cleanup_expired),
        ] {
            eprintln!("compare: scale, {active} active leases");
            let point = embedded::scale_point(
                dir.path(),
                active,
                expired,
                args.cleanup_rounds,
                args.clients,
                warmup,
                measure,
            )
            .await?;
            eprintln!("compare:   prefilled in {:.1?}", point.prefill);
            report.scale.push(point);
        }
    }
    if args.wants("keepalive") {
        eprintln!(
            "compare: keep-alives, {} leases at TTL {} ms",
            args.keepalive_leases, args.keepalive_ttl_ms
        );
        report.keepalive = Some(
            embedded::keep_alive(dir.path(), args.keepalive_leases, args.keepalive_ttl_ms).await?,
        );
    }

    print_report(args, &mut report);
    println!("\n(whole run: {:.0?})", started.elapsed());
    let failed: u64 = report.measurements.iter().map(|m| m.total.errors).sum();
    if failed > 0 {
        return Err(format!("{failed} operations failed (see the errors column)").into());
    }
    Ok(())
}

fn print_report(args: &Args, report: &mut Report) {
    let rate_of = |report: &Report, prefix: &str| {
        report
            .measurements
            .iter()
            .find(|m| m.target.starts_with(prefix))
            .map(|m| m.median_rate())
    };
    let redis_rate = rate_of(report, "Redis");
    let etcd_rate = rate_of(report, "etcd");
    let http_floor_rate = rate_of(report, "HTTP floor");

    println!();
    println!(
        "## Throughput: {} clients, random paths out of {}, median of {} round(s) of {} ms",
        args.clients,
        fmt_rate(args.paths as f64),
        args.rounds,
        args.measure_ms
    );
    println!();
    println!("| target | ops/s (op) | acquire p50 | acquire p99 | op p50 | op p99 | vs etcd | vs Redis | refused | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ratio = |rate: f64, base: Option<f64>| match base {
        Some(base) if base > 0.0 => format!("{:.2}x", rate / base),
        _ => "-".into(),
    };
    for m in &mut report.measurements {
        let rate = m.median_rate();
        println!(
            "| {} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {} |",
            m.target,
            fmt_rate(rate),
            m.unit,
            fmt_duration(m.total.acquire.quantile(0.5)),
            fmt_duration(m.total.acquire.quantile(0.99)),
            fmt_duration(m.total.op.quantile(0.5)),
            fmt_duration(m.total.op.quantile(0.99)),
            ratio(rate, etcd_rate),
            ratio(rate, redis_rate),
            m.total.refused,
            m.total.errors,
        );
    }
    for m in &report.measurements {
        let rounds: Vec<String> = m.rates.iter().map(|r| fmt_rate(*r)).collect();
        let mut line = format!("- {}: rounds {}", m.target, rounds.join(" / "));
        if let Some(note) = &m.note {
            line.push_str(&format!("; {note}"));
        }
        if let Some(error) = &m.total.first_error {
            line.push_str(&format!("; first error: {error}"));
        }
        println!("{line}");
    }

    let mut goals: Vec<(String, Option<bool>, String)> = Vec::new();

    let server = report
        .measurements
        .iter_mut()
        .find(|m| m.target.starts_with("leasehold server"));
    if let Some(server) = server {
        let rate = server.median_rate();
        let p99 = server.total.acquire.quantile(0.99);
        let vs_etcd = etcd_rate.map(|e| rate >= 5.0 * e);
        let vs_redis = redis_rate.map(|r| rate >= 0.5 * r);
        goals.push((
            "1. server pairs/s >= 5x etcd".into(),
            vs_etcd,
            match etcd_rate {
                Some(e) => format!(
                    "{} vs 5 x {} = {}",
                    fmt_rate(rate),
                    fmt_rate(e),
                    fmt_rate(5.0 * e)
                ),
                None => "etcd not measured".into(),
            },
        ));
        goals.push((
            "1. server pairs/s >= Redis / 2".into(),
            vs_redis,
            match (redis_rate, http_floor_rate) {
                (Some(r), floor) => format!(
                    "{} vs {} / 2 = {}{}",
                    fmt_rate(rate),
                    fmt_rate(r),
                    fmt_rate(r / 2.0),
                    floor
                        .map(|f| format!(
                            "; the HTTP floor, with no lease work, makes {} ({:.2}x Redis)",
                            fmt_rate(f),
                            f / r
                        ))
                        .unwrap_or_default()
                ),
                (None, _) => "Redis not measured".into(),
            },
        ));
        goals.push((
            "1. server acquire p99 < 10 ms".into(),
            p99.map(|p| p < Duration::from_millis(10)),
            fmt_duration(p99),
        ));
    }
    let embedded_rate = rate_of(report, "leasehold embedded");
    let floor_rate = rate_of(report, "SQLite floor, 1 tx");
    if let (Some(e), Some(f)) = (embedded_rate, floor_rate) {
        goals.push((
            "2. embedded pairs/s >= floor acquires/s (1 tx each)".into(),
            Some(e >= f),
            format!("{} vs {}", fmt_rate(e), fmt_rate(f)),
        ));
    }
    if let Some(handoff) = &mut report.handoff {
        let p50 = handoff.from_release_sent.quantile(0.5);
        let p99 = handoff.from_release_sent.quantile(0.99);
        goals.push((
            "3. hand-off p50 < 1 ms".into(),
            p50.map(|p| p < Duration::from_millis(1)),
            format!(
                "{} from DELETE sent ({} from DELETE answered), {} hand-offs",
                fmt_duration(p50),
                fmt_duration(handoff.from_release_answered.quantile(0.5)),
                handoff.from_release_sent.len()
            ),
        ));
        goals.push((
            "3. hand-off p99 < 5 ms".into(),
            p99.map(|p| p < Duration::from_millis(5)),
            format!(
                "{} from DELETE sent ({} from DELETE answered)",
                fmt_duration(p99),
                fmt_duration(handoff.from_release_answered.quantile(0.99))
            ),
        ));
    }
    goals.push((
        "4. CLI acquire on 100,000 leases: median < 5 ms".into(),
        None,
        "measured by benches/cli_acquire.rs (scripts/bench.sh runs it after this)".into(),
    ));

    if !report.scale.is_empty() {
        println!();
        println!(
            "## Scale (embedded, {} clients, then 1 client)",
            args.clients
        );
        println!();
        println!("| active leases | prefill | pairs/s | acquire p50 | acquire p99 | 1 client: acquire p50 | p99 | get_agent_leases p50 | p99 | cleanup |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for point in &mut report.scale {
            let cleanup = match median_cleanup(&point.cleanup) {
                Some((count, took)) => format!(
                    "{} expired in {} (rounds: {})",
                    fmt_rate(count as f64),
                    fmt_duration(Some(took)),
                    point
                        .cleanup
                        .iter()
                        .map(|(_, took)| fmt_duration(Some(*took)))
                        .collect::<Vec<_>>()
                        .join(" / ")
                ),
                None => "-".into(),
            };
            println!(
                "| {} | {:.1?} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_rate(point.active as f64),
                point.prefill,
                fmt_rate(point.round.rate()),
                fmt_duration(point.round.acquire.quantile(0.5)),
                fmt_duration(point.round.acquire.quantile(0.99)),
                fmt_duration(point.alone.acquire.quantile(0.5)),
                fmt_duration(point.alone.acquire.quantile(0.99)),
                fmt_duration(point.agent_listing.quantile(0.5)),
                fmt_duration(point.agent_listing.quantile(0.99)),
                cleanup,
            );
        }
        if let [small, large] = &mut report.scale[..] {
            let (n_small, n_large) = (fmt_rate(small.active as f64), fmt_rate(large.active as f64));
            for (label, s, l) in [
                (
                    format!("{} clients", args.clients),
                    small.round.acquire.quantile(0.99),
                    large.round.acquire.quantile(0.99),
                ),
                (
                    "1 client".to_string(),
                    small.alone.acquire.quantile(0.99),
                    large.alone.acquire.quantile(0.99),
                ),
            ] {
                goals.push((
                    format!("5. acquire p99 at {n_large} leases <= 2x at {n_small} ({label})"),
                    s.zip(l).map(|(s, l)| l <= 2 * s),
                    format!("{} vs {}", fmt_duration(l), fmt_duration(s)),
                ));
            }
            if let Some((count, took)) = median_cleanup(&large.cleanup) {
                goals.push((
                    format!(
                        "5. cleanup of {} expired leases < 1 s",
                        fmt_rate(args.cleanup_expired as f64)
                    ),
                    Some(
                        took < Duration::from_secs(1)
                            && large
                                .cleanup
                                .iter()
                                .all(|(count, _)| *count >= args.cleanup_expired as u64),
                    ),
                    format!("{} ({} expired)", fmt_duration(Some(took)), count),
                ));
            }
            let (l_small, l_large) = (
                small.agent_listing.quantile(0.5),
                large.agent_listing.quantile(0.5),
            );
            goals.push((
                "5. listing one agent's 10 leases does not grow with the database (<= 2x)".into(),
                l_small
                    .zip(l_large)
                    .map(|(s, l)| l <= 2 * s.max(Duration::from_micros(50))),
                format!(
                    "median {} at {n_large} leases vs {} at {n_small}",
                    fmt_duration(l_large),
                    fmt_duration(l_small),
                ),
            ));
        }
    }
    if let Some((rss, hwm)) = report.server_memory_kib {
        goals.push((
            "5. server memory reported".into(),
            Some(true),
            format!(
                "RSS {:.1} MiB, peak {:.1} MiB after the server load",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0
            ),
        ));
    }
    if let Some(k) = &report.keepalive {
        goals.push((
            "6. 10,000 leases kept alive at TTL/3: < 10% of one core".into(),
            Some(k.cpu_percent_at_goal() < 10.0),
            format!(
                "{:.1}% at 1,000 renewals/s (measured {:.1}% at {}/s: {} leases, TTL {} ms, {} renewals in {:.1?})",
                k.cpu_percent_at_goal(),
                k.cpu_percent(),
                fmt_rate(k.measured_rate()),
                fmt_rate(k.leases as f64),
                k.ttl_ms,
                k.renewals,
                k.window
            ),
        ));
    }

    println!();
    println!(
        "## Goals of issue 7{}",
        if args.smoke {
            " (smoke run: figures meaningless)"
        } else {
            ""
        }
    );
    println!();
    println!("| goal | | measured |");
    println!("|---|---|---|");
    for (goal, met, detail) in goals {
        let verdict = match met {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "-",
        };
        println!("| {goal} | {verdict} | {detail} |");
    }
}
