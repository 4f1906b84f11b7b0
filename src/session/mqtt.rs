//! The MQTT relay of one session (3.1.1 and 5.0).
//!
//! The session reads the client's CONNECT, checks it (admission, client id binding, the will
//! as a publish), opens its own connection to the broker, forwards the CONNECT and waits for the
//! CONNACK — which it passes back with the gateway's limits added in 5.0. After that one task
//! runs one `select!` loop over the client, the broker and the nearest deadline:
//!
//! - every PUBLISH from the client is decided against the policy (its topic, resolved through
//!   the client's topic aliases when it uses one), then forwarded as its original bytes or
//!   refused the way the protocol version expects;
//! - every SUBSCRIBE filter is decided on its own: allowed filters go to the broker (at most at
//!   the rule's QoS), denied ones get their own SUBACK code, merged back into the broker's
//!   SUBACK in the client's order;
//! - every PUBLISH the broker delivers is checked against the client's subscribe rules and
//!   dropped (acknowledged to the broker) when they do not allow its topic.
//!
//! Topic aliases are tracked per direction twice: what the sender believes an alias stands for
//! (the sender may set an alias in a packet the gateway refuses), and what the receiver was told
//! (so an alias-only packet whose alias the receiver holds for another topic is sent with its
//! topic name instead). An alias can therefore never make the gateway decide one topic and the
//! broker publish another.

use super::upstream::{self, Io};
use super::{Closed, LivePolicy, SessionContext, SessionStats};
use crate::audit::{AuditEvent, CloseReason, Side};
use crate::config::{ClientIdBinding, DeniedPublishV311, UsernameBinding};
use crate::policy::{Decision, DenyReason, MqttAction, Policy, Subject};
use crate::protocol::mqtt::{
    self, ConnackProperties, Error as MqttError, Packet, PacketType, Publish, QoS, Subscribe,
    Version,
};
use bytes::{Buf, BytesMut};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, timeout, timeout_at};

/// Read buffer per direction: many small packets per read when a client streams telemetry.
const READ_BUF: usize = 16 * 1024;
/// Bytes of topic names one alias table may hold (per direction and view).
const ALIAS_BYTES: usize = 64 * 1024;
/// Topic aliases one table may hold (the gateway advertises at most `topic_alias_maximum` ≤
/// 1024 to the client; a broker using more than this towards a client ends the session).
const MAX_ALIASES: usize = 1024;
/// SUBSCRIBEs with a denied filter awaiting the broker's SUBACK.
const MAX_PENDING_SUBACKS: usize = 64;
/// QoS 2 exchanges the gateway answers itself (a refused PUBLISH waiting for its PUBREL, per
/// direction): far above any receive maximum a real peer uses.
const MAX_LOCAL_QOS2: usize = 1024;

/// v5 reason codes the gateway sends (MQTT 5.0 §2.4).
mod reason {
    pub const UNSPECIFIED: u8 = 0x80;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const CLIENT_ID_INVALID: u8 = 0x85;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SHUTTING_DOWN: u8 = 0x8B;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
}

/// 3.1.1 CONNACK return codes (MQTT 3.1.1 §3.2.2.3) and the SUBACK failure code.
mod v311 {
    pub const UNACCEPTABLE_VERSION: u8 = 0x01;
    pub const IDENTIFIER_REJECTED: u8 = 0x02;
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    pub const SERVER_UNAVAILABLE: u8 = 0x03;
    pub const NOT_AUTHORIZED: u8 = 0x05;
    pub const SUBACK_FAILURE: u8 = 0x80;
}

/// A CONNACK code in the session's version: (5.0 reason, 3.1.1 return code).
fn connack_code(version: Version, codes: (u8, u8)) -> u8 {
    match version {
        Version::V5 => codes.0,
        Version::V311 => codes.1,
    }
}

/// One direction's topic aliases, as one side sees them. Bounded by the alias maximum the
/// side was given, by [`MAX_ALIASES`] entries and by [`ALIAS_BYTES`] of topic names.
#[derive(Default)]
struct Aliases {
    topics: HashMap<u16, Box<str>>,
    bytes: usize,
}

impl Aliases {
    fn get(&self, alias: u16) -> Option<&str> {
        self.topics.get(&alias).map(|t| &**t)
    }

    fn forget(&mut self, alias: u16) {
        if let Some(t) = self.topics.remove(&alias) {
            self.bytes -= t.len();
        }
    }

    fn set(&mut self, alias: u16, topic: &str) -> Result<(), String> {
        let old = match self.topics.get(&alias) {
            Some(t) if &**t == topic => return Ok(()),
            Some(t) => t.len(),
            None if self.topics.len() >= MAX_ALIASES => {
                return Err(format!("more than {MAX_ALIASES} topic aliases in use"));
            }
            None => 0,
        };
        let bytes = self.bytes - old + topic.len();
        if bytes > ALIAS_BYTES {
            return Err(format!(
                "topic aliases would hold more than {ALIAS_BYTES} bytes of topic names"
            ));
        }
        self.topics.insert(alias, topic.into());
        self.bytes = bytes;
        Ok(())
    }
}

/// How the client is told about a refused PUBLISH, for the audit's `response`.
fn publish_response(version: Version, qos: QoS, v311: DeniedPublishV311) -> &'static str {
    match (version, qos, v311) {
        (_, QoS::AtMostOnce, DeniedPublishV311::Acknowledge)
        | (Version::V5, QoS::AtMostOnce, _) => "dropped",
        (Version::V5, QoS::AtLeastOnce, _) => "PUBACK 0x87",
        (Version::V5, QoS::ExactlyOnce, _) => "PUBREC 0x87",
        (Version::V311, _, DeniedPublishV311::Disconnect) => "disconnected",
        (Version::V311, QoS::AtLeastOnce, _) => "PUBACK (dropped)",
        (Version::V311, QoS::ExactlyOnce, _) => "PUBREC (dropped)",
    }
}

