//! `ztgate explain`: what would the gateway decide for this identity and request, and why.
//!
//! The request is written the way an engineer reads it —
//! `write_single_register unit=1 address=105 value=2000` — turned into the real ADU bytes and
//! run through the same codec and the same `decide` as live traffic.

use crate::config::{ClientIdBinding, Config, Protocol};
use crate::policy::{Decision, DenyReason, MqttAction, Policy, Subject};
use crate::protocol::modbus::{self, Function, RequestError, preset};
use crate::protocol::mqtt;
use std::collections::HashMap;

/// Parses `value` as decimal or `0x` hex.
fn number(key: &str, value: &str) -> Result<u32, String> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse(),
    };
    parsed.map_err(|_| format!("{key}={value}: not a number"))
}

fn u16_arg(args: &HashMap<&str, &str>, key: &str, default: Option<u16>) -> Result<u16, String> {
    match args.get(key) {
        Some(v) => number(key, v)
            .and_then(|n| u16::try_from(n).map_err(|_| format!("{key}={v}: larger than 65535"))),
        None => default.ok_or_else(|| format!("missing {key}=…")),
    }
}

fn list(args: &HashMap<&str, &str>, key: &str) -> Result<Vec<u16>, String> {
    let v = args
        .get(key)
        .ok_or_else(|| format!("missing {key}=a,b,…"))?;
    v.split(',')
        .map(|x| {
            let x = x.trim();
            match x {
                "on" | "ON" | "true" => Ok(1),
                "off" | "OFF" | "false" => Ok(0),
                _ => number(key, x).and_then(|n| {
                    u16::try_from(n).map_err(|_| format!("{key}: {x} larger than 65535"))
                }),
            }
        })
        .collect()
}

/// `function key=value …` → the request PDU (function code + data).
pub fn request_pdu(spec: &str) -> Result<(u8, Vec<u8>), String> {
    let mut words = spec.split_whitespace();
    let name = words.next().ok_or(
        "empty request: write e.g. \"read_holding_registers unit=1 address=0 quantity=10\"",
    )?;
    let mut args = HashMap::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("\"{w}\" is not key=value"))?;
        args.insert(k, v);
    }
    let code = match Function::from_name(name) {
        Some(f) => f.0,
        None if preset(name).is_some() => {
            return Err(format!("\"{name}\" is a preset; name one function"));
        }
        None => u8::try_from(number("function", name)?)
            .map_err(|_| format!("function {name} larger than 255"))?,
    };
    let unit =
        u8::try_from(u16_arg(&args, "unit", Some(1))?).map_err(|_| "unit larger than 255")?;
    let be = |v: u16| v.to_be_bytes();
    let mut pdu = vec![code];
    match code {
        1..=4 => {
            pdu.extend(be(u16_arg(&args, "address", None)?));
            pdu.extend(be(u16_arg(&args, "quantity", Some(1))?));
        }
        5 => {
            pdu.extend(be(u16_arg(&args, "address", None)?));
            let on = list(&args, "value")?.first().copied().unwrap_or(0) != 0;
            pdu.extend(be(if on { 0xFF00 } else { 0 }));
        }
        6 => {
            pdu.extend(be(u16_arg(&args, "address", None)?));
            pdu.extend(be(u16_arg(&args, "value", Some(0))?));
        }
        15 => {
            let bits = list(&args, "values")?;
            pdu.extend(be(u16_arg(&args, "address", None)?));
            pdu.extend(be(bits.len() as u16));
            let mut packed = vec![0u8; bits.len().div_ceil(8)];
            for (i, b) in bits.iter().enumerate() {
                if *b != 0 {
                    packed[i / 8] |= 1 << (i % 8);
                }
            }
            pdu.push(packed.len() as u8);
            pdu.extend(packed);
        }
        16 => {
            let values = list(&args, "values")?;
            pdu.extend(be(u16_arg(&args, "address", None)?));
            pdu.extend(be(values.len() as u16));
            pdu.push((values.len() * 2).min(255) as u8);
            values.iter().for_each(|v| pdu.extend(be(*v)));
        }
        22 => {
            pdu.extend(be(u16_arg(&args, "address", None)?));
            pdu.extend(be(u16_arg(&args, "and", None)?));
            pdu.extend(be(u16_arg(&args, "or", None)?));
        }
        23 => {
            let values = list(&args, "values")?;
            pdu.extend(be(u16_arg(&args, "read_address", None)?));
            pdu.extend(be(u16_arg(&args, "read_quantity", Some(1))?));
            pdu.extend(be(u16_arg(&args, "address", None)?));
            pdu.extend(be(values.len() as u16));
            pdu.push((values.len() * 2).min(255) as u8);
            values.iter().for_each(|v| pdu.extend(be(*v)));
        }
        8 => {
            pdu.extend(be(u16_arg(&args, "sub_function", Some(0))?));
            pdu.extend(be(u16_arg(&args, "data", Some(0))?));
        }
        24 => pdu.extend(be(u16_arg(&args, "address", None)?)),
        43 => pdu.extend([0x0E, 1, 0]),
        _ => {}
    }
    if pdu.len() > 253 {
        return Err("request longer than a Modbus PDU (253 bytes)".to_string());
    }
    Ok((unit, pdu))
}

