//! Groups through the client crate against the real gateway (2 shards,
//! real TLS on 127.0.0.1): create, add, remove and leave with the admin
//! rules and the member limit; fan-out once and in order to every member
//! device; ✓✓ per member device; membership through SIGKILL; a removed
//! member gets nothing new.

mod support;

use bytes::Bytes;
use client::{ClientEvent, Connection};
use support::{Gateway, metric, next, run, temp_dir};
use wire_format::fb::{ErrorCode, GroupChange, ReceiptKind};
use wire_format::{Address, device_address, group_address, user_address};

/// The next group change on `conn` (acked), skipping ✓✓ receipts.
async fn changed(conn: &mut Connection) -> (u64, u64, GroupChange, u64, Vec<u64>) {
    loop {
        return match next(conn).await {
            ClientEvent::Receipt { seq, .. } => {
                conn.core().ack(seq);
                continue;
            }
            ClientEvent::GroupChanged {
                seq,
                request_id,
                group,
                change,
                actor,
                members,
            } => {
                if seq != 0 {
                    conn.core().ack(seq);
                    conn.flush().await.unwrap();
                }
                (request_id, group, change, actor, members)
            }
            other => panic!("expected GroupChanged, got {other:?}"),
        };
    }
}

async fn refused(conn: &mut Connection) -> (ErrorCode, u64) {
    match next(conn).await {
        ClientEvent::RequestRefused {
            code, request_id, ..
        } => (code, request_id),
        other => panic!("expected a refused request, got {other:?}"),
    }
}

/// Creates a group from `admin` with `members`; every member connection in
/// `others` sees it created. Returns the group id.
async fn create(admin: &mut Connection, members: &[u64], others: &mut [&mut Connection]) -> u64 {
    admin.core().group_create(77, members);
    admin.flush().await.unwrap();
    let (request_id, group, change, _, listed) = changed(admin).await;
    assert_eq!((request_id, change), (77, GroupChange::Created));
    assert_eq!(listed, members);
    for other in others {
        let (request_id, g, change, _, _) = changed(other).await;
        assert_eq!((request_id, g, change), (0, group, GroupChange::Created));
    }
    group
}

/// Sends `n` messages to `to`; returns their server ids, in order.
async fn send_all(conn: &mut Connection, to: Address, n: usize) -> Vec<u64> {
    let ids: Vec<u64> = (0..n)
        .map(|i| {
            let payload = Bytes::from(format!("group message {i}"));
            conn.core().send(to, 0, payload)
        })
        .collect();
    conn.flush().await.unwrap();
    let mut message_ids = vec![0; n];
    let mut acked = 0;
    while acked < n {
        acked += 1;
        match next(conn).await {
            ClientEvent::Receipt { seq, .. } => {
                acked -= 1; // ✓✓ for earlier ones
                conn.core().ack(seq);
            }
            ClientEvent::Acked {
                client_msg_id,
                message_id,
                ..
            } => {
                let at = ids.iter().position(|i| *i == client_msg_id).unwrap();
                message_ids[at] = message_id;
            }
            other => panic!("expected ✓, got {other:?}"),
        }
    }
    message_ids
}

/// Receives `n` messages (acking each): (message id, to, payload).
async fn receive(conn: &mut Connection, n: usize) -> Vec<(u64, Address, Vec<u8>)> {
    let mut got = Vec::new();
    while got.len() < n {
        match next(conn).await {
            ClientEvent::Message {
                seq,
                message_id,
                to,
                payload,
                ..
            } => {
                got.push((message_id, to, payload.to_vec()));
                conn.core().ack(seq);
                conn.flush().await.unwrap();
            }
            other => panic!("expected a message, got {other:?}"),
        }
    }
    got
}

