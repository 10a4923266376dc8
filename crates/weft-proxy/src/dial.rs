//! The dialer: every connection the proxy opens goes through it. Inbound,
//! plain TCP to the application; outbound, TCP with a timeout and then mesh
//! TLS for an endpoint with a known identity (never plaintext to one).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use parking_lot::RwLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_identity::Identity;

use crate::discovery::Resolution;
use crate::io::Metered;
use crate::metrics::{Direction, DstLabels, Metrics, Peer, TcpConn, TcpLabels, Tls};

/// What discovery said about an outbound endpoint: the resolution that
/// lists it (whose authority its connections are labelled with) and its
/// `dst_*` labels.
#[derive(Clone, Debug)]
pub struct EndpointLabels {
    resolution: Weak<Resolution>,
    dst: DstLabels,
}
use crate::tls::{MeshConnectError, MeshTlsConfigs};
use crate::transport_header::TransportHeader;

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr} failed: {source}")]
    Failed { addr: SocketAddr, source: io::Error },
}

/// Opens a TCP connection to `addr`, counted as `peer="dst"` under `labels`
/// (whose target differs when a transport header carries the real port).
async fn connect(
    metrics: &Arc<Metrics>,
    addr: SocketAddr,
    labels: TcpLabels,
    timeout: Duration,
) -> Result<Metered<TcpStream>, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Failed { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Small writes (request heads, gRPC frames) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    Ok(Metered::new(stream, metrics.tcp_open(labels)))
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(transparent)]
    Mesh(#[from] MeshConnectError),
}

/// A connection to an endpoint: plaintext, or mesh TLS when the endpoint has
/// an identity.
pub enum EndpointIo {
    Plain(Metered<TcpStream>),
    Mesh(Box<tokio_rustls::client::TlsStream<Metered<TcpStream>>>),
}

impl EndpointIo {
    pub fn conn(&self) -> &Arc<TcpConn> {
        match self {
            EndpointIo::Plain(io) => io.conn(),
            EndpointIo::Mesh(io) => io.get_ref().0.conn(),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $call:expr) => {
        match $self.get_mut() {
            EndpointIo::Plain($io) => {
                let $io = Pin::new($io);
                $call
            }
            EndpointIo::Mesh($io) => {
                let $io = Pin::new($io.as_mut());
                $call
            }
        }
    };
}

impl AsyncRead for EndpointIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for EndpointIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            EndpointIo::Plain(io) => io.is_write_vectored(),
            EndpointIo::Mesh(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// What the proxy knows about a meshed endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeshEndpoint {
    /// The identity its certificate must prove.
    pub identity: Identity,
    /// The port of its proxy's inbound listener: opaque TCP is sent there,
    /// inside mesh TLS, with a transport header naming the real port.
    pub opaque_transport_port: Option<u16>,
    /// Its proxy takes HTTP/1 requests multiplexed over one HTTP/2
    /// connection (the `h2` protocol hint, Linkerd's `l5d-orig-proto`).
    pub http2_upgrade: bool,
}

/// Opens connections: to the local application (inbound), and to endpoints
/// (outbound: TCP with a timeout, then mesh TLS for an endpoint with a known
/// identity, never plaintext to such an endpoint).
#[derive(Debug)]
pub struct Dialer {
    pub metrics: Arc<Metrics>,
    pub inbound_connect_timeout: Duration,
    pub outbound_connect_timeout: Duration,
    /// Meshed endpoints: configured statically, and learned from
    /// the destination service. An address keeps the identity it was last
    /// given (addresses are not reused across identities within a mesh).
    pub outbound_identities: RwLock<HashMap<SocketAddr, MeshEndpoint>>,
    /// Each discovered endpoint's resolution and `dst_*` labels, for its
    /// connections' metrics; kept while its resolution lists it.
    pub endpoint_labels: RwLock<HashMap<SocketAddr, EndpointLabels>>,
    pub mesh: Option<Arc<MeshTlsConfigs>>,
}

impl Dialer {
    /// The identity an outbound endpoint must prove, if it is meshed.
    pub fn identity(&self, addr: SocketAddr) -> Option<Identity> {
        self.mesh_endpoint(addr).map(|e| e.identity)
    }

