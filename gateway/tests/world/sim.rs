//! The whole-shard world: N real [`ShardCore`]s (each with its router, its
//! queue engine and a [`SimDisk`]), an in-memory mesh, and real
//! [`ClientCore`]s talking to them in encoded bytes, all on virtual time
//! and driven by one seed. A step is one thing the world can do (a send,
//! an ack, a reconnect, a mesh batch, a finished flush, a crash, …); the
//! checker watches every client event and, at quiescence, what must have
//! arrived.
//!
//! What it checks (`Check` panics with the seed on the first breach):
//! - every ✓'d message reaches each of its recipient devices, and on one
//!   connection seqs strictly increase from the resume point;
//! - nothing is delivered that was not sent (payloads name their sender
//!   and client id), and one seq always carries the same message;
//! - ✓✓ arrives at every other device of the sender for every device ack;
//! - a connection never holds more than `window` unacknowledged entries;
//! - once all is acked and everyone has left, every internal map is empty,
//!   the dedup state is a window per sender device, and (reclaim runs as
//!   a step, its copying split around other work, like the server's) each
//!   log is within 2 × its live bytes + 2 segments.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;

use bytes::Bytes;
use client::{ClientCore, ClientEvent};
use gateway::clock::Now;
use gateway::shard::{Note, ShardConfig, ShardCore};
use gateway::token::{SigningKey, Verifier};
use queue_engine::{
    DEDUP_WINDOW, Engine, EngineConfig, LogConfig, ReclaimState, SimDisk, SimOp, SimRng, Storage,
    reclaim_scan, write_flush,
};
use shard_router::{ConnId, Placement, RouterConfig, RouterCore, ShardId, ShardMsg};
use wire_format::fb::{self, ErrorCode};
use wire_format::{Address, AddressKind, device_address, user_address};

/// Virtual time starts here (2026-01-01).
pub const T0: u64 = 1_767_225_600_000;

type Disk = Rc<RefCell<SimDisk>>;
type Core = ShardCore<Disk>;
/// (user, device)
pub type Dev = (u64, u32);

/// The shape of a world.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Shards of the one process.
    pub shards: u16,
    /// Users, numbered from 1.
    pub users: u64,
    /// Devices per user.
    pub devices: u32,
    /// The server's limits.
    pub shard: ShardConfig,
    /// The queue engine's.
    pub engine: EngineConfig,
    /// One group of every user (user 1 its admin), with random sends to
    /// it, members removed and added again, and devices unlinked.
    pub groups: bool,
}

impl Default for Shape {
    fn default() -> Self {
        let shard = ShardConfig {
            window: 4,
            ..ShardConfig::default()
        };
        let engine = EngineConfig {
            log: LogConfig {
                segment_bytes_max: 16 << 10,
                batch_bytes_max: 4 << 10,
            },
            // Small: most backlog is read back from the disk.
            payload_cache_bytes: 2 << 10,
            ..EngineConfig::default()
        };
        Self {
            shards: 2,
            users: 4,
            devices: 2,
            shard,
            engine,
            groups: false,
        }
    }
}

/// A message a client sent, as the world knows it.
#[derive(Debug, Clone)]
struct Sent {
    to: Address,
    /// Sent with a short TTL: it may expire before delivery.
    ttl: bool,
    /// The server's id, once ✓'d.
    message_id: Option<u64>,
    /// To the group: what the world knew of its members when it was sent
    /// and when it was ✓'d.
    views: Option<(GroupView, Option<GroupView>)>,
}

/// The world's knowledge of the group's members at one moment.
#[derive(Debug, Clone, PartialEq)]
struct GroupView {
    members: BTreeSet<u64>,
    /// Per user, how many changes about it were asked for or confirmed.
    epochs: BTreeMap<u64, u64>,
    /// A user whose change is asked for and not yet confirmed.
    uncertain: Option<u64>,
}

impl GroupView {
    /// Whether `user` was surely a member (`Some(true)`), surely not
    /// (`Some(false)`), or is being changed (`None`).
    fn member(&self, user: u64) -> Option<bool> {
        (self.uncertain != Some(user)).then(|| self.members.contains(&user))
    }
}

/// The world's group: its id, members, and the one change in flight.
#[derive(Debug, Clone, Default)]
struct GroupModel {
    id: u64,
    view: Option<GroupView>,
    /// A membership change asked for: (request id, user, adding).
    flip: Option<(u64, u64, bool)>,
    next_request: u64,
}

/// One device as the world sees it: its client state and what it got.
#[derive(Debug)]
pub struct Device {
    /// Its client core (kept across connections for `reconnect`).
    pub client: Option<ClientCore>,
    /// Its connection: (shard, id).
    pub conn: Option<(usize, ConnId)>,
    /// Next client message id.
    next_id: u64,
    /// On the current connection: whether `Welcome` came, the resume
    /// point and the last seq seen.
    welcomed: bool,
    floor: u64,
    last_seq: u64,
    /// Seqs received on this connection (for the window check).
    unacked: BTreeSet<u64>,
    /// Seqs that carried a message with a short TTL: one that expires while
    /// in flight leaves the server's window (it is no longer queued), so
    /// the device may hold one more unacknowledged.
    ttl_seqs: BTreeSet<u64>,
    /// The highest seq this device ever acknowledged: the server may have
    /// applied that ack even if a stale resume point sends it again.
    acked_ever: u64,
    /// Seqs above it acknowledged one by one (non-cumulative acks).
    acked_singles: BTreeSet<u64>,
    /// What each seq carried: a message id, or a receipt (`u64::MAX`).
    pub seqs: BTreeMap<u64, u64>,
    /// Message ids received.
    pub got: BTreeSet<u64>,
    /// (message id, device it is about) of Delivered receipts received.
    pub receipts: BTreeSet<(u64, Dev)>,
    /// (message id, device it is about) of Expired receipts received.
    pub expired: BTreeSet<(u64, Dev)>,
    /// Messages gap notices said were dropped, per sending device.
    pub gaps: BTreeMap<Dev, u64>,
    /// Every event, for scenario tests.
    pub events: Vec<ClientEvent>,
}

/// What the world saw of a connection that was replaced or dropped while
/// the server still held it.
#[derive(Debug)]
pub struct Ghost {
    /// The device.
    pub dev: Dev,
    /// Its old connection.
    pub conn: (usize, ConnId),
    /// The client core of that old connection.
    pub client: ClientCore,
    /// What it received.
    pub events: Vec<ClientEvent>,
}

