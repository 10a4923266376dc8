//! Protocol detection: what the client speaks, decided from its first bytes.
//!
//! The bytes read here are not lost: they are handed back as the prefix of a
//! [`PrefixedIo`], which replays them before reading from the socket again. The
//! peek buffer and the wait are both bounded.
//!
//! Whatever merely *looks* like HTTP/1 is served as HTTP/1, even when it is not
//! valid or not finished when detection gives up (a slow client, a request line
//! longer than the buffer, a bare LF, a bad method): the strict HTTP/1 reader
//! then answers it (400, 408, 414, 505). Passing such bytes on as opaque TCP
//! would let a client put any header, `l5d-client-id` included, in front of
//! the application. Only bytes that are not HTTP at all become
//! [`Protocol::Opaque`]; a client that sends nothing is [`Protocol::Nothing`],
//! which the caller decides about (outbound: a server-speaks-first protocol;
//! inbound: closed unless the port is opaque by configuration).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// At most this many bytes are read before deciding.
pub const PEEK_CAPACITY: usize = 8 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// A TLS ClientHello; the prefix holds its whole first record.
    Tls,
    Opaque,
    /// No bytes before the timeout or the client's end of stream.
    Nothing,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1",
            Protocol::Http2 => "h2",
            Protocol::Tls => "tls",
            Protocol::Opaque => "opaque",
            Protocol::Nothing => "nothing",
        }
    }
}

/// What the bytes so far say.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Known(Protocol),
    NeedMore,
}

fn classify(buf: &[u8]) -> Verdict {
    // A TLS handshake record: wait for the whole record (bounded by the buffer).
    if buf.first() == Some(&0x16) && buf.get(1).is_none_or(|&major| major == 3) {
        return match buf.get(3..5) {
            Some(len) if buf.len() >= 5 + usize::from(u16::from_be_bytes([len[0], len[1]])) => {
                Verdict::Known(Protocol::Tls)
            }
            _ if buf.len() >= PEEK_CAPACITY => Verdict::Known(Protocol::Tls),
            _ => Verdict::NeedMore,
        };
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Verdict::Known(Protocol::Http2);
    }
    let h2_possible = buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf);
    if h2_possible {
        return Verdict::NeedMore;
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if is_http1_request_line(line) {
                Verdict::Known(Protocol::Http1)
            } else {
                Verdict::Known(undecided(buf))
            }
        }
        None if buf.len() >= PEEK_CAPACITY => Verdict::Known(undecided(buf)),
        None if !could_be_http1(buf) && !looks_like_http1(buf) => Verdict::Known(Protocol::Opaque),
        None => Verdict::NeedMore,
    }
}

/// What bytes that did not make a valid request line are: HTTP/1 if they look
/// like it (the strict reader will answer them), else opaque.
fn undecided(buf: &[u8]) -> Protocol {
    if buf.is_empty() {
        Protocol::Nothing
    } else if looks_like_http1(buf) {
        Protocol::Http1
    } else {
        Protocol::Opaque
    }
}

/// Methods whose name starts a line that is taken for HTTP/1 whatever follows.
const KNOWN_METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

/// Whether the first line (so far) reads as an attempt at HTTP/1: it names an
/// HTTP version, starts with a known method and a space, or is still a prefix
/// of one (a client that sent `GE` and paused).
fn looks_like_http1(buf: &[u8]) -> bool {
    let line = buf.split(|&b| b == b'\n').next().unwrap_or(buf);
    if line.windows(6).any(|w| w == b" HTTP/") {
        return true;
    }
    let complete = line.len() < buf.len();
    KNOWN_METHODS
        .iter()
        .any(|method| match line.strip_prefix(*method) {
            Some(rest) => rest.first() == Some(&b' ') || (rest.is_empty() && !complete),
            None => !complete && method.starts_with(line),
        })
}

/// `METHOD SP request-target SP HTTP/1.x` (RFC 9112 section 3).
fn is_http1_request_line(line: &[u8]) -> bool {
    let Some(sp) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let method = &line[..sp];
    !method.is_empty()
        && method.iter().all(|&b| is_tchar(b))
        && (line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0"))
        && line.len() > sp + 1 + b" HTTP/1.1".len()
}

/// Until the line ends, HTTP/1 is still possible while the first word is a token.
fn could_be_http1(buf: &[u8]) -> bool {
    match buf.iter().position(|&b| b == b' ') {
        Some(sp) => sp > 0 && buf[..sp].iter().all(|&b| is_tchar(b)),
        None => buf.iter().all(|&b| is_tchar(b)),
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Reads from `io` until the protocol is known, the buffer is full, the client
/// closes its side, or `timeout` passes; whatever was read is returned for replay.
pub async fn detect<I: AsyncRead + Unpin>(
    io: &mut I,
    timeout: Duration,
) -> io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve((PEEK_CAPACITY - buf.len()).min(buf.len()));
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        let protocol = match read {
            Err(_elapsed) => undecided(&buf),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => undecided(&buf),
            Ok(Ok(_)) => match classify(&buf) {
                Verdict::Known(p) => p,
                Verdict::NeedMore => continue,
            },
        };
        return Ok((protocol, buf.freeze()));
    }
}

/// The server name (SNI) a TLS ClientHello asks for, from the first record.
/// `None` when it names none or the record cannot be read as a ClientHello.
pub fn client_hello_sni(record: &[u8]) -> Option<String> {
    struct Reader<'a>(&'a [u8]);
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
            self.0 = rest;
            Some(head)
        }
        fn u8(&mut self) -> Option<usize> {
            self.take(1).map(|b| usize::from(b[0]))
        }
        fn u16(&mut self) -> Option<usize> {
            self.take(2)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        }
        fn vec8(&mut self) -> Option<&'a [u8]> {
            let n = self.u8()?;
            self.take(n)
        }
        fn vec16(&mut self) -> Option<&'a [u8]> {
            let n = self.u16()?;
            self.take(n)
        }
    }
    let mut r = Reader(record);
    r.take(5)?; // record header
    if r.u8()? != 1 {
        return None; // not a ClientHello
    }
    r.take(3)?; // handshake length
    r.take(2 + 32)?; // client version, random
    r.vec8()?; // session id
    r.vec16()?; // cipher suites
    r.vec8()?; // compression methods
    let mut extensions = Reader(r.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let mut body = Reader(extensions.vec16()?);
        if kind == 0 {
            let mut names = Reader(body.vec16()?);
            while !names.0.is_empty() {
                let name_type = names.u8()?;
                let name = names.vec16()?;
                if name_type == 0 {
                    return std::str::from_utf8(name).ok().map(str::to_string);
                }
            }
        }
    }
    None
}

