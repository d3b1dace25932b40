//! The admin HTTP endpoint (`tiny_http`, on its own thread, loopback by
//! default): `GET /metrics` (Prometheus text), `GET /health` (the process
//! runs), `GET /ready` (every shard listens, no drain started and no
//! shard's log failed),
//! `POST /drain` (GoAway to every connection, stop accepting, exit once
//! they are gone or at the drain deadline), `GET /devices?user=U` (the
//! user's linked devices, JSON) and `POST /unlink?user=U&device=D`
//! (unlink a device: its queue is deleted, its session closed, its tokens
//! refused). Device requests go to the user's home shard, whose ticker
//! answers them within about 100 ms.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::server::{AdminAnswer, AdminJob, Control};

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
        (method, url) if url.starts_with("/devices?") || url.starts_with("/unlink?") => {
            let (status, body) = device_request(method, url, shards, control);
            let header = Header::from_bytes("Content-Type", "application/json").expect("valid");
            text(status, body).with_header(header)
        }
        (_, "/metrics" | "/health" | "/ready" | "/drain") => {
            text(405, "method not allowed\n".into())
        }
        _ => text(
            404,
            "not found: try /metrics, /health, /ready, POST /drain, GET /devices?user=U, POST /unlink?user=U&device=D\n".into(),
        ),
    }
}

/// `GET /devices?user=U` or `POST /unlink?user=U&device=D`: (status, JSON).
fn device_request(method: &Method, url: &str, shards: usize, control: &Control) -> (u16, String) {
    let error =
        |status, message: &str| (status, serde_json::json!({ "error": message }).to_string());
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse::<u64>().ok())
    };
    let Some(user) = param("user") else {
        return error(400, "user=<id> is required");
    };
    let unlink = match (method, path) {
        (Method::Get, "/devices") => None,
        (Method::Post, "/unlink") => match param("device").and_then(|d| u32::try_from(d).ok()) {
            Some(device) => Some(device),
            None => return error(400, "device=<number> is required"),
        },
        _ => return error(405, "GET /devices or POST /unlink"),
    };
    let shard_count = u16::try_from(shards).expect("few shards");
    let placement = shard_router::Placement::single_node(shard_count);
    let home = placement.user_shard(shard_router::UserId(user)).0 as usize;
    let (reply, answer) = std::sync::mpsc::channel();
    control.submit(
        home,
        AdminJob {
            user,
            unlink,
            reply,
        },
    );
    match answer.recv_timeout(std::time::Duration::from_secs(5)) {
        Ok(AdminAnswer::Devices(devices)) => {
            let list: Vec<serde_json::Value> = devices
                .iter()
                .map(|d| {
                    serde_json::json!({
                        "device": d.device(),
                        "linked_ms": d.linked_ms(),
                        "last_active_ms": d.last_active_ms(),
                        "online": d.online(),
                    })
                })
                .collect();
            (
                200,
                serde_json::json!({ "user": user, "devices": list }).to_string(),
            )
        }
        Ok(AdminAnswer::Unlinked) => (200, serde_json::json!({ "unlinked": true }).to_string()),
        Ok(AdminAnswer::UnknownDevice) => error(404, "no such linked device"),
        Err(_) => error(503, "the user's home shard did not answer in 5 s"),
    }
}
