//! Ports for test processes.
//!
//! Binding port 0 and releasing it races with every other test doing the same:
//! the kernel may hand the port out again before the test's server binds it.
//! Instead, ports come from below Linux's ephemeral range (32768 and up, where
//! `bind(0)` and outgoing connections land), from a slice chosen by process id,
//! each checked to be free.

use std::sync::atomic::{AtomicU16, Ordering};

const FIRST: u16 = 10_000;
const SPAN: u16 = 22_000;

/// A loopback TCP port that nothing listens on now and no other test process
/// is likely to pick.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = (std::process::id() % 200) as u16 * 100;
    for _ in 0..SPAN {
        let offset = (base + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = FIRST + offset;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port between {FIRST} and {}", FIRST + SPAN)
}
