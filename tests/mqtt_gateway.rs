//! MQTT through the gateway end to end: a real Mosquitto 2.0 behind it, rumqttc 3.1.1 and 5.0
//! clients (and a raw client for the bytes no library sends) in front over mTLS, a direct
//! subscriber on the broker as the witness of what got through.

mod mqtt;

use mqtt::*;

/// The harness itself: mosquitto starts, the direct subscriber sees what a direct publisher
/// sends, with QoS and payload intact, and the log names the clients.
#[tokio::test]
async fn harness_mosquitto_and_direct_subscriber_work() {
    let broker = Mosquitto::start().await;
    let sub = Direct::start(&broker, "harness-sub").await;
    broker.wait_client("harness-sub").await;
    let publisher = Direct::start(&broker, "harness-pub").await;
    publisher.publish("plant1/x", 1, b"hello").await;
    publisher.publish("plant1/y", 2, b"world").await;
    let m = sub.wait_for("plant1/y").await;
    assert_eq!(m.payload, b"world");
    assert_eq!(m.qos, 2);
    let all = sub.messages();
    assert_eq!(all[0].topic, "plant1/x");
    assert_eq!(all[0].payload, b"hello");
    assert_eq!(all[0].qos, 1);
    assert!(!all[0].retain);
}

/// The harness's TLS listener: mosquitto requires a client certificate from the broker CA; a
/// client with the gateway's upstream certificate gets in, one without any does not.
#[tokio::test]
async fn harness_mosquitto_tls_listener_requires_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamPki::new(dir.path());
    let broker = Mosquitto::start_with(Some(&up.broker)).await;
    let sub = Direct::start(&broker, "tls-witness").await;
    let ca = std::fs::read(&up.broker.ca).unwrap();
    let cert = std::fs::read(&up.gw_cert).unwrap();
    let key = std::fs::read(&up.gw_key).unwrap();
    let tls_port = broker.tls_addr.unwrap().port();
    let with_cert = ztgate::tls::client_config(&ca, Some((&cert, &key)), BOTH).unwrap();
    let mut o = rumqttc::MqttOptions::new("tls-client", "127.0.0.1", tls_port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(with_cert),
    ));
    let c = Client311::start(o);
    c.connected().await;
    c.client
        .publish(
            "plant1/tls",
            rumqttc::QoS::AtLeastOnce,
            false,
            b"t".to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(sub.wait_for("plant1/tls").await.payload, b"t");

    let without = ztgate::tls::client_config(&ca, None, BOTH).unwrap();
    let mut o = rumqttc::MqttOptions::new("tls-anon", "127.0.0.1", tls_port);
    o.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(without),
    ));
    let anon = Client311::start(o);
    let why = anon.events.wait_end().await;
    assert!(anon.events.all().is_empty(), "{why}");
}

use mqtt::wire::{self, CONNACK, DISCONNECT, PUBACK, PUBCOMP, PUBLISH, PUBREC, SUBACK};

/// Allowed topics of the sensor `s-7` under the default policy.
const ALLOWED: &str = "plant1/line1/s-7/telemetry/temp";
const MARKER: &str = "plant1/line1/s-7/telemetry/marker";
const CMD_FILTER: &str = "plant1/line1/s-7/cmd/#";
/// Another device's topics: outside `s-7`'s policy.
const FOREIGN: &str = "plant1/line1/s-9/telemetry/temp";
const FOREIGN_CMD_FILTER: &str = "plant1/line1/s-9/cmd/#";

/// One `#[tokio::test]` per protocol version for a scenario `async fn name(v: V)`.
macro_rules! both_versions {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test]
            async fn v311() {
                super::$name(V::V311).await
            }
            #[tokio::test]
            async fn v5() {
                super::$name(V::V5).await
            }
        }
    )*};
}

both_versions!(
    allowed_publish_arrives_intact,
    denied_publish_is_refused_and_never_arrives,
    partially_denied_subscribe_answers_per_filter,
    spoofed_client_id_is_refused_before_the_broker,
    rewritten_client_id_is_the_identity,
    identity_without_rule_for_the_service_is_refused,
    will_outside_policy_is_refused_will_inside_is_delivered,
    malformed_packets_close_only_their_session,
    reload_stops_delivery_on_a_revoked_subscription,
    reload_that_takes_the_service_away_ends_the_session,
    upstream_over_tls_with_a_client_certificate,
);

/// Denied-PUBLISH acknowledgement reason: 0x87 in 5.0, a plain ack in 3.1.1.
fn denied_ack(v: V) -> u8 {
    if v.is5() { 0x87 } else { 0x00 }
}

async fn setup(opts: GwOptions) -> (Mosquitto, Direct, Env) {
    let broker = Mosquitto::start().await;
    let sub = Direct::start(&broker, "witness").await;
    let env = Env::start(broker.addr, opts).await;
    (broker, sub, env)
}

