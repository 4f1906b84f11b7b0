//! The MQTT codec against real captured traffic (tests/fixtures/mqtt/{v311,v5}/*.hex: mosquitto
//! 2.0.11 and paho-mqtt 2.2.0 through a byte-exact relay) and against generated packets.
//!
//! Fixture format: lines starting with `#` are comments (`# N:` describes frame N, written by
//! the fixture author's own decoder); every other line is one MQTT control packet in lowercase
//! hex. `*.client.hex` is client → broker (the first packet is CONNECT), `*.server.hex` broker
//! → client. The protocol version comes from the directory.

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use ztgate::protocol::mqtt::{
    ConnackProperties, Error, MAX_REMAINING_LENGTH, PINGRESP, Packet, PacketType, QoS, Version,
    ack, connack, connack_with_limits, decode, decode_connect, disconnect, packet_len,
    split_shared, suback, valid_topic_filter, valid_topic_name,
};

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

struct Fixture {
    file: String,
    version: Version,
    from_client: bool,
    frames: Vec<Vec<u8>>,
    /// The `# N:` description of each frame, in order.
    descriptions: Vec<String>,
}

fn unhex(line: &str) -> Vec<u8> {
    fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("not a lowercase hex digit: {:?}", char::from(c)),
        }
    }
    let bytes = line.as_bytes();
    assert!(bytes.len() % 2 == 0, "odd number of hex digits: {line}");
    bytes
        .chunks_exact(2)
        .map(|pair| nibble(pair[0]) << 4 | nibble(pair[1]))
        .collect()
}

fn load_fixtures() -> Vec<Fixture> {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mqtt"));
    let mut fixtures = Vec::new();
    for (dir, version) in [("v311", Version::V311), ("v5", Version::V5)] {
        for entry in fs::read_dir(root.join(dir)).expect("fixture directory exists") {
            let path = entry.expect("readable entry").path();
            let file = format!(
                "{dir}/{}",
                path.file_name()
                    .and_then(|n| n.to_str())
                    .expect("UTF-8 name")
            );
            let from_client = if file.ends_with(".client.hex") {
                true
            } else if file.ends_with(".server.hex") {
                false
            } else {
                assert!(!file.ends_with(".hex"), "{file}: unknown side");
                continue;
            };
            let text = fs::read_to_string(&path).expect("readable fixture");
            let frames: Vec<Vec<u8>> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(unhex)
                .collect();
            let descriptions: Vec<String> = text
                .lines()
                .filter_map(|l| {
                    let rest = l.strip_prefix("# ")?;
                    let (n, d) = rest.split_once(": ")?;
                    n.parse::<usize>().ok()?;
                    Some(d.to_owned())
                })
                .collect();
            assert!(!frames.is_empty(), "{file}: no frame");
            assert_eq!(frames.len(), descriptions.len(), "{file}: descriptions");
            fixtures.push(Fixture {
                file,
                version,
                from_client,
                frames,
                descriptions,
            });
        }
    }
    fixtures.sort_by(|a, b| a.file.cmp(&b.file));
    fixtures
}

/// Every fixture packet with its version and direction; the client's CONNECTs are flagged.
fn all_packets() -> Vec<(Version, bool, bool, Vec<u8>)> {
    load_fixtures()
        .into_iter()
        .flat_map(|f| {
            let (version, from_client) = (f.version, f.from_client);
            f.frames
                .into_iter()
                .enumerate()
                .map(move |(i, p)| (version, from_client, from_client && i == 0, p))
        })
        .collect()
}

#[test]
fn fixture_set_covers_both_versions_and_sides() {
    let fixtures = load_fixtures();
    assert_eq!(
        fixtures.len(),
        96,
        "21 v3.1.1 and 27 v5 exchanges, two files each"
    );
    for version in [Version::V311, Version::V5] {
        for side in [true, false] {
            assert!(
                fixtures
                    .iter()
                    .filter(|f| f.version == version && f.from_client == side)
                    .count()
                    >= 20
            );
        }
    }
}

/// What the fixture's own description of a packet must start with (or contain), rebuilt from
/// our decoding: an independent check of every decoded field that matters to a policy.
fn check_description(desc: &str, packet: &Packet<'_>, version: Version) {
    let v5 = version == Version::V5;
    let b = |x: bool| u8::from(x);
    let prefix = match packet {
        Packet::Connack(c) if v5 => format!(
            "CONNACK session_present={} reason=0x{:02x}",
            b(c.session_present),
            c.reason
        ),
        Packet::Connack(c) => format!(
            "CONNACK session_present={} return_code={}",
            b(c.session_present),
            c.reason
        ),
        Packet::Publish(p) => {
            let mut s = format!(
                "PUBLISH qos={} retain={} dup={} topic='{}'",
                p.qos.as_u8(),
                b(p.retain),
                b(p.dup),
                p.topic
            );
            if let Some(id) = p.packet_id {
                s += &format!(" packet_id={id}");
            }
            if let Some(alias) = p.topic_alias {
                assert!(desc.contains(&format!("topic_alias={alias}")), "{desc}");
            }
            s
        }
        Packet::Puback(a) | Packet::Pubrec(a) | Packet::Pubrel(a) | Packet::Pubcomp(a) => {
            if a.reason != 0 {
                assert!(
                    desc.contains(&format!("reason=0x{:02x}", a.reason)),
                    "{desc}"
                );
            }
            format!("{} packet_id={}", packet.kind().name(), a.packet_id)
        }
        Packet::Subscribe(s) => {
            let entries: Vec<String> = s
                .filters
                .iter()
                .map(|f| {
                    let mut e = format!("'{}' qos={}", f.filter, f.qos.as_u8());
                    if v5 {
                        e += &format!(
                            " no_local={} retain_as_published={} retain_handling={}",
                            b(f.no_local),
                            b(f.retain_as_published),
                            f.retain_handling
                        );
                    }
                    e
                })
                .collect();
            format!(
                "SUBSCRIBE packet_id={} filters=[{}]",
                s.packet_id,
                entries.join("; ")
            )
        }
        Packet::Suback(s) | Packet::Unsuback(s) => {
            if !s.reason_codes.is_empty() {
                let listed: Vec<String> = desc
                    .split_once("codes=[")
                    .expect("codes listed")
                    .1
                    .split(']')
                    .next()
                    .unwrap()
                    .split(", ")
                    .map(|c| c[..4].to_owned())
                    .collect();
                let ours: Vec<String> = s
                    .reason_codes
                    .iter()
                    .map(|c| format!("0x{c:02x}"))
                    .collect();
                assert_eq!(listed, ours, "{desc}");
            }
            format!("{} packet_id={}", packet.kind().name(), s.packet_id)
        }
        Packet::Unsubscribe(u) => {
            let filters: Vec<String> = u.filters.iter().map(|f| format!("'{f}'")).collect();
            format!(
                "UNSUBSCRIBE packet_id={} filters=[{}]",
                u.packet_id,
                filters.join(", ")
            )
        }
        Packet::Pingreq => "PINGREQ".to_owned(),
        Packet::Pingresp => "PINGRESP".to_owned(),
        Packet::Disconnect { reason } | Packet::Auth { reason } => {
            if *reason != 0 {
                assert!(desc.contains(&format!("reason=0x{reason:02x}")), "{desc}");
            }
            packet.kind().name().to_owned()
        }
    };
    assert!(
        desc.starts_with(&prefix),
        "description {desc:?} does not start with {prefix:?}"
    );
}

