use super::*;
use crate::config::{Config, SourceFile};
use crate::protocol::modbus::decode_request;
use std::path::Path;

fn example() -> (Policy, ServiceId) {
    let config = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ztgate.toml"
    )))
    .expect("example config");
    let (service, _) = config.service_by_name("plc-line1").expect("service");
    (Policy::compile(config.policy), service)
}

/// Builds a request ADU: MBAP (tid 7, unit) + PDU.
fn adu(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 7, 0, 0, 0, (pdu.len() + 1) as u8, unit];
    v.extend_from_slice(pdu);
    v
}

fn decide(
    policy: &Policy,
    service: ServiceId,
    identity: &str,
    unit: u8,
    pdu: &[u8],
) -> (bool, Option<String>, Option<DenyReason>) {
    let subject = policy.subject(identity, &[]);
    let frame = adu(unit, pdu);
    let request = decode_request(&frame).expect("valid request");
    match policy.decide(service, &subject, &request) {
        Decision::Allow { rule } => (true, Some(policy.rule_id(rule).to_string()), None),
        Decision::Deny { rule, reason } => (
            false,
            rule.map(|r| policy.rule_id(r).to_string()),
            Some(reason),
        ),
    }
}

const HMI: &str = "spiffe://plant1/line1/hmi/hmi-01";
const ENG: &str = "spiffe://plant1/eng/laptop-7";

/// (identity, unit, pdu, allowed, rule id, deny reason)
type Row<'a> = (
    &'a str,
    u8,
    &'a [u8],
    bool,
    Option<&'a str>,
    Option<DenyReason>,
);

#[test]
fn decision_table_for_the_example_policy() {
    let (p, s) = example();
    use DenyReason::*;
    // (identity, unit, pdu, allowed, rule id, deny reason)
    let table: &[Row] = &[
        // operator reads holding registers 0..9
        (HMI, 1, &[3, 0, 0, 0, 10], true, Some("operator-read"), None),
        // operator reads the last allowed register 999
        (
            HMI,
            1,
            &[3, 0x03, 0xE7, 0, 1],
            true,
            Some("operator-read"),
            None,
        ),
        // 999..1000 crosses the end of 0-999
        (
            HMI,
            1,
            &[3, 0x03, 0xE7, 0, 2],
            false,
            Some("operator-read"),
            Some(Address),
        ),
        // operator on unit 2
        (
            HMI,
            2,
            &[3, 0, 0, 0, 1],
            false,
            Some("operator-read"),
            Some(Unit),
        ),
        // setpoint 105 = 1200: inside the bounds
        (
            HMI,
            1,
            &[6, 0, 105, 0x04, 0xB0],
            true,
            Some("operator-setpoints"),
            None,
        ),
        // setpoint 105 = 2000: outside
        (
            HMI,
            1,
            &[6, 0, 105, 0x07, 0xD0],
            false,
            Some("operator-setpoints"),
            Some(Value {
                address: 105,
                value: 2000,
                min: 0,
                max: 1500,
            }),
        ),
        // FC16 100..101 = [10, 1501]: second value outside
        (
            HMI,
            1,
            &[16, 0, 100, 0, 2, 4, 0, 10, 0x05, 0xDD],
            false,
            Some("operator-setpoints"),
            Some(Value {
                address: 101,
                value: 1501,
                min: 0,
                max: 1500,
            }),
        ),
        // register 5 is not a setpoint
        (
            HMI,
            1,
            &[6, 0, 5, 0, 1],
            false,
            Some("operator-setpoints"),
            Some(Address),
        ),
        // operator may not write coils at all
        (HMI, 1, &[5, 0, 1, 0xFF, 0], false, None, Some(Function)),
        // diagnostics are the engineer's
        (HMI, 1, &[8, 0, 0, 0x12, 0x34], false, None, Some(Function)),
        (
            ENG,
            1,
            &[8, 0, 0, 0x12, 0x34],
            true,
            Some("engineer-diagnostics"),
            None,
        ),
        // engineer writes any register 0..9999 without bounds
        (
            ENG,
            1,
            &[6, 0x27, 0x0F, 0xFF, 0xFF],
            true,
            Some("engineer-maintenance"),
            None,
        ),
        (
            ENG,
            1,
            &[6, 0x27, 0x10, 0, 1],
            false,
            Some("engineer-maintenance"),
            Some(Address),
        ),
        // vendor code 90 is in no preset
        (ENG, 1, &[90, 1, 2], false, None, Some(Function)),
        // broadcast writes need a rule naming unit 0
        (
            ENG,
            0,
            &[6, 0, 1, 0, 1],
            false,
            Some("engineer-maintenance"),
            Some(Unit),
        ),
        // the historian only reads
        (
            HMI.replace("hmi-01", "x").leak(),
            1,
            &[4, 0, 0, 0, 1],
            true,
            Some("operator-read"),
            None,
        ),
        (
            "historian-01",
            1,
            &[4, 0, 0, 0, 1],
            true,
            Some("historian-read"),
            None,
        ),
        (
            "historian-01",
            1,
            &[6, 0, 100, 0, 1],
            false,
            None,
            Some(Function),
        ),
        // unknown identities have no roles
        (
            "mallory",
            1,
            &[3, 0, 0, 0, 1],
            false,
            None,
            Some(NoRuleForService),
        ),
        // FC23: read 0..1 and write setpoints 100..100
        (
            HMI,
            1,
            &[23, 0, 0, 0, 2, 0, 100, 0, 1, 2, 0, 5],
            false,
            None,
            Some(Function),
        ),
        (
            ENG,
            1,
            &[23, 0, 0, 0, 2, 0, 100, 0, 1, 2, 0, 5],
            true,
            Some("engineer-maintenance"),
            None,
        ),
    ];
    for (i, (id, unit, pdu, allow, rule, reason)) in table.iter().enumerate() {
        let got = decide(&p, s, id, *unit, pdu);
        assert_eq!(
            got,
            (*allow, rule.map(str::to_string), *reason),
            "row {i}: {id} unit {unit} {pdu:?}"
        );
    }
}

