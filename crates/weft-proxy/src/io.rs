//! I/O shared by every path: byte counting for TCP metrics, and opaque
//! copying.
//!
//! Half-close is preserved when copying: when one side finishes sending, the
//! other side's write half is shut down and the opposite direction keeps
//! flowing. A connection idle in both directions for the configured time is
//! closed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::metrics::TcpConn;

/// The `AsyncWrite` methods a pin-projected wrapper passes straight to its
/// `io` field: the wrappers here change what is read or counted, never how
/// a stream flushes or shuts down.
macro_rules! pass_through_to_io {
    () => {
        fn is_write_vectored(&self) -> bool {
            self.io.is_write_vectored()
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.project().io.poll_flush(cx)
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.project().io.poll_shutdown(cx)
        }
    };
}
pub(crate) use pass_through_to_io;

pin_project_lite::pin_project! {
    /// Counts the bytes that cross `io` into the connection's TCP metrics.
    #[derive(Debug)]
    pub struct Metered<I> {
        #[pin]
        io: I,
        conn: Arc<TcpConn>,
    }
}

impl<I> Metered<I> {
    pub fn new(io: I, conn: Arc<TcpConn>) -> Self {
        Metered { io, conn }
    }

    pub fn conn(&self) -> &Arc<TcpConn> {
        &self.conn
    }
}

impl<I: AsyncRead> AsyncRead for Metered<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let res = this.io.poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) => this.conn.add_read(buf.filled().len() - before),
            Poll::Ready(Err(e)) => this.conn.set_error(e),
            Poll::Pending => {}
        }
        res
    }
}

impl<I: AsyncWrite> AsyncWrite for Metered<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write(cx, buf);
        record_write(this.conn, &res);
        res
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let res = this.io.poll_write_vectored(cx, bufs);
        record_write(this.conn, &res);
        res
    }

    pass_through_to_io!();
}

fn record_write(conn: &TcpConn, res: &Poll<io::Result<usize>>) {
    match res {
        Poll::Ready(Ok(n)) => conn.add_written(*n),
        Poll::Ready(Err(e)) => conn.set_error(e),
        Poll::Pending => {}
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