/// Publishes through a rumqttc client of version `v` (client id = identity) and waits until
/// the client's session is up.
async fn rumqttc_publish(env: &Env, v: V, client_id: &str, msgs: &[(&str, u8, &[u8])]) {
    match v {
        V::V311 => {
            let c = Client311::start(env.opts311(SENSOR, client_id));
            c.connected().await;
            for (t, q, p) in msgs {
                c.client
                    .publish(*t, qos_of(*q), false, p.to_vec())
                    .await
                    .unwrap();
            }
            // Keep the client alive until its messages are acknowledged.
            let n = msgs.iter().filter(|m| m.1 > 0).count();
            c.events
                .wait("acks", |evs, _| {
                    let acks = evs
                        .iter()
                        .filter(|e| {
                            matches!(
                                e,
                                rumqttc::Event::Incoming(
                                    rumqttc::Packet::PubAck(_) | rumqttc::Packet::PubComp(_)
                                )
                            )
                        })
                        .count();
                    (acks >= n).then_some(())
                })
                .await;
        }
        V::V5 => {
            use rumqttc::v5::{Event, mqttbytes::v5::Packet};
            let c = Client5::start(env.opts5(SENSOR, client_id));
            c.connected().await;
            for (t, q, p) in msgs {
                c.client
                    .publish(*t, qos5_of(*q), false, p.to_vec())
                    .await
                    .unwrap();
            }
            let n = msgs.iter().filter(|m| m.1 > 0).count();
            c.events
                .wait("acks", |evs, _| {
                    let acks = evs
                        .iter()
                        .filter(|e| {
                            matches!(e, Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)))
                        })
                        .count();
                    (acks >= n).then_some(())
                })
                .await;
        }
    }
}

// 1. ------------------------------------------------------------------------------------------

async fn allowed_publish_arrives_intact(v: V) {
    let (broker, sub, env) = setup(GwOptions::default()).await;
    let payload: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    rumqttc_publish(
        &env,
        v,
        SENSOR,
        &[(ALLOWED, 0, b"qos0"), (MARKER, 1, &payload)],
    )
    .await;
    let m = sub.wait_for(MARKER).await;
    assert_eq!(m.payload, payload, "payload intact");
    assert_eq!(m.qos, 1);
    assert!(!m.retain);
    let all = sub.messages();
    assert_eq!(all[0].topic, ALLOWED);
    assert_eq!(all[0].payload, b"qos0");
    assert_eq!(all[0].qos, 0);
    assert_eq!(all.len(), 2, "{all:?}");
    broker.wait_client(SENSOR).await;
    assert!(env.events("mqtt_denied").await.is_empty());
}

// 2. ------------------------------------------------------------------------------------------

async fn denied_publish_is_refused_and_never_arrives(v: V) {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw_session(SENSOR, v).await;
    let refused = denied_ack(v);

    // Topic outside the policy, QoS 1.
    let ack = c.publish1(FOREIGN, 1, b"foreign").await;
    assert_eq!(ack.ack_reason(), refused, "topic denial: {ack:?}");
    // QoS 0 outside the policy: dropped silently (the next answer is for pkid 2).
    c.send(&wire::publish(v, FOREIGN, 0, 0, b"foreign-q0"))
        .await;
    // QoS 2 on an allowed topic, above max_qos = 1.
    c.send(&wire::publish(v, ALLOWED, 2, 2, b"qos2")).await;
    let rec = c.expect(PUBREC).await;
    assert_eq!((rec.pkid(), rec.ack_reason()), (2, refused), "{rec:?}");
    c.send(&wire::pubrel(2)).await;
    let comp = c.expect(PUBCOMP).await;
    assert_eq!(comp.pkid(), 2, "{comp:?}");
    // Retain where retain = false.
    c.send(&wire::publish_raw(
        v,
        ALLOWED.as_bytes(),
        1,
        true,
        3,
        b"retained",
        None,
    ))
    .await;
    let ack = c.expect(PUBACK).await;
    assert_eq!(
        (ack.pkid(), ack.ack_reason()),
        (3, refused),
        "retain: {ack:?}"
    );
    // Payload above max_payload = 1024.
    let ack = c.publish1(ALLOWED, 4, &[b'x'; 1025]).await;
    assert_eq!(ack.ack_reason(), refused, "payload: {ack:?}");
    // The same payload size limit exactly is fine, and so is the marker.
    let ack = c.publish1(ALLOWED, 5, &[b'y'; 1024]).await;
    assert!(ack.ack_reason() < 0x80, "{ack:?}");
    let ack = c.publish1(MARKER, 6, b"marker").await;
    assert!(ack.ack_reason() < 0x80, "{ack:?}");

    sub.wait_for(MARKER).await;
    let got = sub.messages();
    assert_eq!(
        got.iter().map(|m| m.topic.as_str()).collect::<Vec<_>>(),
        vec![ALLOWED, MARKER],
        "only the allowed 1024-byte message and the marker may arrive: {got:?}"
    );
    assert_eq!(got[0].payload, vec![b'y'; 1024]);

    let e = env.wait_denied("PUBLISH", "topic").await;
    assert_eq!(e["topic"], FOREIGN, "{e}");
    for kind in ["qos", "retain", "payload"] {
        let e = env.wait_denied("PUBLISH", kind).await;
        assert_eq!(e["topic"], ALLOWED, "{e}");
        assert_eq!(e["rule"], "sensor-telemetry", "{e}");
    }
    let e = env.wait_denied("PUBLISH", "qos").await;
    assert_eq!(
        (&e["reason"]["qos"], &e["reason"]["max"]),
        (&2.into(), &1.into()),
        "{e}"
    );
    let e = env.wait_denied("PUBLISH", "payload").await;
    assert_eq!(
        (&e["reason"]["size"], &e["reason"]["max"]),
        (&1025.into(), &1024.into()),
        "{e}"
    );
    let topic_denials = env
        .events("mqtt_denied")
        .await
        .into_iter()
        .filter(|e| e["reason"]["kind"] == "topic")
        .count();
    assert_eq!(topic_denials, 2, "QoS 1 and QoS 0 denials are both audited");
}

