//! Real glommio executors exchanging batches over the mesh's rings:
//! - router batches from shard 0 reach a user on shard 1, once and in order;
//! - the stress test: ping-pong and bursts through tiny rings, where every
//!   step waits on a wake-up (a doorbell, or room in a full ring). A lost
//!   wake-up stalls it; a watchdog turns a stall into a failure that names
//!   the step. The same stress on glommio's channel mesh (the old path,
//!   without its re-polls) is the ignored test at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use gateway::mesh::{Mesh, MeshEnd, flush_outbox};
use glommio::{LocalExecutorBuilder, Placement as Cpu};
use shard_router::{
    ConnId, DeviceKey, Effect, Placement, RouterConfig, RouterCore, ShardId, ShardMsg, Target,
    UserId,
};

const MESSAGES: u64 = 5_000;

/// A user whose home is shard `shard` of 2.
fn user_homed_on(shard: u16) -> u64 {
    let p = Placement::single_node(2);
    (1..).find(|u| p.user_shard(UserId(*u)).0 == shard).unwrap()
}

#[test]
fn messages_cross_executors_once_and_in_order() {
    let mesh = Mesh::<ShardMsg<u64>>::new(2, 1024).unwrap();
    let recipient = user_homed_on(1);
    let sender = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn({
            let mesh = mesh.clone();
            move || async move {
                let mut end = mesh.end(ShardId(0));
                let mut core = RouterCore::new(
                    ShardId(0),
                    Placement::single_node(2),
                    RouterConfig::default(),
                );
                core.handle_connect(0, ConnId(1), DeviceKey::new(user_homed_on(0), 0));
                for seq in 0..MESSAGES {
                    core.handle_send(0, ConnId(1), Target::User(UserId(recipient)), seq);
                    if seq % 100 == 99 {
                        flush_outbox(&mut end, &mut core); // end of a turn
                    }
                }
                flush_outbox(&mut end, &mut core);
                assert_eq!(end.pending(), 0, "50 batches fit a 1,024-slot ring");
            }
        })
        .unwrap();
    let receiver = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn(move || async move {
            let mut end = mesh.end(ShardId(1));
            let mut core = RouterCore::new(
                ShardId(1),
                Placement::single_node(2),
                RouterConfig::default(),
            );
            core.handle_connect(0, ConnId(7), DeviceKey::new(recipient, 0));
            let (mut delivered, mut batches) = (Vec::new(), 0);
            loop {
                end.recv(16, |from, batch| {
                    assert_eq!(from, ShardId(0));
                    core.handle_batch(0, batch);
                    batches += 1;
                });
                while let Some(effect) = core.poll_effect() {
                    if let Effect::Deliver { conn, msg, .. } = effect {
                        assert_eq!(conn, ConnId(7));
                        delivered.push(msg);
                    }
                }
                if delivered.len() as u64 == MESSAGES {
                    break;
                }
                end.wait().await;
            }
            (delivered, batches)
        })
        .unwrap();
    sender.join().unwrap();
    let (delivered, batches) = receiver.join().unwrap();
    assert_eq!(delivered, (0..MESSAGES).collect::<Vec<_>>());
    assert!(batches <= 51, "one ring slot per turn: {batches} batches");
}

/// Round trips of the stress test; each is one or more sleeps per side.
const ROUNDS: u64 = 20_000;
/// Every this many rounds, shard 0 sends a burst that overfills the ring.
const BURST_EVERY: u64 = 100;
const BURST: u64 = 40;
/// A stall this long with no progress is a lost wake-up.
const STALL: Duration = Duration::from_secs(10);

/// Waits for `done`, failing if `progress` stops moving for [`STALL`]:
/// a lost wake-up leaves both executors asleep forever.
fn watch(done: &mpsc::Receiver<()>, progress: &AtomicU64, what: &str) {
    let mut last = u64::MAX;
    loop {
        match done.recv_timeout(STALL) {
            Ok(()) => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: an executor panicked"),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = progress.load(Ordering::SeqCst);
                assert_ne!(now, last, "{what}: a lost wake-up, stalled at step {now}");
                last = now;
            }
        }
    }
}

