//! Cost of the Modbus TCP and MQTT codecs per frame, as the session pays it: split one frame off
//! the receive buffer, then decode it.
//!
//! `cargo bench --bench codec` (`-- mqtt` for the MQTT cases only); each benchmark processes one
//! frame per iteration, so the time criterion reports is the time per frame.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ztgate::protocol::modbus::{decode_request, decode_response, split_frame};
use ztgate::protocol::mqtt::{self, Packet, Version};

/// A request ADU: transaction id 1, protocol id 0, the MBAP length, unit 1, then `pdu`.
fn adu(pdu: &[u8]) -> Vec<u8> {
    let length = u16::try_from(pdu.len() + 1).expect("PDU fits a frame");
    let mut adu = vec![0x00, 0x01, 0x00, 0x00];
    adu.extend_from_slice(&length.to_be_bytes());
    adu.push(0x01);
    adu.extend_from_slice(pdu);
    adu
}

/// FC16 writing `quantity` registers from address 100.
fn write_registers(quantity: u16) -> Vec<u8> {
    let byte_count = u8::try_from(quantity * 2).expect("at most 123 registers");
    let mut pdu = vec![0x10, 0x00, 0x64];
    pdu.extend_from_slice(&quantity.to_be_bytes());
    pdu.push(byte_count);
    pdu.extend((0..quantity).flat_map(|i| i.to_be_bytes()));
    adu(&pdu)
}

fn requests(c: &mut Criterion) {
    let cases = [
        // FC3: read 10 holding registers from address 0 (12 bytes).
        ("fc03_read_10", adu(&[0x03, 0x00, 0x00, 0x00, 0x0A])),
        // FC16: write 10 registers (33 bytes).
        ("fc16_write_10", write_registers(10)),
        // FC16: the largest request, 123 registers (259 bytes).
        ("fc16_write_123_max", write_registers(123)),
    ];
    let mut group = c.benchmark_group("split_frame+decode_request");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in &cases {
        // Benchmark only what succeeds: a refused frame would measure the error path.
        let (whole, rest) = split_frame(frame).expect("valid").expect("complete");
        assert!(rest.is_empty());
        decode_request(whole).expect("valid request");
        group.bench_function(*name, |b| {
            b.iter(|| {
                let (frame, _) = split_frame(black_box(frame))
                    .expect("valid")
                    .expect("complete");
                let req = decode_request(frame).expect("valid request");
                black_box(req.access);
                black_box(req.written);
            })
        });
    }
    group.finish();
}

fn responses(c: &mut Criterion) {
    // FC3 response with 125 registers: byte count 250 (259 bytes, the largest read response).
    let mut pdu = vec![0x03, 0xFA];
    pdu.extend((0u16..125).flat_map(|i| i.to_be_bytes()));
    let frame = adu(&pdu);
    assert_eq!(frame.len(), 259);
    decode_response(&frame).expect("valid response");

    let mut group = c.benchmark_group("decode_response");
    group.throughput(Throughput::Elements(1));
    group.bench_function("fc03_125_registers", |b| {
        b.iter(|| {
            let response = decode_response(black_box(&frame)).expect("valid response");
            black_box(response.exception());
        })
    });
    group.finish();
}

/// An MQTT packet: `first`, a one- or two-byte remaining length, `body`.
fn mqtt_packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first];
    match body.len() {
        n @ 0..=127 => packet.push(n as u8),
        n => packet.extend_from_slice(&[(n % 128) as u8 | 0x80, (n / 128) as u8]),
    }
    packet.extend_from_slice(body);
    packet
}

fn mqtt_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// QoS 1 PUBLISH to `plant/line1/temperature`, packet id 7, 64-byte payload; v5 with a topic
/// alias property.
fn publish(version: Version) -> Vec<u8> {
    let mut body = Vec::new();
    mqtt_str(&mut body, "plant/line1/temperature");
    body.extend_from_slice(&7u16.to_be_bytes());
    if version == Version::V5 {
        body.extend_from_slice(&[3, 0x23, 0, 1]);
    }
    body.extend_from_slice(&[b'x'; 64]);
    mqtt_packet(0x32, &body)
}

/// SUBSCRIBE, packet id 9, three filters (v5, no properties).
fn subscribe() -> Vec<u8> {
    let mut body = vec![0, 9, 0];
    for (filter, options) in [("plant/+/temp", 0), ("plant/line1/#", 1), ("alarms/#", 2)] {
        mqtt_str(&mut body, filter);
        body.push(options);
    }
    mqtt_packet(0x82, &body)
}

fn mqtt(c: &mut Criterion) {
    const MAX: usize = 1 << 20;
    let cases = [
        (
            "publish_qos1_64b_v5_alias",
            Version::V5,
            publish(Version::V5),
        ),
        (
            "publish_qos1_64b_v311",
            Version::V311,
            publish(Version::V311),
        ),
        ("subscribe_3_filters_v5", Version::V5, subscribe()),
    ];
    let mut group = c.benchmark_group("mqtt packet_len+decode");
    group.throughput(Throughput::Elements(1));
    for (name, version, packet) in &cases {
        // Benchmark only what succeeds: a refused packet would measure the error path.
        assert_eq!(mqtt::packet_len(packet, MAX), Ok(Some(packet.len())));
        match mqtt::decode(packet, *version, true).expect("valid packet") {
            Packet::Publish(p) => assert_eq!(p.payload.len(), 64),
            Packet::Subscribe(s) => assert_eq!(s.filters.len(), 3),
            other => panic!("{other:?}"),
        }
        group.bench_function(*name, |b| {
            b.iter(|| {
                let buf = black_box(&packet[..]);
                let n = mqtt::packet_len(buf, MAX)
                    .expect("valid")
                    .expect("complete");
                let decoded = mqtt::decode(&buf[..n], *version, true).expect("valid packet");
                black_box(decoded);
            })
        });
    }
    group.finish();
}

criterion_group!(benches, requests, responses, mqtt);
criterion_main!(benches);
