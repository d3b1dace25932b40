//! Gap notices through the client crate against the real gateway: a
//! device is told, on its next connection, which messages were dropped
//! before it read them (a full queue skipping it for group messages, TTL
//! expiry), and the notice survives SIGKILL like any queued entry.

mod support;

use bytes::Bytes;
use client::{ClientEvent, Connection};
use support::{Gateway, metric, next, run, temp_dir};
use wire_format::fb::GapCause;
use wire_format::{group_address, user_address};

/// Reads `conn`'s backlog (acking it): (messages, gap notices).
async fn backlog(
    conn: &mut Connection,
    entries: u32,
) -> (usize, Vec<(GapCause, Vec<(u64, u32, u32)>)>) {
    let (mut messages, mut gaps) = (0, Vec::new());
    for _ in 0..entries {
        match next(conn).await {
            ClientEvent::Message { seq, .. } => {
                messages += 1;
                conn.core().ack(seq);
            }
            ClientEvent::Gap {
                seq,
                cause,
                senders,
            } => {
                let who = senders
                    .iter()
                    .map(|s| (s.user(), s.device(), s.count()))
                    .collect();
                gaps.push((cause, who));
                conn.core().ack(seq);
            }
            ClientEvent::GroupChanged { seq, .. } => conn.core().ack(seq),
            other => panic!("unexpected {other:?}"),
        }
    }
    conn.flush().await.unwrap();
    (messages, gaps)
}

#[test]
fn a_member_a_full_queue_skips_is_told_on_its_next_connection_even_after_sigkill() {
    let dir = temp_dir("gap-full");
    let gw = Gateway::start(&dir, &["--queue-messages-max", "2"]);
    let mut gw = run(async move || {
        let (bob, _) = gw.login(2, 0, 0).await; // linked, then away
        drop(bob);
        let (mut alice, _) = gw.login(1, 0, 0).await;
        alice.core().group_create(1, &[2]);
        alice.flush().await.unwrap();
        let group = loop {
            if let ClientEvent::GroupChanged { group, seq, .. } = next(&mut alice).await {
                alice.core().ack(seq);
                break group;
            }
        };
        for _ in 0..5 {
            alice
                .core()
                .send(group_address(group), 0, Bytes::from_static(b"hello all"));
        }
        alice.flush().await.unwrap();
        let mut acked = 0;
        while acked < 5 {
            if let ClientEvent::Acked { .. } = next(&mut alice).await {
                acked += 1;
            }
        }
        gw.metrics_when(|m| metric(m, "gateway_gap_notices_total") >= 1);
        gw
    });
    gw.kill_and_restart();
    run(async move || {
        let (mut bob, count) = gw.login(2, 0, 0).await;
        // The group change, two messages (the queue's limit), the notice.
        assert_eq!(count, 4);
        let (messages, gaps) = backlog(&mut bob, count).await;
        assert_eq!(messages, 2);
        assert_eq!(gaps, [(GapCause::QueueFull, vec![(1, 0, 3)])]);
    });
}

#[test]
fn a_message_whose_ttl_runs_out_unread_is_told_as_a_gap() {
    let dir = temp_dir("gap-ttl");
    let gw = Gateway::start(&dir, &[]);
    run(async move || {
        let (bob, _) = gw.login(2, 0, 0).await;
        drop(bob);
        let (mut alice, _) = gw.login(1, 0, 0).await;
        alice
            .core()
            .send(user_address(2), 1, Bytes::from_static(b"soon gone"));
        alice
            .core()
            .send(user_address(2), 0, Bytes::from_static(b"stays"));
        alice.flush().await.unwrap();
        // The sender hears of the expiry as a receipt.
        let expired = async {
            loop {
                if let ClientEvent::Receipt { kind, .. } = next(&mut alice).await
                    && kind == wire_format::fb::ReceiptKind::Expired
                {
                    return;
                }
            }
        };
        expired.await;
        let (mut bob, count) = gw.login(2, 0, 0).await;
        assert_eq!(count, 2, "the message that stayed and the notice");
        let (messages, gaps) = backlog(&mut bob, count).await;
        assert_eq!(messages, 1);
        assert_eq!(gaps, [(GapCause::Expired, vec![(1, 0, 1)])]);
        let body = gw.metrics_when(|m| metric(m, "gateway_gap_messages_total") == 1);
        assert_eq!(metric(&body, "gateway_gap_notices_total"), 1);
    });
}
