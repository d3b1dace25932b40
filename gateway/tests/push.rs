//! Push wake-ups through the client crate against the real gateway and a
//! real HTTP server (`tiny_http`) standing in for the operator's webhook:
//! the documented fields, coalescing per interval, retries after a 500,
//! rejected tokens forgotten, and no push for a device that is connected.

mod support;

use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use bytes::Bytes;
use client::{ClientEvent, Connection};
use support::{Gateway, metric, next, run, temp_dir};
use wire_format::user_address;

/// A webhook: every POST body arrives on `posts`; it answers with the
/// scripted (status, body) in turn, then 200 with an empty body.
struct Webhook {
    url: String,
    posts: Receiver<serde_json::Value>,
}

impl Webhook {
    fn start(script: Vec<(u16, &'static str)>) -> Self {
        let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
        let url = format!("http://{}/wake", server.server_addr().to_ip().unwrap());
        let (tx, posts) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut script = script.into_iter();
            for mut request in server.incoming_requests() {
                let mut body = String::new();
                request.as_reader().read_to_string(&mut body).unwrap();
                let (status, answer) = script.next().unwrap_or((200, ""));
                let response = tiny_http::Response::from_string(answer).with_status_code(status);
                let _ = request.respond(response);
                if tx.send(serde_json::from_str(&body).unwrap()).is_err() {
                    return;
                }
            }
        });
        Self { url, posts }
    }

    /// The next POST within `within`, or `None`.
    fn post(&self, within: Duration) -> Option<serde_json::Value> {
        match self.posts.recv_timeout(within) {
            Ok(post) => Some(post),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the webhook stopped"),
        }
    }
}

fn gateway(dir: &Path, hook: &Webhook, interval_s: &str) -> Gateway {
    Gateway::start(
        dir,
        &[
            "--push-webhook-url",
            &hook.url,
            "--push-interval-s",
            interval_s,
            "--abuse-messages-per-recipient-per-s",
            "0",
        ],
    )
}

/// Logs `user`/0 in, registers `token`, and waits for `Done`.
async fn register(gw: &Gateway, user: u64, token: &[u8]) -> Connection {
    let (mut conn, _) = gw.login(user, 0, 0).await;
    conn.core().push_register(77, token, "fcm");
    conn.flush().await.unwrap();
    loop {
        if let ClientEvent::Done { request_id: 77 } = next(&mut conn).await {
            return conn;
        }
    }
}

/// Waits until the gateway sees no device of `user` online.
fn wait_offline(gw: &Gateway, user: u64) {
    let path = format!("/users?user={user}");
    for _ in 0..500 {
        let (_, body) = gw.admin("GET", &path);
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        if info["online"] == false {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("user {user} stays online");
}

/// Sends `n` messages to `to` from a new sender each time (so no client
/// id repeats), all ✓'d.
async fn send(gw: &Gateway, to: u64, n: usize) {
    static SENDER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);
    let from = SENDER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mut alice, _) = gw.login(from, 0, 0).await;
    for _ in 0..n {
        alice
            .core()
            .send(user_address(to), 0, Bytes::from_static(b"secret"));
    }
    alice.flush().await.unwrap();
    let mut acked = 0;
    while acked < n {
        if let ClientEvent::Acked { .. } = next(&mut alice).await {
            acked += 1;
        }
    }
}

fn wakeups(post: &serde_json::Value) -> &Vec<serde_json::Value> {
    post["wakeups"].as_array().unwrap()
}

