//! Property tests over every frame kind: round trips through the encoder and
//! both decoders, agreement between the fast encoders and the object API,
//! and robustness against random and mutated bytes (the same entry points
//! the fuzz target calls).

use bytes::Bytes;
use proptest::collection::vec;
use proptest::prelude::*;

use crate::fb::*;
use crate::{DeliverHeader, Encoder, FrameDecoder, Limits, OutFrame, PREFIX_BYTES, decode_exact};

fn address() -> impl Strategy<Value = AddressT> {
    (any::<u64>(), any::<u32>(), 0u8..=4).prop_map(|(id, device, kind)| AddressT {
        id,
        device,
        kind: AddressKind(kind),
    })
}

fn opt_address() -> impl Strategy<Value = Option<AddressT>> {
    proptest::option::weighted(0.9, address())
}

fn ids() -> impl Strategy<Value = Option<Vec<u64>>> {
    proptest::option::of(vec(any::<u64>(), 0..40))
}

fn text(max: usize) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(proptest::string::string_regex(&format!(".{{0,{max}}}")).unwrap())
}

fn boxed<T: std::fmt::Debug + 'static>(
    s: impl Strategy<Value = T> + 'static,
    wrap: fn(Box<T>) -> BodyT,
) -> BoxedStrategy<BodyT> {
    s.prop_map(move |t| wrap(Box::new(t))).boxed()
}

