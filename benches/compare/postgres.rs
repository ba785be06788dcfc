//! PostgreSQL as a lock service, the usual table-of-locks recipe: acquire is an upsert that
//! takes the row only if it is absent or expired, release deletes the row if we hold it. Every
//! commit is durable (the cluster runs with its defaults: `fsync` and `synchronous_commit` on).
//! One connection per client thread, with the synchronous `postgres` crate leasehold already
//! uses.

use postgres::{Client, NoTls, Statement};

use crate::drive::{BoxError, SyncTarget};

pub struct PgClient {
    client: Client,
    holder: String,
    acquire: Statement,
    release: Statement,
}

/// Creates the lock table (dropping an old one).
pub fn prepare(url: &str) -> Result<(), BoxError> {
    let mut client = Client::connect(url, NoTls)?;
    client.batch_execute(
        "DROP TABLE IF EXISTS bench_locks;
         CREATE TABLE bench_locks (
             key        text        PRIMARY KEY,
             holder     text        NOT NULL,
             expires_at timestamptz NOT NULL
         )",
    )?;
    Ok(())
}

impl PgClient {
    pub fn connect(url: &str, client: usize) -> Result<PgClient, BoxError> {
        let mut pg = Client::connect(url, NoTls)?;
        let acquire = pg.prepare(
            "INSERT INTO bench_locks (key, holder, expires_at)
             VALUES ($1, $2, now() + interval '30 seconds')
             ON CONFLICT (key) DO UPDATE
                 SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE bench_locks.expires_at < now()
             RETURNING holder",
        )?;
        let release = pg.prepare("DELETE FROM bench_locks WHERE key = $1 AND holder = $2")?;
        Ok(PgClient {
            client: pg,
            holder: format!("client-{client}"),
            acquire,
            release,
        })
    }
}

impl SyncTarget for PgClient {
    type Held = String;

    fn acquire(&mut self, path: &str) -> Result<Option<String>, BoxError> {
        let rows = self.client.query(&self.acquire, &[&path, &self.holder])?;
        Ok((!rows.is_empty()).then(|| path.to_string()))
    }

    fn release(&mut self, key: String) -> Result<(), BoxError> {
        let deleted = self.client.execute(&self.release, &[&key, &self.holder])?;
        if deleted != 1 {
            return Err(format!("postgres: released {deleted} rows for {key}").into());
        }
        Ok(())
    }
}
