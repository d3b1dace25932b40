//! Who owns whom and who is connected where.
//!
//! This crate will own placement (user, device and group ids to their home
//! shard, and the one `Route` decision that may later answer "another
//! node"), the per-shard session registry, presence with its privacy
//! settings, group membership, and the typed cross-shard messages that leave
//! a shard in batches. It is pure logic driven by `handle_*` calls with time
//! passed in, returning effects.
//!
//! It must not know about sockets, TLS, runtimes or disk: the gateway carries
//! its batches over glommio's channel mesh and the queue engine makes its
//! changes durable.
