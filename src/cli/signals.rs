//! The termination signals the CLI catches while it waits or runs a command: SIGINT, SIGTERM and
//! SIGHUP, so that it can leave the queue, pass them on and release its leases.

use tokio::signal::unix::{signal, Signal, SignalKind};

use super::error::{CliError, CliResult};

/// Caught termination signals. While this lives, those signals no longer end the process.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    /// Starts catching SIGINT, SIGTERM and SIGHUP.
    pub fn catch() -> CliResult<Signals> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|e| CliError::internal(format!("cannot catch signals: {e}")))
        };
        Ok(Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        })
    }

    /// The next signal caught, as its number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}

/// The error for a command stopped by signal `signo` before it finished: exit 128+signo.
pub fn interrupted(signo: i32, while_doing: &str) -> CliError {
    CliError::new(
        "interrupted",
        (128 + signo).clamp(0, 255) as u8,
        format!("interrupted by signal {signo} {while_doing}"),
    )
    .with_field("signal", signo)
}
