//! CLI errors: what went wrong, the exit code that says so, and how it is printed (`error:`,
//! `caused by:`, `help:` for people; the library's JSON error document for programs).

use serde_json::{json, Map, Value};

use crate::error::LeaseError;

/// The command did what was asked.
pub const EXIT_OK: u8 = 0;
/// Something failed inside leasehold or its database.
pub const EXIT_INTERNAL: u8 = 1;
/// The command line or an input value is wrong; nothing was changed.
pub const EXIT_USAGE: u8 = 2;
/// Another agent holds (or is queued first for) a requested path.
pub const EXIT_HELD: u8 = 3;
/// A wait for a path timed out.
pub const EXIT_WAIT_TIMEOUT: u8 = 4;
/// The lease is not found, not the caller's, expired, released or out of renewals.
pub const EXIT_LOST: u8 = 5;
/// Waiting would have closed a wait-for cycle.
pub const EXIT_DEADLOCK: u8 = 6;

/// The exit codes, as shown at the end of `leasehold --help`.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  internal error (database, I/O)
  2  invalid input or usage; nothing was changed
  3  held by another agent (the message names the holder, its lease id and expiry)
  4  wait timed out
  5  lease not found, not yours, expired, released or out of renewals (lost)
  6  deadlock detected
  128+N  stopped by signal N while waiting in the queue
  exec exits with its command's code (128+N when the command died of signal N)";

/// The exit code for a library error. This is the only place that decides it.
pub fn exit_code(error: &LeaseError) -> u8 {
    match error {
        LeaseError::AlreadyHeld { .. } => EXIT_HELD,
        LeaseError::WaitTimeout { .. } => EXIT_WAIT_TIMEOUT,
        LeaseError::Deadlock { .. } => EXIT_DEADLOCK,
        LeaseError::NotFound { .. }
        | LeaseError::NotHolder { .. }
        | LeaseError::LeaseLost { .. }
        | LeaseError::RenewalLimitReached { .. } => EXIT_LOST,
        LeaseError::InvalidInput { .. } => EXIT_USAGE,
        LeaseError::Storage { .. } => EXIT_INTERNAL,
    }
}

/// A hint for the person who met `error`, when one helps.
fn help_for(error: &LeaseError) -> Option<&'static str> {
    Some(match error {
        LeaseError::AlreadyHeld { .. } => {
            "wait for it with `--wait [DURATION]`, or see who holds it with `leasehold status PATH`"
        }
        LeaseError::WaitTimeout { .. } => {
            "wait longer with `--wait 5m`, or see who holds it with `leasehold status PATH`"
        }
        LeaseError::Deadlock { .. } => {
            "release what you hold and acquire every path you need in one `acquire` call"
        }
        LeaseError::NotFound { .. } => "`leasehold list --agent ID` shows an agent's active leases",
        LeaseError::NotHolder { .. } => "act as the holder with `--agent ID` (or LEASEHOLD_AGENT)",
        LeaseError::LeaseLost { .. } | LeaseError::RenewalLimitReached { .. } => {
            "acquire the path again; someone else may have changed it since"
        }
        LeaseError::InvalidInput { .. } | LeaseError::Storage { .. } => return None,
    })
}

/// The result type of every command.
pub type CliResult<T> = Result<T, CliError>;

/// An error as the command line reports it.
#[derive(Debug, Clone)]
pub struct CliError {
    /// The stable code of the JSON answer (`conflict`, `invalid_input`, `internal`, ...).
    pub code: &'static str,
    /// The process exit code.
    pub exit: u8,
    /// The headline, printed after `error:`.
    pub message: String,
    /// Underlying causes, outermost first, printed after `caused by:`.
    pub causes: Vec<String>,
    /// A hint, printed after `help:`.
    pub help: Option<String>,
    /// The JSON `error` object's fields besides `code` and `message`.
    pub fields: Map<String, Value>,
    /// Nothing to report: stdout was closed by the reader (a broken pipe is not an error).
    pub quiet: bool,
}