/// The world.
pub struct World {
    /// Its seed.
    pub seed: u64,
    /// Its shape.
    pub shape: Shape,
    /// Randomness.
    pub rng: SimRng,
    /// Virtual wall-clock time.
    pub now: u64,
    key: SigningKey,
    verifier: Verifier,
    /// The process: one core per shard (None while crashed).
    pub cores: Vec<Core>,
    disks: Vec<Disk>,
    /// Per (from, to) shard pair, batches in flight, FIFO.
    mesh: BTreeMap<(usize, usize), VecDeque<Vec<ShardMsg<Note>>>>,
    /// Per shard, when its in-flight flush completes.
    flushing: Vec<Option<u64>>,
    /// Flush latency in ms (0: at once).
    pub flush_ms: u64,
    /// How far the wall clock was stepped from virtual time.
    pub wall_step_ms: i64,
    /// A scenario that makes the cores count internal errors on purpose.
    pub anomalies_expected: bool,
    /// A scenario that looks at a failed core before the restart.
    pub hold_failed: bool,
    /// A shard whose flushes do not start (its disk is slow).
    pub held_flush: Option<usize>,
    /// The shard the next connection goes to (else a random one).
    pub next_shard: Option<usize>,
    /// Devices by (user, device).
    pub devices: BTreeMap<Dev, Device>,
    /// Old connections the server still held.
    pub ghosts: Vec<Ghost>,
    /// Sends by (sender, client id).
    sent: BTreeMap<(Dev, u64), Sent>,
    /// Message id → (sender, client id).
    ids: BTreeMap<u64, (Dev, u64)>,
    /// The group, if the shape has one.
    group: GroupModel,
    /// Devices unlinked (asked for), and whether it was confirmed.
    unlinked: BTreeMap<Dev, bool>,
    /// Crashes so far.
    pub crashes: u64,
    /// Segments reclaimed (deleted once their copies were durable).
    pub reclaimed: u64,
    /// Per shard, a reclaimed segment waiting for its copies to be
    /// durable: (segment, position the copies are durable at).
    deleting: Vec<Option<(u64, u64)>>,
    /// Fail-stops after an I/O error so far.
    pub fail_stops: u64,
    /// Internal errors the cores counted, in processes already gone.
    pub anomalies_before: u64,
    last_anomaly_before: Option<&'static str>,
}

/// `WORLD_TRACE=1` prints every step and client event.
fn trace() -> bool {
    std::env::var_os("WORLD_TRACE").is_some()
}

/// The address of one device.
pub fn device(dev: Dev) -> Address {
    device_address(dev.0, dev.1)
}

fn dev_of(a: &Address) -> Dev {
    (a.id(), a.device())
}

/// The payload of a send: it names its sender and client id.
pub fn payload(dev: Dev, client_msg_id: u64, pad: usize) -> Bytes {
    let mut p = Vec::with_capacity(20 + pad);
    p.extend_from_slice(&dev.0.to_le_bytes());
    p.extend_from_slice(&dev.1.to_le_bytes());
    p.extend_from_slice(&client_msg_id.to_le_bytes());
    p.resize(20 + pad, 0xab);
    Bytes::from(p)
}

fn parse_payload(p: &[u8]) -> Option<(Dev, u64)> {
    let user = u64::from_le_bytes(p.get(..8)?.try_into().ok()?);
    let device = u32::from_le_bytes(p.get(8..12)?.try_into().ok()?);
    let id = u64::from_le_bytes(p.get(12..20)?.try_into().ok()?);
    Some(((user, device), id))
}

impl World {
    /// A world of `shape` driven by `seed`, with every device registered
    /// (each connected once and gone again).
    pub fn new(seed: u64, shape: Shape) -> Self {
        let (key, _) = SigningKey::generate(1);
        let verifier = Verifier::new([(1, key.public_key())]);
        let shards = usize::from(shape.shards);
        let mut world = Self {
            seed,
            shape,
            rng: SimRng::new(seed),
            now: T0,
            key,
            verifier,
            cores: Vec::new(),
            disks: (0..shards)
                .map(|i| Rc::new(RefCell::new(SimDisk::new(seed ^ (i as u64) << 32))))
                .collect(),
            mesh: BTreeMap::new(),
            flushing: vec![None; shards],
            flush_ms: 0,
            wall_step_ms: 0,
            anomalies_expected: false,
            hold_failed: false,
            held_flush: None,
            next_shard: None,
            devices: BTreeMap::new(),
            ghosts: Vec::new(),
            sent: BTreeMap::new(),
            ids: BTreeMap::new(),
            group: GroupModel::default(),
            unlinked: BTreeMap::new(),
            crashes: 0,
            reclaimed: 0,
            deleting: vec![None; shards],
            fail_stops: 0,
            anomalies_before: 0,
            last_anomaly_before: None,
        };
        world.start();
        for user in 1..=shape.users {
            for device in 0..shape.devices {
                world.devices.insert((user, device), Device::new());
            }
        }
        let all: Vec<Dev> = world.devices.keys().copied().collect();
        for dev in &all {
            world.connect(*dev);
        }
        world.settle();
        if shape.groups {
            world.create_group();
        }
        for dev in all {
            world.disconnect(dev);
        }
        world.settle();
        world
    }

    /// User 1's first device creates a group of every user.
    fn create_group(&mut self) {
        let admin = (1, 0);
        let members: Vec<u64> = (2..=self.shape.users).collect();
        self.group.next_request = 100;
        let client = self.client(admin);
        client.group_create(1, &members);
        self.pump_client(admin);
        self.settle();
        if self.group.view.is_none() {
            self.fail("the group was not created");
        }
    }

    fn client(&mut self, dev: Dev) -> &mut ClientCore {
        let d = self.devices.get_mut(&dev).expect("known");
        d.client.as_mut().expect("connected")
    }

    /// The admin asks to remove a member, or to add a removed user back.
    fn flip_member(&mut self) {
        let admin = (1, 0);
        let Some(view) = self.group.view.clone() else {
            return;
        };
        if self.group.flip.is_some() || !self.online(admin) {
            return;
        }
        let user = 2 + self.rng.below(self.shape.users - 1);
        let adding = !view.members.contains(&user);
        let request = self.group.next_request;
        self.group.next_request += 1;
        let id = self.group.id;
        let client = self.client(admin);
        match adding {
            true => client.group_add(request, id, &[user]),
            false => client.group_remove(request, id, &[user]),
        }
        self.group.flip = Some((request, user, adding));
        let view = self.group.view.as_mut().expect("checked");
        *view.epochs.entry(user).or_default() += 1;
        view.uncertain = Some(user);
        self.pump_client(admin);
    }

