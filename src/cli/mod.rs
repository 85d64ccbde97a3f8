//! One file per subcommand. `main.rs` parses arguments and dispatches here.

pub mod certs;
pub mod demo;
pub mod identity;
pub mod run;
pub mod sandbox;
pub mod schema;
pub mod status;
pub mod validate;

/// SIGINT/SIGTERM handlers, installed when this is created: create it before announcing
/// readiness, so a signal sent right after the announcement is never missed.
/// Makes SIGHUP harmless from the first instant: the default action (terminate) would kill a
/// process that a config-reloader signals while it starts. Returns a flag that records a SIGHUP
/// seen before the control loop takes over, so that reload is not lost.
pub fn early_hangup() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGHUP, seen.clone()) {
        eprintln!("bindgate: cannot handle SIGHUP early: {e}");
    }
    seen
}

/// Makes a write past the file-size limit (`ulimit -f`) an error (`EFBIG`) that the writer
/// reports, like a full disk's `ENOSPC`, instead of SIGXFSZ's default action, which kills the
/// process.
pub fn file_size_limit_is_an_error() {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, seen) {
        eprintln!("bindgate: cannot handle SIGXFSZ: {e}");
    }
}

/// SIGUSR1 reopens the access log files (as it does for Envoy and nginx: a logrotate
/// `postrotate` written for them works), from the first instant: its default action would kill
/// the process.
pub fn reopen_access_logs_on_usr1() {
    let flag = crate::filters::access_log::reopen_request_flag();
    if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGUSR1, flag) {
        eprintln!("bindgate: cannot handle SIGUSR1: {e}");
    }
}

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
