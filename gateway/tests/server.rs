//! The real gateway over real TLS on 127.0.0.1: the message path end to
//! end, backlog and resume, restart after SIGKILL, and bad input.

mod support;

use std::time::Duration;

use bytes::Bytes;
use client::ClientEvent;
use support::{Gateway, metric, next, run, temp_dir};
use wire_format::fb::{ErrorCode, ReceiptKind};
use wire_format::{device_address, user_address};

#[test]
fn send_ack_deliver_ack_receipt_between_two_devices() {
    let dir = temp_dir("e2e-basic");
    let gw = Gateway::start(&dir, &[]);
    run(async move || {
        let (mut bob, backlog) = gw.login(2, 0, 0).await;
        assert_eq!(backlog, 0);
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let id = alice
            .core()
            .send(user_address(2), 0, Bytes::from_static(b"hi bob"));
        alice.flush().await.unwrap();
        let message_id = match next(&mut alice).await {
            ClientEvent::Acked {
                client_msg_id,
                message_id,
                duplicate,
            } => {
                assert_eq!((client_msg_id, duplicate), (id, false));
                message_id
            }
            other => panic!("expected ✓, got {other:?}"),
        };
        let seq = match next(&mut bob).await {
            ClientEvent::Message {
                seq,
                message_id: m,
                from,
                payload,
                ..
            } => {
                assert_eq!(
                    (m, from, &payload[..]),
                    (message_id, device_address(1, 0), &b"hi bob"[..])
                );
                seq
            }
            other => panic!("expected the message, got {other:?}"),
        };
        assert_eq!(seq, 1);
        bob.core().ack(seq);
        bob.flush().await.unwrap();
        match next(&mut alice).await {
            ClientEvent::Receipt {
                kind,
                from,
                message_ids,
                seq,
            } => {
                assert_eq!(
                    (kind, from, message_ids),
                    (
                        ReceiptKind::Delivered,
                        device_address(2, 0),
                        vec![message_id]
                    )
                );
                assert!(seq >= 1, "receipts are queued: {seq}");
            }
            other => panic!("expected ✓✓, got {other:?}"),
        }
        // Users 1 and 2 are homed on different shards: the ✓✓ went from
        // bob's home to alice's, which slept meanwhile and was woken.
        let body = gw.metrics_when(|m| metric(m, "gateway_mesh_doorbells_total") > 0);
        assert!(metric(&body, "gateway_mesh_doorbells_total") > 0);
    });
}

/// The quickstart's data directory is relative (`data`): the log's files
/// and directories open under the working directory. glommio opened them
/// with a directory descriptor of -1 instead of `AT_FDCWD`, so the first
/// log write failed with EBADF and the process stopped.
#[test]
fn a_relative_data_directory_takes_messages() {
    let dir = temp_dir("e2e-relative");
    let gw = Gateway::start_relative(&dir, &[]);
    run(async move || {
        let (mut bob, _) = gw.login(2, 0, 0).await;
        let (mut alice, _) = gw.login(1, 0, 0).await;
        alice
            .core()
            .send(user_address(2), 0, Bytes::from_static(b"hi"));
        alice.flush().await.unwrap();
        assert!(matches!(next(&mut alice).await, ClientEvent::Acked { .. }));
        assert!(matches!(next(&mut bob).await, ClientEvent::Message { .. }));
    });
}

/// The kernel's view of whether `pid` may have transparent huge pages
/// (`THP_enabled` in its status).
fn thp_enabled(pid: u32) -> Option<bool> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("THP_enabled:"))?;
    Some(line.split_whitespace().nth(1)? == "1")
}

/// The serving gateway keeps its memory off transparent huge pages unless
/// told otherwise (`allocator_huge_pages`): with them, first touches and
/// `khugepaged` stalled shards for milliseconds, and idle connections
/// cost more.
#[test]
fn the_gateway_refuses_huge_pages_unless_allowed() {
    let Some(true) = thp_enabled(std::process::id()) else {
        eprintln!("skipped: this kernel does not report THP_enabled, or it is off system-wide");
        return;
    };
    let dir = temp_dir("e2e-thp-off");
    let gw = Gateway::start(&dir, &[]);
    assert_eq!(thp_enabled(gw.child.id()), Some(false));
    let dir = temp_dir("e2e-thp-on");
    let gw = Gateway::start(&dir, &["--allocator-huge-pages", "true"]);
    assert_eq!(thp_enabled(gw.child.id()), Some(true));
}

