//! glommio's executor parks only when no task is runnable. Upstream 0.9
//! checks its preemption timer before running anything: when that timer
//! expired between the executor's I/O poll and its first task, the turn
//! ran nothing, reported "idle", and the executor parked in io_uring with
//! tasks ready, until some unrelated completion woke it, or forever. This
//! hung gateway start-ups on busy machines (the first task never ran) and
//! stalled live shards. The patched copy in `third_party/glommio` keeps
//! turning while tasks are ready. A 1 µs preemption timer makes the race
//! certain.

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