#[test]
fn every_fixture_packet_decodes_and_matches_its_description() {
    let mut counts = std::collections::HashMap::<(&str, bool), usize>::new();
    for f in load_fixtures() {
        let mut frames = f.frames.iter().zip(&f.descriptions);
        if f.from_client {
            let (first, desc) = frames.next().expect("a CONNECT");
            let connect =
                decode_connect(first).unwrap_or_else(|e| panic!("{}: CONNECT: {e}", f.file));
            assert_eq!(connect.version, f.version, "{}", f.file);
            assert_eq!(connect.packet(), &first[..]);
            let name = match f.version {
                Version::V311 => "MQTT 3.1.1",
                Version::V5 => "MQTT 5.0",
            };
            let clean = match f.version {
                Version::V311 => "clean_session",
                Version::V5 => "clean_start",
            };
            let expected = format!(
                "CONNECT {name} client_id='{}' keepalive={} {clean}={}",
                connect.client_id,
                connect.keep_alive,
                u8::from(connect.clean_start)
            );
            assert!(desc.starts_with(&expected), "{}: {desc}", f.file);
            match connect.username {
                Some(u) => assert!(desc.contains(&format!("username='{u}'")), "{desc}"),
                None => assert!(!desc.contains("username="), "{desc}"),
            }
            assert_eq!(connect.has_password, desc.contains("password='"));
            if let Some(will) = connect.will {
                assert!(
                    desc.contains(&format!(
                        "will(topic='{}' qos={} retain={}",
                        will.topic,
                        will.qos.as_u8(),
                        u8::from(will.retain)
                    )),
                    "{desc}"
                );
            } else {
                assert!(!desc.contains("will("), "{desc}");
            }
            if let Some(ra) = connect.properties.receive_maximum {
                assert!(desc.contains(&format!("receive_maximum={ra}")), "{desc}");
            }
            if let Some(s) = connect.properties.session_expiry_interval {
                assert!(
                    desc.contains(&format!("session_expiry_interval={s}")),
                    "{desc}"
                );
            }
            *counts.entry(("CONNECT", f.from_client)).or_default() += 1;
        }
        for (frame, desc) in frames {
            assert_eq!(
                packet_len(frame, MAX_REMAINING_LENGTH + 5),
                Ok(Some(frame.len()))
            );
            let packet = decode(frame, f.version, f.from_client)
                .unwrap_or_else(|e| panic!("{}: {desc}: {e}", f.file));
            check_description(desc, &packet, f.version);
            *counts
                .entry((packet.kind().name(), f.from_client))
                .or_default() += 1;
        }
    }
    // Every packet type the captures hold, in the direction it was captured.
    for kind in [
        ("CONNECT", true),
        ("PUBLISH", true),
        ("PUBLISH", false),
        ("PUBACK", true),
        ("PUBACK", false),
        ("PUBREC", true),
        ("PUBREC", false),
        ("PUBREL", true),
        ("PUBREL", false),
        ("PUBCOMP", true),
        ("PUBCOMP", false),
        ("SUBSCRIBE", true),
        ("SUBACK", false),
        ("UNSUBSCRIBE", true),
        ("UNSUBACK", false),
        ("PINGREQ", true),
        ("PINGRESP", false),
        ("DISCONNECT", true),
        ("CONNACK", false),
    ] {
        assert!(counts.contains_key(&kind), "no {kind:?} in the fixtures");
    }
}

#[test]
fn fixture_packets_in_the_wrong_direction_or_version_are_refused() {
    for (version, from_client, is_connect, frame) in all_packets() {
        if is_connect {
            assert_eq!(
                decode(&frame, version, true),
                Err(Error::Protocol("second CONNECT"))
            );
            continue;
        }
        let kind = PacketType::from_byte(frame[0]).expect("valid type");
        // Types only one side sends are refused from the other side.
        let both_sides = matches!(
            kind,
            PacketType::Publish
                | PacketType::Puback
                | PacketType::Pubrec
                | PacketType::Pubrel
                | PacketType::Pubcomp
                | PacketType::Auth
        ) || (kind == PacketType::Disconnect && version == Version::V5);
        if !both_sides {
            assert!(
                matches!(
                    decode(&frame, version, !from_client),
                    Err(Error::Protocol(_))
                ),
                "{} accepted from the other side",
                kind.name()
            );
        }
        // decode_connect refuses everything that is not CONNECT.
        assert!(decode_connect(&frame).is_err());
    }
}

