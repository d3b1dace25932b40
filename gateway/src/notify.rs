//! [`Notify`]: wakes one task of the same executor ("you have work"). A
//! notification sent while nobody waits is kept, so none is lost between a
//! check and the wait that follows it.

use std::cell::Cell;
use std::future::poll_fn;
use std::task::{Poll, Waker};

/// A one-waiter, single-threaded wake-up flag.
#[derive(Default)]
pub struct Notify {
    set: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl std::fmt::Debug for Notify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notify")
            .field("set", &self.set.get())
            .finish()
    }
}

impl Notify {
    /// Wakes the waiter, or the next call to [`Notify::wait`].
    pub fn notify(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Waits until notified (at once if already), then clears the flag.
    pub async fn wait(&self) {
        poll_fn(|cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
    }
}
