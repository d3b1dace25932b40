//! Placement: which shard (and, later, which node) is the home of a user or
//! a group, and the one [`Route`] decision every call site goes through.
//!
//! A home is a stable hash of the id: for a fixed shard count (and node set)
//! it never changes, so state for an id always lives in one place. Users and
//! groups hash with different tags, so user 5 and group 5 are unrelated.
//! Across nodes the choice is rendezvous hashing (highest random weight), so
//! adding a node moves only the ids that now prefer it; the multi-node path
//! is decided here already but nothing beyond this node is built yet.

use crate::ids::{GroupId, NodeId, ShardId, Target, UserId};

/// Where the state of a target lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    /// On this node, in this shard.
    Shard(ShardId),
    /// On another node of the fleet.
    Node(NodeId),
}

const USER_TAG: u64 = 0x7573_6572; // "user"
const GROUP_TAG: u64 = 0x6772_6f75; // "grou"
const NODE_TAG: u64 = 0x6e6f_6465; // "node"

/// The splitmix64 finalizer: a fast, well-mixed, stable 64-bit hash.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Maps a hash onto `0..n` without division (Lemire's multiply-shift).
fn reduce(hash: u64, n: u16) -> u16 {
    // (hash * n) >> 64 < n, so it fits in a u16.
    #[allow(clippy::cast_possible_truncation)]
    let shard = ((u128::from(hash) * u128::from(n)) >> 64) as u16;
    shard
}

/// The fleet as this node sees it: its own id, every node, shards per node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    local: NodeId,
    nodes: Box<[NodeId]>,
    shards: u16,
}

impl Placement {
    /// A single node with `shards` shards (today's deployment).
    pub fn single_node(shards: u16) -> Self {
        Self::new(NodeId(0), &[NodeId(0)], shards)
    }

    /// Node `local` among `nodes` (which must contain it), each with `shards`.
    pub fn new(local: NodeId, nodes: &[NodeId], shards: u16) -> Self {
        assert!(shards > 0, "a node has at least one shard");
        assert!(nodes.contains(&local), "the local node is a member");
        let mut nodes = nodes.to_vec();
        nodes.sort_unstable();
        nodes.dedup();
        Self {
            local,
            nodes: nodes.into(),
            shards,
        }
    }

    /// Shards per node.
    pub fn shards(&self) -> u16 {
        self.shards
    }

    /// The route to the state of `target`. A device lives with its user.
    #[inline]
    pub fn route(&self, target: Target) -> Route {
        let hash = match target {
            Target::User(user) => user_hash(user),
            Target::Device(device) => user_hash(device.user),
            Target::Group(group) => group_hash(group),
        };
        self.route_hash(hash)
    }

    /// The home shard of `user` on this node. Callers that may face another
    /// node use [`Placement::route`].
    #[inline]
    pub fn user_shard(&self, user: UserId) -> ShardId {
        ShardId(reduce(user_hash(user), self.shards))
    }

    /// The home shard of `group` on this node.
    #[inline]
    pub fn group_shard(&self, group: GroupId) -> ShardId {
        ShardId(reduce(group_hash(group), self.shards))
    }

    fn route_hash(&self, hash: u64) -> Route {
        if self.nodes.len() > 1 {
            let node = self.node_of(hash);
            if node != self.local {
                return Route::Node(node);
            }
        }
        Route::Shard(ShardId(reduce(hash, self.shards)))
    }

    /// Rendezvous hashing: the node with the highest weight for `hash`.
    fn node_of(&self, hash: u64) -> NodeId {
        let weight = |node: &NodeId| mix(hash ^ mix(u64::from(node.0) ^ NODE_TAG));
        *self
            .nodes
            .iter()
            .max_by_key(|n| weight(n))
            .expect("at least the local node")
    }
}

fn user_hash(user: UserId) -> u64 {
    mix(user.0 ^ mix(USER_TAG))
}

fn group_hash(group: GroupId) -> u64 {
    mix(group.0 ^ mix(GROUP_TAG))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DeviceKey;
    use proptest::prelude::*;

    #[test]
    fn homes_are_pinned_values() {
        // Changing the hash moves every user's state: these must not change.
        let p = Placement::single_node(8);
        let homes: Vec<u16> = (0..8).map(|u| p.user_shard(UserId(u)).0).collect();
        assert_eq!(homes, [5, 2, 6, 6, 4, 1, 7, 4]);
        assert_eq!(p.group_shard(GroupId(0)).0, 5);
    }

    #[test]
    fn spread_over_shards_is_even() {
        let p = Placement::single_node(4);
        let mut counts = [0u32; 4];
        for user in 0..40_000 {
            counts[p.user_shard(UserId(user)).0 as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn other_nodes_own_their_share_and_adding_a_node_moves_only_its_share() {
        let nodes = [NodeId(1), NodeId(2), NodeId(3)];
        let before = Placement::new(NodeId(1), &nodes, 4);
        let after = Placement::new(NodeId(1), &[NodeId(1), NodeId(2), NodeId(3), NodeId(4)], 4);
        let (mut local, mut moved) = (0, 0);
        for user in 0..30_000 {
            let target = Target::User(UserId(user));
            let (b, a) = (before.route(target), after.route(target));
            local += u32::from(matches!(b, Route::Shard(_)));
            if b != a {
                moved += 1;
                assert_eq!(a, Route::Node(NodeId(4)), "ids only move to the new node");
            }
        }
        assert!(
            (9_000..11_000).contains(&local),
            "a third stays local: {local}"
        );
        assert!((6_500..8_500).contains(&moved), "a quarter moves: {moved}");
    }

    proptest! {
        #[test]
        fn a_device_lives_with_its_user(user in any::<u64>(), device in any::<u32>(), shards in 1u16..512) {
            let p = Placement::single_node(shards);
            let route = p.route(Target::Device(DeviceKey::new(user, device)));
            prop_assert_eq!(route, Route::Shard(p.user_shard(UserId(user))));
            prop_assert!(p.user_shard(UserId(user)).0 < shards);
        }

        #[test]
        fn homes_are_stable_for_a_fixed_shard_count(id in any::<u64>(), shards in 1u16..512) {
            let (a, b) = (Placement::single_node(shards), Placement::single_node(shards));
            prop_assert_eq!(a.user_shard(UserId(id)), b.user_shard(UserId(id)));
            prop_assert_eq!(a.route(Target::Group(GroupId(id))), Route::Shard(b.group_shard(GroupId(id))));
        }
    }
}