/// A client that holds its delivery ack back (`ack_later`, the default
/// for busy clients) and has nothing else to write still sends it: the
/// connection writes it once `ACK_DELAY` has passed, and the sender gets ✓✓.
#[test]
fn a_held_ack_goes_out_on_its_own_and_brings_the_receipt() {
    let dir = temp_dir("e2e-held-ack");
    let gw = Gateway::start(&dir, &[]);
    run(async move || {
        let (mut bob, _) = gw.login(2, 0, 0).await;
        let (mut alice, _) = gw.login(1, 0, 0).await;
        alice
            .core()
            .send(user_address(2), 0, Bytes::from_static(b"hi bob"));
        alice.flush().await.unwrap();
        let seq = match next(&mut bob).await {
            ClientEvent::Message { seq, .. } => seq,
            other => panic!("expected the message, got {other:?}"),
        };
        bob.core().ack_later(seq);
        assert!(bob.core().ack_held());
        // Bob only waits: nothing for the ack to ride.
        let waited = bob.next_event_within(client::ACK_DELAY * 10).await.unwrap();
        assert!(waited.is_none(), "{waited:?}");
        assert!(!bob.core().ack_held(), "written when the delay ran out");
        loop {
            match next(&mut alice).await {
                ClientEvent::Acked { .. } => {}
                ClientEvent::Receipt { kind, .. } => {
                    assert_eq!(kind, ReceiptKind::Delivered);
                    break;
                }
                other => panic!("expected ✓✓, got {other:?}"),
            }
        }
    });
}

/// With `--commit-delay-us`, once log writes follow each other, the next
/// one that would start within the delay of the last one's end waits until
/// then: after two sends each made as soon as the ✓ before it came, a third
/// is ✓'d no sooner than about the delay after the second's ✓. (A lower
/// bound only: a busy machine makes it later, never sooner.)
#[test]
fn a_commit_delay_holds_a_write_that_follows_the_last_one() {
    let dir = temp_dir("e2e-commit-delay");
    let gw = Gateway::start(&dir, &["--commit-delay-us", "1000000"]);
    run(async move || {
        let (_bob, _) = gw.login(2, 0, 0).await;
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let mut acked_at = std::time::Instant::now();
        for payload in [&b"one"[..], &b"two"[..], &b"three"[..]] {
            let sent_at = std::time::Instant::now();
            alice
                .core()
                .send(user_address(2), 0, Bytes::copy_from_slice(payload));
            alice.flush().await.unwrap();
            match next(&mut alice).await {
                ClientEvent::Acked { duplicate, .. } => assert!(!duplicate),
                other => panic!("expected ✓, got {other:?}"),
            }
            if payload == b"three" {
                let held = sent_at.duration_since(acked_at);
                assert!(
                    held < Duration::from_millis(100),
                    "sent right after ✓: {held:?}"
                );
                let waited = acked_at.elapsed();
                assert!(waited >= Duration::from_millis(500), "✓ after {waited:?}");
            }
            acked_at = std::time::Instant::now();
        }
        let (_, body) = gw.admin("GET", "/metrics");
        assert!(metric(&body, "gateway_commit_holds_total") >= 1, "{body}");
    });
}

/// Connections that go quiet let their TLS keys sleep (counted), and wake
/// them for the next message both ways, as often as they go quiet.
#[test]
fn quiet_connections_let_their_keys_sleep_and_wake_them_for_the_next_message() {
    let dir = temp_dir("e2e-keys-sleep");
    let gw = Gateway::start(&dir, &["--tls-keys-idle-ms", "100"]);
    run(async move || {
        let (mut bob, _) = gw.login(2, 0, 0).await;
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let slept = |m: &str| metric(m, "gateway_tls_keys_slept_total");
        let mut asleep = 0;
        for round in 0..3u8 {
            // Both connections were busy (the logins, the last round) and
            // are now silent: each lets its keys sleep.
            asleep = slept(&gw.metrics_when(|m| slept(m) >= asleep + 2));
            let payload = Bytes::from(vec![round; 50]);
            alice.core().send(user_address(2), 0, payload.clone());
            alice.flush().await.unwrap();
            assert!(matches!(next(&mut alice).await, ClientEvent::Acked { .. }));
            let seq = match next(&mut bob).await {
                ClientEvent::Message {
                    seq, payload: p, ..
                } if p == payload => seq,
                other => panic!("expected round {round}'s message, got {other:?}"),
            };
            bob.core().ack(seq);
            bob.flush().await.unwrap();
            match next(&mut alice).await {
                ClientEvent::Receipt { kind, .. } => assert_eq!(kind, ReceiptKind::Delivered),
                other => panic!("expected ✓✓, got {other:?}"),
            }
        }
    });
}