struct Relay<'a> {
    ctx: &'a SessionContext,
    version: Version,
    /// Bytes to write to the client / the broker after this round.
    to_client: Vec<u8>,
    to_broker: Vec<u8>,
    /// Client → broker aliases: what the client set, what the broker was told.
    client_sets: Aliases,
    broker_holds: Aliases,
    /// Broker → client aliases: what the broker set, what the client was told.
    broker_sets: Aliases,
    client_holds: Aliases,
    /// Aliases the client may use (what the gateway advertised: at most the broker's).
    alias_max_upstream: u16,
    /// Aliases the broker may use towards the client (the client's CONNECT).
    alias_max_downstream: u16,
    /// Client QoS 2 packet ids the gateway refused with a PUBREC: their PUBREL is answered here.
    refused_qos2: HashSet<u16>,
    /// Broker QoS 2 packet ids the gateway dropped (and PUBREC'd): their PUBREL is answered here.
    dropped_qos2: HashSet<u16>,
    /// Per SUBSCRIBE with a denied filter: the codes of every filter in the client's order,
    /// `None` where the broker's code goes.
    pending_subacks: HashMap<u16, Vec<Option<u8>>>,
    /// Waiting for the broker's CONNACK; the client is not read meanwhile.
    connack_pending: bool,
    /// The CONNECT's will, re-decided when the session ends: a reload may have revoked it
    /// since the CONNECT, and the broker must then not publish it.
    will: Option<WillCheck>,
    /// The client ended with a DISCONNECT the broker got (it then discards the will, unless
    /// the reason was 0x04, which the gateway handles itself).
    client_disconnected: bool,
}

/// A will, as the policy decides it.
struct WillCheck {
    topic: String,
    qos: u8,
    retain: bool,
    size: usize,
}

impl WillCheck {
    fn action(&self) -> MqttAction<'_> {
        MqttAction::Publish {
            topic: &self.topic,
            qos: self.qos,
            retain: self.retain,
            payload_len: self.size,
        }
    }
}

/// A will as the publish it becomes; its v5 properties count against max_payload like a
/// PUBLISH's.
fn will_action<'a>(will: &mqtt::Will<'a>) -> MqttAction<'a> {
    MqttAction::Publish {
        topic: will.topic,
        qos: will.qos.as_u8(),
        retain: will.retain,
        payload_len: will.payload_len.saturating_add(will.properties_len),
    }
}

/// A client DISCONNECT with reason 0: the broker discards the will (valid in both versions).
const DISCONNECT_DISCARD_WILL: [u8; 2] = [0xE0, 0x00];
/// MQTT 5.0 DISCONNECT reason 0x04: "disconnect with will message".
const DISCONNECT_WITH_WILL: u8 = 0x04;

pub(super) async fn relay<S>(stream: S, ctx: &SessionContext, stats: &mut SessionStats) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut client = stream;
    let closed = run(&mut client, ctx, stats).await;
    let _ = timeout(ctx.frame_timeout, client.shutdown()).await;
    closed
}

/// Reads until `buf` holds one whole packet (or the deadline passes); its length.
async fn read_packet<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max_packet: usize,
    deadline: Instant,
) -> Result<usize, ReadFailure> {
    loop {
        match mqtt::packet_len(buf, max_packet) {
            Ok(Some(n)) if buf.len() >= n => return Ok(n),
            Ok(_) => {}
            Err(e) => return Err(ReadFailure::Packet(e)),
        }
        buf.reserve(READ_BUF);
        match timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Err(ReadFailure::Timeout),
            Ok(Ok(0)) => return Err(ReadFailure::Closed),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ReadFailure::Closed);
            }
            Ok(Err(e)) => return Err(ReadFailure::Io(e.to_string())),
        }
    }
}

enum ReadFailure {
    Packet(MqttError),
    Timeout,
    Closed,
    Io(String),
}

/// Reads a CONNECT and answers it with a refusal: for identities no rule admits.
pub(super) async fn refuse<S>(mut stream: S, frame_timeout: std::time::Duration, max_packet: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = Instant::now() + frame_timeout;
    if let Ok(n) = read_packet(&mut stream, &mut buf, max_packet, deadline).await {
        let answer = match buf.get(..n).map(mqtt::decode_connect) {
            Some(Ok(connect)) => Some(mqtt::connack(
                connect.version,
                false,
                connack_code(
                    connect.version,
                    (reason::NOT_AUTHORIZED, v311::NOT_AUTHORIZED),
                ),
            )),
            Some(Err(MqttError::UnsupportedVersion(_))) => Some(mqtt::connack(
                Version::V311,
                false,
                v311::UNACCEPTABLE_VERSION,
            )),
            _ => None,
        };
        if let Some(answer) = answer {
            let _ = timeout(frame_timeout, stream.write_all(&answer)).await;
        }
    }
    let _ = timeout(frame_timeout, stream.shutdown()).await;
}

