//! Accept loops: TCP + TLS (tokio-rustls).
//!
//! For each connection: the session limit, the TLS handshake under `handshake_timeout` (the
//! ClientHello is read first so the service can be chosen by SNI, or by the listener's
//! `default_service` when the client sends none), the peer's identity from its verified
//! certificate, admission (does any rule let this identity use the service?), the
//! per-identity session limit, then the session itself.

use crate::audit::AuditEvent;
use crate::config::ServiceId;
use crate::gateway::Shared;
use crate::identity::Identity;
use crate::session::{self, SessionContext};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::LazyConfigAcceptor;

/// One bound listener.
pub struct BoundListener {
    pub index: usize,
    pub listener: TcpListener,
    pub tls: Arc<rustls::ServerConfig>,
}

/// Accepts until shutdown; each connection runs in its own task.
pub async fn serve(shared: Arc<Shared>, bound: BoundListener, mut shutdown: watch::Receiver<bool>) {
    let bound = Arc::new(bound);
    loop {
        tokio::select! {
            accepted = bound.listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let shared = shared.clone();
                    let bound = bound.clone();
                    tokio::spawn(async move { connection(shared, bound, stream, peer).await });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => return,
        }
    }
}

/// Counts a failure from `source`; at the threshold, puts the source into the firewall's
/// quarantine set (off the runtime: it runs nft) and audits it.
fn quarantine_failure(shared: &Arc<Shared>, source: std::net::IpAddr) {
    let Some(tracker) = &shared.quarantine else {
        return;
    };
    // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; the set holds a.b.c.d.
    let source = source.to_canonical();
    if source.is_loopback() || source.is_unspecified() {
        return;
    }
    let Some(failures) = tracker.failure(source, std::time::Instant::now()) else {
        return;
    };
    let seconds = shared.config.firewall.as_ref().map_or(600, |f| {
        u32::try_from(f.quarantine_time.as_secs()).unwrap_or(u32::MAX)
    });
    let audit = shared.audit.clone();
    tokio::task::spawn_blocking(move || {
        let error = crate::firewall::nft::Nft::default()
            .quarantine_add(source, seconds)
            .err()
            .map(|e| e.to_string());
        match &error {
            None => tracing::warn!(%source, failures, seconds, "source quarantined"),
            Some(e) => tracing::error!(%source, error = %e, "quarantine failed"),
        }
        audit.emit(AuditEvent::SourceQuarantined {
            address: source,
            failures,
            seconds,
            error,
        });
    });
}

/// Decrements the handshake counter when the handshake ends, however it ends.
struct HandshakeGuard {
    shared: Arc<Shared>,
}

impl Drop for HandshakeGuard {
    fn drop(&mut self) {
        self.shared.handshakes_end();
    }
}

/// Decrements the session counters when a session (or a refused attempt) ends.
struct SessionGuard {
    shared: Arc<Shared>,
    identity: Option<String>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.sessions_end(self.identity.as_deref());
    }
}

