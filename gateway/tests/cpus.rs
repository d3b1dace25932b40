//! Where the real binary's shards run: inside the CPU mask the operator
//! gave the process (`taskset`, systemd's `CPUAffinity=`), pinned one CPU
//! each or floating over the mask, as `--pin-shards` says. The mask is set
//! on the test's own thread, which the spawned gateway inherits.

mod support;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;
use support::{Gateway, temp_dir};

/// Each shard thread's `Cpus_allowed_list` (as the kernel writes it),
/// keyed by the thread's name.
fn shard_cpus(pid: u32) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap();
        if !comm.starts_with("shard-") {
            continue;
        }
        let status = std::fs::read_to_string(task.join("status")).unwrap();
        let list = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap()
            .trim()
            .to_owned();
        found.push((comm.trim().to_owned(), list));
    }
    assert!(!found.is_empty(), "no shard threads in {pid}");
    found
}

/// This thread's CPU list, as the kernel writes it.
fn own_cpu_list() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"));
    line.unwrap().trim().to_owned()
}

#[test]
fn pinned_shards_stay_inside_the_mask_the_process_was_given() {
    // The last CPU only (the first was where shard 0 pinned itself,
    // whatever the mask).
    let last = *gateway::cpus::allowed().last().unwrap();
    let mut mask = CpuSet::new();
    mask.set(last).unwrap();
    sched_setaffinity(Pid::from_raw(0), &mask).unwrap();
    let dir = temp_dir("cpus-masked");
    let gw = Gateway::start(&dir, &["--pin-shards", "on"]);
    for (name, cpus) in shard_cpus(gw.child.id()) {
        assert_eq!(cpus, last.to_string(), "{name} left the mask");
    }
}

#[test]
fn shards_pin_one_cpu_each_when_on_and_float_over_the_mask_when_off() {
    let allowed = gateway::cpus::allowed();
    let dir = temp_dir("cpus-on");
    let gw = Gateway::start(&dir, &["--pin-shards", "on"]);
    for (name, cpus) in shard_cpus(gw.child.id()) {
        let shard: usize = name["shard-".len()..]
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let cpu = allowed[shard % allowed.len()];
        assert_eq!(cpus, cpu.to_string(), "{name} pinned elsewhere");
    }
    drop(gw);
    let dir = temp_dir("cpus-off");
    let gw = Gateway::start(&dir, &["--pin-shards", "off"]);
    for (name, cpus) in shard_cpus(gw.child.id()) {
        assert_eq!(cpus, own_cpu_list(), "{name} not free to move");
    }
}
