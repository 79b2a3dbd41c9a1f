//! TLS to the server: which certificates the client trusts, and the connector that dials it.
//!
//! tonic's own TLS settings cannot pin a certificate, so the client builds its rustls
//! configuration itself and hands tonic a connector that opens the TCP connection and runs the
//! TLS handshake; the channel then speaks HTTP/2 over it. Three ways to trust the server:
//! - the system's roots (the default: a server with a certificate from a public CA);
//! - `--ca-file PEM`: only the CAs in that file (a private CA);
//! - `--pin sha256:HEX`: exactly the certificate with that fingerprint, which the server prints
//!   when it starts (a self-signed certificate, as Syncthing's device ids are). The name in the
//!   URL is then not checked against the certificate: the pin says more than a name. Several
//!   fingerprints, separated by commas, trust any of them: the servers of one store, each with
//!   its own certificate, for a client that fails over between them.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tonic::codegen::http::Uri;

use crate::error::{Error, Result};

/// Which server certificates are trusted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Trust {
    /// Trust only the CAs in this PEM file (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Trust exactly the certificates with these fingerprints (`sha256:...`, comma-separated).
    pub pin: Option<String>,
}

/// A TLS failure the person can fix (a certificate that is not trusted, a pin that does not
/// match, a port that does not speak TLS): carried through tonic's error chain so that the
/// client says what happened instead of retrying as if the server were offline.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsFailure(pub String);

/// How the client dials TLS: the rustls configuration and the name the certificate must have.
#[derive(Clone)]
pub struct Dialer {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
    host: String,
    port: u16,
}

impl Dialer {
    /// The dialer for the server at `uri` (an `https://` URL), trusting what `trust` says.
    pub fn new(uri: &Uri, trust: &Trust) -> Result<Self> {
        let host = uri
            .host()
            .ok_or_else(|| Error::BadUrl(uri.to_string()))?
            // An IPv6 literal comes bracketed.
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name =
            ServerName::try_from(host.clone()).map_err(|_| Error::BadUrl(uri.to_string()))?;
        Ok(Self {
            config: Arc::new(client_config(trust)?),
            name,
            port: uri.port_u16().unwrap_or(443),
            host,
        })
    }

    /// Opens a TCP connection and runs the TLS handshake over it.
    pub async fn dial(
        &self,
    ) -> std::io::Result<TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>> {
        let connect = tokio::net::TcpStream::connect((self.host.as_str(), self.port));
        let tcp = tokio::time::timeout(Duration::from_secs(5), connect)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })??;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.config.clone());
        let handshake = tls.connect(self.name.clone(), tcp);
        match tokio::time::timeout(Duration::from_secs(10), handshake).await {
            Ok(Ok(s)) => Ok(TokioIo::new(s)),
            Ok(Err(e)) => Err(explain(e)),
            Err(_) => Err(std::io::Error::other(TlsFailure(
                "the TLS handshake got no answer in 10 s: the server may not speak TLS on this \
                 port (then use an http:// URL)"
                    .into(),
            ))),
        }
    }
}

/// Whether the server at `uri` (an `http://` URL that failed) speaks TLS: a handshake against a
/// pin nothing matches gets as far as the server's certificate only from a TLS server.
pub async fn speaks_tls(uri: &Uri) -> bool {
    let probe = Trust {
        ca_file: None,
        pin: Some(format!("sha256:{}", "00".repeat(32))),
    };
    let Ok(dialer) = Dialer::new(uri, &probe) else {
        return false;
    };
    let dialer = Dialer {
        port: uri.port_u16().unwrap_or(80),
        ..dialer
    };
    match dialer.dial().await {
        Ok(_) => true,
        Err(e) => failure_in(&e).is_some_and(|why| why.contains("not the pinned one")),
    }
}

/// The rustls configuration for `trust`, offering HTTP/2 by ALPN.
fn client_config(trust: &Trust) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Usage(format!("TLS setup: {e}")))?;
    let mut config = if let Some(pin) = &trust.pin {
        let pins = lbsync_proto::tls::parse_pins(pin).map_err(Error::Usage)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { pins, provider }))
            .with_no_client_auth()
    } else {
        let roots = match &trust.ca_file {
            Some(file) => roots_from(file)?,
            None => system_roots()?,
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The CA certificates of a PEM file.
fn roots_from(file: &Path) -> Result<rustls::RootCertStore> {
    let bad = |why: String| Error::Usage(format!("--ca-file {}: {why}", file.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .map_err(|e| bad(format!("cannot read it ({e})")))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(format!("not a PEM certificate file ({e})")))?;
    if certs.is_empty() {
        return Err(bad("it holds no certificate (BEGIN CERTIFICATE)".into()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots
            .add(c)
            .map_err(|e| bad(format!("a certificate in it is unusable ({e})")))?;
    }
    Ok(roots)
}

/// The system's trusted roots.
fn system_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(Error::Usage(format!(
            "this system has no trusted CA certificates to check the server with{}: pass \
             --ca-file with the server's CA, or --pin with its fingerprint",
            found
                .errors
                .first()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        )));
    }
    Ok(roots)
}

/// A handshake error in words, with what to do about it.
fn explain(e: std::io::Error) -> std::io::Error {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return e;
    };
    let why = match tls {
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer | rustls::CertificateError::BadSignature,
        ) => "the server's certificate is not signed by a CA this client trusts: pass --ca-file \
             with its CA, or --pin with the fingerprint the server printed when it started"
            .to_owned(),
        rustls::Error::InvalidCertificate(
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is for another name than the one in the URL: use the \
              name it was made for, or --pin with its fingerprint"
            .to_owned(),
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.to_string()
        }
        rustls::Error::InvalidMessage(_) => {
            "the server does not speak TLS on this port: use an http:// URL, or start the \
             server with TLS"
                .to_owned()
        }
        other => format!("TLS handshake failed: {other}"),
    };
    std::io::Error::other(TlsFailure(why))
}

/// The TLS failure in an error's chain, if there is one.
pub fn failure_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(f) = err.downcast_ref::<TlsFailure>() {
            return Some(f.0.clone());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(f) = io.get_ref().and_then(|i| i.downcast_ref::<TlsFailure>())
        {
            return Some(f.0.clone());
        }
        cur = err.source();
    }
    None
}

/// Trusts the certificates whose SHA-256 is one of `pins`; signatures are checked as usual.
#[derive(Debug)]
struct Pinned {
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

/// The mismatch, as rustls carries it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the server's certificate is {found}, not the pinned one: check --pin against the \
     fingerprint the server printed when it started (its certificate may have been replaced)"
)]
struct PinMismatch {
    found: String,
}

impl Pinned {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.provider.signature_verification_algorithms
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let found = lbsync_proto::tls::sha256(end_entity.as_ref());
        // Not secret: the certificate is public, and so is its fingerprint.
        if self.pins.contains(&found) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch {
                    found: lbsync_proto::tls::fingerprint(end_entity.as_ref()),
                }))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_trust_settings_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let trust = |ca: &Path| Trust {
            ca_file: Some(ca.to_path_buf()),
            pin: None,
        };
        let err = client_config(&trust(&empty)).unwrap_err().to_string();
        assert!(err.contains("holds no certificate"), "{err}");
        let err = client_config(&trust(&dir.path().join("missing.pem")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read it"), "{err}");
        let pin = Trust {
            ca_file: None,
            pin: Some("sha256:abc".into()),
        };
        assert!(
            client_config(&pin)
                .unwrap_err()
                .to_string()
                .contains("bad pin")
        );
    }
}
