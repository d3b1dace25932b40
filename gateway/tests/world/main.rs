//! The deterministic whole-shard world (see `sim.rs`): random runs that
//! check every promise after crashes, drains, reconnects and disk faults,
//! and one scenario per failure-path bug the world was built to catch.
//!
//! `cargo test` runs a short smoke. The soak:
//! `WORLD_SEEDS=100 WORLD_STEPS=100000 cargo test --release -p gateway --test world -- --ignored --nocapture`;
//! a failure names its seed, and `WORLD_SEED=n` replays just that one.

mod sim;

use sim::{Shape, World};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One random run: `steps` steps, a full check every `every`.
fn run(seed: u64, steps: u64, every: u64) -> World {
    let mut world = World::new(seed, Shape::default());
    world.flush_ms = seed % 3;
    for i in 1..=steps {
        world.step();
        if i % every == 0 {
            world.quiesce_and_check();
        }
    }
    world.quiesce_and_check();
    world
}

fn seeds(default_seeds: u64) -> Vec<u64> {
    match std::env::var("WORLD_SEED") {
        Ok(seed) => vec![seed.parse().expect("WORLD_SEED is a number")],
        Err(_) => (0..env("WORLD_SEEDS", default_seeds)).collect(),
    }
}

#[test]
fn random_worlds_keep_every_promise() {
    let (mut acked, mut crashes, mut fail_stops) = (0, 0, 0);
    for seed in seeds(12) {
        let world = run(seed, env("WORLD_STEPS", 3_000), 1_000);
        acked += world.acked_sends();
        crashes += world.crashes;
        fail_stops += world.fail_stops;
    }
    eprintln!("world smoke: {acked} ✓'d, {crashes} crashes, {fail_stops} fail-stops");
    assert!(acked > 1_000, "the smoke sends something: {acked}");
    assert!(crashes > 0 && fail_stops > 0, "and crashes");
}

#[test]
#[ignore = "soak: WORLD_SEEDS and WORLD_STEPS set its size"]
fn soak() {
    let started = std::time::Instant::now();
    let (mut steps, mut acked) = (0, 0);
    for seed in seeds(10) {
        let n = env("WORLD_STEPS", 100_000);
        let world = run(seed, n, 10_000);
        steps += n;
        acked += world.acked_sends();
    }
    eprintln!(
        "world soak: {steps} steps, {acked} ✓'d in {:?}",
        started.elapsed()
    );
}
