//! The connection to a service's upstream: plain TCP, or TLS with the gateway's own client
//! certificate where the service configures `upstream_tls`.

use crate::config::Service;
use rustls::pki_types::ServerName;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// A byte stream to the upstream, whichever transport it uses.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What TLS towards the upstream needs, prepared once at start-up.
#[derive(Clone, Debug)]
pub struct UpstreamTlsClient {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

impl UpstreamTlsClient {
    pub fn load(settings: &crate::config::UpstreamTls) -> Result<Self, crate::tls::TlsError> {
        let config = crate::tls::upstream_config(settings)?;
        let server_name = ServerName::try_from(settings.server_name.clone()).map_err(|e| {
            crate::tls::TlsError::Verifier(format!(
                "upstream server_name \"{}\": {e}",
                settings.server_name
            ))
        })?;
        Ok(UpstreamTlsClient {
            config,
            server_name,
        })
    }
}

/// Connects within `connect_timeout` (the TLS handshake included); the error says which step
/// failed, for the audit log.
pub(crate) async fn connect(
    service: &Service,
    tls: Option<&UpstreamTlsClient>,
    connect_timeout: Duration,
) -> Result<Box<dyn Io>, String> {
    let attempt = async {
        let tcp = TcpStream::connect(service.upstream.as_str())
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", service.upstream))?;
        let _ = tcp.set_nodelay(true);
        match tls {
            None => Ok(Box::new(tcp) as Box<dyn Io>),
            Some(t) => {
                let stream = tokio_rustls::TlsConnector::from(t.config.clone())
                    .connect(t.server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {} failed: {e}", service.upstream))?;
                Ok(Box::new(stream) as Box<dyn Io>)
            }
        }
    };
    match timeout(connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("connect to {} timed out", service.upstream)),
    }
}
