//! Security review of the MQTT relay: attacks against the gateway with a real Mosquitto behind
//! it (harness in `tests/mqtt/`). Tests marked `// FINDING n` document a hole the review found
//! (each failed on the code it reviewed; all are fixed now). The others show an attack that
//! held up.

mod mqtt;

use mqtt::wire::{self, CONNACK, DISCONNECT, PUBACK, PUBCOMP, PUBREC, SUBACK};
use mqtt::*;

const ALLOWED: &str = "plant1/line1/s-7/telemetry/temp";
const MARKER: &str = "plant1/line1/s-7/telemetry/marker";
const FOREIGN: &str = "plant1/line1/s-9/telemetry/temp";

async fn setup(opts: GwOptions) -> (Mosquitto, Direct, Env) {
    let broker = Mosquitto::start().await;
    let sub = Direct::start(&broker, "witness").await;
    let env = Env::start(broker.addr, opts).await;
    (broker, sub, env)
}

/// A witness like `Direct`, but accepting packets up to 1 MiB (rumqttc's default is 10 KiB,
/// too small for the long topics some attacks use).
async fn big_witness(broker: &Mosquitto, client_id: &str) -> Direct {
    let mut o = rumqttc::MqttOptions::new(client_id, "127.0.0.1", broker.addr.port());
    o.set_keep_alive(std::time::Duration::from_secs(30));
    o.set_max_packet_size(1 << 20, 1 << 20);
    let c = Client311::start(o);
    c.connected().await;
    c.client
        .subscribe("#", rumqttc::QoS::ExactlyOnce)
        .await
        .expect("queue SUBSCRIBE");
    c.suback(0).await;
    Direct { c }
}

/// A v5 PUBLISH with arbitrary raw properties (already encoded, without the length).
fn publish5_props(
    topic: &str,
    qos: u8,
    retain: bool,
    pkid: u16,
    props: &[u8],
    payload: &[u8],
) -> Vec<u8> {
    let mut b = Vec::new();
    wire::put_str(&mut b, topic.as_bytes());
    if qos > 0 {
        b.extend_from_slice(&pkid.to_be_bytes());
    }
    wire::varint(props.len(), &mut b);
    b.extend_from_slice(props);
    b.extend_from_slice(payload);
    wire::packet(0x30 | (qos << 1) | u8::from(retain), &b)
}

/// CONNECT (clean start, keep-alive 30 s) with a user name and password.
fn connect_with_credentials(v: V, client_id: &str, user: &str, password: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    wire::put_str(&mut b, b"MQTT");
    b.push(if v.is5() { 5 } else { 4 });
    b.push(0x02 | 0x80 | 0x40);
    b.extend_from_slice(&30u16.to_be_bytes());
    if v.is5() {
        b.push(0);
    }
    wire::put_str(&mut b, client_id.as_bytes());
    wire::put_str(&mut b, user.as_bytes());
    wire::put_str(&mut b, password);
    wire::packet(0x10, &b)
}

// FINDING 1 -----------------------------------------------------------------------------------

/// Two rules: telemetry (max_payload 1024) and state (no payload limit).
fn two_rule_policy() -> String {
    format!(
        r#"[roles]
sensor = "field devices"
[[identity]]
match = "{SENSOR}"
roles = ["sensor"]
[[rule]]
id = "telemetry"
roles = ["sensor"]
services = ["broker"]
[rule.mqtt]
publish = ["plant1/line1/{{identity}}/telemetry/#"]
max_qos = 1
max_payload = 1024
[[rule]]
id = "state"
roles = ["sensor"]
services = ["broker"]
[rule.mqtt]
publish = ["plant1/line1/{{identity}}/state/#"]
max_qos = 1
"#
    )
}

