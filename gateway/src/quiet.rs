//! [`Quiet`]: which connections have gone quiet, found without a timer per
//! connection. Time is cut into epochs (the shell ends one every
//! `tls_keys_idle_ms`); a connection that is busy in an epoch is listed
//! once in it, and when the next epoch ends, those on the list not busy
//! since are quiet: silent for at least one whole epoch, at most two.
//! The shell wakes each of them once to let its TLS keys sleep
//! (`TlsConn::hibernate`). A connection that stays silent is on no list
//! and costs nothing; a busy one is listed once per epoch.
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
}

impl<Id: Copy> Quiet<Id> {
    /// Lists that find quiet connections, or (`on` false) never do.
    pub fn new(on: bool) -> Self {
        Self {
            on,
            epoch: 0,
            busy: [Vec::new(), Vec::new()],
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

    /// Ends the epoch. Returns the connections to wake and ask
    /// [`Quiet::is_quiet`]: those busy in the epoch before the one that
    /// just ended (some were busy since, and are not quiet). The list is
    /// taken, not drained: a quiet shard keeps no room for a burst's.
    pub fn end_epoch(&mut self) -> Vec<Id> {
        self.epoch += 1;
        let slot = self.slot();
        std::mem::take(&mut self.busy[slot])
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
        let woken = quiet.end_epoch();
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
