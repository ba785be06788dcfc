//! CLI start-up benchmark: the wall time of one `leasehold acquire` process (start, open the
//! database, take one lease, answer, exit) on a database already holding 100,000 active leases.
//!
//! Run with `cargo bench --bench cli_acquire` (options after `--`: `--runs N`, `--leases N`,
//! `--against PATH`). It prints the median and the 90th percentile over the runs, and, for
//! comparison, the same for `leasehold --version`, which starts the process and touches no
//! database. `--against` names another `leasehold` binary (say, one built from an earlier
//! commit) to run turn about with this one, each on its own copy of the seeded database (so
//! that neither inherits the other's write-ahead log), so that both meet the same spells of a
//! busy disk: the fair way to compare two builds on a shared machine.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection};

/// The binary measured: built with the bench (release) profile.
const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

fn main() {
    let mut runs = 200usize;
    let mut leases = 100_000usize;
    let mut binaries = vec![PathBuf::from(BIN)];
    let args: Vec<String> = std::env::args().skip(1).collect();
    for (i, arg) in args.iter().enumerate() {
        let value = args.get(i + 1).and_then(|v| v.parse().ok());
        match arg.as_str() {
            "--runs" => runs = value_or_exit(value, "--runs"),
            "--leases" => leases = value_or_exit(value, "--leases"),
            "--against" => match args.get(i + 1) {
                Some(other) if Path::new(other).is_file() => binaries.push(other.into()),
                _ => {
                    eprintln!("error: --against needs the path of a leasehold binary");
                    std::process::exit(2)
                }
            },
            // `cargo bench` passes --bench; nothing else is expected.
            _ => {}
        }
    }
    // One workspace per binary, each with a copy of the same seeded database, and a copy of
    // the binary itself, as `cargo install` would make: how the kernel caches a file the
    // linker has just written made the same program start 0.05-0.7 ms slower than a copy of
    // it (BENCHMARKS.md), which no user's installed binary pays.
    let workspaces: Vec<tempfile::TempDir> = binaries
        .iter()
        .map(|_| {
            let workspace = tempfile::tempdir().expect("temp dir");
            for dir in [".git", ".leasehold"] {
                std::fs::create_dir(workspace.path().join(dir)).expect("workspace");
            }
            workspace
        })
        .collect();
    let shown = binaries.clone();
    for (binary, workspace) in binaries.iter_mut().zip(&workspaces) {
        let installed = workspace.path().join(".leasehold/leasehold");
        std::fs::copy(&*binary, &installed).expect("copy the binary");
        *binary = installed;
    }
    let roots: Vec<&Path> = workspaces.iter().map(|w| w.path()).collect();
    let db = |root: &Path| root.join(".leasehold/leases.db");
    let seeding = Instant::now();
    seed(&db(roots[0]), leases);
    for root in &roots[1..] {
        std::fs::copy(db(roots[0]), db(root)).expect("copy the seeded database");
    }
    println!("seeded {leases} active leases in {:.1?}", seeding.elapsed());

    let version = measure(&roots, &binaries, runs, |_| vec!["--version".to_string()]);
    let acquire = measure(&roots, &binaries, runs, |k| {
        vec!["--json", "acquire", &format!("new/f{k}.rs"), "--ttl", "10m"]
            .into_iter()
            .map(str::to_string)
            .collect()
    });
    for (b, binary) in shown.iter().enumerate() {
        if shown.len() > 1 {
            println!("{}:", binary.display());
        }
        report("leasehold --version", &version[b]);
        report("leasehold acquire", &acquire[b]);
    }
}

fn value_or_exit(value: Option<usize>, flag: &str) -> usize {
    value.unwrap_or_else(|| {
        eprintln!("error: {flag} needs a whole number");
        std::process::exit(2)
    })
}

/// Creates the database with leasehold's own schema, then inserts `count` active leases (and
/// their `acquired` events) in one transaction, spread over folders and agents.
fn seed(db: &Path, count: usize) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    drop(leasehold::SqliteStore::open(db, now_ms).expect("create the database"));
    let mut conn = Connection::open(db).expect("open the database");
    let tx = conn.transaction().expect("transaction");
    {
        let mut lease = tx
            .prepare(
                "INSERT INTO leases (id, file_path, agent_id, mode, status, fencing_token,
                     created_at, expires_at, ttl_ms, renewal_count, max_renewals, updated_at, reason)
                 VALUES (?1, ?2, ?3, 'exclusive', 'active', ?4, ?5, ?6, 86400000, 0, NULL, ?5, NULL)",
            )
            .expect("prepare");
        let mut event = tx
            .prepare(
                "INSERT INTO lease_history (lease_id, agent_id, file_path, event_type,
                     status_before, status_after, renewal_count, fencing_token, event_at, reason)
                 VALUES (?1, ?2, ?3, 'acquired', NULL, 'active', 0, ?4, ?5, NULL)",
            )
            .expect("prepare");
        for i in 0..count {
            // Time-ordered, as the ids leasehold makes.
            let id = uuid::Uuid::now_v7().to_string();
            let path = format!("src/module{}/file{i}.rs", i / 100);
            let agent = format!("agent-{}", i % 64);
            let token = i as i64 + 1;
            lease
                .execute(params![id, path, agent, token, now_ms, now_ms + 86_400_000])
                .expect("insert lease");
            event
                .execute(params![id, agent, path, token, now_ms])
                .expect("insert event");
        }
    }
    tx.execute("UPDATE fencing SET last_token = ?1", [count as i64])
        .expect("fencing");
    tx.commit().expect("commit");
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .expect("checkpoint");
}

/// Runs each binary `runs` times in its own workspace (`roots[b]`), turn about, after 10
/// unmeasured warm-up runs each, and returns each one's wall times. `args` gets the run's
/// number.
fn measure(
    roots: &[&Path],
    binaries: &[PathBuf],
    runs: usize,
    args: impl Fn(usize) -> Vec<String>,
) -> Vec<Vec<Duration>> {
    let mut times = vec![Vec::with_capacity(runs); binaries.len()];
    for k in 0..runs + 10 {
        for (b, binary) in binaries.iter().enumerate() {
            let mut command = Command::new(binary);
            command
                .args(args(k))
                .current_dir(roots[b])
                .env("LEASEHOLD_AGENT", "bench")
                .env_remove("LEASEHOLD_ROOT")
                .env_remove("LEASEHOLD_DB")
                .env_remove("LEASEHOLD_SERVER")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let started = Instant::now();
            let status = command.status().expect("run leasehold");
            let elapsed = started.elapsed();
            assert!(status.success(), "{} failed: {status}", binary.display());
            if k >= 10 {
                times[b].push(elapsed);
            }
        }
    }
    times
}

fn report(what: &str, times: &[Duration]) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<22} runs {:>4}  median {:>6.2} ms  p90 {:>6.2} ms  min {:>6.2} ms  max {:>6.2} ms",
        sorted.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(sorted[0]),
        ms(sorted[sorted.len() - 1]),
    );
}
