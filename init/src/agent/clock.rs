//! Time, injected: monotonic time for expiries and rate limits (immune to the wall clock being set
//! at boot), wall-clock time for certificate validity.

use rustls::pki_types::UnixTime;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A source of time.
pub trait Clock: Send + Sync {
    /// Monotonic now, for token and session expiry and rate limiting.
    fn now(&self) -> Instant;
    /// Wall-clock now, for certificate validity checks.
    fn wall(&self) -> UnixTime;
}

/// The system's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn wall(&self) -> UnixTime {
        UnixTime::now()
    }
}

/// A clock that only moves when told to, for tests of expiry and rate limits.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    wall_start: Duration,
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    /// Starts at the system's current times.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            wall_start: Duration::from_secs(UnixTime::now().as_secs()),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    /// Moves both clocks forward by `by`.
    pub fn advance(&self, by: Duration) {
        let mut elapsed = self.elapsed.lock().unwrap_or_else(|p| p.into_inner());
        *elapsed += by;
    }

    fn elapsed(&self) -> Duration {
        *self.elapsed.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.start + self.elapsed()
    }

    fn wall(&self) -> UnixTime {
        UnixTime::since_unix_epoch(self.wall_start + self.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_both_clocks_only_when_told() {
        let clock = ManualClock::new();
        let (now, wall) = (clock.now(), clock.wall().as_secs());
        assert_eq!(clock.now(), now);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - now, Duration::from_secs(90));
        assert_eq!(clock.wall().as_secs() - wall, 90);
    }

    #[test]
    fn system_clock_is_after_2025() {
        assert!(SystemClock.wall().as_secs() > 1_735_689_600);
    }
}
