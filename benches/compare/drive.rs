//! The closed-loop driver shared by every target: N clients, each with its own connection,
//! each doing acquire-then-release on random paths as fast as answers come back.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::stats::{Round, Window};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One client of a target. `acquire` answers `None` when the path is held by another client.
pub trait Target: Send + 'static {
    /// What `release` needs: a lease id, a key.
    type Held: Send;

    fn acquire(
        &mut self,
        path: &str,
    ) -> impl Future<Output = Result<Option<Self::Held>, BoxError>> + Send;

    fn release(&mut self, held: Self::Held) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// The same for targets driven by plain threads (the bare SQLite program).
pub trait SyncTarget: Send + 'static {
    type Held;
    fn acquire(&mut self, path: &str) -> Result<Option<Self::Held>, BoxError>;
    fn release(&mut self, held: Self::Held) -> Result<(), BoxError>;
}

/// The path names every target uses: `src/m{i % 1000}/f{i}.rs` for i below `count`, so that
/// leasehold checks two folder levels above each file, as it would in a real tree.
pub fn paths(prefix: &str, count: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..count)
            .map(|i| format!("{prefix}/m{}/f{i}.rs", i % 1000))
            .collect(),
    )
}

/// Runs every client until the window closes, on tokio tasks; returns what the window saw.
pub async fn drive<T: Target>(
    clients: Vec<T>,
    paths: Arc<Vec<String>>,
    warmup: Duration,
    measure: Duration,
) -> Round {
    let window = Window::starting_now(warmup, measure);
    let mut tasks = Vec::with_capacity(clients.len());
    for (k, mut client) in clients.into_iter().enumerate() {
        let paths = paths.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(k as u64 * 7919 + 1);
            let mut round = Round::default();
            loop {
                let t0 = Instant::now();
                if !window.open(t0) {
                    break;
                }
                let path = &paths[rng.gen_range(0..paths.len())];
                let outcome = async {
                    let held = client.acquire(path).await?;
                    let t1 = Instant::now();
                    let granted = held.is_some();
                    if let Some(held) = held {
                        client.release(held).await?;
                    }
                    Ok::<_, BoxError>((t1, granted))
                }
                .await;
                match outcome {
                    Ok((t1, granted)) => window.record(&mut round, t0, t1, Instant::now(), granted),
                    Err(error) => {
                        window.record_error(&mut round, error.to_string());
                        // A broken connection fails at once: do not spin on it.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            round
        }));
    }
    let mut total = Round {
        window: window.length(),
        ..Round::default()
    };
    for task in tasks {
        match task.await {
            Ok(round) => total.merge(round),
            Err(error) => window.record_error(&mut total, format!("client task failed: {error}")),
        }
    }
    total
}

/// Runs every client on its own OS thread until the window closes.
pub fn drive_threads<T: SyncTarget>(
    clients: Vec<T>,
    paths: Arc<Vec<String>>,
    warmup: Duration,
    measure: Duration,
) -> Round {
    let window = Window::starting_now(warmup, measure);
    let threads: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(k, mut client)| {
            let paths = paths.clone();
            std::thread::spawn(move || {
                let mut rng = StdRng::seed_from_u64(k as u64 * 7919 + 1);
                let mut round = Round::default();
                loop {
                    let t0 = Instant::now();
                    if !window.open(t0) {
                        break;
                    }
                    let path = &paths[rng.gen_range(0..paths.len())];
                    let outcome = (|| {
                        let held = client.acquire(path)?;
                        let t1 = Instant::now();
                        let granted = held.is_some();
                        if let Some(held) = held {
                            client.release(held)?;
                        }
                        Ok::<_, BoxError>((t1, granted))
                    })();
                    match outcome {
                        Ok((t1, granted)) => {
                            window.record(&mut round, t0, t1, Instant::now(), granted)
                        }
                        Err(error) => {
                            window.record_error(&mut round, error.to_string());
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                round
            })
        })
        .collect();
    let mut total = Round {
        window: window.length(),
        ..Round::default()
    };
    for thread in threads {
        match thread.join() {
            Ok(round) => total.merge(round),
            Err(_) => window.record_error(&mut total, "client thread panicked".into()),
        }
    }
    total
}
