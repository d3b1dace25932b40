//! Two of the patched glommio's executor fixes (`third_party/README.md`).
//!
//! It parks only when no task is runnable. Upstream 0.9
//! checks its preemption timer before running anything: when that timer
//! expired between the executor's I/O poll and its first task, the turn
//! ran nothing, reported "idle", and the executor parked in io_uring with
//! tasks ready, until some unrelated completion woke it, or forever. This
//! hung gateway start-ups on busy machines (the first task never ran) and
//! stalled live shards. The patched copy in `third_party/glommio` keeps
//! turning while tasks are ready. A 1 µs preemption timer makes the race
//! certain.
//!
//! It keeps a pending preemption timer across busy turns (patch 5); the
//! other two tests check that the timer still fires and that sleeps, with
//! their deadlines moving, still wake.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

/// Runs `work` on a fresh executor with `preempt` (glommio's default if
/// `None`) and returns its output; panics with `hung` if it takes 30 s
/// (what a lost wake-up looks like: the executor sleeps for good).
fn run_bounded<T, F, W>(preempt: Option<Duration>, hung: &str, work: W) -> T
where
    T: Send + 'static,
    F: Future<Output = T> + 'static,
    W: FnOnce() -> F + Send + 'static,
{
    let (done, finished) = mpsc::channel();
    let mut builder = LocalExecutorBuilder::new(Placement::Unbound);
    if let Some(preempt) = preempt {
        builder = builder.preempt_timer(preempt);
    }
    let executor = builder
        .spawn(move || async move { done.send(work().await).unwrap() })
        .unwrap();
    let out = finished.recv_timeout(Duration::from_secs(30)).expect(hung);
    executor.join().unwrap();
    out
}

#[test]
fn an_executor_whose_preempt_timer_always_expired_still_runs_its_tasks() {
    let hung = "the executor parked with runnable tasks";
    let total = run_bounded(Some(Duration::from_micros(1)), hung, || async {
        let mut total = 0u64;
        for i in 0..1_000u64 {
            total += glommio::spawn_local(async move { i }).await;
            glommio::yield_if_needed().await;
        }
        total
    });
    assert_eq!(total, 999 * 1_000 / 2);
}

/// The patched reactor keeps a pending preemption timer across busy turns
/// instead of cancelling and re-arming it on each (three `io_uring_enter`s
/// a turn). A kept timer must still fire, turn after turn, and a park must
/// still arm the sleep's own timer in its place: a busy task sees the
/// preemption signal again and again, then a sleep ends.
#[test]
fn a_kept_preemption_timer_keeps_firing_and_a_later_sleep_still_wakes() {
    let hung = "the preemption timer stopped firing, or the sleep never woke";
    let preempted = run_bounded(Some(Duration::from_micros(100)), hung, || async {
        // Other tasks make every turn a busy one.
        glommio::spawn_local(async {
            loop {
                glommio::yield_if_needed().await;
                glommio::executor().yield_now().await;
            }
        })
        .detach();
        let mut preempted = 0;
        while preempted < 200 {
            if glommio::executor().need_preempt() {
                preempted += 1;
                glommio::executor().yield_now().await;
            }
            std::hint::spin_loop();
        }
        glommio::timer::sleep(Duration::from_millis(2)).await;
        preempted
    });
    assert_eq!(preempted, 200);
}

/// Timers under patch 5's kept preemption timer: many tasks sleeping for
/// changing, overlapping times, so the executor parks and wakes thousands
/// of times with the next deadline moving at almost every park; every
/// sleep must still end. (A variant that armed a park's timer before the
/// turn's last completions were consumed slept through a timer that had
/// fired meanwhile: this test caught it, and it was not kept.)
#[test]
fn sleeps_whose_next_deadline_keeps_moving_all_end() {
    let hung = "a sleep never woke: the park's timer was lost";
    let slept = run_bounded(None, hung, || async {
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                glommio::spawn_local(async move {
                    for i in 0..50u64 {
                        let us = 20 + (t * 7919 + i * 104_729) % 900;
                        glommio::timer::sleep(Duration::from_micros(us)).await;
                    }
                    50
                })
            })
            .collect();
        let mut slept = 0;
        for task in tasks {
            slept += task.await;
        }
        slept
    });
    assert_eq!(slept, 64 * 50);
}
