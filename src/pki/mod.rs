//! A small PKI for ztgate: a self-signed ECDSA P-256 CA that issues gateway (server) and
//! device/user (client) certificates for mTLS.
//!
//! Used by `ztgate ca …`, by `ztgate demo` and by the integration tests.
//!
//! Client certificates may carry the Modbus/TCP Security role extension
//! (OID [`MODBUS_ROLE_OID_STR`], non-critical, value = DER of one ASN.1 `UTF8String`).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType,
};
use time::{Duration, OffsetDateTime};
use x509_parser::asn1_rs::Tag;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::x509::X509Name;

/// OID arcs of the Modbus/TCP Security role extension (`1.3.6.1.4.1.50316.802.1`).
pub const MODBUS_ROLE_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 50316, 802, 1];

/// Dotted form of [`MODBUS_ROLE_OID`], as printed by x509-parser's `Oid::to_id_string`.
pub const MODBUS_ROLE_OID_STR: &str = "1.3.6.1.4.1.50316.802.1";

/// ASN.1 universal tag of `UTF8String`.
const TAG_UTF8_STRING: u8 = 0x0C;

/// `99991231235959Z` (RFC 5280 §4.1.2.5: "no well-defined expiration date"), as a Unix time.
const MAX_NOT_AFTER_UNIX: i64 = 253_402_300_799;

/// Errors from certificate generation and CA loading.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen failed to generate a key or to encode/sign a certificate.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// The requested certificate contents are unusable.
    #[error("invalid certificate spec: {0}")]
    InvalidSpec(String),
    /// The CA certificate PEM could not be used.
    #[error("invalid CA certificate: {0}")]
    InvalidCaCert(String),
    /// The CA private key PEM could not be parsed.
    #[error("invalid CA private key: {0}")]
    InvalidCaKey(String),
    /// The CA private key does not belong to the CA certificate.
    #[error("CA private key does not match the CA certificate's public key")]
    KeyMismatch,
}

/// A PEM-encoded private key. `Debug` never prints the key; the buffer is overwritten
/// (best effort) when dropped.
#[derive(Clone)]
pub struct SecretPem(String);

impl SecretPem {
    /// Wraps a PEM-encoded private key.
    pub fn new(pem: String) -> Self {
        SecretPem(pem)
    }

    /// The PEM text. Only call this to hand the key to TLS or to write it to a 0600 file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretPem(<redacted>)")
    }
}

impl Drop for SecretPem {
    fn drop(&mut self) {
        let mut bytes = std::mem::take(&mut self.0).into_bytes();
        bytes.fill(0);
        // Keep the wipe from being optimised away as a dead store.
        std::hint::black_box(&bytes);
    }
}

/// A freshly issued certificate and its private key.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate, PEM-encoded.
    pub cert_pem: String,
    /// The PKCS#8 private key, PEM-encoded.
    pub key_pem: SecretPem,
    /// The certificate, DER-encoded.
    pub cert_der: Vec<u8>,
}

/// What to put into an issued certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Subject common name.
    pub common_name: String,
    /// DNS subject alternative names; entries that parse as IP addresses become IP SANs.
    pub dns_names: Vec<String>,
    /// Optional URI subject alternative name, e.g. `spiffe://plant1/hmi/hmi-01`.
    pub uri: Option<String>,
    /// Optional Modbus/TCP Security role (extension [`MODBUS_ROLE_OID_STR`]).
    pub modbus_role: Option<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl CertSpec {
    /// A spec with CN = `common_name`, valid from one hour ago (clock skew) for `days` days.
    pub fn new(common_name: impl Into<String>, days: u32) -> Self {
        let (not_before, not_after) = validity_from_now(days);
        CertSpec {
            common_name: common_name.into(),
            dns_names: Vec::new(),
            uri: None,
            modbus_role: None,
            not_before,
            not_after,
        }
    }

    /// Sets the URI SAN.
    pub fn with_uri(mut self, uri: impl Into<String>) -> Self {
        self.uri = Some(uri.into());
        self
    }

    /// Adds a DNS SAN (or an IP SAN if `name` parses as an IP address).
    pub fn with_dns(mut self, name: impl Into<String>) -> Self {
        self.dns_names.push(name.into());
        self
    }

    /// Sets the Modbus/TCP Security role.
    pub fn with_role(mut self, role: impl Into<String>) -> Self {
        self.modbus_role = Some(role.into());
        self
    }

    /// Makes the certificate already expired: valid from now-10d to now-1d.
    pub fn expired(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now - Duration::days(10);
        self.not_after = now - Duration::days(1);
        self
    }

    /// Makes the certificate not yet valid: valid from now+1d to now+10d.
    pub fn not_yet_valid(mut self) -> Self {
        let now = OffsetDateTime::now_utc();
        self.not_before = now + Duration::days(1);
        self.not_after = now + Duration::days(10);
        self
    }
}

