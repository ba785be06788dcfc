//! What only a shared server database has (issue #5): several servers on one PostgreSQL
//! database, LISTEN/NOTIFY wake-ups across them, the database's clock, lost connections,
//! concurrent migrations. The whole conformance suite runs against PostgreSQL as well.

use std::sync::Arc;
use std::time::Duration;

use leasehold::remote::RemoteManager;
use leasehold::server::{ServeConfig, Server};
use leasehold::store::postgres::{redact, PgOptions, PgStore};
use leasehold::{
    Clock, Database, Engine, HistoryQuery, LeaseError, LeaseManager, LeaseQuery,
    LeaseReleaseRequest, ManualClock, SystemClock,
};

use crate::harness::{blocking, pg_url, req, waiters_queued, T0_MS};

/// A schema of its own for one test, dropped at the end.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    fn new() -> Schema {
        Schema {
            url: pg_url(),
            name: format!("lh_test_{}", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Another "server": its own store (connections, listener) on the shared schema.
    fn server(&self, clock: Arc<dyn Clock>, options: PgOptions) -> Arc<Engine<PgStore>> {
        let (url, schema) = (self.url.clone(), self.name.clone());
        let store = blocking(move || {
            PgStore::open(
                &url,
                PgOptions {
                    schema: Some(schema),
                    ..options
                },
            )
            .expect("open the PostgreSQL store")
        });
        Arc::new(Engine::new(store, clock))
    }

    fn admin(&self, sql: String) -> Vec<postgres::Row> {
        let url = self.url.clone();
        blocking(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
            client.query(&sql, &[]).unwrap()
        })
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        self.admin(format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name));
    }
}

fn real_time() -> PgOptions {
    PgOptions {
        schema: None,
        server_time: true,
        poll_interval: Some(Duration::from_millis(500)),
    }
}

/// Two `leasehold serve` instances on one PostgreSQL database (schema), each on its own port.
struct TwoServers {
    addresses: [String; 2],
    db: Database,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl TwoServers {
    async fn start(schema: &Schema) -> TwoServers {
        let url = format!("{}?options=-c%20search_path%3D{}", schema.url, schema.name);
        schema.admin(format!("CREATE SCHEMA IF NOT EXISTS \"{}\"", schema.name));
        let db = Database::Postgres(url);
        let (stop, _) = tokio::sync::watch::channel(false);
        let mut addresses = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let mut config = ServeConfig::new(db.clone());
            config.listen = "127.0.0.1:0".parse().unwrap();
            let server = Server::bind(config, Arc::new(SystemClock))
                .await
                .expect("start a server");
            addresses.push(format!("http://{}", server.local_addr()));
            let mut stopped = stop.subscribe();
            tasks.push(tokio::spawn(async move {
                server
                    .run(async move {
                        let _ = stopped.changed().await;
                    })
                    .await
                    .expect("serve");
            }));
        }
        TwoServers {
            addresses: [addresses[0].clone(), addresses[1].clone()],
            db,
            stop,
            tasks,
        }
    }

