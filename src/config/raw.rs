//! The files as written: serde types, unknown fields rejected, names spanned for errors.

use serde::Deserialize;
use std::collections::BTreeMap;
use toml::Spanned;

/// `ztgate.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    pub tls: RawTls,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<RawListener>,
    #[serde(default, rename = "service")]
    pub services: Vec<RawService>,
    #[serde(default)]
    pub limits: RawLimits,
    #[serde(default)]
    pub audit: RawAudit,
    #[serde(default)]
    pub policy: RawPolicyDir,
    #[serde(default, rename = "zone")]
    pub zones: Vec<RawZone>,
    pub firewall: Option<RawFirewall>,
}

/// A network the gateway has a leg in.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZone {
    pub name: Spanned<String>,
    #[serde(default)]
    pub interfaces: Vec<Spanned<String>>,
    /// CIDRs, IPv4 and IPv6.
    #[serde(default)]
    pub networks: Vec<Spanned<String>>,
    /// An OT zone: the gateway may open connections into it only to declared upstreams.
    #[serde(default)]
    pub protected: bool,
    /// A management zone: `[[firewall.allow]]` services (e.g. SSH) are reachable from it.
    #[serde(default)]
    pub management: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFirewall {
    /// Apply the ruleset at start and refuse to start when it cannot be applied.
    pub enforce: Option<bool>,
    /// Leave the table in place when the daemon exits (fail closed).
    pub keep_on_exit: Option<bool>,
    pub log_prefix: Option<Spanned<String>>,
    /// Log lines per second for dropped packets.
    pub log_rate: Option<Spanned<i64>>,
    /// Handshake or identity failures from one address within `quarantine_window` that put it
    /// into the quarantine set; 0 disables quarantine.
    pub quarantine_after: Option<Spanned<i64>>,
    pub quarantine_window: Option<Spanned<String>>,
    pub quarantine_time: Option<Spanned<String>>,
    #[serde(default)]
    pub allow: Vec<RawAllow>,
}

/// A service on the gateway itself (e.g. SSH) reachable from the management zones.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllow {
    pub name: Spanned<String>,
    pub port: Spanned<i64>,
    pub protocol: Option<Spanned<String>>,
    /// Default: every management zone.
    pub zones: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// CA bundle that client certificates must chain to.
    pub client_ca: Spanned<String>,
    /// The gateway's certificate chain and key.
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    #[serde(default)]
    pub crls: Vec<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    /// Trust the Modbus/TCP Security role extension in client certificates from this CA.
    #[serde(default)]
    pub certificate_roles: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    pub bind: Spanned<String>,
    pub tls_versions: Option<Spanned<Vec<String>>>,
    pub default_service: Option<Spanned<String>>,
    /// Zones whose clients may connect (with `[[zone]]`s defined: required).
    pub zones: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Spanned<String>,
    pub protocol: Spanned<String>,
    pub upstream: Spanned<String>,
    /// SNI names that select this service; defaults to the service name.
    pub server_names: Option<Vec<Spanned<String>>>,
    /// Unit ids the upstream serves; requests for other units get 0x0A.
    pub units: Option<Vec<Spanned<RangeSpec>>>,
    /// Requests in flight per upstream connection (1 = one at a time, the default).
    pub upstream_in_flight: Option<Spanned<i64>>,
    pub max_outstanding: Option<Spanned<i64>>,
    pub max_upstream_connections: Option<Spanned<i64>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    /// An upstream connection with nothing pending is released after this long.
    pub upstream_idle_timeout: Option<Spanned<String>>,
    /// How a policy denial is answered: `illegal_function` (default, Modbus/TCP Security
    /// R-31), `illegal_data_address` (for address and value denials) or `reset`.
    pub on_deny: Option<Spanned<String>>,
    /// MQTT: the largest packet, in bytes, accepted from either side.
    pub max_packet_size: Option<Spanned<i64>>,
    /// MQTT: `require` (default: the client id must equal the certificate identity) or
    /// `rewrite` (the gateway replaces it by the identity).
    pub client_id: Option<Spanned<String>>,
    /// MQTT: `require` (default: no user name, or the identity) or `forward` (as sent).
    pub username: Option<Spanned<String>>,
    /// MQTT 3.1.1: a denied PUBLISH is `acknowledge`d and dropped (default) or `disconnect`s.
    pub denied_publish_v311: Option<Spanned<String>>,
    /// MQTT 5.0: topic aliases the gateway tracks per direction.
    pub topic_alias_maximum: Option<Spanned<i64>>,
    /// TLS to the upstream.
    pub upstream_tls: Option<Spanned<RawUpstreamTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// CA bundle the upstream's certificate must chain to.
    pub ca: Spanned<String>,
    /// The gateway's client certificate and key, for upstreams that require one.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    /// Default: the host part of `upstream`.
    pub server_name: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_sessions: Option<Spanned<i64>>,
    /// TLS handshakes in progress (unauthenticated connections) at once.
    pub max_handshakes: Option<Spanned<i64>>,
    pub max_sessions_per_identity: Option<Spanned<i64>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub frame_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    pub file: Option<Spanned<String>>,
    #[serde(default)]
    pub stdout: bool,
    pub queue: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyDir {
    pub dir: Option<Spanned<String>>,
}

/// One file of the policy directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicyFile {
    /// role name → description.
    #[serde(default)]
    pub roles: BTreeMap<Spanned<String>, String>,
    #[serde(default, rename = "identity")]
    pub identities: Vec<RawIdentity>,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// An exact identity (`spiffe://plant1/hmi/hmi-01`, or a CN) or a prefix ending in `*`.
    #[serde(rename = "match")]
    pub pattern: Spanned<String>,
    pub roles: Vec<Spanned<String>>,
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    pub id: Spanned<String>,
    pub description: Option<String>,
    pub roles: Vec<Spanned<String>>,
    pub services: Vec<Spanned<String>>,
    pub modbus: Option<RawModbusRule>,
    pub mqtt: Option<Spanned<RawMqttRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttRule {
    /// Topic filters that may be published to; `{identity}` is the client's identity.
    #[serde(default)]
    pub publish: Vec<Spanned<String>>,
    /// Topic filters that may be subscribed to (a subscription must lie inside one).
    #[serde(default)]
    pub subscribe: Vec<Spanned<String>>,
    /// 0, 1 or 2 (default 2).
    pub max_qos: Option<Spanned<i64>>,
    /// Whether the retain flag may be set (default false).
    pub retain: Option<bool>,
    /// Largest payload in bytes (default: only the service's max_packet_size).
    pub max_payload: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbusRule {
    /// Function names (`read_coils`), numbers (`90`) or presets (`read_only`).
    pub functions: Vec<Spanned<FunctionSpec>>,
    pub units: Option<Vec<Spanned<RangeSpec>>>,
    pub addresses: Option<Vec<Spanned<RangeSpec>>>,
    /// Function 23's read half; defaults to `addresses`.
    pub read_addresses: Option<Vec<Spanned<RangeSpec>>>,
    /// Function 23's write half; defaults to `addresses`.
    pub write_addresses: Option<Vec<Spanned<RangeSpec>>>,
    /// Bounds on every register value written.
    pub values: Option<Spanned<RawValueBounds>>,
    /// Coil states a write may set: `["on"]`, `["off"]` or both (the default).
    pub coil_values: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawValueBounds {
    pub min: i64,
    pub max: i64,
}

/// `5` or `"100-119"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RangeSpec {
    One(i64),
    Text(String),
}

/// `"read_coils"`, `"read_only"` or `90`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FunctionSpec {
    Code(i64),
    Name(String),
}
