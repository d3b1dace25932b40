//! [`BufPool`]: the write buffers a shard lends its connection tasks while
//! their bytes are in flight, so that an idle connection holds none and a
//! busy one allocates none. Kept for reuse up to a count, and trimmed back
//! to what was in use once the shard has gone quiet: a burst (a reconnect
//! storm's handshakes fill a buffer each) does not leave its high-water
//! mark behind for good.

/// Buffers kept for reuse.
#[derive(Debug)]
pub struct BufPool {
    free: Vec<Vec<u8>>,
    /// Most buffers kept.
    kept_max: usize,
    /// Largest capacity kept (a bigger buffer is freed when given back).
    bytes_max: usize,
    /// The fewest buffers the pool held since the last trim: that many
    /// were not needed in the meantime.
    low: usize,
}

impl BufPool {
    /// An empty pool keeping up to `kept_max` buffers of at most
    /// `bytes_max` bytes.
    pub fn new(kept_max: usize, bytes_max: usize) -> Self {
        Self {
            free: Vec::new(),
            kept_max,
            bytes_max,
            low: 0,
        }
    }

    /// An empty buffer, reused if one is kept.
    pub fn take(&mut self) -> Vec<u8> {
        let buf = self.free.pop().unwrap_or_default();
        self.low = self.low.min(self.free.len());
        buf
    }

    /// Takes `buf` back, emptied (dropped if it grew past the largest kept
    /// or the pool is full; one that never held anything is not kept).
    pub fn give(&mut self, mut buf: Vec<u8>) {
        let size = buf.capacity();
        if size > 0 && size <= self.bytes_max && self.free.len() < self.kept_max {
            buf.clear();
            self.free.push(buf);
        }
    }

    /// Frees the buffers no task needed since the last trim, keeping at
    /// least `floor`. Call it at a steady pace (the shell: every second).
    pub fn trim(&mut self, floor: usize) {
        let surplus = self.low.min(self.free.len().saturating_sub(floor));
        // The bottom of the stack is what went unused.
        self.free.drain(..surplus);
        self.low = self.free.len();
    }

    /// Buffers kept now.
    pub fn len(&self) -> usize {
        self.free.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.free.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(capacity: usize) -> Vec<u8> {
        Vec::with_capacity(capacity)
    }

    #[test]
    fn buffers_are_reused_up_to_the_count_and_size_kept() {
        let mut pool = BufPool::new(2, 1024);
        pool.give(used(512));
        pool.give(used(4096)); // too big to keep
        pool.give(used(256));
        pool.give(used(128)); // full
        assert_eq!(pool.len(), 2);
        pool.take();
        pool.give(Vec::new()); // never held anything: not kept
        assert_eq!(pool.len(), 1);
        let buf = pool.take();
        assert_eq!((buf.len(), buf.capacity()), (0, 512));
    }

    #[test]
    fn a_quiet_pool_is_trimmed_to_its_floor_and_a_busy_one_keeps_what_it_uses() {
        let mut pool = BufPool::new(64, 1024);
        // A burst: 40 buffers out at once, then back.
        let burst: Vec<_> = (0..40).map(|_| pool.take()).collect();
        for mut buf in burst {
            buf.reserve(100);
            pool.give(buf);
        }
        assert_eq!(pool.len(), 40);
        // The first trim after the burst frees nothing: the pool was empty
        // during it, so every buffer was needed.
        pool.trim(4);
        assert_eq!(pool.len(), 40);
        // Steady traffic needs 3 at a time.
        for _ in 0..100 {
            let out: Vec<_> = (0..3).map(|_| pool.take()).collect();
            out.into_iter().for_each(|b| pool.give(b));
        }
        pool.trim(4);
        assert_eq!(pool.len(), 4, "37 went unused; the floor is kept");
        pool.trim(1);
        assert_eq!(pool.len(), 1, "nothing taken since: down to the floor");
        pool.trim(0);
        assert!(pool.is_empty());
    }

    #[test]
    fn what_a_steady_load_uses_stays_above_the_floor() {
        let mut pool = BufPool::new(64, 1024);
        let filled = |pool: &mut BufPool| {
            let mut buf = pool.take();
            buf.reserve(100);
            buf
        };
        let out: Vec<_> = (0..10).map(|_| filled(&mut pool)).collect();
        out.into_iter().for_each(|b| pool.give(b));
        pool.trim(0);
        for _ in 0..3 {
            let out: Vec<_> = (0..10).map(|_| filled(&mut pool)).collect();
            out.into_iter().for_each(|b| pool.give(b));
            pool.trim(2);
            assert_eq!(pool.len(), 10, "all ten were out at once");
        }
    }
}
