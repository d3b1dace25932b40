//! The admin HTTP endpoint (`tiny_http`, on its own thread, loopback by
//! default): `GET /metrics` (Prometheus text), `GET /health` (the process
//! runs), `GET /ready` (every shard listens, no drain started and no
//! shard's log failed),
//! `POST /drain` (GoAway to every connection, stop accepting, exit once
//! they are gone or at the drain deadline).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::server::Control;

/// Binds the endpoint; returns the bound address (port 0 picks one).
pub fn start(
    addr: SocketAddr,
    shards: usize,
    metrics: Arc<Metrics>,
    control: Arc<Control>,
) -> std::io::Result<SocketAddr> {
    let server = Server::http(addr).map_err(std::io::Error::other)?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("admin endpoint is not on IP"))?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = answer(request.method(), request.url(), shards, &metrics, &control);
                if let Err(e) = request.respond(response) {
                    warn!("admin response failed: {e}");
                }
            }
        })?;
    Ok(bound)
}

fn answer(
    method: &Method,
    url: &str,
    shards: usize,
    metrics: &Metrics,
    control: &Control,
) -> Response<std::io::Cursor<Vec<u8>>> {
    let text = |code: u16, body: String| Response::from_string(body).with_status_code(code);
    match (method, url) {
        (Method::Get, "/metrics") => {
            let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
            let header = Header::from_bytes("Content-Type", content_type).expect("valid header");
            text(200, metrics.encode()).with_header(header)
        }
        (Method::Get, "/health") => text(200, "ok\n".into()),
        (Method::Get, "/ready") => {
            let listening = control.listening.load(Ordering::SeqCst);
            let draining = control.drain.load(Ordering::SeqCst);
            let failed = control.failed.load(Ordering::SeqCst);
            if listening == shards && !draining && failed == 0 {
                text(200, "ready\n".into())
            } else {
                text(
                    503,
                    format!(
                        "not ready: {listening}/{shards} shards listening, draining: {draining}, failed: {failed}\n"
                    ),
                )
            }
        }
        (Method::Post, "/drain") => {
            info!("drain requested over the admin endpoint");
            control.drain.store(true, Ordering::SeqCst);
            text(202, "draining\n".into())
        }
        (_, "/metrics" | "/health" | "/ready" | "/drain") => {
            text(405, "method not allowed\n".into())
        }
        _ => text(
            404,
            "not found: try /metrics, /health, /ready, POST /drain\n".into(),
        ),
    }
}