fn policy_from(rules: &str) -> (Policy, ServiceId) {
    let main = SourceFile::new(
        "ztgate.toml",
        "[tls]\nclient_ca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[service]]\nname = \"plc\"\nprotocol = \"modbus\"\nupstream = \"127.0.0.1:502\"\n",
    );
    let policy =
        format!("[roles]\nr = \"\"\n[[identity]]\nmatch = \"me\"\nroles = [\"r\"]\n{rules}");
    let config = Config::from_sources(&main, &[SourceFile::new("p.toml", policy)], Path::new("."))
        .expect("valid policy");
    (Policy::compile(config.policy), ServiceId(0))
}

#[test]
fn broadcast_writes_need_unit_zero_named() {
    let (p, s) = policy_from(
        "[[rule]]\nid = \"any-unit\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [6] }\n\
         [[rule]]\nid = \"bcast\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [5], units = [0] }\n",
    );
    assert!(decide(&p, s, "me", 3, &[6, 0, 1, 0, 1]).0);
    assert_eq!(
        decide(&p, s, "me", 0, &[6, 0, 1, 0, 1]),
        (false, Some("any-unit".into()), Some(DenyReason::Broadcast))
    );
    assert!(decide(&p, s, "me", 0, &[5, 0, 1, 0xFF, 0]).0);
    // reads of unit 0 are not broadcasts
    let (p, s) = policy_from(
        "[[rule]]\nid = \"read\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [3] }\n",
    );
    assert!(decide(&p, s, "me", 0, &[3, 0, 1, 0, 1]).0);
}

