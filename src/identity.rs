//! Who is on the other end: a verified client certificate → [`Identity`].
//!
//! rustls has already verified the chain, validity and key usage when this runs; here we only
//! read names out of the end-entity certificate. The identity is the first URI SAN (SPIFFE-style
//! `spiffe://plant1/hmi/hmi-01`) if the certificate has one, else the subject CN. A certificate
//! with neither has no identity and is refused.

use std::fmt;
use x509_parser::prelude::*;

/// Modbus/TCP Security role extension (Modbus/TCP Security Protocol Specification §R-21): one
/// ASN.1 UTF8String naming the role.
pub const MODBUS_ROLE_OID: &str = "1.3.6.1.4.1.50316.802.1";

/// A verified peer.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// URI SAN, else subject CN.
    pub id: String,
    /// The Modbus/TCP Security role extension, if present (used only where the config trusts
    /// the CA to assert roles).
    pub certificate_role: Option<String>,
    /// Certificate serial, hex, for audit.
    pub serial: String,
    /// Unix time the certificate expires.
    pub not_after: i64,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("client certificate does not parse: {0}")]
    Parse(String),
    #[error("client certificate has neither a URI SAN nor a subject CN")]
    NoName,
    #[error("client certificate name is not printable UTF-8 or longer than 1024 bytes")]
    BadName,
    #[error("client certificate CN looks like a URI; URI identities must be URI SANs")]
    CnLooksLikeUri,
}

/// Longest identity we accept; certificates are from our CA, but audit lines stay bounded.
const MAX_ID_LEN: usize = 1024;

impl Identity {
    /// Reads the identity from a DER end-entity certificate that rustls has verified.
    pub fn from_certificate(der: &[u8]) -> Result<Identity, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
        let mut uri = None;
        let mut role = None;
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) if uri.is_none() => {
                    uri = san.general_names.iter().find_map(|n| match n {
                        GeneralName::URI(u) => Some(u.to_string()),
                        _ => None,
                    });
                }
                // A malformed role extension gives no role (the config may not even trust
                // certificate roles); it does not make a valid certificate unusable.
                _ if ext.oid.to_id_string() == MODBUS_ROLE_OID => {
                    role = decode_utf8_string_der(ext.value)
                        .filter(|r| {
                            !r.is_empty()
                                && r.len() <= MAX_ID_LEN
                                && !r.chars().any(char::is_control)
                        })
                        .map(str::to_string);
                }
                _ => {}
            }
        }
        let id = match uri {
            Some(u) => u,
            None => {
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .map(str::to_string)
                    .ok_or(IdentityError::NoName)?;
                // URI identities come from URI SANs only: a CN that looks like one would
                // match `spiffe://…` patterns meant for SAN identities.
                if cn.contains("://") {
                    return Err(IdentityError::CnLooksLikeUri);
                }
                cn
            }
        };
        if id.is_empty() || id.len() > MAX_ID_LEN || id.chars().any(char::is_control) {
            return Err(IdentityError::BadName);
        }
        Ok(Identity {
            id,
            certificate_role: role,
            serial: cert.raw_serial_as_string().replace(':', ""),
            not_after: cert.validity().not_after.timestamp(),
        })
    }
}

/// Strict DER `UTF8String` decoder (the inverse of `pki::encode_utf8_string_der`): exactly one DER `UTF8String` with a minimal
/// definite length, valid UTF-8 and no trailing bytes; `None` otherwise.
pub fn decode_utf8_string_der(der: &[u8]) -> Option<&str> {
    let (&tag, rest) = der.split_first()?;
    if tag != 0x0C {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        // 0x80 (indefinite) is not DER; more octets than a usize holds cannot be real.
        let n = usize::from(first & 0x7f);
        if n == 0 || n > size_of::<usize>() || rest.len() < n {
            return None;
        }
        let (len_octets, rest) = rest.split_at(n);
        if len_octets.first() == Some(&0) {
            return None; // non-minimal
        }
        let len = len_octets
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        if len < 0x80 {
            return None; // should have used the short form
        }
        (len, rest)
    };
    if rest.len() != len {
        return None;
    }
    std::str::from_utf8(rest).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, CertSpec};

    #[test]
    fn the_uri_san_wins_over_the_cn() {
        let ca = Ca::generate("t", 1).expect("ca");
        let cert = ca
            .issue_client(&CertSpec::new("hmi-01", 1).with_uri("spiffe://plant1/line1/hmi/hmi-01"))
            .expect("cert");
        let id = Identity::from_certificate(&cert.cert_der).expect("identity");
        assert_eq!(id.id, "spiffe://plant1/line1/hmi/hmi-01");
        assert_eq!(id.certificate_role, None);
        assert!(!id.serial.is_empty() && !id.serial.contains(':'));
    }

    #[test]
    fn the_cn_is_the_identity_without_a_uri_and_the_role_extension_is_read() {
        let ca = Ca::generate("t", 1).expect("ca");
        let cert = ca
            .issue_client(&CertSpec::new("historian-01", 1).with_role("historian"))
            .expect("cert");
        let id = Identity::from_certificate(&cert.cert_der).expect("identity");
        assert_eq!(id.id, "historian-01");
        assert_eq!(id.certificate_role.as_deref(), Some("historian"));
    }

    #[test]
    fn a_cn_that_looks_like_a_uri_is_refused() {
        let ca = Ca::generate("t", 1).expect("ca");
        let cert = ca
            .issue_client(&CertSpec::new("spiffe://plant1/eng/x", 1))
            .expect("cert");
        assert_eq!(
            Identity::from_certificate(&cert.cert_der),
            Err(IdentityError::CnLooksLikeUri)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Identity::from_certificate(&[]).is_err());
        assert!(Identity::from_certificate(&[0x30, 0x82, 0xFF]).is_err());
    }

    #[test]
    fn utf8_string_is_exact() {
        assert_eq!(decode_utf8_string_der(&[0x0C, 2, b'o', b'p']), Some("op"));
        assert_eq!(decode_utf8_string_der(&[0x0C, 3, b'o', b'p']), None);
        assert_eq!(decode_utf8_string_der(&[0x0C, 1, b'o', b'p']), None);
        assert_eq!(decode_utf8_string_der(&[0x13, 2, b'o', b'p']), None);
        let mut long = vec![0x0C, 0x81, 200];
        long.extend(std::iter::repeat_n(b'a', 200));
        assert_eq!(decode_utf8_string_der(&long).map(str::len), Some(200));
        assert_eq!(
            decode_utf8_string_der(&[0x0C, 0x81, 5, b'a', b'b', b'c', b'd', b'e']),
            None
        );
    }
}
