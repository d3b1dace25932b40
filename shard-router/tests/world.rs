//! A multi-shard world on virtual time: several router cores, their mesh
//! simulated in memory (one FIFO ring per ordered shard pair), driven until
//! idle. No threads, sockets or clocks.

// Shard counts here are tiny.
#![allow(clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, VecDeque};

use shard_router::*;

/// Messages in tests: the sender's sequence number, to check order.
type Msg = u64;

struct World {
    now_ms: u64,
    cores: Vec<RouterCore<Msg>>,
    /// (from, to) -> batches in flight, FIFO per ordered pair.
    rings: BTreeMap<(u16, u16), VecDeque<Vec<ShardMsg<Msg>>>>,
    /// Effects seen, per shard, in order.
    effects: Vec<Vec<Effect<Msg>>>,
    /// Batches carried, per ordered pair (to check batching).
    batches_carried: BTreeMap<(u16, u16), usize>,
}

impl World {
    fn new(shards: u16, config: RouterConfig) -> Self {
        let placement = Placement::single_node(shards);
        Self {
            now_ms: 1_000,
            cores: (0..shards)
                .map(|s| RouterCore::new(ShardId(s), placement.clone(), config))
                .collect(),
            rings: BTreeMap::new(),
            effects: (0..shards).map(|_| Vec::new()).collect(),
            batches_carried: BTreeMap::new(),
        }
    }

    fn core(&mut self, shard: u16) -> &mut RouterCore<Msg> {
        &mut self.cores[usize::from(shard)]
    }

    /// One turn: every core hands its batches to the rings, then every ring
    /// delivers its oldest batch. Returns whether anything moved.
    fn turn(&mut self) -> bool {
        let mut moved = false;
        for (from, core) in self.cores.iter_mut().enumerate() {
            while let Some(effect) = core.poll_effect() {
                self.effects[from].push(effect);
            }
            while let Some((to, batch)) = core.poll_batch() {
                let pair = (from as u16, to.0);
                self.rings.entry(pair).or_default().push_back(batch);
                *self.batches_carried.entry(pair).or_default() += 1;
                moved = true;
            }
        }
        for (&(_, to), ring) in self.rings.iter_mut() {
            if let Some(batch) = ring.pop_front() {
                self.cores[usize::from(to)].handle_batch(self.now_ms, batch);
                moved = true;
            }
        }
        moved
    }

    /// Runs turns until nothing moves.
    fn drive(&mut self) {
        for _ in 0..10_000 {
            if !self.turn() {
                return;
            }
        }
        panic!("the world did not settle");
    }

    fn take_effects(&mut self, shard: u16) -> Vec<Effect<Msg>> {
        std::mem::take(&mut self.effects[usize::from(shard)])
    }

    fn connect(&mut self, shard: u16, conn: u64, user: u64, device: u32) {
        let now = self.now_ms;
        self.core(shard)
            .handle_connect(now, ConnId(conn), DeviceKey::new(user, device));
        self.drive();
    }

    fn home_of(&self, user: u64) -> u16 {
        Placement::single_node(self.cores.len() as u16)
            .user_shard(UserId(user))
            .0
    }

    fn deliveries(&mut self, shard: u16, conn: u64) -> Vec<Msg> {
        self.take_effects(shard)
            .into_iter()
            .filter_map(|e| match e {
                Effect::Deliver { conn: c, msg, .. } if c == ConnId(conn) => Some(msg),
                _ => None,
            })
            .collect()
    }
}

/// A user id whose home is `shard` in a world of `shards`.
fn user_homed_on(shards: u16, shard: u16, skip: usize) -> u64 {
    let p = Placement::single_node(shards);
    (1..)
        .filter(|u| p.user_shard(UserId(*u)).0 == shard)
        .nth(skip)
        .unwrap()
}

