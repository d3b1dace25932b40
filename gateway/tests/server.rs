//! The real gateway over real TLS on 127.0.0.1: the message path end to
//! end, backlog and resume, restart after SIGKILL, and bad input.

mod support;

use std::time::Duration;

use bytes::Bytes;
use client::ClientEvent;
use support::{Gateway, next, run, temp_dir};
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
    });
}
