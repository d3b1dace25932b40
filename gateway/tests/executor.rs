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
//! second test checks that the timer still fires and a later sleep wakes.

use std::sync::mpsc;
use std::time::Duration;

use glommio::{LocalExecutorBuilder, Placement};

#[test]
fn an_executor_whose_preempt_timer_always_expired_still_runs_its_tasks() {
    let (done, finished) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_micros(1))
        .spawn(move || async move {
            let mut total = 0u64;
            for i in 0..1_000u64 {
                total += glommio::spawn_local(async move { i }).await;
                glommio::yield_if_needed().await;
            }
            done.send(total).unwrap();
        })
        .unwrap();
    let total = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the executor parked with runnable tasks");
    assert_eq!(total, 999 * 1_000 / 2);
    executor.join().unwrap();
}

/// The patched reactor keeps a pending preemption timer across busy turns
/// instead of cancelling and re-arming it on each (three `io_uring_enter`s
/// a turn). A kept timer must still fire, turn after turn, and a park must
/// still arm the sleep's own timer in its place: a busy task sees the
/// preemption signal again and again, then a sleep ends.
#[test]
fn a_kept_preemption_timer_keeps_firing_and_a_later_sleep_still_wakes() {
    let (done, finished) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .preempt_timer(Duration::from_micros(100))
        .spawn(move || async move {
            // Other tasks make every turn a busy one.
            let _busy = glommio::spawn_local(async {
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
            done.send(preempted).unwrap();
        })
        .unwrap();
    let preempted = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("the preemption timer stopped firing, or the sleep never woke");
    assert_eq!(preempted, 200);
    executor.join().unwrap();
}

/// Timers under patch 5's kept preemption timer: many tasks sleeping for
/// changing, overlapping times, so the executor parks and wakes thousands
/// of times with the next deadline moving at almost every park; every
/// sleep must still end. (A variant that armed a park's timer before the
/// turn's last completions were consumed slept through a timer that had
/// fired meanwhile: this test caught it, and it was not kept.)
#[test]
fn sleeps_whose_next_deadline_keeps_moving_all_end() {
    let (done, finished) = mpsc::channel();
    let executor = LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(move || async move {
            let tasks: Vec<_> = (0..64u64)
                .map(|t| {
                    glommio::spawn_local(async move {
                        for i in 0..50u64 {
                            let us = 20 + (t * 7919 + i * 104_729) % 900;
                            glommio::timer::sleep(Duration::from_micros(us)).await;
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
            done.send(()).unwrap();
        })
        .unwrap();
    finished
        .recv_timeout(Duration::from_secs(30))
        .expect("a sleep never woke: the park's timer was lost");
    executor.join().unwrap();
}
