//! [`CommitPacer`]: how long the flusher holds the next group commit
//! (`commit_delay_us`). A write that follows the previous one within the
//! delay waits until the delay has passed since that one ended, so that
//! under load each write carries more records; a write after a quiet
//! spell of at least the delay goes at once (a message that comes sooner
//! after a write may wait up to the delay). Time is passed in.

use std::time::{Duration, Instant};

/// When the next log write may start.
#[derive(Debug, Clone)]
pub struct CommitPacer {
    delay: Duration,
    last_end: Option<Instant>,
}

impl CommitPacer {
    /// A pacer holding writes `delay` apart (zero: never holds).
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            last_end: None,
        }
    }

    /// How long a write about to start at `now` should wait first.
    pub fn hold(&self, now: Instant) -> Duration {
        match self.last_end {
            Some(end) => (end + self.delay).saturating_duration_since(now),
            None => Duration::ZERO,
        }
    }

    /// A write ended at `now`.
    pub fn ended(&mut self, now: Instant) {
        self.last_end = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_micros(150);

    #[test]
    fn the_first_write_goes_at_once() {
        let pacer = CommitPacer::new(DELAY);
        assert_eq!(pacer.hold(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn a_write_right_after_another_waits_out_the_delay() {
        let t0 = Instant::now();
        let mut pacer = CommitPacer::new(DELAY);
        pacer.ended(t0);
        assert_eq!(pacer.hold(t0), DELAY);
        assert_eq!(
            pacer.hold(t0 + Duration::from_micros(100)),
            Duration::from_micros(50)
        );
    }

    #[test]
    fn a_write_after_a_quiet_spell_goes_at_once() {
        let t0 = Instant::now();
        let mut pacer = CommitPacer::new(DELAY);
        pacer.ended(t0);
        assert_eq!(pacer.hold(t0 + DELAY), Duration::ZERO);
        assert_eq!(pacer.hold(t0 + Duration::from_secs(1)), Duration::ZERO);
    }

    #[test]
    fn no_delay_never_holds() {
        let t0 = Instant::now();
        let mut pacer = CommitPacer::new(Duration::ZERO);
        pacer.ended(t0);
        assert_eq!(pacer.hold(t0), Duration::ZERO);
    }
}