#[test]
fn specific_fixture_contents() {
    let fixtures = load_fixtures();
    let get = |name: &str| {
        fixtures
            .iter()
            .find(|f| f.file == name)
            .unwrap_or_else(|| panic!("{name} missing"))
    };
    // Topic alias: the first PUBLISH carries topic + alias 1, the next ones only the alias.
    let alias = get("v5/mosquitto_pub-topic-alias.client.hex");
    let topics: Vec<(String, Option<u16>, Option<u16>)> = alias.frames[1..4]
        .iter()
        .map(|f| match decode(f, Version::V5, true).unwrap() {
            Packet::Publish(p) => (p.topic.to_owned(), p.topic_alias, p.packet_id),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        topics,
        [
            ("plant/line2/temp".to_owned(), Some(1), Some(1)),
            (String::new(), Some(1), Some(2)),
            (String::new(), Some(1), Some(3)),
        ]
    );
    // The same alias-only PUBLISH is refused in 3.1.1 (no properties: the bytes differ, but an
    // empty topic is a protocol error there) and v5 needs the alias.
    assert_eq!(
        decode(&unhex("3006000000010000"), Version::V311, true),
        Err(Error::Protocol("empty topic name in PUBLISH"))
    );
    // v5 CONNACK limits as mosquitto sends them.
    let connack = get("v5/paho-session.server.hex");
    match decode(&connack.frames[0], Version::V5, false).unwrap() {
        Packet::Connack(c) => {
            assert_eq!(c.properties.topic_alias_maximum, Some(10));
            assert_eq!(c.properties.receive_maximum, Some(20));
            assert_eq!(c.properties.maximum_qos, None);
        }
        other => panic!("{other:?}"),
    }
    // The will of a 3.1.1 CONNECT.
    let will = get("v311/mosquitto_pub-will.client.hex");
    let c = decode_connect(&will.frames[0]).unwrap();
    let w = c.will.expect("a will");
    assert_eq!(
        (w.topic, w.qos, w.retain, w.payload_len),
        ("plant/status/ztg-pub-will", QoS::AtLeastOnce, true, 7)
    );
}

/// Splits `stream` into packets by feeding it `chunk(i)` bytes at a time.
fn reframe(stream: &[u8], mut chunk: impl FnMut() -> usize) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let mut buf = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let n = chunk().clamp(1, stream.len() - at);
        buf.extend_from_slice(&stream[at..at + n]);
        at += n;
        while let Some(len) = packet_len(&buf, 1 << 20).expect("fixture stream frames") {
            packets.push(buf.drain(..len).collect());
        }
    }
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    packets
}

#[test]
fn rechunked_streams_give_back_exactly_the_packets() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut random = move || {
        // xorshift64: deterministic "random" chunk sizes 1..=40.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % 40) as usize + 1
    };
    for f in load_fixtures() {
        let stream: Vec<u8> = f.frames.concat();
        for size in [1, 2, 3, 7, 13, 64, stream.len()] {
            assert_eq!(reframe(&stream, || size), f.frames, "{} by {size}", f.file);
        }
        for _ in 0..8 {
            assert_eq!(reframe(&stream, &mut random), f.frames, "{}", f.file);
        }
    }
}

#[test]
fn oversized_packets_are_refused_from_the_header_alone() {
    for (_, _, _, frame) in all_packets() {
        let header = if frame[1] & 0x80 == 0 { 2 } else { 3 };
        let max = frame.len() - 1;
        // Only the fixed header is buffered: the size is already known to be too large.
        assert_eq!(
            packet_len(&frame[..header], max),
            Err(Error::TooLarge {
                size: frame.len(),
                max
            })
        );
        assert_eq!(packet_len(&frame, frame.len()), Ok(Some(frame.len())));
    }
}

