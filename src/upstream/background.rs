//! A low-priority thread for the warm pools' refills: background work that must not delay live
//! connections on a busy host.
//!
//! Each checkout from a warm pool starts a refill, a resumed TLS handshake (an x25519 exchange
//! and the key schedule, about 0.2 ms of CPU). On the proxy's own workers that burst competes
//! with the connections being served; on a host with few cores it is what a proxied
//! connection waits behind. Here the pools' refill handshakes run on one thread of their own, a
//! single-threaded tokio runtime whose nice value is raised by [`NICE`], so the kernel runs a
//! live connection's work first and the refill in what is left.
//!
//! Only the handshakes run here. The pool's driver and the watchers of its idle connections
//! stay on the serving runtime, and a refill into a pool with no idle connection left runs
//! there too, at full priority: a saturated host slows the background refills but cannot
//! starve the pool.
//!
//! A connection made here is registered with this runtime's reactor; the pool moves it to the
//! serving runtime's when it parks it ([`super::dial::IngressSocket::rebind`]), so no live byte
//! ever waits on this thread.
//!
//! The proxy turns it on at start-up ([`enable`]); without that (unit tests, the sandbox), pools
//! refill on the runtime they are started from, which keeps tokio's paused clock in tests.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::runtime::Handle;

/// How much lower than the serving threads the refill thread runs (`nice` 0 → 10: about a tenth
/// of a core's time against one busy thread at the default priority).
pub const NICE: i32 = 10;

static ENABLED: AtomicBool = AtomicBool::new(false);
static RUNTIME: OnceLock<Option<Handle>> = OnceLock::new();

/// Warm pools created from now on refill on the background thread.
pub fn enable() {
    ENABLED.store(true, Ordering::Release);
}

/// The background runtime, started on first use; `None` when it is not enabled or its thread
/// could not start (then the caller's runtime does the work, as without it).
pub(crate) fn handle() -> Option<Handle> {
    if !ENABLED.load(Ordering::Acquire) {
        return None;
    }
    RUNTIME.get_or_init(start).clone()
}

fn start() -> Option<Handle> {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::warn!(
                "cannot start the warm pools' refill thread, refilling on the serving threads: {e}"
            );
            return None;
        }
    };
    let handle = runtime.handle().clone();
    let spawned = std::thread::Builder::new()
        .name("bindgate-refill".into())
        .spawn(move || {
            lower_priority();
            // Runs the spawned refills until the process exits.
            runtime.block_on(std::future::pending::<()>());
        });
    match spawned {
        Ok(_) => Some(handle),
        Err(e) => {
            tracing::warn!(
                "cannot start the warm pools' refill thread, refilling on the serving threads: {e}"
            );
            None
        }
    }
}

/// Raises this thread's nice value (Linux keeps one per thread). Lowering it back would need
/// privileges, which is why the refills get a thread of their own.
#[cfg(target_os = "linux")]
fn lower_priority() {
    use rustix::process::{getpriority_process, setpriority_process};
    let tid = Some(rustix::thread::gettid());
    let raised = getpriority_process(tid)
        .and_then(|current| setpriority_process(tid, current.saturating_add(NICE)));
    if let Err(e) = raised {
        tracing::debug!("cannot lower the refill thread's priority: {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread runs its tasks at a nice value `NICE` above the process's (Linux reports
    /// a thread's nice value through its own TID).
    #[cfg(target_os = "linux")]
    #[test]
    fn the_refill_thread_runs_at_a_lower_priority() {
        use rustix::process::getpriority_process;
        use rustix::thread::gettid;
        // `start`, not `enable` + `handle`: turning the process-wide switch on here would move
        // the refills of other pool tests sharing this process (under `cargo test`).
        let handle = start().expect("the background runtime starts");
        let (tx, rx) = std::sync::mpsc::channel();
        handle.spawn(async move {
            let nice = getpriority_process(Some(gettid())).unwrap();
            let name = std::thread::current().name().map(str::to_owned);
            let _ = tx.send((nice, name));
        });
        let (nice, name) = rx.recv().unwrap();
        let ours = getpriority_process(Some(gettid())).unwrap();
        assert_eq!(nice, (ours + NICE).min(19));
        assert_eq!(name.as_deref(), Some("bindgate-refill"));
    }
}