/// A certificate authority able to issue server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: Vec<u8>,
    cert_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, Copy)]
enum Usage {
    Server,
    Client,
}

impl Ca {
    /// New self-signed CA (ECDSA P-256), CN = `common_name`, valid from now-1h for `days`.
    ///
    /// The CA has `pathLenConstraint = 0`: it issues end-entity certificates only.
    pub fn generate(common_name: &str, days: u32) -> Result<Ca, PkiError> {
        if common_name.trim().is_empty() {
            return Err(PkiError::InvalidSpec("CA common name is empty".into()));
        }
        if days == 0 {
            return Err(PkiError::InvalidSpec(
                "CA validity must be at least one day".into(),
            ));
        }
        let (not_before, not_after) = validity_from_now(days);
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.not_before = not_before;
        params.not_after = not_after;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_der: cert.der().to_vec(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Load an existing CA from cert PEM + key PEM (PKCS#8 `PRIVATE KEY`) to issue more
    /// certificates later.
    ///
    /// The first `CERTIFICATE` block of `cert_pem` is used. It must be a CA certificate
    /// (basicConstraints cA = true, keyCertSign if keyUsage is present) whose public key
    /// matches `key_pem`, and whose subject name rcgen re-encodes byte-for-byte (checked by
    /// signing a probe certificate), so that issued certificates chain to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der = first_certificate_der(cert_pem)?;
        let (rest, x509) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| PkiError::InvalidCaCert(format!("cannot parse certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(PkiError::InvalidCaCert(
                "trailing data after the certificate".into(),
            ));
        }
        match x509.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {}
            Ok(_) => {
                return Err(PkiError::InvalidCaCert(
                    "not a CA certificate (basicConstraints cA is not set)".into(),
                ));
            }
            Err(e) => {
                return Err(PkiError::InvalidCaCert(format!(
                    "bad basicConstraints extension: {e}"
                )));
            }
        }
        let key_usage = x509
            .key_usage()
            .map_err(|e| PkiError::InvalidCaCert(format!("bad keyUsage extension: {e}")))?;
        if let Some(ku) = &key_usage {
            if !ku.value.key_cert_sign() {
                return Err(PkiError::InvalidCaCert(
                    "keyUsage does not allow keyCertSign".into(),
                ));
            }
        }

        // rcgen's error for a bad key never contains key material.
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::InvalidCaKey(e.to_string()))?;
        if key.der_bytes() != x509.public_key().subject_public_key.data.as_ref() {
            return Err(PkiError::KeyMismatch);
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name_from_x509(x509.subject())?;
        params.key_identifier_method = subject_key_id(&x509)?;
        params.key_usages = match &key_usage {
            Some(ku) => {
                let ku = ku.value;
                let mut v = Vec::new();
                if ku.digital_signature() {
                    v.push(KeyUsagePurpose::DigitalSignature);
                }
                if ku.key_cert_sign() {
                    v.push(KeyUsagePurpose::KeyCertSign);
                }
                if ku.crl_sign() {
                    v.push(KeyUsagePurpose::CrlSign);
                }
                v
            }
            None => Vec::new(),
        };
        let issuer = Issuer::new(params, key);

        // Issued certificates only chain if their issuer name is byte-identical to the CA's
        // subject name: sign a throw-away certificate and compare.
        let probe = CertificateParams::default().signed_by(issuer.key(), &issuer)?;
        let (_, probe_x509) = x509_parser::parse_x509_certificate(probe.der())
            .map_err(|e| PkiError::InvalidCaCert(format!("cannot re-parse probe: {e}")))?;
        if probe_x509.issuer().as_raw() != x509.subject().as_raw() {
            return Err(PkiError::InvalidCaCert(
                "subject name cannot be re-encoded identically".into(),
            ));
        }

        Ok(Ca {
            cert_pem: pem_encode_certificate(&cert_der),
            cert_der,
            issuer,
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA private key (PKCS#8), PEM-encoded.
    pub fn key_pem(&self) -> SecretPem {
        SecretPem(self.issuer.key().serialize_pem())
    }

    /// The CA certificate, DER-encoded.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// The CA certificate and key as an [`IssuedCert`], e.g. for [`write_files`].
    pub fn to_issued_cert(&self) -> IssuedCert {
        IssuedCert {
            cert_pem: self.cert_pem(),
            key_pem: self.key_pem(),
            cert_der: self.cert_der(),
        }
    }

    /// Server certificate for the gateway: CN = `spec.common_name`, DNS SANs (IP SANs for
    /// names that parse as IP addresses), EKU serverAuth. If `spec.dns_names` is empty the
    /// common name is used as the only SAN. `uri` and `modbus_role` are included if set.
    pub fn issue_server(&self, spec: &CertSpec) -> Result<IssuedCert, PkiError> {
        self.issue(spec, Usage::Server)
    }

    /// Client certificate for a device/user: CN = `spec.common_name`, optional URI SAN
    /// (e.g. `spiffe://plant1/hmi/hmi-01`), DNS/IP SANs if given, EKU clientAuth, and the
    /// Modbus/TCP Security role extension if `spec.modbus_role` is set.
    pub fn issue_client(&self, spec: &CertSpec) -> Result<IssuedCert, PkiError> {
        self.issue(spec, Usage::Client)
    }

    fn issue(&self, spec: &CertSpec, usage: Usage) -> Result<IssuedCert, PkiError> {
        validate_spec(spec)?;
        let mut names: Vec<&str> = spec.dns_names.iter().map(String::as_str).collect();
        if names.is_empty() && matches!(usage, Usage::Server) {
            names.push(&spec.common_name);
        }
        let mut sans = Vec::with_capacity(names.len() + 1);
        for name in names {
            sans.push(match IpAddr::from_str(name) {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(name.try_into()?),
            });
        }
        if let Some(uri) = &spec.uri {
            sans.push(SanType::URI(uri.as_str().try_into()?));
        }

        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(&spec.common_name);
        params.subject_alt_names = sans;
        params.not_before = spec.not_before;
        params.not_after = spec.not_after;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        if let Some(role) = &spec.modbus_role {
            params.custom_extensions.push(modbus_role_extension(role));
        }

        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: SecretPem(key.serialize_pem()),
            cert_der: cert.der().to_vec(),
        })
    }
}

/// The Modbus/TCP Security role extension (non-critical) holding `role`.
pub fn modbus_role_extension(role: &str) -> CustomExtension {
    // from_oid_content creates a non-critical extension.
    CustomExtension::from_oid_content(MODBUS_ROLE_OID, encode_utf8_string_der(role))
}

/// DER encoding of one ASN.1 `UTF8String`: tag 0x0C, definite length (short form below 128
/// bytes, minimal long form otherwise), then the UTF-8 bytes.
pub fn encode_utf8_string_der(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let len = bytes.len();
    let mut out = Vec::with_capacity(2 + size_of::<usize>() + len);
    out.push(TAG_UTF8_STRING);
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        _ => {
            let be = len.to_be_bytes();
            let skip = be.iter().take_while(|&&b| b == 0).count();
            let significant = &be[skip..];
            // At most size_of::<usize>() (<= 16) length octets, so this fits in 7 bits.
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(bytes);
    out
}

/// The gateway side reads the extension with the strict decoder in `identity`.
pub use crate::identity::decode_utf8_string_der;

/// Writes `<name>.pem` (mode 0644) and `<name>.key` (mode 0600 on unix) into `dir` and
/// returns their paths.
///
/// Each file is written to a fresh temporary file in `dir` (created with its final mode, so
/// the key is never readable by others, even briefly), synced, then renamed over the target.
/// `name` must be a plain file stem (no path separators, not `.`/`..`).
pub fn write_files(dir: &Path, name: &str, cert: &IssuedCert) -> io::Result<(PathBuf, PathBuf)> {
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\\', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid certificate file name {name:?}"),
        ));
    }
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    write_replace(dir, &cert_path, cert.cert_pem.as_bytes(), 0o644)?;
    write_replace(dir, &key_path, cert.key_pem.expose().as_bytes(), 0o600)?;
    Ok((cert_path, key_path))
}

