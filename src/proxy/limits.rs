//! Admission at accept: a cap on open connections and a rate limit on new ones.
//!
//! These are checked once per accepted socket, before any upstream work, so a plain semaphore and
//! a GCRA limiter (governor) are enough; no per-request service stack is involved for tcp.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::Limits;

#[derive(Debug, Default)]
pub struct Admission {
    open: Option<Arc<Semaphore>>,
    rate: Option<DefaultDirectRateLimiter>,
}

/// Why a connection was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    TooManyConnections,
    RateLimited,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rejected::TooManyConnections => "max_connections reached",
            Rejected::RateLimited => "connections_per_second exceeded",
        })
    }
}

/// Held for the life of an admitted connection.
#[derive(Debug)]
pub struct AdmissionPermit(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl Admission {
    pub fn new(limits: Option<&Limits>) -> Admission {
        let Some(l) = limits else {
            return Admission::default();
        };
        let open = l
            .max_connections
            .map(|n| Arc::new(Semaphore::new(n as usize)));
        let rate = l
            .connections_per_second
            .and_then(NonZeroU32::new)
            .map(|per_sec| {
                let burst = l.burst.and_then(NonZeroU32::new).unwrap_or(per_sec);
                RateLimiter::direct(Quota::per_second(per_sec).allow_burst(burst))
            });
        Admission { open, rate }
    }

    pub fn admit(&self) -> Result<AdmissionPermit, Rejected> {
        if let Some(rate) = &self.rate {
            rate.check().map_err(|_| Rejected::RateLimited)?;
        }
        match &self.open {
            Some(sem) => sem
                .clone()
                .try_acquire_owned()
                .map(|p| AdmissionPermit(Some(p)))
                .map_err(|_| Rejected::TooManyConnections),
            None => Ok(AdmissionPermit(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_cap_frees_on_drop() {
        let a = Admission::new(Some(&Limits {
            max_connections: Some(2),
            ..Default::default()
        }));
        let p1 = a.admit().unwrap();
        let _p2 = a.admit().unwrap();
        assert_eq!(a.admit().unwrap_err(), Rejected::TooManyConnections);
        drop(p1);
        assert!(a.admit().is_ok());
    }

    #[test]
    fn rate_limit_allows_burst_then_refuses() {
        let a = Admission::new(Some(&Limits {
            connections_per_second: Some(1),
            burst: Some(3),
            ..Default::default()
        }));
        let admitted = (0..10).filter(|_| a.admit().is_ok()).count();
        assert_eq!(admitted, 3);
    }
}