    fn mesh_endpoint(&self, addr: SocketAddr) -> Option<MeshEndpoint> {
        self.outbound_identities.read().get(&addr).cloned()
    }

    /// Whether HTTP/1 requests to `addr` may travel as HTTP/2 (a meshed
    /// endpoint whose proxy said it takes them).
    pub fn http2_upgrade(&self, addr: SocketAddr) -> bool {
        self.mesh_endpoint(addr).is_some_and(|e| e.http2_upgrade)
    }

    /// Records what discovery says about a meshed endpoint.
    pub fn learn(&self, addr: SocketAddr, endpoint: MeshEndpoint) {
        let mut map = self.outbound_identities.write();
        if map.get(&addr) != Some(&endpoint) {
            map.insert(addr, endpoint);
        }
    }

    /// Records the labels of a resolution's endpoints: `gone` are the ones
    /// it listed before and no longer does.
    pub fn learn_labels<'a>(
        &self,
        resolution: &Weak<Resolution>,
        endpoints: impl Iterator<Item = (&'a SocketAddr, &'a DstLabels)>,
        gone: impl Iterator<Item = SocketAddr>,
    ) {
        let mut map = self.endpoint_labels.write();
        for addr in gone {
            if map
                .get(&addr)
                .is_some_and(|e| Weak::ptr_eq(&e.resolution, resolution))
            {
                map.remove(&addr);
            }
        }
        for (addr, dst) in endpoints {
            let fresh = map
                .get(addr)
                .is_none_or(|e| !Weak::ptr_eq(&e.resolution, resolution) || e.dst != *dst);
            if fresh {
                let labels = EndpointLabels {
                    resolution: resolution.clone(),
                    dst: dst.clone(),
                };
                map.insert(*addr, labels);
            }
        }
    }

    /// Inbound: a plain connection to the application at `addr`.
    pub async fn connect_local(&self, addr: SocketAddr) -> Result<EndpointIo, DialError> {
        let labels = TcpLabels::new(Direction::Inbound, Peer::Dst, addr, Tls::Loopback);
        let io = connect(&self.metrics, addr, labels, self.inbound_connect_timeout).await?;
        Ok(EndpointIo::Plain(io))
    }

    /// Outbound: a connection for HTTP to the endpoint `addr`.
    pub async fn connect(&self, addr: SocketAddr) -> Result<EndpointIo, DialError> {
        self.dial(addr, false).await
    }

    /// Outbound: a connection for opaque bytes to `addr`; to a meshed
    /// endpoint that takes transport headers, via its proxy port with a header.
    pub async fn connect_opaque(&self, addr: SocketAddr) -> Result<EndpointIo, DialError> {
        self.dial(addr, true).await
    }

    async fn dial(&self, addr: SocketAddr, opaque: bool) -> Result<EndpointIo, DialError> {
        let timeout = self.outbound_connect_timeout;
        let learned = self.endpoint_labels.read().get(&addr).and_then(|e| {
            let authority = e.resolution.upgrade()?.authority();
            Some((authority, e.dst.clone()))
        });
        let connect = |dial_addr, tls| {
            let labels = TcpLabels::new(Direction::Outbound, Peer::Dst, addr, tls);
            let labels = match &learned {
                Some((authority, dst)) => labels.with_endpoint(authority.clone(), dst.clone()),
                None => labels,
            };
            connect(&self.metrics, dial_addr, labels, timeout)
        };
        let Some(endpoint) = self.mesh_endpoint(addr) else {
            let io = connect(addr, Tls::NotProvidedByServiceDiscovery).await?;
            return Ok(EndpointIo::Plain(io));
        };
        let mesh = self.mesh.as_ref().ok_or(MeshConnectError::NoCertificate)?;
        let (dial_addr, header) = match endpoint.opaque_transport_port {
            Some(port) if opaque => (
                SocketAddr::new(addr.ip(), port),
                Some(TransportHeader::opaque(addr.port())),
            ),
            _ => (addr, None),
        };
        let tls = Tls::ToServer(endpoint.identity.as_str().into());
        let io = connect(dial_addr, tls).await?;
        Ok(EndpointIo::Mesh(Box::new(
            mesh.connect(io, &endpoint.identity, header.as_ref())
                .await?,
        )))
    }
}