/// Receives one batch, sleeping until a peer sends it.
async fn recv_one(end: &mut MeshEnd<u64>) -> Vec<u64> {
    loop {
        let mut got = None;
        end.recv(1, |_, batch| got = Some(batch));
        if let Some(batch) = got {
            return batch;
        }
        end.wait().await;
    }
}

/// Sends `batch`, then sleeps until the ring took every held batch.
async fn send_all(end: &mut MeshEnd<u64>, to: ShardId, batch: Vec<u64>) {
    end.send(to, batch);
    while end.pending() > 0 {
        end.wait().await;
        end.recv(0, |_, _| unreachable!("budget 0 takes nothing"));
    }
}

#[test]
fn ring_stress_loses_no_wake_up() {
    // Two slots: every burst fills the ring and waits for room.
    let mesh = Mesh::<u64>::new(2, 2).unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let (done, finished) = mpsc::channel();
    let pinger = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn({
            let (mesh, progress, done) = (mesh.clone(), progress.clone(), done.clone());
            move || async move {
                let mut end = mesh.end(ShardId(0));
                for round in 0..ROUNDS {
                    if round % BURST_EVERY == 0 {
                        for i in 0..BURST {
                            send_all(&mut end, ShardId(1), vec![u64::MAX - i]).await;
                        }
                    }
                    send_all(&mut end, ShardId(1), vec![round]).await;
                    assert_eq!(recv_one(&mut end).await, vec![round], "pong");
                    progress.store(round, Ordering::SeqCst);
                }
                done.send(()).unwrap();
            }
        })
        .unwrap();
    let ponger = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn({
            let mesh = mesh.clone();
            move || async move {
                let mut end = mesh.end(ShardId(1));
                let mut burst = 0;
                let mut round = 0;
                while round < ROUNDS {
                    let batch = recv_one(&mut end).await;
                    if batch[0] > u64::MAX - BURST {
                        assert_eq!(batch[0], u64::MAX - burst % BURST, "FIFO within a burst");
                        burst += 1;
                        continue;
                    }
                    assert_eq!(batch, vec![round], "FIFO");
                    send_all(&mut end, ShardId(0), batch).await;
                    round += 1;
                }
                done.send(()).unwrap();
                burst
            }
        })
        .unwrap();
    watch(&finished, &progress, "pinger");
    watch(&finished, &progress, "ponger");
    pinger.join().unwrap();
    let bursts = ponger.join().unwrap();
    assert_eq!(bursts, ROUNDS / BURST_EVERY * BURST);
    let rung = mesh.bells_rung(ShardId(0)) + mesh.bells_rung(ShardId(1));
    assert!(
        rung >= ROUNDS,
        "the round trips went through the doorbells: {rung}"
    );
}

/// The old path: glommio 0.9's channel mesh, the same ping-pong with no
/// re-poll. Run by hand (`cargo test -p gateway --test mesh_link -- --ignored`)
/// to compare; it is out of CI because it stalls.
#[test]
#[ignore = "demonstrates the old path's lost wake-ups"]
fn glommio_channel_mesh_stress() {
    use glommio::channels::channel_mesh::MeshBuilder;
    let mesh = MeshBuilder::<u64, _>::full(2, 2);
    let progress = Arc::new(AtomicU64::new(0));
    let (done, finished) = mpsc::channel();
    let mut handles = Vec::new();
    for side in 0..2u64 {
        let (mesh, progress, done) = (mesh.clone(), progress.clone(), done.clone());
        let handle = LocalExecutorBuilder::new(Cpu::Unbound)
            .spawn(move || async move {
                let (tx, mut rx) = mesh.join().await.unwrap();
                let peer = 1 - tx.peer_id();
                let (_, rx) = rx.streams().pop().unwrap();
                if side == 0 {
                    for round in 0..ROUNDS {
                        if round % BURST_EVERY == 0 {
                            for i in 0..BURST {
                                tx.send_to(peer, u64::MAX - i).await.unwrap();
                            }
                        }
                        tx.send_to(peer, round).await.unwrap();
                        assert_eq!(rx.recv().await, Some(round));
                        progress.store(round, Ordering::SeqCst);
                    }
                } else {
                    let mut round = 0;
                    while round < ROUNDS {
                        let got = rx.recv().await.unwrap();
                        if got <= u64::MAX - BURST {
                            tx.send_to(peer, got).await.unwrap();
                            round += 1;
                        }
                    }
                }
                done.send(()).unwrap();
            })
            .unwrap();
        handles.push(handle);
    }
    watch(&finished, &progress, "glommio side");
    watch(&finished, &progress, "glommio side");
    for h in handles {
        h.join().unwrap();
    }
}