/// Collects `n` messages (acking each), returning (seq, payload) pairs.
async fn receive(conn: &mut client::Connection, n: usize) -> Vec<(u64, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(conn).await {
            ClientEvent::Message { seq, payload, .. } => {
                got.push((seq, payload.to_vec()));
                conn.core().ack(seq);
            }
            ClientEvent::Receipt { seq, .. } => conn.core().ack(seq),
            other => panic!("expected messages, got {other:?}"),
        }
    }
    conn.flush().await.unwrap();
    got
}

/// Sends `n` numbered messages to `to` and waits for every ✓.
async fn send_all(conn: &mut client::Connection, to: wire_format::Address, from: u32, n: u32) {
    for i in from..from + n {
        conn.core().send(to, 0, Bytes::from(format!("m{i}")));
    }
    conn.flush().await.unwrap();
    let mut acked = 0;
    while acked < n {
        match next(conn).await {
            ClientEvent::Acked { .. } => acked += 1,
            ClientEvent::Receipt { seq, .. } => conn.core().ack(seq),
            other => panic!("expected ✓, got {other:?}"),
        }
    }
}

fn numbered(from: u32, n: u32) -> Vec<Vec<u8>> {
    (from..from + n)
        .map(|i| format!("m{i}").into_bytes())
        .collect()
}

