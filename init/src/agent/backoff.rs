//! Capped exponential back-off: the delay before the next attempt doubles after every failure,
//! up to a ceiling, and starts over after a success.

use std::time::Duration;

/// The delay to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial.min(max),
        }
    }

    /// Records a failure: returns how long to wait before trying again, and doubles the next.
    pub fn fail(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }

    /// Records a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn doubles_to_the_cap_and_starts_over() {
        let cases: [(Duration, Duration, &[u64]); 4] = [
            (S(1), S(30), &[1, 2, 4, 8, 16, 30, 30]),
            (S(2), S(5), &[2, 4, 5, 5]),
            (S(10), S(3), &[3, 3]),
            (S(0), S(1), &[0, 0]),
        ];
        for (initial, max, want) in cases {
            let mut b = Backoff::new(initial, max);
            let got: Vec<u64> = want.iter().map(|_| b.fail().as_secs()).collect();
            assert_eq!(got, want, "{initial:?}..{max:?}");
            b.reset();
            assert_eq!(b.fail(), initial.min(max));
        }
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!((huge.fail(), huge.fail()), (Duration::MAX, Duration::MAX));
    }
}
