//! [`Gate`]: a barrier for workers on different executors that waits
//! asynchronously. While a worker waits at the gate its executor keeps
//! running its other tasks (connections answer pings, reads complete); a
//! `std::sync::Barrier` would freeze the whole executor instead.
//!
//! Waiting polls every millisecond rather than relying on a cross-thread
//! wake-up, which glommio 0.9 can lose.

use std::sync::Mutex;
use std::time::Duration;

/// How often a waiting worker looks at the gate.
const POLL: Duration = Duration::from_millis(1);

/// Opens each time `parties` workers have arrived; reusable.
#[derive(Debug)]
pub struct Gate {
    parties: usize,
    /// (workers arrived in this round, rounds completed)
    state: Mutex<(usize, u64)>,
}

impl Gate {
    /// A gate for `parties` workers (at least one).
    pub fn new(parties: usize) -> Self {
        Self {
            parties: parties.max(1),
            state: Mutex::new((0, 0)),
        }
    }

    /// Arrives at the gate and waits until every party has.
    pub async fn wait(&self) {
        let round = {
            let mut s = self.state.lock().expect("gate lock");
            s.0 += 1;
            if s.0 == self.parties {
                *s = (0, s.1 + 1);
                return;
            }
            s.1
        };
        while self.state.lock().expect("gate lock").1 == round {
            glommio::timer::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// The first worker waits at the gate while the second is held back
    /// until the first has shown that its executor still runs other tasks.
    #[test]
    fn a_waiting_worker_s_executor_keeps_running_its_tasks() {
        let gate = Arc::new(Gate::new(2));
        let others_ran = Arc::new(AtomicBool::new(false));
        let first = {
            let (gate, others_ran) = (gate.clone(), others_ran.clone());
            glommio::LocalExecutorBuilder::default()
                .spawn(move || async move {
                    let ticks = Rc::new(Cell::new(0));
                    let counter = ticks.clone();
                    let other = glommio::spawn_local(async move {
                        while counter.get() < 5 {
                            counter.set(counter.get() + 1);
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                    });
                    let waiting = glommio::spawn_local(async move { gate.wait().await });
                    other.await;
                    others_ran.store(ticks.get() == 5, Ordering::SeqCst);
                    waiting.await;
                })
                .unwrap()
        };
        let second = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let give_up = std::time::Instant::now() + Duration::from_secs(10);
                while !others_ran.load(Ordering::SeqCst) {
                    // A blocking barrier would freeze the first executor here.
                    assert!(
                        std::time::Instant::now() < give_up,
                        "the waiting worker's other task never ran"
                    );
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
                gate.wait().await; // opens the gate for both
            })
            .unwrap();
        second.join().unwrap(); // fails first if the first executor froze
        first.join().unwrap();
    }

    #[test]
    fn the_gate_opens_once_per_round_and_is_reusable() {
        let gate = Arc::new(Gate::new(3));
        let workers: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                glommio::LocalExecutorBuilder::default()
                    .spawn(move || async move {
                        for _ in 0..3 {
                            gate.wait().await;
                        }
                    })
                    .unwrap()
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(*gate.state.lock().unwrap(), (0, 3));
    }
}