async fn run<S>(client: &mut S, ctx: &SessionContext, stats: &mut SessionStats) -> Closed
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let max_packet = ctx.service.mqtt.max_packet_size;
    let mut live = LivePolicy::new(ctx);
    let mut cbuf = BytesMut::with_capacity(READ_BUF);

    // The CONNECT: the first packet, whole, within frame_timeout.
    let connect_deadline = Instant::now() + ctx.frame_timeout;
    let n = match read_packet(client, &mut cbuf, max_packet, connect_deadline).await {
        Ok(n) => n,
        Err(ReadFailure::Packet(e)) => return violation_before_connect(ctx, e.to_string()),
        Err(ReadFailure::Timeout) => return CloseReason::FrameTimeout,
        Err(ReadFailure::Closed) => return CloseReason::ClientClosed,
        Err(ReadFailure::Io(detail)) => return CloseReason::ClientError { detail },
    };
    stats.bytes_from_client += n as u64;
    stats.requests += 1;
    let packet = cbuf.split_to(n);
    let first = packet.first().copied().unwrap_or(0);
    if PacketType::from_byte(first) != Some(PacketType::Connect) {
        let name = PacketType::from_byte(first).map_or("an invalid packet", PacketType::name);
        return violation_before_connect(ctx, format!("{name} before CONNECT"));
    }
    let connect = match mqtt::decode_connect(&packet) {
        Ok(c) => c,
        Err(MqttError::UnsupportedVersion(level)) => {
            let answer = mqtt::connack(Version::V311, false, v311::UNACCEPTABLE_VERSION);
            let _ = timeout(ctx.frame_timeout, client.write_all(&answer)).await;
            return violation_before_connect(
                ctx,
                format!("unsupported protocol level {level} (ztgate speaks MQTT 3.1.1 and 5.0)"),
            );
        }
        Err(e) => return violation_before_connect(ctx, e.to_string()),
    };
    let version = connect.version;
    let identity = ctx.identity.id.as_str();

    // Admission (a reload may have taken the service away since the handshake), the user
    // name and client id bindings, the will: each refused with the CONNACK the version expects.
    let checked = match live.refresh() {
        None => Err(Refusal::connect(
            connect.client_id,
            DenyReason::NoRuleForService,
            (reason::NOT_AUTHORIZED, v311::NOT_AUTHORIZED),
        )),
        Some((policy, subject)) => check_connect(&connect, ctx, policy, subject)
            .map(|rewritten| (rewritten, policy.mqtt_limits(ctx.service_id, subject))),
    };
    let (rewritten, (max_qos, retain_allowed)) = match checked {
        Ok(checked) => checked,
        Err(refusal) => return refuse_connect(client, ctx, stats, version, refusal).await,
    };
    let client_alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);

    // The broker: one connection per session, within the service's connection budget.
    let Ok(_permit) = ctx.upstream_slots.clone().try_acquire_owned() else {
        return upstream_refusal(
            client,
            ctx,
            version,
            (reason::SERVER_BUSY, v311::SERVER_UNAVAILABLE),
            format!(
                "max_upstream_connections ({}) reached",
                ctx.service.max_upstream_connections
            ),
        )
        .await;
    };
    let mut broker = match upstream::connect(
        &ctx.service,
        ctx.upstream_tls.as_deref(),
        ctx.service.connect_timeout,
    )
    .await
    {
        Ok(b) => b,
        Err(detail) => {
            return upstream_refusal(
                client,
                ctx,
                version,
                (reason::SERVER_UNAVAILABLE, v311::SERVER_UNAVAILABLE),
                detail,
            )
            .await;
        }
    };
    let bytes: &[u8] = rewritten.as_deref().unwrap_or(&packet);
    if let Err(detail) = write_broker(&mut broker, bytes, ctx).await {
        return upstream_refusal(
            client,
            ctx,
            version,
            (reason::SERVER_UNAVAILABLE, v311::SERVER_UNAVAILABLE),
            detail,
        )
        .await;
    }
    stats.allowed += 1;
    ctx.audit.emit(AuditEvent::MqttConnected {
        session: ctx.id,
        identity: identity.to_string(),
        service: ctx.service.name.clone(),
        protocol_level: version.level(),
        client_id: if rewritten.is_some() {
            identity.to_string()
        } else {
            connect.client_id.to_string()
        },
        client_id_rewritten: rewritten.is_some(),
        clean_start: connect.clean_start,
        will_topic: connect.will.as_ref().map(|w| w.topic.to_string()),
    });

    let mut relay = Relay {
        ctx,
        version,
        to_client: Vec::new(),
        to_broker: Vec::new(),
        client_sets: Aliases::default(),
        broker_holds: Aliases::default(),
        broker_sets: Aliases::default(),
        client_holds: Aliases::default(),
        alias_max_upstream: 0,
        alias_max_downstream: client_alias_max,
        refused_qos2: HashSet::new(),
        dropped_qos2: HashSet::new(),
        pending_subacks: HashMap::new(),
        connack_pending: true,
        will: connect.will.as_ref().map(|w| WillCheck {
            topic: w.topic.to_string(),
            qos: w.qos.as_u8(),
            retain: w.retain,
            size: w.payload_len.saturating_add(w.properties_len),
        }),
        client_disconnected: false,
    };
    let limits = ConnackLimits {
        max_packet,
        max_qos,
        retain_allowed,
    };
    let closed = relay
        .run(client, &mut broker, cbuf, &mut live, stats, limits)
        .await;
    // The broker learns the client is gone the way it would without the gateway: the TCP
    // close, so it publishes the will — unless the client sent DISCONNECT (forwarded already),
    // or the will is no longer allowed, in which case the gateway disconnects cleanly for it.
    if !relay.client_disconnected && !relay.will_allowed(&mut live) {
        let _ = write_broker(&mut broker, &DISCONNECT_DISCARD_WILL, ctx).await;
    }
    let _ = timeout(ctx.frame_timeout, broker.shutdown()).await;
    closed
}

/// The CONNECT against the service's bindings and the policy: the CONNECT to forward when the
/// client id is rewritten, or why it is refused.
fn check_connect(
    connect: &mqtt::Connect<'_>,
    ctx: &SessionContext,
    policy: &Policy,
    subject: &Subject,
) -> Result<Option<Vec<u8>>, Refusal> {
    let settings = &ctx.service.mqtt;
    let identity = ctx.identity.id.as_str();
    if settings.username == UsernameBinding::Require
        && let Some(username) = connect.username.filter(|u| *u != identity)
    {
        return Err(Refusal::connect(
            username,
            DenyReason::Username,
            (
                reason::BAD_USERNAME_OR_PASSWORD,
                v311::BAD_USERNAME_OR_PASSWORD,
            ),
        ));
    }
    let client_id_refused = || {
        Refusal::connect(
            connect.client_id,
            DenyReason::ClientId,
            (reason::CLIENT_ID_INVALID, v311::IDENTIFIER_REJECTED),
        )
    };
    let rewritten = match settings.client_id {
        _ if connect.client_id == identity => None,
        ClientIdBinding::Require => return Err(client_id_refused()),
        ClientIdBinding::Rewrite => match connect.with_client_id(identity) {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::info!(session = ctx.id, error = %e, "client id could not be rewritten");
                return Err(client_id_refused());
            }
        },
    };
    if let Some(will) = &connect.will
        && let Decision::Deny { rule, reason } =
            policy.decide_mqtt(ctx.service_id, subject, identity, will_action(will))
    {
        return Err(Refusal {
            packet: "will",
            topic: will.topic.to_string(),
            qos: Some(will.qos.as_u8()),
            retain: will.retain,
            rule: rule.map(|r| policy.rule_id(r).to_string()),
            reason,
            codes: (reason::NOT_AUTHORIZED, v311::NOT_AUTHORIZED),
        });
    }
    Ok(rewritten)
}

