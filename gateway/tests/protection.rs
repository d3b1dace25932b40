//! Protection and the operator's hand, through the client crate against
//! the real gateway: the admin endpoint's bearer token, kicking and
//! banning (through SIGKILL), a user's info, privacy settings (last seen,
//! read receipts) and the per-device abuse limits.

mod support;

use bytes::Bytes;
use client::{ClientCore, ClientEvent, Connection};
use support::{Gateway, metric, next, run, temp_dir};
use wire_format::fb::{ErrorCode, LastSeenVisibility, Switch};
use wire_format::{group_address, user_address};

/// The next event on `conn` that `wanted` keeps (others are skipped).
async fn next_where<T>(conn: &mut Connection, wanted: impl Fn(ClientEvent) -> Option<T>) -> T {
    loop {
        if let Some(found) = wanted(next(conn).await) {
            return found;
        }
    }
}

/// Connects `user`/`device` and returns its first event and the core (a
/// `Welcome`, or the `Closed` of a refused device).
async fn first_event(gw: &Gateway, user: u64, device: u32) -> (ClientEvent, Connection) {
    let core = ClientCore::new(&gw.token(user, device, 3600), 0, 1);
    let mut conn = Connection::connect(gw.addr, gw.tls(), "localhost", core)
        .await
        .unwrap();
    (next(&mut conn).await, conn)
}