#[test]
fn each_user_is_registered_on_its_home_shard_only() {
    let mut w = World::new(4, RouterConfig::default());
    for user in 1..=40u64 {
        w.connect((user % 4) as u16, user, user, 0); // connections land anywhere
    }
    for user in 1..=40u64 {
        let home = w.home_of(user);
        for shard in 0..4u16 {
            let online = w.core(shard).registry().is_online(UserId(user));
            assert_eq!(
                online,
                shard == home,
                "user {user} on shard {shard}, home {home}"
            );
        }
    }
    let total: usize = (0..4).map(|s| w.core(s).registry().len()).sum();
    assert_eq!(total, 40);
}

#[test]
fn reconnecting_replaces_the_session_and_closes_the_old_connection() {
    let mut w = World::new(3, RouterConfig::default());
    let bob = user_homed_on(3, 2, 0);
    w.connect(0, 10, bob, 0);
    w.connect(1, 20, bob, 0);
    let closed: Vec<_> = w.take_effects(0);
    assert_eq!(
        closed,
        [Effect::Close {
            conn: ConnId(10),
            reason: CloseReason::ConnectedElsewhere
        }]
    );
    // The old connection's goodbye arrives late: it must not unregister the new one.
    let now = w.now_ms;
    w.core(0).handle_disconnect(now, ConnId(10));
    w.drive();
    let session = w
        .core(2)
        .registry()
        .session(DeviceKey::new(bob, 0))
        .copied()
        .unwrap();
    assert_eq!(
        session.conn,
        ConnRef {
            shard: ShardId(1),
            conn: ConnId(20)
        }
    );
    // A message to bob reaches only the new connection.
    w.connect(2, 30, 99, 0);
    w.core(2)
        .handle_send(now, ConnId(30), Target::User(UserId(bob)), 1);
    w.drive();
    assert_eq!(w.deliveries(1, 20), [1]);
    assert!(w.take_effects(0).is_empty());
}

#[test]
fn per_sender_order_holds_across_shards() {
    let mut w = World::new(4, RouterConfig::default());
    let carol = user_homed_on(4, 3, 0);
    let sender = user_homed_on(4, 1, 0);
    w.connect(0, 1, sender, 0); // sender's connection on shard 0, home on 1
    w.connect(1, 2, carol, 0); // carol's phone on shard 1
    w.connect(2, 3, carol, 1); // carol's laptop on shard 2
    w.take_effects(1);
    w.take_effects(2);
    let now = w.now_ms;
    for seq in 0..500 {
        w.core(0)
            .handle_send(now, ConnId(1), Target::User(UserId(carol)), seq);
        if seq % 7 == 0 {
            w.turn(); // interleave turns with sends, as a real loop does
        }
    }
    w.drive();
    let expected: Vec<u64> = (0..500).collect();
    assert_eq!(
        w.deliveries(1, 2),
        expected,
        "phone: every message once, in order"
    );
    assert_eq!(
        w.deliveries(2, 3),
        expected,
        "laptop: every message once, in order"
    );
    // Crossings are batched: far fewer batches than messages on each hop.
    let hop = w.batches_carried[&(0, 3)];
    assert!(hop < 100, "0 -> 3 carried 500 messages in {hop} batches");
}

#[test]
fn a_message_to_one_device_and_to_an_offline_user() {
    let mut w = World::new(2, RouterConfig::default());
    let dave = user_homed_on(2, 1, 0);
    w.connect(0, 1, 5, 0);
    w.connect(0, 2, dave, 0);
    w.connect(1, 3, dave, 1);
    let now = w.now_ms;
    w.core(0)
        .handle_send(now, ConnId(1), Target::Device(DeviceKey::new(dave, 1)), 7);
    w.drive();
    assert_eq!(w.deliveries(1, 3), [7]);
    assert_eq!(w.deliveries(0, 2), Vec::<u64>::new());
    let nobody = user_homed_on(2, 1, 1);
    w.core(0)
        .handle_send(now, ConnId(1), Target::User(UserId(nobody)), 8);
    w.drive();
    let from = DeviceKey::new(5, 0);
    let to = Target::User(UserId(nobody));
    assert_eq!(
        w.take_effects(1),
        [Effect::Undelivered { from, to, msg: 8 }],
        "kept for the queue engine"
    );
}

