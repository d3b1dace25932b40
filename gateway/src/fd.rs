//! Owned file descriptors handed to glommio. glommio builds its sockets
//! only from raw descriptors; these wrappers are the one place that does
//! it, each taking ownership of a descriptor std opened and set up.
#![allow(unsafe_code)]

use std::os::fd::IntoRawFd;

/// `stream` as a glommio stream of the current executor: its reads go
/// through the executor's io_uring.
pub fn glommio_unix_stream(stream: std::os::unix::net::UnixStream) -> glommio::net::UnixStream {
    use std::os::fd::FromRawFd;
    // SAFETY: `into_raw_fd` gives up ownership of an open, connected Unix
    // stream socket, so the glommio stream is its only owner and closes it.
    unsafe { glommio::net::UnixStream::from_raw_fd(stream.into_raw_fd()) }
}

/// `listener` (bound and listening) as a glommio listener of the current
/// executor.
pub fn glommio_listener(listener: std::net::TcpListener) -> glommio::net::TcpListener {
    use std::os::fd::FromRawFd;
    // SAFETY: `into_raw_fd` gives up ownership of an open, listening TCP
    // socket, so the glommio listener is its only owner and closes it.
    unsafe { glommio::net::TcpListener::from_raw_fd(listener.into_raw_fd()) }
}