#[tokio::test]
async fn denied_publish_v311_disconnect_mode_closes_the_connection() {
    let opts = GwOptions {
        service: "max_packet_size = 65536\ndenied_publish_v311 = \"disconnect\"".into(),
        ..GwOptions::default()
    };
    let (_broker, sub, env) = setup(opts).await;
    let mut c = env.raw_session(SENSOR, V::V311).await;
    c.send(&wire::publish(V::V311, FOREIGN, 1, 1, b"foreign"))
        .await;
    let seen = c.closed().await;
    assert!(seen.is_empty(), "no PUBACK before the close: {seen:?}");

    // 5.0 sessions still get a refusal and stay open in this mode.
    let mut c5 = env.raw_session(SENSOR, V::V5).await;
    let ack = c5.publish1(FOREIGN, 1, b"foreign5").await;
    assert_eq!(ack.ack_reason(), 0x87);
    let ack = c5.publish1(MARKER, 2, b"marker").await;
    assert!(ack.ack_reason() < 0x80, "{ack:?}");
    sub.wait_for(MARKER).await;
    assert_eq!(sub.topics(), vec![MARKER]);
    let e = env.wait_denied("PUBLISH", "topic").await;
    assert_eq!(e["topic"], FOREIGN);
}

// 3. ------------------------------------------------------------------------------------------

async fn partially_denied_subscribe_answers_per_filter(v: V) {
    let (_broker, _sub, env) = setup(GwOptions::default()).await;
    let publisher = Direct::start(&_broker, "plant-side").await;
    const CMD: &str = "plant1/line1/s-7/cmd/reboot";
    const FOREIGN_CMD: &str = "plant1/line1/s-9/cmd/reboot";
    const BROADCAST: &str = "plant1/broadcast/all";
    // Requested: allowed at QoS 2 (max_qos 1), denied, allowed at QoS 0.
    let received_topics: Vec<String>;
    let cmd_qos: u8;
    match v {
        V::V311 => {
            use rumqttc::{QoS, SubscribeFilter, SubscribeReasonCode};
            let c = Client311::start(env.opts311(SENSOR, SENSOR));
            c.connected().await;
            c.client
                .subscribe_many(vec![
                    SubscribeFilter::new(CMD_FILTER.into(), QoS::ExactlyOnce),
                    SubscribeFilter::new(FOREIGN_CMD_FILTER.into(), QoS::AtLeastOnce),
                    SubscribeFilter::new("plant1/broadcast/+".into(), QoS::AtMostOnce),
                ])
                .await
                .unwrap();
            let ack = c.suback(0).await;
            let codes: Vec<u8> = ack
                .return_codes
                .iter()
                .map(|r| match r {
                    SubscribeReasonCode::Success(q) => *q as u8,
                    SubscribeReasonCode::Failure => 0x80,
                })
                .collect();
            assert_eq!(codes, vec![1, 0x80, 0], "SUBACK codes in filter order");
            publisher.publish(FOREIGN_CMD, 1, b"not for s-7").await;
            publisher.publish(CMD, 1, b"reboot").await;
            publisher.publish(BROADCAST, 1, b"hello all").await;
            c.received(BROADCAST).await;
            cmd_qos = c.received(CMD).await.qos as u8;
            received_topics = c.published_topics();
        }
        V::V5 => {
            use rumqttc::v5::mqttbytes::{QoS, v5::Filter, v5::SubscribeReasonCode};
            let c = Client5::start(env.opts5(SENSOR, SENSOR));
            c.connected().await;
            c.client
                .subscribe_many(vec![
                    Filter::new(CMD_FILTER, QoS::ExactlyOnce),
                    Filter::new(FOREIGN_CMD_FILTER, QoS::AtLeastOnce),
                    Filter::new("plant1/broadcast/+", QoS::AtMostOnce),
                ])
                .await
                .unwrap();
            let ack = c.suback(0).await;
            let codes: Vec<u8> = ack
                .return_codes
                .iter()
                .map(|r| match r {
                    SubscribeReasonCode::Success(q) => *q as u8,
                    SubscribeReasonCode::NotAuthorized => 0x87,
                    SubscribeReasonCode::Unspecified => 0x80,
                    _ => 0xff,
                })
                .collect();
            assert_eq!(codes, vec![1, 0x87, 0], "SUBACK codes in filter order");
            publisher.publish(FOREIGN_CMD, 1, b"not for s-7").await;
            publisher.publish(CMD, 1, b"reboot").await;
            publisher.publish(BROADCAST, 1, b"hello all").await;
            c.received(BROADCAST).await;
            cmd_qos = c.received(CMD).await.qos as u8;
            received_topics = c.published_topics();
        }
    }
    assert_eq!(received_topics, vec![CMD, BROADCAST]);
    assert_eq!(cmd_qos, 1, "delivered at the granted QoS");
    let e = env.wait_denied("SUBSCRIBE", "topic").await;
    let filter = if e.get("topic").is_some() {
        &e["topic"]
    } else {
        &e["filter"]
    };
    assert_eq!(filter, FOREIGN_CMD_FILTER, "{e}");
}

