//! What the workspace's tests share: [`Counting`], a global allocator that
//! forwards to the system's and counts the bytes live, so memory tests
//! measure exactly (deterministic, unlike time); and [`ScratchDir`], a
//! test's own directory, removed when the test passes.
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: testkit::Counting = testkit::Counting;
//! let before = testkit::live();
//! ```

// A counting global allocator needs `unsafe impl GlobalAlloc`; it forwards
// every call to the system allocator unchanged.
#![allow(unsafe_code)]

mod scratch;

pub use scratch::ScratchDir;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

/// The system allocator, counting the bytes it has handed out and not
/// taken back.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

/// Bytes allocated and not freed so far (by every thread).
pub fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn count(bytes: isize) {
    LIVE.fetch_add(bytes, Ordering::Relaxed);
}

fn signed(size: usize) -> isize {
    isize::try_from(size).expect("allocations are below isize::MAX")
}

// SAFETY: every method forwards to `System` with the same arguments; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(signed(layout.size()));
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-signed(layout.size()));
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(signed(new_size) - signed(layout.size()));
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}