#[test]
fn presence_fans_out_one_message_per_shard_and_respects_privacy() {
    let mut w = World::new(3, RouterConfig::default());
    let erin = user_homed_on(3, 0, 0);
    // Three watchers on shard 1, one on shard 2.
    for (shard, conn, user) in [(1, 11, 101), (1, 12, 102), (1, 13, 103), (2, 21, 201)] {
        w.connect(shard, conn, user, 0);
        let now = w.now_ms;
        w.core(shard)
            .handle_subscribe(now, ConnId(conn), &[UserId(erin)]);
    }
    w.drive();
    w.take_effects(1);
    w.take_effects(2);
    let before = w.batches_carried.get(&(0, 1)).copied().unwrap_or(0);

    w.now_ms = 5_000;
    w.connect(0, 1, erin, 0);
    let online = PresenceUpdate {
        user: UserId(erin),
        online: true,
        last_seen_ms: 5_000,
    };
    let expect_1 = Effect::Presence {
        conns: vec![ConnId(11), ConnId(12), ConnId(13)],
        update: online,
    };
    assert_eq!(w.take_effects(1), [expect_1]);
    assert_eq!(
        w.take_effects(2),
        [Effect::Presence {
            conns: vec![ConnId(21)],
            update: online
        }]
    );
    assert_eq!(
        w.batches_carried[&(0, 1)] - before,
        1,
        "one batch to shard 1 for three watchers"
    );

    // Erin hides last seen, then goes offline: watchers see offline, last seen 0.
    w.now_ms = 9_000;
    w.core(0)
        .handle_set_last_seen(9_000, ConnId(1), LastSeen::Nobody);
    w.core(0).handle_disconnect(9_000, ConnId(1));
    w.drive();
    let hidden = PresenceUpdate {
        user: UserId(erin),
        online: false,
        last_seen_ms: 0,
    };
    assert_eq!(
        w.take_effects(2),
        [Effect::Presence {
            conns: vec![ConnId(21)],
            update: hidden
        }]
    );

    // Showing it again: a new watcher learns the real last seen.
    w.connect(0, 2, erin, 1);
    w.core(0)
        .handle_set_last_seen(9_500, ConnId(2), LastSeen::Everyone);
    w.core(0).handle_disconnect(9_600, ConnId(2));
    w.drive();
    w.take_effects(2);
    w.connect(2, 22, 202, 0);
    w.core(2)
        .handle_subscribe(9_700, ConnId(22), &[UserId(erin)]);
    w.drive();
    let seen = PresenceUpdate {
        user: UserId(erin),
        online: false,
        last_seen_ms: 9_600,
    };
    assert_eq!(
        w.take_effects(2),
        [Effect::Presence {
            conns: vec![ConnId(22)],
            update: seen
        }]
    );
}

#[test]
fn subscriptions_per_connection_are_bounded_and_dropped_on_disconnect() {
    let config = RouterConfig {
        subscriptions_per_conn_max: 2,
        ..RouterConfig::default()
    };
    let mut w = World::new(2, config);
    w.connect(0, 1, 1, 0);
    let users = [UserId(10), UserId(11), UserId(12)];
    w.core(0).handle_subscribe(1_000, ConnId(1), &users);
    w.drive();
    let refused: Vec<_> = w
        .take_effects(0)
        .into_iter()
        .filter(|e| matches!(e, Effect::SubscriptionRefused { .. }))
        .collect();
    assert_eq!(
        refused,
        [Effect::SubscriptionRefused {
            conn: ConnId(1),
            user: UserId(12)
        }]
    );
    w.core(0).handle_disconnect(2_000, ConnId(1));
    w.drive();
    // User 10 comes online: nobody is watching any more.
    let home = w.home_of(10);
    w.connect(home, 50, 10, 0);
    assert!(
        w.take_effects(0)
            .iter()
            .all(|e| !matches!(e, Effect::Presence { .. }))
    );
}