/// The decision for one request, as text; `Ok(true)` if allowed.
pub fn explain(
    config: &Config,
    identity: &str,
    roles: &[String],
    service: &str,
    request: &str,
) -> Result<(bool, String), String> {
    let (service_id, _) = config
        .service_by_name(service)
        .ok_or_else(|| format!("service \"{service}\" is not defined"))?;
    let (unit, pdu) = request_pdu(request)?;
    let adu = crate::demo::client::adu(1, unit, &pdu);
    let policy = Policy::compile(config.policy.clone());
    let (subject, mut out) = preamble(&policy, identity, roles, service);
    let request = match modbus::decode_request(&adu) {
        Ok(r) => r,
        Err(RequestError::Violation { violation, .. }) => {
            out.push_str(&format!(
                "request  {request}\n\nREFUSED before policy: {violation} → exception {:#04x}\n",
                violation.exception().code()
            ));
            return Ok((false, out));
        }
        Err(RequestError::Frame(e)) => return Err(format!("not a valid request: {e}")),
    };
    let span = |s: modbus::Span| format!("{}..={}", s.address, s.last());
    let what = match request.access {
        modbus::Access::None => String::new(),
        modbus::Access::Read(table, s) => format!(", reads {table:?} {}", span(s)),
        modbus::Access::Write(table, s) => format!(", writes {table:?} {}", span(s)),
        modbus::Access::ReadWrite { read, write } => {
            format!(
                ", reads HoldingRegisters {}, writes {}",
                span(read),
                span(write)
            )
        }
    };
    out.push_str(&format!(
        "request  {} unit {unit}{what}\n\n",
        request.function
    ));
    let decision = policy.decide(service_id, &subject, &request);
    let allowed = describe(&policy, decision, &mut out);
    Ok((allowed, out))
}

/// The identity, its roles and the service, as the first lines of every explanation.
fn preamble(policy: &Policy, identity: &str, roles: &[String], service: &str) -> (Subject, String) {
    let subject = policy.subject(identity, roles);
    let role_names: Vec<&str> = subject
        .roles()
        .iter()
        .map(|r| policy.role_name(*r))
        .collect();
    let out = format!(
        "identity {identity}\nroles    {}\nservice  {service}\n",
        if role_names.is_empty() {
            "(none: no identity pattern matches)".to_string()
        } else {
            role_names.join(", ")
        }
    );
    (subject, out)
}

/// Appends the decision and its rule; whether it allows.
fn describe(policy: &Policy, decision: Decision, out: &mut String) -> bool {
    match decision {
        Decision::Allow { rule } => {
            let r = policy.rule(rule);
            out.push_str(&format!(
                "ALLOW by rule \"{}\" ({})\n",
                policy.rule_id(rule),
                r.map_or("", |r| r.location.as_str())
            ));
            if let Some(d) = r.and_then(|r| r.description.as_deref()) {
                out.push_str(&format!("  {d}\n"));
            }
            true
        }
        Decision::Deny { rule, reason } => {
            out.push_str(&format!("DENY: {reason}\n"));
            match rule {
                Some(rule) => out.push_str(&format!(
                    "  closest rule: \"{}\" ({})\n",
                    policy.rule_id(rule),
                    policy.rule(rule).map_or("", |r| r.location.as_str())
                )),
                None => out.push_str(match reason {
                    DenyReason::NoRuleForService => "  no rule of these roles names this service\n",
                    DenyReason::Topic => "  no topic filter of these roles' rules matches\n",
                    DenyReason::ClientId => {
                        "  the service has client_id = \"require\" (\"rewrite\" would replace the id)\n"
                    }
                    _ => "  no rule of these roles allows this function on this service\n",
                }),
            }
            false
        }
    }
}