// 4. ------------------------------------------------------------------------------------------

async fn spoofed_client_id_is_refused_before_the_broker(v: V) {
    let (broker, _sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw(SENSOR, v).await;
    c.send(&wire::connect(v, "spoofed-zz", None)).await;
    let ack = c.expect(CONNACK).await;
    assert_eq!(
        ack.connack_code(),
        if v.is5() { 0x85 } else { 0x02 },
        "{ack:?}"
    );
    let rest = c.closed().await;
    assert!(rest.is_empty(), "{rest:?}");
    // A real session after it reaches the broker (mosquitto handles connections in order,
    // so a forwarded spoofed CONNECT would be in the log before this one).
    let _ok = env.raw_session(SENSOR, v).await;
    broker.wait_client(SENSOR).await;
    assert!(
        !broker.log().contains("spoofed-zz"),
        "spoofed client id reached the broker:\n{}",
        broker.log()
    );
    let e = env.wait_denied("CONNECT", "client_id").await;
    assert!(e.to_string().contains("spoofed-zz"), "{e}");
}

async fn rewritten_client_id_is_the_identity(v: V) {
    let opts = GwOptions {
        service: "max_packet_size = 65536\nclient_id = \"rewrite\"".into(),
        ..GwOptions::default()
    };
    let (broker, sub, env) = setup(opts).await;
    rumqttc_publish(&env, v, "chosen-by-client", &[(MARKER, 1, b"m")]).await;
    sub.wait_for(MARKER).await;
    broker.wait_client(SENSOR).await;
    assert!(
        !broker.log().contains("chosen-by-client"),
        "the client's own id reached the broker:\n{}",
        broker.log()
    );
}

// 5. ------------------------------------------------------------------------------------------

async fn identity_without_rule_for_the_service_is_refused(v: V) {
    let (broker, _sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw(OPERATOR, v).await;
    c.send(&wire::connect(v, OPERATOR, None)).await;
    let ack = c.expect(CONNACK).await;
    assert_eq!(
        ack.connack_code(),
        if v.is5() { 0x87 } else { 0x05 },
        "{ack:?}"
    );
    let rest = c.closed().await;
    assert!(rest.is_empty(), "{rest:?}");
    let _ok = env.raw_session(SENSOR, v).await;
    broker.wait_client(SENSOR).await;
    assert!(!broker.log().contains(OPERATOR), "{}", broker.log());
    // docs/audit.md: a verified identity with no rule for the service is `session_denied`
    // (the same event as for Modbus), not `mqtt_denied`.
    let e = env
        .wait_event("session_denied", |e| e["identity"] == OPERATOR)
        .await;
    assert_eq!(e["service"], "broker", "{e}");
    assert_eq!(e["roles"], serde_json::json!(["operator"]), "{e}");
    assert!(e["reason"].to_string().contains("no rule"), "{e}");
    assert!(
        env.events("mqtt_connected")
            .await
            .iter()
            .all(|e| e["identity"] != OPERATOR)
    );
}

// 6. ------------------------------------------------------------------------------------------

async fn will_outside_policy_is_refused_will_inside_is_delivered(v: V) {
    let (broker, sub, env) = setup(GwOptions::default()).await;
    let bad_will = Will {
        topic: FOREIGN,
        payload: b"gone",
        qos: 1,
        retain: false,
    };
    let mut c = env.raw(SENSOR, v).await;
    c.send(&wire::connect(v, SENSOR, Some(&bad_will))).await;
    let ack = c.expect(CONNACK).await;
    assert_eq!(
        ack.connack_code(),
        if v.is5() { 0x87 } else { 0x05 },
        "{ack:?}"
    );
    assert!(c.closed().await.is_empty());
    let e = env.wait_denied("will", "topic").await;
    assert_eq!(e["topic"], FOREIGN, "{e}");

    const WILL: &str = "plant1/line1/s-7/telemetry/status";
    let good_will = Will {
        topic: WILL,
        payload: b"offline",
        qos: 1,
        retain: false,
    };
    let mut c = env.raw(SENSOR, v).await;
    c.send(&wire::connect(v, SENSOR, Some(&good_will))).await;
    let ack = c.expect(CONNACK).await;
    assert_eq!(ack.connack_code(), 0, "{ack:?}");
    broker.wait_client(SENSOR).await;
    // Drop without DISCONNECT: the broker publishes the will.
    drop(c);
    let m = sub.wait_for(WILL).await;
    assert_eq!(m.payload, b"offline");
    assert_eq!(sub.topics(), vec![WILL], "the refused will never fired");
}

// 7. ------------------------------------------------------------------------------------------

#[tokio::test]
async fn v5_topic_alias_cannot_smuggle_a_denied_topic() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let v = V::V5;
    let mut c = env.raw_session(SENSOR, v).await;
    let send = |topic: &str, pkid: u16, payload: &'static [u8]| {
        wire::publish_raw(v, topic.as_bytes(), 1, false, pkid, payload, Some(1))
    };
    c.send(&send(ALLOWED, 1, b"one")).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    c.send(&send("", 2, b"two")).await;
    assert!(c.expect(PUBACK).await.ack_reason() < 0x80);
    c.send(&send(FOREIGN, 3, b"three")).await;
    let ack = c.expect(PUBACK).await;
    assert_eq!((ack.pkid(), ack.ack_reason()), (3, 0x87), "{ack:?}");
    c.send(&send("", 4, b"four")).await;
    let ack = c.expect(PUBACK).await;
    assert_eq!(
        (ack.pkid(), ack.ack_reason()),
        (4, 0x87),
        "alias 1 now stands for the denied topic: {ack:?}"
    );
    let ack = c.publish1(MARKER, 5, b"marker").await;
    assert!(ack.ack_reason() < 0x80, "{ack:?}");
    sub.wait_for(MARKER).await;
    let got: Vec<(String, Vec<u8>)> = sub
        .messages()
        .into_iter()
        .map(|m| (m.topic, m.payload))
        .collect();
    assert_eq!(
        got,
        vec![
            (ALLOWED.to_string(), b"one".to_vec()),
            (ALLOWED.to_string(), b"two".to_vec()),
            (MARKER.to_string(), b"marker".to_vec()),
        ]
    );
    let denials = env.events("mqtt_denied").await;
    assert_eq!(denials.len(), 2, "{denials:#?}");
    assert!(
        denials.iter().all(|e| e["topic"] == FOREIGN),
        "{denials:#?}"
    );
}

