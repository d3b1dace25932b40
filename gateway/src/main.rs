//! The `gateway` binary: the messaging edge server.
//!
//! It will own the I/O shell: one pinned glommio executor per core with its
//! own `SO_REUSEPORT` listener, rustls, the per-connection session, the
//! admin endpoint, configuration and the CLI. At this step it only reports
//! what it is built from.
//!
//! It must not know how the queue engine lays out bytes on disk.

use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() {
    let limits = wire_format::Limits::default();
    println!("gateway {}", env!("CARGO_PKG_VERSION"));
    println!(
        "wire protocol v{}, frames up to {} bytes, headers up to {} bytes",
        wire_format::PROTOCOL_VERSION,
        limits.frame_bytes_max,
        limits.header_bytes_max
    );
    println!("not serving yet: this build carries the wire format only (see README, Status)");
}