/// A header body of any kind with arbitrary field values.
fn body() -> impl Strategy<Value = BodyT> {
    prop_oneof![
        boxed(
            (
                any::<u16>(),
                proptest::option::of(vec(any::<u8>(), 0..200)),
                any::<u64>(),
                text(64)
            )
                .prop_map(|(protocol_version, token, last_acked_seq, client_name)| {
                    HelloT {
                        protocol_version,
                        token,
                        last_acked_seq,
                        client_name,
                    }
                }),
            BodyT::Hello
        ),
        boxed(
            (
                any::<u16>(),
                any::<u64>(),
                any::<u32>(),
                any::<u64>(),
                any::<[u32; 4]>(),
                any::<u64>(),
            )
                .prop_map(
                    |(
                        protocol_version,
                        user,
                        device,
                        server_time_ms,
                        [hb, fmax, backlog, pmax],
                        resume_seq,
                    )| {
                        WelcomeT {
                            protocol_version,
                            user,
                            device,
                            server_time_ms,
                            heartbeat_interval_ms: hb,
                            frame_bytes_max: fmax,
                            backlog_count: backlog,
                            payload_bytes_max: pmax,
                            resume_seq,
                        }
                    }
                ),
            BodyT::Welcome
        ),
        boxed(
            (opt_address(), any::<u64>(), any::<u32>()).prop_map(|(to, client_msg_id, ttl_s)| {
                SendT {
                    to,
                    client_msg_id,
                    ttl_s,
                }
            }),
            BodyT::Send
        ),
        boxed(
            (any::<[u64; 3]>(), 0u8..3).prop_map(|([client_msg_id, message_id, t], s)| {
                ServerAckT {
                    client_msg_id,
                    message_id,
                    server_time_ms: t,
                    status: AckStatus(s),
                }
            }),
            BodyT::ServerAck
        ),
        boxed(
            (opt_address(), opt_address(), any::<[u64; 3]>()).prop_map(
                |(from, to, [seq, message_id, server_time_ms])| DeliverT {
                    from,
                    to,
                    seq,
                    message_id,
                    server_time_ms,
                }
            ),
            BodyT::Deliver
        ),
        boxed(
            (any::<u64>(), any::<bool>())
                .prop_map(|(seq, cumulative)| DeliveryAckT { seq, cumulative }),
            BodyT::DeliveryAck
        ),
        boxed(
            (
                0u8..4,
                opt_address(),
                opt_address(),
                ids(),
                any::<u64>(),
                any::<u64>()
            )
                .prop_map(|(kind, to, from, message_ids, at_ms, seq)| ReceiptT {
                    kind: ReceiptKind(kind),
                    to,
                    from,
                    message_ids,
                    at_ms,
                    seq,
                }),
            BodyT::Receipt
        ),
        boxed(
            (opt_address(), opt_address(), 0u8..4).prop_map(|(to, from, s)| TypingT {
                to,
                from,
                state: TypingState(s)
            }),
            BodyT::Typing
        ),
        boxed(
            (ids(), any::<bool>())
                .prop_map(|(users, unsubscribe)| PresenceSubscribeT { users, unsubscribe }),
            BodyT::PresenceSubscribe
        ),
        boxed(
            (any::<u64>(), 0u8..3, any::<u64>()).prop_map(|(user, s, last_seen_ms)| PresenceT {
                user,
                state: PresenceState(s),
                last_seen_ms
            }),
            BodyT::Presence
        ),
        boxed(
            (any::<u64>(), ids()).prop_map(|(request_id, members)| GroupCreateT {
                request_id,
                members
            }),
            BodyT::GroupCreate
        ),
        boxed(
            (any::<[u64; 2]>(), ids()).prop_map(|([request_id, group], members)| GroupAddT {
                request_id,
                group,
                members
            }),
            BodyT::GroupAdd
        ),
        boxed(
            (any::<[u64; 2]>(), ids()).prop_map(|([request_id, group], members)| GroupRemoveT {
                request_id,
                group,
                members
            }),
            BodyT::GroupRemove
        ),
        boxed(
            (any::<[u64; 4]>(), 0u8..5, ids()).prop_map(
                |([request_id, group, actor, seq], c, m)| GroupChangedT {
                    request_id,
                    group,
                    change: GroupChange(c),
                    actor,
                    members: m,
                    seq,
                }
            ),
            BodyT::GroupChanged
        ),
        boxed(any::<u64>().prop_map(|nonce| PingT { nonce }), BodyT::Ping),
        boxed(any::<u64>().prop_map(|nonce| PongT { nonce }), BodyT::Pong),
        boxed(
            (0u8..3, any::<u32>()).prop_map(|(r, reconnect_after_ms)| GoAwayT {
                reason: GoAwayReason(r),
                reconnect_after_ms
            }),
            BodyT::GoAway
        ),
        boxed(
            (any::<u16>(), any::<[u64; 3]>(), any::<bool>(), text(256)).prop_map(
                |(code, [client_msg_id, request_id, retry_after_ms], fatal, message)| ErrorT {
                    code: ErrorCode(code),
                    client_msg_id,
                    fatal,
                    message,
                    request_id,
                    retry_after_ms,
                }
            ),
            BodyT::Error
        ),
        boxed(
            any::<u64>().prop_map(|request_id| DevicesGetT { request_id }),
            BodyT::DevicesGet
        ),
        boxed(
            (any::<u64>(), vec(any::<(u64, u64, u32, bool)>(), 0..8)).prop_map(
                |(request_id, d)| {
                    DevicesT {
                        request_id,
                        devices: Some(
                            d.into_iter()
                                .map(|(linked_ms, last_active_ms, device, online)| DeviceInfoT {
                                    linked_ms,
                                    last_active_ms,
                                    device,
                                    online,
                                })
                                .collect(),
                        ),
                    }
                }
            ),
            BodyT::Devices
        ),
        boxed(
            (any::<u64>(), any::<u32>())
                .prop_map(|(request_id, device)| DeviceUnlinkT { request_id, device }),
            BodyT::DeviceUnlink
        ),
        boxed(
            (any::<[u64; 2]>(), any::<u32>(), 0u8..2).prop_map(|([request_id, seq], device, c)| {
                DeviceChangedT {
                    request_id,
                    device,
                    change: DeviceChange(c),
                    seq,
                }
            }),
            BodyT::DeviceChanged
        ),
        boxed(
            (any::<u64>(), 0u8..3, 0u8..3).prop_map(|(request_id, l, r)| SettingsSetT {
                request_id,
                last_seen: LastSeenVisibility(l),
                read_receipts: Switch(r),
            }),
            BodyT::SettingsSet
        ),
        boxed(
            (any::<u64>(), 0u8..3, 0u8..3).prop_map(|(request_id, l, r)| SettingsT {
                request_id,
                last_seen: LastSeenVisibility(l),
                read_receipts: Switch(r),
            }),
            BodyT::Settings
        ),
        boxed(
            (any::<u64>(), vec(any::<u8>(), 0..512), text(32)).prop_map(
                |(request_id, token, platform)| PushRegisterT {
                    request_id,
                    token: Some(token),
                    platform,
                }
            ),
            BodyT::PushRegister
        ),
        boxed(
            any::<u64>().prop_map(|request_id| DoneT { request_id }),
            BodyT::Done
        ),
        boxed(
            (
                0u8..2,
                vec(any::<([u64; 3], [u32; 2])>(), 0..16),
                any::<u64>()
            )
                .prop_map(|(cause, senders, seq)| GapT {
                    cause: GapCause(cause),
                    senders: Some(
                        senders
                            .into_iter()
                            .map(|([first_ms, last_ms, user], [count, device])| GapSenderT {
                                first_ms,
                                last_ms,
                                user,
                                count,
                                device,
                            })
                            .collect()
                    ),
                    seq,
                }),
            BodyT::Gap
        ),
    ]
}