#[test]
fn group_rules_limits_and_fan_out_from_the_group_home() {
    let config = RouterConfig {
        group_members_max: 3,
        ..RouterConfig::default()
    };
    let mut w = World::new(3, config);
    let (admin, member, outsider) = (1, 2, 3);
    w.connect(0, 1, admin, 0);
    w.connect(1, 2, member, 0);
    w.connect(2, 3, outsider, 0);
    w.connect(2, 4, admin, 1); // the admin's second device
    for s in 0..3 {
        w.take_effects(s);
    }
    let group = GroupId(77);
    let home = Placement::single_node(3).group_shard(group).0;
    let create = GroupRequest::Create {
        group,
        members: vec![UserId(member)],
    };
    w.core(0).handle_group(1_000, ConnId(1), 1, create);
    w.drive();
    let record = GroupRecord::Created {
        group,
        creator: UserId(admin),
        members: vec![UserId(member)],
    };
    let replies = w.take_effects(0);
    assert!(replies.contains(&Effect::GroupReply {
        conn: ConnId(1),
        request_id: 1,
        result: Ok(record.clone())
    }));
    let home_effects = if home == 0 {
        replies
    } else {
        w.take_effects(home)
    };
    assert!(
        home_effects.contains(&Effect::Record(record)),
        "the group home makes it durable"
    );

    // A member may not add; an admin may, up to the limit.
    let add = |who| GroupRequest::Add {
        group,
        members: vec![UserId(who)],
    };
    w.core(1).handle_group(1_000, ConnId(2), 2, add(outsider));
    w.drive();
    let reply = Effect::GroupReply {
        conn: ConnId(2),
        request_id: 2,
        result: Err(GroupError::NotAdmin),
    };
    assert!(w.take_effects(1).contains(&reply));
    w.core(0).handle_group(1_000, ConnId(1), 3, add(outsider));
    w.core(0).handle_group(1_000, ConnId(1), 4, add(42));
    w.drive();
    let full = Effect::GroupReply {
        conn: ConnId(1),
        request_id: 4,
        result: Err(GroupError::Full { limit: 3 }),
    };
    assert!(w.take_effects(0).contains(&full));
    for s in 0..3 {
        w.take_effects(s);
    }

    // A group message reaches every member's devices but the sending one.
    w.core(1)
        .handle_send(2_000, ConnId(2), Target::Group(group), 9);
    w.drive();
    assert_eq!(w.deliveries(0, 1), [9], "admin's phone");
    let at_2 = w.take_effects(2);
    let delivered: Vec<_> = at_2
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver { conn, to, msg, .. } => Some((conn.0, *to, *msg)),
            _ => None,
        })
        .collect();
    assert_eq!(delivered.len(), 2);
    assert!(
        delivered.contains(&(3, Target::Group(group), 9)),
        "outsider, now a member"
    );
    assert!(
        delivered.contains(&(4, Target::Group(group), 9)),
        "admin's laptop"
    );
    assert_eq!(
        w.deliveries(1, 2),
        Vec::<u64>::new(),
        "not echoed to the sending device"
    );
}