// FINDING 1
/// The broker-side alias table (`broker_holds`) silently fails to record an alias once it would
/// hold more than 64 KiB of topic names (`let _ = holds.set(..)` in `forward_publish`), while the
/// client-side table (`client_sets`) still accepts it (it does not keep the stale long topic of
/// an alias that a refused PUBLISH re-set). The gateway then believes the broker holds alias 2
/// for the topic it decided, forwards an alias-only PUBLISH unchanged, and Mosquitto publishes
/// it on another topic — here breaking that topic's `max_payload`.
#[tokio::test]
async fn alias_table_overflow_makes_the_broker_publish_a_topic_the_gateway_never_decided() {
    let broker = Mosquitto::start().await;
    let sub = big_witness(&broker, "witness").await;
    let env = Env::start(
        broker.addr,
        GwOptions {
            policy: two_rule_policy(),
            ..GwOptions::default()
        },
    )
    .await;
    let v = V::V5;
    let mut c = env.raw_session(SENSOR, v).await;
    let long1 = format!("plant1/line1/s-7/telemetry/{}", "a".repeat(40_000));
    let long2 = format!("plant1/line1/s-7/telemetry/{}", "b".repeat(30_000));
    const STATE: &str = "plant1/line1/s-7/state/mode";
    let pub_alias = |topic: &str, qos: u8, pkid: u16, payload: &[u8], alias: u16| {
        wire::publish_raw(v, topic.as_bytes(), qos, false, pkid, payload, Some(alias))
    };
    // 1. alias 1 = long telemetry topic (allowed): both tables hold 40 KB.
    c.send(&pub_alias(&long1, 1, 1, b"1", 1)).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    // 2. alias 1 re-set by a refused PUBLISH: the client's table forgets the 40 KB, the
    //    broker-side view keeps it.
    c.send(&pub_alias(FOREIGN, 1, 2, b"2", 1)).await;
    assert_eq!(c.expect(PUBACK).await.ack_reason(), 0x87);
    // 3. alias 2 = STATE (allowed).
    c.send(&pub_alias(STATE, 1, 3, b"3", 2)).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    // 4. alias 2 = long telemetry topic #2 (allowed, forwarded with its topic: the broker now
    //    holds alias 2 = long2) but the broker-side view cannot record it (70 KB > 64 KiB).
    c.send(&pub_alias(&long2, 1, 4, b"4", 2)).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    // 5. alias 2 = STATE again, in a PUBLISH refused for its QoS (never reaches the broker).
    c.send(&pub_alias(STATE, 2, 5, b"5", 2)).await;
    let rec = c.expect(PUBREC).await;
    assert_eq!(rec.ack_reason(), 0x87);
    c.send(&wire::pubrel(5)).await;
    c.expect(PUBCOMP).await;
    // 6. alias-only: the gateway decides STATE (no payload limit) with 2000 bytes...
    let big = vec![b'S'; 2000];
    c.send(&pub_alias("", 1, 6, &big, 2)).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    let marker = "plant1/line1/s-7/state/marker";
    assert!(c.publish1(marker, 7, b"m").await.ack_reason() < 0x80);
    sub.wait_for(marker).await;
    let smuggled: Vec<(String, usize)> = sub
        .messages()
        .into_iter()
        .filter(|m| m.payload == big)
        .map(|m| (m.topic.chars().take(40).collect(), m.topic.len()))
        .collect();
    // ...and the broker must publish it on STATE, not on long2 (telemetry, max_payload 1024).
    assert_eq!(
        smuggled,
        vec![(STATE.to_string(), STATE.len())],
        "the gateway decided {STATE}; the broker published the 2000-byte message elsewhere"
    );
}

// FINDING 2 -----------------------------------------------------------------------------------

