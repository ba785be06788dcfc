//! Latency samples, one measurement round, and the figures drawn from several rounds.

use std::time::{Duration, Instant};

/// Latencies in microseconds, kept whole (no bucketing): a few hundred thousand samples per
/// target fit in a few megabytes, and percentiles are then exact.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    micros: Vec<u32>,
    sorted: bool,
}

impl Samples {
    pub fn push(&mut self, latency: Duration) {
        self.micros
            .push(latency.as_micros().min(u32::MAX as u128) as u32);
        self.sorted = false;
    }

    pub fn extend(&mut self, other: Samples) {
        self.micros.extend(other.micros);
        self.sorted = false;
    }

    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// The `q`-quantile (0.5 for the median), by the nearest-rank method; `None` when empty.
    pub fn quantile(&mut self, q: f64) -> Option<Duration> {
        if self.micros.is_empty() {
            return None;
        }
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
        let rank = ((q * self.micros.len() as f64).ceil() as usize).clamp(1, self.micros.len());
        Some(Duration::from_micros(self.micros[rank - 1] as u64))
    }
}

/// What the clients of one round saw inside the measurement window.
#[derive(Debug, Default)]
pub struct Round {
    /// Operations whose acquisition was granted (and which were then released, for pairs).
    pub granted: u64,
    /// Acquisitions refused because another client held the path.
    pub refused: u64,
    /// Operations that failed; the first error is kept.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of the acquisition alone, granted or refused.
    pub acquire: Samples,
    /// Latency of the whole operation (acquire, then release when granted).
    pub op: Samples,
    /// Length of the measurement window.
    pub window: Duration,
}

impl Round {
    /// Granted operations per second.
    pub fn rate(&self) -> f64 {
        self.granted as f64 / self.window.as_secs_f64()
    }

    pub fn merge(&mut self, other: Round) {
        self.granted += other.granted;
        self.refused += other.refused;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.acquire.extend(other.acquire);
        self.op.extend(other.op);
        self.window = self.window.max(other.window);
    }
}

/// The measurement window of a round: a warm-up that is not counted, then the window itself.
/// An operation counts when it completes inside the window (so the rate is completions per
/// second of window); its latency is recorded then too.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub until: Instant,
}

impl Window {
    pub fn starting_now(warmup: Duration, measure: Duration) -> Window {
        let from = Instant::now() + warmup;
        Window {
            from,
            until: from + measure,
        }
    }

    /// Whether clients should start another operation.
    pub fn open(&self, now: Instant) -> bool {
        now < self.until
    }

    /// Records one operation that started at `t0`, finished acquiring at `t1` and finished
    /// at `t2`.
    pub fn record(&self, round: &mut Round, t0: Instant, t1: Instant, t2: Instant, granted: bool) {
        if t2 < self.from || t2 >= self.until {
            return;
        }
        if granted {
            round.granted += 1;
        } else {
            round.refused += 1;
        }
        round.acquire.push(t1 - t0);
        round.op.push(t2 - t0);
    }

    pub fn record_error(&self, round: &mut Round, error: String) {
        round.errors += 1;
        round.first_error.get_or_insert(error);
    }

    pub fn length(&self) -> Duration {
        self.until - self.from
    }
}

/// One target's figures over every round.
#[derive(Debug)]
pub struct Measurement {
    pub target: String,
    /// What one counted operation is: "pair" (acquire + release) or "acquire".
    pub unit: &'static str,
    /// The rate of each round, in the order they ran.
    pub rates: Vec<f64>,
    pub total: Round,
    /// Free-form detail printed under the table (batch sizes and the like).
    pub note: Option<String>,
}

impl Measurement {
    pub fn new(target: impl Into<String>, unit: &'static str) -> Measurement {
        Measurement {
            target: target.into(),
            unit,
            rates: Vec::new(),
            total: Round::default(),
            note: None,
        }
    }

    pub fn add(&mut self, round: Round) {
        self.rates.push(round.rate());
        self.total.merge(round);
    }

    /// The median of the rounds' rates (the lower middle one for an even count).
    pub fn median_rate(&self) -> f64 {
        let mut rates = self.rates.clone();
        rates.sort_by(|a, b| a.total_cmp(b));
        rates
            .get((rates.len().max(1) - 1) / 2)
            .copied()
            .unwrap_or(0.0)
    }
}

/// `1.23 ms`, `456 µs`, `1.2 s`.
pub fn fmt_duration(d: Option<Duration>) -> String {
    let Some(d) = d else { return "-".into() };
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// `41,234`.
pub fn fmt_rate(rate: f64) -> String {
    let digits = (rate.round() as u64).to_string();
    let mut groups = Vec::new();
    let mut end = digits.len();
    while end > 3 {
        groups.push(&digits[end - 3..end]);
        end -= 3;
    }
    groups.push(&digits[..end]);
    groups.reverse();
    groups.join(",")
}
