//! [`find_ascending`]: finding a log position in a list of positions that
//! ascend about linearly (records of similar sizes, in append order), as
//! the recent-payload cache's index and the gateway's per-record ring are.
//!
//! The search starts at the index a straight line from the first to the
//! last position points to, widens from there in doubling steps until it
//! brackets the key, and bisects only that bracket: a few probes near one
//! spot, where a plain bisection of 100,000 entries takes 17 scattered
//! ones, most of them cache misses.

/// The index `i < len` with `at(i) == key`, if any, where `at` ascends
/// strictly.
pub fn find_ascending(len: usize, key: u64, at: impl Fn(usize) -> u64) -> Option<usize> {
    let last = len.checked_sub(1)?;
    let (first_key, last_key) = (at(0), at(last));
    if key < first_key || key > last_key {
        return None;
    }
    let span = u128::from(last_key - first_key).max(1);
    let guess = u128::from(key - first_key) * last as u128 / span;
    let guess = usize::try_from(guess).expect("at most len - 1");
    // Widen to a bracket with at(lo) <= key <= at(hi).
    let (mut lo, mut hi) = (guess, guess);
    let mut step = 1;
    while at(lo) > key {
        hi = lo;
        lo = lo.saturating_sub(step);
        step *= 2;
    }
    step = 1;
    while at(hi) < key {
        lo = hi;
        hi = (hi + step).min(last);
        step *= 2;
    }
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if at(mid) < key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    (at(lo) == key).then_some(lo)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn empty_and_out_of_range_keys_are_not_found() {
        let keys = [10, 20, 30];
        let at = |i: usize| keys[i];
        assert_eq!(find_ascending(0, 10, at), None);
        assert_eq!(find_ascending(3, 9, at), None);
        assert_eq!(find_ascending(3, 31, at), None);
        assert_eq!(find_ascending(3, 25, at), None);
        assert_eq!(find_ascending(3, 30, at), Some(2));
        assert_eq!(find_ascending(1, 10, at), Some(0));
    }

    proptest! {
        /// It finds what a bisection finds, however uneven the gaps.
        #[test]
        fn finds_what_a_bisection_finds(
            gaps in prop::collection::vec(prop_oneof![1u64..100, 1u64..1 << 40], 1..300),
            probes in prop::collection::vec(any::<u64>(), 1..50),
        ) {
            let keys: Vec<u64> = gaps.iter().scan(0, |p, g| { *p += g; Some(*p) }).collect();
            let last = *keys.last().unwrap();
            let around = keys.iter().flat_map(|&q| [q - 1, q, q + 1]);
            for q in around.chain(probes.iter().map(|x| x % (last + 2))) {
                let found = find_ascending(keys.len(), q, |i| keys[i]);
                prop_assert_eq!(found, keys.binary_search(&q).ok(), "{}", q);
            }
        }
    }
}
