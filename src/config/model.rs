//! The validated configuration: every reference resolved, every number in range.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A loaded, validated `ztgate.toml` with its policy directory.
#[derive(Clone, Debug)]
pub struct Config {
    pub source: PathBuf,
    pub gateway_name: String,
    pub tls: TlsSettings,
    pub listeners: Vec<Listener>,
    pub services: Vec<Service>,
    pub limits: Limits,
    pub audit: AuditSettings,
    pub policy: PolicyModel,
    pub zones: Vec<Zone>,
    /// `None` without a `[firewall]` table: ztgate leaves the host firewall alone.
    pub firewall: Option<FirewallSettings>,
    /// Things that load but are probably mistakes (`ztgate check` prints them).
    pub warnings: Vec<String>,
}

impl Config {
    pub fn service(&self, id: ServiceId) -> Option<&Service> {
        self.services.get(id.0)
    }

    pub fn service_by_name(&self, name: &str) -> Option<(ServiceId, &Service)> {
        self.services
            .iter()
            .enumerate()
            .find(|(_, s)| s.name == name)
            .map(|(i, s)| (ServiceId(i), s))
    }
}

#[derive(Clone, Debug)]
pub struct TlsSettings {
    pub client_ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crls: Vec<PathBuf>,
    pub handshake_timeout: Duration,
    /// Accept roles from the Modbus/TCP Security role extension of client certificates.
    pub certificate_roles: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsVersions {
    pub tls12: bool,
    pub tls13: bool,
}

#[derive(Clone, Debug)]
pub struct Listener {
    pub name: String,
    pub bind: SocketAddr,
    pub tls_versions: TlsVersions,
    /// For clients that send no SNI (Modbus/TCP Security clients often don't).
    pub default_service: Option<ServiceId>,
    /// Zones whose clients may connect (indices into [`Config::zones`]).
    pub zones: Vec<usize>,
}

/// A network the gateway has a leg in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Zone {
    pub name: String,
    pub interfaces: Vec<String>,
    pub networks: Vec<ipnet::IpNet>,
    /// OT: connections into it only to declared upstreams.
    pub protected: bool,
    /// Management: `[[firewall.allow]]` services are reachable from it.
    pub management: bool,
}

impl Zone {
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.networks.iter().any(|n| n.contains(&ip))
    }
}

#[derive(Clone, Debug)]
pub struct FirewallSettings {
    pub enforce: bool,
    pub keep_on_exit: bool,
    pub log_prefix: String,
    pub log_rate: u32,
    /// 0: quarantine off.
    pub quarantine_after: u32,
    pub quarantine_window: Duration,
    pub quarantine_time: Duration,
    pub allow: Vec<AllowedService>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

#[derive(Clone, Debug)]
pub struct AllowedService {
    pub name: String,
    pub port: u16,
    pub protocol: L4,
    /// Indices into [`Config::zones`].
    pub zones: Vec<usize>,
}

/// Index of a service in [`Config::services`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub usize);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Modbus,
    Mqtt,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Modbus => "modbus",
            Protocol::Mqtt => "mqtt",
        }
    }
}

/// How the MQTT client id relates to the certificate identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientIdBinding {
    /// The client id must equal the identity; anything else is refused at CONNECT.
    Require,
    /// The gateway replaces whatever the client sent by the identity.
    Rewrite,
}

/// What the gateway does with the user name of a CONNECT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UsernameBinding {
    /// No user name, or the certificate identity: a broker that keys ACLs or audit on the user
    /// name sees the identity, never what a device claims. Anything else is refused.
    Require,
    /// Passed to the broker as sent (with the password), for brokers that authenticate the
    /// devices themselves as well.
    Forward,
}

/// What happens to a PUBLISH the policy denies on an MQTT 3.1.1 session (3.1.1 has no reason
/// code to refuse one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeniedPublishV311 {
    /// Acknowledge it as if delivered (PUBACK, or PUBREC … PUBCOMP) and drop it: what
    /// Mosquitto does for an ACL denial. The client never learns the message was dropped.
    Acknowledge,
    /// Close the connection: what HiveMQ and VerneMQ do. The client learns, and reconnects.
    Disconnect,
}

