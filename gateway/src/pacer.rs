//! [`CommitPacer`]: how long the flusher holds the next group commit
//! (`commit_delay_us`). Writes that keep coming back to back are spaced
//! the delay apart, so that under load each carries more records: once a
//! write was asked for within the delay of the previous one's end (a
//! streak), the next one asked for as soon waits until the delay has
//! passed since the last write ended. A write asked for after a quiet
//! spell of at least the delay goes at once and ends the streak, and so
//! does the first one after it: an idle or lightly loaded shard never
//! holds a write, only a shard whose writes already follow each other
//! does. Time is passed in.

use std::time::{Duration, Instant};

/// When the next log write may start.
#[derive(Debug, Clone)]
pub struct CommitPacer {
    delay: Duration,
    last_end: Option<Instant>,
    /// The last write was asked for within the delay of its predecessor's end.
    streak: bool,
    /// The write being held or made was asked for that soon.
    asked_soon: bool,
}

impl CommitPacer {
    /// A pacer holding writes that follow each other `delay` apart (zero:
    /// never holds).
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            last_end: None,
            streak: false,
            asked_soon: false,
        }
    }

    /// A write is asked for at `now`: how long it should wait first.
    pub fn hold(&mut self, now: Instant) -> Duration {
        let until = self.last_end.map(|end| end + self.delay);
        let wait = until.map_or(Duration::ZERO, |until| until.saturating_duration_since(now));
        self.asked_soon = !wait.is_zero();
        match self.streak {
            true => wait,
            false => Duration::ZERO,
        }
    }

    /// The write asked for last ended at `now`.
    pub fn ended(&mut self, now: Instant) {
        self.streak = self.asked_soon;
        self.last_end = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELAY: Duration = Duration::from_micros(150);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    /// A pacer whose last two writes came back to back, the last ending at `t0`.
    fn in_a_streak(t0: Instant) -> CommitPacer {
        let mut pacer = CommitPacer::new(DELAY);
        pacer.hold(t0 - us(500));
        pacer.ended(t0 - us(400));
        assert_eq!(pacer.hold(t0 - us(400)), Duration::ZERO, "first in a row");
        pacer.ended(t0);
        pacer
    }

    #[test]
    fn the_first_write_goes_at_once() {
        let mut pacer = CommitPacer::new(DELAY);
        assert_eq!(pacer.hold(Instant::now()), Duration::ZERO);
    }

    #[test]
    fn one_write_right_after_another_goes_at_once() {
        let t0 = Instant::now();
        let mut pacer = CommitPacer::new(DELAY);
        pacer.hold(t0);
        pacer.ended(t0 + us(300));
        assert_eq!(pacer.hold(t0 + us(300)), Duration::ZERO);
    }

    #[test]
    fn writes_that_keep_following_each_other_wait_out_the_delay() {
        let t0 = Instant::now();
        let mut pacer = in_a_streak(t0);
        assert_eq!(pacer.hold(t0), DELAY);
        assert_eq!(pacer.hold(t0 + us(100)), us(50));
        // The held write keeps the streak going: so is the next one held.
        pacer.ended(t0 + us(400));
        assert_eq!(pacer.hold(t0 + us(400)), DELAY);
    }

    #[test]
    fn a_quiet_spell_ends_the_streak() {
        let t0 = Instant::now();
        let mut pacer = in_a_streak(t0);
        assert_eq!(pacer.hold(t0 + DELAY), Duration::ZERO);
        pacer.ended(t0 + us(500));
        // After the quiet spell's write, the next goes at once too.
        assert_eq!(pacer.hold(t0 + us(500)), Duration::ZERO);
        pacer.ended(t0 + us(800));
        assert_eq!(pacer.hold(t0 + us(800)), DELAY);
    }

    #[test]
    fn no_delay_never_holds() {
        let t0 = Instant::now();
        let mut pacer = CommitPacer::new(Duration::ZERO);
        for _ in 0..3 {
            assert_eq!(pacer.hold(t0), Duration::ZERO);
            pacer.ended(t0);
        }
    }
}