#[test]
fn fixture_rewrites_keep_every_other_byte() {
    for f in load_fixtures() {
        if f.from_client {
            let c = decode_connect(&f.frames[0]).unwrap();
            assert_eq!(c.with_client_id(c.client_id).unwrap(), f.frames[0]);
            let renamed = c.with_client_id("gw-7f3a/ümlaut").unwrap();
            let d = decode_connect(&renamed).unwrap();
            assert_eq!(d.client_id, "gw-7f3a/ümlaut");
            assert_eq!(
                (
                    d.username,
                    d.has_password,
                    d.will,
                    d.properties,
                    d.keep_alive
                ),
                (
                    c.username,
                    c.has_password,
                    c.will,
                    c.properties,
                    c.keep_alive
                )
            );
        }
        for frame in f.frames.iter().skip(usize::from(f.from_client)) {
            match decode(frame, f.version, f.from_client).unwrap() {
                Packet::Publish(p) => {
                    if !p.topic.is_empty() {
                        assert_eq!(p.with_topic(p.topic).unwrap(), *frame);
                    }
                    let rewritten = p.with_topic("gw/re/sent").unwrap();
                    match decode(&rewritten, f.version, f.from_client).unwrap() {
                        Packet::Publish(q) => {
                            assert_eq!(q.topic, "gw/re/sent");
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
                        other => panic!("{other:?}"),
                    }
                }
                Packet::Subscribe(s) => {
                    let all = vec![Some(QoS::ExactlyOnce); s.filters.len()];
                    assert_eq!(s.rebuild(&all).unwrap(), *frame);
                    // Only the last entry, capped at QoS 0.
                    let mut last = vec![None; s.filters.len()];
                    *last.last_mut().unwrap() = Some(QoS::AtMostOnce);
                    let rebuilt = s.rebuild(&last).unwrap();
                    match decode(&rebuilt, f.version, true).unwrap() {
                        Packet::Subscribe(t) => {
                            assert_eq!(t.packet_id, s.packet_id);
                            assert_eq!(t.filters.len(), 1);
                            let (a, b) = (t.filters[0], *s.filters.last().unwrap());
                            assert_eq!(a.filter, b.filter);
                            assert_eq!(a.qos, QoS::AtMostOnce);
                            assert_eq!(
                                (a.no_local, a.retain_as_published, a.retain_handling),
                                (b.no_local, b.retain_as_published, b.retain_handling)
                            );
                        }
                        other => panic!("{other:?}"),
                    }
                    assert_eq!(s.rebuild(&vec![None; s.filters.len()]), None);
                    assert_eq!(s.rebuild(&[]), None);
                }
                Packet::Connack(c) => {
                    // Nothing of ours: the broker's CONNACK byte for byte.
                    assert_eq!(
                        connack_with_limits(frame, f.version, &ConnackProperties::default())
                            .unwrap(),
                        *frame
                    );
                    let ours = ConnackProperties {
                        topic_alias_maximum: Some(4),
                        maximum_packet_size: Some(4096),
                        maximum_qos: Some(QoS::AtLeastOnce),
                        retain_available: Some(false),
                        receive_maximum: Some(8),
                    };
                    let merged = connack_with_limits(frame, f.version, &ours).unwrap();
                    match (f.version, decode(&merged, f.version, false).unwrap()) {
                        (Version::V311, _) => assert_eq!(merged, *frame),
                        (Version::V5, Packet::Connack(m)) => {
                            assert_eq!(
                                (m.session_present, m.reason),
                                (c.session_present, c.reason)
                            );
                            let p = m.properties;
                            assert_eq!(
                                p.topic_alias_maximum,
                                c.properties.topic_alias_maximum.map(|t| t.min(4))
                            );
                            assert_eq!(p.maximum_packet_size, Some(4096));
                            assert_eq!(p.maximum_qos, Some(QoS::AtLeastOnce));
                            assert_eq!(p.retain_available, Some(false));
                            assert_eq!(p.receive_maximum, Some(8));
                        }
                        (_, other) => panic!("{other:?}"),
                    }
                }
                _ => {}
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A small test-only encoder
// ---------------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: usize) {
    loop {
        let digit = (v % 128) as u8;
        v /= 128;
        if v == 0 {
            out.push(digit);
            return;
        }
        out.push(digit | 0x80);
    }
}

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s);
}

fn wrap(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    put_varint(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

fn put_props(out: &mut Vec<u8>, props: &[u8]) {
    put_varint(out, props.len());
    out.extend_from_slice(props);
}

#[derive(Clone, Debug)]
struct GenPublish {
    version: Version,
    dup: bool,
    qos: QoS,
    retain: bool,
    topic: String,
    packet_id: u16,
    alias: Option<u16>,
    payload: Vec<u8>,
}

fn encode_publish(p: &GenPublish) -> Vec<u8> {
    let first = 0x30 | u8::from(p.dup) << 3 | p.qos.as_u8() << 1 | u8::from(p.retain);
    let mut body = Vec::new();
    put_str(&mut body, p.topic.as_bytes());
    if p.qos != QoS::AtMostOnce {
        body.extend_from_slice(&p.packet_id.to_be_bytes());
    }
    if p.version == Version::V5 {
        let mut props = vec![0x01, 0x00, 0x26];
        put_str(&mut props, b"k");
        put_str(&mut props, "v\u{e9}".as_bytes());
        if let Some(a) = p.alias {
            props.push(0x23);
            props.extend_from_slice(&a.to_be_bytes());
        }
        put_props(&mut body, &props);
    }
    body.extend_from_slice(&p.payload);
    wrap(first, &body)
}

#[derive(Clone, Debug)]
struct GenEntry {
    filter: String,
    qos: QoS,
    no_local: bool,
    rap: bool,
    rh: u8,
}

#[derive(Clone, Debug)]
struct GenSubscribe {
    version: Version,
    packet_id: u16,
    sub_id: Option<u32>,
    entries: Vec<GenEntry>,
}

fn encode_subscribe(s: &GenSubscribe) -> Vec<u8> {
    let mut body = s.packet_id.to_be_bytes().to_vec();
    if s.version == Version::V5 {
        let mut props = Vec::new();
        if let Some(id) = s.sub_id {
            props.push(0x0B);
            put_varint(&mut props, id as usize);
        }
        put_props(&mut body, &props);
    }
    for e in &s.entries {
        put_str(&mut body, e.filter.as_bytes());
        body.push(e.qos.as_u8() | u8::from(e.no_local) << 2 | u8::from(e.rap) << 3 | e.rh << 4);
    }
    wrap(0x82, &body)
}

#[derive(Clone, Debug)]
struct GenConnect {
    version: Version,
    clean: bool,
    keep_alive: u16,
    client_id: String,
    will: Option<(String, QoS, bool, Vec<u8>)>,
    username: Option<String>,
    password: Option<Vec<u8>>,
    session_expiry: Option<u32>,
    receive_maximum: Option<u16>,
    maximum_packet_size: Option<u32>,
    topic_alias_maximum: Option<u16>,
}

fn encode_connect(c: &GenConnect) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(c.version.level());
    let mut flags = u8::from(c.clean) << 1;
    if let Some((_, qos, retain, _)) = &c.will {
        flags |= 0x04 | qos.as_u8() << 3 | u8::from(*retain) << 5;
    }
    if c.password.is_some() {
        flags |= 0x40;
    }
    if c.username.is_some() {
        flags |= 0x80;
    }
    body.push(flags);
    body.extend_from_slice(&c.keep_alive.to_be_bytes());
    if c.version == Version::V5 {
        let mut props = Vec::new();
        if let Some(v) = c.session_expiry {
            props.push(0x11);
            props.extend_from_slice(&v.to_be_bytes());
        }
        if let Some(v) = c.receive_maximum {
            props.push(0x21);
            props.extend_from_slice(&v.to_be_bytes());
        }
        if let Some(v) = c.maximum_packet_size {
            props.push(0x27);
            props.extend_from_slice(&v.to_be_bytes());
        }
        if let Some(v) = c.topic_alias_maximum {
            props.push(0x22);
            props.extend_from_slice(&v.to_be_bytes());
        }
        put_props(&mut body, &props);
    }
    put_str(&mut body, c.client_id.as_bytes());
    if let Some((topic, _, _, payload)) = &c.will {
        if c.version == Version::V5 {
            put_props(&mut body, &[0x18, 0, 0, 0, 10]);
        }
        put_str(&mut body, topic.as_bytes());
        put_str(&mut body, payload);
    }
    if let Some(u) = &c.username {
        put_str(&mut body, u.as_bytes());
    }
    if let Some(p) = &c.password {
        put_str(&mut body, p);
    }
    wrap(0x10, &body)
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V311), Just(Version::V5)]
}

fn qos() -> impl Strategy<Value = QoS> {
    (0u8..=2).prop_map(|q| QoS::from_u8(q).unwrap())
}

/// A topic level: ASCII words, some non-ASCII text, `$` names.
fn level() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9_-]{1,8}",
        "[a-zA-Z\u{e9}\u{4e2d}\u{1f600} ]{1,4}",
        Just(String::new()),
        Just("$SYS".to_owned()),
    ]
}