#[test]
fn coil_values_and_mask_writes_respect_bounds() {
    let (p, s) = policy_from(
        "[[rule]]\nid = \"start-only\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [5, 15], coil_values = [\"on\"] }\n\
         [[rule]]\nid = \"mask\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [22], values = { min = 0, max = 255 } }\n",
    );
    assert!(decide(&p, s, "me", 1, &[5, 0, 1, 0xFF, 0]).0);
    assert_eq!(
        decide(&p, s, "me", 1, &[5, 0, 1, 0, 0]).2,
        Some(DenyReason::Coil {
            address: 1,
            on: false
        })
    );
    // FC15 coils 8..10 = ON, OFF, ON (bits 0b101)
    assert_eq!(
        decide(&p, s, "me", 1, &[15, 0, 8, 0, 3, 1, 0b101]).2,
        Some(DenyReason::Coil {
            address: 9,
            on: false
        })
    );
    assert!(decide(&p, s, "me", 1, &[15, 0, 8, 0, 3, 1, 0b111]).0);
    // AND 0x000F OR 0x0030: result in 0x30..=0x3F
    assert!(decide(&p, s, "me", 1, &[22, 0, 1, 0, 0x0F, 0, 0x30]).0);
    // AND 0x0F00 keeps bits that may be set: up to 0x0F30
    assert_eq!(
        decide(&p, s, "me", 1, &[22, 0, 1, 0x0F, 0, 0, 0x30]).2,
        Some(DenyReason::MaskValue {
            address: 1,
            lowest: 0x30,
            highest: 0x0F30,
            min: 0,
            max: 255
        })
    );
}

#[test]
fn overlapping_intervals_are_all_found() {
    // A wide interval that starts early must still be found behind many narrow later ones.
    let mut rules = String::from(
        "[[rule]]\nid = \"wide\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [3], addresses = [\"0-60000\"], units = [9] }\n",
    );
    for i in 0..50 {
        rules.push_str(&format!(
            "[[rule]]\nid = \"n{i}\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = {{ functions = [3], addresses = [\"{}-{}\"], units = [1] }}\n",
            i * 100,
            i * 100 + 10
        ));
    }
    let (p, s) = policy_from(&rules);
    // address 4905..4906 is inside n49 (4900-4910) on unit 1, and only inside "wide" on unit 9
    assert_eq!(
        decide(&p, s, "me", 1, &[3, 0x13, 0x29, 0, 2]),
        (true, Some("n49".into()), None)
    );
    assert_eq!(
        decide(&p, s, "me", 9, &[3, 0x13, 0x29, 0, 2]),
        (true, Some("wide".into()), None)
    );
    // 4905..4920 crosses n49's end: only "wide" covers it, and not on unit 1. Unit 1 rules
    // exist, just not for these addresses: the closest reason is the address.
    assert!(decide(&p, s, "me", 9, &[3, 0x13, 0x29, 0, 16]).0);
    assert_eq!(
        decide(&p, s, "me", 1, &[3, 0x13, 0x29, 0, 16]).2,
        Some(DenyReason::Address)
    );
    // On unit 5 no rule at all: the unit is the problem.
    assert_eq!(
        decide(&p, s, "me", 5, &[3, 0x13, 0x29, 0, 2]).2,
        Some(DenyReason::Unit)
    );
}

#[test]
fn admission_requires_a_rule_for_the_service() {
    let (p, s) = example();
    assert!(p.admits(s, &p.subject(HMI, &[])));
    assert!(!p.admits(s, &p.subject("nobody", &[])));
    // certificate roles only count when the policy defines them
    assert!(p.admits(s, &p.subject("nobody", &["historian".into()])));
    assert!(!p.admits(s, &p.subject("nobody", &["root".into()])));
}

#[test]
fn file_records_are_only_allowed_by_rules_without_address_limits() {
    let (p, s) = policy_from(
        "[[rule]]\nid = \"limited\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [\"programming\"], addresses = [\"0-999\"] }\n",
    );
    // FC20 read file record: file 4, record 1, length 2.
    let read_file = [20, 7, 6, 0, 4, 0, 1, 0, 2];
    assert_eq!(
        decide(&p, s, "me", 1, &read_file),
        (false, Some("limited".into()), Some(DenyReason::Address))
    );
    let (p, s) = policy_from(
        "[[rule]]\nid = \"files\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [\"read_file_record\"] }\n",
    );
    assert!(decide(&p, s, "me", 1, &read_file).0);
}