pin_project_lite::pin_project! {
    /// An I/O stream that first yields bytes already read from it.
    #[derive(Debug)]
    pub struct PrefixedIo<I> {
        prefix: Bytes,
        #[pin]
        io: I,
    }
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: Bytes, io: I) -> Self {
        Self { prefix, io }
    }
}

impl<I: AsyncRead> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                // Let the detection buffer go now, not when the connection ends.
                *this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    crate::io::pass_through_to_io!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_first_bytes() {
        use Protocol::*;
        assert_eq!(
            classify(b"GET / HTTP/1.1\r\nHost: a\r\n"),
            Verdict::Known(Http1)
        );
        assert_eq!(
            classify(b"CONNECT a:443 HTTP/1.1\r\n"),
            Verdict::Known(Http1)
        );
        assert_eq!(classify(H2_PREFACE), Verdict::Known(Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), Verdict::NeedMore);
        assert_eq!(classify(b"GET /very/long"), Verdict::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Verdict::NeedMore);
        assert_eq!(classify(b"\x16\x03\x01\x00\x01\x01"), Verdict::Known(Tls));
        assert_eq!(classify(b"\x16\x01"), Verdict::Known(Opaque));
        assert_eq!(classify(b"hello world\r\n"), Verdict::Known(Opaque));
        assert_eq!(classify(b"G\x00T"), Verdict::Known(Opaque));
        assert_eq!(classify(&[b'A'; PEEK_CAPACITY]), Verdict::Known(Opaque));
        assert_eq!(classify(b"\x00\x01binary"), Verdict::Known(Opaque));
        // What looks like HTTP/1 is HTTP/1, valid or not: the strict reader
        // answers it, and it never reaches the application as opaque bytes.
        assert_eq!(classify(b"GET / HTTP/2.0\r\n"), Verdict::Known(Http1));
        assert_eq!(classify(b"G@T / HTTP/1.1\r\n"), Verdict::Known(Http1));
        assert_eq!(classify(b"GET / HTTP/1.1\n"), Verdict::Known(Http1));
        assert_eq!(classify(b"GET /\r\n"), Verdict::Known(Http1));
        let mut long = b"GET /".to_vec();
        long.resize(PEEK_CAPACITY, b'a');
        assert_eq!(classify(&long), Verdict::Known(Http1));
    }

    #[test]
    fn undecided_bytes_that_look_like_http1_are_http1() {
        use Protocol::*;
        assert_eq!(undecided(b""), Nothing);
        assert_eq!(undecided(b"G"), Http1);
        assert_eq!(undecided(b"GET"), Http1);
        assert_eq!(undecided(b"POST /x"), Http1);
        assert_eq!(undecided(b"get /"), Opaque);
        assert_eq!(undecided(b"GETX"), Opaque);
        assert_eq!(undecided(b"\x16\x03\x01"), Opaque);
        assert_eq!(undecided(b"hello"), Opaque);
    }

    #[tokio::test]
    async fn detection_keeps_the_bytes_and_times_out_on_silence() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(b"GET / HT").await.unwrap();
        let task = tokio::spawn(async move {
            let detected = detect(&mut server, Duration::from_secs(5)).await.unwrap();
            (detected, server)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        client
            .write_all(b"TP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let ((proto, prefix), server) = task.await.unwrap();
        assert_eq!(proto, Protocol::Http1);
        let mut replay = PrefixedIo::new(prefix, server);
        let expected = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut head = vec![0; expected.len()];
        replay.read_exact(&mut head).await.unwrap();
        assert_eq!(head, expected);

        let (_quiet_client, mut server) = tokio::io::duplex(1024);
        let (proto, prefix) = detect(&mut server, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!((proto, prefix.len()), (Protocol::Nothing, 0));

        // A client that starts a request and pauses is still HTTP/1.
        let (mut slow, mut server) = tokio::io::duplex(1024);
        slow.write_all(b"GET").await.unwrap();
        let (proto, prefix) = detect(&mut server, Duration::from_millis(50))
            .await
            .unwrap();
        assert_eq!((proto, &prefix[..]), (Protocol::Http1, &b"GET"[..]));
    }
}