#[test]
fn a_user_with_two_devices_gets_each_message_on_both() {
    let dir = temp_dir("e2e-two-devices");
    let gw = Gateway::start(&dir, &[]);
    run(async move || {
        let (mut phone, _) = gw.login(2, 0, 0).await;
        let (mut laptop, _) = gw.login(2, 1, 0).await;
        let (mut alice, _) = gw.login(1, 0, 0).await;
        send_all(&mut alice, user_address(2), 0, 50).await;
        let on = |got: Vec<(u64, Vec<u8>)>| -> Vec<Vec<u8>> {
            let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
            assert_eq!(
                seqs,
                (1..=50).collect::<Vec<_>>(),
                "in seq order, once each"
            );
            got.into_iter().map(|(_, p)| p).collect()
        };
        assert_eq!(on(receive(&mut phone, 50).await), numbered(0, 50));
        assert_eq!(on(receive(&mut laptop, 50).await), numbered(0, 50));
        // To one device only: the laptop gets it, the phone does not.
        send_all(&mut alice, device_address(2, 1), 100, 1).await;
        assert_eq!(receive(&mut laptop, 1).await, [(51, b"m100".to_vec())]);
        let quiet = phone
            .next_event_within(Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(quiet, None, "nothing for the phone");
    });
}

#[test]
fn an_offline_device_gets_its_backlog_once_and_in_order_then_live() {
    let dir = temp_dir("e2e-backlog");
    let gw = Gateway::start(&dir, support::UNLIMITED);
    run(async move || {
        let (bob, _) = gw.login(2, 0, 0).await;
        drop(bob); // registered, now offline
        let (mut alice, _) = gw.login(1, 0, 0).await;
        send_all(&mut alice, user_address(2), 0, 1200).await; // beyond one window
        let (mut bob, backlog) = gw.login(2, 0, 0).await;
        assert_eq!(backlog, 1200);
        let got = receive(&mut bob, 700).await;
        assert_eq!(
            got.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            (1..=700).collect::<Vec<_>>()
        );
        // Reconnect mid-backlog: resume after the last ack, nothing twice.
        let core = bob.into_core();
        assert_eq!(core.last_acked_seq(), 700);
        let (mut bob, backlog) = gw.resume(core.reconnect(&gw.token(2, 0, 3600))).await;
        assert_eq!(backlog, 500);
        let rest = receive(&mut bob, 500).await;
        assert_eq!(rest.first().map(|(s, _)| *s), Some(701));
        let payloads: Vec<Vec<u8>> = got.into_iter().chain(rest).map(|(_, p)| p).collect();
        assert_eq!(payloads, numbered(0, 1200));
        send_all(&mut alice, user_address(2), 5000, 1).await;
        assert_eq!(
            receive(&mut bob, 1).await,
            [(1201, b"m5000".to_vec())],
            "then live"
        );
    });
}

/// An ack that never reached the server (the connection dropped first) is
/// carried by the next `Hello`'s last acknowledged seq: the server takes it
/// as the ack it is, so the messages leave the queue and the sender gets ✓✓.
#[test]
fn the_resume_point_in_hello_acknowledges_and_sends_double_ticks() {
    let dir = temp_dir("e2e-resume-acks");
    let gw = Gateway::start(&dir, support::UNLIMITED);
    run(async move || {
        let (bob, _) = gw.login(2, 0, 0).await;
        let (mut alice, _) = gw.login(1, 0, 0).await;
        send_all(&mut alice, user_address(2), 0, 3).await;
        drop(bob);
        // Bob read all three, but his ack was lost with the connection.
        let (mut bob, backlog) = gw.login(2, 0, 3).await;
        assert_eq!(backlog, 0, "nothing after seq 3");
        let mut double_ticked = Vec::new();
        while double_ticked.len() < 3 {
            match next(&mut alice).await {
                ClientEvent::Receipt {
                    kind: ReceiptKind::Delivered,
                    message_ids,
                    seq,
                    ..
                } => {
                    double_ticked.extend(message_ids);
                    alice.core().ack(seq);
                }
                other => panic!("expected ✓✓, got {other:?}"),
            }
        }
        assert_eq!(double_ticked.len(), 3);
        // And the queue is empty: a fresh resume from 0 gets nothing.
        drop(bob.flush().await);
        drop(bob);
        let (_bob, backlog) = gw.login(2, 0, 0).await;
        assert_eq!(backlog, 0, "acked messages left the queue");
    });
}

#[test]
fn every_acknowledged_message_survives_sigkill_and_arrives_once() {
    let dir = temp_dir("e2e-kill");
    let mut gw = Gateway::start(&dir, support::UNLIMITED);
    run(async move || {
        drop(gw.login(2, 0, 0).await); // bob exists, offline
        let (mut alice, _) = gw.login(1, 0, 0).await;
        const N: u32 = 3000;
        for i in 0..N {
            alice
                .core()
                .send(user_address(2), 0, Bytes::from(format!("m{i}")));
        }
        alice.flush().await.unwrap();
        let mut acked = std::collections::BTreeSet::new();
        while acked.len() < 500 {
            if let ClientEvent::Acked { client_msg_id, .. } = next(&mut alice).await {
                acked.insert(client_msg_id);
            }
        }
        gw.kill_and_restart(); // mid-stream: some sends are stored, some not
        let mut alice = {
            let mut core = alice.into_core();
            while let Some(event) = core.poll_event() {
                if let ClientEvent::Acked { client_msg_id, .. } = event {
                    acked.insert(client_msg_id); // read before the kill
                }
            }
            assert!(
                !core.pending().is_empty(),
                "the kill interrupted the stream"
            );
            gw.resume(core.reconnect(&gw.token(1, 0, 3600))).await.0
        };
        while acked.len() < N as usize {
            match next(&mut alice).await {
                ClientEvent::Acked { client_msg_id, .. } => {
                    acked.insert(client_msg_id);
                }
                other => panic!("only ✓ expected, got {other:?}"),
            }
        }
        assert!(
            alice.core().pending().is_empty(),
            "every send is ✓ after the retry"
        );
        // Once more: the retries were written after the first restart, over
        // the block the log had left half full (read back, rewritten).
        drop(alice);
        gw.kill_and_restart();
        let (mut bob, backlog) = gw.login(2, 0, 0).await;
        assert_eq!(
            backlog, N,
            "each message stored once (dedup across the crash)"
        );
        let got = receive(&mut bob, N as usize).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        assert_eq!(payloads, numbered(0, N), "all, once, in order");
    });
}

/// 1,000 bytes that say which message they are.
fn payload_of(i: u32) -> Bytes {
    Bytes::from(format!("{i:04}").repeat(250))
}

#[test]
fn a_disk_that_fills_stops_the_process_and_every_acked_message_survives() {
    let dir = temp_dir("e2e-full-disk");
    // Segment files cannot grow past 256 KiB: about 250 of these sends fit.
    let gw = Gateway::start_file_limited(&dir, support::UNLIMITED, 256);
    fill_then_restart(gw, || {});
}

/// The same on a filesystem that is really full: a tmpfs of 640 KiB made
/// for the test. After the process stops, the filesystem is grown and the
/// gateway restarted on it. Mounting needs root (this project's machines
/// have it; a root that cannot mount fails the test); as another user it
/// says so and fills a file-size limit instead, like the test above.
#[test]
fn a_filesystem_that_fills_stops_the_process_and_every_acked_message_survives() {
    let dir = temp_dir("e2e-full-fs");
    let Some(fs) = support::SmallFs::mount(&dir, 640) else {
        eprintln!("not root: no tmpfs of our own; a 256 KiB file-size limit instead");
        let gw = Gateway::start_file_limited(&dir, support::UNLIMITED, 256);
        return fill_then_restart(gw, || {});
    };
    let gw = Gateway::start(&dir, support::UNLIMITED);
    fill_then_restart(gw, || fs.resize(64 << 10));
}

/// Sends in rounds until the gateway stops for a full disk (status 70),
/// then makes room and restarts it: every ✓'d message is there, and the
/// client's retries of the rest complete, all once and in order.
fn fill_then_restart(gw: Gateway, make_room: impl FnOnce()) {
    let (gw, acked, pending) = run(async move || {
        drop(gw.login(2, 0, 0).await); // bob exists, offline
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let mut acked = std::collections::BTreeSet::new();
        // Rounds of 50, each waited for, until the process stops.
        'rounds: for round in 0..20 {
            for i in round * 50..round * 50 + 50 {
                alice.core().send(user_address(2), 0, payload_of(i));
            }
            while acked.len() < 50 * (round as usize + 1) {
                let event = alice.next_event_within(Duration::from_secs(10)).await;
                match event {
                    Ok(Some(ClientEvent::Acked { client_msg_id, .. })) => {
                        acked.insert(client_msg_id);
                    }
                    Ok(Some(ClientEvent::Refused { code, .. })) => {
                        assert_eq!(code, ErrorCode::StorageUnavailable);
                    }
                    Ok(Some(ClientEvent::Closed { .. })) | Err(_) => break 'rounds,
                    Ok(other) => panic!("unexpected {other:?}"),
                }
            }
        }
        (gw, acked, alice.into_core())
    });
    let mut gw = gw;
    let status = gw.wait_exit();
    assert_eq!(status.code(), Some(70), "fail-stop exit status: {status}");
    let n = acked.len();
    assert!((50..1000).contains(&n), "{n} ✓'d before the disk filled");
    let sent = u32::try_from(n + pending.pending().len()).unwrap();
    assert!(sent as usize > n, "sends were cut off unanswered");
    make_room();
    gw.restart();
    run(async move || {
        let mut alice = gw.resume(pending.reconnect(&gw.token(1, 0, 3600))).await.0;
        while !alice.core().pending().is_empty() {
            next(&mut alice).await;
        }
        let (mut bob, backlog) = gw.login(2, 0, 0).await;
        assert_eq!(backlog, sent, "each message stored once");
        let got = receive(&mut bob, sent as usize).await;
        let payloads: Vec<Vec<u8>> = got.into_iter().map(|(_, p)| p).collect();
        let expected: Vec<Vec<u8>> = (0..sent).map(|i| payload_of(i).to_vec()).collect();
        assert_eq!(payloads, expected, "all, once, in order");
    });
}