#[test]
fn broadcast_needs_unit_0_listed_on_its_own_and_covers_every_non_read() {
    let (p, s) = policy_from(
        "[[rule]]\nid = \"any\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [6, 8, 90], units = [\"0-255\"] }\n",
    );
    assert_eq!(
        decide(&p, s, "me", 0, &[6, 0, 1, 0, 1]).2,
        Some(DenyReason::Broadcast)
    );
    // Diagnostics "force listen only mode" (sub-function 4) to every device on the line.
    assert_eq!(
        decide(&p, s, "me", 0, &[8, 0, 4, 0, 0]).2,
        Some(DenyReason::Broadcast)
    );
    assert_eq!(
        decide(&p, s, "me", 0, &[90, 1]).2,
        Some(DenyReason::Broadcast)
    );
    assert!(decide(&p, s, "me", 7, &[8, 0, 4, 0, 0]).0);
    let (p, s) = policy_from(
        "[[rule]]\nid = \"bcast\"\nroles = [\"r\"]\nservices = [\"plc\"]\nmodbus = { functions = [6], units = [0, \"1-10\"] }\n",
    );
    assert!(decide(&p, s, "me", 0, &[6, 0, 1, 0, 1]).0);
}

fn example_mqtt() -> (Policy, ServiceId) {
    let config = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ztgate.toml"
    )))
    .expect("example config");
    let (service, _) = config.service_by_name("broker-line1").expect("service");
    (Policy::compile(config.policy), service)
}

fn mqtt(policy: &Policy, service: ServiceId, identity: &str, action: MqttAction<'_>) -> String {
    let subject = policy.subject(identity, &[]);
    match policy.decide_mqtt(service, &subject, identity, action) {
        Decision::Allow { rule } => format!("allow {}", policy.rule_id(rule)),
        Decision::Deny { rule, reason } => format!(
            "deny {} {}",
            rule.map_or("-", |r| policy.rule_id(r)),
            serde_json::to_value(reason).expect("json")["kind"]
                .as_str()
                .unwrap_or("?")
        ),
    }
}

fn publish(topic: &str, qos: u8, retain: bool, payload_len: usize) -> MqttAction<'_> {
    MqttAction::Publish {
        topic,
        qos,
        retain,
        payload_len,
    }
}

