//! Everything the CLI writes: one JSON document or human text on stdout, errors on stderr (or as
//! JSON on stdout), aligned tables and compact durations. A reader that closes stdout early ends
//! the command quietly.

use std::cell::Cell;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::Value;

use super::error::{CliError, CliResult};
use crate::time::Timestamp;

/// Where and how the CLI answers.
#[derive(Debug)]
pub struct Output {
    json: bool,
    /// Set once `exec` starts its command: stdout is then the command's alone.
    stdout_is_childs: Cell<bool>,
}

impl Output {
    /// Answers in JSON when `json` is set, in words otherwise.
    pub fn new(json: bool) -> Output {
        Output {
            json,
            stdout_is_childs: Cell::new(false),
        }
    }

    /// Whether answers are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// From now on stdout belongs to a child process; reports go to stderr.
    pub fn hand_stdout_to_child(&self) {
        self.stdout_is_childs.set(true);
    }

    /// Answers with `value` in JSON mode, or with the text `human` builds otherwise.
    pub fn answer<T: Serialize>(&self, value: &T, human: impl FnOnce() -> String) -> CliResult<()> {
        if self.json {
            let value = serde_json::to_value(value)
                .map_err(|e| CliError::internal(format!("cannot encode the answer: {e}")))?;
            self.write_json(&value)
        } else {
            let mut text = human();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            write_stdout(text.as_bytes())
        }
    }

    /// Writes one JSON document on its own line.
    pub fn write_json(&self, value: &Value) -> CliResult<()> {
        let mut line = value.to_string();
        line.push('\n');
        write_stdout(line.as_bytes())
    }

    /// Reports `error` (on stdout as JSON in JSON mode, on stderr otherwise) and returns its
    /// exit code.
    pub fn report(&self, error: &CliError) -> u8 {
        if error.quiet {
            return error.exit;
        }
        if self.json {
            let mut line = error.to_json().to_string();
            line.push('\n');
            if self.stdout_is_childs.get() {
                let _ = io::stderr().lock().write_all(line.as_bytes());
            } else {
                // The reader may be gone; the exit code still tells what happened.
                let _ = write_stdout(line.as_bytes());
            }
        } else {
            let _ = io::stderr().lock().write_all(error.to_human().as_bytes());
        }
        error.exit
    }
}

/// Writes to stdout, turning a closed pipe into a quiet stop.
fn write_stdout(bytes: &[u8]) -> CliResult<()> {
    let mut stdout = io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            io::ErrorKind::BrokenPipe => CliError::broken_pipe(),
            _ => CliError::internal(format!("cannot write to stdout: {e}")),
        })
}

/// Lays `rows` out in columns separated by two spaces, under `header` when given.
pub fn table(header: Option<&[&str]>, rows: &[Vec<String>]) -> String {
    let mut all: Vec<Vec<String>> = Vec::with_capacity(rows.len() + 1);
    if let Some(header) = header {
        all.push(header.iter().map(|h| h.to_string()).collect());
    }
    all.extend(rows.iter().cloned());
    let columns = all.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            all.iter()
                .filter_map(|row| row.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut text = String::new();
    for row in &all {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// A duration in milliseconds, compactly: `850ms`, `42s`, `9m05s`, `1h02m`, `3d04h`.
pub fn compact_duration(ms: u64) -> String {
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let seconds = ms / 1000;
    let (days, hours, minutes, seconds) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// How long until `expires_at`, or `expired`.
pub fn time_left(expires_at: Timestamp, now_ms: i64) -> String {
    let left_ms = expires_at.0 - now_ms;
    if left_ms <= 0 {
        "expired".to_string()
    } else {
        compact_duration(left_ms as u64)
    }
}

/// An optional number, or `-`.
pub fn or_dash<T: ToString>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_compact() {
        assert_eq!(compact_duration(850), "850ms");
        assert_eq!(compact_duration(42_000), "42s");
        assert_eq!(compact_duration(545_000), "9m05s");
        assert_eq!(compact_duration(3_720_000), "1h02m");
        assert_eq!(compact_duration(273_600_000), "3d04h");
        assert_eq!(time_left(Timestamp(1_000), 1_000), "expired");
    }

    #[test]
    fn tables_align_all_but_the_last_column() {
        let rows = vec![
            vec!["a".to_string(), "bb".to_string(), "c".to_string()],
            vec!["aaa".to_string(), "b".to_string(), "".to_string()],
        ];
        assert_eq!(
            table(Some(&["X", "Y", "Z"]), &rows),
            "X    Y   Z\na    bb  c\naaa  b\n"
        );
    }
}