#[test]
fn bad_input_gets_its_error_and_touches_nothing_else() {
    let dir = temp_dir("e2e-bad-input");
    let gw = Gateway::start(&dir, &[]);
    run(async move || {
        drop(gw.login(2, 0, 0).await);
        let (mut alice, _) = gw.login(1, 0, 0).await;
        send_all(&mut alice, user_address(2), 0, 3).await; // acknowledged, queued for bob

        // Garbage instead of TLS: the server drops the connection.
        let mut raw = std::net::TcpStream::connect(gw.addr).unwrap();
        std::io::Write::write_all(&mut raw, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut raw, &mut sink); // EOF (after an alert)
        assert!(sink.len() < 64, "at most a TLS alert: {sink:?}");

        // Expired and forged tokens.
        let expired = client::ClientCore::new(&gw.token(3, 0, -10), 0, 1);
        let forged = {
            let (key, _) = gateway::token::SigningKey::generate(1);
            client::ClientCore::new(&key.issue(3, 0, u64::MAX / 2), 0, 1)
        };
        for (core, code) in [
            (expired, ErrorCode::TokenExpired),
            (forged, ErrorCode::AuthFailed),
        ] {
            let mut c = client::Connection::connect(gw.addr, gw.tls(), "localhost", core)
                .await
                .unwrap();
            assert_eq!(next(&mut c).await, ClientEvent::Closed { code: Some(code) });
        }

        // A header that fails verification, and a frame over the limit.
        let bad_header = [8u8, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];
        let oversized = (1u32 << 20).to_le_bytes();
        for (bytes, code) in [
            (&bad_header[..], ErrorCode::InvalidHeader),
            (&oversized[..], ErrorCode::FrameTooLarge),
        ] {
            let (mut c, _) = gw.login(4, 0, 0).await;
            c.write_raw(bytes).await.unwrap();
            assert_eq!(next(&mut c).await, ClientEvent::Closed { code: Some(code) });
        }

        // Acking a seq never delivered to this device.
        let (mut eve, _) = gw.login(5, 0, 0).await;
        eve.core().ack(2);
        eve.flush().await.unwrap();
        assert_eq!(
            next(&mut eve).await,
            ClientEvent::Closed {
                code: Some(ErrorCode::NotYourMessage)
            }
        );

        // Nothing else noticed: alice still sends, bob gets all four.
        send_all(&mut alice, user_address(2), 3, 1).await;
        let (mut bob, backlog) = gw.login(2, 0, 0).await;
        assert_eq!(backlog, 4);
        let got: Vec<Vec<u8>> = receive(&mut bob, 4)
            .await
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        assert_eq!(got, numbered(0, 4));
        let counted = |m: &str, code: u16| m.contains(&format!("code=\"{code}\""));
        let codes = [203, 204, 102, 100, 206];
        gw.metrics_when(|m| codes.iter().all(|c| counted(m, *c)));
        assert_eq!(gw.admin("GET", "/health").0, 200);
        assert_eq!(gw.admin("GET", "/ready").0, 200);
    });
}

