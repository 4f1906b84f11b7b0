use super::*;
use crate::config::{Config, SourceFile};
use std::path::Path;

fn example() -> Config {
    Config::load(Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/ztgate.toml"
    )))
    .expect("example config")
}

fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/firewall")
        .join(name);
    if std::env::var_os("ZTGATE_BLESS").is_some() {
        std::fs::write(&path, actual).expect("write golden file");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} missing (ZTGATE_BLESS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (ZTGATE_BLESS=1 rewrites it after review)",
        path.display()
    );
}

#[test]
fn the_example_ruleset_matches_the_golden_files() {
    let plan = Plan::from_config(&example()).expect("the example has a [firewall]");
    golden("example.nft", &to_text(&plan));
    let json = serde_json::to_string_pretty(&to_json(&plan, &[])).expect("json");
    golden("example.json", &(json + "\n"));
}

#[test]
fn the_example_opens_only_what_it_declares() {
    let plan = Plan::from_config(&example()).expect("plan");
    let text = to_text(&plan);
    // The listener from IT only, SSH from management only, upstream PLC only.
    assert!(text.contains(
        "iifname \"enp1s0\" ip saddr 10.1.0.0/16 tcp dport 802 counter accept comment \"listener modbus-security from it\""
    ));
    assert!(text.contains(
        "iifname \"enp3s0\" ip saddr 192.168.100.0/24 tcp dport 22 counter accept comment \"allow ssh from mgmt\""
    ));
    assert!(text.contains(
        "iifname \"enp1s0\" ip saddr 10.1.0.0/16 tcp dport 8883 counter accept comment \"listener mqtt-tls from it\""
    ));
    assert!(text.contains("elements = { 10.10.1.10 . 502, 10.10.1.20 . 1883 }"));
    assert!(
        text.contains(
            "chain forward {\n\t\ttype filter hook forward priority filter; policy drop;"
        )
    );
    // Into OT: by interface and by address, each on its own, after the upstream pairs.
    assert!(
        text.contains("ip daddr . tcp dport @upstreams_v4 counter accept comment \"upstreams ip\"")
    );
    assert!(text.contains("oifname \"enp2s0\" drop comment \"output to ot via interface deny\""));
    assert!(text.contains("ip daddr 10.10.1.0/24 drop comment \"output to ot ip deny\""));
    // Quarantine after established: open sessions and the gateway's own replies are not cut.
    let established = text.find("comment \"established\"").expect("established");
    let quarantine = text.find("comment \"quarantine ip\"").expect("quarantine");
    assert!(established < quarantine);
    // No listener rule from OT or management.
    assert!(!text.contains("listener modbus-security from ot"));
    assert!(!text.contains("listener modbus-security from mgmt"));
}

#[test]
fn no_firewall_table_means_no_plan() {
    let main = SourceFile::new(
        "ztgate.toml",
        "[tls]\nclient_ca = \"a\"\ncert = \"b\"\nkey = \"c\"\n[[listener]]\nname = \"l\"\nbind = \"127.0.0.1:0\"\n[[service]]\nname = \"plc\"\nprotocol = \"modbus\"\nupstream = \"plc.local:502\"\n",
    );
    let config = Config::from_sources(&main, &[], Path::new(".")).expect("valid");
    assert!(Plan::from_config(&config).is_none());
}

#[test]
fn zone_errors_point_at_their_lines() {
    let main = SourceFile::new(
        "ztgate.toml",
        r#"[tls]
client_ca = "a"
cert = "b"
key = "c"
[[listener]]
name = "l"
bind = "0.0.0.0:802"
zones = ["it", "dmz"]
[[service]]
name = "plc"
protocol = "modbus"
upstream = "10.20.0.5:502"
[[zone]]
name = "it"
interfaces = ["this-name-is-far-too-long"]
networks = ["10.1.0.0/16", "10.1.0.1/16", "10.1.0.0/33"]
[[zone]]
name = "ot"
networks = ["10.10.0.0/16"]
protected = true
[firewall]
[[firewall.allow]]
name = "ssh"
port = 22
"#,
    );
    let errors = Config::from_sources(&main, &[], Path::new("."))
        .expect_err("invalid")
        .0
        .iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>();
    assert_eq!(
        errors,
        vec![
            "ztgate.toml:8:16: zone \"dmz\" is not defined",
            "ztgate.toml:12:12: upstream 10.20.0.5 of service \"plc\" lies in no zone's networks",
            "ztgate.toml:15:15: interface name \"this-name-is-far-too-long\" is not a Linux interface name (1-15 of a-z, 0-9, -_.@, optionally ending in *)",
            "ztgate.toml:16:28: network \"10.1.0.1/16\" has host bits set (did you mean 10.1.0.0/16?)",
            "ztgate.toml:16:43: network \"10.1.0.0/33\" is not a CIDR (e.g. \"10.10.1.0/24\" or \"fd00::/64\")",
            "ztgate.toml:23:8: allow \"ssh\" names no zones and no zone is a management zone: it would be unreachable",
        ]
    );
}

#[test]
fn zones_may_not_overlap_or_share_an_interface() {
    let main = SourceFile::new(
        "ztgate.toml",
        r#"[tls]
client_ca = "a"
cert = "b"
key = "c"
[[listener]]
name = "l"
bind = "0.0.0.0:802"
zones = ["it"]
[[service]]
name = "plc"
protocol = "modbus"
upstream = "10.77.51.2:502"
[[zone]]
name = "it"
interfaces = ["eth0"]
networks = ["10.77.0.0/16"]
[[zone]]
name = "ot"
interfaces = ["eth0", "eth1*"]
networks = ["10.77.51.0/24"]
protected = true
[firewall]
"#,
    );
    let errors: Vec<String> = Config::from_sources(&main, &[], Path::new("."))
        .expect_err("invalid")
        .0
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors,
        vec![
            "ztgate.toml:19:15: interface \"eth0\" already belongs to zone \"it\"",
            "ztgate.toml:20:13: network 10.77.51.0/24 overlaps a network of zone \"it\"",
        ]
    );
}
