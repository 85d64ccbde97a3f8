//! One file per subcommand. `main.rs` parses arguments and dispatches here.

pub mod certs;
pub mod demo;
pub mod run;
pub mod sandbox;
pub mod schema;
pub mod status;
pub mod validate;

/// SIGINT/SIGTERM handlers, installed when this is created: create it before announcing
/// readiness, so a signal sent right after the announcement is never missed.
pub struct ShutdownSignal {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    pub fn install() -> std::io::Result<ShutdownSignal> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(ShutdownSignal {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// Waits for SIGINT or SIGTERM.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
