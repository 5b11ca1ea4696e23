//! A TLS handshake of our own before the first request, to tell a member
//! that refuses the client certificate (or its absence) apart from one that
//! is down.
//!
//! With TLS 1.3 the client finishes its side of the handshake before the
//! server has looked at the client's certificate; the server's refusal then
//! arrives as an alert after the client has started to talk HTTP/2, and the
//! gRPC client mostly sees only a broken pipe. Here nothing is written after
//! the handshake: the member either sends its HTTP/2 settings (accepted) or
//! the alert (refused), and reading tells which.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::url::{handshake_failure, HandshakeFailure, TlsFiles};

/// How long to wait for the member's first bytes after the handshake.
const FIRST_READ: Duration = Duration::from_secs(2);

/// Handshakes with `endpoint` (`https://host:port`) using `files`; `Some`
/// when the handshake or the first read fails the way a refused
/// certificate does. Anything else (unreachable, slow, odd) is `None`: the
/// gRPC client's own attempt reports it.
pub(crate) async fn probe(
    endpoint: &str,
    files: &TlsFiles,
    connect_timeout: Duration,
) -> Option<(HandshakeFailure, std::io::Error)> {
    // Only with a CA of our own: with the system's roots there is nothing
    // here to trust the member by.
    let ca = files.ca.as_ref()?;
    let authority = endpoint.strip_prefix("https://")?;
    let (host, _) = authority.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let server_name = ServerName::try_from(host.to_owned()).ok()?;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.ok()?).ok()?;
    }
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    let mut config = match &files.identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let chain = CertificateDer::pem_slice_iter(&id.cert)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(id.key()).ok()?;
            builder.with_client_auth_cert(chain, key).ok()?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let attempt = async {
        let tcp = TcpStream::connect(authority).await.ok()?;
        let mut tls = match connector.connect(server_name, tcp).await {
            Ok(tls) => tls,
            Err(e) => return handshake_failure(&e).map(|f| (f, e)),
        };
        let mut first = [0u8; 64];
        match tokio::time::timeout(FIRST_READ, tls.read(&mut first)).await {
            Ok(Err(e)) => handshake_failure(&e).map(|f| (f, e)),
            _ => None,
        }
    };
    let limit = connect_timeout
        .checked_add(FIRST_READ)
        .unwrap_or(connect_timeout);
    tokio::time::timeout(limit, attempt).await.ok().flatten()
}
