//! The kill -9 check (`--survive fill|drain`): do acknowledged messages
//! for an offline receiver outlive a SIGKILL of the server?
//!
//! - `fill`: each of `--receivers` receivers makes the server remember it
//!   (MQTT: a persistent session with a QoS 1 subscription) and leaves;
//!   then one sender per receiver sends it `--per-receiver` stamped
//!   messages and waits for every acknowledgment (MQTT: PUBACK; core NATS
//!   has none, so nothing counts as acknowledged).
//! - the script kills the server with SIGKILL and restarts it on the same
//!   files;
//! - `drain`: each receiver comes back (MQTT: the same client id, clean
//!   session off; NATS: a subscription) and counts what arrives until
//!   [`QUIET`] passes without a message.
//!
//! Each phase prints one JSON object, read by `benchmarks/src/peers.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Args, Seen, System, mqtt_options, nats_connect, stamp, tls, unstamp};

/// Which half of the check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Phase {
    /// Register the receivers, send to them while they are away.
    Fill,
    /// Bring the receivers back, count what arrives.
    Drain,
}

/// How long a drain waits for the next message before it counts.
const QUIET: Duration = Duration::from_secs(3);

/// How long a fill may take.
const FILL_LIMIT: Duration = Duration::from_secs(300);

/// Connections opened at once.
const CONNECTING_MAX: usize = 32;

/// Runs `phase` and prints its JSON.
pub async fn run(args: Arc<Args>, phase: Phase) {
    let json = match (args.system, phase) {
        (System::Mqtt, Phase::Fill) => mqtt_fill(&args).await,
        (System::Mqtt, Phase::Drain) => mqtt_drain(&args).await,
        (System::Nats, Phase::Fill) => nats_fill(&args).await,
        (System::Nats, Phase::Drain) => nats_drain(&args).await,
    };
    println!("{json}");
}

fn topic(receiver: u32) -> String {
    format!("keep.{receiver}")
}

fn fill_json(args: &Args, sent: u64, acked: u64) -> serde_json::Value {
    serde_json::json!({
        "system": format!("{:?}", args.system).to_lowercase(),
        "phase": "fill",
        "receivers": args.receivers,
        "per_receiver": args.per_receiver,
        "sent": sent,
        "acked": acked,
    })
}

fn drain_json(args: &Args, seen: &[Seen]) -> serde_json::Value {
    serde_json::json!({
        "system": format!("{:?}", args.system).to_lowercase(),
        "phase": "drain",
        "receivers": args.receivers,
        "arrived": seen.iter().map(|s| s.delivered).sum::<u64>(),
        "duplicated": seen.iter().map(|s| s.duplicated).sum::<u64>(),
        "reordered": seen.iter().map(|s| s.reordered).sum::<u64>(),
    })
}

/// A persistent MQTT session for `receiver` (clean session off).
fn mqtt_session(args: &Args, receiver: u32) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut o = mqtt_options(args, tls(&args.ca), format!("keep{receiver}"));
    o.set_clean_session(false);
    rumqttc::AsyncClient::new(o, 1024)
}

async fn mqtt_fill(args: &Arc<Args>) -> serde_json::Value {
    each_receiver(args, |args, r, connecting| async move {
        let _connecting = connecting; // held until registered
        mqtt_register(&args, r).await;
    })
    .await;
    let acked = Arc::new(AtomicU64::new(0));
    let sent = each_receiver(args, |args, r, connecting| {
        let acked = acked.clone();
        drop(connecting); // MQTT connects lazily: no storm of handshakes here
        async move { mqtt_send_all(&args, r, &acked).await }
    })
    .await;
    fill_json(args, sent.iter().sum(), acked.load(Ordering::SeqCst))
}

