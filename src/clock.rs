//! Time: the one place that reads the wall clock.
//!
//! Every expiry decision and every timed wait in the engine goes through a [`Clock`], so tests
//! can use a [`ManualClock`] and move time by hand instead of sleeping until a lease expires.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A boxed future that completes when a clock reaches a deadline.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// The current time, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// A future that completes once [`Clock::now_ms`] is at or past `deadline_ms`.
    fn sleep_until(&self, deadline_ms: i64) -> Sleep;
}

/// The real clock: wall time for "now", tokio timers for sleeping.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn sleep_until(&self, deadline_ms: i64) -> Sleep {
        let wait = (deadline_ms - self.now_ms()).max(0) as u64;
        Box::pin(tokio::time::sleep(Duration::from_millis(wait)))
    }
}

/// A clock that only moves when told to; sleepers wake when it is advanced past their deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock standing at `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        let (now, _) = watch::channel(start_ms);
        ManualClock { now: Arc::new(now) }
    }

    /// Moves the clock forward by `by` and wakes every sleeper whose deadline has come.
    pub fn advance(&self, by: Duration) {
        self.now.send_modify(|now| *now += by.as_millis() as i64);
    }

    /// Sets the clock to `ms` (never backwards: a lease clock does not run back).
    pub fn set(&self, ms: i64) {
        self.now.send_modify(|now| *now = (*now).max(ms));
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline_ms: i64) -> Sleep {
        let mut rx = self.now.subscribe();
        Box::pin(async move {
            // The sender lives as long as the clock; if it is gone nobody can advance time, so
            // the sleep never completes, which is what a stopped clock means.
            if rx.wait_for(|now| *now >= deadline_ms).await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_only_when_advanced_past_deadline() {
        let clock = ManualClock::new(1_000);
        let sleep = clock.sleep_until(1_500);
        let handle = tokio::spawn(sleep);
        clock.advance(Duration::from_millis(499));
        tokio::task::yield_now().await;
        assert!(!handle.is_finished());
        clock.advance(Duration::from_millis(1));
        handle.await.unwrap();
        assert_eq!(clock.now_ms(), 1_500);
    }
}
