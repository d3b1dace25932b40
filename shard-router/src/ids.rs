//! Newtype ids for everything the router places or tracks, so a user id can
//! never be passed where a group id is meant.

macro_rules! id {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub $inner);
    };
}

id!(
    /// A person's account.
    UserId(u64)
);
id!(
    /// A device number within its user (0 = the primary device).
    DeviceId(u32)
);
id!(
    /// A group conversation.
    GroupId(u64)
);
id!(
    /// A shard (one core's executor) within a node.
    ShardId(u16)
);
id!(
    /// A gateway node of the fleet.
    NodeId(u32)
);
id!(
    /// A connection, unique within its shard.
    ConnId(u64)
);

/// One device of one user: the unit that connects and has a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceKey {
    /// The owning user.
    pub user: UserId,
    /// The device within the user.
    pub device: DeviceId,
}

impl DeviceKey {
    /// Device `device` of user `user`.
    pub fn new(user: u64, device: u32) -> Self {
        Self {
            user: UserId(user),
            device: DeviceId(device),
        }
    }
}

/// A connection anywhere on this node: the shard holding it and its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnRef {
    /// The shard whose executor holds the connection.
    pub shard: ShardId,
    /// The connection's id on that shard.
    pub conn: ConnId,
}

/// What a message or request is addressed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Every registered device of a user.
    User(UserId),
    /// Exactly one device.
    Device(DeviceKey),
    /// Every member of a group.
    Group(GroupId),
}