// FINDING 2
/// The will is decided once, at CONNECT. A reload that revokes the will's topic (the identity
/// keeps the service) does not stop the broker from publishing it when the session ends: the
/// gateway closes the broker connection without a DISCONNECT, so Mosquitto fires the will on a
/// topic the current policy denies.
#[tokio::test]
async fn will_is_published_on_a_topic_a_reload_revoked() {
    let (broker, sub, env) = setup(GwOptions::default()).await;
    const WILL: &str = "plant1/line1/s-7/telemetry/status";
    let will = Will {
        topic: WILL,
        payload: b"offline",
        qos: 1,
        retain: false,
    };
    let mut c = env.raw(SENSOR, V::V5).await;
    c.send(&wire::connect(V::V5, SENSOR, Some(&will))).await;
    assert_eq!(c.expect(CONNACK).await.connack_code(), 0);
    broker.wait_client(SENSOR).await;
    // The sensor keeps its rule for the service, but no longer any telemetry topic.
    env.reload_policy(&policy_with(
        r#"publish = ["plant1/line1/{identity}/other/#"]
subscribe = ["plant1/broadcast/+"]"#,
    ));
    // Under the new policy the same topic is refused.
    let ack = c.publish1(WILL, 1, b"now denied").await;
    assert_eq!(ack.ack_reason(), 0x87, "{ack:?}");
    // The device drops off the network.
    drop(c);
    env.wait_event("session_closed", |e| e["identity"] == SENSOR)
        .await;
    broker.wait_log(&format!("Client {SENSOR} ")).await;
    let plant = Direct::start(&broker, "plant-side").await;
    plant.publish("plant1/marker", 1, b"m").await;
    sub.wait_for("plant1/marker").await;
    assert!(
        !sub.topics().iter().any(|t| t == WILL),
        "the will fired on a revoked topic: {:?}",
        sub.messages()
    );
}

// FINDING 3 -----------------------------------------------------------------------------------

// FINDING 3 (fixed: identities containing '/' never substitute into `{identity}`)
/// Were `{identity}` substituted literally, a URI identity would span levels and one identity's
/// topic space could lie inside another's: the device `…/sensor/s-7/cmd` would publish "its
/// telemetry" straight into s-7's command topics. Identities with '/' never match an
/// `{identity}` filter, so neither the victim's subscription nor the injection is allowed, and
/// `ztgate check` warns about such a policy.
#[tokio::test]
async fn nested_uri_identity_publishes_into_another_devices_commands() {
    const VICTIM: &str = "spiffe://plant1/line1/sensor/s-7";
    const ATTACKER: &str = "spiffe://plant1/line1/sensor/s-7/cmd";
    let policy = r#"[roles]
sensor = "field devices"
[[identity]]
match = "spiffe://plant1/line1/sensor/*"
roles = ["sensor"]
[[rule]]
id = "sensor"
roles = ["sensor"]
services = ["broker"]
[rule.mqtt]
publish = ["plant1/line1/{identity}/telemetry/#"]
subscribe = ["plant1/line1/{identity}/cmd/#"]
max_qos = 1
"#;
    let (broker, sub, env) = setup(GwOptions {
        policy: policy.to_string(),
        ..GwOptions::default()
    })
    .await;
    let v = V::V5;
    let mut victim = env.raw_session(VICTIM, v).await;
    let cmd_filter = format!("plant1/line1/{VICTIM}/cmd/#");
    victim
        .send(&wire::subscribe(v, 1, &[(cmd_filter.as_str(), 1)]))
        .await;
    assert_eq!(victim.expect(SUBACK).await.suback_codes(), vec![0x87]);

    let mut attacker = env.raw_session(ATTACKER, v).await;
    let injected = format!("plant1/line1/{ATTACKER}/telemetry/open-valve");
    assert!(injected.starts_with(&format!("plant1/line1/{VICTIM}/cmd/")));
    let ack = attacker.publish1(&injected, 1, b"open").await;
    assert_eq!(ack.ack_reason(), 0x87, "{ack:?}");
    // A marker from the plant side: the injected message is not before it.
    let plant = Direct::start(&broker, "plant-side").await;
    plant.publish("plant1/marker", 1, b"m").await;
    sub.wait_for("plant1/marker").await;
    assert!(
        !sub.topics().contains(&injected),
        "another device's publish reached the broker: {:?}",
        sub.topics()
    );
}

// FINDING 4 -----------------------------------------------------------------------------------

