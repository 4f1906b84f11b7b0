//! Arbitrary bytes as an MQTT byte stream: split it into packets the way a session does,
//! decode each as a first packet (CONNECT) and as a later packet in both directions and both
//! versions, and check that every rewrite of what decodes decodes again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use ztgate::protocol::mqtt::{
    ConnackProperties, Error, Packet, PacketType, QoS, Version, connack_with_limits, decode,
    decode_connect, packet_len, valid_topic_name,
};

/// The session's limit in this target: small enough that the size refusal is exercised.
const MAX_PACKET: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    loop {
        match packet_len(buf, MAX_PACKET) {
            Ok(Some(n)) => {
                assert!(
                    (2..=MAX_PACKET).contains(&n) && n <= buf.len(),
                    "packet of {n} bytes"
                );
                let (packet, rest) = buf.split_at(n);
                check_packet(packet);
                buf = rest;
            }
            Ok(None) => {
                // "Need more": an incomplete header (at most 4 length bytes) or body.
                assert!(buf.len() < MAX_PACKET + 5);
                break;
            }
            Err(Error::TooLarge { size, max }) => {
                assert!(size > max && max == MAX_PACKET);
                break;
            }
            Err(Error::Malformed(_)) => break,
            Err(e) => panic!("packet_len returned {e}"),
        }
    }
});

fn check_packet(packet: &[u8]) {
    if let Ok(connect) = decode_connect(packet) {
        assert_eq!(connect.packet(), packet);
        assert_eq!(
            connect.with_client_id(connect.client_id).as_deref(),
            Ok(packet)
        );
        let renamed = connect
            .with_client_id("ztgate-fuzz")
            .expect("a short id fits");
        let again = decode_connect(&renamed).expect("renamed CONNECT decodes");
        assert_eq!(again.client_id, "ztgate-fuzz");
        assert_eq!(again.username, connect.username);
        assert_eq!(again.will, connect.will);
        assert_eq!(again.properties, connect.properties);
    }
    for version in [Version::V311, Version::V5] {
        for from_client in [true, false] {
            if let Ok(decoded) = decode(packet, version, from_client) {
                check_decoded(packet, &decoded, version, from_client);
            }
        }
    }
}

fn check_decoded(packet: &[u8], decoded: &Packet<'_>, version: Version, from_client: bool) {
    assert_eq!(PacketType::from_byte(packet[0]), Some(decoded.kind()));
    match decoded {
        Packet::Publish(p) => {
            assert_eq!(p.packet(), packet);
            assert_eq!(p.packet_id.is_some(), p.qos != QoS::AtMostOnce);
            assert!(p.topic.is_empty() || valid_topic_name(p.topic));
            let rewritten = p.with_topic("fuzz/topic").expect("valid topic");
            match decode(&rewritten, version, from_client) {
                Ok(Packet::Publish(q)) => {
                    assert_eq!(q.topic, "fuzz/topic");
                    assert_eq!(
                        (
                            q.dup,
                            q.qos,
                            q.retain,
                            q.packet_id,
                            q.topic_alias,
                            q.payload
                        ),
                        (
                            p.dup,
                            p.qos,
                            p.retain,
                            p.packet_id,
                            p.topic_alias,
                            p.payload
                        )
                    );
                }
                other => panic!("with_topic gave {other:?}"),
            }
        }
        Packet::Subscribe(s) => {
            let n = s.filters.len();
            assert!(n >= 1);
            assert_eq!(
                s.rebuild(&vec![Some(QoS::ExactlyOnce); n]).as_deref(),
                Some(packet)
            );
            assert_eq!(s.rebuild(&vec![None; n]), None);
            // Every other entry, capped at QoS 1.
            let keep: Vec<Option<QoS>> = (0..n)
                .map(|i| (i % 2 == 0).then_some(QoS::AtLeastOnce))
                .collect();
            let rebuilt = s.rebuild(&keep).expect("at least one entry kept");
            match decode(&rebuilt, version, true) {
                Ok(Packet::Subscribe(t)) => {
                    assert_eq!(t.packet_id, s.packet_id);
                    assert_eq!(t.filters.len(), n.div_ceil(2));
                    for (got, want) in t.filters.iter().zip(s.filters.iter().step_by(2)) {
                        assert_eq!(got.filter, want.filter);
                        assert_eq!(got.qos, want.qos.min(QoS::AtLeastOnce));
                    }
                }
                other => panic!("rebuild gave {other:?}"),
            }
        }
        Packet::Connack(c) => {
            let ours = ConnackProperties {
                topic_alias_maximum: Some(2),
                maximum_packet_size: Some(MAX_PACKET as u32),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                receive_maximum: Some(16),
            };
            let same = connack_with_limits(packet, version, &ConnackProperties::default());
            assert_eq!(same.as_deref(), Ok(packet));
            let merged = connack_with_limits(packet, version, &ours).expect("CONNACK merges");
            match decode(&merged, version, false) {
                Ok(Packet::Connack(m)) => {
                    assert_eq!((m.session_present, m.reason), (c.session_present, c.reason));
                    if version == Version::V5 {
                        let p = m.properties;
                        assert!(
                            p.maximum_packet_size
                                .is_some_and(|s| s as usize <= MAX_PACKET)
                        );
                        assert!(p.maximum_qos.is_some_and(|q| q <= QoS::AtLeastOnce));
                        assert_eq!(p.retain_available, Some(false));
                        assert!(p.topic_alias_maximum.unwrap_or(0) <= 2);
                        assert!(p.receive_maximum.is_some_and(|r| r <= 16));
                    }
                }
                other => panic!("connack_with_limits gave {other:?}"),
            }
        }
        _ => {}
    }
}
