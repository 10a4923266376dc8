//! The dialer: every connection the proxy opens goes through it. Inbound,
//! plain TCP to the application; outbound, TCP with a timeout and then mesh
//! TLS for an endpoint with a known identity (never plaintext to one).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use parking_lot::RwLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_identity::Identity;

use crate::io::Metered;
use crate::metrics::{Direction, Metrics, Peer, TcpConn, TcpLabels, Tls};
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

/// Opens a TCP connection to `addr`, counted as `peer="dst"` towards
/// `target` (which differs when a transport header carries the real port).
async fn connect(
    metrics: &Arc<Metrics>,
    direction: Direction,
    addr: SocketAddr,
    target: SocketAddr,
    timeout: Duration,
    tls: Tls,
) -> Result<Metered<TcpStream>, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Failed { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Small writes (request heads, gRPC frames) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let conn = metrics.tcp_open(TcpLabels::new(
        direction,
        Peer::Dst,
        target.to_string(),
        tls,
    ));
    Ok(Metered::new(stream, conn))
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

    /// Inbound: a plain connection to the application at `addr`.
    pub async fn connect_local(&self, addr: SocketAddr) -> Result<EndpointIo, DialError> {
        let io = connect(
            &self.metrics,
            Direction::Inbound,
            addr,
            addr,
            self.inbound_connect_timeout,
            Tls::NotProvidedByRemote,
        )
        .await?;
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
        let connect = |dial_addr, tls| {
            connect(
                &self.metrics,
                Direction::Outbound,
                dial_addr,
                addr,
                timeout,
                tls,
            )
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
