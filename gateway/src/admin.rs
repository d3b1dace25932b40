//! The admin HTTP endpoint (`tiny_http`, on its own thread, loopback by
//! default). `GET /health` (the process runs) and `GET /ready` (every
//! shard listens, no drain started and no shard's log failed) are open to
//! probes; everything else needs `Authorization: Bearer <admin_token>`
//! (401 without it): `GET /metrics` (Prometheus text), `POST /drain`
//! (GoAway to every connection, stop accepting, exit once they are gone
//! or at the drain deadline), and the operator's requests about one user,
//! answered as JSON by the user's home shard's ticker within about 100 ms:
//! `GET /devices?user=U` (linked devices), `POST /unlink?user=U&device=D`
//! (its queue is deleted, its session closed, its tokens refused),
//! `GET /users?user=U` (devices, online state, queued counts, settings),
//! `POST /kick?user=U[&device=D]` (sessions closed with `Kicked`) and
//! `POST /ban?user=U&until_ms=T` (or `for_s=S`, or `forever=1`;
//! `until_ms=0` lifts it: sessions closed and `Hello` refused with
//! `Banned`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tiny_http::{Header, Method, Response, Server};
use tracing::{info, warn};

use crate::metrics::Metrics;
use crate::server::{AdminAnswer, AdminJob, AdminOp, Control};
use crate::shard::{BANNED_FOR_GOOD, UserInfo};

/// Binds the endpoint; returns the bound address (port 0 picks one).
pub fn start(
    addr: SocketAddr,
    shards: usize,
    token: String,
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
                let open = matches!(request.url(), "/health" | "/ready");
                let response = if open || authorized(&request, &token) {
                    answer(request.method(), request.url(), shards, &metrics, &control)
                } else {
                    unauthorized()
                };
                if let Err(e) = request.respond(response) {
                    warn!("admin response failed: {e}");
                }
            }
        })?;
    Ok(bound)
}

/// Whether `request` carries the admin bearer token.
fn authorized(request: &tiny_http::Request, token: &str) -> bool {
    request
        .headers()
        .iter()
        .filter(|h| h.field.equiv("Authorization"))
        .filter_map(|h| h.value.as_str().strip_prefix("Bearer "))
        .any(|given| same(given.trim().as_bytes(), token.as_bytes()))
}

/// Compares in time independent of where the bytes differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

fn unauthorized() -> Response<std::io::Cursor<Vec<u8>>> {
    let header = Header::from_bytes("WWW-Authenticate", "Bearer").expect("valid header");
    Response::from_string("unauthorized: send Authorization: Bearer <admin_token>\n")
        .with_status_code(401)
        .with_header(header)
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
        (method, url) if USER_PATHS.iter().any(|p| url.starts_with(p)) => {
            let (status, body) = user_request(method, url, shards, control);
            let header = Header::from_bytes("Content-Type", "application/json").expect("valid");
            text(status, body).with_header(header)
        }
        (_, "/metrics" | "/health" | "/ready" | "/drain") => {
            text(405, "method not allowed\n".into())
        }
        _ => text(
            404,
            "not found: try /metrics, /health, /ready, POST /drain, GET /devices?user=U, POST /unlink?user=U&device=D, GET /users?user=U, POST /kick?user=U[&device=D], POST /ban?user=U&until_ms=T\n".into(),
        ),
    }
}

/// The paths of requests about one user.
const USER_PATHS: [&str; 5] = ["/devices?", "/unlink?", "/users?", "/kick?", "/ban?"];

/// A request about one user: (status, JSON).
fn user_request(method: &Method, url: &str, shards: usize, control: &Control) -> (u16, String) {
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
    let device = param("device").and_then(|d| u32::try_from(d).ok());
    let op = match (method, path) {
        (Method::Get, "/devices") => AdminOp::Devices,
        (Method::Get, "/users") => AdminOp::Info,
        (Method::Post, "/unlink") => match device {
            Some(device) => AdminOp::Unlink(device),
            None => return error(400, "device=<number> is required"),
        },
        (Method::Post, "/kick") => AdminOp::Kick(device),
        (Method::Post, "/ban") => match ban_until(&param) {
            Some(until_ms) => AdminOp::Ban { until_ms },
            None => return error(400, "until_ms=<ms since the epoch>, for_s=<s> or forever=1"),
        },
        _ => return error(405, "GET /devices, /users; POST /unlink, /kick, /ban"),
    };
    let shard_count = u16::try_from(shards).expect("few shards");
    let placement = shard_router::Placement::single_node(shard_count);
    let home = placement.user_shard(shard_router::UserId(user)).0 as usize;
    let (reply, answer) = std::sync::mpsc::channel();
    control.submit(home, AdminJob { user, op, reply });
    match answer.recv_timeout(std::time::Duration::from_secs(5)) {
        Ok(answer) => answer_json(user, answer),
        Err(_) => error(503, "the user's home shard did not answer in 5 s"),
    }
}

/// When a `/ban` ends: `until_ms`, `for_s` from now, or `forever`.
fn ban_until(param: &dyn Fn(&str) -> Option<u64>) -> Option<u64> {
    if param("forever") == Some(1) {
        return Some(BANNED_FOR_GOOD);
    }
    if let Some(s) = param("for_s") {
        let now_ms = crate::clock::wall_ms();
        return Some(now_ms.saturating_add(s.saturating_mul(1000)));
    }
    param("until_ms")
}

fn answer_json(user: u64, answer: AdminAnswer) -> (u16, String) {
    let ok = |v: serde_json::Value| (200, v.to_string());
    match answer {
        AdminAnswer::Devices(devices) => {
            let list: Vec<serde_json::Value> = devices.iter().map(device_json).collect();
            ok(serde_json::json!({ "user": user, "devices": list }))
        }
        AdminAnswer::Unlinked => ok(serde_json::json!({ "unlinked": true })),
        AdminAnswer::UnknownDevice => (
            404,
            serde_json::json!({ "error": "no such linked device" }).to_string(),
        ),
        AdminAnswer::Info(info) => ok(info_json(&info)),
        AdminAnswer::Kicked(closed) => ok(serde_json::json!({ "closed": closed })),
        AdminAnswer::Forgotten(forgotten) => ok(serde_json::json!({ "forgotten": forgotten })),
        AdminAnswer::Banned { until_ms } => ok(serde_json::json!({
            "user": user,
            "banned_until_ms": until_ms,
            "forever": until_ms == BANNED_FOR_GOOD,
        })),
    }
}

fn device_json(d: &wire_format::fb::DeviceInfo) -> serde_json::Value {
    serde_json::json!({
        "device": d.device(),
        "linked_ms": d.linked_ms(),
        "last_active_ms": d.last_active_ms(),
        "online": d.online(),
    })
}

fn info_json(info: &UserInfo) -> serde_json::Value {
    let devices: Vec<serde_json::Value> = info
        .devices
        .iter()
        .map(|d| {
            let mut v = device_json(&d.info);
            v["queued"] = d.queued.into();
            v["queued_bytes"] = d.queued_bytes.into();
            v["push_token"] = d.push.into();
            v
        })
        .collect();
    serde_json::json!({
        "user": info.user,
        "online": info.devices.iter().any(|d| d.info.online()),
        "devices": devices,
        "banned_until_ms": info.banned_until_ms,
        "last_seen": if info.last_seen_hidden { "nobody" } else { "everyone" },
        "read_receipts": info.read_receipts,
    })
}