// FINDING 4
/// Packets a client sends right behind its CONNECT (MQTT 3.1.1 §3.1.4 allows it) are read
/// with the CONNECT but only processed when more bytes arrive from the client: a PUBLISH
/// pipelined with the CONNECT is stuck (no PUBACK, not forwarded) until the next packet.
#[tokio::test]
async fn packets_pipelined_behind_connect_are_processed() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    for v in [V::V311, V::V5] {
        let mut c = env.raw(SENSOR, v).await;
        let topic = format!("{MARKER}-{v:?}");
        let mut bytes = wire::connect(v, SENSOR, None);
        bytes.extend(wire::publish(v, &topic, 1, 1, b"pipelined"));
        c.send(&bytes).await;
        assert_eq!(c.expect(CONNACK).await.connack_code(), 0);
        let ack = c.recv().await;
        assert!(
            matches!(&ack, Ok(p) if p.kind() == PUBACK && p.pkid() == 1),
            "{v:?}: no PUBACK for the PUBLISH sent with the CONNECT: {ack:?}"
        );
        sub.wait_for(&topic).await;
    }
}

// FINDING 5 -----------------------------------------------------------------------------------

// FINDING 5
/// The client id is bound to the certificate, the user name is not: the CONNECT reaches the
/// broker with whatever user name (and password) the device chose, so a broker that keys its
/// ACLs, plugins or audit on the user name (Mosquitto `acl_file` `user`/`%u`) sees s-7 as
/// `admin` or as another device.
#[tokio::test]
async fn connect_user_name_is_not_bound_to_the_identity() {
    let (broker, _sub, env) = setup(GwOptions::default()).await;
    for v in [V::V311, V::V5] {
        let mut c = env.raw(SENSOR, v).await;
        c.send(&connect_with_credentials(v, SENSOR, "admin", b"x"))
            .await;
        let ack = c.expect(CONNACK).await;
        // `username = "require"` (the default): CONNACK "bad user name or password".
        assert_eq!(
            ack.connack_code(),
            if v.is5() { 0x86 } else { 0x04 },
            "{v:?}"
        );
        drop(c);
        // The identity itself as the user name is fine.
        let mut c = env.raw(SENSOR, v).await;
        c.send(&connect_with_credentials(v, SENSOR, SENSOR, b"x"))
            .await;
        assert_eq!(c.expect(CONNACK).await.connack_code(), 0, "{v:?}");
        broker.wait_log(&format!("u'{SENSOR}'")).await;
    }
    env.wait_event("mqtt_denied", |e| e["reason"]["kind"] == "username")
        .await;
    // Whatever the gateway does (refuse, strip or rewrite to the identity), the broker must
    // never see a user name other than the certificate identity.
    let log = broker.log();
    assert!(
        !log.contains("u'admin'"),
        "a device chose its broker user name:\n{}",
        log.lines()
            .filter(|l| l.contains("u'"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // `username = "forward"`: for brokers that authenticate devices themselves.
    let (broker, _sub, env) = setup(GwOptions {
        service: "username = \"forward\"".into(),
        ..GwOptions::default()
    })
    .await;
    let mut c = env.raw(SENSOR, V::V5).await;
    c.send(&connect_with_credentials(V::V5, SENSOR, "alice", b"x"))
        .await;
    assert_eq!(c.expect(CONNACK).await.connack_code(), 0);
    broker.wait_log("u'alice'").await;
}

// FINDING 6 -----------------------------------------------------------------------------------

// FINDING 6
/// `max_payload` counts only the application payload: a v5 PUBLISH carries up to
/// `max_packet_size` of User Properties (or Correlation Data, Content Type, Response Topic)
/// past a 1024-byte limit, and the broker fans all of it out to every subscriber.
#[tokio::test]
async fn max_payload_is_bypassed_with_v5_properties() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw_session(SENSOR, V::V5).await;
    let mut props = vec![0x26];
    wire::put_str(&mut props, b"k");
    wire::put_str(&mut props, &vec![b'P'; 30_000]);
    c.send(&publish5_props(ALLOWED, 1, false, 1, &props, b"tiny"))
        .await;
    let ack = c.expect(PUBACK).await;
    assert!(c.publish1(MARKER, 2, b"m").await.ack_reason() < 0x80);
    sub.wait_for(MARKER).await;
    assert!(
        ack.ack_reason() >= 0x80 && !sub.topics().iter().any(|t| t == ALLOWED),
        "a 30 KB message passed max_payload = 1024 (PUBACK {ack:?}); reached the broker: {:?}",
        sub.topics()
    );
}

// FINDING 7 -----------------------------------------------------------------------------------

// FINDING 7
/// In 5.0 a PUBREC with a reason code >= 0x80 ends the QoS 2 exchange (§4.3.3): a compliant
/// client sends no PUBREL. The gateway still keeps every refused id waiting for one and, after
/// 1024 refused QoS 2 PUBLISHes, closes the compliant client's session as a protocol violation.
#[tokio::test]
async fn v5_refused_qos2_ids_are_released_without_a_pubrel() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw_session(SENSOR, V::V5).await;
    // QoS 2 is above max_qos 1: every one is refused with PUBREC 0x87; send in batches.
    let mut id = 1u16;
    while id <= 1100 {
        let mut batch = Vec::new();
        let end = (id + 99).min(1100);
        for i in id..=end {
            batch.extend(wire::publish(V::V5, ALLOWED, 2, i, b"q2"));
        }
        c.send(&batch).await;
        for i in id..=end {
            let p = c.recv().await;
            match p {
                Ok(p) if p.kind() == PUBREC && p.pkid() == i && p.ack_reason() == 0x87 => {}
                other => panic!("refused QoS 2 #{i}: expected PUBREC 0x87, got {other:?}"),
            }
        }
        id = end + 1;
    }
    assert!(c.publish1(MARKER, 1, b"still here").await.ack_reason() < 0x80);
    sub.wait_for(MARKER).await;
}

// Held up -------------------------------------------------------------------------------------

/// Shared-subscription and `$` edge cases against `plant1/line1/{identity}/cmd/#` and
/// `plant1/broadcast/+`: only the shared form of an allowed filter is granted.
#[tokio::test]
async fn held_up_shared_and_dollar_subscriptions() {
    let (_broker, _sub, env) = setup(GwOptions::default()).await;
    for v in [V::V311, V::V5] {
        let mut c = env.raw_session(SENSOR, v).await;
        let filters = [
            ("$share/g/#", 0),
            ("$share/g/$SYS/#", 0),
            ("$SYS/#", 0),
            ("$share/g/+/line1/s-7/cmd/#", 0),
            ("$share/plant1/line1/s-7/cmd/#", 0),
            ("$share/g/plant1/line1/s-9/cmd/#", 0),
            ("+/line1/s-7/cmd/x", 0),
            ("plant1/+/s-7/cmd/x", 0),
            ("plant1/broadcast/#", 0),
            ("$share/g/plant1/line1/s-7/cmd/#", 1),
        ];
        c.send(&wire::subscribe(v, 3, &filters)).await;
        let ack = c.expect(SUBACK).await;
        let d = if v.is5() { 0x87 } else { 0x80 };
        assert_eq!(
            ack.suback_codes(),
            vec![d, d, d, d, d, d, d, d, d, 1],
            "{v:?}"
        );
        // A client may not publish to $SYS.
        let ack = c.publish1("$SYS/broker/uptime", 9, b"0").await;
        assert_eq!(ack.ack_reason(), if v.is5() { 0x87 } else { 0 });
        drop(c);
    }
    let denied = env.events("mqtt_denied").await;
    assert!(denied.iter().any(|e| e["topic"] == "$SYS/broker/uptime"));
}

/// An alias set by an allowed PUBLISH, then re-set to another (allowed) topic by a PUBLISH
/// refused for its QoS, then used alone: the gateway resends the topic name, so the broker
/// publishes exactly the topic decided. Aliases used alone after a refused re-set to a denied
/// topic stay denied.
#[tokio::test]
async fn held_up_alias_reset_by_a_refused_publish() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let v = V::V5;
    let mut c = env.raw_session(SENSOR, v).await;
    const OTHER: &str = "plant1/line1/s-7/telemetry/other";
    let p = |t: &str, qos: u8, id: u16, pl: &'static [u8]| {
        wire::publish_raw(v, t.as_bytes(), qos, false, id, pl, Some(1))
    };
    c.send(&p(ALLOWED, 1, 1, b"a")).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    c.send(&p(OTHER, 2, 2, b"b")).await;
    assert_eq!(c.expect(PUBREC).await.ack_reason(), 0x87);
    c.send(&p("", 1, 3, b"c")).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    c.send(&p(FOREIGN, 2, 4, b"d")).await;
    assert_eq!(c.expect(PUBREC).await.ack_reason(), 0x87);
    c.send(&p("", 1, 5, b"e")).await;
    assert_eq!(c.expect(PUBACK).await.ack_reason(), 0x87);
    assert!(c.publish1(MARKER, 6, b"m").await.ack_reason() < 0x80);
    sub.wait_for(MARKER).await;
    let got: Vec<(String, Vec<u8>)> = sub
        .messages()
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    assert_eq!(
        got,
        vec![
            (ALLOWED.to_string(), b"a".to_vec()),
            (OTHER.to_string(), b"c".to_vec()),
            (MARKER.to_string(), b"m".to_vec()),
        ]
    );
}