impl CliError {
    /// Invalid input or usage (exit 2), shaped like the library's `invalid_input` error.
    pub fn usage(what: impl Into<String>, why: impl Into<String>) -> CliError {
        CliError::from(LeaseError::invalid(what, why))
    }

    /// An internal failure (exit 1).
    pub fn internal(message: impl Into<String>) -> CliError {
        CliError {
            code: "internal",
            exit: EXIT_INTERNAL,
            message: message.into(),
            causes: Vec::new(),
            help: None,
            fields: Map::new(),
            quiet: false,
        }
    }

    /// An error with its own code and exit status, for cases the library has no variant for.
    pub fn new(code: &'static str, exit: u8, message: impl Into<String>) -> CliError {
        CliError {
            code,
            exit,
            ..CliError::internal(message)
        }
    }

    /// The reader closed stdout: stop quietly, successfully.
    pub fn broken_pipe() -> CliError {
        CliError {
            exit: EXIT_OK,
            quiet: true,
            ..CliError::internal("broken pipe")
        }
    }

    /// Adds a `help:` hint.
    pub fn with_help(mut self, help: impl Into<String>) -> CliError {
        self.help = Some(help.into());
        self
    }

    /// Adds a field to the JSON error object.
    pub fn with_field(mut self, key: &str, value: impl Into<Value>) -> CliError {
        self.fields.insert(key.to_string(), value.into());
        self
    }

    /// Puts `message` in front: the current headline becomes the first cause.
    pub fn context(mut self, message: impl Into<String>) -> CliError {
        let previous = std::mem::replace(&mut self.message, message.into());
        self.causes.insert(0, previous);
        self
    }

    /// The error as one JSON document: `{"error": {"code", "message", ...fields}}`, the shape
    /// of [`LeaseError::to_json`]. Causes are appended to the message and listed under `causes`.
    pub fn to_json(&self) -> Value {
        let mut body = Map::new();
        body.insert("code".into(), json!(self.code));
        let mut message = self.message.clone();
        for cause in &self.causes {
            message.push_str(": ");
            message.push_str(cause);
        }
        body.insert("message".into(), json!(message));
        body.extend(self.fields.clone());
        if !self.causes.is_empty() {
            body.insert("causes".into(), json!(self.causes));
        }
        json!({ "error": body })
    }

    /// The error as people read it: `error:`, `caused by:` and `help:` lines.
    pub fn to_human(&self) -> String {
        let mut text = format!("error: {}\n", self.message);
        for cause in &self.causes {
            text.push_str(&format!("caused by: {cause}\n"));
        }
        if let Some(help) = &self.help {
            text.push_str(&format!("help: {help}\n"));
        }
        text
    }
}

impl From<LeaseError> for CliError {
    fn from(error: LeaseError) -> CliError {
        let document = error.to_json();
        let mut fields = document["error"].as_object().cloned().unwrap_or_default();
        fields.remove("code");
        fields.remove("message");
        CliError {
            code: error.code(),
            exit: exit_code(&error),
            message: error.to_string(),
            causes: Vec::new(),
            help: help_for(&error).map(str::to_string),
            fields,
            quiet: false,
        }
    }
}

impl std::fmt::Display for CliError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        for cause in &self.causes {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_errors_keep_the_library_json_shape() {
        let error = LeaseError::invalid("ttl", "a time-to-live must be positive");
        let cli = CliError::from(error.clone());
        assert_eq!(cli.to_json(), error.to_json());
        assert_eq!(cli.exit, EXIT_USAGE);
        let storage = CliError::from(LeaseError::storage("disk full")).context("cannot open x");
        assert_eq!(
            storage.to_json()["error"]["message"],
            "cannot open x: storage error: disk full"
        );
        assert_eq!(storage.exit, EXIT_INTERNAL);
        assert!(storage
            .to_human()
            .contains("caused by: storage error: disk full"));
    }
}
