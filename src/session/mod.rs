//! The per-session relay: read a frame, decide, forward or refuse, audit.
//!
//! [`run`] is generic over the client stream (TLS over TCP today, a QUIC stream tomorrow) and
//! dispatches on the service's protocol; each protocol's relay lives in its own file. What all
//! protocols share lives here: the session's identity and subject, the live policy snapshot
//! (re-checked on every frame, so a reload applies to open sessions), counters and the
//! `session_closed` event.

mod modbus;
mod mqtt;
mod upstream;

pub use upstream::UpstreamTlsClient;

use crate::audit::{Audit, AuditEvent, CloseReason};
use crate::config::{Service, ServiceId};
use crate::identity::Identity;
use crate::policy::{Policy, Subject};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Semaphore, watch};

/// Everything one session needs, built by the listener after the handshake.
pub struct SessionContext {
    pub id: u64,
    pub peer: SocketAddr,
    pub identity: Identity,
    /// Roles the certificate asserts, where the config trusts them.
    pub certificate_roles: Vec<String>,
    pub service_id: ServiceId,
    pub service: Arc<Service>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub audit: Audit,
    /// Upstream connections of this service (shared by all its sessions).
    pub upstream_slots: Arc<Semaphore>,
    /// TLS towards the upstream, when the service has `upstream_tls`.
    pub upstream_tls: Option<Arc<UpstreamTlsClient>>,
    pub idle_timeout: std::time::Duration,
    pub frame_timeout: std::time::Duration,
    pub shutdown: watch::Receiver<bool>,
}

/// Counters reported in `session_closed`.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionStats {
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub requests: u64,
    pub allowed: u64,
    pub denied: u64,
}

/// The live policy as this session sees it: re-resolved whenever a reload swapped it.
pub(crate) struct LivePolicy {
    shared: Arc<ArcSwap<Policy>>,
    current: Arc<Policy>,
    subject: Subject,
    service: ServiceId,
    identity: String,
    certificate_roles: Vec<String>,
    /// Whether `current` still gives the identity the service (stays false once a reload
    /// took it, until a later reload gives it back).
    admitted: bool,
}

impl LivePolicy {
    pub(crate) fn new(ctx: &SessionContext) -> LivePolicy {
        let current = ctx.policy.load_full();
        let subject = current.subject(&ctx.identity.id, &ctx.certificate_roles);
        let admitted = current.admits(ctx.service_id, &subject);
        LivePolicy {
            shared: ctx.policy.clone(),
            current,
            subject,
            service: ctx.service_id,
            admitted,
            identity: ctx.identity.id.clone(),
            certificate_roles: ctx.certificate_roles.clone(),
        }
    }

    /// The current snapshot and this identity's subject in it, or `None` when a reload took
    /// the service away from this identity (continuous verification).
    pub(crate) fn refresh(&mut self) -> Option<(&Policy, &Subject)> {
        let latest = self.shared.load();
        if !Arc::ptr_eq(&latest, &self.current) {
            self.current = arc_swap::Guard::into_inner(latest);
            self.subject = self
                .current
                .subject(&self.identity, &self.certificate_roles);
            self.admitted = self.current.admits(self.service, &self.subject);
        }
        self.admitted.then_some((&self.current, &self.subject))
    }
}

/// Runs one admitted session to its end and emits `session_closed`.
pub async fn run<S>(stream: S, ctx: SessionContext)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let started = std::time::Instant::now();
    let mut stats = SessionStats::default();
    let reason = match ctx.service.protocol {
        crate::config::Protocol::Modbus => modbus::relay(stream, &ctx, &mut stats).await,
        crate::config::Protocol::Mqtt => mqtt::relay(stream, &ctx, &mut stats).await,
    };
    tracing::debug!(session = ctx.id, identity = %ctx.identity.id, ?reason, "session closed");
    ctx.audit.emit(AuditEvent::SessionClosed {
        session: ctx.id,
        peer: ctx.peer,
        identity: ctx.identity.id.clone(),
        service: ctx.service.name.clone(),
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        bytes_from_client: stats.bytes_from_client,
        bytes_to_client: stats.bytes_to_client,
        requests: stats.requests,
        allowed: stats.allowed,
        denied: stats.denied,
        reason,
    });
}

/// Answers an MQTT client whose identity no rule admits to the service: reads its CONNECT
/// (within `frame_timeout`) and refuses it the way its protocol version expects (CONNACK 0x87
/// in 5.0, return code 5 in 3.1.1). The listener has already emitted `session_denied`.
pub async fn refuse_mqtt<S>(stream: S, frame_timeout: std::time::Duration, max_packet: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    mqtt::refuse(stream, frame_timeout, max_packet).await;
}

/// Why a relay loop ended; turned into the audit's [`CloseReason`].
pub(crate) type Closed = CloseReason;