#[test]
fn mqtt_decision_table_for_the_example_policy() {
    let (p, s) = example_mqtt();
    let sub = |filter| MqttAction::Subscribe { filter };
    let deliver = |topic| MqttAction::Deliver { topic };
    let rows: &[(&str, MqttAction<'_>, &str)] = &[
        // A sensor: its own telemetry, QoS ≤ 1, no retain, ≤ 4096 bytes.
        (
            "s-7",
            publish("plant1/line1/s-7/telemetry/temp", 1, false, 10),
            "allow sensor-telemetry",
        ),
        (
            "s-7",
            publish("plant1/line1/s-7/telemetry", 0, false, 4096),
            "allow sensor-telemetry",
        ),
        (
            "s-7",
            publish("plant1/line1/s-8/telemetry/temp", 1, false, 10),
            "deny - topic",
        ),
        (
            "s-7",
            publish("plant1/line1/s-7/telemetry/temp", 2, false, 10),
            "deny sensor-telemetry qos",
        ),
        (
            "s-7",
            publish("plant1/line1/s-7/telemetry/temp", 1, true, 10),
            "deny sensor-telemetry retain",
        ),
        (
            "s-7",
            publish("plant1/line1/s-7/telemetry/temp", 1, false, 4097),
            "deny sensor-telemetry payload",
        ),
        // Its retained status, from a second rule.
        (
            "s-7",
            publish("plant1/line1/s-7/status", 1, true, 6),
            "allow sensor-status",
        ),
        (
            "s-7",
            publish("plant1/line1/s-7/status", 1, true, 65),
            "deny sensor-status payload",
        ),
        // Subscriptions must lie inside a rule's filter.
        (
            "s-7",
            sub("plant1/line1/s-7/cmd/#"),
            "allow sensor-telemetry",
        ),
        (
            "s-7",
            sub("plant1/line1/s-7/cmd/reset"),
            "allow sensor-telemetry",
        ),
        (
            "s-7",
            sub("plant1/line1/broadcast/+"),
            "allow sensor-telemetry",
        ),
        ("s-7", sub("plant1/line1/+/cmd/#"), "deny - topic"),
        ("s-7", sub("#"), "deny - topic"),
        (
            "s-7",
            deliver("plant1/line1/s-7/cmd/reset"),
            "allow sensor-telemetry",
        ),
        ("s-7", deliver("plant1/line1/s-8/cmd/reset"), "deny - topic"),
        // The HMI: commands to any sensor, watch telemetry; may not publish telemetry.
        (
            HMI,
            publish("plant1/line1/s-7/cmd/reset", 1, false, 2),
            "allow operator-mqtt",
        ),
        (
            HMI,
            publish("plant1/line1/s-7/telemetry", 0, false, 2),
            "deny - topic",
        ),
        (
            HMI,
            sub("plant1/line1/+/telemetry/#"),
            "allow operator-mqtt",
        ),
        (
            HMI,
            sub("plant1/line1/s-7/telemetry/temp"),
            "allow operator-mqtt",
        ),
        // The historian reads everything of plant 1 and publishes nothing.
        ("historian-01", sub("plant1/#"), "allow historian-mqtt"),
        ("historian-01", sub("plant2/#"), "deny - topic"),
        ("historian-01", sub("$SYS/#"), "deny - topic"),
        (
            "historian-01",
            publish("plant1/x", 0, false, 1),
            "deny - topic",
        ),
        // Nobody else.
        (
            "s-7x",
            publish("plant1/line1/s-7x/telemetry", 0, false, 1),
            "allow sensor-telemetry",
        ),
        (
            "intruder",
            publish("plant1/line1/intruder/telemetry", 0, false, 1),
            "deny - no_rule_for_service",
        ),
        (ENG, sub("plant1/#"), "deny - no_rule_for_service"),
    ];
    for (identity, action, expected) in rows {
        assert_eq!(
            &mqtt(&p, s, identity, *action),
            expected,
            "{identity} {action:?}"
        );
    }
    // Admission: only identities with a rule for the broker.
    assert!(p.admits(s, &p.subject("s-7", &[])));
    assert!(!p.admits(s, &p.subject(ENG, &[])));
    // What the CONNACK advertises for a sensor.
    assert_eq!(p.mqtt_limits(s, &p.subject("s-7", &[])), (1, true));
    assert_eq!(
        p.mqtt_limits(s, &p.subject("historian-01", &[])),
        (1, false)
    );
}

#[test]
fn mqtt_subscription_gets_the_rule_with_the_highest_qos() {
    let text = r#"
[roles]
r = "r"
[[identity]]
match = "a"
roles = ["r"]
[[rule]]
id = "low"
roles = ["r"]
services = ["broker"]
[rule.mqtt]
subscribe = ["x/#"]
max_qos = 0
[[rule]]
id = "high"
roles = ["r"]
services = ["broker"]
[rule.mqtt]
subscribe = ["x/y/+"]
max_qos = 2
"#;
    let main = SourceFile::new(
        "ztgate.toml",
        r#"
[tls]
client_ca = "ca.pem"
cert = "gw.pem"
key = "gw.key"
[[listener]]
name = "mqtt"
bind = "127.0.0.1:0"
[[service]]
name = "broker"
protocol = "mqtt"
upstream = "127.0.0.1:1883"
"#,
    );
    let config = Config::from_sources(&main, &[SourceFile::new("p.toml", text)], Path::new("."))
        .expect("config");
    let (s, _) = config.service_by_name("broker").expect("service");
    let p = Policy::compile(config.policy);
    let subject = p.subject("a", &[]);
    let decide = |filter| p.decide_mqtt(s, &subject, "a", MqttAction::Subscribe { filter });
    let Decision::Allow { rule } = decide("x/y/z") else {
        panic!("x/y/z denied")
    };
    assert_eq!((p.rule_id(rule), p.mqtt_max_qos(rule)), ("high", 2));
    let Decision::Allow { rule } = decide("x/y/#") else {
        panic!("x/y/# denied")
    };
    assert_eq!(p.rule_id(rule), "low");
}
