//! Where the shards' executors run: the CPUs this process may use (its
//! affinity mask: `taskset`, systemd's `CPUAffinity=`, a cpuset) and the
//! `pin_shards` setting.
//!
//! Pinned, shard `i` runs on the `i`-th CPU of the mask (wrapping), never
//! outside it. Floating, each shard may run on any CPU of the mask and the
//! kernel places it.
//!
//! Why not always pin: on a core the shard shares (with the kernel's
//! workers, other processes, a co-located load generator), whatever runs
//! there holds a pinned shard back even while another core idles. Measured
//! on a 2-core VM whose agent takes a core for 3–7 ms about once a second,
//! at 5,000 msgs/s open loop in six interleaved pairs: floating had the
//! lower p99 in four (median 3.2 against 4.2 ms) and used 9–14% less
//! gateway CPU in all six (fewer cross-core wake-ups); closed-loop
//! throughput the same. So `auto` pins only when the operator has given
//! the process CPUs of its own (a mask narrower than the machine, as
//! `tuning/` recommends), and floats otherwise.

use std::str::FromStr;

use serde::Deserialize;

/// The `pin_shards` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PinShards {
    /// Pinned if the process's CPU mask is narrower than the machine's
    /// online CPUs (cores set aside for it), floating otherwise.
    #[default]
    Auto,
    /// Shard `i` on the `i`-th CPU of the mask.
    On,
    /// Every shard on any CPU of the mask.
    Off,
}

impl FromStr for PinShards {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            _ => Err(format!("{s:?}: expected auto, on or off")),
        }
    }
}

/// Each shard's CPU (`None`: floating), for `shards` shards under `pin`,
/// given the CPUs the process may use (`allowed`, ascending, not empty)
/// and how many the machine has online.
pub fn shard_cpus(
    pin: PinShards,
    allowed: &[usize],
    online: usize,
    shards: usize,
) -> Vec<Option<usize>> {
    let pinned = match pin {
        PinShards::On => true,
        PinShards::Off => false,
        PinShards::Auto => allowed.len() < online,
    };
    (0..shards)
        .map(|i| pinned.then(|| allowed[i % allowed.len()]))
        .collect()
}

/// The CPUs the calling thread may run on, ascending (every online CPU if
/// the mask cannot be read).
pub fn allowed() -> Vec<usize> {
    let online = online();
    match nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) {
        Ok(mask) => {
            let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
                .filter(|&c| mask.is_set(c).unwrap_or(false))
                .collect();
            if cpus.is_empty() {
                (0..online).collect()
            } else {
                cpus
            }
        }
        Err(_) => (0..online).collect(),
    }
}

/// CPUs online on the machine (not only those this process may use).
pub fn online() -> usize {
    // `_SC_NPROCESSORS_ONLN` through std is the mask; read sysfs instead.
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// How many CPUs a kernel CPU list (`0-3,6,8-9`) names.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0;
    for part in list.split(',') {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_shards_stay_inside_the_mask_in_order_wrapping() {
        // The operator gave the process CPUs 2 and 3 of 4.
        let cpus = shard_cpus(PinShards::On, &[2, 3], 4, 3);
        assert_eq!(cpus, vec![Some(2), Some(3), Some(2)]);
    }

    #[test]
    fn auto_pins_only_on_cpus_set_aside_for_the_process() {
        assert_eq!(
            shard_cpus(PinShards::Auto, &[2, 3], 4, 2),
            vec![Some(2), Some(3)]
        );
        assert_eq!(
            shard_cpus(PinShards::Auto, &[0, 1, 2, 3], 4, 2),
            vec![None, None]
        );
        assert_eq!(shard_cpus(PinShards::Off, &[2, 3], 4, 2), vec![None, None]);
    }

    #[test]
    fn cpu_lists_are_counted_as_the_kernel_writes_them() {
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("0-3"), Some(4));
        assert_eq!(count_cpu_list("0-3,6,8-9"), Some(7));
        assert_eq!(count_cpu_list("3-1"), None);
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn the_setting_parses_from_the_flag_and_the_file() {
        assert_eq!("off".parse::<PinShards>(), Ok(PinShards::Off));
        assert!("yes".parse::<PinShards>().is_err());
        #[derive(Deserialize)]
        struct F {
            pin_shards: PinShards,
        }
        let f: F = toml::from_str("pin_shards = \"on\"").unwrap();
        assert_eq!(f.pin_shards, PinShards::On);
    }
}
