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
//! It keeps a pending latency timer across turns and parks for as long as
//! it is due soon enough (patch 5); three tests check that the timer still
//! fires, that sleeps, with their deadlines moving, still wake, and that a
//! sleep never counts on a timer that fired while it was deciding to sleep
//! (the hang an early version of the patch had).
//!
//! An idle executor sleeps until its own timer, not until the next
//! preemption slice (patch 10): a test counts its parks in a long sleep.
//!
//! Its main ring defers its task work (patch 7, `DEFER_TASKRUN`): a
//! completion another thread causes no longer interrupts the shard with an
//! IPI but waits until the shard asks the kernel for completions. The
//! last three tests pin the flags and check that such completions still
//! arrive whether the executor parks between them or spins without a
//! syscall of its own.

use std::future::Future;
use std::sync::mpsc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
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

/// The thread's voluntary context switches so far (each park that sleeps
/// is one).
fn voluntary_switches() -> u64 {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("Linux reports voluntary_ctxt_switches")
}

/// An idle executor sleeps until its own timer (patch 10). Patch 5 kept
/// the preemption timer armed by the last turn across the park, so an
/// idle executor woke at every preemption slice: with a 1 ms slice, about
/// 300 times during a 300 ms sleep (the gateway's idle shards woke a
/// thousand times a second). Now the park after a sleep so cut short
/// drops that timer: a few wake-ups in all.
#[test]
fn an_idle_executor_sleeps_until_its_timer() {
    let hung = "the sleep never woke";
    let (switches, slept) = run_bounded(Some(Duration::from_millis(1)), hung, || async {
        glommio::timer::sleep(Duration::from_millis(5)).await; // settled
        let before = voluntary_switches();
        let started = std::time::Instant::now();
        glommio::timer::sleep(Duration::from_millis(300)).await;
        (voluntary_switches() - before, started.elapsed())
    });
    assert!(slept >= Duration::from_millis(300), "woke early: {slept:?}");
    assert!(
        switches < 30,
        "{switches} parks in one 300 ms sleep: it woke every preemption slice"
    );
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

/// A preemption timer that a busy slice armed is kept when the executor
/// goes to sleep, and stands in for the sleep's own timer when it is due
/// sooner. It may fire while the executor decides to sleep, after it was
/// last seen pending: a sleep counting on it then never ends. Short busy
/// slices, each followed by a short sleep, over and over, hit that window.
#[test]
fn sleeps_after_busy_slices_all_end() {
    let hung = "a sleep never woke: it counted on a timer that had fired";
    let rounds = run_bounded(Some(Duration::from_micros(30)), hung, || async {
        let mut rounds = 0;
        for i in 0..20_000u32 {
            // Busy for about the preemption timer's length, so it fires
            // around the moment the task goes to sleep.
            let busy = std::time::Instant::now();
            while busy.elapsed() < Duration::from_micros(u64::from(20 + i % 20)) {
                std::hint::spin_loop();
            }
            glommio::timer::sleep(Duration::from_micros(50)).await;
            rounds += 1;
        }
        rounds
    });
    assert_eq!(rounds, 20_000);
}

/// `IORING_SETUP_COOP_TASKRUN`, `IORING_SETUP_TASKRUN_FLAG`,
/// `IORING_SETUP_SINGLE_ISSUER` and `IORING_SETUP_DEFER_TASKRUN`.
const COOP_TASKRUN: u32 = 1 << 8;
const TASKRUN_FLAG: u32 = 1 << 9;
const DEFER_TASKRUN: u32 = (1 << 12) | (1 << 13);

#[test]
fn the_main_ring_defers_its_task_work() {
    let flags = run_bounded(None, "the executor did not start", || async {
        glommio::executor().main_ring_setup_flags()
    });
    assert_eq!(flags & TASKRUN_FLAG, TASKRUN_FLAG, "flags {flags:#x}");
    let deferred = flags & DEFER_TASKRUN == DEFER_TASKRUN;
    // COOP_TASKRUN is the fallback for kernels before 6.1 only.
    assert!(deferred || flags & COOP_TASKRUN != 0, "flags {flags:#x}");
}

/// Another thread answers each of 2,000 one-byte pings over loopback TCP,
/// so every answer completes as task work queued from the other thread.
/// With `spin` the executor never parks: it polls its rings in a loop, so
/// each answer must reach it without the wake-up of a sleeping thread
/// (deferred task work runs only when the executor asks the kernel for
/// completions: on a submission, or when the ring's `TASKRUN` flag says
/// work waits). Without it the executor parks between answers and the
/// sleeping thread is woken.
fn ping_pong(spin: bool) -> u32 {
    let (done, finished) = mpsc::channel();
    let mut builder = LocalExecutorBuilder::new(Placement::Unbound);
    if spin {
        builder = builder.spin_before_park(Duration::from_secs(60));
    }
    let executor = builder
        .spawn(move || async move {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let echo = std::thread::spawn(move || {
                let (mut theirs, _) = listener.accept().unwrap();
                let mut byte = [0u8; 1];
                while std::io::Read::read_exact(&mut theirs, &mut byte).is_ok() {
                    std::io::Write::write_all(&mut theirs, &byte).unwrap();
                }
            });
            let mut ours = TcpStream::connect(addr).await.unwrap();
            let mut answered = 0u32;
            for i in 0..2_000u32 {
                let ping = i.to_le_bytes()[0];
                ours.write_all(&[ping]).await.unwrap();
                let mut byte = [0u8; 1];
                ours.read_exact(&mut byte).await.unwrap();
                answered += u32::from(byte[0] == ping);
            }
            drop(ours);
            echo.join().unwrap();
            done.send(answered).unwrap();
        })
        .unwrap();
    let answered = finished
        .recv_timeout(Duration::from_secs(30))
        .expect("a completion from another thread never arrived");
    executor.join().unwrap();
    answered
}

#[test]
fn completions_from_another_thread_arrive_at_a_spinning_executor() {
    assert_eq!(ping_pong(true), 2_000);
}

#[test]
fn completions_from_another_thread_wake_a_parked_executor() {
    assert_eq!(ping_pong(false), 2_000);
}