/// What the gateway advertises in a v5 CONNACK.
#[derive(Clone, Copy)]
struct ConnackLimits {
    max_packet: usize,
    max_qos: u8,
    retain_allowed: bool,
}

/// A refused CONNECT, for the audit event and the CONNACK.
struct Refusal {
    packet: &'static str,
    topic: String,
    qos: Option<u8>,
    retain: bool,
    rule: Option<String>,
    reason: DenyReason,
    codes: (u8, u8),
}

impl Refusal {
    /// A refusal of the CONNECT itself; `topic` is the client id or user name at fault.
    fn connect(topic: &str, reason: DenyReason, codes: (u8, u8)) -> Refusal {
        Refusal {
            packet: "CONNECT",
            topic: topic.to_string(),
            qos: None,
            retain: false,
            rule: None,
            reason,
            codes,
        }
    }
}

async fn refuse_connect<S>(
    client: &mut S,
    ctx: &SessionContext,
    stats: &mut SessionStats,
    version: Version,
    refusal: Refusal,
) -> Closed
where
    S: AsyncWrite + Unpin,
{
    stats.denied += 1;
    let code = connack_code(version, refusal.codes);
    ctx.audit.emit(AuditEvent::MqttDenied {
        session: ctx.id,
        identity: ctx.identity.id.clone(),
        service: ctx.service.name.clone(),
        packet: refusal.packet,
        topic: refusal.topic,
        qos: refusal.qos,
        retain: refusal.retain,
        rule: refusal.rule,
        reason: refusal.reason,
        response: format!("CONNACK {code:#04x}"),
    });
    let answer = mqtt::connack(version, false, code);
    if let Ok(Ok(())) = timeout(ctx.frame_timeout, client.write_all(&answer)).await {
        stats.bytes_to_client += answer.len() as u64;
    }
    CloseReason::ConnectRefused
}

/// The broker cannot be reached: the client gets a CONNACK that says so.
async fn upstream_refusal<S>(
    client: &mut S,
    ctx: &SessionContext,
    version: Version,
    codes: (u8, u8),
    detail: String,
) -> Closed
where
    S: AsyncWrite + Unpin,
{
    ctx.audit.emit(AuditEvent::UpstreamError {
        session: ctx.id,
        service: ctx.service.name.clone(),
        upstream: ctx.service.upstream.clone(),
        reason: detail.clone(),
    });
    let answer = mqtt::connack(version, false, connack_code(version, codes));
    let _ = timeout(ctx.frame_timeout, client.write_all(&answer)).await;
    CloseReason::UpstreamClosed { detail }
}

fn violation_before_connect(ctx: &SessionContext, detail: String) -> Closed {
    ctx.audit.emit(AuditEvent::MqttProtocolViolation {
        session: ctx.id,
        identity: ctx.identity.id.clone(),
        service: ctx.service.name.clone(),
        side: Side::Downstream,
        detail: detail.clone(),
        disconnect_reason: None,
    });
    CloseReason::ProtocolViolation { detail }
}

async fn write_broker(
    broker: &mut Box<dyn Io>,
    bytes: &[u8],
    ctx: &SessionContext,
) -> Result<(), String> {
    let write = async {
        broker.write_all(bytes).await?;
        broker.flush().await
    };
    match timeout(ctx.frame_timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write to broker failed: {e}")),
        Err(_) => Err("broker stopped reading".to_string()),
    }
}

/// Reads more bytes from a peer into its buffer.
async fn fill<R: AsyncRead + Unpin + ?Sized>(
    stream: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    buf.reserve(
        READ_BUF
            .saturating_sub(buf.capacity() - buf.len())
            .max(1024),
    );
    stream.read_buf(buf).await
}

