//! `decide()` cost with 10 and 1,000 rules (target: < 200 ns at 1,000 rules).
//!
//! The 1,000-rule policy spreads rules over 10 roles and 3 services, each rule with its own
//! address window, units and (for writes) value bounds — the shape of a plant-wide policy.
//!
//! `decide_mqtt()` the same way: 10 and 1,000 MQTT rules over 10 roles, each rule with a
//! publish filter under its own line and cell (`plant1/line<n>/cell<m>/{identity}/#`, with a `+`
//! level in every third) and a subscribe filter, all for one broker service.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::path::Path;
use ztgate::config::{Config, ServiceId, SourceFile};
use ztgate::demo::client::adu;
use ztgate::policy::{MqttAction, Policy};
use ztgate::protocol::modbus::decode_request;

fn policy(rules: usize) -> (Policy, ServiceId) {
    let mut main = String::from(
        "[tls]\nclient_ca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n",
    );
    for s in 0..3 {
        main.push_str(&format!(
            "[[service]]\nname = \"plc{s}\"\nprotocol = \"modbus\"\nupstream = \"127.0.0.1:502\"\n"
        ));
    }
    let mut p = String::from("[roles]\n");
    for r in 0..10 {
        p.push_str(&format!("r{r} = \"\"\n"));
    }
    for r in 0..10 {
        p.push_str(&format!(
            "[[identity]]\nmatch = \"id{r}\"\nroles = [\"r{r}\"]\n"
        ));
    }
    for i in 0..rules {
        let (first, last) = (i * 60 % 60000, i * 60 % 60000 + 49);
        let functions = if i % 2 == 0 {
            "\"read_only\""
        } else {
            "\"write_single_register\", \"write_multiple_registers\""
        };
        let values = if i % 2 == 0 {
            String::new()
        } else {
            format!(", values = {{ min = 0, max = {} }}", 1000 + i)
        };
        p.push_str(&format!(
            "[[rule]]\nid = \"rule{i}\"\nroles = [\"r{}\"]\nservices = [\"plc{}\"]\nmodbus = {{ functions = [{functions}], units = [1, {}], addresses = [\"{first}-{last}\"]{values} }}\n",
            i % 10,
            i % 3,
            2 + i % 5,
        ));
    }
    let config = Config::from_sources(
        &SourceFile::new("ztgate.toml", main),
        &[SourceFile::new("p.toml", p)],
        Path::new("."),
    )
    .expect("bench policy is valid");
    (Policy::compile(config.policy), ServiceId(0))
}

fn bench(c: &mut Criterion) {
    for rules in [10usize, 1000] {
        let (p, service) = policy(rules);
        let subject = p.subject("id0", &[]);
        // rule 0 (r0, plc0) reads 0-49; with 1,000 rules, rule 990 (r0, plc0) reads 59400-59449.
        let (lo, hi) = if rules == 10 {
            (10u16, 10u16)
        } else {
            (10, 59410)
        };
        let read = adu(1, 1, &[3, (hi >> 8) as u8, hi as u8, 0, 5]);
        let read = decode_request(&read).unwrap();
        assert!(p.decide(service, &subject, &read).is_allow());
        let first = adu(1, 1, &[3, (lo >> 8) as u8, lo as u8, 0, 5]);
        let first = decode_request(&first).unwrap();
        assert!(p.decide(service, &subject, &first).is_allow());
        let denied = adu(1, 1, &[3, 0xEA, 0x60, 0, 5]); // address 60000: no rule
        let denied = decode_request(&denied).unwrap();
        assert!(!p.decide(service, &subject, &denied).is_allow());
        c.bench_function(&format!("decide/{rules}_rules/allow_read"), |b| {
            b.iter(|| black_box(p.decide(service, black_box(&subject), black_box(&read))))
        });
        c.bench_function(&format!("decide/{rules}_rules/deny_address"), |b| {
            b.iter(|| black_box(p.decide(service, black_box(&subject), black_box(&denied))))
        });
    }
}

fn mqtt_policy(rules: usize) -> (Policy, ServiceId) {
    let main = "[tls]\nclient_ca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[service]]\nname = \"broker\"\nprotocol = \"mqtt\"\nupstream = \"127.0.0.1:1883\"\n";
    let mut p = String::from("[roles]\n");
    for r in 0..10 {
        p.push_str(&format!("r{r} = \"\"\n"));
    }
    for r in 0..10 {
        p.push_str(&format!(
            "[[identity]]\nmatch = \"dev{r}-*\"\nroles = [\"r{r}\"]\n"
        ));
    }
    for i in 0..rules {
        let cell = if i % 3 == 0 {
            "+".to_string()
        } else {
            format!("cell{}", i % 50)
        };
        p.push_str(&format!(
            "[[rule]]\nid = \"m{i}\"\nroles = [\"r{}\"]\nservices = [\"broker\"]\nmqtt = {{ publish = [\"plant1/line{}/{cell}/{{identity}}/#\"], subscribe = [\"plant1/line{}/cmd/{{identity}}/+\"], max_qos = 1, max_payload = 4096 }}\n",
            i % 10,
            i / 10,
            i / 10,
        ));
    }
    let config = Config::from_sources(
        &SourceFile::new("ztgate.toml", main),
        &[SourceFile::new("p.toml", p)],
        Path::new("."),
    )
    .expect("mqtt bench policy is valid");
    (Policy::compile(config.policy), ServiceId(0))
}

fn bench_mqtt(c: &mut Criterion) {
    for rules in [10usize, 1000] {
        let (p, service) = mqtt_policy(rules);
        let identity = "dev0-s7";
        let subject = p.subject(identity, &[]);
        // Rule 0 (role r0): plant1/line0/+/{identity}/#; with 1,000 rules, rule 990 (r0):
        // plant1/line99/+/{identity}/#.
        let line = if rules == 10 { 0 } else { 99 };
        let topic = format!("plant1/line{line}/cell7/dev0-s7/telemetry/temp");
        let publish = MqttAction::Publish {
            topic: &topic,
            qos: 1,
            retain: false,
            payload_len: 64,
        };
        assert!(
            p.decide_mqtt(service, &subject, identity, publish)
                .is_allow()
        );
        let other = format!("plant1/line{line}/cell7/dev0-s8/telemetry/temp");
        let denied = MqttAction::Publish {
            topic: &other,
            qos: 1,
            retain: false,
            payload_len: 64,
        };
        assert!(
            !p.decide_mqtt(service, &subject, identity, denied)
                .is_allow()
        );
        let filter = format!("plant1/line{line}/cmd/dev0-s7/+");
        let subscribe = MqttAction::Subscribe { filter: &filter };
        assert!(
            p.decide_mqtt(service, &subject, identity, subscribe)
                .is_allow()
        );
        c.bench_function(&format!("decide_mqtt/{rules}_rules/allow_publish"), |b| {
            b.iter(|| black_box(p.decide_mqtt(service, &subject, identity, black_box(publish))))
        });
        c.bench_function(&format!("decide_mqtt/{rules}_rules/deny_publish"), |b| {
            b.iter(|| black_box(p.decide_mqtt(service, &subject, identity, black_box(denied))))
        });
        c.bench_function(&format!("decide_mqtt/{rules}_rules/allow_subscribe"), |b| {
            b.iter(|| black_box(p.decide_mqtt(service, &subject, identity, black_box(subscribe))))
        });
    }
}

criterion_group!(benches, bench, bench_mqtt);
criterion_main!(benches);
