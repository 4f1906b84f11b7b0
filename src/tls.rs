//! rustls configurations: the listeners' server side (client certificate required and verified
//! against the configured CA bundle and CRLs) and a client side for `demo`, tests and benches.
//!
//! The crypto provider is *ring*: small, fast to build, and it runs on the aarch64 and armv7
//! DIN-rail PCs we target. TLS 1.2 suites are the provider's ECDHE AEAD suites, which include the
//! two that Modbus/TCP Security requires (ECDHE-ECDSA- and ECDHE-RSA-AES128-GCM-SHA256).

use crate::config::{TlsSettings, TlsVersions};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use std::path::Path;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

fn file_error(path: &Path, message: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.into(),
    }
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (there must be at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, format!("bad PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(file_error(path, "no certificate in file"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_error(path, format!("cannot read private key: {e}")))
}

fn load_crls(
    paths: &[std::path::PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut crls = Vec::new();
    for path in paths {
        for crl in CertificateRevocationListDer::pem_file_iter(path)
            .map_err(|e| file_error(path, format!("cannot read CRL: {e}")))?
        {
            crls.push(crl.map_err(|e| file_error(path, format!("bad PEM CRL: {e}")))?);
        }
    }
    Ok(crls)
}

fn versions(v: TlsVersions) -> Vec<&'static rustls::SupportedProtocolVersion> {
    let mut out = Vec::new();
    if v.tls13 {
        out.push(&rustls::version::TLS13);
    }
    if v.tls12 {
        out.push(&rustls::version::TLS12);
    }
    out
}

/// The material every listener shares: loaded once, so a bad file fails start-up once.
#[derive(Clone, Debug)]
pub struct ServerMaterial {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl ServerMaterial {
    pub fn load(settings: &TlsSettings) -> Result<ServerMaterial, TlsError> {
        let mut roots = RootCertStore::empty();
        for ca in load_certs(&settings.client_ca)? {
            roots.add(ca).map_err(|e| {
                file_error(&settings.client_ca, format!("unusable CA certificate: {e}"))
            })?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(load_crls(&settings.crls)?)
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        Ok(ServerMaterial {
            chain: load_certs(&settings.cert)?,
            key: Arc::new(load_key(&settings.key)?),
            verifier,
        })
    }

    /// A server config for one listener: client certificate required, these TLS versions.
    pub fn server_config(&self, v: TlsVersions) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions(v))?
            .with_client_cert_verifier(self.verifier.clone())
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        // Modbus and MQTT sessions are long-lived; resumption would only matter for handshake
        // storms, and tickets would need key rotation. Keep the stateful cache small.
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(1024);
        Ok(Arc::new(config))
    }
}

/// A client config presenting `cert`/`key` and trusting `ca` (for demo, tests, benches and,
/// later, `ztgate connect`).
pub fn client_config(
    ca_pem: &[u8],
    cert_pem: Option<(&[u8], &[u8])>,
    v: TlsVersions,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(ca_pem) {
        let ca = ca.map_err(|e| file_error(Path::new("<ca>"), format!("bad PEM: {e}")))?;
        roots
            .add(ca)
            .map_err(|e| file_error(Path::new("<ca>"), format!("unusable CA: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions(v))?
        .with_root_certificates(roots);
    let config = match cert_pem {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_error(Path::new("<cert>"), format!("bad PEM: {e}")))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| file_error(Path::new("<key>"), format!("bad PEM key: {e}")))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The client side towards an upstream that speaks TLS (an MQTT broker on 8883): trusts the
/// configured CA bundle only, and presents the gateway's client certificate when one is set.
pub fn upstream_config(
    settings: &crate::config::UpstreamTls,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in load_certs(&settings.ca)? {
        roots
            .add(ca)
            .map_err(|e| file_error(&settings.ca, format!("unusable CA certificate: {e}")))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match &settings.client_cert {
        Some((cert, key)) => builder.with_client_auth_cert(load_certs(cert)?, load_key(key)?)?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}