fn closed(code: ErrorCode) -> ClientEvent {
    ClientEvent::Closed { code: Some(code) }
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn the_admin_endpoint_wants_its_bearer_token_but_probes_do_not() {
    let dir = temp_dir("admin-token");
    let gw = Gateway::start(&dir, &[]);
    for path in ["/metrics", "/devices?user=1", "/users?user=1"] {
        assert_eq!(gw.admin_as("GET", path, None).0, 401, "{path}");
        assert_eq!(
            gw.admin_as("GET", path, Some("wrong-token")).0,
            401,
            "{path}"
        );
        assert_eq!(gw.admin("GET", path).0, 200, "{path}");
    }
    assert_eq!(
        gw.admin_as("POST", "/drain", None).0,
        401,
        "no drain without it"
    );
    assert_eq!(gw.admin_as("GET", "/health", None).0, 200);
    assert_eq!(gw.admin_as("GET", "/ready", None).0, 200);

    // A configured token replaces the generated one.
    drop(gw);
    let dir = temp_dir("admin-token-configured");
    let gw = Gateway::start(&dir, &["--admin-token", "operator-secret"]);
    assert_eq!(
        gw.admin_as("GET", "/metrics", Some("operator-secret")).0,
        200
    );
    assert!(!dir.join("admin-token").exists(), "none generated");
}

#[test]
fn the_operator_kicks_bans_and_sees_a_user_and_bans_survive_sigkill() {
    let dir = temp_dir("kick-ban");
    let gw = Gateway::start(&dir, &[]);
    let gw = run(async move || {
        let (mut phone, _) = gw.login(1, 0, 0).await;
        let (laptop, _) = gw.login(1, 1, 0).await;
        drop(laptop);
        // One message waits for the laptop.
        let (mut bob, _) = gw.login(2, 0, 0).await;
        bob.core()
            .send(user_address(1), 0, Bytes::from_static(b"hi"));
        bob.flush().await.unwrap();
        next_where(&mut phone, |e| match e {
            ClientEvent::Message { seq, .. } => Some(seq),
            _ => None,
        })
        .await;

        let info = json(&gw.admin("GET", "/users?user=1").1);
        assert_eq!(info["online"], true);
        assert_eq!(info["banned_until_ms"], 0);
        let devices = info["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 2);
        assert_eq!(
            (devices[0]["online"].clone(), devices[0]["queued"].clone()),
            (true.into(), 1.into())
        );
        assert_eq!(
            (devices[1]["online"].clone(), devices[1]["queued"].clone()),
            (false.into(), 1.into())
        );

        // Kick: the session closes with Kicked, the device may come back.
        let (status, body) = gw.admin("POST", "/kick?user=1&device=0");
        assert_eq!((status, json(&body)["closed"].clone()), (200, 1.into()));
        assert_eq!(next(&mut phone).await, closed(ErrorCode::Kicked));
        let (mut phone, _) = gw.login(1, 0, 0).await;

        // Ban for an hour: sessions close with Banned and how long.
        let (status, body) = gw.admin("POST", "/ban?user=1&for_s=3600");
        assert_eq!(status, 200, "{body}");
        let until = json(&body)["banned_until_ms"].as_u64().unwrap();
        let end = next_where(&mut phone, |e| {
            matches!(e, ClientEvent::Closed { .. }).then_some(e)
        });
        assert_eq!(end.await, closed(ErrorCode::Banned));
        let left = phone.core().retry_after_ms();
        assert!((3_590_000..=3_600_000).contains(&left), "{left} ms left");
        let (event, conn) = first_event(&gw, 1, 1).await;
        assert_eq!(event, closed(ErrorCode::Banned), "Hello refused");
        drop(conn);
        // Another user is untouched (and a banned user's queue still fills).
        let id = bob
            .core()
            .send(user_address(1), 0, Bytes::from_static(b"x"));
        bob.flush().await.unwrap();
        let acked = next_where(&mut bob, |e| match e {
            ClientEvent::Acked { client_msg_id, .. } if client_msg_id == id => Some(()),
            _ => None,
        });
        acked.await;
        gw.metrics_when(|m| {
            metric(m, "gateway_bans_total") == 1 && metric(m, "gateway_sessions_kicked_total") == 1
        });
        (gw, until)
    });
    let (mut gw, until) = gw;
    gw.kill_and_restart();
    run(async move || {
        let info = json(&gw.admin("GET", "/users?user=1").1);
        assert_eq!(info["banned_until_ms"], until, "the ban is durable");
        let (event, _) = first_event(&gw, 1, 0).await;
        assert_eq!(event, closed(ErrorCode::Banned));
        let (status, _) = gw.admin("POST", "/ban?user=1&until_ms=0");
        assert_eq!(status, 200);
        let (mut phone, backlog) = gw.login(1, 1, 0).await;
        assert_eq!(backlog, 2, "what waited is still there");
        next_where(&mut phone, |e| {
            matches!(e, ClientEvent::Message { .. }).then_some(())
        })
        .await;
    });
}

/// `SettingsSet` and its answer.
async fn set(
    conn: &mut Connection,
    request_id: u64,
    last_seen: LastSeenVisibility,
    read: Switch,
) -> (LastSeenVisibility, Switch) {
    conn.core().settings_set(request_id, last_seen, read);
    conn.flush().await.unwrap();
    next_where(conn, |e| match e {
        ClientEvent::Settings {
            request_id: r,
            last_seen,
            read_receipts,
        } if r == request_id => Some((last_seen, read_receipts)),
        _ => None,
    })
    .await
}

/// The next `Presence` of `user` on `conn`: (online, last_seen_ms).
async fn presence(conn: &mut Connection, user: u64) -> (bool, u64) {
    next_where(conn, |e| match e {
        ClientEvent::Presence {
            user: u,
            online,
            last_seen_ms,
        } if u == user => Some((online, last_seen_ms)),
        _ => None,
    })
    .await
}

#[test]
fn last_seen_can_be_hidden_and_it_survives_sigkill() {
    let dir = temp_dir("last-seen");
    let gw = Gateway::start(&dir, &[]);
    let mut gw = run(async move || {
        let (mut watcher, _) = gw.login(2, 0, 0).await;
        let (alice, _) = gw.login(1, 0, 0).await;
        watcher.core().watch(&[1], false);
        watcher.flush().await.unwrap();
        assert!(presence(&mut watcher, 1).await.0);
        drop(alice);
        let (online, seen) = presence(&mut watcher, 1).await;
        assert!(!online && seen > 0, "last seen shown by default");

        let (mut alice, _) = gw.login(1, 0, 0).await;
        assert!(presence(&mut watcher, 1).await.0);
        let answer = set(&mut alice, 5, LastSeenVisibility::Nobody, Switch::Unchanged).await;
        assert_eq!(answer, (LastSeenVisibility::Nobody, Switch::On));
        drop(alice);
        assert_eq!(presence(&mut watcher, 1).await, (false, 0), "hidden");
        gw
    });
    gw.kill_and_restart();
    run(async move || {
        let (mut watcher, _) = gw.login(2, 0, 0).await;
        watcher.core().watch(&[1], false);
        watcher.flush().await.unwrap();
        assert_eq!(presence(&mut watcher, 1).await, (false, 0));
        let (alice, _) = gw.login(1, 0, 0).await;
        assert!(presence(&mut watcher, 1).await.0);
        drop(alice);
        assert_eq!(presence(&mut watcher, 1).await, (false, 0), "still hidden");
        let info = json(&gw.admin("GET", "/users?user=1").1);
        assert_eq!(info["last_seen"], "nobody");
    });
}

#[test]
fn read_receipts_off_are_not_relayed_but_others_still_arrive() {
    let dir = temp_dir("read-receipts");
    let gw = Gateway::start(&dir, &[]);
    run(async move || {
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let (mut bob, _) = gw.login(2, 0, 0).await;
        let (mut bob_laptop, _) = gw.login(2, 1, 0).await;
        // Bob turns read receipts off; his other device hears of it.
        let answer = set(&mut bob, 9, LastSeenVisibility::Unchanged, Switch::Off).await;
        assert_eq!(answer, (LastSeenVisibility::Everyone, Switch::Off));
        let told = next_where(&mut bob_laptop, |e| match e {
            ClientEvent::Settings {
                request_id,
                read_receipts,
                ..
            } => Some((request_id, read_receipts)),
            _ => None,
        })
        .await;
        assert_eq!(told, (0, Switch::Off));

        // Alice writes; Bob reads it and says so; then Bob writes.
        alice
            .core()
            .send(user_address(2), 0, Bytes::from_static(b"hello"));
        alice.flush().await.unwrap();
        let id = next_where(&mut bob, |e| match e {
            ClientEvent::Message {
                seq, message_id, ..
            } => Some((seq, message_id)),
            _ => None,
        })
        .await;
        bob.core().ack(id.0);
        bob.core().read(user_address(1), &[id.1]);
        bob.core()
            .send(user_address(1), 0, Bytes::from_static(b"answer"));
        bob.flush().await.unwrap();
        // Alice gets Bob's answer without a Read before it (it would come
        // first: both go from Bob's shard to Alice's home in order).
        let seen = next_where(&mut alice, |e| match e {
            ClientEvent::Message {
                payload,
                message_id,
                seq,
                ..
            } => Some(Ok((payload, message_id, seq))),
            ClientEvent::Receipt { kind, .. } if kind == wire_format::fb::ReceiptKind::Read => {
                Some(Err(()))
            }
            _ => None,
        })
        .await;
        let (payload, answer_id, seq) = seen.expect("no read receipt before the answer");
        assert_eq!(payload, Bytes::from_static(b"answer"));

        // Alice's read receipts are on: Bob still gets them.
        alice.core().ack(seq);
        alice.core().read(user_address(2), &[answer_id]);
        alice.flush().await.unwrap();
        let read = next_where(&mut bob, |e| match e {
            ClientEvent::Receipt { kind, from, .. }
                if kind == wire_format::fb::ReceiptKind::Read =>
            {
                Some(from.id())
            }
            _ => None,
        })
        .await;
        assert_eq!(read, 1);
        gw.metrics_when(|m| {
            metric(m, "gateway_settings_changed_total") == 1
                && metric(m, "gateway_read_receipts_suppressed_total") == 1
        });
    });
}

#[test]
fn abuse_limits_refuse_with_retry_after_and_survive_a_reconnect() {
    let dir = temp_dir("abuse");
    let flags = [
        "--abuse-new-conversations-per-h",
        "2",
        "--abuse-messages-per-recipient-per-s",
        "3",
        "--abuse-group-creates-per-day",
        "1",
    ];
    let gw = Gateway::start(&dir, &flags);
    run(async move || {
        let (mut alice, _) = gw.login(1, 0, 0).await;
        for user in [2, 3] {
            gw.login(user, 0, 0).await; // linked, so a send is deliverable
        }
        // Two new conversations pass, the third is refused.
        for user in [2, 3, 4] {
            alice
                .core()
                .send(user_address(user), 0, Bytes::from_static(b"hi"));
        }
        alice.flush().await.unwrap();
        let refused = next_where(&mut alice, refusal).await;
        assert_eq!(refused.0, ErrorCode::ConversationLimit);
        assert!((1_790_000..=1_800_000).contains(&refused.1), "{refused:?}");

        // Messages to one recipient: 2 s of 3/s burst, then refused.
        for _ in 0..8 {
            alice
                .core()
                .send(user_address(2), 0, Bytes::from_static(b"again"));
        }
        alice.flush().await.unwrap();
        let refused = next_where(&mut alice, refusal).await;
        assert_eq!(refused.0, ErrorCode::RecipientRateLimit);
        assert!(refused.1 > 0 && refused.1 <= 334, "{refused:?}");

        // One group a day.
        alice.core().group_create(1, &[2]);
        alice.core().group_create(2, &[3]);
        alice.flush().await.unwrap();
        let (code, request_id, retry) = next_where(&mut alice, |e| match e {
            ClientEvent::RequestRefused {
                code,
                request_id,
                retry_after_ms,
            } => Some((code, request_id, retry_after_ms)),
            _ => None,
        })
        .await;
        assert_eq!((code, request_id), (ErrorCode::GroupCreateLimit, 2));
        assert!(retry > 86_000_000, "{retry}");
        // A message to the group it did create is no new conversation.
        let group = next_where(&mut alice, |e| match e {
            ClientEvent::GroupChanged {
                group,
                request_id: 1,
                ..
            } => Some(group),
            _ => None,
        })
        .await;
        alice
            .core()
            .send(group_address(group), 0, Bytes::from_static(b"g"));
        alice.flush().await.unwrap();
        drop(alice);

        // Reconnecting (to whichever shard) does not reset the limits. Ids
        // go on increasing (an id not above the last is a retry, which is
        // never refused: it may have been stored).
        let core = ClientCore::new(&gw.token(1, 0, 3600), 0, 1_000);
        let (mut alice, _) = gw.resume(core).await;
        alice
            .core()
            .send(user_address(5), 0, Bytes::from_static(b"hi"));
        alice.flush().await.unwrap();
        let refused = next_where(&mut alice, refusal).await;
        assert_eq!(refused.0, ErrorCode::ConversationLimit);
        let by = |body: &str, limit: &str| {
            body.lines()
                .filter(|l| l.starts_with("gateway_abuse_refused_total") && l.contains(limit))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .sum::<u64>()
        };
        gw.metrics_when(|m| {
            by(m, "new_conversations") == 2
                && by(m, "messages_per_recipient") >= 1
                && by(m, "group_creates") == 1
        });
    });
}

/// A refused send: (code, retry_after_ms).
fn refusal(e: ClientEvent) -> Option<(ErrorCode, u64)> {
    match e {
        ClientEvent::Refused {
            code,
            retry_after_ms,
            ..
        } => Some((code, retry_after_ms)),
        _ => None,
    }
}
