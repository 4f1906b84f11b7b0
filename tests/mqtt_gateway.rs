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