impl Relay<'_> {
    #[allow(clippy::too_many_arguments)]
    async fn run<S>(
        &mut self,
        client: &mut S,
        broker: &mut Box<dyn Io>,
        mut cbuf: BytesMut,
        live: &mut LivePolicy,
        stats: &mut SessionStats,
        limits: ConnackLimits,
    ) -> Closed
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let ctx = self.ctx;
        let mut bbuf = BytesMut::with_capacity(READ_BUF);
        let mut shutdown = ctx.shutdown.clone();
        let mut last_activity = Instant::now();
        let connack_deadline = last_activity + ctx.service.connect_timeout;
        let mut partial_since: Option<Instant> = None;
        let certificate_expires = {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let left = u64::try_from(ctx.identity.not_after.saturating_sub(now)).unwrap_or(0);
            last_activity + std::time::Duration::from_secs(left)
        };
        let timer = tokio::time::sleep_until(last_activity + ctx.idle_timeout);
        tokio::pin!(timer);

        loop {
            let deadline = [
                self.connack_pending.then_some(connack_deadline),
                partial_since.map(|t| t + ctx.frame_timeout),
                Some(last_activity + ctx.idle_timeout),
                Some(certificate_expires),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(last_activity + ctx.idle_timeout);
            if deadline < timer.deadline() {
                timer.as_mut().reset(deadline);
            }
            let reading_client = !self.connack_pending;

            let step: Result<(), Closed> = tokio::select! {
                read = fill(client, &mut cbuf), if reading_client => {
                    match read {
                        Ok(0) => Err(CloseReason::ClientClosed),
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            Err(CloseReason::ClientClosed)
                        }
                        Err(e) => Err(CloseReason::ClientError { detail: e.to_string() }),
                        Ok(n) => {
                            stats.bytes_from_client += n as u64;
                            last_activity = Instant::now();
                            let result = self.client_packets(&mut cbuf, live, stats);
                            partial_since = if cbuf.is_empty() {
                                None
                            } else {
                                partial_since.or(Some(last_activity))
                            };
                            result
                        }
                    }
                }
                read = fill(broker.as_mut(), &mut bbuf) => {
                    match read {
                        Ok(0) => Err(self.broker_gone("broker closed the connection".to_string())),
                        Err(e) => Err(self.broker_gone(format!("read from broker failed: {e}"))),
                        Ok(_) => self.broker_packets(&mut bbuf, live, stats, limits),
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    timer.as_mut().reset(now + ctx.idle_timeout);
                    if certificate_expires <= now {
                        Err(CloseReason::CertificateExpired)
                    } else if self.connack_pending && connack_deadline <= now {
                        self.to_client.extend(mqtt::connack(
                            self.version,
                            false,
                            connack_code(
                                self.version,
                                (reason::SERVER_UNAVAILABLE, v311::SERVER_UNAVAILABLE),
                            ),
                        ));
                        Err(self.broker_gone("broker sent no CONNACK within connect_timeout".to_string()))
                    } else if partial_since.is_some_and(|t| t + ctx.frame_timeout <= now) {
                        Err(CloseReason::FrameTimeout)
                    } else if last_activity + ctx.idle_timeout <= now {
                        Err(CloseReason::IdleTimeout)
                    } else {
                        Ok(())
                    }
                }
                _ = shutdown.changed() => {
                    self.disconnect_client(reason::SHUTTING_DOWN);
                    Err(CloseReason::Shutdown)
                }
            };

            // Packets the client sent right behind its CONNECT waited for the CONNACK.
            let step = match step {
                Ok(()) if !reading_client && !self.connack_pending && !cbuf.is_empty() => {
                    let result = self.client_packets(&mut cbuf, live, stats);
                    partial_since = (!cbuf.is_empty()).then(Instant::now);
                    result
                }
                other => other,
            };

            // What was decided before a close still goes out: the broker gets what the client
            // sent before its DISCONNECT, the client its acknowledgements and the reason.
            let flushed = self.flush(client, broker, stats).await;
            match (step, flushed) {
                (Err(closed), _) => return closed,
                (Ok(()), Err(closed)) => return closed,
                (Ok(()), Ok(())) => {}
            }
        }
    }

    fn identity(&self) -> &str {
        &self.ctx.identity.id
    }

    /// Whether the will (if any) may still be published, by the policy as it is now; a denial
    /// is audited (`mqtt_denied`, packet `will`).
    fn will_allowed(&self, live: &mut LivePolicy) -> bool {
        let Some(will) = &self.will else {
            return true;
        };
        let (decision, policy) = match live.refresh() {
            Some((policy, subject)) => (
                policy.decide_mqtt(self.ctx.service_id, subject, self.identity(), will.action()),
                Some(policy),
            ),
            None => (
                Decision::Deny {
                    rule: None,
                    reason: DenyReason::NoRuleForService,
                },
                None,
            ),
        };
        let Decision::Deny { rule, reason } = decision else {
            return true;
        };
        self.ctx.audit.emit(AuditEvent::MqttDenied {
            session: self.ctx.id,
            identity: self.ctx.identity.id.clone(),
            service: self.ctx.service.name.clone(),
            packet: "will",
            topic: will.topic.clone(),
            qos: Some(will.qos),
            retain: will.retain,
            rule: policy.zip(rule).map(|(p, r)| p.rule_id(r).to_string()),
            reason,
            response: "discarded (DISCONNECT 0x00 to the broker)".to_string(),
        });
        false
    }

    fn disconnect_client(&mut self, code: u8) {
        if let Some(bytes) = mqtt::disconnect(self.version, code) {
            self.to_client.extend_from_slice(&bytes);
        }
    }

    fn broker_gone(&mut self, detail: String) -> Closed {
        self.ctx.audit.emit(AuditEvent::UpstreamError {
            session: self.ctx.id,
            service: self.ctx.service.name.clone(),
            upstream: self.ctx.service.upstream.clone(),
            reason: detail.clone(),
        });
        if !self.connack_pending {
            self.disconnect_client(reason::UNSPECIFIED);
        }
        CloseReason::UpstreamClosed { detail }
    }

    /// A packet that breaks the protocol or a session limit: audited, the client told (5.0)
    /// when it sent it, the session closed.
    fn violation(&mut self, side: Side, detail: String, code: u8) -> Closed {
        tracing::info!(session = self.ctx.id, ?side, %detail, "closing MQTT session on a protocol violation");
        let told = side == Side::Downstream && self.version == Version::V5;
        if told {
            self.disconnect_client(code);
        } else if side == Side::Upstream {
            self.disconnect_client(reason::UNSPECIFIED);
        }
        self.ctx.audit.emit(AuditEvent::MqttProtocolViolation {
            session: self.ctx.id,
            identity: self.ctx.identity.id.clone(),
            service: self.ctx.service.name.clone(),
            side,
            detail: detail.clone(),
            disconnect_reason: (self.version == Version::V5).then_some(if told {
                code
            } else {
                reason::UNSPECIFIED
            }),
        });
        CloseReason::ProtocolViolation { detail }
    }

    #[allow(clippy::too_many_arguments)]
    fn deny_event(
        &self,
        policy: &Policy,
        packet: &'static str,
        topic: &str,
        qos: Option<u8>,
        retain: bool,
        rule: Option<crate::policy::RuleRef>,
        reason: DenyReason,
        response: String,
    ) {
        self.ctx.audit.emit(AuditEvent::MqttDenied {
            session: self.ctx.id,
            identity: self.ctx.identity.id.clone(),
            service: self.ctx.service.name.clone(),
            packet,
            topic: topic.to_string(),
            qos,
            retain,
            rule: rule.map(|r| policy.rule_id(r).to_string()),
            reason,
            response,
        });
    }

    /// Decides every whole packet the client sent.
    fn client_packets(
        &mut self,
        buf: &mut BytesMut,
        live: &mut LivePolicy,
        stats: &mut SessionStats,
    ) -> Result<(), Closed> {
        let max_packet = self.ctx.service.mqtt.max_packet_size;
        loop {
            let n = match mqtt::packet_len(buf, max_packet) {
                Ok(Some(n)) if buf.len() >= n => n,
                Ok(_) => return Ok(()),
                Err(e) => {
                    return Err(self.violation(Side::Downstream, e.to_string(), e.reason_code()));
                }
            };
            stats.requests += 1;
            let Some(packet) = buf.get(..n) else {
                return Ok(());
            };
            let Some((policy, subject)) = live.refresh() else {
                self.disconnect_client(reason::NOT_AUTHORIZED);
                return Err(CloseReason::AccessRevoked);
            };
            match mqtt::decode(packet, self.version, true) {
                Err(e) => {
                    return Err(self.violation(Side::Downstream, e.to_string(), e.reason_code()));
                }
                Ok(Packet::Publish(p)) => self.publish(&p, policy, subject, stats)?,
                Ok(Packet::Subscribe(s)) => self.subscribe(&s, packet, policy, subject, stats)?,
                Ok(Packet::Pubrel(ack)) if self.refused_qos2.remove(&ack.packet_id) => {
                    self.to_client.extend(mqtt::ack(
                        PacketType::Pubcomp,
                        self.version,
                        ack.packet_id,
                        0,
                    ));
                }
                Ok(Packet::Disconnect { reason: code }) => {
                    if code == DISCONNECT_WITH_WILL && !self.will_allowed(live) {
                        self.to_broker.extend_from_slice(&DISCONNECT_DISCARD_WILL);
                    } else {
                        self.to_broker.extend_from_slice(packet);
                    }
                    self.client_disconnected = true;
                    return Err(CloseReason::ClientClosed);
                }
                Ok(_) => self.to_broker.extend_from_slice(packet),
            }
            buf.advance(n);
        }
    }

    /// Checks a PUBLISH's topic alias against `max` and records it in `sets` when the packet
    /// sets one; an alias-only PUBLISH must use an alias that was set.
    fn record_alias(p: &Publish<'_>, sets: &mut Aliases, max: u16) -> Result<(), (String, u8)> {
        let Some(alias) = p.topic_alias else {
            return Ok(());
        };
        if alias == 0 || alias > max {
            return Err((
                format!("topic alias {alias} outside 1..={max}"),
                reason::TOPIC_ALIAS_INVALID,
            ));
        }
        if !p.topic.is_empty() {
            return sets
                .set(alias, p.topic)
                .map_err(|e| (e, reason::TOPIC_ALIAS_INVALID));
        }
        if sets.get(alias).is_none() {
            return Err((
                format!("topic alias {alias} used before it was set"),
                reason::PROTOCOL_ERROR,
            ));
        }
        Ok(())
    }

    /// The topic a PUBLISH stands for (after [`Relay::record_alias`]): its topic name, or what
    /// its alias stands for — borrowed, no copy per packet.
    fn topic_of<'a>(p: &Publish<'a>, sets: &'a Aliases) -> &'a str {
        match p.topic_alias {
            Some(alias) if p.topic.is_empty() => sets.get(alias).unwrap_or(""),
            _ => p.topic,
        }
    }

    /// The bytes that deliver `p` (resolved to `topic`) to a receiver whose aliases are
    /// `holds`: the original, or — when the receiver holds the alias for another topic because
    /// the gateway did not pass on the packet that set it — the packet with its topic name.
    fn forward_publish(p: &Publish<'_>, topic: &str, holds: &mut Aliases, out: &mut Vec<u8>) {
        let Some(alias) = p.topic_alias else {
            out.extend_from_slice(p.packet());
            return;
        };
        let resend = p.topic.is_empty() && holds.get(alias) != Some(topic);
        let bytes = if resend {
            match p.with_topic(topic) {
                Ok(bytes) => Cow::Owned(bytes),
                // Cannot happen for a topic that fit a packet before; never forward the alias
                // alone then, it would stand for another topic at the receiver.
                Err(_) => {
                    holds.forget(alias);
                    return;
                }
            }
        } else {
            Cow::Borrowed(p.packet())
        };
        // What the receiver now holds for the alias. When the table cannot record it, the
        // alias is forgotten instead, so its next alias-only use goes out with its topic name
        // and never stands for a stale topic.
        if holds.set(alias, topic).is_err() {
            holds.forget(alias);
        }
        out.extend_from_slice(&bytes);
    }

    fn publish(
        &mut self,
        p: &Publish<'_>,
        policy: &Policy,
        subject: &Subject,
        stats: &mut SessionStats,
    ) -> Result<(), Closed> {
        if let Err((detail, code)) =
            Self::record_alias(p, &mut self.client_sets, self.alias_max_upstream)
        {
            return Err(self.violation(Side::Downstream, detail, code));
        }
        let topic = Self::topic_of(p, &self.client_sets);
        let action = MqttAction::Publish {
            topic,
            qos: p.qos.as_u8(),
            retain: p.retain,
            // v5 properties (user properties, correlation data, …) travel with the payload to
            // every subscriber: they count against max_payload.
            payload_len: p.payload.len().saturating_add(p.properties_len),
        };
        match policy.decide_mqtt(self.ctx.service_id, subject, self.identity(), action) {
            Decision::Allow { .. } => {
                stats.allowed += 1;
                if let Some(id) = p.packet_id {
                    // A packet id the gateway once refused is the broker's again.
                    self.refused_qos2.remove(&id);
                }
                Self::forward_publish(p, topic, &mut self.broker_holds, &mut self.to_broker);
                Ok(())
            }
            Decision::Deny { rule, reason } => {
                stats.denied += 1;
                let v311 = self.ctx.service.mqtt.denied_publish_v311;
                let response = publish_response(self.version, p.qos, v311);
                self.deny_event(
                    policy,
                    "PUBLISH",
                    topic,
                    Some(p.qos.as_u8()),
                    p.retain,
                    rule,
                    reason,
                    response.to_string(),
                );
                if self.version == Version::V311 && v311 == DeniedPublishV311::Disconnect {
                    return Err(CloseReason::DeniedDisconnect);
                }
                let code = match self.version {
                    Version::V5 => reason::NOT_AUTHORIZED,
                    Version::V311 => 0,
                };
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.to_client.extend(mqtt::ack(
                            PacketType::Puback,
                            self.version,
                            id,
                            code,
                        ));
                    }
                    // 5.0: a PUBREC ≥ 0x80 ends the exchange; a PUBREL the client still
                    // sends goes to the broker, which answers PUBCOMP 0x92.
                    (QoS::ExactlyOnce, Some(id)) if self.version == Version::V5 => {
                        self.to_client.extend(mqtt::ack(
                            PacketType::Pubrec,
                            self.version,
                            id,
                            code,
                        ));
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        if self.refused_qos2.len() >= MAX_LOCAL_QOS2 {
                            return Err(self.violation(
                                Side::Downstream,
                                format!(
                                    "more than {MAX_LOCAL_QOS2} refused QoS 2 PUBLISHes without their PUBREL"
                                ),
                                reason::PROTOCOL_ERROR,
                            ));
                        }
                        self.refused_qos2.insert(id);
                        self.to_client.extend(mqtt::ack(
                            PacketType::Pubrec,
                            self.version,
                            id,
                            code,
                        ));
                    }
                    _ => {}
                }
                Ok(())
            }
        }
    }

    fn subscribe(
        &mut self,
        s: &Subscribe<'_>,
        packet: &[u8],
        policy: &Policy,
        subject: &Subject,
        stats: &mut SessionStats,
    ) -> Result<(), Closed> {
        let denied_code = match self.version {
            Version::V5 => reason::NOT_AUTHORIZED,
            Version::V311 => v311::SUBACK_FAILURE,
        };
        let mut keep: Vec<Option<QoS>> = Vec::with_capacity(s.filters.len());
        let mut codes: Vec<Option<u8>> = Vec::with_capacity(s.filters.len());
        let mut lowered = false;
        for sub in &s.filters {
            let inner = mqtt::split_shared(sub.filter).map_or(sub.filter, |(_, f)| f);
            let action = MqttAction::Subscribe { filter: inner };
            match policy.decide_mqtt(self.ctx.service_id, subject, self.identity(), action) {
                Decision::Allow { rule } => {
                    stats.allowed += 1;
                    let max = QoS::from_u8(policy.mqtt_max_qos(rule)).unwrap_or(QoS::AtMostOnce);
                    let granted = sub.qos.min(max);
                    lowered |= granted < sub.qos;
                    keep.push(Some(granted));
                    codes.push(None);
                    self.ctx.audit.emit(AuditEvent::MqttSubscribed {
                        session: self.ctx.id,
                        identity: self.ctx.identity.id.clone(),
                        service: self.ctx.service.name.clone(),
                        filter: sub.filter.to_string(),
                        qos: sub.qos.as_u8(),
                        granted_max: granted.as_u8(),
                        rule: policy.rule_id(rule).to_string(),
                    });
                }
                Decision::Deny { rule, reason } => {
                    stats.denied += 1;
                    keep.push(None);
                    codes.push(Some(denied_code));
                    self.deny_event(
                        policy,
                        "SUBSCRIBE",
                        sub.filter,
                        Some(sub.qos.as_u8()),
                        false,
                        rule,
                        reason,
                        format!("SUBACK {denied_code:#04x}"),
                    );
                }
            }
        }
        let denied = codes.iter().any(Option::is_some);
        if !denied && !lowered {
            self.to_broker.extend_from_slice(packet);
            return Ok(());
        }
        match s.rebuild(&keep) {
            None => {
                // Every filter denied: the gateway answers alone.
                let all: Vec<u8> = codes.iter().map(|c| c.unwrap_or(denied_code)).collect();
                self.to_client
                    .extend(mqtt::suback(self.version, s.packet_id, &all));
            }
            Some(bytes) => {
                if denied {
                    // The client must not reuse a packet id still in use (MQTT-2.2.1-3): the
                    // broker's SUBACKs could no longer be merged with the right codes.
                    let problem = if self.pending_subacks.contains_key(&s.packet_id) {
                        Some(format!(
                            "SUBSCRIBE packet id {} reused before its SUBACK",
                            s.packet_id
                        ))
                    } else if self.pending_subacks.len() >= MAX_PENDING_SUBACKS {
                        Some(format!(
                            "more than {MAX_PENDING_SUBACKS} SUBSCRIBEs awaiting their SUBACK"
                        ))
                    } else {
                        None
                    };
                    if let Some(detail) = problem {
                        return Err(self.violation(
                            Side::Downstream,
                            detail,
                            reason::PROTOCOL_ERROR,
                        ));
                    }
                    self.pending_subacks.insert(s.packet_id, codes);
                }
                self.to_broker.extend_from_slice(&bytes);
            }
        }
        Ok(())
    }

    /// Handles every whole packet the broker sent.
    fn broker_packets(
        &mut self,
        buf: &mut BytesMut,
        live: &mut LivePolicy,
        stats: &mut SessionStats,
        limits: ConnackLimits,
    ) -> Result<(), Closed> {
        // The broker may send what the client accepts; the gateway's own bound still applies.
        let max_packet = self.ctx.service.mqtt.max_packet_size;
        loop {
            let n = match mqtt::packet_len(buf, max_packet) {
                Ok(Some(n)) if buf.len() >= n => n,
                Ok(_) => return Ok(()),
                Err(e) => return Err(self.violation(Side::Upstream, e.to_string(), 0)),
            };
            let Some(packet) = buf.get(..n) else {
                return Ok(());
            };
            let Some((policy, subject)) = live.refresh() else {
                self.disconnect_client(reason::NOT_AUTHORIZED);
                return Err(CloseReason::AccessRevoked);
            };
            match mqtt::decode(packet, self.version, false) {
                Err(e) => return Err(self.violation(Side::Upstream, e.to_string(), 0)),
                Ok(Packet::Connack(c)) if self.connack_pending => {
                    self.connack_pending = false;
                    self.connack(packet, &c, limits)?;
                }
                Ok(Packet::Connack(_)) => {
                    return Err(self.violation(Side::Upstream, "second CONNACK".to_string(), 0));
                }
                _ if self.connack_pending => {
                    return Err(self.violation(
                        Side::Upstream,
                        "packet before CONNACK".to_string(),
                        0,
                    ));
                }
                Ok(Packet::Publish(p)) => self.deliver(&p, policy, subject, stats)?,
                Ok(Packet::Pubrel(ack)) if self.dropped_qos2.remove(&ack.packet_id) => {
                    self.to_broker.extend(mqtt::ack(
                        PacketType::Pubcomp,
                        self.version,
                        ack.packet_id,
                        0,
                    ));
                }
                Ok(Packet::Suback(s)) => match self.pending_subacks.remove(&s.packet_id) {
                    None => self.to_client.extend_from_slice(packet),
                    Some(codes) => {
                        let mut from_broker = s.reason_codes.iter().copied();
                        let mut merged = Vec::with_capacity(codes.len());
                        for code in codes {
                            match code.or_else(|| from_broker.next()) {
                                Some(c) => merged.push(c),
                                None => {
                                    return Err(self.violation(
                                        Side::Upstream,
                                        "SUBACK with fewer codes than filters".to_string(),
                                        0,
                                    ));
                                }
                            }
                        }
                        self.to_client
                            .extend(mqtt::suback(self.version, s.packet_id, &merged));
                    }
                },
                Ok(Packet::Disconnect { reason: code }) => {
                    self.to_client.extend_from_slice(packet);
                    return Err(CloseReason::UpstreamClosed {
                        detail: format!("broker sent DISCONNECT {code:#04x}"),
                    });
                }
                Ok(_) => self.to_client.extend_from_slice(packet),
            }
            buf.advance(n);
        }
    }

    /// The broker's CONNACK: its alias maximum bounds the client's, and in 5.0 the gateway's
    /// limits are added before it goes to the client.
    fn connack(
        &mut self,
        packet: &[u8],
        c: &mqtt::Connack,
        limits: ConnackLimits,
    ) -> Result<(), Closed> {
        let ours = self.ctx.service.mqtt.topic_alias_maximum;
        let alias_max = c.properties.topic_alias_maximum.unwrap_or(0).min(ours);
        self.alias_max_upstream = alias_max;
        if c.reason >= 0x80 {
            // The broker refused the client (its own authentication or ACL): the client hears
            // it from the broker, and the session ends with it.
            self.to_client.extend_from_slice(packet);
            return Err(CloseReason::UpstreamClosed {
                detail: format!("broker refused the CONNECT with {:#04x}", c.reason),
            });
        }
        if self.version == Version::V311 {
            self.to_client.extend_from_slice(packet);
            return Ok(());
        }
        let advertised = ConnackProperties {
            topic_alias_maximum: Some(alias_max),
            maximum_packet_size: Some(u32::try_from(limits.max_packet).unwrap_or(u32::MAX)),
            // Absent means 2; 5.0 lets a server advertise only 0 or 1.
            maximum_qos: QoS::from_u8(limits.max_qos).filter(|q| *q < QoS::ExactlyOnce),
            retain_available: (!limits.retain_allowed).then_some(false),
            receive_maximum: None,
        };
        match mqtt::connack_with_limits(packet, self.version, &advertised) {
            Ok(bytes) => {
                self.to_client.extend_from_slice(&bytes);
                Ok(())
            }
            Err(e) => Err(self.violation(Side::Upstream, format!("CONNACK: {e}"), 0)),
        }
    }

    /// A PUBLISH the broker delivers: passed on only on topics the client may subscribe to.
    fn deliver(
        &mut self,
        p: &Publish<'_>,
        policy: &Policy,
        subject: &Subject,
        stats: &mut SessionStats,
    ) -> Result<(), Closed> {
        if let Err((detail, _)) =
            Self::record_alias(p, &mut self.broker_sets, self.alias_max_downstream)
        {
            return Err(self.violation(Side::Upstream, detail, 0));
        }
        let topic = Self::topic_of(p, &self.broker_sets);
        let action = MqttAction::Deliver { topic };
        match policy.decide_mqtt(self.ctx.service_id, subject, self.identity(), action) {
            Decision::Allow { .. } => {
                if let Some(id) = p.packet_id {
                    self.dropped_qos2.remove(&id);
                }
                Self::forward_publish(p, topic, &mut self.client_holds, &mut self.to_client);
            }
            Decision::Deny { rule, reason } => {
                stats.denied += 1;
                self.deny_event(
                    policy,
                    "deliver",
                    topic,
                    Some(p.qos.as_u8()),
                    p.retain,
                    rule,
                    reason,
                    "dropped".to_string(),
                );
                // The broker's exchange completes as if the client had taken the message.
                match (p.qos, p.packet_id) {
                    (QoS::AtLeastOnce, Some(id)) => {
                        self.to_broker
                            .extend(mqtt::ack(PacketType::Puback, self.version, id, 0));
                    }
                    (QoS::ExactlyOnce, Some(id)) => {
                        if self.dropped_qos2.len() >= MAX_LOCAL_QOS2 {
                            return Err(self.violation(
                                Side::Upstream,
                                format!(
                                    "more than {MAX_LOCAL_QOS2} dropped QoS 2 deliveries without their PUBREL"
                                ),
                                0,
                            ));
                        }
                        self.dropped_qos2.insert(id);
                        self.to_broker
                            .extend(mqtt::ack(PacketType::Pubrec, self.version, id, 0));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Writes what this round produced: the broker's bytes first, then the client's.
    async fn flush<S>(
        &mut self,
        client: &mut S,
        broker: &mut Box<dyn Io>,
        stats: &mut SessionStats,
    ) -> Result<(), Closed>
    where
        S: AsyncWrite + Unpin,
    {
        if !self.to_broker.is_empty() {
            let result = write_broker(broker, &self.to_broker, self.ctx).await;
            self.to_broker.clear();
            if let Err(detail) = result {
                return Err(self.broker_gone(detail));
            }
        }
        if !self.to_client.is_empty() {
            let write = async {
                client.write_all(&self.to_client).await?;
                client.flush().await
            };
            let result = timeout(self.ctx.frame_timeout, write).await;
            stats.bytes_to_client += self.to_client.len() as u64;
            self.to_client.clear();
            match result {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err(CloseReason::ClientError {
                        detail: format!("write to client failed: {e}"),
                    });
                }
                Err(_) => {
                    return Err(CloseReason::ClientError {
                        detail: "client stopped reading".to_string(),
                    });
                }
            }
        }
        Ok(())
    }
}