/// A refused QoS 2 PUBLISH followed by an allowed one with the same packet id: the allowed one
/// is forwarded, its PUBREL reaches the broker and the broker's PUBCOMP comes back.
#[tokio::test]
async fn held_up_refused_then_allowed_qos2_with_the_same_id() {
    let policy = policy_with(
        r#"publish = ["plant1/line1/{identity}/telemetry/#"]
subscribe = ["plant1/line1/{identity}/cmd/#"]"#,
    )
    .replace("max_qos = 1", "max_qos = 2");
    let (_broker, sub, env) = setup(GwOptions {
        policy,
        ..GwOptions::default()
    })
    .await;
    for v in [V::V311, V::V5] {
        let mut c = env.raw_session(SENSOR, v).await;
        c.send(&wire::publish(v, FOREIGN, 2, 7, b"denied")).await;
        let rec = c.expect(PUBREC).await;
        assert_eq!(rec.ack_reason(), if v.is5() { 0x87 } else { 0 });
        let topic = format!("{ALLOWED}-{v:?}");
        c.send(&wire::publish(v, &topic, 2, 7, b"allowed")).await;
        let rec = c.expect(PUBREC).await;
        assert_eq!((rec.pkid(), rec.ack_reason()), (7, 0));
        c.send(&wire::pubrel(7)).await;
        assert_eq!(c.expect(PUBCOMP).await.pkid(), 7);
        assert_eq!(sub.wait_for(&topic).await.qos, 2);
        drop(c);
    }
    assert!(!sub.topics().iter().any(|t| t == FOREIGN));
}