/// A DISCONNECT with one of `reasons` and then the close.
async fn expect_disconnect(c: &mut Raw, reasons: &[u8]) {
    let seen = c.closed().await;
    match seen.as_slice() {
        [d] if d.kind() == DISCONNECT && reasons.contains(&d.disconnect_reason()) => {}
        other => panic!("expected DISCONNECT with one of {reasons:02x?} then close, got {other:?}"),
    }
}

#[tokio::test]
async fn v5_alias_never_set_is_a_protocol_error() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw_session(SENSOR, V::V5).await;
    c.send(&wire::publish_raw(V::V5, b"", 1, false, 1, b"x", Some(3)))
        .await;
    expect_disconnect(&mut c, &[0x82, 0x94]).await;
    let mut other = env.raw_session(SENSOR2, V::V5).await;
    other
        .publish1("plant1/line1/s-8/telemetry/m", 1, b"m")
        .await;
    sub.wait_for("plant1/line1/s-8/telemetry/m").await;
    assert_eq!(sub.messages().len(), 1);
}

#[tokio::test]
async fn v5_alias_above_the_brokers_maximum_is_refused() {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw(SENSOR, V::V5).await;
    c.send(&wire::connect(V::V5, SENSOR, None)).await;
    let ack = c.expect(CONNACK).await;
    assert_eq!(ack.connack_code(), 0);
    let max = wire::prop_int(&ack.connack_props(), 0x22);
    assert_eq!(
        max,
        Some(10),
        "mosquitto's topic_alias_maximum reaches the client"
    );
    c.send(&wire::publish_raw(
        V::V5,
        ALLOWED.as_bytes(),
        1,
        false,
        1,
        b"x",
        Some(11),
    ))
    .await;
    expect_disconnect(&mut c, &[0x94]).await;
    let mut other = env.raw_session(SENSOR2, V::V5).await;
    other
        .publish1("plant1/line1/s-8/telemetry/m", 1, b"m")
        .await;
    sub.wait_for("plant1/line1/s-8/telemetry/m").await;
    assert_eq!(sub.topics(), vec!["plant1/line1/s-8/telemetry/m"]);
}

// 8. ------------------------------------------------------------------------------------------

