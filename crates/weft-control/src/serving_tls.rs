//! TLS for the control plane's own gRPC services.
//!
//! Each service proves a mesh identity
//! (`identity.weft.serviceaccount.identity.weft.cluster.local`, ...). Only the
//! identity service holds the issuer key, so only it issues its own
//! certificate ([`ServingIdentity`]): a fresh key, signed by the current
//! issuer, re-issued when 70% of its life has passed and when the issuer
//! changes (rotation), checked at each handshake, so no timer task is needed.
//! Every other service ([`CertifiedIdentity`]) is a workload like any other:
//! it proves its identity with a token to the identity service's Certify,
//! as a proxy does, and renews the same way. Proxies verify either against
//! the trust anchors and the configured name, exactly as they verify a
//! meshed peer.
//!
//! Handshakes run in their own tasks with a deadline, so a client that
//! stalls mid-handshake cannot hold up the accept loop or other clients.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};
use weft_identity::Identity;
use weft_identity::ca::Ca;

use crate::identity::CaSource;

/// A client must finish its handshake within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Re-issue when this share of the certificate's life has passed.
const RENEW_AT: f64 = 0.7;

/// The certificate a control-plane service presents, issued by itself.
pub struct ServingIdentity {
    name: Identity,
    ca: Arc<CaSource>,
    current: Mutex<Issued>,
}

struct Issued {
    key: Arc<CertifiedKey>,
    /// The CA that signed it: a different one means the issuer rotated.
    by: Arc<Ca>,
    renew_at: SystemTime,
}

impl std::fmt::Debug for ServingIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingIdentity")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn issue(ca: Arc<Ca>, name: &Identity) -> anyhow::Result<Issued> {
    let (key, csr) = weft_identity::csr::new_key_and_csr(name)?;
    let now = SystemTime::now();
    let leaf = ca.sign(&csr, name, now)?;
    let certified =
        weft_identity::tls::certified_key(&leaf.cert_der, &leaf.chain, &key.serialize_der())?;
    let life = leaf.valid_until.duration_since(now).unwrap_or_default();
    info!(identity = %name, valid_for = ?life, "issued the service's own certificate");
    Ok(Issued {
        key: Arc::new(certified),
        by: ca,
        renew_at: now + life.mul_f64(RENEW_AT),
    })
}

impl ServingIdentity {
    pub fn new(name: Identity, ca: Arc<CaSource>) -> anyhow::Result<Arc<Self>> {
        let issued =
            issue(ca.get(), &name).with_context(|| format!("issuing a certificate for {name}"))?;
        Ok(Arc::new(ServingIdentity {
            name,
            ca,
            current: Mutex::new(issued),
        }))
    }

    /// The current certificate, re-issued first if it is due or the issuer
    /// changed. A failed re-issue keeps the old one (and says so).
    fn current(&self) -> Arc<CertifiedKey> {
        let ca = self.ca.get();
        let mut current = self.current.lock();
        if !Arc::ptr_eq(&ca, &current.by) || SystemTime::now() >= current.renew_at {
            match issue(ca, &self.name) {
                Ok(issued) => *current = issued,
                Err(e) => {
                    warn!(identity = %self.name, error = format!("{e:#}"), "cannot re-issue the service's certificate; keeping the current one")
                }
            }
        }
        current.key.clone()
    }
}

impl ResolvesServerCert for ServingIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// A TLS connection from a control-plane client, as tonic serves it.
pub struct TlsConn {
    tls: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
    local: SocketAddr,
}

impl Connected for TlsConn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: Some(self.local),
            remote_addr: Some(self.peer),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

/// A service's certificate from the identity service (Certify with a token),
/// kept current by the same renewal task proxies use.
pub struct CertifiedIdentity {
    credentials: weft_identity::certify::CredentialsWatch,
    /// The rustls form of the current credentials, made once per renewal.
    cached: Mutex<Option<(Arc<weft_identity::certify::Credentials>, Arc<CertifiedKey>)>>,
}

impl std::fmt::Debug for CertifiedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertifiedIdentity").finish_non_exhaustive()
    }
}

impl CertifiedIdentity {
    /// Asks for a certificate, waiting at most `within` for the first one.
    pub async fn obtain(
        config: weft_identity::certify::CertifyConfig,
        within: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let (name, svc) = (config.local_name.clone(), config.svc.addr.clone());
        // Outcomes are logged by the loop itself; the service keeps no
        // metrics of its own certificate.
        let mut credentials = weft_identity::certify::spawn(config, Box::new(|_| {}))?;
        info!(identity = %name, identity_service = %svc, "asking the identity service for a certificate");
        tokio::time::timeout(within, credentials.wait_for(Option::is_some))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no certificate for {name} from the identity service at {svc} within {within:?} (see the log for why)"
                )
            })?
            .context("the certificate task ended")?;
        Ok(Arc::new(CertifiedIdentity {
            credentials,
            cached: Mutex::new(None),
        }))
    }
}

impl ResolvesServerCert for CertifiedIdentity {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.credentials.borrow().clone()?;
        let mut cached = self.cached.lock();
        if let Some((creds, key)) = cached.as_ref()
            && Arc::ptr_eq(creds, &current)
        {
            return Some(key.clone());
        }
        match weft_identity::tls::certified_key(&current.leaf_der, &current.chain, &current.key_der)
        {
            Ok(key) => {
                let key = Arc::new(key);
                *cached = Some((current, key.clone()));
                Some(key)
            }
            Err(e) => {
                warn!(error = %e, "the certificate from the identity service is unusable");
                cached.as_ref().map(|(_, key)| key.clone())
            }
        }
    }
}

/// Connections accepted on `listener` that completed a TLS handshake with
/// the certificate `identity` resolves, for tonic's `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    identity: Arc<dyn ResolvesServerCert>,
) -> anyhow::Result<ReceiverStream<std::io::Result<TlsConn>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (acceptor, conns) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = conns.send(Ok(TlsConn { tls, peer, local })).await;
                    }
                    Ok(Err(e)) => info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%peer, "TLS handshake timed out"),
                }
            });
            if tx.is_closed() {
                return;
            }
        }
    });
    Ok(ReceiverStream::new(rx))
}