#[test]
fn drain_sends_goaway_and_the_process_exits_cleanly() {
    let dir = temp_dir("e2e-drain");
    let gw = Gateway::start(&dir, &["--drain-timeout-ms", "300"]);
    let admin = gw.admin;
    let mut gw = run(async move || {
        let (mut bob, _) = gw.login(2, 0, 0).await;
        assert_eq!(gw.admin("POST", "/drain").0, 202);
        assert_eq!(gw.admin("GET", "/ready").0, 503, "not ready while draining");
        assert_eq!(
            next(&mut bob).await,
            ClientEvent::GoAway {
                reason: wire_format::fb::GoAwayReason::Draining,
                reconnect_after_ms: 1_000
            }
        );
        // The close at the drain deadline needs no Error frame: GoAway said why.
        assert_eq!(next(&mut bob).await, ClientEvent::Closed { code: None });
        gw
    });
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "exit after the drain: {status}");
    assert!(std::net::TcpStream::connect(admin).is_err(), "gone");
}

#[test]
fn the_default_command_serves_and_sigterm_drains() {
    let dir = temp_dir("e2e-default");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .current_dir(&dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no ready line within 60 s");
    };
    assert_eq!(
        line.trim(),
        "ready listen=127.0.0.1:7443 admin=127.0.0.1:7080"
    );
    assert!(
        dir.join("data/dev-cert.pem").exists(),
        "a development certificate was made"
    );
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "SIGTERM drains and exits 0: {status}");
}