    /// A group change reached `dev`.
    fn on_group_changed(&mut self, dev: Dev, request_id: u64, group: u64, members: &[u64]) {
        if dev != (1, 0) || request_id == 0 {
            return;
        }
        if request_id == 1 && self.group.view.is_none() {
            self.group.id = group;
            let mut all: BTreeSet<u64> = members.iter().copied().collect();
            all.insert(1);
            self.group.view = Some(GroupView {
                members: all,
                epochs: BTreeMap::new(),
                uncertain: None,
            });
            return;
        }
        let Some((request, user, adding)) = self.group.flip else {
            return;
        };
        if request != request_id {
            return;
        }
        self.group.flip = None;
        let view = self.group.view.as_mut().expect("a group");
        match adding {
            true => view.members.insert(user),
            false => view.members.remove(&user),
        };
        *view.epochs.entry(user).or_default() += 1;
        view.uncertain = None;
    }

    /// Device 0 of a user unlinks the user's device 1 (for good).
    fn unlink_one(&mut self, user: u64) {
        let (by, gone) = ((user, 0), (user, 1));
        if self.shape.devices < 2 || self.unlinked.contains_key(&gone) || !self.online(by) {
            return;
        }
        self.client(by).device_unlink(7, 1);
        self.unlinked.insert(gone, false);
        self.pump_client(by);
    }

    fn is_unlinked(&self, dev: Dev) -> bool {
        self.unlinked.contains_key(&dev)
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        panic!("seed {}: {what}", self.seed)
    }

    // ---- the process ----------------------------------------------------------

    /// Opens every shard from its disk (recovery).
    fn start(&mut self) {
        let shards = self.shape.shards;
        self.cores = (0..shards)
            .map(|i| {
                let disk = self.disks[usize::from(i)].clone();
                let (engine, _) = Engine::open(&mut disk.clone(), self.shape.engine, self.now)
                    .unwrap_or_else(|e| self.fail(format!("recovery of shard {i}: {e}")));
                let placement = Placement::single_node(shards);
                let router = RouterCore::new(ShardId(i), placement, RouterConfig::default());
                ShardCore::new(router, engine, disk, self.shape.shard)
            })
            .collect();
    }

    /// The process dies (SIGKILL, or a power cut: unsynced bytes may be
    /// lost or torn) and starts again; every client sees its connection end.
    pub fn crash(&mut self) {
        self.crashes += 1;
        self.anomalies_before += self.anomalies_now();
        self.last_anomaly_before = self.last_anomaly();
        for disk in &self.disks {
            disk.borrow_mut().crash();
        }
        self.mesh.clear();
        self.flushing.iter_mut().for_each(|f| *f = None);
        // A segment not deleted yet stays: recovery sees it and its copies.
        self.deleting.iter_mut().for_each(|d| *d = None);
        for d in self.devices.values_mut() {
            if d.conn.take().is_some()
                && let Some(c) = d.client.as_mut()
            {
                c.handle_peer_closed();
            }
        }
        self.ghosts.clear();
        // An unlink not confirmed may not have been durable.
        self.unlinked.retain(|_, confirmed| *confirmed);
        self.start();
    }

    /// The next create, write or sync of `shard`'s disk fails.
    pub fn fail_disk(&mut self, shard: usize, op: SimOp) {
        self.disks[shard].borrow_mut().fail_next(op);
    }

    // ---- connections ------------------------------------------------------------

    fn token(&self, dev: Dev) -> Vec<u8> {
        self.key.issue(dev.0, dev.1, T0 / 1000 + 365 * 24 * 3600)
    }

    /// `dev` connects to a random shard, resuming where its client stopped.
    /// A connection it still had stays with the server (a ghost) until the
    /// server closes it.
    pub fn connect(&mut self, dev: Dev) -> bool {
        let token = self.token(dev);
        let client = match &self.devices[&dev].client {
            Some(old) => old.reconnect(&token),
            None => ClientCore::new(&token, 0, 1),
        };
        self.connect_with(dev, client)
    }

    /// `dev` connects with a client that resumes after `last_acked_seq`
    /// (stale, exact or past the end); unanswered sends are forgotten.
    pub fn connect_resuming(&mut self, dev: Dev, last_acked_seq: u64) -> bool {
        let token = self.token(dev);
        let next_id = self.devices[&dev].next_id;
        let client = ClientCore::new(&token, last_acked_seq, next_id);
        self.connect_with(dev, client)
    }

    fn connect_with(&mut self, dev: Dev, client: ClientCore) -> bool {
        if trace() {
            eprintln!("  {dev:?} connects after {}", client.last_acked_seq());
        }
        let shards = self.cores.len() as u64;
        let random = usize::try_from(self.rng.below(shards)).expect("few shards");
        let shard = self.next_shard.take().unwrap_or(random);
        let now = self.at();

        let Some(conn) = self.cores[shard].open_conn(now) else {
            return false; // at the limit or draining: the socket is closed
        };
        let now = self.at();

        self.cores[shard].handshake_done(now, conn);
        let d = self.devices.get_mut(&dev).expect("known");
        if let Some(old) = d.conn.take() {
            let old_client = d.client.take().expect("a connected device has a client");
            self.ghosts.push(Ghost {
                dev,
                conn: old,
                client: old_client,
                events: Vec::new(),
            });
        }
        d.floor = client.last_acked_seq();
        d.last_seq = d.floor;
        d.welcomed = false;
        d.unacked.clear();
        d.client = Some(client);
        d.conn = Some((shard, conn));
        self.pump_client(dev);
        true
    }

    /// `dev`'s socket closes (the client leaves or the network drops).
    pub fn disconnect(&mut self, dev: Dev) {
        let d = self.devices.get_mut(&dev).expect("known");
        let Some((shard, conn)) = d.conn.take() else {
            return;
        };
        if let Some(c) = d.client.as_mut() {
            c.handle_peer_closed();
        }
        let now = self.at();

        self.cores[shard].remove_conn(now, conn);
    }

    // ---- what devices do ----------------------------------------------------------

    /// Whether `dev` is connected and welcomed.
    pub fn online(&self, dev: Dev) -> bool {
        let d = &self.devices[&dev];
        d.conn.is_some() && d.client.as_ref().is_some_and(|c| c.is_authenticated())
    }