/// Client ids that are not the identity byte for byte are refused: empty, other case, another
/// device's identity, the identity with a trailing space or NUL-free lookalike.
#[tokio::test]
async fn held_up_client_id_binding() {
    let (broker, _sub, env) = setup(GwOptions::default()).await;
    for v in [V::V311, V::V5] {
        for id in ["", "S-7", SENSOR2, "s-7 ", "s-7/", "s\u{2011}7"] {
            let mut c = env.raw(SENSOR, v).await;
            c.send(&wire::connect(v, id, None)).await;
            let ack = c.expect(CONNACK).await;
            assert_eq!(
                ack.connack_code(),
                if v.is5() { 0x85 } else { 0x02 },
                "{v:?} client id {id:?}"
            );
            assert!(c.closed().await.is_empty());
        }
    }
    let _ok = env.raw_session(SENSOR, V::V5).await;
    broker.wait_client(SENSOR).await;
    assert_eq!(
        broker.log().matches("New client connected").count(),
        2,
        "witness and s-7 only"
    );
}

/// A will the policy refuses is refused however it is dressed: QoS 2, retain, a large payload.
#[tokio::test]
async fn held_up_will_limits() {
    let (broker, sub, env) = setup(GwOptions::default()).await;
    let big = vec![b'w'; 5000];
    let wills = [
        Will {
            topic: ALLOWED,
            payload: b"q2",
            qos: 2,
            retain: false,
        },
        Will {
            topic: ALLOWED,
            payload: b"r",
            qos: 1,
            retain: true,
        },
        Will {
            topic: ALLOWED,
            payload: &big,
            qos: 0,
            retain: false,
        },
        Will {
            topic: "$SYS/broker/x",
            payload: b"s",
            qos: 0,
            retain: false,
        },
    ];
    for v in [V::V311, V::V5] {
        for w in &wills {
            let mut c = env.raw(SENSOR, v).await;
            c.send(&wire::connect(v, SENSOR, Some(w))).await;
            let ack = c.expect(CONNACK).await;
            assert_eq!(ack.connack_code(), if v.is5() { 0x87 } else { 0x05 });
            assert!(c.closed().await.is_empty());
        }
    }
    let mut ok = env.raw_session(SENSOR, V::V5).await;
    assert!(ok.publish1(MARKER, 1, b"m").await.ack_reason() < 0x80);
    sub.wait_for(MARKER).await;
    assert_eq!(sub.topics(), vec![MARKER]);
    assert_eq!(broker.log().matches("New client connected").count(), 2);
}