/// Settings of an MQTT service.
#[derive(Clone, Debug)]
pub struct MqttSettings {
    /// Largest packet accepted from either side (fixed header included); advertised in the
    /// v5 CONNACK.
    pub max_packet_size: usize,
    pub client_id: ClientIdBinding,
    pub username: UsernameBinding,
    pub denied_publish_v311: DeniedPublishV311,
    /// Topic aliases per direction the gateway tracks (and advertises to the client in the
    /// v5 CONNACK, at most what the broker allows).
    pub topic_alias_maximum: u16,
}

impl Default for MqttSettings {
    fn default() -> MqttSettings {
        MqttSettings {
            max_packet_size: 256 * 1024,
            client_id: ClientIdBinding::Require,
            username: UsernameBinding::Require,
            denied_publish_v311: DeniedPublishV311::Acknowledge,
            topic_alias_maximum: 32,
        }
    }
}

/// TLS from the gateway to the upstream (for brokers that require it).
#[derive(Clone, Debug)]
pub struct UpstreamTls {
    /// CA bundle the upstream's certificate must chain to.
    pub ca: PathBuf,
    /// The gateway's client certificate and key, for upstreams that require one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    /// Name the upstream's certificate must carry (DNS name or IP address).
    pub server_name: String,
}

/// How a request the policy denies is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnDeny {
    /// Exception 0x01 for every denial, as Modbus/TCP Security requires.
    IllegalFunction,
    /// 0x01 for function denials, 0x02 for address, unit and value denials.
    IllegalDataAddress,
    /// Close the client's connection.
    Reset,
}

#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub protocol: Protocol,
    /// `host:port` of the device; resolved at each connect.
    pub upstream: String,
    /// Lower-case SNI names that select this service.
    pub server_names: Vec<String>,
    /// Units the upstream serves.
    pub units: RangeSet,
    /// Requests in flight on one upstream connection (1: one at a time).
    pub upstream_in_flight: usize,
    /// Requests a client may have outstanding before it gets 0x06.
    pub max_outstanding: usize,
    pub max_upstream_connections: usize,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub upstream_idle_timeout: Duration,
    pub on_deny: OnDeny,
    /// MQTT services only.
    pub mqtt: MqttSettings,
    pub upstream_tls: Option<UpstreamTls>,
}

#[derive(Clone, Debug)]
pub struct Limits {
    /// Verified sessions at once.
    pub max_sessions: usize,
    /// Connections still in their TLS handshake at once: unauthenticated peers cannot take
    /// the verified sessions' slots.
    pub max_handshakes: usize,
    pub max_sessions_per_identity: usize,
    pub idle_timeout: Duration,
    /// Deadline for the rest of a frame once its first byte arrived.
    pub frame_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct AuditSettings {
    pub file: Option<PathBuf>,
    pub stdout: bool,
    /// Events buffered between the data path and the sinks.
    pub queue: usize,
}

/// The policy as written, validated: roles, identities and rules by index.
#[derive(Clone, Debug, Default)]
pub struct PolicyModel {
    pub roles: Vec<RoleDef>,
    pub identities: Vec<IdentityDef>,
    pub rules: Vec<RuleDef>,
    /// Service names by [`ServiceId`].
    pub services: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoleId(pub usize);

#[derive(Clone, Debug)]
pub struct RoleDef {
    pub name: String,
    pub description: String,
}

#[derive(Clone, Debug)]
pub struct IdentityDef {
    /// Exact identity, or a prefix when it ends in `*`.
    pub pattern: String,
    pub roles: Vec<RoleId>,
}

#[derive(Clone, Debug)]
pub struct RuleDef {
    pub id: String,
    pub description: Option<String>,
    /// `file:line:column` of the rule id, for warnings and explain.
    pub location: String,
    pub roles: Vec<RoleId>,
    pub services: Vec<ServiceId>,
    pub modbus: Option<ModbusMatch>,
    pub mqtt: Option<MqttMatch>,
}

impl RuleDef {
    /// Whether this rule allows everything `other` allows (so `other` never decides).
    pub fn shadows(&self, other: &RuleDef) -> bool {
        let (Some(a), Some(b)) = (&self.modbus, &other.modbus) else {
            return false;
        };
        other.roles.iter().all(|r| self.roles.contains(r))
            && other.services.iter().all(|s| self.services.contains(s))
            && a.functions.contains_all(&b.functions)
            && a.units.contains_set(&b.units)
            && (a.broadcast || !b.broadcast)
            && a.read_addresses.contains_set(&b.read_addresses)
            && a.write_addresses.contains_set(&b.write_addresses)
            && match (a.values, b.values) {
                (None, _) => true,
                (Some(_), None) => false,
                (Some(x), Some(y)) => x.min <= y.min && y.max <= x.max,
            }
            && (a.coil_values.on || !b.coil_values.on)
            && (a.coil_values.off || !b.coil_values.off)
    }

