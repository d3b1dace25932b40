//! The link between shards: the router's batches ride glommio's channel
//! mesh, one SPSC ring per ordered pair of executors.
//!
//! One ring message is one batch (a `Vec` of router messages), so a
//! crossing costs one ring slot and at most one wake-up per destination per
//! turn, whatever the number of messages. Peer ids of a full mesh are the
//! executors' order of creation, which is how shards are numbered.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::shared_channel::ConnectedReceiver;
use shard_router::{RouterCore, ShardId, ShardMsg};

/// Ring slots per ordered shard pair; a full ring makes the sender wait
/// (backpressure), nothing is dropped.
pub const RING_BATCHES_MAX: usize = 1024;

/// A mesh carrying batches of `T` between `shards` executors.
pub fn mesh<T: Send + 'static>(shards: usize) -> MeshBuilder<Vec<T>, Full> {
    MeshBuilder::full(shards, RING_BATCHES_MAX)
}

/// This shard's ends of the mesh.
pub struct MeshLink<T: Send> {
    senders: Senders<Vec<T>>,
    receivers: Receivers<Vec<T>>,
}

impl<T: Send + 'static> MeshLink<T> {
    /// Joins `mesh` (a clone of the builder every executor got) from the
    /// current executor; waits for every peer.
    ///
    /// The join is re-polled every millisecond: glommio 0.9 can lose the
    /// cross-executor wake-up of a shared channel's `connect` (seen as a
    /// start-up that never finished, about 1 in 15 restarts on a busy
    /// 2-core machine); polling again finds the channel connected.
    pub async fn join(mesh: MeshBuilder<Vec<T>, Full>) -> glommio::Result<Self, ()> {
        let (senders, receivers) = poll_often(mesh.join(), Duration::from_millis(1)).await?;
        Ok(Self { senders, receivers })
    }

    /// This executor's shard.
    pub fn shard(&self) -> ShardId {
        ShardId(u16::try_from(self.senders.peer_id()).expect("fewer than 65,536 shards"))
    }

    /// Sends one batch to shard `to`, waiting while its ring is full.
    pub async fn send(&self, to: ShardId, batch: Vec<T>) -> glommio::Result<(), Vec<T>> {
        self.senders.send_to(usize::from(to.0), batch).await
    }

    /// The receiving end from every other shard, to be polled by one task
    /// each (or merged).
    pub fn inbound(&mut self) -> Vec<(ShardId, ConnectedReceiver<Vec<T>>)> {
        let shard = |peer: usize| ShardId(u16::try_from(peer).expect("fewer than 65,536 shards"));
        self.receivers
            .streams()
            .into_iter()
            .map(|(peer, rx)| (shard(peer), rx))
            .collect()
    }
}

/// The next batch from a peer, or `None` once it is gone. The wait is
/// re-polled every 10 ms: like the join, a batch's cross-executor wake-up
/// can be lost in glommio 0.9, which left a `Welcome` stuck for 30 s in
/// about 1 of 15 loadgen runs on a busy machine (none in 40 with one
/// shard); re-polling bounds such a stall to 10 ms.
pub async fn recv_batch<T: Send + Sized>(rx: &ConnectedReceiver<Vec<T>>) -> Option<Vec<T>> {
    poll_often(rx.recv(), Duration::from_millis(10)).await
}

/// Runs `fut`, polling it at least every `every` even if nothing wakes it.
///
/// Safe for a shared-channel receive only with the patched glommio
/// (`third_party/glommio`): upstream queues the task's waker again on
/// every poll of a pending receive, and an idle channel re-polled 32,767
/// times (under 3 minutes at 10 ms, 2 polls a tick) overflowed the task's
/// waker refcount and panicked the shard.
pub async fn poll_often<F: Future>(fut: F, every: Duration) -> F::Output {
    let mut fut = pin!(fut);
    loop {
        let tick = async {
            glommio::timer::Timer::new(every).await;
            None
        };
        if let Some(out) = async { Some(fut.as_mut().await) }.or(tick).await {
            return out;
        }
    }
}

/// Sends every batch `core` has for other shards: one per destination.
pub async fn flush_outbox<M: Clone + Send + 'static>(
    link: &MeshLink<ShardMsg<M>>,
    core: &mut RouterCore<M>,
) -> glommio::Result<(), Vec<ShardMsg<M>>> {
    while let Some((to, batch)) = core.poll_batch() {
        link.send(to, batch).await?;
    }
    Ok(())
}
