//! Linked devices through the client crate against the real gateway: the
//! device list, unlinking (by another device and by the operator), the
//! per-user limit, and all of it through SIGKILL.

mod support;

use bytes::Bytes;
use client::{ClientCore, ClientEvent, Connection};
use support::{Gateway, metric, next, run, temp_dir};
use wire_format::fb::{DeviceChange, ErrorCode};
use wire_format::user_address;

/// Connects `user`/`device` and returns its first event (a `Welcome`, or
/// the `Closed` of a refused device).
async fn first_event(gw: &Gateway, user: u64, device: u32) -> ClientEvent {
    let core = ClientCore::new(&gw.token(user, device, 3600), 0, 1);
    let mut conn = Connection::connect(gw.addr, gw.tls(), "localhost", core)
        .await
        .unwrap();
    next(&mut conn).await
}

fn closed(code: ErrorCode) -> ClientEvent {
    ClientEvent::Closed { code: Some(code) }
}

/// The devices `conn`'s user has, as (device, online).
async fn devices(conn: &mut Connection, request_id: u64) -> Vec<(u32, bool)> {
    conn.core().devices_get(request_id);
    conn.flush().await.unwrap();
    match next(conn).await {
        ClientEvent::Devices {
            request_id: r,
            devices,
        } => {
            assert_eq!(r, request_id);
            devices.iter().map(|d| (d.device(), d.online())).collect()
        }
        other => panic!("expected Devices, got {other:?}"),
    }
}

/// The next message's payload on `conn` (acked).
async fn message(conn: &mut Connection) -> Vec<u8> {
    match next(conn).await {
        ClientEvent::Message { seq, payload, .. } => {
            conn.core().ack(seq);
            conn.flush().await.unwrap();
            payload.to_vec()
        }
        other => panic!("expected a message, got {other:?}"),
    }
}

#[test]
fn devices_are_listed_unlinked_and_limited_and_it_survives_sigkill() {
    let dir = temp_dir("devices");
    let gw = Gateway::start(&dir, &["--devices-per-user-max", "2"]);
    let mut gw = run(async move || {
        let (mut phone, _) = gw.login(1, 0, 0).await;
        let (mut laptop, _) = gw.login(1, 1, 0).await;
        assert_eq!(devices(&mut phone, 3).await, [(0, true), (1, true)]);
        // A third device is over the limit of two.
        assert_eq!(
            first_event(&gw, 1, 2).await,
            closed(ErrorCode::TooManyDevices)
        );

        // A message for the user while the laptop is away stays queued
        // for it, until it is unlinked.
        drop(laptop);
        let (mut bob, _) = gw.login(2, 0, 0).await;
        bob.core()
            .send(user_address(1), 0, Bytes::from_static(b"before"));
        bob.flush().await.unwrap();
        assert_eq!(message(&mut phone).await, b"before");

        phone.core().device_unlink(4, 1);
        phone.flush().await.unwrap();
        match next(&mut phone).await {
            ClientEvent::DeviceChanged {
                seq,
                request_id,
                device,
                change,
            } => {
                assert_eq!((request_id, device, change), (4, 1, DeviceChange::Unlinked));
                phone.core().ack(seq);
                phone.flush().await.unwrap();
            }
            other => panic!("expected DeviceChanged, got {other:?}"),
        }
        phone.core().device_unlink(5, 9);
        phone.flush().await.unwrap();
        match next(&mut phone).await {
            ClientEvent::RequestRefused {
                code, request_id, ..
            } => {
                assert_eq!((code, request_id), (ErrorCode::UnknownDevice, 5))
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(
            first_event(&gw, 1, 1).await,
            closed(ErrorCode::DeviceUnlinked)
        );
        // Its room is free: a new device links, and gets only what comes
        // after it.
        laptop = gw.login(1, 2, 0).await.0;
        assert_eq!(devices(&mut phone, 6).await, [(0, true), (2, true)]);
        bob.core()
            .send(user_address(1), 0, Bytes::from_static(b"after"));
        bob.flush().await.unwrap();
        assert_eq!(message(&mut laptop).await, b"after");
        assert_eq!(message(&mut phone).await, b"after");
        gw
    });
    gw.kill_and_restart();
    run(async move || {
        assert_eq!(
            first_event(&gw, 1, 1).await,
            closed(ErrorCode::DeviceUnlinked)
        );
        // Each resumes after what it acked (the acks may have died with
        // the process: the resume point repeats them).
        let (mut phone, backlog) = gw.login(1, 0, 3).await;
        assert_eq!(backlog, 0);
        let (mut laptop, _) = gw.login(1, 2, 1).await;
        assert_eq!(devices(&mut phone, 7).await, [(0, true), (2, true)]);

        // The operator unlinks the laptop: its session ends with the code.
        let (status, body) = gw.admin("GET", "/devices?user=1");
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("\"device\":2"), "{body}");
        let (status, body) = gw.admin("POST", "/unlink?user=1&device=2");
        assert_eq!((status, body.as_str()), (200, "{\"unlinked\":true}"));
        assert_eq!(next(&mut laptop).await, closed(ErrorCode::DeviceUnlinked));
        let (status, _) = gw.admin("POST", "/unlink?user=1&device=2");
        assert_eq!(status, 404, "already unlinked");
        match next(&mut phone).await {
            ClientEvent::DeviceChanged {
                request_id, device, ..
            } => assert_eq!((request_id, device), (0, 2)),
            other => panic!("expected DeviceChanged, got {other:?}"),
        }
        // Only the operator's unlink is in this process's counters.
        let body = gw.metrics_when(|m| metric(m, "gateway_devices_unlinked_total") == 1);
        assert_eq!(metric(&body, "gateway_internal_errors_total"), 0);
    });
}
