//! The audit schema. Each variant is one event kind (`"event": "<snake_case name>"`); field
//! names and meanings are stable and documented in `docs/audit.md`. Add fields, never rename.

use crate::policy::DenyReason;
use serde::Serialize;
use std::net::SocketAddr;

/// Which side a failure came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The client (IT side).
    Downstream,
    /// The device (OT side).
    Upstream,
    /// The gateway itself (a limit, a timeout, a shutdown).
    Local,
}

/// The Modbus request an event is about. Never the values written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModbusSummary {
    pub transaction_id: u16,
    pub unit: u8,
    pub function: u8,
    /// snake_case name of a public function; absent for vendor and reserved codes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function_name: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantity: Option<u16>,
    /// Function 23's write half.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_address: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_quantity: Option<u16>,
}

/// How a session ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CloseReason {
    /// The client closed its connection.
    ClientClosed,
    IdleTimeout,
    /// A frame's remaining bytes did not arrive within the frame timeout.
    FrameTimeout,
    /// The client's byte stream could not be framed.
    FramingError {
        detail: String,
    },
    /// `on_deny = "reset"` closed the session on a denial.
    DeniedReset,
    /// A policy reload took the identity's access to the service away.
    AccessRevoked,
    /// The client certificate expired while the session was open.
    CertificateExpired,
    /// MQTT: the gateway refused the CONNECT (the CONNACK says why; `mqtt_denied` has the
    /// details).
    ConnectRefused,
    /// MQTT: a packet broke the specification or a limit (`mqtt_protocol_violation`).
    ProtocolViolation {
        detail: String,
    },
    /// MQTT 3.1.1 with `denied_publish_v311 = "disconnect"`: a denied PUBLISH closed it.
    DeniedDisconnect,
    /// The upstream (the broker) closed the connection or failed; the session cannot go on.
    UpstreamClosed {
        detail: String,
    },
    ClientError {
        detail: String,
    },
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditEvent {
    /// The gateway started serving with this configuration.
    GatewayStarted {
        version: &'static str,
        config: String,
        listeners: Vec<String>,
        rules: usize,
    },
    GatewayStopping,
    /// A reload (SIGHUP) swapped in a new policy; open sessions apply it on their next frame.
    PolicyReloaded {
        config: String,
        rules: usize,
    },
    /// A reload found errors: the running policy stays.
    PolicyReloadRejected {
        config: String,
        errors: Vec<String>,
    },
    /// TLS handshake, SNI or certificate identity failed: no session.
    TlsRejected {
        peer: SocketAddr,
        listener: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        sni: Option<String>,
        reason: String,
    },
    /// A verified identity was refused the service as a whole (no rule, or a session limit).
    SessionDenied {
        session: u64,
        peer: SocketAddr,
        identity: String,
        roles: Vec<String>,
        service: String,
        reason: String,
    },
    SessionOpened {
        session: u64,
        peer: SocketAddr,
        listener: String,
        identity: String,
        roles: Vec<String>,
        service: String,
        tls_version: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        sni: Option<String>,
        certificate_serial: String,
    },
    SessionClosed {
        session: u64,
        peer: SocketAddr,
        identity: String,
        service: String,
        duration_ms: u64,
        bytes_from_client: u64,
        bytes_to_client: u64,
        requests: u64,
        allowed: u64,
        denied: u64,
        reason: CloseReason,
    },
    /// The policy denied a request; the client got `exception` (or a reset).
    RequestDenied {
        session: u64,
        identity: String,
        service: String,
        request: ModbusSummary,
        /// The rule that came closest, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        reason: DenyReason,
        /// Exception code sent; absent when the connection was reset.
        #[serde(skip_serializing_if = "Option::is_none")]
        exception: Option<u8>,
    },
    /// A well-framed request broke the protocol's limits: answered like a device would, never
    /// forwarded.
    ProtocolViolation {
        session: u64,
        identity: String,
        service: String,
        request: ModbusSummary,
        violation: String,
        exception: u8,
    },
    /// A write the policy allowed, forwarded to the device.
    WriteAllowed {
        session: u64,
        identity: String,
        service: String,
        request: ModbusSummary,
        rule: String,
    },
    /// A diagnostic or vendor-specific request the policy allowed, forwarded to the device
    /// (reads are not audited one by one; writes are `write_allowed`).
    RequestAllowed {
        session: u64,
        identity: String,
        service: String,
        request: ModbusSummary,
        rule: String,
        class: crate::protocol::modbus::FunctionClass,
    },
    /// The gateway answered for the device: 0x0A (no path) or 0x0B (no answer), or 0x06
    /// (too many outstanding requests).
    GatewayException {
        session: u64,
        identity: String,
        service: String,
        request: ModbusSummary,
        exception: u8,
        side: Side,
        reason: String,
    },
    /// A response from the device that matched no pending request: dropped.
    UnmatchedResponse {
        session: u64,
        service: String,
        transaction_id: u16,
        function: u8,
    },
    /// The device's byte stream could not be framed; the upstream connection was closed.
    UpstreamError {
        session: u64,
        service: String,
        upstream: String,
        reason: String,
    },
    /// A source failed the TLS handshake or identity check `failures` times within the
    /// quarantine window: its packets are dropped for `seconds` (absent `error`).
    SourceQuarantined {
        address: std::net::IpAddr,
        failures: u32,
        seconds: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The firewall ruleset was applied (at start or on reload) and read back as planned.
    FirewallApplied {
        rules: usize,
    },
    /// A reload did not re-apply the firewall (the running ruleset stays).
    FirewallNotReapplied {
        reason: String,
    },
    /// An MQTT client's CONNECT was accepted by the gateway and forwarded to the broker.
    MqttConnected {
        session: u64,
        identity: String,
        service: String,
        /// Protocol level: 4 (3.1.1) or 5 (5.0).
        protocol_level: u8,
        /// The client id the broker sees.
        client_id: String,
        /// Whether the gateway replaced the client's id by the identity (`client_id = "rewrite"`).
        client_id_rewritten: bool,
        clean_start: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        will_topic: Option<String>,
    },
    /// The policy refused something in an MQTT session: a CONNECT (client id, will, or a reload
    /// that took the service away before it), a PUBLISH, one SUBSCRIBE filter, or a message the
    /// broker delivered. (An identity no rule admits is `session_denied`, as for Modbus.)
    MqttDenied {
        session: u64,
        identity: String,
        service: String,
        /// `CONNECT`, `will`, `PUBLISH`, `SUBSCRIBE` or `deliver` (broker → client).
        packet: &'static str,
        /// The topic name, the subscription's filter, or for CONNECT the client id.
        topic: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        qos: Option<u8>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        retain: bool,
        /// The rule that came closest, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        reason: DenyReason,
        /// What the peer was told: `CONNACK 0x87`, `PUBACK 0x87`, `SUBACK 0x80`, `PUBACK
        /// (dropped)`, `dropped`, `disconnected`, …
        response: String,
    },
    /// A SUBSCRIBE filter the policy allowed, forwarded to the broker.
    MqttSubscribed {
        session: u64,
        identity: String,
        service: String,
        filter: String,
        qos: u8,
        /// The QoS the gateway asked the broker for (at most the rule's max_qos).
        granted_max: u8,
        rule: String,
    },
    /// A packet broke the MQTT specification or the session's limits; the session is closed.
    MqttProtocolViolation {
        session: u64,
        identity: String,
        service: String,
        /// `downstream`: the client sent it; `upstream`: the broker did.
        side: Side,
        detail: String,
        /// The v5 DISCONNECT reason code sent to the client, if one was sent.
        #[serde(skip_serializing_if = "Option::is_none")]
        disconnect_reason: Option<u8>,
    },
    /// Events lost because the audit queue was full.
    AuditGap {
        dropped: u64,
    },
}
