//! Sockets inside a network namespace made by a test.
//!
//! A socket belongs to the namespace it was created in, for its whole life.
//! `setns` changes the namespace of the calling thread only, so a short-lived
//! thread enters the namespace and creates the socket; the test then serves or
//! uses it from its own runtime like any other.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

/// Runs `f` on a thread inside the namespace `/var/run/netns/<name>`.
pub fn run_in<T, F>(name: &str, f: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> io::Result<T> + Send + 'static,
{
    let ns = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns with a valid namespace fd affects only this thread.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| io::Error::other("namespace thread panicked"))?
}

/// A listener bound inside the namespace, ready for `tokio::net::TcpListener::from_std`.
pub fn bind(name: &str, addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    run_in(name, move || {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
}