#[test]
fn groups_rebuild_from_their_records() {
    let mut w = World::new(2, RouterConfig::default());
    w.connect(0, 1, 1, 0);
    let group = GroupId(5);
    let home = Placement::single_node(2).group_shard(group).0;
    w.core(0).handle_group(
        1,
        ConnId(1),
        1,
        GroupRequest::Create {
            group,
            members: vec![UserId(2), UserId(3)],
        },
    );
    w.core(0).handle_group(
        1,
        ConnId(1),
        2,
        GroupRequest::Remove {
            group,
            members: vec![UserId(3)],
        },
    );
    w.drive();
    let records: Vec<GroupRecord> = w
        .take_effects(home)
        .into_iter()
        .filter_map(|e| {
            if let Effect::Record(r) = e {
                Some(r)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(records.len(), 2);
    let mut rebuilt = RouterCore::<Msg>::new(
        ShardId(home),
        Placement::single_node(2),
        RouterConfig::default(),
    );
    records.iter().for_each(|r| rebuilt.replay_group_record(r));
    assert_eq!(
        rebuilt.groups().members(group),
        w.core(home).groups().members(group)
    );
}

mod races {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Connect { shard: u16, user: u64, device: u32 },
        Disconnect { pick: usize },
        Turn,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u16..3, 0u64..4, 0u32..2).prop_map(|(shard, user, device)| Op::Connect { shard, user, device }),
            2 => any::<usize>().prop_map(|pick| Op::Disconnect { pick }),
            2 => Just(Op::Turn),
        ]
    }

    /// Runs turns, closing every connection the router says to close (as
    /// the gateway does), until nothing moves.
    fn settle(w: &mut World, alive: &mut BTreeMap<(u16, u64), DeviceKey>) {
        loop {
            let moved = w.turn();
            let mut closed = false;
            for shard in 0..3u16 {
                for effect in w.take_effects(shard) {
                    if let Effect::Close { conn, .. } = effect {
                        alive.remove(&(shard, conn.0));
                        let now = w.now_ms;
                        w.core(shard).handle_disconnect(now, conn);
                        closed = true;
                    }
                }
            }
            if !moved && !closed {
                return;
            }
        }
    }

    proptest! {
        /// Connects, reconnects and disconnects in any order, with Register
        /// messages racing on different rings: once settled, the live
        /// connections are exactly the registered sessions, one per device.
        #[test]
        fn live_connections_are_exactly_the_registered_sessions(ops in proptest::collection::vec(op(), 1..80)) {
            let mut w = World::new(3, RouterConfig::default());
            let mut alive: BTreeMap<(u16, u64), DeviceKey> = BTreeMap::new();
            let mut next_conn = 1;
            for op in ops {
                match op {
                    Op::Connect { shard, user, device } => {
                        let device = DeviceKey::new(user, device);
                        alive.insert((shard, next_conn), device);
                        let now = w.now_ms;
                        w.core(shard).handle_connect(now, ConnId(next_conn), device);
                        next_conn += 1;
                    }
                    Op::Disconnect { pick } if !alive.is_empty() => {
                        let key = *alive.keys().nth(pick % alive.len()).unwrap();
                        alive.remove(&key);
                        let now = w.now_ms;
                        w.core(key.0).handle_disconnect(now, ConnId(key.1));
                    }
                    Op::Disconnect { .. } => {}
                    Op::Turn => { w.turn(); }
                }
                w.now_ms += 1;
            }
            settle(&mut w, &mut alive);
            let mut registered: BTreeMap<(u16, u64), DeviceKey> = BTreeMap::new();
            for shard in 0..3u16 {
                let registry = w.cores[usize::from(shard)].registry();
                registry.assert_consistent();
                for (device, session) in registry.sessions() {
                    prop_assert_eq!(w.home_of(device.user.0), shard, "registered on its home");
                    let previous = registered.insert((session.conn.shard.0, session.conn.conn.0), device);
                    prop_assert!(previous.is_none(), "a connection holds one device");
                }
            }
            prop_assert_eq!(registered, alive);
        }
    }
}

#[test]
fn home_routing_reaches_only_the_home_and_replies_reach_the_connection() {
    let mut w = World::new(3, RouterConfig::default());
    let erin = user_homed_on(3, 2, 0);
    w.connect(0, 1, 5, 0); // the sender, on shard 0
    w.take_effects(2);
    let from = DeviceKey::new(5, 0);
    let to = Target::User(UserId(erin));
    let now = w.now_ms;
    for msg in 0..20 {
        w.core(0).route_home(now, from, to, msg);
    }
    w.drive();
    let at_home: Vec<Msg> = w
        .take_effects(2)
        .into_iter()
        .map(|e| match e {
            Effect::Home {
                from: f,
                to: t,
                msg,
            } if f == from && t == to => msg,
            other => panic!("only Home effects at the home: {other:?}"),
        })
        .collect();
    assert_eq!(at_home, (0..20).collect::<Vec<_>>(), "once each, in order");
    assert!(w.take_effects(1).is_empty(), "nothing elsewhere");
    let conn = ConnRef {
        shard: ShardId(0),
        conn: ConnId(1),
    };
    w.core(2).route_to_conn(now, conn, from, to, 99);
    w.drive();
    assert_eq!(w.deliveries(0, 1), [99]);
    assert_eq!(w.core(0).conn_device(ConnId(1)), Some(from));
}