async fn malformed_packets_close_only_their_session(v: V) {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut other = env.raw_session(SENSOR2, v).await;
    let qos3 = {
        let mut p = wire::publish(v, ALLOWED, 1, 1, b"x");
        p[0] = 0x36;
        p
    };
    let reserved = {
        let mut p = wire::subscribe(v, 1, &[(CMD_FILTER, 0)]);
        p[0] = 0x80; // SUBSCRIBE must carry flags 0b0010
        p
    };
    let cases: Vec<(&str, bool, Vec<u8>)> = vec![
        ("QoS 3", true, qos3),
        (
            "wildcard in PUBLISH topic",
            true,
            wire::publish(v, "plant1/line1/s-7/telemetry/#", 1, 1, b"x"),
        ),
        (
            "remaining length varint of 5 bytes",
            true,
            vec![0x30, 0xff, 0xff, 0xff, 0xff, 0x01],
        ),
        ("reserved flag bits", true, reserved),
        (
            "PUBLISH before CONNECT",
            false,
            wire::publish(v, ALLOWED, 1, 1, b"x"),
        ),
        ("second CONNECT", true, wire::connect(v, SENSOR, None)),
        (
            "invalid UTF-8 topic",
            true,
            wire::publish_raw(
                v,
                b"plant1/line1/s-7/telemetry/\xc3\x28",
                1,
                false,
                1,
                b"x",
                None,
            ),
        ),
    ];
    for (i, (what, connect_first, bytes)) in cases.into_iter().enumerate() {
        let mut c = if connect_first {
            env.raw_session(SENSOR, v).await
        } else {
            env.raw(SENSOR, v).await
        };
        c.send(&bytes).await;
        let seen = c.closed().await;
        let ok = seen
            .iter()
            .all(|p| v.is5() && p.kind() == DISCONNECT && p.disconnect_reason() >= 0x80);
        assert!(
            ok,
            "{what}: only a v5 DISCONNECT >= 0x80 may precede the close: {seen:?}"
        );
        // The other session is unaffected.
        let marker = format!("plant1/line1/s-8/telemetry/after-{i}");
        let ack = other.publish1(&marker, i as u16 + 1, what.as_bytes()).await;
        assert!(ack.ack_reason() < 0x80, "{what}: {ack:?}");
        sub.wait_for(&marker).await;
    }
    let topics = sub.topics();
    assert!(
        topics
            .iter()
            .all(|t| t.starts_with("plant1/line1/s-8/telemetry/after-")),
        "nothing from the malformed sessions arrived: {topics:?}"
    );
    assert_eq!(topics.len(), 7);
    let violations = env.events("mqtt_protocol_violation").await;
    assert_eq!(
        violations.len(),
        7,
        "one per malformed session: {violations:#?}"
    );
    assert!(
        violations.iter().all(|e| e["side"] == "downstream"),
        "{violations:#?}"
    );
}

// 9. ------------------------------------------------------------------------------------------

async fn reload_stops_delivery_on_a_revoked_subscription(v: V) {
    let (broker, _sub, env) = setup(GwOptions::default()).await;
    let publisher = Direct::start(&broker, "plant-side").await;
    let mut c = env.raw_session(SENSOR, v).await;
    c.send(&wire::subscribe(
        v,
        1,
        &[(CMD_FILTER, 1), ("plant1/broadcast/+", 1)],
    ))
    .await;
    let ack = c.expect(SUBACK).await;
    assert_eq!(ack.suback_codes(), vec![1, 1]);

    // The sensor keeps its rule (and the session), but no longer its command topics.
    env.reload_policy(&policy_with(
        r#"publish = ["plant1/line1/{identity}/telemetry/#"]
subscribe = ["plant1/broadcast/+"]"#,
    ));
    const CMD: &str = "plant1/line1/s-7/cmd/open-valve";
    const BROADCAST: &str = "plant1/broadcast/after-reload";
    publisher.publish(CMD, 1, b"open").await;
    publisher.publish(BROADCAST, 1, b"marker").await;
    let mut seen = Vec::new();
    for _ in 0..10 {
        let p = match c.recv().await {
            Ok(p) => p,
            Err(e) => panic!("session ended ({e:?}) before the marker; seen {seen:?}"),
        };
        if p.kind() != PUBLISH {
            seen.push(p);
            continue;
        }
        if let Some(id) = p.publish().1 {
            c.send(&wire::puback(id)).await;
        }
        let topic = p.topic();
        seen.push(p);
        if topic == BROADCAST {
            break;
        }
    }
    let topics: Vec<String> = seen
        .iter()
        .filter(|p| p.kind() == PUBLISH)
        .map(|p| p.topic())
        .collect();
    assert_eq!(topics, vec![BROADCAST], "revoked topic delivered: {seen:?}");
    let e = env
        .wait_event("mqtt_denied", |e| e["packet"] == "deliver")
        .await;
    assert_eq!(e["topic"], CMD, "{e}");
}

