//! Opaque TCP: connect to the target and copy bytes both ways.
//!
//! Half-close is preserved: when one side finishes sending, the other side's
//! write half is shut down and the opposite direction keeps flowing. A
//! connection idle in both directions for the configured time is closed.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use weft_identity::Identity;

use crate::io::Metered;
use crate::metrics::Direction;
use crate::metrics::{Metrics, Peer, TcpConn, TcpLabels, Tls};
use crate::tls::{MeshConnectError, MeshTls};
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

/// Opens connections to endpoints: TCP with a timeout, then mesh TLS for an
/// endpoint with a known identity (never plaintext to such an endpoint).
#[derive(Debug)]
pub struct Dialer {
    pub metrics: Arc<Metrics>,
    pub inbound_connect_timeout: Duration,
    pub outbound_connect_timeout: Duration,
    /// Meshed outbound endpoints: configured statically, and learned from
    /// the destination service. An address keeps the identity it was last
    /// given (addresses are not reused across identities within a mesh).
    pub outbound_identities: RwLock<HashMap<SocketAddr, MeshEndpoint>>,
    pub mesh: Option<Arc<MeshTls>>,
}

impl Dialer {
    /// The identity an endpoint must prove, if it is meshed.
    pub fn identity(&self, direction: Direction, addr: SocketAddr) -> Option<Identity> {
        self.mesh_endpoint(direction, addr).map(|e| e.identity)
    }

    fn mesh_endpoint(&self, direction: Direction, addr: SocketAddr) -> Option<MeshEndpoint> {
        match direction {
            Direction::Outbound => self
                .outbound_identities
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&addr)
                .cloned(),
            Direction::Inbound => None,
        }
    }

    /// Whether HTTP/1 requests to `addr` may travel as HTTP/2 (outbound, to
    /// a meshed endpoint whose proxy said it takes them).
    pub fn http2_upgrade(&self, addr: SocketAddr) -> bool {
        self.mesh_endpoint(Direction::Outbound, addr)
            .is_some_and(|e| e.http2_upgrade)
    }

    /// Records what discovery says about a meshed endpoint.
    pub fn learn(&self, addr: SocketAddr, endpoint: MeshEndpoint) {
        let mut map = self
            .outbound_identities
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if map.get(&addr) != Some(&endpoint) {
            map.insert(addr, endpoint);
        }
    }

    /// A connection for HTTP to `addr`.
    pub async fn connect(
        &self,
        direction: Direction,
        addr: SocketAddr,
    ) -> Result<EndpointIo, DialError> {
        self.dial(direction, addr, false).await
    }

    /// A connection for opaque bytes to `addr`: to a meshed endpoint that
    /// takes transport headers, via its proxy port with a header.
    pub async fn connect_opaque(
        &self,
        direction: Direction,
        addr: SocketAddr,
    ) -> Result<EndpointIo, DialError> {
        self.dial(direction, addr, true).await
    }

    async fn dial(
        &self,
        direction: Direction,
        addr: SocketAddr,
        opaque: bool,
    ) -> Result<EndpointIo, DialError> {
        let endpoint = self.mesh_endpoint(direction, addr);
        let (timeout, tls) = match (direction, &endpoint) {
            (Direction::Inbound, _) => (self.inbound_connect_timeout, Tls::NotProvidedByRemote),
            (Direction::Outbound, Some(e)) => (
                self.outbound_connect_timeout,
                Tls::ToServer(e.identity.as_str().into()),
            ),
            (Direction::Outbound, None) => (
                self.outbound_connect_timeout,
                Tls::NotProvidedByServiceDiscovery,
            ),
        };
        let Some(endpoint) = endpoint else {
            return Ok(EndpointIo::Plain(
                connect(&self.metrics, direction, addr, addr, timeout, tls).await?,
            ));
        };
        let mesh = self.mesh.as_ref().ok_or(MeshConnectError::NoCertificate)?;
        let (dial_addr, header) = match endpoint.opaque_transport_port {
            Some(port) if opaque => (
                SocketAddr::new(addr.ip(), port),
                Some(TransportHeader::opaque(addr.port())),
            ),
            _ => (addr, None),
        };
        let io = connect(&self.metrics, direction, dial_addr, addr, timeout, tls).await?;
        Ok(EndpointIo::Mesh(Box::new(
            mesh.connect(io, &endpoint.identity, header.as_ref())
                .await?,
        )))
    }
}

/// Copies between `client` and `server` until both directions have ended, an
/// error occurs, or nothing moves for `idle_timeout`.
pub async fn copy_bidirectional<C, S>(
    mut client: C,
    mut server: S,
    client_conn: &TcpConn,
    idle_timeout: Duration,
) -> io::Result<(u64, u64)>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let copy = tokio::io::copy_bidirectional(&mut client, &mut server);
    tokio::pin!(copy);
    let mut seen = client_conn.bytes_total();
    loop {
        tokio::select! {
            res = &mut copy => return res,
            _ = tokio::time::sleep(idle_timeout) => {
                let now = client_conn.bytes_total();
                if now == seen {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no bytes in either direction for {idle_timeout:?}"),
                    ));
                }
                seen = now;
            }
        }
    }
}