#[test]
fn create_add_remove_and_leave_follow_the_admin_rules_and_the_limit() {
    let dir = temp_dir("groups-rules");
    let gw = Gateway::start(&dir, &["--group-members-max", "3"]);
    run(async move || {
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let (mut bob, _) = gw.login(2, 0, 0).await;
        let (mut carol, _) = gw.login(3, 0, 0).await;
        let group = create(&mut alice, &[2], &mut [&mut bob]).await;

        // Bob is a member, not an admin.
        bob.core().group_add(5, group, &[3]);
        bob.flush().await.unwrap();
        assert_eq!(refused(&mut bob).await, (ErrorCode::NotGroupAdmin, 5));
        // Carol is not a member: the group is unknown to her.
        carol.core().group_add(6, group, &[4]);
        carol.flush().await.unwrap();
        assert_eq!(refused(&mut carol).await, (ErrorCode::UnknownGroup, 6));
        // Two more would make four: over the limit of three.
        alice.core().group_add(7, group, &[3, 4]);
        alice.flush().await.unwrap();
        assert_eq!(refused(&mut alice).await, (ErrorCode::GroupFull, 7));

        alice.core().group_add(8, group, &[3]);
        alice.flush().await.unwrap();
        let added = (GroupChange::Added, 1, vec![3]);
        for (conn, request) in [(&mut alice, 8), (&mut bob, 0), (&mut carol, 0)] {
            let (request_id, g, change, actor, members) = changed(conn).await;
            assert_eq!((request_id, g), (request, group));
            assert_eq!((change, actor, members), added);
        }
        // Adding her again changes nothing, and says so at once.
        alice.core().group_add(9, group, &[3]);
        alice.flush().await.unwrap();
        let (request_id, _, _, _, members) = changed(&mut alice).await;
        assert_eq!((request_id, members.len()), (9, 0));

        // Bob leaves: everyone, Bob too, is told.
        bob.core().group_remove(10, group, &[2]);
        bob.flush().await.unwrap();
        for (conn, request) in [(&mut bob, 10), (&mut alice, 0), (&mut carol, 0)] {
            let (request_id, _, change, actor, members) = changed(conn).await;
            assert_eq!(
                (request_id, change, actor, members),
                (request, GroupChange::Left, 2, vec![2])
            );
        }
        // Alice removes Carol; Carol is told she was removed.
        alice.core().group_remove(11, group, &[3]);
        alice.flush().await.unwrap();
        for (conn, request) in [(&mut alice, 11), (&mut carol, 0)] {
            let (request_id, _, change, actor, members) = changed(conn).await;
            assert_eq!(
                (request_id, change, actor, members),
                (request, GroupChange::Removed, 1, vec![3])
            );
        }
        // Carol may no longer send to it.
        let id = carol
            .core()
            .send(group_address(group), 0, Bytes::from_static(b"x"));
        carol.flush().await.unwrap();
        match next(&mut carol).await {
            ClientEvent::Refused {
                code,
                client_msg_id,
                ..
            } => assert_eq!((code, client_msg_id), (ErrorCode::UnknownGroup, id)),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Created, Carol added, Bob left, Carol removed.
        let body = gw.metrics_when(|m| metric(m, "gateway_group_changes_total") == 4);
        assert_eq!(metric(&body, "gateway_internal_errors_total"), 0);
    });
}

#[test]
fn a_group_message_reaches_every_member_device_once_in_order_with_receipts_per_device() {
    let dir = temp_dir("groups-fanout");
    let gw = Gateway::start(&dir, &[]);
    run(async move || {
        // Alice has two devices; members 2..=6 spread over both shards.
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let (mut alice2, _) = gw.login(1, 1, 0).await;
        let mut members = Vec::new();
        for user in 2..=6 {
            members.push(gw.login(user, 0, 0).await.0);
        }
        let users: Vec<u64> = (2..=6).collect();
        let mut others: Vec<&mut Connection> = members.iter_mut().collect();
        others.push(&mut alice2);
        let group = create(&mut alice, &users, &mut others).await;

        let n = 40;
        let ids = send_all(&mut alice, group_address(group), n).await;
        let expected: Vec<(u64, Address, Vec<u8>)> = (0..n)
            .map(|i| {
                (
                    ids[i],
                    group_address(group),
                    format!("group message {i}").into_bytes(),
                )
            })
            .collect();
        // The sending device's other device gets them too; it does not.
        assert_eq!(receive(&mut alice2, n).await, expected);
        for m in &mut members {
            assert_eq!(receive(m, n).await, expected);
        }
        // ✓✓ per member device, coalesced: every id once from each.
        let mut delivered: Vec<(Address, u64)> = Vec::new();
        while delivered.len() < n * (users.len() + 1) {
            match next(&mut alice).await {
                ClientEvent::Receipt {
                    kind,
                    from,
                    message_ids,
                    seq,
                } => {
                    assert_eq!(kind, ReceiptKind::Delivered);
                    delivered.extend(message_ids.into_iter().map(|id| (from, id)));
                    alice.core().ack(seq);
                    alice.flush().await.unwrap();
                }
                other => panic!("expected ✓✓, got {other:?}"),
            }
        }
        delivered.sort_unstable_by_key(|(a, id)| (a.id(), a.device(), *id));
        let mut want: Vec<(Address, u64)> = std::iter::once(device_address(1, 1))
            .chain(users.iter().map(|u| device_address(*u, 0)))
            .flat_map(|a| ids.iter().map(move |id| (a, *id)))
            .collect();
        want.sort_unstable_by_key(|(a, id)| (a.id(), a.device(), *id));
        assert_eq!(delivered, want);
    });
}

#[test]
fn membership_survives_sigkill_and_a_removed_member_gets_nothing_new() {
    let dir = temp_dir("groups-restart");
    let gw = Gateway::start(&dir, &[]);
    let (mut gw, group) = run(async move || {
        let (mut alice, _) = gw.login(1, 0, 0).await;
        let (mut bob, _) = gw.login(2, 0, 0).await;
        let (mut carol, _) = gw.login(3, 0, 0).await;
        let group = create(&mut alice, &[2, 3], &mut [&mut bob, &mut carol]).await;
        // Bob acked only the creation; he stays offline from here on.
        drop(bob);
        (gw, group)
    });
    gw.kill_and_restart();
    let (mut gw, first) = run(async move || {
        // Each resumes after the creation it acked (the ack itself may
        // have died with the process: the resume point repeats it).
        let (mut alice, _) = gw.login(1, 0, 1).await;
        let (mut carol, _) = gw.login(3, 0, 1).await;
        let ids = send_all(&mut alice, group_address(group), 1).await;
        let got = receive(&mut carol, 1).await;
        assert_eq!(got[0].0, ids[0], "the restarted gateway knows the group");

        alice.core().group_remove(4, group, &[3]);
        alice.flush().await.unwrap();
        assert_eq!(changed(&mut alice).await.2, GroupChange::Removed);
        assert_eq!(changed(&mut carol).await.2, GroupChange::Removed);
        send_all(&mut alice, group_address(group), 1).await;
        // ✓ came after every member's copy was durable: had Carol been
        // given one, it would arrive before this direct message.
        send_all(&mut alice, user_address(3), 1).await;
        let got = receive(&mut carol, 1).await;
        assert_eq!(
            got[0].1,
            user_address(3),
            "the direct message, nothing else"
        );
        (gw, ids[0])
    });
    gw.kill_and_restart();
    run(async move || {
        // Bob's queue, read back from the log: in the group's order.
        let (mut bob, backlog) = gw.login(2, 0, 1).await;
        assert_eq!(backlog, 3, "the message, Carol removed, the next message");
        let got = receive(&mut bob, 1).await;
        assert_eq!((got[0].0, got[0].1), (first, group_address(group)));
        assert_eq!(changed(&mut bob).await.2, GroupChange::Removed);
        assert_eq!(receive(&mut bob, 1).await[0].1, group_address(group));
    });
}