fn topic() -> impl Strategy<Value = String> {
    prop::collection::vec(level(), 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
}

fn filter() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop_oneof![3 => level(), 1 => Just("+".to_owned())], 1..5),
        any::<bool>(),
    )
        .prop_map(|(levels, hash)| {
            let mut f = levels.join("/");
            if hash {
                f += if f.is_empty() { "#" } else { "/#" };
            }
            f
        })
        .prop_filter("non-empty", |f| !f.is_empty())
}

fn gen_publish() -> impl Strategy<Value = GenPublish> {
    (
        version(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        topic(),
        1u16..,
        prop::option::of(1u16..),
        prop::collection::vec(any::<u8>(), 0..100),
        any::<bool>(),
    )
        .prop_map(
            |(version, qos, dup, retain, topic, packet_id, alias, payload, empty)| GenPublish {
                version,
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                // v5 with an alias may leave the topic empty.
                topic: if empty && version == Version::V5 && alias.is_some() {
                    String::new()
                } else {
                    topic
                },
                packet_id,
                alias: alias.filter(|_| version == Version::V5),
                payload,
            },
        )
}

fn gen_subscribe() -> impl Strategy<Value = GenSubscribe> {
    let entry = (
        filter(),
        qos(),
        any::<bool>(),
        any::<bool>(),
        0u8..=2,
        any::<bool>(),
    );
    (
        version(),
        1u16..,
        prop::option::of(1u32..=268_435_455),
        prop::collection::vec(entry, 1..6),
    )
        .prop_map(|(version, packet_id, sub_id, entries)| {
            let v5 = version == Version::V5;
            GenSubscribe {
                version,
                packet_id,
                sub_id: sub_id.filter(|_| v5),
                entries: entries
                    .into_iter()
                    .map(|(filter, qos, no_local, rap, rh, shared)| {
                        let shared = shared && v5;
                        GenEntry {
                            filter: if shared {
                                format!("$share/grp/{filter}")
                            } else {
                                filter
                            },
                            qos,
                            no_local: no_local && v5 && !shared,
                            rap: rap && v5,
                            rh: if v5 { rh } else { 0 },
                        }
                    })
                    .collect(),
            }
        })
}

fn gen_connect() -> impl Strategy<Value = GenConnect> {
    (
        (
            version(),
            any::<bool>(),
            any::<u16>(),
            "[a-zA-Z0-9\u{e9}-]{0,23}",
        ),
        prop::option::of((
            topic(),
            qos(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..20),
        )),
        prop::option::of("[a-z\u{e9}]{0,10}"),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..20)),
        (
            prop::option::of(any::<u32>()),
            prop::option::of(1u16..),
            prop::option::of(1u32..),
            prop::option::of(any::<u16>()),
        ),
    )
        .prop_map(
            |((version, clean, keep_alive, client_id), will, username, password, props)| {
                let v5 = version == Version::V5;
                GenConnect {
                    version,
                    clean,
                    keep_alive,
                    client_id,
                    will,
                    // 3.1.1 needs a user name for a password.
                    password: password.filter(|_| v5 || username.is_some()),
                    username,
                    session_expiry: props.0.filter(|_| v5),
                    receive_maximum: props.1.filter(|_| v5),
                    maximum_packet_size: props.2.filter(|_| v5),
                    topic_alias_maximum: props.3.filter(|_| v5),
                }
            },
        )
}

/// A packet with a consistent fixed header around arbitrary bytes: it reaches the decoders
/// past the framing checks.
fn framed_noise() -> impl Strategy<Value = Vec<u8>> {
    (any::<u8>(), prop::collection::vec(any::<u8>(), 0..120))
        .prop_map(|(first, body)| wrap(first.max(0x10), &body))
}

/// Any packet that decodes, as decode would see it.
fn valid_packet() -> impl Strategy<Value = (Version, bool, Vec<u8>)> {
    prop_oneof![
        gen_publish().prop_map(|p| (p.version, true, encode_publish(&p))),
        gen_subscribe().prop_map(|s| (s.version, true, encode_subscribe(&s))),
    ]
}

// ---------------------------------------------------------------------------------------------
// Invariants over arbitrary input
// ---------------------------------------------------------------------------------------------

/// Runs every entry point on `bytes` and checks what holds for any input.
fn check_any(bytes: &[u8]) {
    for max in [0, 2, 64, 1 << 20] {
        match packet_len(bytes, max) {
            Ok(Some(n)) => assert!(n <= bytes.len() && n <= max && n >= 2),
            Ok(None) => {}
            Err(Error::TooLarge { size, max: m }) => assert!(size > m && m == max),
            Err(_) => {}
        }
    }
    if let Ok(c) = decode_connect(bytes) {
        assert_eq!(c.packet(), bytes);
        let again = c.with_client_id(c.client_id).expect("same id");
        assert_eq!(again, bytes);
        let renamed = c.with_client_id("x").expect("short id");
        assert_eq!(decode_connect(&renamed).expect("renamed").client_id, "x");
    }
    for version in [Version::V311, Version::V5] {
        for from_client in [true, false] {
            if let Ok(p) = decode(bytes, version, from_client) {
                check_decoded(bytes, &p, version, from_client);
            }
        }
    }
}

