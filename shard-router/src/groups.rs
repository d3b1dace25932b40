//! Group membership on a group's home shard: create, add, remove, leave,
//! with admin roles and a member limit.
//!
//! Every change is validated into a [`GroupRecord`] and then applied by
//! [`Groups::apply`], the same function that replays records at startup, so
//! a router rebuilt from the durable records equals the one that wrote them.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;

use crate::ids::{GroupId, UserId};

/// Default largest number of members in a group.
pub const GROUP_MEMBERS_MAX_DEFAULT: usize = 1024;

/// The largest member limit an operator may set: a group change's notice
/// (8 bytes per member) and a group message's copy stay far below a log
/// record's limit.
pub const GROUP_MEMBERS_MAX_LIMIT: usize = 8192;

/// A member's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads and writes.
    Member,
    /// Also adds and removes others.
    Admin,
}

/// A durable change of a group, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRecord {
    /// `creator` (admin) made the group with `members`.
    Created {
        /// The new group.
        group: GroupId,
        /// Its first admin.
        creator: UserId,
        /// The other initial members.
        members: Vec<UserId>,
    },
    /// `actor` added `members`.
    Added {
        /// The group.
        group: GroupId,
        /// The admin who added them.
        actor: UserId,
        /// The users added (none already members).
        members: Vec<UserId>,
    },
    /// `actor` removed `members` (other than itself).
    Removed {
        /// The group.
        group: GroupId,
        /// The admin who removed them.
        actor: UserId,
        /// The users removed (all were members).
        members: Vec<UserId>,
    },
    /// `user` left. If it was the last admin, the member with the lowest id
    /// becomes admin; if it was the last member, the group is gone.
    Left {
        /// The group.
        group: GroupId,
        /// The user who left.
        user: UserId,
    },
}

impl GroupRecord {
    /// The group it changes.
    pub fn group(&self) -> GroupId {
        match self {
            Self::Created { group, .. }
            | Self::Added { group, .. }
            | Self::Removed { group, .. }
            | Self::Left { group, .. } => *group,
        }
    }

    /// The user who made the change.
    pub fn actor(&self) -> UserId {
        match self {
            Self::Created { creator: a, .. }
            | Self::Added { actor: a, .. }
            | Self::Removed { actor: a, .. }
            | Self::Left { user: a, .. } => *a,
        }
    }

    /// The users the change is about (for `Left`, the user who left).
    pub fn members(&self) -> &[UserId] {
        match self {
            Self::Created { members, .. }
            | Self::Added { members, .. }
            | Self::Removed { members, .. } => members,
            Self::Left { user, .. } => std::slice::from_ref(user),
        }
    }

    /// Its durable bytes: `kind u8 | group u64 | actor u64 | count u32 |
    /// members u64...`, little-endian.
    pub fn encode(&self) -> Vec<u8> {
        let kind: u8 = match self {
            Self::Created { .. } => 1,
            Self::Added { .. } => 2,
            Self::Removed { .. } => 3,
            Self::Left { .. } => 4,
        };
        let members: &[UserId] = match self {
            Self::Left { .. } => &[],
            _ => self.members(),
        };
        let mut out = Vec::with_capacity(21 + 8 * members.len());
        out.push(kind);
        out.extend_from_slice(&self.group().0.to_le_bytes());
        out.extend_from_slice(&self.actor().0.to_le_bytes());
        let count = u32::try_from(members.len()).expect("a bounded group");
        out.extend_from_slice(&count.to_le_bytes());
        for m in members {
            out.extend_from_slice(&m.0.to_le_bytes());
        }
        out
    }

    /// The record [`GroupRecord::encode`] wrote, or `None` if `bytes` are
    /// not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&kind, rest) = bytes.split_first()?;
        let u64_at = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(rest.get(i..i + 8)?.try_into().ok()?))
        };
        let group = GroupId(u64_at(0)?);
        let actor = UserId(u64_at(8)?);
        let count = u32::from_le_bytes(rest.get(16..20)?.try_into().ok()?) as usize;
        if rest.len() != 20 + 8 * count {
            return None;
        }
        let members = (0..count)
            .map(|i| u64_at(20 + 8 * i).map(UserId))
            .collect::<Option<Vec<_>>>()?;
        Some(match kind {
            1 => Self::Created {
                group,
                creator: actor,
                members,
            },
            2 => Self::Added {
                group,
                actor,
                members,
            },
            3 => Self::Removed {
                group,
                actor,
                members,
            },
            4 if members.is_empty() => Self::Left { group, user: actor },
            _ => return None,
        })
    }
}

