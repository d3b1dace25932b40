//! [`Quiet`]: which connections have gone quiet, found without a timer per
//! connection. Time is cut into epochs (the shell ends one every
//! `tls_keys_idle_ms`); a connection that is busy in an epoch is listed
//! once in it, and when the next epoch ends, those on the list not busy
//! since are quiet: silent for at least one whole epoch, at most two.
//! The shell wakes each of them once to let its TLS keys sleep
//! (`TlsConn::hibernate`), a twentieth of them per tick: an epoch's end
//! with thousands of busy connections does not stall the shard for all of
//! them at once. A connection that stays silent is on no list and costs
//! nothing; a busy one is listed once per epoch.
//!
//! Each connection keeps its own mark (a `u64` in its task): the epoch it
//! was last busy in, plus one, or 0 if it was never busy or has slept
//! since.

/// The epoch lists of one shard.
#[derive(Debug)]
pub struct Quiet<Id> {
    /// Off (the setting is 0): nothing is listed, nothing is ever quiet.
    on: bool,
    epoch: u64,
    /// Connections busy in even and odd epochs.
    busy: [Vec<Id>; 2],
    /// Connections still to wake from ended epochs.
    waking: Vec<Id>,
    /// How many of them each [`Quiet::to_wake`] hands out.
    per_tick: usize,
}

/// Ticks over which an epoch's list is woken.
const WAKE_TICKS: usize = 20;

impl<Id: Copy> Quiet<Id> {
    /// Lists that find quiet connections, or (`on` false) never do.
    pub fn new(on: bool) -> Self {
        Self {
            on,
            epoch: 0,
            busy: [Vec::new(), Vec::new()],
            waking: Vec::new(),
            per_tick: 0,
        }
    }

    /// `id`, whose mark is `mark`, was busy: listed in this epoch unless
    /// it already is.
    pub fn busy(&mut self, id: Id, mark: &mut u64) {
        let now = self.epoch + 1;
        if self.on && *mark != now {
            *mark = now;
            self.busy[self.slot()].push(id);
        }
    }

    /// Whether the connection with `mark` has been silent since before the
    /// last epoch began (then it should sleep, and set its mark to 0).
    pub fn is_quiet(&self, mark: u64) -> bool {
        mark != 0 && mark < self.epoch
    }

    /// Ends the epoch. The connections busy in the epoch before the one
    /// that just ended (some were busy since, and are not quiet) are to be
    /// woken and asked [`Quiet::is_quiet`], through [`Quiet::to_wake`]. The
    /// list is taken, not drained: a quiet shard keeps no room for a
    /// burst's.
    pub fn end_epoch(&mut self) {
        self.epoch += 1;
        let slot = self.slot();
        let listed = std::mem::take(&mut self.busy[slot]);
        if self.waking.is_empty() {
            self.waking = listed;
        } else {
            self.waking.extend(listed);
        }
        self.per_tick = self.waking.len().div_ceil(WAKE_TICKS);
    }

    /// The connections to wake at this tick: a twentieth of an epoch's
    /// list, so all are woken within `WAKE_TICKS` ticks.
    pub fn to_wake(&mut self) -> Vec<Id> {
        let from = self.waking.len().saturating_sub(self.per_tick);
        let now = self.waking.split_off(from);
        if self.waking.is_empty() {
            self.waking = Vec::new(); // its room too
        }
        now
    }