/// `publish topic=… qos=1 retain=false payload=100`, `subscribe filter=… qos=2`,
/// `deliver topic=…` or `connect client_id=… will_topic=… will_qos=1 will_retain=false
/// will_payload=10`: the decision the MQTT session would make, and why.
pub fn explain_mqtt(
    config: &Config,
    identity: &str,
    roles: &[String],
    service: &str,
    request: &str,
) -> Result<(bool, String), String> {
    let (service_id, svc) = config
        .service_by_name(service)
        .ok_or_else(|| format!("service \"{service}\" is not defined"))?;
    if svc.protocol != Protocol::Mqtt {
        return Err(format!("service \"{service}\" does not speak MQTT"));
    }
    let mut words = request.split_whitespace();
    let verb = words
        .next()
        .ok_or("empty request: write e.g. \"publish topic=plant1/line1/s-7/telemetry qos=1\"")?;
    let mut args = HashMap::new();
    for w in words {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| format!("\"{w}\" is not key=value"))?;
        args.insert(k, v);
    }
    let qos = |key: &str| -> Result<u8, String> {
        match args.get(key) {
            None => Ok(0),
            Some(v) => match v.parse::<u8>() {
                Ok(q) if q <= 2 => Ok(q),
                _ => Err(format!("{key}={v}: QoS is 0, 1 or 2")),
            },
        }
    };
    let flag = |key: &str| -> Result<bool, String> {
        match args.get(key).copied() {
            None | Some("false" | "0" | "no") => Ok(false),
            Some("true" | "1" | "yes") => Ok(true),
            Some(v) => Err(format!("{key}={v}: write true or false")),
        }
    };
    let size = |key: &str| -> Result<usize, String> {
        args.get(key).map_or(Ok(0), |v| {
            v.parse()
                .map_err(|_| format!("{key}={v}: not a size in bytes"))
        })
    };
    let topic = |key: &str| -> Result<&str, String> {
        let t = args
            .get(key)
            .copied()
            .ok_or_else(|| format!("missing {key}=…"))?;
        if !mqtt::valid_topic_name(t) {
            return Err(format!(
                "{key}={t}: not a valid topic name (no wildcards, not empty)"
            ));
        }
        Ok(t)
    };
    let policy = Policy::compile(config.policy.clone());
    let (subject, mut out) = preamble(&policy, identity, roles, service);
    let decision = match verb {
        "publish" => {
            let (topic, qos, retain, payload) = (
                topic("topic")?,
                qos("qos")?,
                flag("retain")?,
                size("payload")?,
            );
            out.push_str(&format!(
                "request  PUBLISH topic {topic} QoS {qos} retain {retain} payload {payload} bytes\n\n"
            ));
            let action = MqttAction::Publish {
                topic,
                qos,
                retain,
                payload_len: payload,
            };
            policy.decide_mqtt(service_id, &subject, identity, action)
        }
        "subscribe" => {
            let filter = args.get("filter").copied().ok_or("missing filter=…")?;
            let requested = qos("qos")?;
            let inner = mqtt::split_shared(filter).map_or(filter, |(_, f)| f);
            if !mqtt::valid_topic_filter(inner) {
                return Err(format!("filter={filter}: not a valid topic filter"));
            }
            out.push_str(&format!(
                "request  SUBSCRIBE filter {filter} QoS {requested}\n\n"
            ));
            let decision = policy.decide_mqtt(
                service_id,
                &subject,
                identity,
                MqttAction::Subscribe { filter: inner },
            );
            if let Decision::Allow { rule } = decision {
                let granted = requested.min(policy.mqtt_max_qos(rule));
                out.push_str(&format!("granted QoS {granted}\n"));
            }
            decision
        }
        "deliver" => {
            let topic = topic("topic")?;
            out.push_str(&format!(
                "request  broker delivers PUBLISH topic {topic}\n\n"
            ));
            policy.decide_mqtt(
                service_id,
                &subject,
                identity,
                MqttAction::Deliver { topic },
            )
        }
        "connect" => {
            let client_id = args.get("client_id").copied().unwrap_or(identity);
            out.push_str(&format!("request  CONNECT client id {client_id}"));
            if !policy.admits(service_id, &subject) {
                out.push_str("\n\n");
                Decision::Deny {
                    rule: None,
                    reason: DenyReason::NoRuleForService,
                }
            } else if svc.mqtt.client_id == ClientIdBinding::Require && client_id != identity {
                out.push_str("\n\n");
                Decision::Deny {
                    rule: None,
                    reason: DenyReason::ClientId,
                }
            } else if args.contains_key("will_topic") {
                let (topic, qos, retain, payload) = (
                    topic("will_topic")?,
                    qos("will_qos")?,
                    flag("will_retain")?,
                    size("will_payload")?,
                );
                out.push_str(&format!(
                    ", will topic {topic} QoS {qos} retain {retain} payload {payload} bytes\n\n"
                ));
                let action = MqttAction::Publish {
                    topic,
                    qos,
                    retain,
                    payload_len: payload,
                };
                policy.decide_mqtt(service_id, &subject, identity, action)
            } else {
                out.push_str("\n\nALLOW: the identity may use this service\n");
                return Ok((true, out));
            }
        }
        other => {
            return Err(format!(
                "\"{other}\": write publish, subscribe, deliver or connect"
            ));
        }
    };
    let allowed = describe(&policy, decision, &mut out);
    Ok((allowed, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_specs_become_valid_frames() {
        for spec in [
            "read_holding_registers unit=1 address=0 quantity=10",
            "write_single_register address=105 value=2000",
            "write_single_coil address=3 value=on",
            "write_multiple_coils address=0 values=1,0,1",
            "write_multiple_registers address=100 values=10,20",
            "mask_write_register address=1 and=0x0f or=0x30",
            "read_write_multiple_registers read_address=0 read_quantity=2 address=100 values=5",
            "diagnostics sub_function=0 data=0x1234",
            "read_device_identification",
            "90",
        ] {
            let (unit, pdu) = request_pdu(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
            let adu = crate::demo::client::adu(1, unit, &pdu);
            assert!(modbus::decode_request(&adu).is_ok(), "{spec}");
        }
        assert!(request_pdu("read_only").is_err());
        assert!(request_pdu("write_single_register value=1").is_err());
        assert!(request_pdu("read_coils address=70000").is_err());
    }
}