/// A header and a payload fit for its kind.
fn frame() -> impl Strategy<Value = (FrameT, Bytes)> {
    (body(), vec(any::<u8>(), 0..2000)).prop_map(|(body, payload)| {
        let kind = crate::FrameKind::from_wire(body.body_type()).unwrap();
        let payload = if kind.allows_payload() {
            Bytes::from(payload)
        } else {
            Bytes::new()
        };
        let payload_len = u32::try_from(payload.len()).unwrap();
        (FrameT { body, payload_len }, payload)
    })
}

fn addr(a: &AddressT) -> Address {
    a.pack()
}

/// Encodes `header` with the dedicated fast method for its kind, if any.
fn encode_fast(enc: &mut Encoder, header: &FrameT, payload: Bytes) -> Option<OutFrame> {
    let none = AddressT::default();
    let a = |o: &Option<AddressT>| addr(o.as_ref().unwrap_or(&none));
    let out = match &header.body {
        BodyT::Send(s) => enc.send(a(&s.to), s.client_msg_id, s.ttl_s, payload),
        BodyT::Deliver(d) => {
            let h = DeliverHeader {
                from: a(&d.from),
                to: a(&d.to),
                seq: d.seq,
                message_id: d.message_id,
                server_time_ms: d.server_time_ms,
            };
            enc.deliver(&h, payload)
        }
        BodyT::ServerAck(s) => {
            enc.server_ack(s.client_msg_id, s.message_id, s.server_time_ms, s.status)
        }
        BodyT::DeliveryAck(d) => enc.delivery_ack(d.seq, d.cumulative),
        BodyT::Receipt(r) => {
            let ids = r.message_ids.as_deref().unwrap_or(&[]);
            enc.receipt(r.kind, a(&r.to), a(&r.from), ids, r.at_ms, r.seq)
        }
        BodyT::Typing(t) => enc.typing(a(&t.to), a(&t.from), t.state),
        BodyT::Presence(p) => enc.presence(p.user, p.state, p.last_seen_ms),
        BodyT::Ping(p) => enc.ping(p.nonce),
        BodyT::Pong(p) => enc.pong(p.nonce),
        BodyT::Error(e) => enc.error_full(&crate::ErrorHeader {
            code: e.code,
            client_msg_id: e.client_msg_id,
            request_id: e.request_id,
            fatal: e.fatal,
            message: e.message.as_deref().unwrap_or(""),
            retry_after_ms: e.retry_after_ms,
        }),
        BodyT::GroupChanged(g) => enc.group_changed(&crate::GroupChangedHeader {
            request_id: g.request_id,
            group: g.group,
            change: g.change,
            actor: g.actor,
            members: g.members.as_deref().unwrap_or(&[]),
            seq: g.seq,
        }),
        BodyT::Devices(d) => {
            let list: Vec<_> = d.devices.iter().flatten().map(DeviceInfoT::pack).collect();
            enc.devices(d.request_id, &list)
        }
        BodyT::DeviceChanged(d) => enc.device_changed(d.request_id, d.device, d.change, d.seq),
        BodyT::SettingsSet(s) => enc.settings_set(s.request_id, s.last_seen, s.read_receipts),
        BodyT::Settings(s) => enc.settings(s.request_id, s.last_seen, s.read_receipts),
        BodyT::PushRegister(p) => enc.push_register(
            p.request_id,
            p.token.as_deref().unwrap_or(&[]),
            p.platform.as_deref().unwrap_or(""),
        ),
        BodyT::Done(d) => enc.done(d.request_id),
        BodyT::Gap(g) => {
            let list: Vec<_> = g.senders.iter().flatten().map(GapSenderT::pack).collect();
            enc.gap(g.cause, &list, g.seq)
        }
        _ => return None,
    };
    Some(out.unwrap())
}