async fn connection(
    shared: Arc<Shared>,
    bound: Arc<BoundListener>,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let listener = &shared.config.listeners[bound.index];
    let reject = |sni: Option<String>, reason: String| {
        tracing::info!(%peer, listener = %listener.name, %reason, "connection rejected");
        shared.audit.emit(AuditEvent::TlsRejected {
            peer,
            listener: listener.name.clone(),
            sni,
            reason,
        });
    };
    // A handshake or identity failure counts towards the source's quarantine.
    let failed = |sni: Option<String>, reason: String| {
        reject(sni, reason);
        quarantine_failure(&shared, peer.ip());
    };
    // Unauthenticated peers have their own, smaller budget: they cannot take the slots of
    // verified sessions.
    if !shared.handshakes_begin() {
        shared.handshakes_end();
        return reject(
            None,
            format!(
                "gateway at max_handshakes ({})",
                shared.config.limits.max_handshakes
            ),
        );
    }
    let handshake_guard = HandshakeGuard {
        shared: shared.clone(),
    };
    let _ = stream.set_nodelay(true);

    // Only a peer that got as far as a ClientHello counts towards quarantine: a bare connect
    // (a health check, a port scan behind a NAT shared with real clients) does not.
    let hello_seen = std::sync::atomic::AtomicBool::new(false);
    let handshake = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
            .await
            .map_err(|e| (None, format!("TLS handshake failed: {e}")))?;
        hello_seen.store(true, std::sync::atomic::Ordering::Relaxed);
        let sni = start
            .client_hello()
            .server_name()
            .map(|s| s.to_ascii_lowercase());
        let service = match &sni {
            Some(name) => shared
                .service_by_server_name(name)
                .ok_or_else(|| (sni.clone(), format!("unknown SNI \"{name}\"")))?,
            None => listener.default_service.ok_or_else(|| {
                (
                    None,
                    "client sent no SNI and the listener has no default_service".to_string(),
                )
            })?,
        };
        let tls = start
            .into_stream(bound.tls.clone())
            .await
            .map_err(|e| (sni.clone(), format!("TLS handshake failed: {e}")))?;
        Ok::<_, (Option<String>, String)>((tls, sni, service))
    };
    let (tls, sni, service_id) =
        match tokio::time::timeout(shared.config.tls.handshake_timeout, handshake).await {
            Ok(Ok(done)) => done,
            Ok(Err((sni, reason))) if hello_seen.load(std::sync::atomic::Ordering::Relaxed) => {
                return failed(sni, reason);
            }
            Ok(Err((sni, reason))) => return reject(sni, reason),
            Err(_) if hello_seen.load(std::sync::atomic::Ordering::Relaxed) => {
                return failed(None, "TLS handshake timed out".to_string());
            }
            Err(_) => return reject(None, "TLS handshake timed out".to_string()),
        };
    drop(handshake_guard);

    let (_, conn) = tls.get_ref();
    let tls_version = conn
        .protocol_version()
        .map(|v| format!("{v:?}"))
        .unwrap_or_default();
    let Some(cert) = conn.peer_certificates().and_then(|c| c.first()) else {
        return failed(sni, "no client certificate".to_string());
    };
    let identity = match Identity::from_certificate(cert) {
        Ok(identity) => identity,
        Err(e) => return failed(sni, e.to_string()),
    };
    admit(
        shared.clone(),
        tls,
        peer,
        bound.index,
        sni,
        service_id,
        identity,
        tls_version,
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
async fn admit<S>(
    shared: Arc<Shared>,
    stream: S,
    peer: SocketAddr,
    listener: usize,
    sni: Option<String>,
    service_id: ServiceId,
    identity: Identity,
    tls_version: String,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Some(service) = shared.services.get(service_id.0).cloned() else {
        return;
    };
    let certificate_roles: Vec<String> = if shared.config.tls.certificate_roles {
        identity.certificate_role.iter().cloned().collect()
    } else {
        Vec::new()
    };
    let session_id = shared.next_session_id();
    let policy = shared.policy.load_full();
    let subject = policy.subject(&identity.id, &certificate_roles);
    let roles: Vec<String> = subject
        .roles()
        .iter()
        .map(|r| policy.role_name(*r).to_string())
        .collect();
    let deny = |reason: String| {
        tracing::info!(%peer, identity = %identity.id, service = %service.name, %reason, "session denied");
        shared.audit.emit(AuditEvent::SessionDenied {
            session: session_id,
            peer,
            identity: identity.id.clone(),
            roles: roles.clone(),
            service: service.name.clone(),
            reason,
        });
    };
    if !policy.admits(service_id, &subject) {
        deny("no rule lets this identity use the service".to_string());
        if service.protocol == crate::config::Protocol::Mqtt {
            // MQTT clients expect a CONNACK that says why, not a bare close.
            session::refuse_mqtt(
                stream,
                shared.config.limits.frame_timeout,
                service.mqtt.max_packet_size,
            )
            .await;
        }
        return;
    }
    if !shared.sessions_begin() {
        shared.sessions_end(None);
        return deny(format!(
            "gateway at max_sessions ({})",
            shared.config.limits.max_sessions
        ));
    }
    let mut guard = SessionGuard {
        shared: shared.clone(),
        identity: None,
    };
    if !shared.identity_begin(&identity.id) {
        return deny(format!(
            "identity at max_sessions_per_identity ({})",
            shared.config.limits.max_sessions_per_identity
        ));
    }
    guard.identity = Some(identity.id.clone());
    shared.audit.emit(AuditEvent::SessionOpened {
        session: session_id,
        peer,
        listener: shared.config.listeners[listener].name.clone(),
        identity: identity.id.clone(),
        roles,
        service: service.name.clone(),
        tls_version,
        sni,
        certificate_serial: identity.serial.clone(),
    });
    let ctx = SessionContext {
        id: session_id,
        peer,
        identity,
        certificate_roles,
        service_id,
        service,
        policy: shared.policy.clone(),
        audit: shared.audit.clone(),
        upstream_slots: shared.upstream_slots[service_id.0].clone(),
        upstream_tls: shared.upstream_tls.get(service_id.0).cloned().flatten(),
        idle_timeout: shared.config.limits.idle_timeout,
        frame_timeout: shared.config.limits.frame_timeout,
        shutdown: shared.shutdown.clone(),
    };
    session::run(stream, ctx).await;
}
