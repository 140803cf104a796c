//! `ssl.ca_trusted_fingerprint`: trust the CA whose certificate has this SHA-256, as Beats and
//! Elastic Agent do for clusters with a self-made CA ("the fingerprint printed when
//! Elasticsearch first starts").
//!
//! The `elasticsearch` crate's rustls backend takes trusted CAs, not a pin. So before the first
//! request to a node we open one TLS connection that only records the certificate chain the
//! server presents, find in it the certificate whose SHA-256 is the pin, and from then on trust
//! that certificate as a CA with full verification (chain and host name). Nothing is sent on
//! that first connection. A chain without the pinned certificate is an error naming the
//! fingerprints it did hold, so an operator can see what was pinned wrong.
//!
//! Format accepted: 64 hex digits, upper or lower case, with or without `:` separators.
//! Failures are [`PinError`]s naming the host they came from.

use std::sync::Arc;
use std::time::Duration;

use elasticsearch::http::Url;
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{DigitallySignedStruct, SignatureScheme};

/// Why the pinned CA could not be found. The caller prefixes the node it was looking at.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("the URL has no host")]
    NoHost,
    #[error("no TLS answer within {0:?}")]
    Timeout(Duration),
    #[error("TLS setup: {0}")]
    Tls(#[source] rustls::Error),
    #[error("{host:?} is not a name to verify a certificate for")]
    ServerName { host: String },
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("TLS handshake with {host}:{port} failed: {source}")]
    Handshake {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error("no certificate the server presented matches ssl.ca_trusted_fingerprint {pin}; it presented {presented}")]
    NoMatch { pin: String, presented: String },
}

/// Parses the option's value; None if it is not 64 hex digits.
pub fn parse(text: &str) -> Option<[u8; 32]> {
    let digits: String = text.trim().chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(digits.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The DER of the certificate in `url`'s chain whose SHA-256 is `pin`.
pub async fn pinned_certificate(
    url: &Url,
    pin: [u8; 32],
    timeout: Duration,
) -> Result<Vec<u8>, PinError> {
    let host = url.host_str().ok_or(PinError::NoHost)?.to_owned();
    let port = url.port_or_known_default().unwrap_or(9200);
    let chain = tokio::time::timeout(timeout, presented_chain(&host, port))
        .await
        .map_err(|_| PinError::Timeout(timeout))??;
    let digests: Vec<[u8; 32]> = chain.iter().map(|c| Sha256::digest(c).into()).collect();
    match digests.iter().position(|d| *d == pin) {
        Some(at) => Ok(chain[at].clone()),
        None => Err(PinError::NoMatch {
            pin: hex(&pin),
            presented: digests
                .iter()
                .map(|d| hex(d))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

async fn presented_chain(host: &str, port: u16) -> Result<Vec<Vec<u8>>, PinError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(PinError::Tls)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RecordOnly { provider }))
        .with_no_client_auth();
    let name = ServerName::try_from(host.to_owned()).map_err(|_| PinError::ServerName {
        host: host.to_owned(),
    })?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| PinError::Connect {
            host: host.to_owned(),
            port,
            source,
        })?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|source| PinError::Handshake {
            host: host.to_owned(),
            port,
            source,
        })?;
    let chain = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.as_ref().to_vec()).collect())
        .unwrap_or_default();
    Ok(chain)
}

/// Accepts any chain (the pin is checked on what it recorded, and the real connections verify
/// fully), but still checks the handshake signatures, so the peer holds the leaf's key.
#[derive(Debug)]
struct RecordOnly {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for RecordOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons_in_any_case() {
        let plain = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse(&plain), Some([0xab; 32]));
        assert_eq!(parse(&colons), Some([0xab; 32]));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse(&"zz".repeat(32)), None);
        assert_eq!(parse(&"é".repeat(32)), None);
    }
}