    fn slot(&self) -> usize {
        usize::from(self.epoch % 2 == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ends an epoch and returns the quiet connections among those to wake.
    fn end(quiet: &mut Quiet<u32>, marks: &mut [u64]) -> Vec<u32> {
        quiet.end_epoch();
        let mut woken = Vec::new();
        for _ in 0..WAKE_TICKS {
            woken.extend(quiet.to_wake());
        }
        assert!(quiet.to_wake().is_empty(), "all woken within WAKE_TICKS");
        woken.sort_unstable();
        let mut slept = Vec::new();
        for id in woken {
            let mark = &mut marks[id as usize];
            if quiet.is_quiet(*mark) {
                *mark = 0;
                slept.push(id);
            }
        }
        slept
    }

    #[test]
    fn a_connection_sleeps_after_one_whole_silent_epoch_and_only_once() {
        let mut quiet = Quiet::new(true);
        let mut marks = vec![0; 3];
        quiet.busy(0, &mut marks[0]);
        quiet.busy(0, &mut marks[0]); // listed once
        assert_eq!(quiet.busy[0], [0]);
        assert_eq!(end(&mut quiet, &mut marks), [] as [u32; 0]);
        assert!(
            !quiet.is_quiet(marks[0]),
            "silent for part of an epoch only"
        );
        assert_eq!(end(&mut quiet, &mut marks), [0]);
        assert_eq!(marks[0], 0);
        // Asleep, it is on no list and never quiet again until busy.
        for _ in 0..4 {
            assert_eq!(end(&mut quiet, &mut marks), [] as [u32; 0]);
        }
        assert!(quiet.busy.iter().all(Vec::is_empty));
        quiet.busy(0, &mut marks[0]);
        assert_eq!(end(&mut quiet, &mut marks), [] as [u32; 0]);
        assert_eq!(end(&mut quiet, &mut marks), [0]);
    }

    #[test]
    fn a_connection_busy_in_every_epoch_never_sleeps() {
        let mut quiet = Quiet::new(true);
        let mut marks = vec![0; 2];
        for _ in 0..10 {
            quiet.busy(1, &mut marks[1]);
            assert_eq!(end(&mut quiet, &mut marks), [] as [u32; 0]);
        }
        // Listed in at most the two live epochs.
        assert!(quiet.busy.iter().map(Vec::len).sum::<usize>() <= 2);
        assert_eq!(end(&mut quiet, &mut marks), [1]);
    }

    #[test]
    fn connections_sleep_by_when_they_were_last_busy() {
        let mut quiet = Quiet::new(true);
        let mut marks = vec![0; 3];
        quiet.busy(0, &mut marks[0]);
        quiet.busy(1, &mut marks[1]);
        assert_eq!(end(&mut quiet, &mut marks), [] as [u32; 0]);
        quiet.busy(1, &mut marks[1]);
        quiet.busy(2, &mut marks[2]);
        assert_eq!(end(&mut quiet, &mut marks), [0]);
        assert_eq!(end(&mut quiet, &mut marks), [1, 2]);
    }

    #[test]
    fn an_epochs_list_is_woken_a_twentieth_per_tick() {
        let mut quiet = Quiet::new(true);
        let mut marks = vec![0; 1000];
        for (id, mark) in marks.iter_mut().enumerate() {
            quiet.busy(u32::try_from(id).unwrap(), mark);
        }
        quiet.end_epoch();
        assert!(quiet.to_wake().is_empty(), "busy in the epoch that ended");
        quiet.end_epoch();
        let mut woken = 0;
        for _ in 0..WAKE_TICKS {
            let now = quiet.to_wake();
            assert_eq!(now.len(), 50);
            assert!(now.iter().all(|id| quiet.is_quiet(marks[*id as usize])));
            woken += now.len();
        }
        assert_eq!(woken, 1000);
        assert!(quiet.to_wake().is_empty());
        assert_eq!(quiet.waking.capacity(), 0, "no room kept once woken");
    }

    #[test]
    fn off_lists_nothing_and_nothing_is_quiet() {
        let mut quiet = Quiet::new(false);
        let mut marks = vec![0; 1];
        for _ in 0..5 {
            quiet.busy(0, &mut marks[0]);
            assert_eq!(end(&mut quiet, &mut marks), [] as [u32; 0]);
        }
        assert!(quiet.busy.iter().all(Vec::is_empty));
    }
}