#[test]
fn reclaim_runs_inside_the_server_and_the_log_stays_bounded() {
    const SEGMENT: u64 = 1 << 20;
    let dir = temp_dir("e2e-reclaim");
    let segment = SEGMENT.to_string();
    let gw = Gateway::start(
        &dir,
        &[
            "--sends-per-s",
            "100000",
            "--abuse-messages-per-recipient-per-s",
            "0",
            "--send-bytes-per-s",
            "1000000000",
            "--segment-bytes",
            &segment,
        ],
    );
    let (gw, messages, last_seq) = run(async move || {
        let (mut bob, _) = gw.login(2, 0, 0).await;
        let mut last_seq = 0;
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let (rounds, per_round) = (120u32, 60u32);
        for round in 0..rounds {
            for i in 0..per_round {
                alice
                    .core()
                    .send(user_address(2), 0, payload_of(round * per_round + i));
            }
            alice.flush().await.unwrap();
            let mut acked = 0;
            while acked < per_round {
                match next(&mut alice).await {
                    ClientEvent::Acked { .. } => acked += 1,
                    ClientEvent::Receipt { seq, .. } => alice.core().ack(seq),
                    other => panic!("unexpected {other:?}"),
                }
            }
            let mut got = 0;
            while got < per_round {
                if let ClientEvent::Message { seq, .. } = next(&mut bob).await {
                    got += 1;
                    last_seq = seq;
                    bob.core().ack(seq);
                }
            }
            bob.flush().await.unwrap();
        }
        (gw, rounds * per_round, last_seq)
    });
    // About 1.3 KB of log per message (record, tombstone, receipt and its
    // tombstone): several segments' worth passed through.
    // Every segment of both shards' logs, as (file name, bytes).
    let segments = || -> Vec<(String, u64)> {
        let mut s = Vec::new();
        for shard in ["shard-0", "shard-1"] {
            for e in std::fs::read_dir(dir.join(shard)).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") {
                    s.push((format!("{shard}/{name}"), e.metadata().unwrap().len()));
                }
            }
        }
        s
    };
    // Both logs start at 0; the busy one's first segment must be gone.
    let first_gone = || {
        segments()
            .iter()
            .filter(|(n, _)| n.ends_with("/00000000000000000000.log"))
            .count()
            < 2
    };
    // Two shards: 2 × live + 2 segments each, once reclaim has caught up
    // (it looks every 500 ms); it fails after 10 s if it never does.
    let on_disk = || segments().iter().map(|(_, len)| len).sum::<u64>();
    let body = gw.metrics_when(|m| {
        let live = metric(m, "gateway_live_bytes");
        live > 0 && on_disk() <= 2 * live + 4 * SEGMENT && first_gone()
    });
    let live = metric(&body, "gateway_live_bytes");
    eprintln!(
        "{messages} messages; {} segments on disk, {} B; live {live} B",
        segments().len(),
        on_disk()
    );
    assert_eq!(metric(&body, "gateway_internal_errors_total"), 0);
    // The bound holds after a restart too, and nothing acked comes back.
    let mut gw = gw;
    gw.kill_and_restart();
    run(async move || {
        let (_bob, backlog) = gw.login(2, 0, last_seq).await;
        assert_eq!(backlog, 0, "every message was acked, none came back");
    });
}

#[test]
fn a_drained_gateway_leaves_a_checkpoint_and_restarts_from_it() {
    let dir = temp_dir("e2e-checkpoint");
    let gw = Gateway::start(&dir, &["--drain-timeout-ms", "300"]);
    let mut gw = run(async move || {
        drop(gw.login(2, 0, 0).await); // bob exists, offline
        let (mut alice, _) = gw.login(1, 0, 0).await;
        for i in 0..20 {
            alice.core().send(user_address(2), 0, payload_of(i));
        }
        alice.flush().await.unwrap();
        let mut acked = 0;
        while acked < 20 {
            if let ClientEvent::Acked { .. } = next(&mut alice).await {
                acked += 1;
            }
        }
        assert_eq!(gw.admin("POST", "/drain").0, 202);
        gw
    });
    assert!(gw.child.wait().unwrap().success());
    let checkpoints: Vec<_> = ["shard-0", "shard-1"]
        .iter()
        .map(|s| dir.join(s).join(queue_engine::CHECKPOINT_FILE))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(
        checkpoints.len(),
        2,
        "each shard wrote one at the end of its drain"
    );
    gw.restart();
    let body = gw.metrics_when(|m| metric(m, "gateway_recovery_from_checkpoint") == 2);
    assert_eq!(
        metric(&body, "gateway_recovery_records"),
        0,
        "nothing after it"
    );
    run(async move || {
        let (mut bob, backlog) = gw.login(2, 0, 0).await;
        assert_eq!(backlog, 20, "the queue came back from the checkpoint");
        for i in 0..20 {
            match next(&mut bob).await {
                ClientEvent::Message { payload, .. } => assert_eq!(payload, payload_of(i)),
                other => panic!("expected message {i}, got {other:?}"),
            }
        }
    });
}
