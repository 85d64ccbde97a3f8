//! Per-endpoint fault injection at the ingress, for tests and demos of failure handling.
//!
//! | knob | effect |
//! |---|---|
//! | `latency` | the ingress waits this long before dialing the target and answering `ConnResponse` |
//! | `refuse` | every upgrade is answered `ERR_NGROK_3200` ("endpoint ... is offline (sandbox fault: refuse)"), then closed |
//! | `reset_after_bytes: N` | once N bytes went client→backend, the client connection is aborted: no close_notify, SO_LINGER 0 so the kernel sends a TCP RST |
//! | `read_rate: B` | reading from the client after the upgrade is paced to B bytes per second |
//!
//! This module owns the runtime form of the knobs and the two mechanisms that need state
//! ([`ReadPacer`], [`ResetHandle`]); the ingress decides where to apply them.

use std::io;
use std::num::NonZeroU64;
use std::os::fd::AsFd;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::config::FaultsConfig;

/// The code a refused upgrade carries: refusing emulates an endpoint that is offline.
pub const REFUSE_CODE: &str = "ERR_NGROK_3200";

/// An endpoint's faults, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub latency: Duration,
    pub refuse: bool,
    pub reset_after_bytes: Option<u64>,
    pub read_rate: Option<NonZeroU64>,
}

impl TryFrom<&FaultsConfig> for Faults {
    /// The offending field and why.
    type Error = (&'static str, String);

    fn try_from(config: &FaultsConfig) -> Result<Self, Self::Error> {
        let read_rate = match config.read_rate {
            None => None,
            Some(rate) => Some(NonZeroU64::new(rate).ok_or((
                "read_rate",
                "must be at least 1 byte per second (omit it for no cap)".to_string(),
            ))?),
        };
        Ok(Faults {
            latency: config.latency.map(|d| d.get()).unwrap_or_default(),
            refuse: config.refuse,
            reset_after_bytes: config.reset_after_bytes,
            read_rate,
        })
    }
}

/// Paces reads to a byte rate: callers cap each read at [`ReadPacer::chunk_limit`] and report
/// what they read to [`ReadPacer::consumed`], which sleeps until the budget allows that much.
#[derive(Debug)]
pub struct ReadPacer {
    rate: NonZeroU64,
    start: Instant,
    taken: u64,
}

impl ReadPacer {
    pub fn new(rate: NonZeroU64) -> Self {
        ReadPacer {
            rate,
            start: Instant::now(),
            taken: 0,
        }
    }

    /// About a tenth of a second's worth, so the pace is smooth rather than one burst a second.
    pub fn chunk_limit(&self) -> usize {
        usize::try_from(self.rate.get() / 10)
            .unwrap_or(usize::MAX)
            .clamp(1, 16 * 1024)
    }

    /// Records `n` bytes read and waits until reading them was within the rate.
    pub async fn consumed(&mut self, n: usize) {
        self.taken = self.taken.saturating_add(n as u64);
        let due = Duration::try_from_secs_f64(self.taken as f64 / self.rate.get() as f64)
            .unwrap_or(Duration::MAX);
        match self.start.checked_add(due) {
            Some(at) => tokio::time::sleep_until(at).await,
            // Beyond any representable instant: the budget is spent for good.
            None => std::future::pending().await,
        }
    }
}

/// A second descriptor on a client socket, kept so a `reset_after_bytes` fault can turn the
/// socket's eventual close into a TCP RST even after the stream was split and wrapped in TLS.
/// Socket options belong to the socket, not the descriptor, so setting SO_LINGER here applies
/// when the last descriptor closes.
#[derive(Debug)]
pub struct ResetHandle(socket2::Socket);

impl ResetHandle {
    pub fn arm(stream: &TcpStream) -> io::Result<Self> {
        let fd = stream.as_fd().try_clone_to_owned()?;
        Ok(ResetHandle(socket2::Socket::from(fd)))
    }

    /// Makes the close abortive; the caller then drops every handle on the connection.
    pub fn fire(self) -> io::Result<()> {
        self.0.set_linger(Some(Duration::ZERO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConfigDuration;

    #[test]
    fn config_maps_to_faults() {
        let config = FaultsConfig {
            latency: Some(ConfigDuration(Duration::from_millis(50))),
            refuse: true,
            reset_after_bytes: Some(3),
            read_rate: Some(100),
        };
        let faults = Faults::try_from(&config).unwrap();
        assert_eq!(faults.latency, Duration::from_millis(50));
        assert!(faults.refuse);
        assert_eq!(faults.reset_after_bytes, Some(3));
        assert_eq!(faults.read_rate, NonZeroU64::new(100));
        assert_eq!(
            Faults::try_from(&FaultsConfig::default()).unwrap(),
            Faults::default()
        );
        let zero_rate = FaultsConfig {
            read_rate: Some(0),
            ..Default::default()
        };
        assert_eq!(Faults::try_from(&zero_rate).unwrap_err().0, "read_rate");
    }

    #[test]
    fn pacer_chunks_are_a_tenth_of_the_rate_within_bounds() {
        let chunk = |rate| ReadPacer::new(NonZeroU64::new(rate).unwrap()).chunk_limit();
        assert_eq!(chunk(1), 1);
        assert_eq!(chunk(1000), 100);
        assert_eq!(chunk(u64::MAX), 16 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_waits_in_proportion_to_bytes_read() {
        let mut pacer = ReadPacer::new(NonZeroU64::new(1000).unwrap());
        let start = Instant::now();
        pacer.consumed(500).await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        pacer.consumed(1500).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }
}