#[test]
fn an_offline_device_is_woken_once_per_interval_with_the_documented_fields() {
    let hook = Webhook::start(Vec::new());
    let dir = temp_dir("push-fields");
    let gw = gateway(&dir, &hook, "2");
    let mut gw = run(async move || {
        drop(register(&gw, 1, b"\x01\x02token").await);
        gw
    });
    gw.kill_and_restart(); // the token is durable
    let hook = run(async move || {
        send(&gw, 1, 1).await;
        let post = hook.post(Duration::from_secs(5)).expect("one POST");
        let wake = &wakeups(&post)[0];
        assert_eq!(wake["user"], 1);
        assert_eq!(wake["device"], 0);
        assert_eq!(wake["platform"], "fcm");
        assert_eq!(wake["token_hex"], hex::encode(b"\x01\x02token"));
        assert_eq!(wake["count"], 1);
        assert!(wake["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
        let text = post.to_string();
        assert!(!text.contains("secret"), "no content: {text}");
        assert_eq!(wake.as_object().unwrap().len(), 6, "nothing else: {wake}");

        // 100 messages within the next interval: one more POST, at its end.
        send(&gw, 1, 100).await;
        let post = hook
            .post(Duration::from_secs(5))
            .expect("the interval's POST");
        let counts: u64 = wakeups(&post)
            .iter()
            .map(|w| w["count"].as_u64().unwrap())
            .sum();
        assert_eq!(counts, 100, "coalesced into one wake-up");
        assert_eq!(wakeups(&post).len(), 1);
        assert_eq!(
            hook.post(Duration::from_millis(2_500)),
            None,
            "nothing more"
        );
        let body = gw.metrics_when(|m| metric(m, "gateway_push_sent_total") == 2);
        assert_eq!(metric(&body, "gateway_push_failed_total"), 0);
        hook
    });
    drop(hook);
}

#[test]
fn a_failed_post_is_retried_and_a_rejected_token_is_forgotten() {
    let token = b"old-token";
    let rejection =
        r#"{"rejected": [{"user": 1, "device": 0, "token_hex": "6f6c642d746f6b656e"}]}"#;
    assert_eq!(hex::encode(token), "6f6c642d746f6b656e");
    let hook = Webhook::start(vec![(500, "busy"), (200, rejection)]);
    let dir = temp_dir("push-retry");
    let gw = gateway(&dir, &hook, "1");
    run(async move || {
        drop(register(&gw, 1, token).await);
        wait_offline(&gw, 1);
        send(&gw, 1, 1).await;
        let first = hook.post(Duration::from_secs(5)).expect("first try");
        let started = std::time::Instant::now();
        let again = hook.post(Duration::from_secs(5)).expect("the retry");
        assert!(
            started.elapsed() >= Duration::from_millis(900),
            "after ~1 s"
        );
        assert_eq!(first, again, "the same batch");
        // The token is forgotten: later messages wake nobody.
        let info = gw.metrics_when(|m| metric(m, "gateway_push_rejected_total") == 1);
        assert_eq!(metric(&info, "gateway_push_failed_total"), 1);
        let user = loop {
            let (_, body) = gw.admin("GET", "/users?user=1");
            let user: serde_json::Value = serde_json::from_str(&body).unwrap();
            if user["devices"][0]["push_token"] == false {
                break user;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(user["devices"][0]["queued"], 1);
        send(&gw, 1, 1).await;
        assert_eq!(hook.post(Duration::from_millis(2_500)), None);
    });
}

#[test]
fn a_connected_device_is_not_woken_and_connecting_cancels_a_pending_wake() {
    let hook = Webhook::start(Vec::new());
    let dir = temp_dir("push-online");
    let gw = gateway(&dir, &hook, "2");
    run(async move || {
        let mut phone = register(&gw, 1, b"t").await;
        send(&gw, 1, 3).await;
        assert_eq!(hook.post(Duration::from_millis(1_500)), None, "online");
        for _ in 0..3 {
            match next(&mut phone).await {
                ClientEvent::Message { seq, .. } => phone.core().ack(seq),
                other => panic!("{other:?}"),
            }
        }
        phone.flush().await.unwrap();
        drop(phone);
        wait_offline(&gw, 1);
        // Offline: the first message wakes at once, the next waits for the
        // interval's end, but the device connects first.
        send(&gw, 1, 1).await;
        assert!(hook.post(Duration::from_secs(5)).is_some());
        send(&gw, 1, 1).await;
        let (_phone, backlog) = gw.login(1, 0, 3).await;
        assert_eq!(backlog, 2);
        assert_eq!(hook.post(Duration::from_millis(3_000)), None, "cancelled");
    });
}