/// The old path's start-up: glommio's channel-mesh join, done again and
/// again by two fresh executors, each join watched for a stall (the
/// gateway's joins were re-polled every 1 ms because one start in about
/// 15 never finished on a busy machine). Run by hand, like the one above.
#[test]
#[ignore = "demonstrates the old path's lost wake-ups"]
fn glommio_channel_mesh_join_stress() {
    use glommio::channels::channel_mesh::MeshBuilder;
    const JOINS: u64 = 300;
    for join in 0..JOINS {
        let mesh = MeshBuilder::<u64, _>::full(2, 2);
        let progress = Arc::new(AtomicU64::new(join));
        let (done, finished) = mpsc::channel();
        let mut handles = Vec::new();
        for _ in 0..2 {
            let (mesh, done) = (mesh.clone(), done.clone());
            let handle = LocalExecutorBuilder::new(Cpu::Unbound)
                .spawn(move || async move {
                    let (tx, mut rx) = mesh.join().await.unwrap();
                    let peer = 1 - tx.peer_id();
                    let (_, rx) = rx.streams().pop().unwrap();
                    tx.send_to(peer, 1).await.unwrap();
                    assert_eq!(rx.recv().await, Some(1));
                    done.send(()).unwrap();
                })
                .unwrap();
            handles.push(handle);
        }
        for _ in 0..2 {
            watch(&finished, &progress, &format!("join {join}"));
        }
        for h in handles {
            h.join().unwrap();
        }
    }
}

/// A sender that keeps a 1,024-slot ring full with one-message batches
/// while the receiver takes up to 64 per turn (the mesh benchmark's
/// unbatched case): both sides keep sleeping on each other.
#[test]
fn a_ring_kept_full_loses_no_wake_up() {
    for _ in 0..ROUNDS_KEPT_FULL {
        kept_full_once();
    }
}

const ROUNDS_KEPT_FULL: usize = 20;

fn kept_full_once() {
    const BATCHES: u64 = 200_000;
    let mesh = Mesh::<u64>::new(2, 1024).unwrap();
    let progress = Arc::new(AtomicU64::new(0));
    let (done, finished) = mpsc::channel();
    let sender = LocalExecutorBuilder::new(Cpu::Fixed(0))
        .spawn({
            let mesh = mesh.clone();
            move || async move {
                let mut end = mesh.end(ShardId(0));
                for i in 0..BATCHES {
                    end.send(ShardId(1), vec![i]);
                    while end.pending() > 0 {
                        end.wait().await;
                        end.recv(0, |_, _| {});
                    }
                }
            }
        })
        .unwrap();
    let receiver = LocalExecutorBuilder::new(Cpu::Fixed(1))
        .spawn({
            let (mesh, progress) = (mesh.clone(), progress.clone());
            move || async move {
                let mut end = mesh.end(ShardId(1));
                let mut next = 0;
                while next < BATCHES {
                    end.recv(64, |_, batch| {
                        assert_eq!(batch, vec![next], "FIFO");
                        next += 1;
                    });
                    progress.store(next, Ordering::SeqCst);
                    if next < BATCHES {
                        end.wait().await;
                    }
                }
                done.send(()).unwrap();
            }
        })
        .unwrap();
    let mut last = u64::MAX;
    loop {
        match finished.recv_timeout(STALL) {
            Ok(()) => break,
            Err(e) => {
                let now = progress.load(Ordering::SeqCst);
                assert_ne!(now, last, "{e:?}: stalled at {now}: {}", mesh.state());
                last = now;
            }
        }
    }
    sender.join().unwrap();
    receiver.join().unwrap();
}
