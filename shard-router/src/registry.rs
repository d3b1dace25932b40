//! The session registry of a home shard: for each of its users, which
//! devices are connected, on which connection, since when.
//!
//! A device has at most one session: registering it again replaces the old
//! session and hands back the old connection so it can be told to close
//! ("connected elsewhere"). An unregister that names a connection which has
//! already been replaced is stale and changes nothing.

use rustc_hash::FxHashMap;

use crate::ids::{ConnRef, DeviceId, DeviceKey, UserId};

/// One connected device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The connection holding the device.
    pub conn: ConnRef,
    /// When it connected, ms since the Unix epoch.
    pub since_ms: u64,
}

/// Who is connected, for the users whose home is this shard.
#[derive(Debug, Default, Clone)]
pub struct Registry {
    users: FxHashMap<UserId, Vec<(DeviceId, Session)>>,
    sessions: usize,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` on `session`. Returns the connection it replaces,
    /// if the device was connected elsewhere.
    pub fn register(&mut self, device: DeviceKey, session: Session) -> Option<ConnRef> {
        let devices = self.users.entry(device.user).or_default();
        match devices.iter_mut().find(|(d, _)| *d == device.device) {
            Some((_, current)) if current.conn == session.conn => {
                *current = session;
                None
            }
            Some((_, current)) => Some(std::mem::replace(current, session).conn),
            None => {
                // Most users have one device: room for exactly one more
                // (32 B), not the 4 a `push` into an empty `Vec` makes
                // (128 B of every idle connection).
                devices.reserve_exact(1);
                devices.push((device.device, session));
                self.sessions += 1;
                None
            }
        }
    }

    /// Removes `device`'s session if it is still held by `conn`. Returns
    /// whether it was; the user went offline if it now has no device.
    pub fn unregister(&mut self, device: DeviceKey, conn: ConnRef) -> bool {
        let Some(devices) = self.users.get_mut(&device.user) else {
            return false;
        };
        let Some(at) = devices
            .iter()
            .position(|(d, s)| *d == device.device && s.conn == conn)
        else {
            return false;
        };
        devices.swap_remove(at);
        self.sessions -= 1;
        if devices.is_empty() {
            self.users.remove(&device.user);
        }
        true
    }

    /// The connected devices of `user` (empty if offline).
    #[inline]
    pub fn online_devices(&self, user: UserId) -> &[(DeviceId, Session)] {
        self.users.get(&user).map_or(&[], Vec::as_slice)
    }

    /// The session of one device, if connected.
    pub fn session(&self, device: DeviceKey) -> Option<&Session> {
        self.online_devices(device.user)
            .iter()
            .find(|(d, _)| *d == device.device)
            .map(|(_, s)| s)
    }

    /// Whether any device of `user` is connected.
    pub fn is_online(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    /// Every session, in no particular order.
    pub fn sessions(&self) -> impl Iterator<Item = (DeviceKey, &Session)> + '_ {
        self.users.iter().flat_map(|(user, devices)| {
            devices.iter().map(|(device, s)| {
                (
                    DeviceKey {
                        user: *user,
                        device: *device,
                    },
                    s,
                )
            })
        })
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.sessions
    }

    /// Whether no device is connected.
    pub fn is_empty(&self) -> bool {
        self.sessions == 0
    }

    /// Checks the registry's invariants, panicking with the broken one: no
    /// connection holds two devices, no device appears twice, no user is
    /// listed without devices, and the session count is right.
    pub fn assert_consistent(&self) {
        let mut conns = std::collections::HashSet::new();
        let mut count = 0;
        for (user, devices) in &self.users {
            assert!(!devices.is_empty(), "user {user:?} listed with no device");
            for (i, (device, session)) in devices.iter().enumerate() {
                assert!(
                    devices[..i].iter().all(|(d, _)| d != device),
                    "device {device:?} of {user:?} registered twice"
                );
                assert!(
                    conns.insert(session.conn),
                    "{:?} holds two devices",
                    session.conn
                );
                count += 1;
            }
        }
        assert_eq!(count, self.sessions, "session count");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConnId, ShardId};
    use proptest::prelude::*;

    fn conn(shard: u16, conn: u64) -> ConnRef {
        ConnRef {
            shard: ShardId(shard),
            conn: ConnId(conn),
        }
    }

    #[test]
    fn reconnect_replaces_and_stale_unregister_is_ignored() {
        let mut r = Registry::new();
        let phone = DeviceKey::new(7, 0);
        assert_eq!(
            r.register(
                phone,
                Session {
                    conn: conn(0, 1),
                    since_ms: 10
                }
            ),
            None
        );
        let replaced = r.register(
            phone,
            Session {
                conn: conn(1, 9),
                since_ms: 20,
            },
        );
        assert_eq!(
            replaced,
            Some(conn(0, 1)),
            "the old connection must be told to close"
        );
        assert!(
            !r.unregister(phone, conn(0, 1)),
            "the old connection's goodbye is stale"
        );
        assert_eq!(r.session(phone).unwrap().conn, conn(1, 9));
        assert!(r.unregister(phone, conn(1, 9)));
        assert!(!r.is_online(UserId(7)));
        r.assert_consistent();
    }

    #[test]
    fn a_user_with_two_devices() {
        let mut r = Registry::new();
        r.register(
            DeviceKey::new(7, 0),
            Session {
                conn: conn(0, 1),
                since_ms: 1,
            },
        );
        r.register(
            DeviceKey::new(7, 1),
            Session {
                conn: conn(1, 2),
                since_ms: 2,
            },
        );
        let devices: Vec<_> = r
            .online_devices(UserId(7))
            .iter()
            .map(|(d, _)| d.0)
            .collect();
        assert_eq!(devices, [0, 1]);
        assert!(r.unregister(DeviceKey::new(7, 0), conn(0, 1)));
        assert!(r.is_online(UserId(7)), "the other device is still there");
        assert_eq!(r.len(), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Register { user: u64, device: u32, conn: u64 },
        Unregister { user: u64, device: u32, conn: u64 },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..6, 0u32..3, 0u64..12).prop_map(|(user, device, conn)| Op::Register {
                user,
                device,
                conn
            }),
            (0u64..6, 0u32..3, 0u64..12).prop_map(|(user, device, conn)| Op::Unregister {
                user,
                device,
                conn
            }),
        ]
    }

    proptest! {
        /// Random connects and disconnects, where the shell (as the gateway
        /// does) closes a replaced connection and never reuses a connection
        /// id for two devices at once, keep the registry consistent and equal
        /// to a simple model.
        #[test]
        fn random_operations_keep_the_registry_consistent(ops in proptest::collection::vec(op(), 0..200)) {
            let mut r = Registry::new();
            let mut model: std::collections::BTreeMap<(u64, u32), u64> = Default::default();
            for op in ops {
                match op {
                    Op::Register { user, device, conn: c } => {
                        if model.iter().any(|(k, v)| *v == c && *k != (user, device)) {
                            continue; // a live connection holds one device
                        }
                        let replaced = r.register(DeviceKey::new(user, device), Session { conn: conn(0, c), since_ms: 0 });
                        let old = model.insert((user, device), c).filter(|old| *old != c);
                        prop_assert_eq!(replaced, old.map(|o| conn(0, o)));
                    }
                    Op::Unregister { user, device, conn: c } => {
                        let removed = r.unregister(DeviceKey::new(user, device), conn(0, c));
                        let expected = model.get(&(user, device)) == Some(&c);
                        if expected { model.remove(&(user, device)); }
                        prop_assert_eq!(removed, expected);
                    }
                }
                r.assert_consistent();
                prop_assert_eq!(r.len(), model.len());
            }
        }
    }
}