/// Why a group change was refused. Maps onto the protocol's error codes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupError {
    /// No such group, or the actor is not a member (`UnknownGroup`, 208).
    UnknownGroup,
    /// The group id is already taken (`UnknownGroup`, 208, for the client).
    AlreadyExists,
    /// Only admins may add or remove others (`NotGroupAdmin`, 207).
    NotAdmin,
    /// The change would exceed the member limit (`GroupFull`, 308).
    Full {
        /// The limit in force.
        limit: usize,
    },
    /// Nothing to do: every user named is already in (add) or not in (remove).
    NoChange,
}

/// The groups whose home is this shard.
#[derive(Debug, Clone)]
pub struct Groups {
    groups: FxHashMap<GroupId, BTreeMap<UserId, Role>>,
    members_max: usize,
}

impl Groups {
    /// No groups; at most `members_max` members per group.
    pub fn new(members_max: usize) -> Self {
        Self {
            groups: FxHashMap::default(),
            members_max,
        }
    }

    /// Members of `group` with their roles, in user id order.
    pub fn members(&self, group: GroupId) -> Option<&BTreeMap<UserId, Role>> {
        self.groups.get(&group)
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Validates a new group; the record still has to be applied.
    pub fn create(
        &self,
        group: GroupId,
        creator: UserId,
        members: &[UserId],
    ) -> Result<GroupRecord, GroupError> {
        if self.groups.contains_key(&group) {
            return Err(GroupError::AlreadyExists);
        }
        let mut members: Vec<UserId> = members.iter().copied().filter(|m| *m != creator).collect();
        members.sort_unstable();
        members.dedup();
        if members.len() + 1 > self.members_max {
            return Err(GroupError::Full {
                limit: self.members_max,
            });
        }
        Ok(GroupRecord::Created {
            group,
            creator,
            members,
        })
    }

    /// Validates `actor` adding `members`.
    pub fn add(
        &self,
        group: GroupId,
        actor: UserId,
        members: &[UserId],
    ) -> Result<GroupRecord, GroupError> {
        let current = self.admin_view(group, actor)?;
        let mut new: Vec<UserId> = members
            .iter()
            .copied()
            .filter(|m| !current.contains_key(m))
            .collect();
        new.sort_unstable();
        new.dedup();
        if new.is_empty() {
            return Err(GroupError::NoChange);
        }
        if current.len() + new.len() > self.members_max {
            return Err(GroupError::Full {
                limit: self.members_max,
            });
        }
        Ok(GroupRecord::Added {
            group,
            actor,
            members: new,
        })
    }

    /// Validates `actor` removing `members`; naming only itself is leaving.
    pub fn remove(
        &self,
        group: GroupId,
        actor: UserId,
        members: &[UserId],
    ) -> Result<GroupRecord, GroupError> {
        let current = self.groups.get(&group).ok_or(GroupError::UnknownGroup)?;
        if !current.contains_key(&actor) {
            return Err(GroupError::UnknownGroup);
        }
        if members == [actor] {
            return Ok(GroupRecord::Left { group, user: actor });
        }
        let current = self.admin_view(group, actor)?;
        let mut gone: Vec<UserId> = members
            .iter()
            .copied()
            .filter(|m| *m != actor && current.contains_key(m))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        if gone.is_empty() {
            return Err(GroupError::NoChange);
        }
        Ok(GroupRecord::Removed {
            group,
            actor,
            members: gone,
        })
    }

    /// Applies a validated or replayed record.
    pub fn apply(&mut self, record: &GroupRecord) {
        match record {
            GroupRecord::Created {
                group,
                creator,
                members,
            } => {
                let mut all: BTreeMap<UserId, Role> =
                    members.iter().map(|m| (*m, Role::Member)).collect();
                all.insert(*creator, Role::Admin);
                self.groups.insert(*group, all);
            }
            GroupRecord::Added { group, members, .. } => {
                let all = self.groups.entry(*group).or_default();
                for m in members {
                    all.entry(*m).or_insert(Role::Member);
                }
            }
            GroupRecord::Removed { group, members, .. } => {
                if let Some(all) = self.groups.get_mut(group) {
                    for m in members {
                        all.remove(m);
                    }
                }
            }
            GroupRecord::Left { group, user } => self.leave(*group, *user),
        }
    }

    fn leave(&mut self, group: GroupId, user: UserId) {
        let Some(all) = self.groups.get_mut(&group) else {
            return;
        };
        all.remove(&user);
        if all.is_empty() {
            self.groups.remove(&group);
        } else if !all.values().any(|r| *r == Role::Admin) {
            let (_, role) = all.iter_mut().next().expect("not empty");
            *role = Role::Admin;
        }
    }

    fn admin_view(
        &self,
        group: GroupId,
        actor: UserId,
    ) -> Result<&BTreeMap<UserId, Role>, GroupError> {
        let current = self.groups.get(&group).ok_or(GroupError::UnknownGroup)?;
        match current.get(&actor) {
            None => Err(GroupError::UnknownGroup),
            Some(Role::Member) => Err(GroupError::NotAdmin),
            Some(Role::Admin) => Ok(current),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(ids: &[u64]) -> Vec<UserId> {
        ids.iter().map(|i| UserId(*i)).collect()
    }

    fn live(
        groups: &mut Groups,
        change: impl FnOnce(&Groups) -> Result<GroupRecord, GroupError>,
    ) -> GroupRecord {
        let record = change(groups).expect("allowed");
        groups.apply(&record);
        record
    }

    #[test]
    fn only_admins_add_or_remove_others_and_anyone_may_leave() {
        let mut g = Groups::new(GROUP_MEMBERS_MAX_DEFAULT);
        let id = GroupId(1);
        live(&mut g, |g| g.create(id, UserId(1), &u(&[2, 3])));
        assert_eq!(g.add(id, UserId(2), &u(&[4])), Err(GroupError::NotAdmin));
        assert_eq!(g.remove(id, UserId(2), &u(&[3])), Err(GroupError::NotAdmin));
        assert_eq!(
            g.add(id, UserId(9), &u(&[4])),
            Err(GroupError::UnknownGroup),
            "non-member"
        );
        assert_eq!(
            g.add(GroupId(2), UserId(1), &u(&[4])),
            Err(GroupError::UnknownGroup)
        );
        live(&mut g, |g| g.add(id, UserId(1), &u(&[4, 4, 2])));
        assert_eq!(g.members(id).unwrap().len(), 4);
        assert_eq!(g.add(id, UserId(1), &u(&[4])), Err(GroupError::NoChange));
        let left = live(&mut g, |g| g.remove(id, UserId(3), &u(&[3])));
        assert_eq!(
            left,
            GroupRecord::Left {
                group: id,
                user: UserId(3)
            }
        );
        live(&mut g, |g| g.remove(id, UserId(1), &u(&[2])));
        assert_eq!(
            g.members(id).unwrap().keys().copied().collect::<Vec<_>>(),
            u(&[1, 4])
        );
    }

    #[test]
    fn the_member_limit_holds() {
        let mut g = Groups::new(3);
        assert_eq!(
            g.create(GroupId(1), UserId(1), &u(&[2, 3, 4])),
            Err(GroupError::Full { limit: 3 })
        );
        live(&mut g, |g| g.create(GroupId(1), UserId(1), &u(&[2, 1])));
        live(&mut g, |g| g.add(GroupId(1), UserId(1), &u(&[3])));
        assert_eq!(
            g.add(GroupId(1), UserId(1), &u(&[4])),
            Err(GroupError::Full { limit: 3 })
        );
    }

    #[test]
    fn the_last_admin_leaving_promotes_the_lowest_id_and_the_last_member_ends_it() {
        let mut g = Groups::new(10);
        live(&mut g, |g| g.create(GroupId(1), UserId(5), &u(&[9, 7])));
        live(&mut g, |g| g.remove(GroupId(1), UserId(5), &u(&[5])));
        assert_eq!(g.members(GroupId(1)).unwrap()[&UserId(7)], Role::Admin);
        assert_eq!(g.members(GroupId(1)).unwrap()[&UserId(9)], Role::Member);
        live(&mut g, |g| g.remove(GroupId(1), UserId(7), &u(&[7])));
        live(&mut g, |g| g.remove(GroupId(1), UserId(9), &u(&[9])));
        assert!(g.members(GroupId(1)).is_none());
    }

    #[test]
    fn replaying_the_records_rebuilds_the_same_groups() {
        let mut g = Groups::new(10);
        let mut log = Vec::new();
        log.push(live(&mut g, |g| {
            g.create(GroupId(1), UserId(1), &u(&[2, 3]))
        }));
        log.push(live(&mut g, |g| g.create(GroupId(2), UserId(2), &u(&[1]))));
        log.push(live(&mut g, |g| g.add(GroupId(1), UserId(1), &u(&[4]))));
        log.push(live(&mut g, |g| g.remove(GroupId(1), UserId(1), &u(&[1]))));
        log.push(live(&mut g, |g| g.remove(GroupId(1), UserId(2), &u(&[3]))));
        let mut rebuilt = Groups::new(10);
        for r in &log {
            let bytes = r.encode();
            let decoded = GroupRecord::decode(&bytes).expect("round trips");
            assert_eq!(&decoded, r);
            assert_eq!(GroupRecord::decode(&bytes[..bytes.len() - 1]), None);
            rebuilt.apply(&decoded);
        }
        for id in [GroupId(1), GroupId(2)] {
            assert_eq!(rebuilt.members(id), g.members(id));
        }
        assert_eq!(rebuilt.len(), 2);
    }
}