/// The fast encoders always write optional addresses and vectors; the object
/// API writes `None` as absent. Normalise to compare the two.
fn with_present_fields(header: &FrameT) -> FrameT {
    let mut header = header.clone();
    let fill = |o: &mut Option<AddressT>| {
        o.get_or_insert_with(AddressT::default);
    };
    match &mut header.body {
        BodyT::Send(s) => fill(&mut s.to),
        BodyT::Deliver(d) => {
            fill(&mut d.from);
            fill(&mut d.to);
        }
        BodyT::Receipt(r) => {
            fill(&mut r.to);
            fill(&mut r.from);
            r.message_ids.get_or_insert_with(Vec::new);
        }
        BodyT::Typing(t) => {
            fill(&mut t.to);
            fill(&mut t.from);
        }
        BodyT::Error(e) => {
            e.message.get_or_insert_with(String::new);
        }
        BodyT::GroupChanged(g) => {
            g.members.get_or_insert_with(Vec::new);
        }
        BodyT::Devices(d) => {
            d.devices.get_or_insert_with(Vec::new);
        }
        BodyT::PushRegister(p) => {
            p.token.get_or_insert_with(Vec::new);
            p.platform.get_or_insert_with(String::new);
        }
        BodyT::Gap(g) => {
            g.senders.get_or_insert_with(Vec::new);
        }
        _ => {}
    }
    header
}

/// Zero is every field's default: the value `force_defaults` decides about,
/// and one random values almost never hit.
#[test]
fn fast_encoders_match_the_object_api_on_zero_values() {
    let mut enc = Encoder::new(Limits::default());
    let bodies = [
        BodyT::Send(Box::default()),
        BodyT::Deliver(Box::default()),
        BodyT::ServerAck(Box::default()),
        BodyT::DeliveryAck(Box::new(DeliveryAckT {
            seq: 0,
            cumulative: false,
        })),
        BodyT::Receipt(Box::default()),
        BodyT::Typing(Box::default()),
        BodyT::Presence(Box::default()),
        BodyT::Ping(Box::default()),
        BodyT::Pong(Box::default()),
        BodyT::Error(Box::default()),
        BodyT::GroupChanged(Box::default()),
        BodyT::Devices(Box::default()),
        BodyT::DeviceChanged(Box::default()),
        BodyT::SettingsSet(Box::default()),
        BodyT::Settings(Box::default()),
        BodyT::PushRegister(Box::default()),
        BodyT::Done(Box::default()),
        BodyT::Gap(Box::default()),
    ];
    for body in bodies {
        let header = FrameT {
            body,
            payload_len: 0,
        };
        let fast = encode_fast(&mut enc, &header, Bytes::new()).unwrap();
        let reference = enc
            .encode_owned(&with_present_fields(&header), Bytes::new())
            .unwrap();
        assert_eq!(fast.to_vec(), reference.to_vec(), "{header:?}");
        let decoded = decode_exact(Bytes::from(fast.to_vec()), &Limits::default()).unwrap();
        assert_eq!(decoded.to_owned_header(), with_present_fields(&header));
    }
}

/// `wire` in pieces whose lengths cycle through `cuts`.
fn split_at_cuts<'a>(wire: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let (mut at, mut cut, mut chunks) = (0, cuts.iter().cycle(), Vec::new());
    while at < wire.len() {
        let end = (at + cut.next().unwrap()).min(wire.len());
        chunks.push(&wire[at..end]);
        at = end;
    }
    chunks
}

/// Every frame's bytes and the first error, through `FrameDecoder::feed`.
fn by_feed(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut dec = FrameDecoder::new(Limits::default());
    let mut got = Vec::new();
    for chunk in chunks {
        if let Err(e) = dec.feed(chunk, |f| got.push(f.as_slice().to_vec())) {
            return (got, Some(e.to_string()));
        }
    }
    (got, None)
}