    /// A client of server `i` acting as `agent`.
    fn client(&self, i: usize, agent: &str) -> Arc<dyn LeaseManager> {
        let (db, agent) = (self.db.clone(), agent.to_string());
        let token = blocking(move || {
            leasehold::server::token_create(db, &agent, false)
                .unwrap()
                .token
        });
        Arc::new(RemoteManager::new(&self.addresses[i], &token).unwrap())
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            task.await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_keep_exclusion_and_fencing_under_stress() {
    let schema = Schema::new();
    let servers = TwoServers::start(&schema).await;
    let paths = ["a.rs", "b.rs", "dir/", "dir/c.rs"];
    let mut tasks = Vec::new();
    for agent in 0..12usize {
        // Agents alternate between the two servers.
        let agent_id = format!("agent-{agent}");
        let client = servers.client(agent % 2, &agent_id);
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u32;
            for i in 0..10usize {
                let path = paths[(agent * 7 + i * 3) % paths.len()];
                let mut request = req(&agent_id, &[path], 5_000);
                request.wait_ms = Some(10_000);
                match client.acquire_lease(request).await {
                    Ok(got) => {
                        granted += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        for lease in got.leases {
                            let release = LeaseReleaseRequest {
                                lease_id: lease.id,
                                agent_id: lease.agent_id,
                            };
                            client.release_lease(release).await.unwrap();
                        }
                    }
                    Err(LeaseError::Deadlock { .. } | LeaseError::WaitTimeout { .. }) => {}
                    Err(other) => panic!("unexpected error: {other}"),
                }
            }
            granted
        }));
    }
    let mut granted = 0;
    for task in tasks {
        granted += task.await.unwrap();
    }
    assert!(
        granted >= 80,
        "only {granted} grants: too little contention to prove anything"
    );
    let reader = servers.client(0, "auditor");
    let leases = reader
        .get_all_leases(LeaseQuery {
            include_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let events = reader
        .get_history(HistoryQuery {
            limit: Some(100_000),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        leasehold::audit::holds(&leases, &events).len() as u32,
        granted
    );
    let violations = leasehold::audit::check(&leases, &events);
    assert!(
        violations.is_empty(),
        "{}",
        serde_json::to_string_pretty(&violations).unwrap()
    );
    servers.stop().await;
}

/// A waiter blocked on server A is granted the lease as soon as the holder releases it through
/// server B: B's commit notifies A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_on_server_a_is_granted_after_a_release_through_server_b() {
    let schema = Schema::new();
    let servers = TwoServers::start(&schema).await;
    let holder = servers.client(1, "holder");
    let waiter = servers.client(0, "waiter");
    let held = holder
        .acquire_lease(req("holder", &["x"], 60_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    let waiting = tokio::spawn(async move {
        let mut request = req("waiter", &["x"], 60_000);
        request.wait_ms = Some(30_000);
        waiter.acquire_lease(request).await
    });
    waiters_queued(&holder, "x", 1).await;
    holder
        .release_lease(LeaseReleaseRequest {
            lease_id: held.id,
            agent_id: "holder".into(),
        })
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.leases[0].agent_id, "waiter");
    assert!(got.leases[0].fencing_token > held.fencing_token);
    servers.stop().await;
}

/// With polling off and the clock standing still, only a NOTIFY from the other store can wake
/// the waiter: if it is granted at all, the notification carried it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiter_on_one_server_is_woken_by_a_release_on_another() {
    let schema = Schema::new();
    let clock = ManualClock::new(T0_MS);
    let notify_only = PgOptions {
        schema: None,
        server_time: false,
        poll_interval: None,
    };
    let server_a: Arc<dyn LeaseManager> =
        schema.server(Arc::new(clock.clone()), notify_only.clone());
    let server_b: Arc<dyn LeaseManager> = schema.server(Arc::new(clock.clone()), notify_only);
    let held = server_b
        .acquire_lease(req("holder", &["x"], 60_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    let waiter = {
        let server_a = server_a.clone();
        tokio::spawn(async move {
            let mut request = req("waiter", &["x"], 60_000);
            request.wait_ms = Some(60_000);
            server_a.acquire_lease(request).await
        })
    };
    waiters_queued(&server_b, "x", 1).await;
    server_b
        .release_lease(LeaseReleaseRequest {
            lease_id: held.id,
            agent_id: "holder".into(),
        })
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter on server A was never woken by server B's release")
        .unwrap()
        .unwrap();
    assert_eq!(got.leases[0].agent_id, "waiter");
    assert!(got.leases[0].fencing_token > held.fencing_token);
}

/// Expiry is decided by the database server's clock, not the machine's: an engine whose own
/// clock is far off still sees leases expire at database time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_use_the_database_servers_clock() {
    let schema = Schema::new();
    let skewed = ManualClock::new(T0_MS + 10 * 365 * 24 * 3600 * 1000);
    let server = schema.server(Arc::new(skewed), real_time());
    let lease = server
        .acquire_lease(req("a", &["x"], 60_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    let db_now: i64 = schema
        .admin("SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint".into())[0]
        .get(0);
    let expires = lease.expires_at.as_millis();
    assert!(
        expires > db_now && expires <= db_now + 60_000,
        "expires_at {expires} is not database time + 60 s ({db_now})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_connections_are_survived_and_nothing_granted_is_lost() {
    let schema = Schema::new();
    let server = schema.server(Arc::new(SystemClock), real_time());
    let held = server
        .acquire_lease(req("a", &["x"], 60_000))
        .await
        .unwrap()
        .leases
        .remove(0);
    // Cut every connection of this test's store, as a database restart or a network cut would.
    let killed = schema.admin(format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid() \
         AND query NOT ILIKE '%pg_stat_activity%' AND backend_type = 'client backend' \
         AND application_name = 'leasehold:{}'",
        schema.name
    ));
    assert!(
        !killed.is_empty(),
        "the store's connections were found and cut"
    );
    // The next operations reconnect, and the lease granted before is still there.
    assert_eq!(
        server.get_lease(held.id).await.unwrap().status,
        leasehold::LeaseStatus::Active
    );
    assert_eq!(
        server
            .acquire_lease(req("b", &["x"], 60_000))
            .await
            .unwrap_err()
            .code(),
        "conflict"
    );
    server
        .release_lease(LeaseReleaseRequest {
            lease_id: held.id,
            agent_id: "a".into(),
        })
        .await
        .unwrap();
    server
        .acquire_lease(req("b", &["x"], 60_000))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_database_gives_a_clear_error_without_the_password() {
    let url = "postgres://alice:s3cret-pw@127.0.0.1:1/leases";
    let error = blocking(move || PgStore::open(url, PgOptions::default()).unwrap_err());
    let message = error.to_string();
    assert_eq!(error.code(), "storage");
    assert!(
        message.contains("cannot connect to PostgreSQL at alice@127.0.0.1:1/leases"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    assert_eq!(redact(url), "alice@127.0.0.1:1/leases");
    let bad = blocking(|| {
        PgStore::open("postgres://a:b@h:notaport/x", PgOptions::default()).unwrap_err()
    });
    assert_eq!(bad.code(), "invalid_input");
    assert!(!bad.to_string().contains(":b@"), "{bad}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_at_once_apply_migrations_once() {
    let schema = Schema::new();
    let opened: Vec<_> = (0..4)
        .map(|_| {
            let (url, name) = (schema.url.clone(), schema.name.clone());
            std::thread::spawn(move || {
                PgStore::open(
                    &url,
                    PgOptions {
                        schema: Some(name),
                        ..PgOptions::default()
                    },
                )
                .map(|_| ())
            })
        })
        .collect();
    for handle in opened {
        handle.join().unwrap().expect("every server opens");
    }
    let rows = schema.admin(format!(
        "SELECT version, success FROM \"{}\".schema_migrations ORDER BY version",
        schema.name
    ));
    let applied: Vec<(i64, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        applied,
        [(1, true), (2, true), (3, true)],
        "each migration applied exactly once"
    );
    let settings = schema.admin(format!(
        "SELECT count(*) FROM \"{}\".lease_configs",
        schema.name
    ));
    assert_eq!(
        settings[0].get::<_, i64>(0) as usize,
        leasehold::SETTINGS.len()
    );
}
