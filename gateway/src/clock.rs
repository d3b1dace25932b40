//! [`Now`]: the two clocks the sans-IO cores are given. Deadlines
//! (handshake, auth, idle, drain) run on the monotonic clock, which never
//! jumps; timestamps and TTLs use the wall clock, which is what messages,
//! tokens and receipts speak.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A moment, on both clocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on a monotonic clock (any origin): for deadlines.
    pub mono_ms: u64,
    /// Milliseconds since the Unix epoch: for timestamps, TTLs and tokens.
    pub wall_ms: u64,
}

/// The process's clocks: monotonic milliseconds count from its creation.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Clock {
    /// A clock whose monotonic time starts now (at 1 ms, so 0 never is).
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }

    /// The current moment.
    pub fn now(&self) -> Now {
        let mono = self.origin.elapsed().as_millis();
        Now {
            mono_ms: 1 + u64::try_from(mono).expect("below 500 million years"),
            wall_ms: wall_ms(),
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn wall_ms() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    u64::try_from(since.as_millis()).expect("before year 500 million")
}
