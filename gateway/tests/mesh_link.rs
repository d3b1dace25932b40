//! Two real glommio executors, each with its router core, exchanging the
//! router's batches over the mesh link: a message sent on shard 0 to a user
//! connected on shard 1 is delivered there, every one once and in order.

use gateway::mesh::{MeshLink, flush_outbox, mesh};
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
    let mesh = mesh::<ShardMsg<u64>>(2);
    let recipient = user_homed_on(1);
    let sender = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn({
            let mesh = mesh.clone();
            move || async move {
                let link = MeshLink::join(mesh).await.unwrap();
                assert_eq!(link.shard(), ShardId(0));
                let mut core = RouterCore::new(
                    ShardId(0),
                    Placement::single_node(2),
                    RouterConfig::default(),
                );
                core.handle_connect(0, ConnId(1), DeviceKey::new(user_homed_on(0), 0));
                for seq in 0..MESSAGES {
                    core.handle_send(0, ConnId(1), Target::User(UserId(recipient)), seq);
                    if seq % 100 == 99 {
                        flush_outbox(&link, &mut core).await.unwrap(); // end of a turn
                    }
                }
                flush_outbox(&link, &mut core).await.unwrap();
            }
        })
        .unwrap();
    let receiver = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn(move || async move {
            let mut link = MeshLink::join(mesh).await.unwrap();
            let mut core = RouterCore::new(
                ShardId(1),
                Placement::single_node(2),
                RouterConfig::default(),
            );
            core.handle_connect(0, ConnId(7), DeviceKey::new(recipient, 0));
            let (from, rx) = link.inbound().pop().unwrap();
            assert_eq!(from, ShardId(0));
            let (mut delivered, mut batches) = (Vec::new(), 0);
            while (delivered.len() as u64) < MESSAGES {
                core.handle_batch(0, rx.recv().await.unwrap());
                batches += 1;
                while let Some(effect) = core.poll_effect() {
                    if let Effect::Deliver { conn, msg, .. } = effect {
                        assert_eq!(conn, ConnId(7));
                        delivered.push(msg);
                    }
                }
            }
            (delivered, batches)
        })
        .unwrap();
    sender.join().unwrap();
    let (delivered, batches) = receiver.join().unwrap();
    assert_eq!(delivered, (0..MESSAGES).collect::<Vec<_>>());
    assert!(batches <= 51, "one ring slot per turn: {batches} batches");
}

/// An idle receive polled far more than 32,767 times (the glommio task's
/// 16-bit waker refcount), as `mesh::poll_often` does every 10 ms, still
/// gets the message that comes at last: the patched reactor queues a
/// task's waker once, not once per poll.
#[test]
fn an_idle_receive_re_polled_many_times_does_not_overflow_its_waker() {
    use glommio::channels::shared_channel;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, Ordering};
    use std::time::{Duration, Instant};
    const POLLS: usize = 40_000;
    // 0: polling, 1: polled POLLS times, 2: got the message
    let stage = Arc::new(AtomicU8::new(0));
    let (tx, rx) = shared_channel::new_bounded::<u64>(1);
    let receiver = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn({
            let stage = stage.clone();
            move || async move {
                let rx = rx.connect().await;
                let mut recv = pin!(rx.recv());
                for _ in 0..POLLS {
                    let polled = futures_lite::future::poll_once(recv.as_mut()).await;
                    assert!(polled.is_none(), "nothing was sent yet");
                }
                stage.store(1, Ordering::SeqCst);
                assert_eq!(recv.await, Some(7));
                stage.store(2, Ordering::SeqCst);
            }
        })
        .unwrap();
    let sender = LocalExecutorBuilder::new(Cpu::Unbound)
        .spawn(move || async move {
            let tx = tx.connect().await;
            // Waits for events of the other executor, bounded (upstream
            // glommio panics inside the receiver and it never gets there).
            let wait_for = async |want: u8, what: &str| {
                let give_up = Instant::now() + Duration::from_secs(30);
                while stage.load(Ordering::SeqCst) < want {
                    assert!(Instant::now() < give_up, "the receiver never {what}");
                    glommio::timer::sleep(Duration::from_millis(1)).await;
                }
            };
            wait_for(1, "finished polling").await;
            tx.send(7).await.unwrap();
            wait_for(2, "got the message").await;
        })
        .unwrap();
    sender.join().unwrap(); // fails first if the receiver's shard broke
    receiver.join().unwrap();
}
