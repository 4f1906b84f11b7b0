//! The running gateway: shared state, start-up in a safe order, shutdown.
//!
//! Start-up loads everything that can fail (TLS files, audit file, every listener's bind)
//! before serving anything, so a bad deployment fails at once with a clear error instead of
//! half-starting. Listeners bound to port 0 report the port they got: tests and the demo use
//! that as their readiness signal.

use crate::audit::{Audit, AuditEvent, AuditSinks};
use crate::config::{Config, Service, ServiceId};
use crate::listener::{self, BoundListener};
use crate::policy::Policy;
use crate::tls::ServerMaterial;
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// State every connection of the gateway shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub services: Vec<Arc<Service>>,
    pub policy: Arc<ArcSwap<Policy>>,
    pub audit: Audit,
    /// Upstream connection slots, per service.
    pub upstream_slots: Vec<Arc<Semaphore>>,
    /// TLS towards the upstream, per service (`upstream_tls`).
    pub upstream_tls: Vec<Option<Arc<crate::session::UpstreamTlsClient>>>,
    pub shutdown: watch::Receiver<bool>,
    /// Failure counting for the quarantine, when the firewall is enforced.
    pub quarantine: Option<crate::firewall::quarantine::Tracker>,
    server_names: HashMap<String, ServiceId>,
    sessions: AtomicUsize,
    handshakes: AtomicUsize,
    per_identity: Mutex<HashMap<String, usize>>,
    next_session: AtomicU64,
}

impl Shared {
    pub fn service_by_server_name(&self, name: &str) -> Option<ServiceId> {
        self.server_names.get(name).copied()
    }

    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Counts a handshake in; false when `max_handshakes` are in progress (the caller must
    /// still call [`Shared::handshakes_end`]).
    pub fn handshakes_begin(&self) -> bool {
        self.handshakes.fetch_add(1, Ordering::AcqRel) < self.config.limits.max_handshakes
    }

    pub fn handshakes_end(&self) {
        self.handshakes.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a verified session in; false when the gateway is at `max_sessions` (the caller
    /// must still call [`Shared::sessions_end`]).
    pub fn sessions_begin(&self) -> bool {
        self.sessions.fetch_add(1, Ordering::AcqRel) < self.config.limits.max_sessions
    }

    /// Counts an identity's session in; false when it is at `max_sessions_per_identity`.
    pub fn identity_begin(&self, identity: &str) -> bool {
        let mut map = self
            .per_identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = map.entry(identity.to_string()).or_insert(0);
        if *n >= self.config.limits.max_sessions_per_identity {
            if *n == 0 {
                map.remove(identity);
            }
            return false;
        }
        *n += 1;
        true
    }

    pub fn sessions_end(&self, identity: Option<&str>) {
        self.sessions.fetch_sub(1, Ordering::AcqRel);
        if let Some(identity) = identity {
            let mut map = self
                .per_identity
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(n) = map.get_mut(identity) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(identity);
                }
            }
        }
    }

    /// Verified sessions open plus handshakes in progress.
    pub fn active_sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire) + self.handshakes.load(Ordering::Acquire)
    }
}

/// A started gateway.
pub struct Gateway {
    pub shared: Arc<Shared>,
    /// `(listener name, bound address)`, in configuration order.
    pub addresses: Vec<(String, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("audit: {0}")]
    Audit(std::io::Error),
    #[error("listener \"{name}\" cannot bind {bind}: {source}")]
    Bind {
        name: String,
        bind: SocketAddr,
        source: std::io::Error,
    },
}

impl Gateway {
    /// Loads TLS material, opens the audit sinks, binds every listener, then serves.
    pub async fn start(config: Config) -> Result<Gateway, StartError> {
        let material = ServerMaterial::load(&config.tls)?;
        let mut tls_configs = Vec::new();
        for l in &config.listeners {
            tls_configs.push(material.server_config(l.tls_versions)?);
        }
        let mut upstream_tls = Vec::new();
        for s in &config.services {
            upstream_tls.push(match &s.upstream_tls {
                Some(t) => Some(Arc::new(crate::session::UpstreamTlsClient::load(t)?)),
                None => None,
            });
        }
        let audit = Audit::start(
            &config.gateway_name,
            &AuditSinks {
                file: config.audit.file.clone(),
                stdout: config.audit.stdout,
            },
            config.audit.queue,
        )
        .map_err(StartError::Audit)?;

        let mut bound = Vec::new();
        let mut addresses = Vec::new();
        for ((index, l), tls) in config.listeners.iter().enumerate().zip(tls_configs) {
            let listener = TcpListener::bind(l.bind)
                .await
                .map_err(|source| StartError::Bind {
                    name: l.name.clone(),
                    bind: l.bind,
                    source,
                })?;
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                name: l.name.clone(),
                bind: l.bind,
                source,
            })?;
            addresses.push((l.name.clone(), addr));
            bound.push(BoundListener {
                index,
                listener,
                tls,
            });
        }

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut server_names = HashMap::new();
        for (i, s) in config.services.iter().enumerate() {
            for n in &s.server_names {
                server_names.insert(n.clone(), ServiceId(i));
            }
        }
        let policy = Policy::compile(config.policy.clone());
        audit.emit(AuditEvent::GatewayStarted {
            version: env!("CARGO_PKG_VERSION"),
            config: config.source.display().to_string(),
            listeners: addresses.iter().map(|(n, a)| format!("{n}={a}")).collect(),
            rules: policy.model().rules.len(),
        });
        let quarantine = config
            .firewall
            .as_ref()
            .filter(|f| f.quarantine_after > 0)
            .map(|f| {
                crate::firewall::quarantine::Tracker::new(f.quarantine_after, f.quarantine_window)
            });
        let shared = Arc::new(Shared {
            services: config.services.iter().cloned().map(Arc::new).collect(),
            upstream_tls,
            upstream_slots: config
                .services
                .iter()
                .map(|s| Arc::new(Semaphore::new(s.max_upstream_connections)))
                .collect(),
            config: Arc::new(config),
            policy: Arc::new(ArcSwap::from_pointee(policy)),
            audit,
            shutdown: shutdown_rx.clone(),
            quarantine,
            server_names,
            sessions: AtomicUsize::new(0),
            handshakes: AtomicUsize::new(0),
            per_identity: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(0),
        });
        let mut tasks = JoinSet::new();
        for b in bound {
            tasks.spawn(listener::serve(shared.clone(), b, shutdown_rx.clone()));
        }
        for (name, addr) in &addresses {
            tracing::info!(listener = %name, %addr, "listening");
        }
        Ok(Gateway {
            shared,
            addresses,
            shutdown,
            tasks,
        })
    }

    /// The address a listener is bound to.
    pub fn address(&self, listener: &str) -> Option<SocketAddr> {
        self.addresses
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    pub fn audit(&self) -> &Audit {
        &self.shared.audit
    }

    /// Swaps in a new policy (same services and listeners). Open sessions apply it on their
    /// next frame; a session whose identity lost the service is closed.
    pub fn reload_policy(&self, policy: Policy) {
        self.shared.policy.store(Arc::new(policy));
    }

    /// Stops accepting, ends every session, flushes the audit.
    pub async fn shutdown(mut self) {
        self.shared.audit.emit(AuditEvent::GatewayStopping);
        let _ = self.shutdown.send(true);
        while self.tasks.join_next().await.is_some() {}
        // Sessions see the same signal; give their `session_closed` events a moment to queue.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.shared.active_sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.shared.audit.flush().await;
    }
}
