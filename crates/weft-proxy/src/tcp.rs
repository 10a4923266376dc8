//! Opaque TCP: connect to the target and copy bytes both ways.
//!
//! Half-close is preserved: when one side finishes sending, the other side's
//! write half is shut down and the opposite direction keeps flowing. A
//! connection idle in both directions for the configured time is closed.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::io::Metered;
use crate::metrics::Direction;
use crate::metrics::{Metrics, Peer, TcpConn, TcpLabels, Tls};

/// Why a connection to an endpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connect to {addr} timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("connect to {addr} failed: {source}")]
    Failed { addr: SocketAddr, source: io::Error },
}

/// Opens a TCP connection to an endpoint, counted as `peer="dst"`.
pub async fn connect(
    metrics: &Arc<Metrics>,
    direction: Direction,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<Metered<TcpStream>, ConnectError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => return Err(ConnectError::Timeout { addr, timeout }),
        Ok(Err(source)) => return Err(ConnectError::Failed { addr, source }),
        Ok(Ok(s)) => s,
    };
    // Small writes (request heads, gRPC frames) must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let tls = match direction {
        Direction::Inbound => Tls::NotProvidedByRemote,
        Direction::Outbound => Tls::NotProvidedByServiceDiscovery,
    };
    let conn = metrics.tcp_open(TcpLabels::new(direction, Peer::Dst, addr.to_string(), tls));
    Ok(Metered::new(stream, conn))
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
