//! Where a redirected connection was going before iptables sent it to us.
//!
//! The `REDIRECT` target rewrites the destination and records the original in the
//! connection-tracking entry; `SO_ORIGINAL_DST` (IPv4) and `IP6T_SO_ORIGINAL_DST`
//! (IPv6) read it back. A connection that was not redirected has no such entry (or
//! one naming our own address); callers compare with the local address to tell.

use std::io;
use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// The original destination, or the local address when the connection was not
/// redirected (no conntrack entry, or conntrack not loaded).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    let sock = SockRef::from(stream);
    let orig = match local {
        SocketAddr::V4(_) => sock.original_dst_v4(),
        SocketAddr::V6(_) => sock.original_dst_v6(),
    };
    match orig {
        Ok(addr) => Ok(addr.as_socket().unwrap_or(local)),
        // ENOENT: no NAT entry for this connection; ENOPROTOOPT: conntrack absent.
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ENOPROTOOPT)
            ) =>
        {
            Ok(local)
        }
        Err(e) => Err(e),
    }
}