/// The same through `extend_from_slice` and `decode`.
fn by_decode(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, Option<String>) {
    let mut dec = FrameDecoder::new(Limits::default());
    let mut got = Vec::new();
    for chunk in chunks {
        dec.extend_from_slice(chunk);
        loop {
            match dec.decode() {
                Ok(Some(f)) => got.push(f.as_bytes().to_vec()),
                Ok(None) => break,
                Err(e) => return (got, Some(e.to_string())),
            }
        }
    }
    (got, None)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_frame_round_trips((header, payload) in frame()) {
        let limits = Limits::default();
        let mut enc = Encoder::new(limits);
        let out = enc.encode_owned(&header, payload.clone()).unwrap();
        let wire = out.to_vec();
        prop_assert_eq!(out.len(), wire.len(), "stated length = bytes written");
        let prefix = u32::from_le_bytes(wire[..PREFIX_BYTES].try_into().unwrap()) as usize;
        prop_assert_eq!(PREFIX_BYTES + prefix + payload.len(), wire.len());

        let frame = decode_exact(Bytes::from(wire.clone()), &limits).unwrap();
        prop_assert_eq!(frame.len(), wire.len());
        prop_assert_eq!(frame.header_len(), prefix);
        prop_assert_eq!(frame.to_owned_header(), header.clone());
        prop_assert_eq!(frame.payload(), &payload[..]);

        // Re-encoding what was decoded gives the same bytes (canonical).
        let again = enc.encode_owned(&frame.to_owned_header(), frame.payload_bytes()).unwrap();
        prop_assert_eq!(again.to_vec(), wire);
    }

    #[test]
    fn fast_encoders_match_the_object_api((header, payload) in frame()) {
        let mut enc = Encoder::new(Limits::default());
        if let Some(fast) = encode_fast(&mut enc, &header, payload.clone()) {
            let reference = enc.encode_owned(&with_present_fields(&header), payload).unwrap();
            prop_assert_eq!(fast.to_vec(), reference.to_vec());
        }
    }

    #[test]
    fn a_stream_split_anywhere_yields_the_same_frames(
        frames in vec(frame(), 1..12),
        cuts in vec(1usize..300, 1..40),
    ) {
        let limits = Limits::default();
        let mut enc = Encoder::new(limits);
        let wire: Vec<u8> = frames
            .iter()
            .flat_map(|(h, p)| enc.encode_owned(h, p.clone()).unwrap().to_vec())
            .collect();
        let mut dec = FrameDecoder::new(limits);
        let mut got = Vec::new();
        let (mut at, mut cut) = (0, cuts.iter().cycle());
        while at < wire.len() {
            let end = (at + cut.next().unwrap()).min(wire.len());
            dec.extend_from_slice(&wire[at..end]);
            at = end;
            while let Some(frame) = dec.decode().unwrap() {
                got.push((frame.to_owned_header(), frame.payload_bytes()));
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(dec.buffered_len(), 0);
    }

    #[test]
    fn feed_and_decode_agree_on_any_split_of_any_stream(
        frames in vec(frame(), 1..8),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cuts in vec(1usize..300, 1..40),
    ) {
        let mut enc = Encoder::new(Limits::default());
        let mut wire: Vec<u8> = frames
            .iter()
            .flat_map(|(h, p)| enc.encode_owned(h, p.clone()).unwrap().to_vec())
            .collect();
        for (index, value) in flips {
            let i = index.index(wire.len());
            wire[i] = value;
        }
        let chunks = split_at_cuts(&wire, &cuts);
        let (fed, fed_error) = by_feed(&chunks);
        let (decoded, decode_error) = by_decode(&chunks);
        prop_assert_eq!(fed, decoded);
        prop_assert_eq!(fed_error, decode_error);
    }

    #[test]
    fn random_bytes_never_panic(data in vec(any::<u8>(), 0..600)) {
        crate::fuzz::decode_stream(&data);
        crate::fuzz::decode_one(&data);
    }

    #[test]
    fn mutated_frames_never_panic(
        (header, payload) in frame(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        split in any::<u8>(),
    ) {
        let mut wire = Encoder::new(Limits::default()).encode_owned(&header, payload).unwrap().to_vec();
        for (index, value) in flips {
            let i = index.index(wire.len());
            wire[i] = value;
        }
        crate::fuzz::decode_one(&wire);
        let mut stream = vec![split];
        stream.extend_from_slice(&wire);
        crate::fuzz::decode_stream(&stream);
    }
}
