//! Who owns whom and who is connected where: placement, the session
//! registry, presence, groups, and batched cross-shard messages.
//!
//! * [`Placement`] maps users and groups to their home shard (stable hash)
//!   and answers every "where does this live" through one [`Route`]
//!   decision, which can already say "another node".
//! * [`RouterCore`] is one shard's router: a sans-IO state machine with
//!   `handle_*` inputs (time passed in) and `poll_effect` / `poll_batch`
//!   outputs. It holds the [`Registry`], [`Presence`] and [`Groups`] of the
//!   ids whose home is its shard.
//! * [`Outbox`] batches cross-shard messages: one batch per destination per
//!   turn of the event loop.
//!
//! This crate must not know about sockets, TLS, runtimes or disk: the
//! gateway carries batches over glommio's channel mesh, and the queue engine
//! makes group records durable.

mod core;
mod groups;
mod ids;
mod outbox;
mod placement;
mod presence;
mod registry;
mod slim;

pub use crate::core::{CloseReason, Effect, GroupRequest, RouterConfig, RouterCore, ShardMsg};
pub use groups::{
    GROUP_MEMBERS_MAX_DEFAULT, GROUP_MEMBERS_MAX_LIMIT, GroupError, GroupRecord, Groups, Role,
};
pub use ids::{ConnId, ConnRef, DeviceId, DeviceKey, GroupId, NodeId, ShardId, Target, UserId};
pub use outbox::{BATCH_MESSAGES_MAX, Outbox};
pub use placement::{Placement, Route};
pub use presence::{LastSeen, Presence, PresenceUpdate};
pub use registry::{Registry, Session};