/// Runs `task` for every receiver at once and collects the results in
/// receiver order. Each task holds a permit of [`CONNECTING_MAX`] while it
/// connects: dropping it lets the next one start.
async fn each_receiver<T, F, Fut>(args: &Arc<Args>, task: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(Arc<Args>, u32, OwnedSemaphorePermit) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let connecting = Arc::new(Semaphore::new(CONNECTING_MAX));
    let mut tasks = Vec::new();
    for r in 0..args.receivers {
        let permit = connecting.clone().acquire_owned().await.expect("open");
        tasks.push(tokio::spawn(task(args.clone(), r, permit)));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("a receiver's task"));
    }
    results
}

/// Subscribes `receiver`'s persistent session with QoS 1 and leaves.
async fn mqtt_register(args: &Args, receiver: u32) {
    let (client, mut events) = mqtt_session(args, receiver);
    client
        .subscribe(topic(receiver), rumqttc::QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    loop {
        match events.poll().await.expect("MQTT register") {
            rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) => {
                client.disconnect().await.expect("disconnect");
            }
            rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect) => return,
            _ => {}
        }
    }
}

/// Sends `--per-receiver` messages to `receiver` and waits for their
/// PUBACKs; returns how many were sent.
async fn mqtt_send_all(args: &Args, receiver: u32, acked: &AtomicU64) -> u64 {
    let o = mqtt_options(args, tls(&args.ca), format!("fill{receiver}"));
    let (client, mut events) = rumqttc::AsyncClient::new(o, 1024);
    let n = args.per_receiver;
    let publisher = {
        let client = client.clone();
        tokio::spawn(async move {
            for counter in 0..n {
                let payload = stamp(receiver, counter, 0);
                client
                    .publish(
                        topic(receiver),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        payload.to_vec(),
                    )
                    .await
                    .expect("publish");
            }
        })
    };
    let mut mine = 0;
    let waited = tokio::time::timeout(FILL_LIMIT, async {
        while mine < n {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                events.poll().await.expect("MQTT fill")
            {
                mine += 1;
            }
        }
    })
    .await;
    waited.expect("every PUBACK within the fill limit");
    publisher.await.expect("publisher");
    acked.fetch_add(mine, Ordering::SeqCst);
    n
}

async fn mqtt_drain(args: &Arc<Args>) -> serde_json::Value {
    let seen = each_receiver(args, |args, r, permit| async move {
        let (_client, mut events) = mqtt_session(&args, r);
        let mut seen = Seen::default();
        let mut permit = Some(permit);
        while let Ok(event) = tokio::time::timeout(QUIET, events.poll()).await {
            match event.expect("MQTT drain") {
                rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)) => drop(permit.take()),
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => {
                    if let Some((_, counter, _)) = unstamp(&p.payload) {
                        seen.record(counter);
                    }
                }
                _ => {}
            }
        }
        seen
    })
    .await;
    drain_json(args, &seen)
}

/// Core NATS: publishes every message with nobody subscribed (the
/// receivers are offline) and flushes. There is no acknowledgment.
async fn nats_fill(args: &Arc<Args>) -> serde_json::Value {
    let client = nats_connect(args, tls(&args.ca)).await;
    let mut sent = 0;
    for r in 0..args.receivers {
        for counter in 0..args.per_receiver {
            client
                .publish(topic(r), stamp(r, counter, 0))
                .await
                .expect("publish");
            sent += 1;
        }
    }
    client.flush().await.expect("flush");
    fill_json(args, sent, 0)
}

/// Core NATS: subscribes to every receiver's subject and counts what
/// arrives until [`QUIET`].
async fn nats_drain(args: &Arc<Args>) -> serde_json::Value {
    let client = nats_connect(args, tls(&args.ca)).await;
    let mut sub = client.subscribe("keep.>").await.expect("subscribe");
    client.flush().await.expect("flush");
    let mut seen: Vec<Seen> = (0..args.receivers).map(|_| Seen::default()).collect();
    while let Ok(Some(msg)) = tokio::time::timeout(QUIET, sub.next()).await {
        if let Some((r, counter, _)) = unstamp(&msg.payload)
            && let Some(s) = seen.get_mut(r as usize)
        {
            s.record(counter);
        }
    }
    drain_json(args, &seen)
}
