//! Unit tests of the MQTT codec: one hostile packet per rule, spelled out in hex.

// The parent module denies these for hostile input; in a test a panic is a failure report.
#![allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]

use super::*;

use Version::{V5, V311};

/// Spaced hex ("30 05 00 03") and 'quoted ASCII' pieces into bytes.
fn h(spec: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in spec.split_whitespace() {
        if let Some(text) = piece.strip_prefix('\'').and_then(|p| p.strip_suffix('\'')) {
            out.extend_from_slice(text.as_bytes());
        } else {
            out.push(u8::from_str_radix(piece, 16).expect("hex byte"));
        }
    }
    out
}

/// `body` behind a fixed header with a correct remaining length.
fn pkt(first: u8, body: &str) -> Vec<u8> {
    let body = h(body);
    let mut out = vec![first];
    build::push_varint(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

fn client(packet: &[u8], version: Version) -> Result<Packet<'_>, Error> {
    decode(packet, version, true)
}

fn server(packet: &[u8], version: Version) -> Result<Packet<'_>, Error> {
    decode(packet, version, false)
}

fn malformed(result: Result<impl fmt::Debug, Error>, why: &str) {
    match result {
        Err(Error::Malformed(m)) => assert!(m.contains(why), "{m:?} does not mention {why:?}"),
        other => panic!("expected malformed ({why}), got {other:?}"),
    }
}