/// What holds for every packet that decodes, the rewrites included.
fn check_decoded(bytes: &[u8], packet: &Packet<'_>, version: Version, from_client: bool) {
    assert_eq!(
        PacketType::from_byte(bytes[0]),
        Some(packet.kind()),
        "{packet:?}"
    );
    match packet {
        Packet::Publish(p) => {
            assert_eq!(p.packet(), bytes);
            assert_eq!(p.packet_id.is_some(), p.qos != QoS::AtMostOnce);
            assert!(p.topic.is_empty() || valid_topic_name(p.topic));
            let rewritten = p.with_topic("a/b").unwrap();
            match decode(&rewritten, version, from_client).unwrap() {
                Packet::Publish(q) => {
                    assert_eq!((q.topic, q.payload), ("a/b", p.payload));
                }
                other => panic!("{other:?}"),
            }
        }
        Packet::Subscribe(s) => {
            assert!(!s.filters.is_empty());
            let all = vec![Some(QoS::ExactlyOnce); s.filters.len()];
            assert_eq!(s.rebuild(&all).unwrap(), bytes);
            let first_only: Vec<Option<QoS>> = (0..s.filters.len())
                .map(|i| (i == 0).then_some(QoS::AtMostOnce))
                .collect();
            let rebuilt = s.rebuild(&first_only).unwrap();
            match decode(&rebuilt, version, true).unwrap() {
                Packet::Subscribe(t) => {
                    assert_eq!(t.filters.len(), 1);
                    assert_eq!(t.filters[0].filter, s.filters[0].filter);
                    assert_eq!(t.filters[0].qos, QoS::AtMostOnce);
                }
                other => panic!("{other:?}"),
            }
        }
        Packet::Connack(_) => {
            let ours = ConnackProperties {
                topic_alias_maximum: Some(3),
                maximum_packet_size: Some(100),
                maximum_qos: Some(QoS::AtMostOnce),
                retain_available: Some(false),
                receive_maximum: Some(5),
            };
            for ours in [ConnackProperties::default(), ours] {
                let merged = connack_with_limits(bytes, version, &ours).unwrap();
                assert!(matches!(
                    decode(&merged, version, false),
                    Ok(Packet::Connack(_))
                ));
            }
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..=200)) {
        check_any(&bytes);
    }

    #[test]
    fn never_panics_on_framed_noise(bytes in framed_noise()) {
        prop_assert_eq!(packet_len(&bytes, 1 << 20), Ok(Some(bytes.len())));
        check_any(&bytes);
    }

    #[test]
    fn generated_publish_decodes_to_its_fields(p in gen_publish()) {
        let bytes = encode_publish(&p);
        for n in 0..bytes.len() {
            prop_assert_eq!(packet_len(&bytes[..n], 1 << 20), Ok(None), "prefix {}", n);
        }
        prop_assert_eq!(packet_len(&bytes, 1 << 20), Ok(Some(bytes.len())));
        match decode(&bytes, p.version, true) {
            Ok(Packet::Publish(d)) => {
                prop_assert_eq!(d.dup, p.dup);
                prop_assert_eq!(d.qos, p.qos);
                prop_assert_eq!(d.retain, p.retain);
                prop_assert_eq!(d.topic, p.topic.as_str());
                prop_assert_eq!(d.packet_id, (p.qos != QoS::AtMostOnce).then_some(p.packet_id));
                prop_assert_eq!(d.topic_alias, p.alias);
                prop_assert_eq!(d.payload, &p.payload[..]);
                prop_assert_eq!(d.packet(), &bytes[..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
        // The same bytes from the server are just as valid.
        prop_assert!(decode(&bytes, p.version, false).is_ok());
        check_any(&bytes);
    }

    #[test]
    fn generated_subscribe_decodes_to_its_fields(s in gen_subscribe()) {
        let bytes = encode_subscribe(&s);
        for n in 0..bytes.len() {
            prop_assert_eq!(packet_len(&bytes[..n], 1 << 20), Ok(None), "prefix {}", n);
        }
        match decode(&bytes, s.version, true) {
            Ok(Packet::Subscribe(d)) => {
                prop_assert_eq!(d.packet_id, s.packet_id);
                prop_assert_eq!(d.filters.len(), s.entries.len());
                for (got, want) in d.filters.iter().zip(&s.entries) {
                    prop_assert_eq!(got.filter, want.filter.as_str());
                    prop_assert_eq!(got.qos, want.qos);
                    prop_assert_eq!(got.no_local, want.no_local);
                    prop_assert_eq!(got.retain_as_published, want.rap);
                    prop_assert_eq!(got.retain_handling, want.rh);
                }
            }
            other => prop_assert!(false, "{:?}", other),
        }
        prop_assert!(matches!(decode(&bytes, s.version, false), Err(Error::Protocol(_))));
        check_any(&bytes);
    }

    #[test]
    fn generated_connect_decodes_to_its_fields(c in gen_connect()) {
        let bytes = encode_connect(&c);
        for n in 0..bytes.len() {
            prop_assert_eq!(packet_len(&bytes[..n], 1 << 20), Ok(None), "prefix {}", n);
        }
        let d = decode_connect(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(d.version, c.version);
        prop_assert_eq!(d.clean_start, c.clean);
        prop_assert_eq!(d.keep_alive, c.keep_alive);
        prop_assert_eq!(d.client_id, c.client_id.as_str());
        prop_assert_eq!(d.username, c.username.as_deref());
        prop_assert_eq!(d.has_password, c.password.is_some());
        match (&d.will, &c.will) {
            (None, None) => {}
            (Some(got), Some((topic, qos, retain, payload))) => {
                prop_assert_eq!(got.topic, topic.as_str());
                prop_assert_eq!(got.qos, *qos);
                prop_assert_eq!(got.retain, *retain);
                prop_assert_eq!(got.payload_len, payload.len());
            }
            _ => prop_assert!(false, "will {:?} vs {:?}", d.will, c.will),
        }
        prop_assert_eq!(d.properties.session_expiry_interval, c.session_expiry);
        prop_assert_eq!(d.properties.receive_maximum, c.receive_maximum);
        prop_assert_eq!(d.properties.maximum_packet_size, c.maximum_packet_size);
        prop_assert_eq!(d.properties.topic_alias_maximum, c.topic_alias_maximum);
        prop_assert!(!d.properties.has_authentication_method);
        prop_assert_eq!(decode(&bytes, c.version, true), Err(Error::Protocol("second CONNECT")));
        check_any(&bytes);
    }

    #[test]
    fn with_client_id_changes_only_the_id(c in gen_connect(), id in "[a-zA-Z0-9\u{e9}/-]{0,40}") {
        let bytes = encode_connect(&c);
        let d = decode_connect(&bytes).unwrap();
        let renamed = d.with_client_id(&id).unwrap();
        let mut expected = c.clone();
        expected.client_id = id.clone();
        prop_assert_eq!(renamed, encode_connect(&expected));
    }

    #[test]
    fn with_topic_changes_only_the_topic(p in gen_publish(), t in topic()) {
        let bytes = encode_publish(&p);
        let Ok(Packet::Publish(d)) = decode(&bytes, p.version, true) else {
            panic!("generated PUBLISH decodes");
        };
        let mut expected = p.clone();
        expected.topic = t.clone();
        prop_assert_eq!(d.with_topic(&t).unwrap(), encode_publish(&expected));
    }

    #[test]
    fn rebuild_keeps_the_chosen_entries(s in gen_subscribe(), keep in prop::collection::vec(prop::option::of(qos()), 5)) {
        let bytes = encode_subscribe(&s);
        let Ok(Packet::Subscribe(d)) = decode(&bytes, s.version, true) else {
            panic!("generated SUBSCRIBE decodes");
        };
        let keep = &keep[..s.entries.len()];
        let rebuilt = d.rebuild(keep);
        let mut expected = s.clone();
        expected.entries = s
            .entries
            .iter()
            .zip(keep)
            .filter_map(|(e, k)| k.map(|q| GenEntry { qos: e.qos.min(q), ..e.clone() }))
            .collect();
        if expected.entries.is_empty() {
            prop_assert_eq!(rebuilt, None);
        } else {
            prop_assert_eq!(rebuilt, Some(encode_subscribe(&expected)));
        }
    }

    #[test]
    fn single_byte_mutations_never_panic(
        (_, _, bytes) in valid_packet(), at in any::<prop::sample::Index>(), value in any::<u8>()
    ) {
        let mut mutated = bytes.clone();
        let i = at.index(mutated.len());
        mutated[i] = value;
        check_any(&mutated);
        // Also as part of a stream: framing must not panic and must stay in bounds.
        let mut stream = mutated.clone();
        stream.extend_from_slice(&bytes);
        let _ = packet_len(&stream, 1 << 20);
    }

    #[test]
    fn single_byte_mutations_of_fixture_packets_never_panic(
        pick in any::<prop::sample::Index>(), at in any::<prop::sample::Index>(), value in any::<u8>()
    ) {
        thread_local!(static PACKETS: Vec<(Version, bool, bool, Vec<u8>)> = all_packets());
        let mut bytes = PACKETS.with(|p| pick.get(p).3.clone());
        let i = at.index(bytes.len());
        bytes[i] = value;
        check_any(&bytes);
    }

    #[test]
    fn connect_with_a_mutated_byte_never_panics(c in gen_connect(), at in any::<prop::sample::Index>(), value in any::<u8>()) {
        let mut bytes = encode_connect(&c);
        let i = at.index(bytes.len());
        bytes[i] = value;
        check_any(&bytes);
    }
}

#[test]
fn every_strict_prefix_of_a_fixture_packet_needs_more_bytes() {
    for (_, _, _, frame) in all_packets() {
        for n in 0..frame.len() {
            assert_eq!(packet_len(&frame[..n], 1 << 20), Ok(None));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

#[test]
fn builders_decode_back() {
    for version in [Version::V311, Version::V5] {
        let codes: &[u8] = match version {
            Version::V311 => &[0, 1, 2, 3, 4, 5],
            Version::V5 => &[0x00, 0x80, 0x84, 0x87, 0x95, 0x9F],
        };
        for &reason in codes {
            for session_present in [false, true] {
                let bytes = connack(version, session_present && reason == 0, reason);
                assert_eq!(packet_len(&bytes, 64), Ok(Some(bytes.len())));
                match decode(&bytes, version, false) {
                    Ok(Packet::Connack(c)) => {
                        assert_eq!(c.reason, reason);
                        assert_eq!(c.session_present, session_present && reason == 0);
                        assert_eq!(c.properties, ConnackProperties::default());
                    }
                    other => panic!("{other:?}"),
                }
            }
        }
        for kind in [
            PacketType::Puback,
            PacketType::Pubrec,
            PacketType::Pubrel,
            PacketType::Pubcomp,
        ] {
            let reasons: &[u8] = match kind {
                PacketType::Puback | PacketType::Pubrec => &[0x00, 0x10, 0x87, 0x97],
                _ => &[0x00, 0x92],
            };
            for &reason in reasons {
                let bytes = ack(kind, version, 0x1234, reason);
                let packet = decode(&bytes, version, true).unwrap();
                assert_eq!(packet, decode(&bytes, version, false).unwrap());
                assert_eq!(packet.kind(), kind);
                let a = match packet {
                    Packet::Puback(a)
                    | Packet::Pubrec(a)
                    | Packet::Pubrel(a)
                    | Packet::Pubcomp(a) => a,
                    other => panic!("{other:?}"),
                };
                assert_eq!(a.packet_id, 0x1234);
                let want = if version == Version::V5 { reason } else { 0 };
                assert_eq!(a.reason, want);
                if version == Version::V5 && reason == 0 {
                    assert_eq!(bytes.len(), 4, "short form");
                }
            }
        }
        let grants: &[u8] = match version {
            Version::V311 => &[0x00, 0x01, 0x02, 0x80],
            Version::V5 => &[0x00, 0x01, 0x02, 0x80, 0x87, 0x8F, 0xA2],
        };
        let bytes = suback(version, 7, grants);
        match decode(&bytes, version, false).unwrap() {
            Packet::Suback(s) => assert_eq!((s.packet_id, s.reason_codes), (7, grants)),
            other => panic!("{other:?}"),
        }
        // Many codes: the remaining length needs two bytes.
        let many = vec![1u8; 300];
        match decode(&suback(version, 9, &many), version, false).unwrap() {
            Packet::Suback(s) => assert_eq!(s.reason_codes, &many[..]),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(disconnect(Version::V311, 0x81), None);
    for reason in [0x00, 0x04, 0x81, 0x82, 0x87, 0x8E, 0x95, 0x97] {
        let bytes = disconnect(Version::V5, reason).unwrap();
        assert_eq!(
            decode(&bytes, Version::V5, false).map_err(|e| e.to_string()),
            Ok(Packet::Disconnect { reason })
        );
        assert_eq!(bytes.len(), if reason == 0 { 2 } else { 3 });
    }
    assert_eq!(disconnect(Version::V5, 0), Some(vec![0xE0, 0]));
    for version in [Version::V311, Version::V5] {
        let ping = PINGRESP;
        assert_eq!(decode(&ping, version, false), Ok(Packet::Pingresp));
    }
}

#[test]
fn connack_with_limits_merges_and_appends() {
    // Broker: maximum QoS 1, retain available 1, topic alias maximum 10, a user property,
    // maximum packet size 1000.
    let mut props = vec![0x24, 1, 0x25, 1, 0x22, 0, 10, 0x26];
    put_str(&mut props, b"a");
    put_str(&mut props, b"b");
    props.extend_from_slice(&[0x27, 0, 0, 0x03, 0xE8]);
    let mut body = vec![0, 0];
    put_props(&mut body, &props);
    let broker = wrap(0x20, &body);
    let ours = ConnackProperties {
        topic_alias_maximum: Some(20),
        maximum_packet_size: Some(500),
        maximum_qos: Some(QoS::ExactlyOnce),
        retain_available: Some(false),
        receive_maximum: None,
    };
    let merged = connack_with_limits(&broker, Version::V5, &ours).unwrap();
    // In place, same order: QoS stays 1 (ours is 2), retain 0, alias 10, user property, 500.
    let mut want_props = vec![0x24, 1, 0x25, 0, 0x22, 0, 10, 0x26];
    put_str(&mut want_props, b"a");
    put_str(&mut want_props, b"b");
    want_props.extend_from_slice(&[0x27, 0, 0, 0x01, 0xF4]);
    let mut want = vec![0, 0];
    put_props(&mut want, &want_props);
    assert_eq!(merged, wrap(0x20, &want));

    // A broker CONNACK without properties: ours appended where stricter than the defaults.
    let bare = connack(Version::V5, false, 0);
    let ours = ConnackProperties {
        topic_alias_maximum: Some(5),
        maximum_packet_size: Some(65_536),
        maximum_qos: Some(QoS::AtMostOnce),
        retain_available: Some(true),
        receive_maximum: Some(10),
    };
    let merged = connack_with_limits(&bare, Version::V5, &ours).unwrap();
    match decode(&merged, Version::V5, false).unwrap() {
        Packet::Connack(c) => assert_eq!(
            c.properties,
            ConnackProperties {
                // Absent means 0 on the broker's side: no alias allowed, none announced.
                topic_alias_maximum: None,
                maximum_packet_size: Some(65_536),
                maximum_qos: Some(QoS::AtMostOnce),
                retain_available: None,
                receive_maximum: Some(10),
            }
        ),
        other => panic!("{other:?}"),
    }
    // Not a CONNACK.
    assert!(connack_with_limits(&PINGRESP, Version::V5, &ours).is_err());
    assert!(connack_with_limits(&[0x20, 3, 0, 0], Version::V5, &ours).is_err());
    // 3.1.1: unchanged.
    let v311 = connack(Version::V311, true, 0);
    assert_eq!(
        connack_with_limits(&v311, Version::V311, &ours).unwrap(),
        v311
    );
}

#[test]
fn topic_helpers() {
    assert_eq!(split_shared("$share/g/a/+/#"), Some(("g", "a/+/#")));
    assert_eq!(split_shared("$share//a"), None);
    assert_eq!(split_shared("$share/g"), None);
    assert_eq!(split_shared("$share/g/"), None);
    assert_eq!(split_shared("a/$share/g/b"), None);
    for ok in ["#", "+", "a/+/b", "a/#", "/", "+/+", "$SYS/#", "a//b"] {
        assert!(valid_topic_filter(ok), "{ok}");
    }
    for bad in ["", "a#", "a/#/b", "a+/b", "#/a", "a/b+", "a\0b"] {
        assert!(!valid_topic_filter(bad), "{bad:?}");
    }
    for ok in ["a", "/", "a/b/c", "$SYS/x", "\u{e9}"] {
        assert!(valid_topic_name(ok), "{ok}");
    }
    let long = "a".repeat(65_536);
    for bad in ["", "a/+", "#", "a\0", &long] {
        assert!(!valid_topic_name(bad), "{}", bad.len());
    }
}