/// Malformed and out-of-place packets: AUTH in 3.1.1, a second CONNECT, SUBACK from the
/// client, a SUBSCRIBE with a `$share` name containing `+` (5.0), and no_local on a shared
/// subscription, each close the session (v5: DISCONNECT >= 0x80 first) and reach nothing.
#[tokio::test]
async fn held_up_out_of_place_packets() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut nolocal = wire::subscribe(V::V5, 1, &[("$share/g/plant1/line1/s-7/cmd/#", 0)]);
    let last = nolocal.len() - 1;
    nolocal[last] |= 0x04;
    let cases: Vec<(V, Vec<u8>)> = vec![
        (V::V311, wire::packet(0xF0, &[])),
        (V::V5, wire::connect(V::V5, SENSOR, None)),
        (V::V5, wire::packet(0x90, &[0, 1, 0, 0])),
        (
            V::V5,
            wire::subscribe(V::V5, 1, &[("$share/+/plant1/line1/s-7/cmd/#", 0)]),
        ),
        (V::V5, nolocal),
        (V::V5, vec![0x30, 0x80, 0x80, 0x80, 0x80, 0x01]),
    ];
    for (i, (v, bytes)) in cases.into_iter().enumerate() {
        let mut c = env.raw_session(SENSOR, v).await;
        c.send(&bytes).await;
        let seen = c.closed().await;
        assert!(
            seen.iter()
                .all(|p| v.is5() && p.kind() == DISCONNECT && p.disconnect_reason() >= 0x80),
            "case {i}: {seen:?}"
        );
    }
    assert!(sub.messages().is_empty());
}

/// A SUBSCRIBE with a denied filter reusing the packet id of one still waiting for its SUBACK
/// (MQTT-2.2.1-3 forbids it) would make the gateway merge the broker's codes into the wrong
/// SUBACK: the session is closed instead (5.0: DISCONNECT 0x82).
#[tokio::test]
async fn subscribe_packet_id_reused_before_its_suback_closes_the_session() {
    let (_broker, _sub, env) = setup(GwOptions::default()).await;
    for v in [V::V311, V::V5] {
        let mut c = env.raw_session(SENSOR, v).await;
        let filters = [("plant1/line1/s-7/cmd/#", 1), ("plant1/line1/s-9/cmd/#", 1)];
        let mut bytes = wire::subscribe(v, 7, &filters);
        bytes.extend(wire::subscribe(v, 7, &filters));
        c.send(&bytes).await;
        let seen = c.closed().await;
        let disconnects: Vec<u8> = seen
            .iter()
            .filter(|p| p.kind() == DISCONNECT)
            .map(|p| p.disconnect_reason())
            .collect();
        if v.is5() {
            assert_eq!(disconnects, vec![0x82], "{seen:?}");
        } else {
            assert!(disconnects.is_empty(), "{seen:?}");
        }
    }
    let e = env
        .wait_event("mqtt_protocol_violation", |e| {
            e["detail"].as_str().is_some_and(|d| d.contains("reused"))
        })
        .await;
    assert_eq!(e["side"], "downstream", "{e}");
}