fn write_replace(dir: &Path, target: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file");
    let tmp = dir.join(format!(
        ".{file_name}.tmp.{}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let mut opts = OpenOptions::new();
    // create_new: O_EXCL, never follows or reuses an existing file or symlink.
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;

    let result = opts.open(&tmp).and_then(|mut f| {
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, target)
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    #[cfg(unix)]
    {
        // Make the rename durable; a failure here does not undo the (already visible) write.
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn validate_spec(spec: &CertSpec) -> Result<(), PkiError> {
    if spec.common_name.trim().is_empty() {
        return Err(PkiError::InvalidSpec("common name is empty".into()));
    }
    if spec.not_after <= spec.not_before {
        return Err(PkiError::InvalidSpec(
            "not_after must be later than not_before".into(),
        ));
    }
    if let Some(name) = spec.dns_names.iter().find(|n| n.trim().is_empty()) {
        return Err(PkiError::InvalidSpec(format!("empty DNS name {name:?}")));
    }
    if let Some(uri) = &spec.uri {
        let scheme_ok = uri.split_once(':').is_some_and(|(scheme, rest)| {
            !rest.is_empty()
                && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        if !scheme_ok {
            return Err(PkiError::InvalidSpec(format!(
                "URI SAN {uri:?} must look like scheme:rest"
            )));
        }
    }
    if let Some(role) = &spec.modbus_role {
        if role.trim().is_empty() {
            return Err(PkiError::InvalidSpec("Modbus role is empty".into()));
        }
    }
    Ok(())
}

/// (now - 1h, now + days), with not_after capped at 9999-12-31T23:59:59Z.
fn validity_from_now(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    let max = OffsetDateTime::from_unix_timestamp(MAX_NOT_AFTER_UNIX).unwrap_or(now);
    let not_after = now
        .checked_add(Duration::days(i64::from(days)))
        .map_or(max, |t| t.min(max));
    (now - Duration::hours(1), not_after)
}

fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn first_certificate_der(cert_pem: &str) -> Result<Vec<u8>, PkiError> {
    for pem in x509_parser::pem::Pem::iter_from_buffer(cert_pem.as_bytes()) {
        let pem = pem.map_err(|e| PkiError::InvalidCaCert(format!("bad PEM: {e}")))?;
        if pem.label == "CERTIFICATE" {
            return Ok(pem.contents);
        }
    }
    Err(PkiError::InvalidCaCert("no CERTIFICATE PEM block".into()))
}

/// PEM in the same layout as rcgen's `Certificate::pem()`: 64-column base64, `\n` endings.
fn pem_encode_certificate(der: &[u8]) -> String {
    let b64 = base64_encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 60);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        // base64 output is ASCII, so any byte index is a char boundary.
        let (line, tail) = rest.split_at(rest.len().min(64));
        out.push_str(line);
        out.push('\n');
        rest = tail;
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn base64_encode(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (byte(0) << 16) | (byte(1) << 8) | byte(2);
        // A chunk of k bytes (1..=3) yields k+1 base64 digits, then '=' padding.
        for i in 0..4 {
            if i <= chunk.len() {
                // Masked to 6 bits, so always a valid index into the 64-entry alphabet.
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The CA's subject key identifier (reused as the authority key identifier of issued
/// certificates), or rcgen's default SHA-256 method when the extension is absent.
fn subject_key_id(x509: &X509Certificate<'_>) -> Result<KeyIdMethod, PkiError> {
    for ext in x509.iter_extensions() {
        if let ParsedExtension::SubjectKeyIdentifier(id) = ext.parsed_extension() {
            return Ok(KeyIdMethod::PreSpecified(id.0.to_vec()));
        }
    }
    Ok(KeyIdMethod::Sha256)
}

/// Rebuilds an rcgen name from a parsed one, keeping each attribute's string type so it
/// re-encodes identically.
fn distinguished_name_from_x509(name: &X509Name<'_>) -> Result<DistinguishedName, PkiError> {
    let bad = |what: &str| PkiError::InvalidCaCert(format!("unsupported subject name: {what}"));
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(bad("multi-valued or empty RDN"));
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| bad("attribute OID arc too large"))?
            .collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err(bad("repeated attribute type"));
        }
        let value = attr.attr_value();
        let data: &[u8] = value.data;
        let text = || std::str::from_utf8(data).map_err(|_| bad("attribute is not valid text"));
        let dn_value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into()?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into()?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into()?),
            Tag::BmpString => {
                DnValue::BmpString(rcgen::string::BmpString::from_utf16be(data.to_vec())?)
            }
            Tag::UniversalString => DnValue::UniversalString(
                rcgen::string::UniversalString::from_utf32be(data.to_vec())?,
            ),
            _ => return Err(bad("attribute has an unsupported string type")),
        };
        dn.push(ty, dn_value);
    }
    Ok(dn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use std::sync::Arc;
    use x509_parser::extensions::GeneralName;

    fn parse(der: &[u8]) -> X509Certificate<'_> {
        let (rest, cert) = x509_parser::parse_x509_certificate(der).unwrap();
        assert!(rest.is_empty());
        cert
    }

    fn cn(cert: &X509Certificate<'_>) -> String {
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_owned()
    }

    fn sans<'a>(cert: &'a X509Certificate<'a>) -> Vec<GeneralName<'a>> {
        cert.subject_alternative_name()
            .unwrap()
            .map(|e| e.value.general_names.clone())
            .unwrap_or_default()
    }

    fn role_of(cert: &X509Certificate<'_>) -> Option<String> {
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == MODBUS_ROLE_OID_STR)?;
        assert!(!ext.critical, "role extension must be non-critical");
        Some(decode_utf8_string_der(ext.value).unwrap().to_owned())
    }

    fn assert_signed_by(cert_der: &[u8], ca: &Ca) {
        let ca_der = ca.cert_der();
        let ca_x509 = parse(&ca_der);
        let cert = parse(cert_der);
        cert.verify_signature(Some(ca_x509.public_key())).unwrap();
        assert_eq!(cert.issuer().as_raw(), ca_x509.subject().as_raw());
    }

    fn client_verifier(ca: &Ca) -> Arc<dyn rustls::server::danger::ClientCertVerifier> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der())).unwrap();
        rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    #[test]
    fn utf8_string_der_lengths() {
        assert_eq!(encode_utf8_string_der(""), vec![0x0C, 0x00]);
        assert_eq!(
            encode_utf8_string_der("operator"),
            [&[0x0C, 0x08][..], b"operator"].concat()
        );
        let cases: &[(usize, &[u8])] = &[
            (127, &[0x0C, 0x7F]),
            (128, &[0x0C, 0x81, 0x80]),
            (255, &[0x0C, 0x81, 0xFF]),
            (256, &[0x0C, 0x82, 0x01, 0x00]),
            (65_535, &[0x0C, 0x82, 0xFF, 0xFF]),
            (70_000, &[0x0C, 0x83, 0x01, 0x11, 0x70]),
        ];
        for &(len, header) in cases {
            let s = "a".repeat(len);
            let der = encode_utf8_string_der(&s);
            assert_eq!(&der[..header.len()], header, "len {len}");
            assert_eq!(der.len(), header.len() + len);
            assert_eq!(decode_utf8_string_der(&der), Some(s.as_str()));
            // An independent DER parser agrees.
            let (rest, obj) = x509_parser::der_parser::der::parse_der_utf8string(&der).unwrap();
            assert!(rest.is_empty());
            assert_eq!(obj.as_str().unwrap(), s);
        }
        let multibyte = "Bediener-Ü€";
        assert_eq!(
            decode_utf8_string_der(&encode_utf8_string_der(multibyte)),
            Some(multibyte)
        );
    }

    #[test]
    fn utf8_string_der_decoder_is_strict() {
        let bad: &[&[u8]] = &[
            &[],
            &[0x0C],
            &[0x13, 0x01, b'a'],                      // PrintableString
            &[0x0C, 0x02, b'a'],                      // truncated
            &[0x0C, 0x01, b'a', b'b'],                // trailing byte
            &[0x0C, 0x80, b'a', 0x00, 0x00],          // indefinite length
            &[0x0C, 0x81, 0x01, b'a'],                // long form for a short length
            &[0x0C, 0x82, 0x00, 0x80],                // non-minimal long form
            &[0x0C, 0xFF, 0x01],                      // absurd length-of-length
            &[0x0C, 0x89, 1, 0, 0, 0, 0, 0, 0, 0, 0], // more octets than usize
            &[0x0C, 0x02, 0xC3, 0x28],                // invalid UTF-8
        ];
        for der in bad {
            assert_eq!(decode_utf8_string_der(der), None, "{der:02x?}");
        }
    }

    #[test]
    fn ca_is_self_signed_p256_ca() {
        let ca = Ca::generate("ztgate test CA", 30).unwrap();
        let der = ca.cert_der();
        let cert = parse(&der);
        assert_eq!(cn(&cert), "ztgate test CA");
        assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
        assert!(cert.key_usage().unwrap().unwrap().value.key_cert_sign());
        cert.verify_signature(None).unwrap();
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.10045.4.3.2" // ecdsa-with-SHA256
        );
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let nb = cert.validity().not_before.timestamp();
        let na = cert.validity().not_after.timestamp();
        assert!(
            (now - 3700..=now - 3500).contains(&nb),
            "not_before ~ now-1h"
        );
        assert!((na - now - 30 * 86_400).abs() < 120, "not_after ~ now+30d");
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(ca.key_pem().expose().contains("BEGIN PRIVATE KEY"));
    }

    #[test]
    fn ca_generate_rejects_bad_input() {
        assert!(matches!(
            Ca::generate("", 30),
            Err(PkiError::InvalidSpec(_))
        ));
        assert!(matches!(
            Ca::generate("CA", 0),
            Err(PkiError::InvalidSpec(_))
        ));
        // Absurd lifetimes are capped at 9999-12-31 rather than panicking.
        let ca = Ca::generate("CA", u32::MAX).unwrap();
        let der = ca.cert_der();
        assert_eq!(
            parse(&der).validity().not_after.timestamp(),
            MAX_NOT_AFTER_UNIX
        );
    }

    #[test]
    fn client_cert_contents() {
        let ca = Ca::generate("ztgate test CA", 30).unwrap();
        let spec = CertSpec::new("hmi-01", 7)
            .with_uri("spiffe://plant1/hmi/hmi-01")
            .with_role("operator");
        let issued = ca.issue_client(&spec).unwrap();
        let cert = parse(&issued.cert_der);

        assert_eq!(cn(&cert), "hmi-01");
        assert_eq!(
            sans(&cert),
            vec![GeneralName::URI("spiffe://plant1/hmi/hmi-01")]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(!cert.basic_constraints().unwrap().unwrap().value.ca);
        assert_eq!(role_of(&cert).as_deref(), Some("operator"));
        let ext = cert
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.4.1.50316.802.1")
            .unwrap();
        assert_eq!(ext.value, encode_utf8_string_der("operator").as_slice());
        assert_signed_by(&issued.cert_der, &ca);

        // PEM and DER agree; the key is a PKCS#8 PEM.
        let (_, pem) = x509_parser::pem::parse_x509_pem(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(pem.contents, issued.cert_der);
        assert!(
            issued
                .key_pem
                .expose()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );

        // No role requested: no extension.
        let plain = ca.issue_client(&CertSpec::new("plc-gw", 7)).unwrap();
        assert_eq!(role_of(&parse(&plain.cert_der)), None);
        assert!(sans(&parse(&plain.cert_der)).is_empty());
    }

    #[test]
    fn long_role_uses_long_form_length() {
        let ca = Ca::generate("CA", 1).unwrap();
        let role = "r".repeat(300);
        let issued = ca
            .issue_client(&CertSpec::new("dev", 1).with_role(role.clone()))
            .unwrap();
        assert_eq!(role_of(&parse(&issued.cert_der)), Some(role));
    }

    #[test]
    fn server_cert_contents() {
        let ca = Ca::generate("ztgate test CA", 30).unwrap();
        let spec = CertSpec::new("gateway", 7)
            .with_dns("gw.plant1.local")
            .with_dns("localhost")
            .with_dns("127.0.0.1")
            .with_dns("::1");
        let issued = ca.issue_server(&spec).unwrap();
        let cert = parse(&issued.cert_der);
        assert_eq!(cn(&cert), "gateway");
        assert_eq!(
            sans(&cert),
            vec![
                GeneralName::DNSName("gw.plant1.local"),
                GeneralName::DNSName("localhost"),
                GeneralName::IPAddress(&[127, 0, 0, 1]),
                GeneralName::IPAddress(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
            ]
        );
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && !eku.client_auth);
        assert_eq!(role_of(&cert), None);
        assert_signed_by(&issued.cert_der, &ca);

        // Without explicit names the CN becomes the SAN.
        let issued = ca.issue_server(&CertSpec::new("localhost", 7)).unwrap();
        assert_eq!(
            sans(&parse(&issued.cert_der)),
            vec![GeneralName::DNSName("localhost")]
        );
    }

    #[test]
    fn server_cert_verifies_with_rustls() {
        let ca = Ca::generate("ztgate test CA", 30).unwrap();
        let spec = CertSpec::new("gateway", 7)
            .with_dns("gw.plant1.local")
            .with_dns("127.0.0.1");
        let issued = ca.issue_server(&spec).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from(ca.cert_der())).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let ee = CertificateDer::from(issued.cert_der.clone());
        for name in ["gw.plant1.local", "127.0.0.1"] {
            let name = ServerName::try_from(name).unwrap();
            verifier
                .verify_server_cert(&ee, &[], &name, &[], UnixTime::now())
                .unwrap();
        }
        let wrong = ServerName::try_from("other.local").unwrap();
        assert!(
            verifier
                .verify_server_cert(&ee, &[], &wrong, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn client_cert_accepted_by_rustls_client_verifier() {
        let ca = Ca::generate("ztgate test CA", 30).unwrap();
        let verifier = client_verifier(&ca);
        let issued = ca
            .issue_client(
                &CertSpec::new("hmi-01", 7)
                    .with_uri("spiffe://plant1/hmi/hmi-01")
                    .with_role("operator"),
            )
            .unwrap();
        verifier
            .verify_client_cert(
                &CertificateDer::from(issued.cert_der.clone()),
                &[],
                UnixTime::now(),
            )
            .unwrap();

        // Negative controls: another CA's cert, an expired cert, a server-only cert.
        let other = Ca::generate("ztgate test CA", 30).unwrap();
        let foreign = other.issue_client(&CertSpec::new("hmi-01", 7)).unwrap();
        let expired = ca.issue_client(&CertSpec::new("old", 7).expired()).unwrap();
        let future = ca
            .issue_client(&CertSpec::new("new", 7).not_yet_valid())
            .unwrap();
        let server = ca
            .issue_server(&CertSpec::new("gw", 7).with_dns("gw.local"))
            .unwrap();
        for bad in [foreign, expired, future, server] {
            assert!(
                verifier
                    .verify_client_cert(&CertificateDer::from(bad.cert_der), &[], UnixTime::now())
                    .is_err()
            );
        }
    }

    #[test]
    fn expired_spec_is_in_the_past() {
        let spec = CertSpec::new("old", 365).expired();
        let now = OffsetDateTime::now_utc();
        assert!(spec.not_after < now && spec.not_before < spec.not_after);
        let ca = Ca::generate("CA", 1).unwrap();
        let issued = ca.issue_client(&spec).unwrap();
        let cert = parse(&issued.cert_der);
        assert!(cert.validity().not_after.timestamp() < now.unix_timestamp());
        assert!(!cert.validity().is_valid());
    }

    #[test]
    fn from_pem_round_trips_and_issues_chaining_certs() {
        let ca = Ca::generate("ztgate plant1 CA", 30).unwrap();
        let loaded = Ca::from_pem(&ca.cert_pem(), ca.key_pem().expose()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
        assert_eq!(loaded.cert_pem(), ca.cert_pem());
        assert_eq!(loaded.key_pem().expose(), ca.key_pem().expose());

        let issued = loaded
            .issue_client(&CertSpec::new("eng-ws-02", 7).with_role("engineer"))
            .unwrap();
        assert_signed_by(&issued.cert_der, &ca);
        let cert = parse(&issued.cert_der);
        assert_eq!(role_of(&cert).as_deref(), Some("engineer"));
        // Authority key identifier matches the original CA's subject key identifier.
        let ca_der = ca.cert_der();
        let ca_x509 = parse(&ca_der);
        let ski = ca_x509
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            })
            .unwrap();
        let aki = cert
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    aki.key_identifier.as_ref().map(|id| id.0.to_vec())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki, ski);
        client_verifier(&ca)
            .verify_client_cert(
                &CertificateDer::from(issued.cert_der.clone()),
                &[],
                UnixTime::now(),
            )
            .unwrap();
    }

    #[test]
    fn from_pem_rejects_bad_input() {
        let ca = Ca::generate("CA one", 30).unwrap();
        let other = Ca::generate("CA two", 30).unwrap();
        assert!(matches!(
            Ca::from_pem(&ca.cert_pem(), other.key_pem().expose()),
            Err(PkiError::KeyMismatch)
        ));
        let leaf = ca.issue_client(&CertSpec::new("leaf", 7)).unwrap();
        assert!(matches!(
            Ca::from_pem(&leaf.cert_pem, leaf.key_pem.expose()),
            Err(PkiError::InvalidCaCert(_))
        ));
        assert!(matches!(
            Ca::from_pem("not a pem", ca.key_pem().expose()),
            Err(PkiError::InvalidCaCert(_))
        ));
        let err = Ca::from_pem(
            &ca.cert_pem(),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::InvalidCaKey(_)));
        // Leading text and a following block are tolerated; the first CERTIFICATE is used.
        let bundle = format!("# plant1 CA\n{}{}", ca.cert_pem(), other.cert_pem());
        let loaded = Ca::from_pem(&bundle, ca.key_pem().expose()).unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let ca = Ca::generate("CA", 1).unwrap();
        let mut inverted = CertSpec::new("x", 1);
        std::mem::swap(&mut inverted.not_before, &mut inverted.not_after);
        for spec in [
            CertSpec::new("", 1),
            inverted,
            CertSpec::new("x", 1).with_uri("no-scheme"),
            CertSpec::new("x", 1).with_uri("1bad:scheme"),
            CertSpec::new("x", 1).with_role(""),
            CertSpec::new("x", 1).with_dns(""),
        ] {
            assert!(
                matches!(ca.issue_client(&spec), Err(PkiError::InvalidSpec(_))),
                "{spec:?}"
            );
        }
        // Non-IA5 DNS names are refused by rcgen.
        assert!(matches!(
            ca.issue_server(&CertSpec::new("x", 1).with_dns("gätewäy")),
            Err(PkiError::Rcgen(_))
        ));
    }

    #[test]
    fn secrets_are_not_debug_printed() {
        let ca = Ca::generate("CA", 1).unwrap();
        let issued = ca.issue_client(&CertSpec::new("dev", 1)).unwrap();
        let key = issued.key_pem.expose().to_owned();
        let body = key.lines().nth(1).unwrap();
        for printed in [
            format!("{:?}", issued.key_pem),
            format!("{issued:?}"),
            format!("{:#?}", issued),
            format!("{ca:?}"),
            format!("{:?}", ca.key_pem()),
        ] {
            assert!(!printed.contains("PRIVATE KEY"), "{printed}");
            assert!(!printed.contains(body), "{printed}");
            assert!(!printed.contains(ca.key_pem().expose().lines().nth(1).unwrap()));
        }
        assert_eq!(format!("{:?}", issued.key_pem), "SecretPem(<redacted>)");
    }

    #[test]
    fn base64_matches_known_vectors() {
        for (input, expected) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"fooba", "Zm9vYmE="),
            (b"foobar", "Zm9vYmFy"),
            (&[0xff, 0xfe, 0xfd], "//79"),
        ] {
            assert_eq!(base64_encode(input), expected);
        }
    }

    #[cfg(unix)]
    #[test]
    fn write_files_modes_and_contents() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::generate("CA", 1).unwrap();
        let issued = ca.issue_client(&CertSpec::new("hmi-01", 1)).unwrap();

        // A pre-existing, world-readable key file is replaced, not reused.
        let stale = dir.path().join("hmi-01.key");
        fs::write(&stale, "old").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o644)).unwrap();

        let (cert_path, key_path) = write_files(dir.path(), "hmi-01", &issued).unwrap();
        assert_eq!(cert_path, dir.path().join("hmi-01.pem"));
        assert_eq!(key_path, stale);
        assert_eq!(fs::read_to_string(&cert_path).unwrap(), issued.cert_pem);
        assert_eq!(
            fs::read_to_string(&key_path).unwrap(),
            issued.key_pem.expose()
        );
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&cert_path) & !0o644, 0, "cert mode within 0644");
        assert_eq!(mode(&cert_path) & 0o600, 0o600);

        // Written files load back as a CA.
        let (ca_cert, ca_key) = write_files(dir.path(), "ca", &ca.to_issued_cert()).unwrap();
        let loaded = Ca::from_pem(
            &fs::read_to_string(ca_cert).unwrap(),
            &fs::read_to_string(ca_key).unwrap(),
        )
        .unwrap();
        assert_eq!(loaded.cert_der(), ca.cert_der());

        // No temporary files are left behind.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.key", "ca.pem", "hmi-01.key", "hmi-01.pem"]);

        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert_eq!(
                write_files(dir.path(), bad, &issued).unwrap_err().kind(),
                io::ErrorKind::InvalidInput
            );
        }
    }
}