    /// `dev` sends a payload of `pad` extra bytes to `to`; returns its id.
    pub fn send(&mut self, dev: Dev, to: Address, pad: usize) -> u64 {
        self.send_ttl(dev, to, pad, 0)
    }

    /// Like [`World::send`], with a TTL in seconds (0: the default).
    pub fn send_ttl(&mut self, dev: Dev, to: Address, pad: usize, ttl_s: u32) -> u64 {
        let d = self.devices.get_mut(&dev).expect("known");
        let client = d.client.as_mut().expect("connected");
        let id = d.next_id.max(1);
        let got = client.send(to, ttl_s, payload(dev, id, pad));
        assert_eq!(got, id, "the world and the client agree on ids");
        d.next_id = id + 1;
        let views = (to.kind() == AddressKind::Group)
            .then(|| self.group.view.clone())
            .flatten()
            .map(|v| (v, None));
        self.sent.insert(
            (dev, id),
            Sent {
                to,
                ttl: ttl_s != 0,
                message_id: None,
                views,
            },
        );
        self.pump_client(dev);
        id
    }

    /// `dev` acknowledges everything it received on this connection.
    pub fn ack(&mut self, dev: Dev) {
        let d = self.devices.get_mut(&dev).expect("known");
        let Some(client) = d.client.as_mut() else {
            return;
        };
        if d.last_seq > client.last_acked_seq() {
            if trace() {
                eprintln!("  {dev:?} acks {}", d.last_seq);
            }
            client.ack(d.last_seq);
            d.unacked.clear();
            d.acked_ever = d.acked_ever.max(d.last_seq);
            let ever = d.acked_ever;
            d.acked_singles.retain(|s| *s > ever);
        }
        self.pump_client(dev);
    }

    /// `dev` acknowledges one entry it received on this connection, out of
    /// order (a non-cumulative ack).
    pub fn ack_one(&mut self, dev: Dev) {
        let d = self.devices.get_mut(&dev).expect("known");
        let (Some(client), Some(&seq)) = (d.client.as_mut(), d.unacked.iter().next_back()) else {
            return;
        };
        if trace() {
            eprintln!("  {dev:?} acks only {seq}");
        }
        client.ack_only(seq);
        d.unacked.remove(&seq);
        d.acked_singles.insert(seq);
        self.pump_client(dev);
    }

    /// `dev` tells the senders it read the last message it got.
    pub fn read(&mut self, dev: Dev) {
        let d = &self.devices[&dev];
        let Some(&mid) = d.got.iter().next_back() else {
            return;
        };
        let Some(&(sender, _)) = self.ids.get(&mid) else {
            return;
        };
        let d = self.devices.get_mut(&dev).expect("known");
        if let Some(client) = d.client.as_mut() {
            client.read(user_address(sender.0), &[mid]);
        }
        self.pump_client(dev);
    }

    /// Moves `dev`'s pending frames to its shard.
    fn pump_client(&mut self, dev: Dev) {
        let d = self.devices.get_mut(&dev).expect("known");
        let (Some((shard, conn)), Some(client)) = (d.conn, d.client.as_mut()) else {
            return;
        };
        let mut bytes = Vec::new();
        while let Some(frame) = client.poll_transmit() {
            bytes.extend_from_slice(&frame.to_vec());
        }
        if !bytes.is_empty() {
            let now = self.at();
            self.cores[shard].handle_bytes(now, conn, &bytes, &self.verifier);
        }
    }

    // ---- the server side ----------------------------------------------------------

    /// What the shell does when a core says its log failed: exit, and the
    /// supervisor restarts the process (unless a scenario holds it).
    fn fail_stop(&mut self) {
        self.fail_stops += 1;
        if self.hold_failed {
            return;
        }
        self.crash();
    }

    /// Hands every connection's output to its client; returns whether any moved.
    fn pump_outputs(&mut self) -> bool {
        if !self.hold_failed && self.cores.iter().any(|c| c.failed().is_some()) {
            self.fail_stop();
        }
        let mut moved = false;
        for shard in 0..self.cores.len() {
            for conn in self.cores[shard].take_ready() {
                let Some((out, close)) = self.cores[shard].take_output(conn) else {
                    continue;
                };
                moved = true;
                self.hand_to_client((shard, conn), &out, close);
                if close {
                    let now = self.at();

                    self.cores[shard].remove_conn(now, conn);
                }
            }
        }
        moved
    }

    fn hand_to_client(&mut self, conn: (usize, ConnId), out: &[u8], close: bool) {
        let owner = self
            .devices
            .iter()
            .find(|(_, d)| d.conn == Some(conn))
            .map(|(k, _)| *k);
        if let Some(dev) = owner {
            let client = self.devices.get_mut(&dev).and_then(|d| d.client.as_mut());
            let client = client.expect("connected");
            client.handle_bytes(out);
            if close {
                client.handle_peer_closed();
                self.devices.get_mut(&dev).expect("known").conn = None;
            }
            self.take_events(dev);
            self.pump_client(dev);
            return;
        }
        let Some(ghost) = self.ghosts.iter_mut().find(|g| g.conn == conn) else {
            return; // a connection the world already dropped
        };
        ghost.client.handle_bytes(out);
        if close {
            ghost.client.handle_peer_closed();
        }
        while let Some(e) = ghost.client.poll_event() {
            ghost.events.push(e);
        }
        while ghost.client.poll_transmit().is_some() {} // it is leaving
    }

    /// Delivers every mesh batch (and hands out the output), flushing nothing.
    pub fn deliver_batches(&mut self) {
        while self.deliver_one_batch() {
            self.pump_outputs();
        }
        self.pump_outputs();
    }

    /// The shard that is `user`'s home.
    pub fn home_of(&self, user: u64) -> usize {
        let placement = Placement::single_node(self.shape.shards);
        match placement.route(shard_router::Target::User(shard_router::UserId(user))) {
            shard_router::Route::Shard(s) => usize::from(s.0),
            shard_router::Route::Node(_) => unreachable!("one node"),
        }
    }

    /// The next client message id `dev` uses (from its next connection).
    pub fn set_next_id(&mut self, dev: Dev, id: u64) {
        self.devices.get_mut(&dev).expect("known").next_id = id;
    }

    /// Delivers one mesh batch (a random pair's oldest); returns whether any.
    pub fn deliver_one_batch(&mut self) -> bool {
        self.collect_batches();
        let pairs: Vec<(usize, usize)> = self
            .mesh
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(k, _)| *k)
            .collect();
        if pairs.is_empty() {
            return false;
        }
        let pair = pairs[usize::try_from(self.rng.below(pairs.len() as u64)).expect("small")];
        let batch = self
            .mesh
            .get_mut(&pair)
            .and_then(VecDeque::pop_front)
            .expect("non-empty");
        let now = self.at();

