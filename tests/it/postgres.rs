//! What only a shared server database has (issue #5): several servers on one PostgreSQL
//! database, LISTEN/NOTIFY wake-ups across them, the database's clock, lost connections,
//! concurrent migrations. The whole conformance suite runs against PostgreSQL as well.

use std::sync::Arc;
use std::time::Duration;

use leasehold::store::postgres::{redact, PgOptions, PgStore};
use leasehold::{
    Clock, Engine, HistoryQuery, LeaseError, LeaseManager, LeaseQuery, LeaseReleaseRequest,
    ManualClock, SystemClock,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_keep_exclusion_and_fencing_under_stress() {
    let schema = Schema::new();
    let servers = [
        schema.server(Arc::new(SystemClock), real_time()),
        schema.server(Arc::new(SystemClock), real_time()),
    ];
    let paths = ["a.rs", "b.rs", "dir/", "dir/c.rs"];
    let mut tasks = Vec::new();
    for agent in 0..12usize {
        let server: Arc<dyn LeaseManager> = servers[agent % 2].clone();
        tasks.push(tokio::spawn(async move {
            let mut granted = 0u32;
            for i in 0..12usize {
                let path = paths[(agent * 7 + i * 3) % paths.len()];
                let mut request = req(&format!("agent-{agent}"), &[path], 2_000);
                request.wait_ms = Some(10_000);
                match server.acquire_lease(request).await {
                    Ok(got) => {
                        granted += 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        for lease in got.leases {
                            let release = LeaseReleaseRequest {
                                lease_id: lease.id,
                                agent_id: lease.agent_id,
                            };
                            server.release_lease(release).await.unwrap();
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
        granted >= 100,
        "only {granted} grants: too little contention to prove anything"
    );
    let leases = servers[0]
        .get_all_leases(LeaseQuery {
            include_inactive: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let events = servers[1]
        .get_history(HistoryQuery::default())
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
}

/// With polling off and the clock standing still, only a NOTIFY from the other server can wake
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
        "SELECT version, success FROM \"{}\".schema_migrations",
        schema.name
    ));
    assert_eq!(rows.len(), 1);
    assert!(rows[0].get::<_, bool>(1));
    let settings = schema.admin(format!(
        "SELECT count(*) FROM \"{}\".lease_configs",
        schema.name
    ));
    assert_eq!(
        settings[0].get::<_, i64>(0) as usize,
        leasehold::SETTINGS.len()
    );
}
