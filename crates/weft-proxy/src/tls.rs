//! Mesh TLS. Server side: terminating mTLS for connections whose ClientHello
//! names this proxy's identity (SNI), with the client's certificate verified
//! against the trust anchors. Client side: originating mTLS to an endpoint
//! that has an identity, with SNI set to it and the server's certificate
//! verified against exactly that identity. TLS 1.3 only, rustls with ring.
//!
//! Configurations are rebuilt only when the credentials change (a renewal),
//! not per connection.

use std::sync::Arc;

use parking_lot::Mutex;

use rustls::ClientConfig;
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::ServerName;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DistinguishedName, ServerConfig};
use tokio::io::AsyncWriteExt;
use tracing::warn;
use weft_identity::Identity;
use weft_identity::tls::{IdentityVerifier, certificate_error};
use weft_identity::verify::TrustAnchors;

use crate::transport_header::{ALPN as TRANSPORT_HEADER_ALPN, TransportHeader};
use weft_identity::certify::{Credentials, CredentialsWatch};

/// The rustls configurations of mesh TLS, both directions, from the current
/// credentials (rebuilt only when they are renewed).
pub struct MeshTlsConfigs {
    creds: CredentialsWatch,
    provider: Arc<CryptoProvider>,
    verifier: Arc<MeshClientVerifier>,
    server_verifier: Arc<IdentityVerifier>,
    cached: Mutex<Option<(Arc<Credentials>, Arc<ServerConfig>)>>,
    cached_client: Mutex<Option<(Arc<Credentials>, ClientConfigs)>>,
}

/// Client configurations for one certificate: plain mesh TLS, and mesh TLS
/// offering the transport-header ALPN.
#[derive(Clone)]
struct ClientConfigs {
    plain: Arc<ClientConfig>,
    transport_header: Arc<ClientConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum MeshConnectError {
    #[error(
        "this proxy has no certificate yet, and meshed endpoints are never reached in plaintext"
    )]
    NoCertificate,
    #[error("mesh TLS with {identity} failed: {source}")]
    Handshake {
        identity: Identity,
        source: std::io::Error,
    },
    #[error("cannot configure mesh TLS: {0}")]
    Config(String),
    #[error("{identity} did not accept Linkerd's transport header (ALPN transport.l5d.io/v1)")]
    NoTransportHeader { identity: Identity },
    #[error("writing the transport header to {identity} failed: {source}")]
    TransportHeader {
        identity: Identity,
        source: std::io::Error,
    },
}

impl std::fmt::Debug for MeshTlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshTlsConfigs").finish_non_exhaustive()
    }
}

impl MeshTlsConfigs {
    pub fn new(creds: CredentialsWatch, anchors: TrustAnchors) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let verifier = Arc::new(MeshClientVerifier {
            anchors: anchors.clone(),
            algorithms,
        });
        let server_verifier = Arc::new(IdentityVerifier::new(anchors, &provider));
        MeshTlsConfigs {
            creds,
            provider,
            verifier,
            server_verifier,
            cached: Mutex::new(None),
            cached_client: Mutex::new(None),
        }
    }

    /// This proxy's identity, once it holds a certificate.
    pub fn local_identity(&self) -> Option<Identity> {
        self.creds.borrow().as_ref().map(|c| c.identity.clone())
    }

    /// The server configuration for the current certificate.
    pub fn server_config(&self) -> Option<Arc<ServerConfig>> {
        let creds = self.creds.borrow().clone()?;
        let mut cached = self.cached.lock();
        if let Some((c, config)) = cached.as_ref()
            && Arc::ptr_eq(c, &creds)
        {
            return Some(config.clone());
        }
        let (chain, key) = certified_key(&creds);
        let config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map(|b| b.with_client_cert_verifier(self.verifier.clone()))
            .and_then(|b| b.with_single_cert(chain, key));
        match config {
            Ok(mut config) => {
                config.alpn_protocols = vec![TRANSPORT_HEADER_ALPN.to_vec()];
                let config = Arc::new(config);
                *cached = Some((creds, config.clone()));
                Some(config)
            }
            Err(e) => {
                warn!(error = %e, "cannot build the mesh TLS server configuration");
                None
            }
        }
    }
}

impl MeshTlsConfigs {
    fn client_configs(&self) -> Result<ClientConfigs, MeshConnectError> {
        let creds = self
            .creds
            .borrow()
            .clone()
            .ok_or(MeshConnectError::NoCertificate)?;
        let mut cached = self.cached_client.lock();
        if let Some((c, config)) = cached.as_ref()
            && Arc::ptr_eq(c, &creds)
        {
            return Ok(config.clone());
        }
        let (chain, key) = certified_key(&creds);
        let plain = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| MeshConnectError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(self.server_verifier.clone())
            .with_client_auth_cert(chain, key)
            .map_err(|e| MeshConnectError::Config(e.to_string()))?;
        let mut transport_header = plain.clone();
        transport_header.alpn_protocols = vec![TRANSPORT_HEADER_ALPN.to_vec()];
        let configs = ClientConfigs {
            plain: Arc::new(plain),
            transport_header: Arc::new(transport_header),
        };
        *cached = Some((creds, configs.clone()));
        Ok(configs)
    }

    /// mTLS to an endpoint that must prove `server` (never plaintext). With a
    /// transport header, the server must accept its ALPN and the header is
    /// written before any payload.
    pub async fn connect<I>(
        &self,
        io: I,
        server: &Identity,
        header: Option<&TransportHeader>,
    ) -> Result<tokio_rustls::client::TlsStream<I>, MeshConnectError>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let configs = self.client_configs()?;
        let config = match header {
            Some(_) => configs.transport_header,
            None => configs.plain,
        };
        let name = ServerName::try_from(server.to_string())
            .map_err(|e| MeshConnectError::Config(e.to_string()))?;
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, io)
            .await
            .map_err(|source| MeshConnectError::Handshake {
                identity: server.clone(),
                source,
            })?;
        if let Some(header) = header {
            if tls.get_ref().1.alpn_protocol() != Some(TRANSPORT_HEADER_ALPN) {
                return Err(MeshConnectError::NoTransportHeader {
                    identity: server.clone(),
                });
            }
            tls.write_all(&header.encode()).await.map_err(|source| {
                MeshConnectError::TransportHeader {
                    identity: server.clone(),
                    source,
                }
            })?;
        }
        Ok(tls)
    }
}

fn certified_key(creds: &Credentials) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    weft_identity::tls::chain_and_key(&creds.leaf_der, &creds.chain, &creds.key_der)
}

/// Accepts client certificates that chain to the trust anchors.
#[derive(Debug)]
struct MeshClientVerifier {
    anchors: TrustAnchors,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.anchors
            .verify_chain(
                end_entity,
                intermediates,
                weft_identity::tls::unix(now),
                weft_identity::verify::Usage::Client,
            )
            .map(|_| ClientCertVerified::assertion())
            .map_err(certificate_error)
    }

    weft_identity::handshake_signatures!();
}

/// The client's identity from its verified certificate.
pub fn peer_identity(conn: &rustls::ServerConnection) -> Option<Identity> {
    weft_identity::verify::identity_of(conn.peer_certificates()?.first()?)
}

/// Whether the client negotiated a transport header on this connection.
pub fn expects_transport_header(conn: &rustls::ServerConnection) -> bool {
    conn.alpn_protocol() == Some(TRANSPORT_HEADER_ALPN)
}