/// Continuous verification: a reload that leaves the identity no rule for the service ends
/// its open session on the next packet (v5: DISCONNECT 0x87 first), and nothing of that packet
/// reaches the broker.
async fn reload_that_takes_the_service_away_ends_the_session(v: V) {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw_session(SENSOR, v).await;
    let ack = c
        .publish1("plant1/line1/s-7/telemetry/before", 1, b"1")
        .await;
    assert_eq!(ack.kind(), PUBACK);
    sub.wait_for("plant1/line1/s-7/telemetry/before").await;

    let policy = policy_with(r#"publish = ["plant1/line1/{identity}/telemetry/#"]"#).replace(
        "id = \"sensor-telemetry\"\nroles = [\"sensor\"]",
        "id = \"sensor-telemetry\"\nroles = [\"operator\"]",
    );
    assert!(
        policy.contains("roles = [\"operator\"]\nservices"),
        "{policy}"
    );
    env.reload_policy(&policy);
    c.send(&wire::publish(
        v,
        "plant1/line1/s-7/telemetry/after",
        1,
        2,
        b"2",
    ))
    .await;
    if v.is5() {
        expect_disconnect(&mut c, &[0x87]).await;
    } else {
        let seen = c.closed().await;
        assert!(
            seen.is_empty(),
            "3.1.1 gets no answer, only the close: {seen:?}"
        );
    }
    let closed = env
        .wait_event("session_closed", |e| e["identity"] == SENSOR)
        .await;
    assert_eq!(closed["reason"]["kind"], "access_revoked", "{closed}");
    // A client the new policy admits sends a marker after the session closed; once it is
    // there, the revoked packet (which would have reached the broker before that close) is not.
    let marker = format!("plant1/line1/{OPERATOR}/telemetry/marker");
    let mut other = env.raw_session(OPERATOR, v).await;
    assert_eq!(other.publish1(&marker, 1, b"m").await.kind(), PUBACK);
    sub.wait_for(&marker).await;
    assert!(
        !sub.topics().iter().any(|t| t.ends_with("/after")),
        "{:?}",
        sub.topics()
    );
}

/// A client that opens TLS and never sends its CONNECT, and one that stops in the middle of a
/// packet, are closed after `frame_timeout` (audited), and nothing reaches the broker.
#[tokio::test]
async fn silent_and_stalled_clients_are_closed_after_frame_timeout() {
    let (_broker, sub, env) = setup(GwOptions {
        limits: "frame_timeout = \"300ms\"".into(),
        ..GwOptions::default()
    })
    .await;
    let mut silent = env.raw(SENSOR, V::V5).await;
    assert!(silent.closed().await.is_empty());
    let closed = env
        .wait_event("session_closed", |e| e["reason"]["kind"] == "frame_timeout")
        .await;
    assert_eq!(closed["requests"], 0, "{closed}");

    let mut stalled = env.raw_session(SENSOR2, V::V5).await;
    let packet = wire::publish(V::V5, "plant1/line1/s-8/telemetry/half", 0, 0, b"half");
    stalled.send(&packet[..packet.len() - 2]).await;
    assert!(stalled.closed().await.is_empty());
    env.wait_event("session_closed", |e| {
        e["identity"] == SENSOR2 && e["reason"]["kind"] == "frame_timeout"
    })
    .await;
    assert!(sub.messages().is_empty(), "{:?}", sub.topics());
}

// 10. -----------------------------------------------------------------------------------------

async fn upstream_over_tls_with_a_client_certificate(v: V) {
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamPki::new(dir.path());
    let broker = Mosquitto::start_with(Some(&up.broker)).await;
    let sub = Direct::start(&broker, "witness").await;
    let opts = GwOptions {
        upstream_tls: Some(format!(
            "ca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\nserver_name = \"127.0.0.1\"",
            up.broker.ca.display(),
            up.gw_cert.display(),
            up.gw_key.display()
        )),
        ..GwOptions::default()
    };
    let env = Env::start_in(dir, broker.tls_addr.unwrap(), opts).await;
    rumqttc_publish(&env, v, SENSOR, &[(MARKER, 1, b"over tls")]).await;
    assert_eq!(sub.wait_for(MARKER).await.payload, b"over tls");
    broker.wait_client(SENSOR).await;
}

// 11. -----------------------------------------------------------------------------------------

#[tokio::test]
async fn v5_connack_advertises_the_services_limits() {
    let (_broker, _sub, env) = setup(GwOptions::default()).await;
    let c = Client5::start(env.opts5(SENSOR, SENSOR));
    let ack = c.connected().await;
    let props = ack.properties.expect("CONNACK properties");
    assert_eq!(props.max_packet_size, Some(65536), "{props:?}");
    assert!(
        props.max_qos.is_some_and(|q| q <= 1),
        "maximum_qos must be present and <= the rules' max_qos 1: {props:?}"
    );
    // The same on the wire.
    let mut raw = env.raw(SENSOR2, V::V5).await;
    raw.send(&wire::connect(V::V5, SENSOR2, None)).await;
    let ack = raw.expect(CONNACK).await;
    let props = ack.connack_props();
    assert_eq!(wire::prop_int(&props, 0x27), Some(65536), "{props:?}");
    assert_eq!(wire::prop_int(&props, 0x24), Some(1), "{props:?}");
}