        self.cores[pair.1].handle_batch(now, batch);
        true
    }

    fn collect_batches(&mut self) {
        for from in 0..self.cores.len() {
            while let Some((to, batch)) = self.cores[from].poll_batch() {
                let key = (from, usize::from(to.0));
                self.mesh.entry(key).or_default().push_back(batch);
            }
        }
    }

    /// Starts the next flush of every idle shard and completes those due;
    /// returns whether any moved. An I/O error is fail-stop: the process
    /// exits and restarts on the same disk.
    pub fn flush(&mut self) -> bool {
        let mut moved = false;
        for shard in 0..self.cores.len() {
            if self.flushing[shard].is_some_and(|t| t <= self.now) {
                self.flushing[shard] = None;
                // The batch reaches the disk as its write completes: until
                // then a read of its bytes finds what was there before (an
                // O_DIRECT write in flight), so the core must not read it
                // from the disk meanwhile.
                let flush = self.cores[shard]
                    .flush_in_flight()
                    .cloned()
                    .expect("handed out, not flushed");
                if let Err(error) = write_flush(&mut self.disks[shard].clone(), &flush) {
                    // Fail-stop: the shell exits and the supervisor restarts it.
                    self.cores[shard].handle_flush_failed(&error);
                    assert!(self.cores[shard].failed().is_some());
                    self.fail_stop();
                    return true;
                }
                let now = self.at();
                self.cores[shard].handle_flushed(now);
                self.delete_reclaimed(shard);
                moved = true;
            }
            if self.flushing[shard].is_some() || self.held_flush == Some(shard) {
                continue;
            }
            if self.cores[shard].poll_flush().is_none() {
                continue;
            }
            moved = true;
            self.flushing[shard] = Some(self.now + self.flush_ms);
        }
        moved
    }

    /// One reclaim on each shard where it is due, as the server's
    /// reclaimer does it: read and scan, copy forward in two slices with a
    /// mesh batch and an ack between them, then delete the segment once
    /// the copies are durable (a flush later).
    pub fn reclaim(&mut self) {
        for shard in 0..self.cores.len() {
            if self.deleting[shard].is_some() || self.cores[shard].failed().is_some() {
                continue;
            }
            let Some(segment) = self.cores[shard].reclaim_due() else {
                continue;
            };
            let read = self.disks[shard].borrow().read(segment);
            let bytes = match read {
                Ok(bytes) => bytes,
                Err(e) => {
                    self.cores[shard].handle_reclaim_failed(&e.to_string());
                    return self.fail_stop();
                }
            };
            let records = reclaim_scan(segment, &bytes)
                .unwrap_or_else(|e| self.fail(format!("reclaim scan of shard {shard}: {e}")));
            let (first, second) = records.split_at(records.len() / 2);
            let mut state = ReclaimState::default();
            self.cores[shard].reclaim_part(segment, &bytes, first, &mut state);
            self.deliver_one_batch();
            let dev = self.random_dev();
            self.ack(dev);
            if self.cores[shard].failed().is_some() {
                return; // the next pump stops the process
            }
            self.cores[shard].reclaim_part(segment, &bytes, second, &mut state);
            let after = self.cores[shard].reclaim_finish(segment, state);
            self.deleting[shard] = Some((segment, after));
            self.delete_reclaimed(shard);
        }
    }

    /// Deletes `shard`'s reclaimed segment once its copies are durable.
    fn delete_reclaimed(&mut self, shard: usize) {
        let Some((segment, after)) = self.deleting[shard] else {
            return;
        };
        if self.cores[shard].engine().durable() < after {
            return;
        }
        self.deleting[shard] = None;
        self.disks[shard].borrow_mut().remove(segment).unwrap();
        self.cores[shard].segment_deleted(segment);
        self.reclaimed += 1;
    }

    /// The bounds of a quiet world: a dedup window per sender device at
    /// most, originals only for the last ids of each, and (reclaim run
    /// until none is due) each log within 2 × its live bytes + 2 segments.
    fn check_bounds(&mut self) {
        for _ in 0..1_000 {
            self.reclaim();
            self.settle();
            let busy = self.deleting.iter().any(Option::is_some)
                || self.cores.iter().any(|c| c.reclaim_due().is_some());
            if !busy {
                break;
            }
        }
        let devices = self.devices.len();
        let segment = self.shape.engine.log.segment_bytes_max;
        for (i, core) in self.cores.iter().enumerate() {
            let engine = core.engine();
            let (senders, known) = engine.dedup_entries();
            let window = usize::try_from(DEDUP_WINDOW).expect("small");
            if senders > devices || known > window * senders {
                self.fail(format!("shard {i}: {senders} windows, {known} originals"));
            }
            let (log, live) = (engine.log_bytes(), engine.live_bytes());
            if log > 2 * live + 2 * segment {
                self.fail(format!("shard {i}: log {log} B for {live} B live"));
            }
        }
    }

    /// The current moment on both clocks (monotonic from the start; the
    /// wall clock may have been stepped, as NTP does).
    pub fn at(&self) -> Now {
        Now {
            mono_ms: self.now - T0 + 1,
            wall_ms: self.now.saturating_add_signed(self.wall_step_ms),
        }
    }

    /// Virtual time passes: every core runs the deadlines it asked for.
    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
        let now = self.at();
        for core in &mut self.cores {
            if core.poll_timeout() <= now.mono_ms {
                core.handle_timeout(now);
            }
        }
    }

    /// Starts a drain on every shard.
    pub fn drain(&mut self) {
        let now = self.at();
        for core in &mut self.cores {
            core.start_drain(now, 1_000);
        }
    }

    /// Moves everything (outputs, batches, flushes) until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..100_000 {
            let mut moved = self.pump_outputs();
            while self.deliver_one_batch() {
                moved = true;
                self.pump_outputs();
            }
            moved |= self.flush();
            if !moved {
                if self.flushing.iter().any(Option::is_some) {
                    self.now += self.flush_ms.max(1);
                    continue;
                }
                return;
            }
        }
        self.fail("the world did not settle");
    }

    // ---- the checker ----------------------------------------------------------------

    fn take_events(&mut self, dev: Dev) {
        loop {
            let d = self.devices.get_mut(&dev).expect("known");
            let Some(event) = d.client.as_mut().and_then(ClientCore::poll_event) else {
                return;
            };
            self.check_event(dev, &event);
            self.devices
                .get_mut(&dev)
                .expect("known")
                .events
                .push(event);
        }
    }

    fn check_event(&mut self, dev: Dev, event: &ClientEvent) {
        if trace() {
            eprintln!("  {dev:?} <- {event:?}");
        }
        let first = match event {
            ClientEvent::Welcome { .. } => true,
            ClientEvent::Closed { .. } => false,
            _ => !self.devices[&dev].welcomed,
        };
        if first && self.devices[&dev].welcomed {
            self.fail(format!("{dev:?}: a second Welcome"));
        } else if first
            && !matches!(event, ClientEvent::Welcome { .. })
            // A connection closed before its Welcome came (replaced,
            // drained, or its device refused) gets its GoAway instead.
            && !matches!(event, ClientEvent::GoAway { .. })
        {
            self.fail(format!("{dev:?}: {event:?} before Welcome"));
        }
        self.devices.get_mut(&dev).expect("known").welcomed |= first;
        match event {
            ClientEvent::Welcome { resume_seq, .. } => {
                if self.unlinked.get(&dev) == Some(&true) {
                    self.fail(format!("{dev:?} was welcomed after it was unlinked"));
                }
                let floor = self.devices[&dev].floor;
                if *resume_seq > floor {
                    self.fail(format!("{dev:?} resumed after {resume_seq} > {floor}"));
                }
                let d = self.devices.get_mut(&dev).expect("known");
                d.floor = *resume_seq;
                d.last_seq = *resume_seq;
            }
            ClientEvent::Acked {
                client_msg_id,
                message_id,
                ..
            } => self.on_acked(dev, *client_msg_id, *message_id),
            ClientEvent::Message {
                seq,
                message_id,
                from,
                payload,
                ..
            } => {
                let Some((sender, id)) = parse_payload(payload) else {
                    self.fail(format!("{dev:?} got a payload nobody sent"));
                };
                if dev_of(from) != sender || !self.sent.contains_key(&(sender, id)) {
                    self.fail(format!("{dev:?} got {sender:?}/{id} that was not sent"));
                }
                if let Some(&(s, i)) = self.ids.get(message_id)
                    && (s, i) != (sender, id)
                {
                    self.fail(format!("message id {message_id} names two messages"));
                }
                self.ids.insert(*message_id, (sender, id));
                self.check_group_member(dev, sender, id);
                if self.sent[&(sender, id)].ttl {
                    let d = self.devices.get_mut(&dev).expect("known");
                    d.ttl_seqs.insert(*seq);
                }
                self.on_entry(dev, *seq, *message_id);
                self.devices
                    .get_mut(&dev)
                    .expect("known")
                    .got
                    .insert(*message_id);
            }
            ClientEvent::Receipt {
                kind,
                from,
                message_ids,
                seq,
            } => {
                self.on_entry(dev, *seq, u64::MAX);
                let d = self.devices.get_mut(&dev).expect("known");
                let about = |id: &u64| (*id, dev_of(from));
                match *kind {
                    fb::ReceiptKind::Delivered => d.receipts.extend(message_ids.iter().map(about)),
                    fb::ReceiptKind::Expired => d.expired.extend(message_ids.iter().map(about)),
                    _ => {}
                }
            }
            ClientEvent::GroupChanged {
                seq,
                request_id,
                group,
                members,
                ..
            } => {
                if *seq != 0 {
                    self.on_entry(dev, *seq, u64::MAX);
                }
                let (r, g, m) = (*request_id, *group, members.clone());
                self.on_group_changed(dev, r, g, &m);
            }
            ClientEvent::Gap { seq, senders, .. } => {
                self.on_entry(dev, *seq, u64::MAX);
                let d = self.devices.get_mut(&dev).expect("known");
                for s in senders {
                    *d.gaps.entry((s.user(), s.device())).or_default() += u64::from(s.count());
                }
            }
            ClientEvent::DeviceChanged {
                seq,
                request_id,
                device,
                ..
            } => {
                self.on_entry(dev, *seq, u64::MAX);
                if *request_id == 7 && dev.1 == 0 {
                    self.unlinked.insert((dev.0, *device), true);
                }
            }
            ClientEvent::Closed {
                code: Some(ErrorCode::DeviceUnlinked),
            } => {
                self.unlinked.insert(dev, true);
            }
            ClientEvent::Refused {
                code: ErrorCode::Draining,
                ..
            } => {} // kept by the client and sent again on its next connection
            ClientEvent::Refused {
                code,
                client_msg_id,
                ..
            } if *client_msg_id != 0 => {
                let sent = self.sent.get(&(dev, *client_msg_id));
                if sent.is_some_and(|s| s.message_id.is_some()) {
                    self.fail(format!(
                        "{dev:?}/{client_msg_id} ✓'d, then refused {code:?}"
                    ));
                }
                self.sent.remove(&(dev, *client_msg_id));
            }
            _ => {}
        }
    }

    /// A group message reached `dev`: its user must not have been surely
    /// out of the group from the send until now.
    fn check_group_member(&self, dev: Dev, sender: Dev, id: u64) {
        let Some((at_send, _)) = self.sent.get(&(sender, id)).and_then(|s| s.views.as_ref()) else {
            return;
        };
        let Some(now) = &self.group.view else { return };
        let unchanged = at_send.epochs.get(&dev.0) == now.epochs.get(&dev.0);
        if unchanged && at_send.member(dev.0) == Some(false) && now.member(dev.0) == Some(false) {
            self.fail(format!(
                "{dev:?} got {sender:?}/{id}, sent to a group it had left"
            ));
        }
    }

    fn on_acked(&mut self, dev: Dev, client_msg_id: u64, message_id: u64) {
        let Some(sent) = self.sent.get_mut(&(dev, client_msg_id)) else {
            self.fail(format!("{dev:?} got ✓ for {client_msg_id}, never sent"));
        };
        // 0: a retry of a message stored so long ago that its id is
        // forgotten (`ServerAck{Duplicate, message_id: 0}`); the check
        // finds the id from its deliveries.
        if message_id == 0 {
            sent.message_id.get_or_insert(0);
            return;
        }
        if sent.message_id.is_some_and(|m| m != message_id && m != 0) {
            self.fail(format!("{dev:?}/{client_msg_id}: ✓ with two message ids"));
        }
        sent.message_id = Some(message_id);
        if let Some((_, acked)) = sent.views.as_mut()
            && acked.is_none()
        {
            *acked = self.group.view.clone();
        }
        self.ids.insert(message_id, (dev, client_msg_id));
    }

    /// A message or receipt at `seq` arrived on `dev`'s connection.
    fn on_entry(&mut self, dev: Dev, seq: u64, what: u64) {
        let window = self.shape.shard.window;
        let seed = self.seed;
        let d = self.devices.get_mut(&dev).expect("known");
        assert!(
            seq > d.last_seq,
            "seed {seed}: {dev:?} got seq {seq} after {} (resumed after {})",
            d.last_seq,
            d.floor
        );
        d.last_seq = seq;
        if let Some(&before) = d.seqs.get(&seq) {
            assert_eq!(
                before, what,
                "seed {seed}: {dev:?} seq {seq} carried two entries"
            );
        }
        d.seqs.insert(seq, what);
        if seq > d.acked_ever && !d.acked_singles.contains(&seq) {
            d.unacked.insert(seq);
        }
        let may_have_expired = d.unacked.intersection(&d.ttl_seqs).count();
        assert!(
            d.unacked.len() <= window + may_have_expired,
            "seed {seed}: {dev:?} holds {} unacked > window {window} (+{may_have_expired} with a TTL)",
            d.unacked.len()
        );
    }

    /// The devices a ✓'d message must reach.
    fn recipients(&self, sender: Dev, sent: &Sent) -> Vec<Dev> {
        let to = &sent.to;
        let devices = |user: u64| (0..self.shape.devices).map(move |d| (user, d));
        let all = match to.kind() {
            AddressKind::Group => {
                let Some((at_send, Some(at_ack))) = &sent.views else {
                    return Vec::new();
                };
                // Surely a member from the send until ✓.
                let sure = |u: &u64| {
                    at_send.member(*u) == Some(true)
                        && at_ack.member(*u) == Some(true)
                        && at_send.epochs.get(u) == at_ack.epochs.get(u)
                };
                at_send
                    .members
                    .iter()
                    .filter(|u| sure(u))
                    .flat_map(|u| devices(*u))
                    .filter(|d| *d != sender && self.devices.contains_key(d))
                    .collect()
            }
            _ => self.direct_recipients(sender, to),
        };
        all.into_iter().filter(|d| !self.is_unlinked(*d)).collect()
    }

    fn direct_recipients(&self, sender: Dev, to: &Address) -> Vec<Dev> {
        match to.kind() {
            AddressKind::User => (0..self.shape.devices)
                .map(|d| (to.id(), d))
                .filter(|d| *d != sender && self.devices.contains_key(d))
                .collect(),
            AddressKind::Device => {
                let d = dev_of(to);
                if d != sender && self.devices.contains_key(&d) {
                    vec![d]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// Brings everyone online, acks everything until nothing moves, then
    /// checks every promise, disconnects everyone and checks the cores
    /// hold nothing.
    pub fn quiesce_and_check(&mut self) {
        self.settle();
        let all: Vec<Dev> = self.devices.keys().copied().collect();
        for round in 0.. {
            let live: Vec<Dev> = all
                .iter()
                .copied()
                .filter(|d| !self.is_unlinked(*d))
                .collect();
            if round == 200 {
                self.fail("no quiescence after 200 rounds");
            }
            let crashes = self.crashes;
            for dev in &live {
                if !self.online(*dev) {
                    self.disconnect(*dev);
                    self.connect(*dev);
                }
            }
            self.settle();
            for dev in &live {
                self.ack(*dev);
            }
            self.settle();
            // Quiet includes the tombstones' timer (`LAZY_SEAL_MS`): the
            // acks are durable before the round counts as quiet, so a
            // fail-stop after it (a disk fault in the reclaims below) cannot
            // bring back entries no client will connect to ack again; one
            // during it makes another round.
            self.advance(gateway::shard::LAZY_SEAL_MS);
            self.settle();
            let deferred = self.cores.iter().any(|c| c.internals().deferred > 0);
            let pending = deferred
                || self
                    .devices
                    .iter()
                    .filter(|(dev, _)| !self.is_unlinked(**dev))
                    .any(|(dev, d)| {
                        !self.online(*dev)
                            || d.client.as_ref().is_some_and(|c| !c.pending().is_empty())
                            || d.last_seq > d.client.as_ref().map_or(0, ClientCore::last_acked_seq)
                    });
            if !pending && round > 0 && crashes == self.crashes {
                break;
            }
            self.advance(500); // housekeeping retries deferred receipts
        }
        if trace() {
            for (i, core) in self.cores.iter().enumerate() {
                eprintln!("shard {i}: {:?} {:?}", core.internals(), core.stats());
            }
        }
        self.check_arrivals();
        if self.anomalies() > 0 && !self.anomalies_expected {
            let last = self.last_anomaly();
            self.fail(format!(
                "{} internal errors, last {last:?}",
                self.anomalies()
            ));
        }
        for dev in &all {
            self.disconnect(*dev);
        }
        self.settle();
        self.check_bounds();
        for (i, core) in self.cores.iter().enumerate() {
            let internals = core.internals();
            if internals != Default::default() {
                self.fail(format!("shard {i} still holds {internals:?}"));
            }
        }
    }

    /// Every ✓'d message reached each of its devices, or expired and was
    /// told: to its sender devices as `Expired` (else ✓✓ for each), and
    /// to the device in gap notices covering at least what it missed.
    /// `mid`, or for 0 (a ✓ whose id was forgotten) the id the message
    /// was delivered under, if it was.
    fn known_id(&self, mid: u64, sent: (Dev, u64)) -> u64 {
        match mid {
            0 => self
                .ids
                .iter()
                .find_map(|(m, s)| (*s == sent).then_some(*m))
                .unwrap_or(0),
            _ => mid,
        }
    }

    fn check_arrivals(&self) {
        let mut missed: BTreeMap<(Dev, Dev), u64> = BTreeMap::new();
        for ((sender, id), sent) in &self.sent {
            let Some(mid) = sent.message_id.map(|m| self.known_id(m, (*sender, *id))) else {
                continue;
            };
            let all: Vec<Dev> = (0..self.shape.devices).map(|d| (sender.0, d)).collect();
            let senders: Vec<Dev> = all
                .iter()
                .copied()
                .filter(|s| !self.is_unlinked(*s))
                .collect();
            for r in self.recipients(*sender, sent) {
                // Told to a sender device (one unlinked since counts).
                let expired = all
                    .iter()
                    .any(|s| self.devices[s].expired.contains(&(mid, r)));
                if !self.devices[&r].got.contains(&mid) {
                    // An unlinked sender device has nobody left to tell;
                    // the recipient's gap notices are still checked below.
                    if !expired && !self.is_unlinked(*sender) {
                        self.fail(format!(
                            "{sender:?}/{id} (message {mid}, to {:?}, short TTL {}) never reached {r:?}",
                            sent.to, sent.ttl
                        ));
                    }
                    *missed.entry((r, *sender)).or_default() += 1;
                }
                for s in senders.iter().filter(|s| **s != r) {
                    let told = &self.devices[s];
                    if !told.receipts.contains(&(mid, r)) && !told.expired.contains(&(mid, r)) {
                        self.fail(format!(
                            "{s:?} never got ✓✓ (or Expired) for {mid} from {r:?}"
                        ));
                    }
                }
            }
        }
        for ((r, sender), n) in missed {
            let told = self.devices[&r].gaps.get(&sender).copied().unwrap_or(0);
            if told < n {
                self.fail(format!(
                    "{r:?} missed {n} expired messages of {sender:?}, gap notices said {told}"
                ));
            }
        }
    }

    /// The last internal error a core counted.
    pub fn last_anomaly(&self) -> Option<&'static str> {
        let now = self.cores.iter().find_map(|c| c.stats().last_anomaly);
        now.or(self.last_anomaly_before)
    }

    /// Internal errors counted by the running cores.
    fn anomalies_now(&self) -> u64 {
        self.cores.iter().map(|c| c.stats().anomalies).sum()
    }

    /// Internal errors counted so far, across restarts.
    pub fn anomalies(&self) -> u64 {
        self.anomalies_before + self.anomalies_now()
    }

    /// ✓'d messages so far.
    pub fn acked_sends(&self) -> usize {
        self.sent
            .values()
            .filter(|s| s.message_id.is_some())
            .count()
    }

    /// Errors with `code` the device has been sent.
    pub fn refusals(&self, dev: Dev, code: ErrorCode) -> usize {
        self.devices[&dev]
            .events
            .iter()
            .filter(|e| matches!(e, ClientEvent::Refused { code: c, .. } if *c == code))
            .count()
    }

    // ---- random steps ----------------------------------------------------------------

    fn random_dev(&mut self) -> Dev {
        let user = 1 + self.rng.below(self.shape.users);
        let device = u32::try_from(self.rng.below(u64::from(self.shape.devices))).expect("few");
        (user, device)
    }

    fn random_target(&mut self, from: Dev) -> Address {
        let (user, device) = self.random_dev();
        if self.rng.one_in(4) && (user, device) != from {
            return device_address(user, device);
        }
        if user == from.0 && self.shape.devices == 1 {
            return user_address(1 + user % self.shape.users);
        }
        user_address(user)
    }

    /// One random step.
    pub fn step(&mut self) {
        let dev = self.random_dev();
        let roll = self.rng.below(1000);
        if trace() {
            eprintln!("step {roll} {dev:?} t={}", self.now - T0);
        }
        match roll {
            0..300 if self.online(dev) => {
                let to = self.random_target(dev);
                let pad = usize::try_from(self.rng.below(200)).expect("small");
                // Now and then a short TTL: it may expire before delivery.
                let ttl_s = match self.rng.below(10) {
                    0 => 1 + u32::try_from(self.rng.below(20)).expect("small"),
                    _ => 0,
                };
                self.send_ttl(dev, to, pad, ttl_s);
            }
            300..420 => self.ack(dev),
            420..450 => self.ack_one(dev),
            450..480 if self.online(dev) => self.read(dev),
            480..510 => self.disconnect(dev),
            510..580 if self.devices[&dev].conn.is_none() => self.random_connect(dev),
            580..590 => self.random_connect(dev), // replaces a live connection
            590..615 if self.shape.groups && self.online(dev) => {
                let to = wire_format::group_address(self.group.id);
                let pad = usize::try_from(self.rng.below(200)).expect("small");
                self.send(dev, to, pad);
            }
            615..620 if self.shape.groups => self.flip_member(),
            620..622 if self.shape.groups => self.unlink_one(dev.0),
            590..760 => {
                self.deliver_one_batch();
            }
            760..900 => {
                self.flush();
            }
            900..980 => {
                let ms = 1 + self.rng.below(300);
                self.advance(ms);
            }
            980..990 => {
                let shard = usize::try_from(self.rng.below(self.cores.len() as u64)).expect("few");
                let op = [SimOp::Create, SimOp::Write, SimOp::Sync, SimOp::Read]
                    [self.rng.below(4) as usize];
                self.fail_disk(shard, op);
            }
            990..993 => self.crash(),
            993..995 => {
                // The wall clock steps (back or ahead); deadlines must not care.
                let step = i64::try_from(self.rng.below(120_000)).expect("small") - 60_000;
                self.wall_step_ms += step;
            }
            995..997 => self.drain_and_restart(),
            997..1000 => self.reclaim(),
            _ => {}
        }
        self.pump_outputs();
    }

    fn random_connect(&mut self, dev: Dev) {
        let acked = self.devices[&dev]
            .client
            .as_ref()
            .map_or(0, ClientCore::last_acked_seq);
        match self.rng.below(10) {
            0 => {
                let stale = self.rng.below(acked + 1);
                self.connect_resuming(dev, stale)
            }
            1 => {
                let past_end = acked + 1_000_000 + self.rng.below(50);
                self.connect_resuming(dev, past_end)
            }
            _ => self.connect(dev),
        };
    }

    /// A drain (GoAway to all), time for clients to leave, then a restart.
    pub fn drain_and_restart(&mut self) {
        self.drain();
        self.settle();
        let drain_ms = self.shape.shard.session.drain_timeout_ms;
        self.advance(drain_ms);
        self.settle();
        self.crash();
    }
}

impl Device {
    fn new() -> Self {
        Self {
            client: None,
            conn: None,
            next_id: 1,
            welcomed: false,
            floor: 0,
            last_seq: 0,
            unacked: BTreeSet::new(),
            ttl_seqs: BTreeSet::new(),
            acked_ever: 0,
            acked_singles: BTreeSet::new(),
            seqs: BTreeMap::new(),
            got: BTreeSet::new(),
            receipts: BTreeSet::new(),
            expired: BTreeSet::new(),
            gaps: BTreeMap::new(),
            events: Vec::new(),
        }
    }
}