    /// Whether this rule allows unbounded register writes where `bounded` sets value bounds,
    /// for a role and service both share.
    pub fn undercuts_bounds_of(&self, bounded: &RuleDef) -> bool {
        let (Some(a), Some(b)) = (&self.modbus, &bounded.modbus) else {
            return false;
        };
        const REGISTER_WRITES: [u8; 4] = [6, 16, 22, 23];
        a.values.is_none()
            && self.roles.iter().any(|r| bounded.roles.contains(r))
            && self.services.iter().any(|s| bounded.services.contains(s))
            && REGISTER_WRITES
                .iter()
                .any(|f| a.functions.contains(*f) && b.functions.contains(*f))
            && a.write_addresses.overlaps(&b.write_addresses)
    }
}

/// What a rule allows of MQTT sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MqttMatch {
    /// Topic filters the subject may publish to (`{identity}` substituted per session).
    pub publish: Vec<String>,
    /// Topic filters the subject may subscribe to; every subscription must lie inside one.
    pub subscribe: Vec<String>,
    /// Highest QoS allowed (0..=2): a higher publish is denied, a higher subscription is
    /// granted at this QoS.
    pub max_qos: u8,
    /// Whether publishes may set the retain flag.
    pub retain: bool,
    /// Largest application payload allowed in a publish (and a will).
    pub max_payload: Option<usize>,
}

/// What a rule allows of Modbus requests.
#[derive(Clone, Debug)]
pub struct ModbusMatch {
    pub functions: FunctionSet,
    pub units: RangeSet,
    /// Non-read requests to unit 0 (broadcast) allowed: only when the rule's `units` lists 0
    /// on its own (not inside a range such as "0-255").
    pub broadcast: bool,
    pub read_addresses: RangeSet,
    pub write_addresses: RangeSet,
    pub values: Option<ValueBounds>,
    pub coil_values: CoilValues,
}

/// A set of function codes 0..=127.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FunctionSet(u128);

impl FunctionSet {
    pub fn insert(&mut self, code: u8) {
        if code < 128 {
            self.0 |= 1u128 << code;
        }
    }

    pub fn contains(&self, code: u8) -> bool {
        code < 128 && self.0 & (1u128 << code) != 0
    }

    pub fn contains_all(&self, other: &FunctionSet) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0u8..128).filter(|c| self.contains(*c))
    }
}

/// Inclusive ranges, sorted and merged so that containment in the union is containment in one
/// range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeSet(Vec<(u32, u32)>);

impl RangeSet {
    pub fn new(mut ranges: Vec<(u32, u32)>) -> RangeSet {
        ranges.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(ranges.len());
        for (a, b) in ranges {
            match merged.last_mut() {
                Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
                _ => merged.push((a, b)),
            }
        }
        RangeSet(merged)
    }

    /// Whether the set is every address 0..=65535 (no limit).
    pub fn is_everything(&self) -> bool {
        self.0 == [(0, 65535)]
    }

    pub fn ranges(&self) -> &[(u32, u32)] {
        &self.0
    }

    pub fn contains(&self, x: u32) -> bool {
        self.contains_range(x, x)
    }

    /// Whether `first..=last` lies inside the set (binary search).
    pub fn contains_range(&self, first: u32, last: u32) -> bool {
        let i = self.0.partition_point(|(a, _)| *a <= first);
        i > 0 && self.0.get(i - 1).is_some_and(|(_, b)| *b >= last)
    }

    pub fn contains_set(&self, other: &RangeSet) -> bool {
        other.0.iter().all(|(a, b)| self.contains_range(*a, *b))
    }

    pub fn overlaps(&self, other: &RangeSet) -> bool {
        self.0
            .iter()
            .any(|(a, b)| other.0.iter().any(|(c, d)| a <= d && c <= b))
    }
}

impl std::fmt::Display for RangeSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (a, b)) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            if a == b {
                write!(f, "{a}")?;
            } else {
                write!(f, "{a}-{b}")?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueBounds {
    pub min: u16,
    pub max: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoilValues {
    pub on: bool,
    pub off: bool,
}
