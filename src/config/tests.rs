use super::*;

const MAIN: &str = r#"
[tls]
client_ca = "ca.pem"
cert = "gw.pem"
key = "gw.key"

[[listener]]
name = "l"
bind = "127.0.0.1:0"
default_service = "plc"

[[service]]
name = "plc"
protocol = "modbus"
upstream = "127.0.0.1:502"
"#;

fn load(policy: &str) -> Result<Config, ConfigErrors> {
    Config::from_sources(
        &SourceFile::new("ztgate.toml", MAIN),
        &[SourceFile::new("policies/p.toml", policy)],
        Path::new("/etc/ztgate"),
    )
}

fn messages(policy: &str) -> Vec<String> {
    match load(policy) {
        Ok(_) => vec![],
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn the_shipped_example_loads_without_warnings() {
    let config = Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ztgate.toml"
    )))
    .expect("example config is valid");
    assert_eq!(config.services.len(), 2);
    assert_eq!(config.policy.rules.len(), 9);
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
    let (_, plc) = config.service_by_name("plc-line1").expect("service");
    assert_eq!(plc.upstream_in_flight, 1);
    let (_, broker) = config.service_by_name("broker-line1").expect("service");
    assert_eq!(broker.protocol, Protocol::Mqtt);
    assert_eq!(broker.mqtt.max_packet_size, 262_144);
    assert_eq!(broker.mqtt.client_id, ClientIdBinding::Require);
    assert_eq!(
        broker.mqtt.denied_publish_v311,
        DeniedPublishV311::Acknowledge
    );
    assert!(broker.upstream_tls.is_none());
    assert_eq!(
        config.tls.client_ca,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/ca.pem")
    );
}

#[test]
fn collects_every_error_with_its_position() {
    let errors = messages(
        r#"
[roles]
operator = "x"

[[rule]]
id = "a"
roles = ["operatr"]
services = ["plc", "plc2"]
[rule.modbus]
functions = ["read_coils", "read_coilz"]
addresses = ["200-100"]
"#,
    );
    assert_eq!(errors.len(), 4, "{errors:#?}");
    assert!(errors[0].starts_with("policies/p.toml:7:10: role \"operatr\" is not defined"));
    assert!(errors[1].starts_with("policies/p.toml:8:20: service \"plc2\" is not defined"));
    assert!(errors[2].starts_with("policies/p.toml:10:28: unknown Modbus function \"read_coilz\""));
    assert!(errors[3].starts_with("policies/p.toml:11:14: address range \"200-100\" is reversed"));
}

#[test]
fn duplicate_rule_ids_point_at_both() {
    let errors = messages(
        r#"
[roles]
r = ""
[[identity]]
match = "x"
roles = ["r"]
[[rule]]
id = "a"
roles = ["r"]
services = ["plc"]
modbus = { functions = [3] }
[[rule]]
id = "a"
roles = ["r"]
services = ["plc"]
modbus = { functions = [4] }
"#,
    );
    assert_eq!(
        errors,
        vec![
            "policies/p.toml:13:6: duplicate rule id \"a\" (first defined at policies/p.toml:8:6)"
        ]
    );
}

#[test]
fn unknown_fields_are_rejected() {
    let errors = messages("[[rule]]\nid = \"a\"\nrole = [\"x\"]\n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with("policies/p.toml:3:1: unknown field `role`"),
        "{errors:?}"
    );
}

#[test]
fn ranges_parse_and_merge() {
    assert_eq!(parse_range(&RangeSpec::One(5), "unit", 255), Ok((5, 5)));
    assert_eq!(
        parse_range(&RangeSpec::Text("1-3".into()), "unit", 255),
        Ok((1, 3))
    );
    assert!(parse_range(&RangeSpec::Text("1-300".into()), "unit", 255).is_err());
    assert!(parse_range(&RangeSpec::One(-1), "unit", 255).is_err());
    assert!(parse_range(&RangeSpec::Text("x".into()), "unit", 255).is_err());
    let set = RangeSet::new(vec![(10, 20), (0, 4), (5, 9), (30, 40)]);
    assert_eq!(set.ranges(), &[(0, 20), (30, 40)]);
    assert!(set.contains_range(3, 15));
    assert!(!set.contains_range(15, 30));
    assert!(set.contains(40));
    assert!(!set.contains(41));
}

#[test]
fn durations_need_units_and_bounds() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("0s").is_err());
    assert!(parse_duration("999h").is_err());
}

#[test]
fn warns_about_shadowed_rules_and_undercut_bounds() {
    let config = load(
        r#"
[roles]
op = ""
[[identity]]
match = "hmi"
roles = ["op"]
[[rule]]
id = "wide"
roles = ["op"]
services = ["plc"]
modbus = { functions = ["read_write"], addresses = ["0-999"] }
[[rule]]
id = "narrow"
roles = ["op"]
services = ["plc"]
modbus = { functions = ["read_holding_registers"], addresses = ["0-9"] }
[[rule]]
id = "bounded"
roles = ["op"]
services = ["plc"]
modbus = { functions = ["write_single_register"], addresses = ["100-119"], values = { min = 0, max = 10 } }
"#,
    )
    .expect("valid");
    assert_eq!(config.warnings.len(), 4, "{:#?}", config.warnings);
    assert!(config.warnings[0].contains("[audit] has neither a file nor stdout"));
    assert!(config.warnings[1].contains("rule \"narrow\" can never decide anything"));
    assert!(config.warnings[2].contains("rule \"bounded\" can never decide anything"));
    assert!(config.warnings[3].contains("rule \"wide\" allows writes without value bounds"));
}

#[test]
fn warns_when_a_uri_identity_meets_an_identity_filter() {
    let main = format!(
        "{MAIN}\n[[service]]\nname = \"broker\"\nprotocol = \"mqtt\"\nupstream = \"127.0.0.1:1883\"\n"
    );
    let policy = r#"
[roles]
sensor = "s"
[[identity]]
match = "spiffe://plant1/line1/sensor/*"
roles = ["sensor"]
[[identity]]
match = "s-*"
roles = ["sensor"]
[[rule]]
id = "own-topics"
roles = ["sensor"]
services = ["broker"]
[rule.mqtt]
publish = ["plant1/{identity}/telemetry/#"]
[[rule]]
id = "shared"
roles = ["sensor"]
services = ["broker"]
[rule.mqtt]
subscribe = ["plant1/broadcast/+"]
"#;
    let config = Config::from_sources(
        &SourceFile::new("ztgate.toml", main),
        &[SourceFile::new("policies/p.toml", policy)],
        Path::new("/etc/ztgate"),
    )
    .expect("valid");
    let warnings: Vec<&String> = config
        .warnings
        .iter()
        .filter(|w| w.contains("{identity}"))
        .collect();
    assert_eq!(warnings.len(), 1, "{:?}", config.warnings);
    let w = warnings[0];
    assert!(
        w.contains("rule \"own-topics\"") && w.contains("\"spiffe://plant1/line1/sensor/*\""),
        "{w}"
    );
    let broker = config.service_by_name("broker").expect("broker").1;
    assert_eq!(broker.mqtt.username, UsernameBinding::Require);
}