/// The raw client and its codec against mosquitto itself (TLS listener): CONNECT/CONNACK,
/// SUBSCRIBE/SUBACK, PUBLISH with a topic alias, and mosquitto's own answer to an alias
/// above its maximum, so the gateway tests' bytes are known to be right.
async fn harness_raw_client_against_mosquitto(v: V) {
    let dir = tempfile::tempdir().unwrap();
    let up = UpstreamPki::new(dir.path());
    let broker = Mosquitto::start_with(Some(&up.broker)).await;
    let sub = Direct::start(&broker, "witness").await;
    let ca = std::fs::read(&up.broker.ca).unwrap();
    let cert = std::fs::read(&up.gw_cert).unwrap();
    let key = std::fs::read(&up.gw_key).unwrap();
    let config = ztgate::tls::client_config(&ca, Some((&cert, &key)), BOTH).unwrap();
    let mut c = Raw::connect(broker.tls_addr.unwrap(), config, v).await;
    c.send(&wire::connect(v, "raw-1", None)).await;
    let ack = c.expect(CONNACK).await;
    assert_eq!(ack.connack_code(), 0);
    if v.is5() {
        assert_eq!(wire::prop_int(&ack.connack_props(), 0x22), Some(10));
    }
    c.send(&wire::subscribe(v, 1, &[("raw/#", 2), ("other/+", 0)]))
        .await;
    assert_eq!(c.expect(SUBACK).await.suback_codes(), vec![2, 0]);
    let alias = v.is5().then_some(1);
    c.send(&wire::publish_raw(v, b"raw/a", 1, false, 2, b"one", alias))
        .await;
    let topic: &[u8] = if v.is5() { b"" } else { b"raw/a" };
    c.send(&wire::publish_raw(v, topic, 1, false, 3, b"two", alias))
        .await;
    let mut acks = Vec::new();
    let mut echoed = Vec::new();
    for _ in 0..8 {
        let p = c.recv().await.expect("packet");
        match p.kind() {
            PUBACK => acks.push(p.pkid()),
            PUBLISH => echoed.push(p.publish().3),
            _ => panic!("{p:?}"),
        }
        if acks.len() == 2 && echoed.len() == 2 {
            break;
        }
    }
    assert_eq!(acks, vec![2, 3]);
    assert_eq!(echoed, vec![b"one".to_vec(), b"two".to_vec()]);
    sub.wait_for("raw/a").await;
    assert_eq!(sub.messages().len(), 2);
    if v.is5() {
        c.send(&wire::publish_raw(v, b"raw/b", 1, false, 4, b"x", Some(11)))
            .await;
        let seen = c.closed().await;
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].kind(), DISCONNECT);
        assert_eq!(seen[0].disconnect_reason(), 0x94);
    }
}
both_versions!(harness_raw_client_against_mosquitto);

/// Filters broader than the policy's (`#`, a `+` where the policy names the identity, `#`
/// where the policy has `+`, `$SYS`) are refused; one narrower than an allowed filter is
/// granted.
async fn broader_subscribe_filters_are_refused(v: V) {
    let (_broker, _sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw_session(SENSOR, v).await;
    c.send(&wire::subscribe(
        v,
        7,
        &[
            ("#", 0),
            ("plant1/line1/+/cmd/#", 0),
            ("plant1/broadcast/#", 0),
            ("$SYS/#", 0),
            ("plant1/line1/s-7/cmd/valve/+", 1),
        ],
    ))
    .await;
    let ack = c.expect(SUBACK).await;
    assert_eq!(ack.pkid(), 7);
    let d = if v.is5() { 0x87 } else { 0x80 };
    assert_eq!(ack.suback_codes(), vec![d, d, d, d, 1]);
}

/// A packet above the service's max_packet_size (65536) ends that session without reaching
/// the broker.
async fn packet_above_max_packet_size_closes_the_session(v: V) {
    let (_broker, sub, env) = setup(GwOptions::default()).await;
    let mut c = env.raw_session(SENSOR, v).await;
    c.send(&wire::publish(v, ALLOWED, 1, 1, &vec![b'z'; 70_000]))
        .await;
    let seen = c.closed().await;
    let ok = seen
        .iter()
        .all(|p| v.is5() && p.kind() == DISCONNECT && p.disconnect_reason() >= 0x80);
    assert!(
        ok,
        "only a v5 DISCONNECT >= 0x80 may precede the close: {seen:?}"
    );
    let mut other = env.raw_session(SENSOR2, v).await;
    other
        .publish1("plant1/line1/s-8/telemetry/m", 1, b"m")
        .await;
    sub.wait_for("plant1/line1/s-8/telemetry/m").await;
    assert_eq!(sub.topics(), vec!["plant1/line1/s-8/telemetry/m"]);
}

both_versions!(
    broader_subscribe_filters_are_refused,
    packet_above_max_packet_size_closes_the_session
);
