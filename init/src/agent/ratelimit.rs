//! Rate limiting of failed authentication attempts, per peer address and globally.
//!
//! Each limit is a token bucket kept as one timestamp (GCRA): a burst of `burst` failures is
//! allowed, then one more per `interval`. Only failures are counted, so a manager that knows the
//! token is never slowed down by its own successes; while a bucket is empty every attempt is
//! refused before the secret is even looked at.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Peers remembered at most; beyond that only the global bucket limits newcomers.
const MAX_PEERS: usize = 4096;

/// One bucket's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Failures allowed back to back.
    pub burst: u32,
    /// Time that earns one more attempt.
    pub interval: Duration,
}

/// An attempt refused for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
/// Too many failed attempts; retry in {} s
#[error("Too many failed attempts; retry in {} s", retry_after.as_secs().max(1))]
pub struct Limited {
    pub retry_after: Duration,
}

/// The "theoretical arrival time" of one bucket: it is empty while `tat` is further than
/// `(burst - 1) * interval` ahead of now.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tat: Instant,
}

impl Bucket {
    /// How long until the next attempt is allowed, if it is not allowed now. A slack too large to
    /// represent never limits.
    fn wait(&self, limit: Limit, now: Instant) -> Option<Duration> {
        let slack = limit.interval.checked_mul(limit.burst.saturating_sub(1))?;
        let wait = self.tat.saturating_duration_since(now.checked_add(slack)?);
        (!wait.is_zero()).then_some(wait)
    }

    fn charge(&mut self, limit: Limit, now: Instant) {
        let from = self.tat.max(now);
        self.tat = from.checked_add(limit.interval).unwrap_or(from);
    }
}

/// Failure buckets for every peer and one for everybody.
#[derive(Debug)]
pub struct RateLimiter {
    per_peer: Limit,
    global: Limit,
    peers: HashMap<IpAddr, Bucket>,
    everybody: Option<Bucket>,
}

impl Default for RateLimiter {
    /// Five failures, then one per 10 s for each peer; twenty, then one per 10 s for all peers.
    fn default() -> Self {
        let interval = Duration::from_secs(10);
        Self::new(
            Limit { burst: 5, interval },
            Limit {
                burst: 20,
                interval,
            },
        )
    }
}

impl RateLimiter {
    pub fn new(per_peer: Limit, global: Limit) -> Self {
        Self {
            per_peer,
            global,
            peers: HashMap::new(),
            everybody: None,
        }
    }

    /// Whether `peer` may attempt now.
    pub fn check(&self, peer: IpAddr, now: Instant) -> Result<(), Limited> {
        let own = self
            .peers
            .get(&peer)
            .and_then(|b| b.wait(self.per_peer, now));
        let all = self.everybody.and_then(|b| b.wait(self.global, now));
        match own.max(all) {
            Some(retry_after) => Err(Limited { retry_after }),
            None => Ok(()),
        }
    }

    /// Counts a failed attempt by `peer`.
    pub fn record_failure(&mut self, peer: IpAddr, now: Instant) {
        let start = Bucket { tat: now };
        self.everybody.get_or_insert(start).charge(self.global, now);
        if self.peers.len() >= MAX_PEERS && !self.peers.contains_key(&peer) {
            // A drained bucket is the same as no bucket: forget those first.
            self.peers.retain(|_, b| b.tat > now);
            if self.peers.len() >= MAX_PEERS {
                return;
            }
        }
        self.peers
            .entry(peer)
            .or_insert(start)
            .charge(self.per_peer, now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn five_failures_then_one_per_ten_seconds() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::default();
        for _ in 0..5 {
            assert_eq!(rl.check(A, t0), Ok(()));
            rl.record_failure(A, t0);
        }
        assert_eq!(
            rl.check(A, t0),
            Err(Limited {
                retry_after: secs(10)
            })
        );
        assert_eq!(rl.check(B, t0), Ok(()), "another peer is not limited by A");
        assert_eq!(
            rl.check(A, t0 + secs(4)),
            Err(Limited {
                retry_after: secs(6)
            })
        );
        assert_eq!(rl.check(A, t0 + secs(10)), Ok(()));
        rl.record_failure(A, t0 + secs(10));
        assert!(rl.check(A, t0 + secs(19)).is_err());
        assert_eq!(rl.check(A, t0 + secs(20)), Ok(()));
        // A long quiet spell refills the whole burst.
        let later = t0 + secs(120);
        for _ in 0..5 {
            assert_eq!(rl.check(A, later), Ok(()));
            rl.record_failure(A, later);
        }
        assert!(rl.check(A, later).is_err());
    }

    #[test]
    fn global_bucket_limits_many_peers() {
        let t0 = Instant::now();
        let limit = Limit {
            burst: 3,
            interval: secs(10),
        };
        let mut rl = RateLimiter::new(
            Limit {
                burst: 5,
                interval: secs(10),
            },
            limit,
        );
        for i in 0..3u8 {
            let peer = IpAddr::V4(Ipv4Addr::new(10, 0, 1, i));
            assert_eq!(rl.check(peer, t0), Ok(()));
            rl.record_failure(peer, t0);
        }
        let fresh = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(
            rl.check(fresh, t0),
            Err(Limited {
                retry_after: secs(10)
            })
        );
        assert_eq!(rl.check(fresh, t0 + secs(10)), Ok(()));
    }

    #[test]
    fn peer_table_is_bounded() {
        let t0 = Instant::now();
        let mut rl = RateLimiter::new(
            Limit {
                burst: 5,
                interval: secs(1),
            },
            Limit {
                burst: u32::MAX,
                interval: Duration::ZERO,
            },
        );
        for i in 0..(MAX_PEERS as u32 + 10) {
            rl.record_failure(IpAddr::V4(Ipv4Addr::from(i)), t0);
        }
        assert_eq!(rl.peers.len(), MAX_PEERS);
        // Once their buckets drained, old peers make room for new ones.
        rl.record_failure(B, t0 + secs(2));
        assert_eq!(rl.peers.len(), 1);
    }

    #[test]
    fn message_rounds_up_to_a_second() {
        let e = Limited {
            retry_after: Duration::from_millis(300),
        };
        assert_eq!(e.to_string(), "Too many failed attempts; retry in 1 s");
    }
}
