//! The token bucket behind both `local_rate_limit` filters: one bucket for the whole listener or
//! route, or one per client address in a bounded table.
//!
//! Per client: IPv4 addresses are keyed whole, IPv6 by their /64 (one host usually holds a whole
//! /64, so keying single addresses would let it mint buckets at will). The table holds at most
//! [`MAX_TRACKED`] keys: it is pruned of keys whose bucket is full again (they carry no state)
//! every [`PRUNE_EVERY`] checks and whenever it is full; while it stays full, new clients share
//! one overflow bucket instead of growing it.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Most client keys tracked at once.
pub const MAX_TRACKED: usize = 65_536;
/// Checks between two prunes of the per-client table.
pub const PRUNE_EVERY: u64 = 4_096;

pub struct TokenBucket {
    shared: DefaultDirectRateLimiter,
    per_client: Option<DefaultKeyedRateLimiter<IpAddr>>,
    checks: AtomicU64,
    clock: DefaultClock,
}

impl std::fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenBucket")
            .field("per_client", &self.per_client.as_ref().map(|t| t.len()))
            .finish_non_exhaustive()
    }
}

impl TokenBucket {
    /// `per_second` sustained, `burst` at once; with `per_client`, one bucket per client key.
    pub fn new(per_second: NonZeroU32, burst: NonZeroU32, per_client: bool) -> Self {
        let quota = Quota::per_second(per_second).allow_burst(burst);
        TokenBucket {
            shared: RateLimiter::direct(quota),
            per_client: per_client.then(|| RateLimiter::keyed(quota)),
            checks: AtomicU64::new(0),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one token for `client`, or says how long until one is available.
    pub fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let Some(table) = &self.per_client else {
            return self
                .shared
                .check()
                .map_err(|e| e.wait_time_from(self.clock.now()));
        };
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        if n % PRUNE_EVERY == PRUNE_EVERY - 1 || table.len() >= MAX_TRACKED {
            table.retain_recent();
            table.shrink_to_fit();
        }
        if table.len() >= MAX_TRACKED {
            // Full of clients with state: newcomers share the overflow bucket.
            return self
                .shared
                .check()
                .map_err(|e| e.wait_time_from(self.clock.now()));
        }
        table
            .check_key(&client_key(client))
            .map_err(|e| e.wait_time_from(self.clock.now()))
    }

    /// Client keys tracked now (0 without `per_client`).
    pub fn tracked(&self) -> usize {
        self.per_client.as_ref().map_or(0, |t| t.len())
    }
}

/// The key a client address is counted under: IPv4 whole, IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// `Retry-After` in whole seconds (rounded up, at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn shared_bucket_allows_the_burst_then_says_how_long() {
        let b = TokenBucket::new(nz(1), nz(3), false);
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert!((0..3).all(|_| b.check(ip).is_ok()));
        let wait = b.check("127.0.0.3".parse().unwrap()).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
    }

    #[test]
    fn per_client_buckets_are_separate() {
        let b = TokenBucket::new(nz(1), nz(2), true);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let c: IpAddr = "127.0.0.3".parse().unwrap();
        assert!(b.check(a).is_ok() && b.check(a).is_ok());
        assert!(b.check(a).is_err());
        assert!(b.check(c).is_ok() && b.check(c).is_ok());
        assert!(b.check(c).is_err());
        assert_eq!(b.tracked(), 2);
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let b = TokenBucket::new(nz(1), nz(1), true);
        assert!(b.check("2001:db8::1".parse().unwrap()).is_ok());
        assert!(b.check("2001:db8::2".parse().unwrap()).is_err());
        assert!(b.check("2001:db8:0:1::1".parse().unwrap()).is_ok());
        assert_eq!(
            client_key("::ffff:10.0.0.1".parse().unwrap()),
            "10.0.0.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn the_table_stays_bounded() {
        let b = TokenBucket::new(nz(1), nz(1), true);
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            let _ = b.check(ip);
        }
        assert!(b.tracked() <= MAX_TRACKED, "{}", b.tracked());
    }
}
