//! What the workspace's tests share: [`Counting`], a global allocator that
//! forwards to mimalloc (the gateway's and loadgen's allocator) and counts
//! the bytes live, both as asked for ([`live`]) and as mimalloc holds them,
//! rounded up to its size classes ([`held`]), so memory tests measure
//! exactly (deterministic, unlike time); and [`ScratchDir`], a test's own
//! directory, removed when the test passes.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: testkit::Counting = testkit::Counting;
//! let before = testkit::live();
//! ```

// A counting global allocator needs `unsafe impl GlobalAlloc`; it forwards
// every call to mimalloc unchanged.
#![allow(unsafe_code)]

mod scratch;

pub use scratch::ScratchDir;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};

use mimalloc::MiMalloc;

/// mimalloc, counting the bytes it has handed out and not taken back.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static HELD: AtomicIsize = AtomicIsize::new(0);

/// Bytes allocated and not freed so far (by every thread), as asked for.
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

/// The same allocations as [`live`], as mimalloc holds them: each rounded
/// up to its size class (a 1,288-byte allocation takes a 1,536-byte block).
pub fn held() -> isize {
    HELD.load(Ordering::Relaxed)
}

/// The block mimalloc would give an allocation of `bytes`.
pub fn block_for(bytes: usize) -> usize {
    // SAFETY: a pure function of its argument.
    unsafe { libmimalloc_sys::mi_good_size(bytes) }
}

fn count(bytes: isize) {
    LIVE.fetch_add(bytes, Ordering::Relaxed);
}

/// The block mimalloc gave `ptr` (0 for null).
fn block(ptr: *mut u8) -> isize {
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: `ptr` is a live allocation of mimalloc's.
    signed(unsafe { libmimalloc_sys::mi_usable_size(ptr.cast()) })
}

fn hold(bytes: isize) {
    HELD.fetch_add(bytes, Ordering::Relaxed);
}

fn signed(size: usize) -> isize {
    isize::try_from(size).expect("allocations are below isize::MAX")
}

// SAFETY: every method forwards to `MiMalloc` with the same arguments;
// the counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(signed(layout.size()));
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { MiMalloc.alloc(layout) };
        hold(block(ptr));
        ptr
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-signed(layout.size()));
        hold(-block(ptr));
        // SAFETY: forwarded unchanged.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let before = block(ptr);
        // SAFETY: forwarded unchanged.
        let new = unsafe { MiMalloc.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(signed(new_size) - signed(layout.size()));
            hold(block(new) - before);
        }
        new
    }
}