fn protocol(result: Result<impl fmt::Debug, Error>, why: &str) {
    match result {
        Err(Error::Protocol(m)) => assert!(m.contains(why), "{m:?} does not mention {why:?}"),
        other => panic!("expected a protocol error ({why}), got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

#[test]
fn packet_len_frames_from_the_fixed_header() {
    assert_eq!(packet_len(&[], 100), Ok(None));
    assert_eq!(packet_len(&[0x30], 100), Ok(None));
    assert_eq!(packet_len(&[0xC0, 0x00], 100), Ok(Some(2)));
    assert_eq!(packet_len(&[0xC0, 0x00, 0xC0], 100), Ok(Some(2)));
    assert_eq!(packet_len(&[0x30, 0x02, 0x00], 100), Ok(None));
    // 128 bytes of body: two length bytes.
    let mut big = vec![0x30, 0x80, 0x01];
    assert_eq!(packet_len(&big, 1000), Ok(None));
    big.resize(131, 0);
    assert_eq!(packet_len(&big, 1000), Ok(Some(131)));
    // The largest remaining length, four bytes.
    let max = [0x30, 0xFF, 0xFF, 0xFF, 0x7F];
    assert_eq!(
        packet_len(&max, usize::MAX),
        Ok(None),
        "valid, body still missing"
    );
    assert_eq!(
        packet_len(&max, 1 << 20),
        Err(Error::TooLarge {
            size: MAX_REMAINING_LENGTH + 5,
            max: 1 << 20
        })
    );
    // Exactly at the limit is fine, one byte over is not.
    assert_eq!(packet_len(&[0xC0, 0x00], 2), Ok(Some(2)));
    assert_eq!(
        packet_len(&[0x30, 0x01], 2),
        Err(Error::TooLarge { size: 3, max: 2 })
    );
}

#[test]
fn packet_len_refuses_bad_headers() {
    malformed(packet_len(&[0x00, 0x00], 100), "type 0");
    malformed(packet_len(&[0x0F], 100), "type 0");
    assert_eq!(packet_len(&[0x30, 0x80, 0x80, 0x80], 1 << 30), Ok(None));
    malformed(
        packet_len(&[0x30, 0x80, 0x80, 0x80, 0x80], 1 << 30),
        "longer than 4 bytes",
    );
    malformed(
        packet_len(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], 1 << 30),
        "longer than 4 bytes",
    );
    malformed(packet_len(&[0x30, 0x80, 0x00], 100), "minimally");
    malformed(packet_len(&[0x30, 0x81, 0x80, 0x00], 1 << 30), "minimally");
}

#[test]
fn decode_needs_exactly_one_packet() {
    malformed(client(&[], V5), "empty");
    malformed(client(&[0xC0], V5), "shorter than its fixed header");
    malformed(client(&[0xC0, 0x00, 0x00], V5), "does not match");
    malformed(client(&[0x40, 0x02, 0x00], V5), "does not match");
    malformed(decode_connect(&[0x10, 0x01]), "does not match");
}

#[test]
fn fixed_header_flags_are_checked() {
    malformed(client(&h("60 02 00 01"), V311), "flags");
    assert!(client(&h("62 02 00 01"), V311).is_ok());
    malformed(client(&pkt(0x80, "00 01 00 01 'a' 00"), V311), "flags");
    malformed(client(&pkt(0xA0, "00 01 00 01 'a'"), V311), "flags");
    malformed(client(&h("41 02 00 01"), V311), "flags");
    malformed(client(&h("C1 00"), V5), "flags");
    malformed(server(&h("D8 00"), V5), "flags");
    malformed(client(&h("E2 00"), V5), "flags");
    malformed(server(&h("21 02 00 00"), V311), "flags");
}

// ---------------------------------------------------------------------------------------------
// CONNECT
// ---------------------------------------------------------------------------------------------

/// A 3.1.1 CONNECT with these flags and this payload (keep alive 60).
fn connect311(flags: u8, payload: &str) -> Vec<u8> {
    pkt(
        0x10,
        &format!("00 04 'MQTT' 04 {flags:02x} 00 3c {payload}"),
    )
}

/// A v5 CONNECT with these flags, properties and payload.
fn connect5(flags: u8, props: &str, payload: &str) -> Vec<u8> {
    let p = h(props);
    pkt(
        0x10,
        &format!(
            "00 04 'MQTT' 05 {flags:02x} 00 3c {:02x} {props} {payload}",
            p.len()
        ),
    )
}

#[test]
fn connect_decodes_every_field() {
    // Will (QoS 2, retain), user name and password, clean session.
    let bytes = connect311(
        0b1111_0110,
        "00 02 'id' 00 03 'w/t' 00 02 'hi' 00 01 'u' 00 02 'pw'",
    );
    let c = decode_connect(&bytes).unwrap();
    assert_eq!(c.version, V311);
    assert!(c.clean_start);
    assert_eq!(c.keep_alive, 60);
    assert_eq!(c.client_id, "id");
    assert_eq!(c.username, Some("u"));
    assert!(c.has_password);
    assert_eq!(
        c.will,
        Some(Will {
            topic: "w/t",
            qos: QoS::ExactlyOnce,
            retain: true,
            payload_len: 2,
            properties_len: 0,
        })
    );
    assert_eq!(c.properties, ConnectProperties::default());
    assert_eq!(c.packet(), &bytes[..]);
    // The Debug form never shows the password.
    assert!(!format!("{c:?}").contains("pw"));

    let bytes = connect5(
        0x02,
        "11 00 00 01 2c 21 00 14 27 00 01 00 00 22 00 0a 15 00 04 'SCRM' 16 00 01 ff 26 00 01 'k' 00 01 'v' 17 01 19 00",
        "00 00",
    );
    let c = decode_connect(&bytes).unwrap();
    assert_eq!(c.version, V5);
    assert_eq!(c.client_id, "");
    assert_eq!(
        c.properties,
        ConnectProperties {
            session_expiry_interval: Some(300),
            receive_maximum: Some(20),
            maximum_packet_size: Some(65_536),
            topic_alias_maximum: Some(10),
            has_authentication_method: true,
        }
    );
    // v5 allows a password without a user name.
    let bytes = connect5(0x42, "", "00 01 'a' 00 02 'pw'");
    let c = decode_connect(&bytes).unwrap();
    assert!(c.has_password && c.username.is_none());
    // v5 will properties.
    let bytes = connect5(
        0x0E,
        "",
        "00 01 'a' 0c 18 00 00 00 0a 01 01 02 00 00 00 3c 00 01 't' 00 00",
    );
    let c = decode_connect(&bytes).unwrap();
    assert_eq!(c.will.unwrap().qos, QoS::AtLeastOnce);
}

#[test]
fn connect_refuses_other_protocols() {
    let mqisdp = pkt(0x10, "00 06 'MQIsdp' 03 02 00 3c 00 01 'a'");
    assert_eq!(
        decode_connect(&mqisdp).unwrap_err(),
        Error::UnsupportedVersion(3)
    );
    let level3 = pkt(0x10, "00 04 'MQTT' 03 02 00 3c 00 01 'a'");
    assert_eq!(
        decode_connect(&level3).unwrap_err(),
        Error::UnsupportedVersion(3)
    );
    let level6 = pkt(0x10, "00 04 'MQTT' 06 02 00 3c 00 01 'a'");
    assert_eq!(
        decode_connect(&level6).unwrap_err(),
        Error::UnsupportedVersion(6)
    );
    let other = pkt(0x10, "00 04 'MQTX' 04 02 00 3c 00 01 'a'");
    assert_eq!(
        decode_connect(&other).unwrap_err(),
        Error::UnsupportedVersion(4)
    );
    assert_eq!(Error::UnsupportedVersion(3).reason_code(), 0x84);
    malformed(decode_connect(&pkt(0x10, "00 04 'MQTT'")), "CONNECT");
    malformed(decode_connect(&pkt(0x10, "00 05 'MQTT'")), "protocol name");
}

#[test]
fn connect_flag_rules() {
    let ok = connect311(0x02, "00 01 'a'");
    assert!(decode_connect(&ok).is_ok());
    let mut flags_in_header = ok.clone();
    flags_in_header[0] = 0x12;
    malformed(decode_connect(&flags_in_header), "flags");
    malformed(
        decode_connect(&connect311(0x03, "00 01 'a'")),
        "reserved flag",
    );
    malformed(
        decode_connect(&connect311(0x08, "00 01 'a'")),
        "without the will flag",
    );
    malformed(
        decode_connect(&connect311(0x20, "00 01 'a'")),
        "without the will flag",
    );
    malformed(
        decode_connect(&connect311(0x1C, "00 01 'a' 00 01 't' 00 00")),
        "will QoS 3",
    );
    malformed(
        decode_connect(&connect311(0x42, "00 01 'a' 00 02 'pw'")),
        "password flag without user name",
    );
    malformed(
        decode_connect(&connect311(0x02, "00 01 'a' 00")),
        "trailing bytes",
    );
    malformed(
        decode_connect(&connect311(0x82, "00 01 'a'")),
        "too short for the user name",
    );
    malformed(
        decode_connect(&connect311(0x06, "00 01 'a' 00 03 'a/#' 00 00")),
        "will topic",
    );
    malformed(
        decode_connect(&connect311(0x02, "00 02 61 00")),
        "client identifier",
    );
    malformed(
        decode_connect(&connect311(0x02, "00 02 c3 28")),
        "UTF-8 or U+0000 in client identifier",
    );
    malformed(
        decode_connect(&connect311(0x82, "00 01 'a' 00 01 00")),
        "user name",
    );
    protocol(decode_connect(&h("c0 00")), "not CONNECT");
}

#[test]
fn connect_properties_rules() {
    protocol(
        decode_connect(&connect5(0x02, "21 00 00", "00 01 'a'")),
        "receive maximum 0",
    );
    protocol(
        decode_connect(&connect5(0x02, "27 00 00 00 00", "00 01 'a'")),
        "maximum packet size 0",
    );
    protocol(
        decode_connect(&connect5(0x02, "21 00 01 21 00 02", "00 01 'a'")),
        "more than once",
    );
    malformed(
        decode_connect(&connect5(0x02, "23 00 01", "00 01 'a'")),
        "not allowed in CONNECT",
    );
    malformed(
        decode_connect(&connect5(0x02, "24 01", "00 01 'a'")),
        "not allowed in CONNECT",
    );
    malformed(
        decode_connect(&connect5(0x02, "05 00", "00 01 'a'")),
        "unknown property",
    );
    malformed(
        decode_connect(&connect5(0x02, "ff 00", "00 01 'a'")),
        "unknown property",
    );
    protocol(
        decode_connect(&connect5(0x02, "17 02", "00 01 'a'")),
        "request problem information",
    );
    protocol(
        decode_connect(&connect5(0x02, "16 00 01 ff", "00 01 'a'")),
        "authentication data without",
    );
    malformed(
        decode_connect(&connect5(0x02, "26 00 01 'k' 00 02 c0 80", "00 01 'a'")),
        "user property",
    );
    malformed(
        decode_connect(&connect5(0x02, "11 00 00", "00 01 'a'")),
        "property value",
    );
    // Will properties: only the will's set.
    malformed(
        decode_connect(&connect5(0x06, "", "00 01 'a' 03 21 00 01 00 01 't' 00 00")),
        "will properties",
    );
    protocol(
        decode_connect(&connect5(0x06, "", "00 01 'a' 02 01 02 00 01 't' 00 00")),
        "payload format indicator",
    );
    // A property length running past the packet.
    let mut bytes = connect5(0x02, "", "00 01 'a'");
    bytes[12] = 0x7F;
    malformed(decode_connect(&bytes), "properties");
}

#[test]
fn with_client_id_rewrites_only_the_id() {
    let bytes = connect311(0xC2, "00 03 'old' 00 01 'u' 00 01 'p'");
    let c = decode_connect(&bytes).unwrap();
    assert_eq!(
        c.with_client_id("new-id").unwrap(),
        connect311(0xC2, "00 06 'new-id' 00 01 'u' 00 01 'p'")
    );
    assert_eq!(
        c.with_client_id("").unwrap(),
        connect311(0xC2, "00 00 00 01 'u' 00 01 'p'")
    );
    // The remaining length grows to two bytes.
    let long = "x".repeat(200);
    let renamed = c.with_client_id(&long).unwrap();
    assert_eq!(decode_connect(&renamed).unwrap().client_id, long);
    assert_eq!(renamed[1] & 0x80, 0x80);
    malformed(c.with_client_id("a\0b"), "U+0000");
    malformed(c.with_client_id(&"x".repeat(65_536)), "65535");
    assert!(c.with_client_id(&"x".repeat(65_535)).is_ok());
}

// ---------------------------------------------------------------------------------------------
// PUBLISH
// ---------------------------------------------------------------------------------------------

#[test]
fn publish_decodes_and_validates() {
    let bytes = pkt(0x3B, "00 03 'a/b' 12 34 'xyz'");
    let p = match client(&bytes, V311).unwrap() {
        Packet::Publish(p) => p,
        other => panic!("{other:?}"),
    };
    assert!(p.dup && p.retain);
    assert_eq!(p.qos, QoS::AtLeastOnce);
    assert_eq!(
        (p.topic, p.packet_id, p.payload),
        ("a/b", Some(0x1234), &b"xyz"[..])
    );
    assert!(!format!("{p:?}").contains("xyz"), "Debug hides the payload");

    malformed(client(&pkt(0x36, "00 01 'a' 00 01"), V311), "QoS 3");
    malformed(client(&pkt(0x38, "00 01 'a'"), V311), "DUP");
    malformed(client(&pkt(0x30, "00 03 'a/+'"), V311), "wildcard");
    malformed(client(&pkt(0x30, "00 03 'a/#'"), V5), "wildcard");
    malformed(client(&pkt(0x30, "00 03 61 00 62"), V311), "topic name");
    malformed(client(&pkt(0x30, "00 02 ff fe"), V311), "UTF-8");
    malformed(client(&pkt(0x30, "00 03 ed a0 80"), V311), "UTF-8");
    malformed(client(&pkt(0x30, "00 05 'a'"), V311), "topic name");
    malformed(
        client(&pkt(0x32, "00 01 'a' 00"), V311),
        "packet identifier",
    );
    protocol(
        client(&pkt(0x32, "00 01 'a' 00 00"), V311),
        "packet identifier 0",
    );
    protocol(client(&pkt(0x30, "00 00 'x'"), V311), "empty topic");
    protocol(
        client(&pkt(0x30, "00 00 00 'x'"), V5),
        "without a topic alias",
    );
    protocol(client(&pkt(0x30, "00 00 03 23 00 00"), V5), "topic alias 0");
    match client(&pkt(0x30, "00 00 03 23 00 07 'x'"), V5).unwrap() {
        Packet::Publish(p) => assert_eq!((p.topic, p.topic_alias), ("", Some(7))),
        other => panic!("{other:?}"),
    }
    // A v5 PUBLISH needs its property length.
    malformed(client(&pkt(0x30, "00 01 'a'"), V5), "properties");
}

#[test]
fn publish_properties() {
    let all = "01 01 02 00 00 00 3c 03 00 01 'j' 08 00 01 'r' 09 00 01 ff 26 00 01 'k' 00 00 26 00 01 'k' 00 00 23 00 01";
    let n = h(all).len();
    let bytes = pkt(0x32, &format!("00 01 'a' 00 01 {n:02x} {all} 'payload'"));
    match client(&bytes, V5).unwrap() {
        Packet::Publish(p) => {
            assert_eq!(p.topic_alias, Some(1));
            assert_eq!(p.payload, b"payload");
        }
        other => panic!("{other:?}"),
    }
    // Subscription identifiers: only from the server, repeatable there, never 0.
    let sub = pkt(0x30, "00 01 'a' 04 0b 01 0b 02");
    protocol(
        client(&sub, V5),
        "subscription identifier in a PUBLISH from the client",
    );
    assert!(server(&sub, V5).is_ok());
    protocol(
        server(&pkt(0x30, "00 01 'a' 02 0b 00"), V5),
        "subscription identifier 0",
    );
    malformed(
        server(&pkt(0x30, "00 01 'a' 05 0b 80 80 80 80"), V5),
        "longer than 4",
    );
    malformed(
        server(&pkt(0x30, "00 01 'a' 06 0b 80 80 80 80 01"), V5),
        "longer than 4",
    );
    malformed(server(&pkt(0x30, "00 01 'a' 03 0b 80 00"), V5), "minimally");
    assert!(server(&pkt(0x30, "00 01 'a' 05 0b ff ff ff 7f"), V5).is_ok());
    // Property length as a 5-byte varint.
    malformed(
        client(&pkt(0x30, "00 01 'a' 80 80 80 80 01"), V5),
        "longer than 4",
    );
    // Duplicates, wrong packet, bad values.
    protocol(
        client(&pkt(0x30, "00 01 'a' 06 23 00 01 23 00 02"), V5),
        "more than once",
    );
    protocol(
        client(&pkt(0x30, "00 01 'a' 04 01 00 01 01"), V5),
        "more than once",
    );
    malformed(
        client(&pkt(0x30, "00 01 'a' 05 11 00 00 00 01"), V5),
        "not allowed in PUBLISH",
    );
    malformed(
        client(&pkt(0x30, "00 01 'a' 02 03 00"), V5),
        "string property",
    );
    protocol(
        client(&pkt(0x30, "00 01 'a' 02 01 02"), V5),
        "payload format indicator",
    );
    protocol(
        client(&pkt(0x30, "00 01 'a' 04 08 00 01 '#'"), V5),
        "response topic",
    );
    malformed(
        client(&pkt(0x30, "00 01 'a' 04 03 00 01 00"), V5),
        "string property",
    );
    malformed(
        client(&pkt(0x30, "00 01 'a' 06 26 00 01 'k' 00 01"), V5),
        "user property",
    );
    malformed(
        client(&pkt(0x30, "00 01 'a' 07 26 00 01 ff 00 01 'v'"), V5),
        "user property",
    );
    malformed(client(&pkt(0x30, "00 01 'a' 09"), V5), "properties");
}

#[test]
fn with_topic_rewrites_only_the_topic() {
    let bytes = pkt(0x33, "00 00 00 09 03 23 00 02 'payload'");
    let Packet::Publish(p) = client(&bytes, V5).unwrap() else {
        panic!("PUBLISH");
    };
    assert_eq!(
        p.with_topic("plant/x").unwrap(),
        pkt(0x33, "00 07 'plant/x' 00 09 03 23 00 02 'payload'")
    );
    malformed(p.with_topic(""), "valid topic name");
    malformed(p.with_topic("a/+"), "valid topic name");
}

// ---------------------------------------------------------------------------------------------
// SUBSCRIBE / UNSUBSCRIBE
// ---------------------------------------------------------------------------------------------

#[test]
fn subscribe_decodes_and_validates() {
    let bytes = pkt(0x82, "00 0a 02 0b 05 00 03 'a/+' 2e 00 01 '#' 01");
    let Packet::Subscribe(s) = client(&bytes, V5).unwrap() else {
        panic!("SUBSCRIBE");
    };
    assert_eq!(s.packet_id, 10);
    assert_eq!(s.packet(), &bytes[..]);
    let f = s.filters[0];
    assert_eq!(
        (
            f.filter,
            f.qos,
            f.no_local,
            f.retain_as_published,
            f.retain_handling
        ),
        ("a/+", QoS::ExactlyOnce, true, true, 2)
    );
    assert_eq!(s.filters[1].filter, "#");

    protocol(client(&pkt(0x82, "00 01"), V311), "without topic filters");
    protocol(client(&pkt(0x82, "00 01 00"), V5), "without topic filters");
    protocol(
        client(&pkt(0x82, "00 00 00 01 'a' 00"), V311),
        "packet identifier 0",
    );
    malformed(
        client(&pkt(0x82, "00 01 00 02 'a#' 00"), V311),
        "topic filter",
    );
    malformed(client(&pkt(0x82, "00 01 00 00 00"), V311), "topic filter");
    malformed(
        client(&pkt(0x82, "00 01 00 02 61 00 00"), V311),
        "topic filter",
    );
    malformed(
        client(&pkt(0x82, "00 01 00 01 'a'"), V311),
        "subscription options",
    );
    malformed(client(&pkt(0x82, "00 01 00 01 'a' 03"), V311), "QoS 3");
    malformed(
        client(&pkt(0x82, "00 01 00 01 'a' 04"), V311),
        "reserved subscription option",
    );
    malformed(
        client(&pkt(0x82, "00 01 00 01 'a' 80"), V311),
        "reserved subscription option",
    );
    assert!(client(&pkt(0x82, "00 01 00 00 01 'a' 3e"), V5).is_err());
    assert!(client(&pkt(0x82, "00 01 00 00 01 'a' 2e"), V5).is_ok());
    malformed(
        client(&pkt(0x82, "00 01 00 00 01 'a' 40"), V5),
        "reserved subscription option",
    );
    malformed(
        client(&pkt(0x82, "00 01 00 00 01 'a' 30"), V5),
        "retain handling 3",
    );
    // Shared subscriptions (v5): a share name, a filter, never no local.
    match client(&pkt(0x82, "00 01 00 00 0c '$share/g/a/#' 01"), V5).unwrap() {
        Packet::Subscribe(s) => assert_eq!(s.filters[0].filter, "$share/g/a/#"),
        other => panic!("{other:?}"),
    }
    protocol(
        client(&pkt(0x82, "00 01 00 00 0c '$share/g/a/#' 05"), V5),
        "no local",
    );
    protocol(
        client(&pkt(0x82, "00 01 00 00 0b '$share//a/#' 01"), V5),
        "shared subscription",
    );
    protocol(
        client(&pkt(0x82, "00 01 00 00 0d '$share/g+/a/#' 01"), V5),
        "shared subscription",
    );
    protocol(
        client(&pkt(0x82, "00 01 00 00 08 '$share/g' 01"), V5),
        "shared subscription",
    );
    malformed(
        client(&pkt(0x82, "00 01 00 00 0b '$share/g/a#' 01"), V5),
        "topic filter",
    );
    // In 3.1.1 `$share/...` is an ordinary filter.
    assert!(client(&pkt(0x82, "00 01 00 0b '$share//a/#' 01"), V311).is_ok());
    // Properties: one subscription identifier, user properties.
    protocol(
        client(&pkt(0x82, "00 01 04 0b 01 0b 02 00 01 'a' 00"), V5),
        "more than once",
    );
    malformed(
        client(&pkt(0x82, "00 01 03 23 00 01 00 01 'a' 00"), V5),
        "not allowed in SUBSCRIBE",
    );
    protocol(
        server(&pkt(0x82, "00 01 00 01 'a' 00"), V311),
        "SUBSCRIBE from the server",
    );
}

#[test]
fn rebuild_caps_qos_and_keeps_the_header() {
    let bytes = pkt(
        0x82,
        "00 0a 05 26 00 00 00 00 00 01 'a' 2e 00 01 'b' 01 00 01 'c' 02",
    );
    let Packet::Subscribe(s) = client(&bytes, V5).unwrap() else {
        panic!("SUBSCRIBE");
    };
    assert_eq!(
        s.rebuild(&[Some(QoS::AtLeastOnce), None, Some(QoS::ExactlyOnce)]),
        Some(pkt(
            0x82,
            "00 0a 05 26 00 00 00 00 00 01 'a' 2d 00 01 'c' 02"
        ))
    );
    assert_eq!(s.rebuild(&[None, None, None]), None);
    assert_eq!(s.rebuild(&[Some(QoS::AtLeastOnce)]), None);
}

#[test]
fn unsubscribe_decodes_and_validates() {
    match client(&pkt(0xA2, "00 05 00 03 'a/+' 00 01 '#'"), V311).unwrap() {
        Packet::Unsubscribe(u) => {
            assert_eq!((u.packet_id, u.filters), (5, vec!["a/+", "#"]));
        }
        other => panic!("{other:?}"),
    }
    protocol(client(&pkt(0xA2, "00 05"), V311), "without topic filters");
    protocol(client(&pkt(0xA2, "00 05 00"), V5), "without topic filters");
    malformed(client(&pkt(0xA2, "00 05 00 02 '#a'"), V311), "topic filter");
    malformed(
        client(&pkt(0xA2, "00 05 02 0b 01 00 01 'a'"), V5),
        "not allowed in UNSUBSCRIBE",
    );
    protocol(
        server(&pkt(0xA2, "00 05 00 01 'a'"), V311),
        "from the server",
    );
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements, CONNACK, DISCONNECT, AUTH, PING
// ---------------------------------------------------------------------------------------------

#[test]
fn acks() {
    assert_eq!(
        client(&h("40 02 00 07"), V311),
        Ok(Packet::Puback(Ack {
            packet_id: 7,
            reason: 0
        }))
    );
    malformed(client(&h("40 03 00 07 00"), V311), "trailing");
    malformed(client(&h("40 01 00"), V311), "packet identifier");
    protocol(client(&h("40 02 00 00"), V311), "packet identifier 0");
    assert_eq!(
        server(&h("50 03 00 07 87"), V5),
        Ok(Packet::Pubrec(Ack {
            packet_id: 7,
            reason: 0x87
        }))
    );
    protocol(server(&h("40 03 00 07 05"), V5), "reason code");
    protocol(server(&h("62 03 00 07 87"), V5), "reason code");
    assert_eq!(
        server(&h("70 03 00 07 92"), V5),
        Ok(Packet::Pubcomp(Ack {
            packet_id: 7,
            reason: 0x92
        }))
    );
    // Reason, properties (reason string, user property).
    assert!(server(&pkt(0x40, "00 07 10 06 1f 00 03 'abc'"), V5).is_ok());
    assert!(server(&pkt(0x40, "00 07 10 00"), V5).is_ok());
    malformed(
        server(&pkt(0x40, "00 07 10 03 23 00 01"), V5),
        "acknowledgement",
    );
    malformed(
        server(&pkt(0x40, "00 07 10 07 1f 00 03 'abc'"), V5),
        "properties",
    );
    malformed(
        server(&pkt(0x40, "00 07 10 01 1f 00 03 'abc'"), V5),
        "string property",
    );
}

#[test]
fn connack() {
    assert_eq!(
        server(&h("20 02 01 00"), V311),
        Ok(Packet::Connack(Connack {
            session_present: true,
            reason: 0,
            properties: ConnackProperties::default()
        }))
    );
    malformed(server(&h("20 02 02 00"), V311), "reserved CONNACK flags");
    protocol(server(&h("20 02 00 06"), V311), "reason code");
    protocol(server(&h("20 02 01 05"), V311), "session present");
    malformed(server(&h("20 03 00 00 00"), V311), "trailing");
    malformed(server(&h("20 02 00 00"), V5), "properties");
    protocol(client(&h("20 02 00 00"), V311), "CONNACK from the client");
    let props = "22 00 0a 27 00 00 10 00 24 01 25 00 21 00 14 12 00 02 'id' 13 00 05 28 01 29 00 2a 01 1a 00 01 'r' 1c 00 01 's' 1f 00 00 11 00 00 00 00 15 00 01 'm' 16 00 00 26 00 00 00 00";
    let n = h(props).len();
    let bytes = pkt(0x20, &format!("00 00 {n:02x} {props}"));
    match server(&bytes, V5).unwrap() {
        Packet::Connack(c) => assert_eq!(
            c.properties,
            ConnackProperties {
                topic_alias_maximum: Some(10),
                maximum_packet_size: Some(4096),
                maximum_qos: Some(QoS::AtLeastOnce),
                retain_available: Some(false),
                receive_maximum: Some(20),
            }
        ),
        other => panic!("{other:?}"),
    }
    protocol(server(&pkt(0x20, "00 00 02 24 02"), V5), "maximum QoS");
    protocol(server(&pkt(0x20, "00 00 02 25 02"), V5), "retain available");
    protocol(
        server(&pkt(0x20, "00 00 05 27 00 00 00 00"), V5),
        "maximum packet size 0",
    );
    protocol(
        server(&pkt(0x20, "00 00 03 21 00 00"), V5),
        "receive maximum 0",
    );
    protocol(server(&pkt(0x20, "00 00 02 28 02"), V5), "wildcard");
    malformed(
        server(&pkt(0x20, "00 00 03 23 00 01"), V5),
        "not allowed in CONNACK",
    );
    protocol(server(&h("20 03 00 01 00"), V5), "reason code");
    assert!(server(&h("20 03 00 87 00"), V5).is_ok());
}

#[test]
fn suback_and_unsuback() {
    assert_eq!(
        server(&h("90 04 00 01 00 80"), V311),
        Ok(Packet::Suback(Suback {
            packet_id: 1,
            reason_codes: &[0x00, 0x80]
        }))
    );
    protocol(server(&h("90 03 00 01 87"), V311), "reason code");
    protocol(server(&h("90 02 00 01"), V311), "without reason codes");
    assert!(server(&h("90 04 00 01 00 87"), V5).is_ok());
    protocol(server(&h("90 04 00 01 00 10"), V5), "reason code");
    protocol(client(&h("90 03 00 01 00"), V311), "SUBACK from the client");
    assert_eq!(
        server(&h("b0 02 00 01"), V311),
        Ok(Packet::Unsuback(Suback {
            packet_id: 1,
            reason_codes: &[]
        }))
    );
    malformed(server(&h("b0 03 00 01 00"), V311), "trailing");
    assert_eq!(
        server(&h("b0 05 00 01 00 00 11"), V5),
        Ok(Packet::Unsuback(Suback {
            packet_id: 1,
            reason_codes: &[0x00, 0x11]
        }))
    );
    protocol(server(&h("b0 04 00 01 00 01"), V5), "reason code");
    protocol(server(&h("b0 03 00 01 00"), V5), "without reason codes");
    protocol(client(&h("b0 02 00 01"), V311), "UNSUBACK from the client");
}

#[test]
fn disconnect_auth_ping() {
    assert_eq!(
        client(&h("e0 00"), V311),
        Ok(Packet::Disconnect { reason: 0 })
    );
    malformed(client(&h("e0 01 00"), V311), "trailing");
    protocol(server(&h("e0 00"), V311), "DISCONNECT from the server");
    assert_eq!(
        client(&h("e0 00"), V5),
        Ok(Packet::Disconnect { reason: 0 })
    );
    assert_eq!(
        client(&h("e0 01 04"), V5),
        Ok(Packet::Disconnect { reason: 4 })
    );
    assert_eq!(
        server(&h("e0 01 8e"), V5),
        Ok(Packet::Disconnect { reason: 0x8E })
    );
    protocol(server(&h("e0 01 05"), V5), "reason code");
    let expiry = pkt(0xE0, "00 05 11 00 00 00 00");
    assert!(client(&expiry, V5).is_ok());
    protocol(server(&expiry, V5), "session expiry");
    assert!(server(&pkt(0xE0, "9c 04 1c 00 01 's'"), V5).is_ok());
    malformed(client(&pkt(0xE0, "00 02 21 00 01"), V5), "DISCONNECT");

    malformed(client(&h("f0 00"), V311), "AUTH in MQTT 3.1.1");
    malformed(server(&h("f0 00"), V311), "AUTH in MQTT 3.1.1");
    assert_eq!(client(&h("f0 00"), V5), Ok(Packet::Auth { reason: 0 }));
    assert_eq!(
        server(&pkt(0xF0, "18 07 15 00 04 'SCRM'"), V5),
        Ok(Packet::Auth { reason: 0x18 })
    );
    protocol(client(&h("f0 01 87"), V5), "reason code");
    malformed(client(&pkt(0xF0, "19 02 23 00"), V5), "AUTH");

    assert_eq!(client(&h("c0 00"), V5), Ok(Packet::Pingreq));
    assert_eq!(server(&h("d0 00"), V311), Ok(Packet::Pingresp));
    malformed(client(&h("c0 01 00"), V5), "trailing");
    protocol(server(&h("c0 00"), V5), "PINGREQ from the server");
    protocol(client(&h("d0 00"), V5), "PINGRESP from the client");
    protocol(
        client(&connect311(0x02, "00 01 'a'"), V311),
        "second CONNECT",
    );
    protocol(
        server(&connect311(0x02, "00 01 'a'"), V311),
        "CONNECT from the server",
    );
}

// ---------------------------------------------------------------------------------------------
// Types, errors, builders
// ---------------------------------------------------------------------------------------------

#[test]
fn types_and_errors() {
    assert_eq!(V311.level(), 4);
    assert_eq!(V5.level(), 5);
    for q in 0..=2 {
        assert_eq!(QoS::from_u8(q).unwrap().as_u8(), q);
    }
    assert_eq!(QoS::from_u8(3), None);
    assert!(QoS::AtMostOnce < QoS::ExactlyOnce);
    assert_eq!(PacketType::from_byte(0x00), None);
    assert_eq!(PacketType::from_byte(0x0F), None);
    assert_eq!(PacketType::from_byte(0x3D), Some(PacketType::Publish));
    assert_eq!(PacketType::from_byte(0xF0), Some(PacketType::Auth));
    assert_eq!(PacketType::Publish.name(), "PUBLISH");
    assert_eq!(PacketType::Unsuback.name(), "UNSUBACK");
    for b in 1u8..=15 {
        let t = PacketType::from_byte(b << 4).unwrap();
        assert_eq!(t as u8, b);
    }
    assert_eq!(
        Error::TooLarge {
            size: 70_000,
            max: 65_536
        }
        .to_string(),
        "packet of 70000 bytes exceeds the maximum packet size 65536"
    );
    assert_eq!(
        Error::Malformed("QoS 3 in PUBLISH").to_string(),
        "malformed packet: QoS 3 in PUBLISH"
    );
    assert_eq!(
        Error::Protocol("second CONNECT").to_string(),
        "protocol error: second CONNECT"
    );
    assert_eq!(
        Error::UnsupportedVersion(3).to_string(),
        "unsupported protocol version 3 (ztgate speaks MQTT 3.1.1 and 5.0)"
    );
    assert_eq!(Error::TooLarge { size: 0, max: 0 }.reason_code(), 0x95);
    assert_eq!(Error::Malformed("").reason_code(), 0x81);
    assert_eq!(Error::Protocol("").reason_code(), 0x82);
}

#[test]
fn builders_exact_bytes() {
    assert_eq!(build::connack(V311, true, 0), h("20 02 01 00"));
    assert_eq!(build::connack(V311, false, 5), h("20 02 00 05"));
    assert_eq!(build::connack(V5, false, 0x87), h("20 03 00 87 00"));
    assert_eq!(
        ack(PacketType::Puback, V311, 0x0102, 0x87),
        h("40 02 01 02")
    );
    assert_eq!(ack(PacketType::Puback, V5, 0x0102, 0), h("40 02 01 02"));
    assert_eq!(
        ack(PacketType::Pubrec, V5, 0x0102, 0x87),
        h("50 03 01 02 87")
    );
    assert_eq!(ack(PacketType::Pubrel, V5, 1, 0), h("62 02 00 01"));
    assert_eq!(ack(PacketType::Pubcomp, V311, 1, 0), h("70 02 00 01"));
    assert_eq!(suback(V311, 1, &[0x80]), h("90 03 00 01 80"));
    assert_eq!(suback(V5, 1, &[0x87, 0x01]), h("90 05 00 01 00 87 01"));
    assert_eq!(disconnect(V311, 0x82), None);
    assert_eq!(disconnect(V5, 0), Some(h("e0 00")));
    assert_eq!(disconnect(V5, 0x82), Some(h("e0 01 82")));
    assert_eq!(PINGRESP, [0xD0, 0x00]);
}

#[test]
fn connack_with_limits_in_place_and_appended() {
    let broker = pkt(0x20, "01 00 08 22 00 0a 21 00 14 24 01");
    let ours = ConnackProperties {
        topic_alias_maximum: Some(2),
        maximum_packet_size: Some(1024),
        maximum_qos: Some(QoS::AtMostOnce),
        retain_available: Some(false),
        receive_maximum: Some(100),
    };
    assert_eq!(
        connack_with_limits(&broker, V5, &ours).unwrap(),
        // alias 2, receive maximum stays 20, QoS 0 in place; size and retain appended.
        pkt(
            0x20,
            "01 00 0f 22 00 02 21 00 14 24 00 27 00 00 04 00 25 00"
        )
    );
    let partial = ConnackProperties {
        maximum_qos: Some(QoS::AtLeastOnce),
        ..ConnackProperties::default()
    };
    assert_eq!(
        connack_with_limits(&broker, V5, &partial).unwrap(),
        broker,
        "QoS 1 already, nothing else of ours"
    );
    // Zero limits of ours are ignored (the specification forbids 0 for both).
    let zeros = ConnackProperties {
        maximum_packet_size: Some(0),
        receive_maximum: Some(0),
        ..ConnackProperties::default()
    };
    assert_eq!(connack_with_limits(&broker, V5, &zeros).unwrap(), broker);
    assert!(connack_with_limits(&h("20 02 00 00"), V5, &ours).is_err());
    assert!(connack_with_limits(&h("40 02 00 01"), V5, &ours).is_err());
}

#[test]
fn publish_and_will_report_the_size_of_their_v5_properties() {
    // PUBLISH QoS 0 "t" with a user property ("k", "vv") and payload "pl": 8 bytes of
    // properties after their length byte.
    let bytes = pkt(0x30, "00 01 't' 08 26 00 01 'k' 00 02 'vv' 'pl'");
    let Ok(Packet::Publish(p)) = decode(&bytes, V5, true) else {
        panic!("not a PUBLISH")
    };
    assert_eq!((p.properties_len, p.payload), (8, &b"pl"[..]));
    // No properties: only the length byte, nothing counted.
    let bytes = pkt(0x30, "00 01 't' 00 'pl'");
    let Ok(Packet::Publish(p)) = decode(&bytes, V5, true) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.properties_len, 0);
    let bytes = pkt(0x30, "00 01 't' 'pl'");
    let Ok(Packet::Publish(p)) = decode(&bytes, V311, true) else {
        panic!("not a PUBLISH")
    };
    assert_eq!(p.properties_len, 0);
    // A will with a content type ("c"): 4 bytes of properties.
    let bytes = connect5(
        0b0000_0110,
        "",
        "00 02 'id' 04 03 00 01 'c' 00 01 'w' 00 01 'x'",
    );
    let c = decode_connect(&bytes).unwrap();
    let will = c.will.unwrap();
    assert_eq!((will.properties_len, will.payload_len), (4, 1));
}
