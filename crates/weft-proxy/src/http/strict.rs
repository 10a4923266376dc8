//! A strict HTTP/1 request reader in front of hyper's server.
//!
//! hyper (through httparse) is lenient the way browsers' servers are: bare LF
//! line endings, a missing or repeated `Host`, `Transfer-Encoding` next to
//! `Content-Length`. A proxy that forwards what its own parser tolerated lets a
//! client smuggle requests past it, or send the application something a strict
//! server would refuse. [`StrictIo`] sits between the socket and hyper and lets
//! only checked bytes through (RFC 9112):
//!
//! - a request head is held back until it is complete and valid, so hyper never
//!   sees a partial or invalid head (and a slow one gets 408 from here);
//! - a body is passed straight through, in reads no longer than its framing
//!   allows, so the next head is always checked before hyper sees it; chunk
//!   size lines and trailers are checked like heads;
//! - after a request that asks to switch protocols (Upgrade, CONNECT) nothing
//!   more is passed until the request's outcome is known ([`Shared::upgraded`]):
//!   switched, the bytes are the new protocol's; refused, checking resumes.
//!
//! A head that breaks the rules ends the connection: hyper sees end of stream at
//! a message boundary, and when it shuts the connection down, the error response
//! (status, `l5d-proxy-error`, `connection: close`) is written first. A broken
//! chunk ends the request body instead; the request then fails with
//! [`Shared::violation`] as its reason, answered 400 through hyper.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tracing::info;

use super::error::{L5D_PROXY_ERROR, header_safe};
use crate::metrics::{Direction, Metrics};

/// How much room each read into the held-back buffer asks for.
const READ_SIZE: usize = 2048;
/// A buffer larger than this is freed once it is empty.
const IDLE_BUFFER: usize = 4096;

/// Longest chunk-size line (size and extensions).
const MAX_CHUNK_LINE: usize = 1024;

/// Why a request was refused before it reached hyper.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub status: StatusCode,
    pub reason: String,
}

impl Violation {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Violation {
            status,
            reason: reason.into(),
        }
    }

    fn bad(reason: impl Into<String>) -> Self {
        Violation::new(StatusCode::BAD_REQUEST, reason)
    }

    /// The `error` label of `{inbound,outbound}_http_errors_total`.
    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request_head_too_large",
            StatusCode::HTTP_VERSION_NOT_SUPPORTED => "http_version_not_supported",
            StatusCode::NOT_IMPLEMENTED => "not_implemented",
            _ => "bad_request",
        }
    }

    /// The whole response, written straight to the client.
    fn response(&self) -> Bytes {
        let body = format!("{}\n", self.reason);
        let header = header_safe(&format!("bad request: {}", self.reason));
        Bytes::from(format!(
            "HTTP/1.1 {} {}\r\n{L5D_PROXY_ERROR}: {header}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            self.status.as_u16(),
            self.status.canonical_reason().unwrap_or(""),
            body.len(),
        ))
    }
}

/// Limits on what one client connection may send.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest request head (request line and header fields), and largest
    /// trailer section.
    pub max_head: usize,
    /// A request head must arrive whole within this time of its first byte.
    pub head_timeout: Duration,
}

const UPGRADE_PENDING: u8 = 0;
const UPGRADE_SWITCHED: u8 = 1;
const UPGRADE_REFUSED: u8 = 2;

/// What the request handler and the reader tell each other.
#[derive(Debug)]
pub struct Shared {
    violation: parking_lot::Mutex<Option<Violation>>,
    upgrade: AtomicU8,
    upgrade_waker: AtomicWaker,
    direction: Direction,
    metrics: Arc<Metrics>,
}

impl Shared {
    pub fn new(direction: Direction, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Shared {
            violation: parking_lot::Mutex::new(None),
            upgrade: AtomicU8::new(UPGRADE_PENDING),
            upgrade_waker: AtomicWaker::new(),
            direction,
            metrics,
        })
    }

    /// Why the client's bytes were refused, if they were: a request whose
    /// body failed then failed because of its client, not its server.
    pub fn violation(&self) -> Option<Violation> {
        self.violation.lock().clone()
    }

    /// Tells the reader how an Upgrade or CONNECT request ended: `switched`,
    /// the connection now carries the new protocol.
    pub fn upgraded(&self, switched: bool) {
        let verdict = if switched {
            UPGRADE_SWITCHED
        } else {
            UPGRADE_REFUSED
        };
        self.upgrade.store(verdict, Ordering::Release);
        self.upgrade_waker.wake();
    }

    fn record(&self, violation: &Violation) {
        info!(
            status = violation.status.as_u16(),
            reason = %violation.reason,
            "refused an HTTP/1 request that breaks RFC 9112"
        );
        self.metrics.http_error(self.direction, violation.kind());
        *self.violation.lock() = Some(violation.clone());
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for a whole request head.
    Head,
    /// A body of known length: this many bytes still to pass.
    Body(u64),
    /// One chunk's data: this many bytes still to pass.
    ChunkData(u64),
    ChunkSize,
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailers,
    /// A protocol switch was asked for: wait for its outcome.
    AwaitUpgrade,
    /// Switched protocols: bytes pass unchecked.
    Tunnel,
    /// Refused: end of stream for hyper.
    Closed,
}

/// The client side of an HTTP/1 connection, checked (see the module docs).
pub struct StrictIo<I> {
    io: I,
    /// Read from the client, not yet handed to hyper.
    buf: BytesMut,
    /// How many bytes at the front of `buf` are checked and may be handed over.
    ready: usize,
    state: State,
    /// The message being read asks to switch protocols.
    upgrade_after: bool,
    head_deadline: Option<Pin<Box<Sleep>>>,
    limits: Limits,
    shared: Arc<Shared>,
    /// An error response still to be written before shutting down.
    response: Option<Bytes>,
}

impl<I> StrictIo<I> {
    pub fn new(io: I, limits: Limits, shared: Arc<Shared>) -> Self {
        StrictIo {
            io,
            buf: BytesMut::new(),
            ready: 0,
            state: State::Head,
            upgrade_after: false,
            head_deadline: None,
            limits,
            shared,
            response: None,
        }
    }
}

/// What the bytes so far say about the next framing element.
#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Incomplete,
    /// The element is this many bytes; then comes `next`.
    Complete {
        len: usize,
        next: State,
        upgrade: bool,
    },
    Invalid(Violation),
}

impl<I: AsyncRead + Unpin> AsyncRead for StrictIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = (this.ready).min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.ready -= n;
                if this.buf.is_empty() && this.buf.capacity() > IDLE_BUFFER {
                    // An idle keep-alive connection holds no large buffer.
                    this.buf = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Closed => return Poll::Ready(Ok(())),
                State::Tunnel if this.buf.is_empty() => {
                    return Pin::new(&mut this.io).poll_read(cx, out);
                }
                State::Tunnel => this.ready = this.buf.len(),
                State::Body(0) => this.state = after_message(this.upgrade_after),
                State::ChunkData(0) => this.state = State::ChunkEnd,
                State::Body(remaining) | State::ChunkData(remaining) => {
                    let next = |left| match this.state {
                        State::Body(_) => State::Body(left),
                        _ => State::ChunkData(left),
                    };
                    let limit = usize::try_from(remaining).unwrap_or(usize::MAX);
                    if !this.buf.is_empty() {
                        let n = limit.min(this.buf.len());
                        this.ready = n;
                        this.state = next(remaining - n as u64);
                        continue;
                    }
                    // Straight from the socket into hyper's buffer, never past the framing.
                    let mut limited = out.take(limit.min(out.remaining()));
                    ready!(Pin::new(&mut this.io).poll_read(cx, &mut limited))?;
                    let n = limited.filled().len();
                    if n == 0 {
                        // The client ended mid-body; hyper reports the short body.
                        this.state = State::Closed;
                        return Poll::Ready(Ok(()));
                    }
                    // SAFETY: `take` lent part of `out`'s unfilled memory, and the
                    // read initialised its first `n` bytes.
                    unsafe { out.assume_init(n) };
                    out.advance(n);
                    this.state = next(remaining - n as u64);
                    return Poll::Ready(Ok(()));
                }
                State::AwaitUpgrade => {
                    this.shared.upgrade_waker.register(cx.waker());
                    match this.shared.upgrade.swap(UPGRADE_PENDING, Ordering::AcqRel) {
                        UPGRADE_SWITCHED => this.state = State::Tunnel,
                        UPGRADE_REFUSED => {
                            this.state = State::Head;
                            this.upgrade_after = false;
                        }
                        _ => return Poll::Pending,
                    }
                }
                State::Head | State::ChunkSize | State::ChunkEnd | State::Trailers => {
                    let parsed = match this.state {
                        State::Head => parse_head(&this.buf, this.limits.max_head),
                        State::ChunkSize => parse_chunk_size(&this.buf),
                        State::ChunkEnd => parse_chunk_end(&this.buf),
                        _ => parse_trailers(&this.buf, this.limits.max_head),
                    };
                    match parsed {
                        Parsed::Complete { len, next, upgrade } => {
                            if this.state == State::Head {
                                this.head_deadline = None;
                                this.upgrade_after = upgrade;
                            }
                            this.ready = len;
                            this.state = match next {
                                State::Head => after_message(this.upgrade_after),
                                other => other,
                            };
                        }
                        Parsed::Invalid(violation) => this.refuse(violation),
                        Parsed::Incomplete => {
                            if this.state == State::Head && !this.buf.is_empty() {
                                let timeout = this.limits.head_timeout;
                                let deadline = this
                                    .head_deadline
                                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                                if deadline.as_mut().poll(cx).is_ready() {
                                    let why =
                                        format!("request head not complete within {timeout:?}");
                                    this.refuse(Violation::new(StatusCode::REQUEST_TIMEOUT, why));
                                    continue;
                                }
                            }
                            // Read more; it is held back until checked.
                            this.buf.reserve(READ_SIZE);
                            if ready!(read_into(Pin::new(&mut this.io), cx, &mut this.buf))? == 0 {
                                // The client is gone mid-element: nobody to answer.
                                this.state = State::Closed;
                                this.buf.clear();
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What follows a complete message.
fn after_message(upgrade: bool) -> State {
    if upgrade {
        State::AwaitUpgrade
    } else {
        State::Head
    }
}

impl<I> StrictIo<I> {
    /// Stops passing bytes; a refused head is answered when hyper closes.
    fn refuse(&mut self, violation: Violation) {
        self.shared.record(&violation);
        if self.state == State::Head {
            self.response = Some(violation.response());
        }
        self.state = State::Closed;
        self.head_deadline = None;
        self.buf.clear();
    }
}

/// One read from `io` into the spare capacity of `buf`.
fn read_into<I: AsyncRead>(
    io: Pin<&mut I>,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut read = ReadBuf::uninit(buf.spare_capacity_mut());
    ready!(io.poll_read(cx, &mut read))?;
    let n = read.filled().len();
    // SAFETY: the read initialised the first `n` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + n) };
    Poll::Ready(Ok(n))
}

impl<I: AsyncWrite + Unpin> AsyncWrite for StrictIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while let Some(response) = this.response.as_mut() {
            let n = ready!(Pin::new(&mut this.io).poll_write(cx, response))?;
            response.advance(n);
            if n == 0 || response.is_empty() {
                this.response = None;
            }
        }
        ready!(Pin::new(&mut this.io).poll_flush(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// `tchar` (RFC 9110 section 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Finds the end of a section of CRLF-terminated lines ending with an empty
/// line, within `max` bytes; refuses a bare CR or LF on the way.
fn section_end(buf: &[u8], max: usize, what: &str) -> Result<Option<usize>, Violation> {
    let mut i = 0;
    let mut line_start = 0;
    while i < buf.len() {
        match buf[i] {
            b'\n' => return Err(Violation::bad(format!("bare LF in the {what}"))),
            b'\r' => match buf.get(i + 1) {
                None => break,
                Some(b'\n') => {
                    if i == line_start {
                        return Ok(Some(i + 2));
                    }
                    i += 2;
                    line_start = i;
                    continue;
                }
                Some(_) => return Err(Violation::bad(format!("bare CR in the {what}"))),
            },
            _ => {}
        }
        i += 1;
    }
    if buf.len() >= max {
        return Err(Violation::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("{what} larger than {max} bytes"),
        ));
    }
    Ok(None)
}

/// Checks one `field-name: field-value` line (RFC 9110 section 5); returns the
/// name and the value without surrounding whitespace.
fn field(line: &[u8]) -> Result<(&[u8], &[u8]), Violation> {
    if matches!(line.first(), Some(b' ' | b'\t')) {
        return Err(Violation::bad("obsolete line folding in a header field"));
    }
    let colon = line
        .iter()
        .position(|&b| b == b':')
        .ok_or_else(|| Violation::bad("a header line without a colon"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(Violation::bad(
            "a header field name that is not a token (no spaces before the colon)",
        ));
    }
    let value = line[colon + 1..].trim_ascii();
    if let Some(&bad) = value
        .iter()
        .find(|&&b| !(b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80))
    {
        return Err(Violation::bad(format!(
            "control character 0x{bad:02x} in the value of header {}",
            String::from_utf8_lossy(name)
        )));
    }
    Ok((name, value))
}

/// Checks a request head and says how its body is framed.
fn parse_head(buf: &[u8], max_head: usize) -> Parsed {
    // RFC 9112 section 2.2: empty lines before the request line are ignored.
    let leading = buf.chunks(2).take_while(|pair| *pair == b"\r\n").count() * 2;
    let end = match section_end(&buf[leading..], max_head, "request head") {
        Ok(Some(end)) => leading + end,
        Ok(None) if buf.len() >= max_head => {
            return Parsed::Invalid(Violation::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("request head larger than {max_head} bytes"),
            ));
        }
        Ok(None) => return Parsed::Incomplete,
        Err(v) => return Parsed::Invalid(v),
    };
    // The head without the CRLF that ends its last line and the empty line.
    match check_head(&buf[leading..end - 4]) {
        Ok((next, upgrade)) => Parsed::Complete {
            len: end,
            next,
            upgrade,
        },
        Err(v) => Parsed::Invalid(v),
    }
}

/// The request line and header fields, lines separated by CRLF.
fn check_head(head: &[u8]) -> Result<(State, bool), Violation> {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let http10 = check_request_line(request_line)?;
    let method = request_line
        .split(|&b| b == b' ')
        .next()
        .unwrap_or_default();

    let (mut hosts, mut lengths, mut codings) = (0, Vec::new(), Vec::new());
    let (mut upgrade_header, mut connection_upgrade) = (false, false);
    for line in lines {
        let (name, value) = field(line)?;
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"content-length") {
            lengths.extend(value.split(|&b| b == b',').map(<[u8]>::trim_ascii));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.extend(
                value
                    .split(|&b| b == b',')
                    .map(<[u8]>::trim_ascii)
                    .filter(|c| !c.is_empty()),
            );
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade_header = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            connection_upgrade |= value
                .split(|&b| b == b',')
                .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
        }
    }
    match (http10, hosts) {
        (false, 0) => return Err(Violation::bad("an HTTP/1.1 request without Host")),
        (_, n) if n > 1 => return Err(Violation::bad(format!("{n} Host headers"))),
        _ => {}
    }
    let upgrade = !http10 && (method == b"CONNECT" || (upgrade_header && connection_upgrade));
    if !codings.is_empty() {
        if http10 {
            return Err(Violation::bad("Transfer-Encoding in an HTTP/1.0 request"));
        }
        if !lengths.is_empty() {
            return Err(Violation::bad(
                "both Transfer-Encoding and Content-Length (a request smuggling pattern)",
            ));
        }
        if !codings
            .last()
            .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked"))
        {
            return Err(Violation::bad(
                "Transfer-Encoding whose last coding is not chunked",
            ));
        }
        if let Some(other) = codings.iter().find(|c| !c.eq_ignore_ascii_case(b"chunked")) {
            return Err(Violation::new(
                StatusCode::NOT_IMPLEMENTED,
                format!(
                    "transfer coding {} is not supported",
                    String::from_utf8_lossy(other)
                ),
            ));
        }
        if codings.len() > 1 {
            return Err(Violation::bad("chunked applied more than once"));
        }
        return Ok((State::ChunkSize, upgrade));
    }
    let Some(first) = lengths.first() else {
        return Ok((State::Head, upgrade));
    };
    if lengths.iter().any(|l| l != first) {
        return Err(Violation::bad("Content-Length values that differ"));
    }
    let length = parse_decimal(first)
        .ok_or_else(|| Violation::bad("a Content-Length that is not a decimal number"))?;
    Ok((
        if length == 0 {
            State::Head
        } else {
            State::Body(length)
        },
        upgrade,
    ))
}

/// `method SP request-target SP HTTP-version`; whether the version is 1.0.
fn check_request_line(line: &[u8]) -> Result<bool, Violation> {
    // Checked in place: no allocation per request.
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        let count = line.split(|&b| b == b' ').count();
        return Err(Violation::bad(if count == 2 {
            "a request line without an HTTP version (HTTP/0.9 is not served)".to_string()
        } else {
            format!("a request line of {count} space-separated parts instead of 3")
        }));
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(Violation::bad("a method that is not a token"));
    }
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return Err(Violation::bad(
            "a request target with characters outside visible ASCII",
        ));
    }
    match version {
        b"HTTP/1.1" => Ok(false),
        b"HTTP/1.0" => Ok(true),
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(Violation::new(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                format!(
                    "HTTP/{}.{} on an HTTP/1 connection",
                    *major as char, *minor as char
                ),
            ))
        }
        _ => Err(Violation::bad("a malformed HTTP version")),
    }
}

/// A decimal of at most 18 digits (no sign, no spaces).
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `chunk-size [ chunk-ext ] CRLF` (RFC 9112 section 7.1).
fn parse_chunk_size(buf: &[u8]) -> Parsed {
    let Some(lf) = buf.iter().take(MAX_CHUNK_LINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_CHUNK_LINE {
            Parsed::Invalid(Violation::bad(format!(
                "a chunk size line longer than {MAX_CHUNK_LINE} bytes"
            )))
        } else {
            Parsed::Incomplete
        };
    };
    let Some(line) = buf[..lf].strip_suffix(b"\r") else {
        return Parsed::Invalid(Violation::bad("bare LF after a chunk size"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let ext = &line[digits..];
    if digits == 0 || digits > 15 {
        return Parsed::Invalid(Violation::bad("an invalid chunk size"));
    }
    if !(ext.is_empty() || matches!(ext[0], b';' | b' ' | b'\t'))
        || ext.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Parsed::Invalid(Violation::bad("an invalid chunk size"));
    }
    let size = std::str::from_utf8(&line[..digits])
        .ok()
        .and_then(|d| u64::from_str_radix(d, 16).ok());
    match size {
        Some(0) => Parsed::Complete {
            len: lf + 1,
            next: State::Trailers,
            upgrade: false,
        },
        Some(n) => Parsed::Complete {
            len: lf + 1,
            next: State::ChunkData(n),
            upgrade: false,
        },
        None => Parsed::Invalid(Violation::bad("an invalid chunk size")),
    }
}

fn parse_chunk_end(buf: &[u8]) -> Parsed {
    match buf {
        [] | [b'\r'] => Parsed::Incomplete,
        [b'\r', b'\n', ..] => Parsed::Complete {
            len: 2,
            next: State::ChunkSize,
            upgrade: false,
        },
        _ => Parsed::Invalid(Violation::bad("chunk data longer than its size")),
    }
}

/// The trailer section after the last chunk: header fields, then an empty line.
fn parse_trailers(buf: &[u8], max: usize) -> Parsed {
    let end = match buf {
        [] | [b'\r'] => return Parsed::Incomplete,
        [b'\r', b'\n', ..] => 2,
        _ => match section_end(buf, max, "trailer section") {
            Ok(Some(end)) => {
                let fields = &buf[..end - 4];
                let bad = fields
                    .split(|&b| b == b'\n')
                    .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
                    .find_map(|line| field(line).err());
                if let Some(v) = bad {
                    return Parsed::Invalid(v);
                }
                end
            }
            Ok(None) => return Parsed::Incomplete,
            Err(v) => return Parsed::Invalid(v),
        },
    };
    Parsed::Complete {
        len: end,
        next: State::Head,
        upgrade: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn head(bytes: &[u8]) -> Parsed {
        parse_head(bytes, 16 * 1024)
    }

    fn refused(bytes: &[u8]) -> (u16, String) {
        match head(bytes) {
            Parsed::Invalid(v) => (v.status.as_u16(), v.reason),
            other => panic!(
                "{:?} was accepted: {other:?}",
                String::from_utf8_lossy(bytes)
            ),
        }
    }

    #[test]
    fn valid_heads_pass_with_their_framing() {
        let plain = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(
            head(plain),
            Parsed::Complete {
                len: plain.len(),
                next: State::Head,
                upgrade: false
            }
        );
        let post = b"\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            head(post),
            Parsed::Complete {
                len: post.len() - 5,
                next: State::Body(5),
                upgrade: false
            }
        );
        let chunked = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(
            head(chunked),
            Parsed::Complete {
                next: State::ChunkSize,
                ..
            }
        ));
        let ws = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        assert!(matches!(head(ws), Parsed::Complete { upgrade: true, .. }));
        let old = b"GET / HTTP/1.0\r\n\r\n";
        assert!(matches!(head(old), Parsed::Complete { .. }));
        assert_eq!(head(b"GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Incomplete);
    }

    #[test]
    fn what_a_strict_server_refuses_is_refused() {
        for (bytes, status, why) in [
            (&b"GET / HTTP/1.1\r\n\r\n"[..], 400, "without Host"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "2 Host"),
            (b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF"),
            (b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", 400, "bare CR"),
            (b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method"),
            (b"GET /\r\n\r\n", 400, "HTTP/0.9"),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
            (b"GET / HTTP/1.1 x\r\nHost: a\r\n\r\n", 400, "4 space"),
            (b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "not a token"),
            (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400, "folding"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, "0x00"),
            (b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", 400, "colon"),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
                "smuggling",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
                "differ",
            ),
            (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, "decimal"),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
                "last coding",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
                "gzip",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
                "HTTP/1.0",
            ),
        ] {
            let (code, reason) = refused(bytes);
            assert_eq!(code, status, "{reason}");
            assert!(reason.contains(why), "{why:?} not in {reason:?}");
        }
        let big = [&b"GET /"[..], &[b'a'; 20_000]].concat();
        assert_eq!(refused(&big).0, 431);
        let crlfs = [b'\r', b'\n'].repeat(10_000);
        assert_eq!(refused(&crlfs).0, 431);
    }

    #[test]
    fn chunk_framing_is_checked() {
        assert_eq!(
            parse_chunk_size(b"1a;ext=1\r\n"),
            Parsed::Complete {
                len: 10,
                next: State::ChunkData(26),
                upgrade: false
            }
        );
        assert!(matches!(
            parse_chunk_size(b"0\r\n"),
            Parsed::Complete {
                next: State::Trailers,
                ..
            }
        ));
        assert_eq!(parse_chunk_size(b"1a"), Parsed::Incomplete);
        for bad in [
            &b"zz\r\n"[..],
            b"-1\r\n",
            b"1\n",
            b"ffffffffffffffff1\r\n",
            b"5x\r\n",
        ] {
            assert!(
                matches!(parse_chunk_size(bad), Parsed::Invalid(_)),
                "{bad:?}"
            );
        }
        assert!(matches!(parse_chunk_end(b"\r\n"), Parsed::Complete { .. }));
        assert!(matches!(parse_chunk_end(b"xx"), Parsed::Invalid(_)));
        assert!(matches!(
            parse_trailers(b"grpc-status: 0\r\n\r\n", 1024),
            Parsed::Complete { len: 18, .. }
        ));
        assert!(matches!(
            parse_trailers(b"bad trailer\r\n\r\n", 1024),
            Parsed::Invalid(_)
        ));
    }

    fn strict_over_duplex() -> (
        tokio::io::DuplexStream,
        StrictIo<tokio::io::DuplexStream>,
        Arc<Shared>,
    ) {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let shared = Shared::new(Direction::Inbound, Metrics::new(Default::default(), false));
        let limits = Limits {
            max_head: 4096,
            head_timeout: Duration::from_millis(200),
        };
        (
            client,
            StrictIo::new(server, limits, shared.clone()),
            shared,
        )
    }

    #[tokio::test]
    async fn messages_pass_whole_and_a_bad_head_is_answered_on_shutdown() {
        let (mut client, mut strict, shared) = strict_over_duplex();
        let good = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        client.write_all(good).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: l5d-client-id\nX: 1\r\n\r\n")
            .await
            .unwrap();
        let mut passed = Vec::new();
        strict.read_to_end(&mut passed).await.unwrap();
        assert_eq!(passed, good, "only the valid message passed");
        assert_eq!(shared.violation().unwrap().status, StatusCode::BAD_REQUEST);
        strict.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("l5d-proxy-error: bad request: bare LF"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_slow_head_gets_408() {
        let (mut client, mut strict, _shared) = strict_over_duplex();
        client.write_all(b"GET / HTTP/1.1\r\nHo").await.unwrap();
        let mut passed = Vec::new();
        strict.read_to_end(&mut passed).await.unwrap();
        assert!(passed.is_empty());
        strict.shutdown().await.unwrap();
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn a_bad_chunk_ends_the_body_without_an_answer_of_its_own() {
        let (mut client, mut strict, shared) = strict_over_duplex();
        let head = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
        client.write_all(head).await.unwrap();
        client.write_all(b"zz\r\n").await.unwrap();
        let mut passed = Vec::new();
        strict.read_to_end(&mut passed).await.unwrap();
        assert_eq!(passed, head);
        assert!(shared.violation().unwrap().reason.contains("chunk size"));
        strict.shutdown().await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(answer.is_empty(), "hyper answers through the request");
    }

    #[tokio::test]
    async fn after_a_switch_bytes_pass_and_after_a_refusal_they_are_checked() {
        let (mut client, mut strict, shared) = strict_over_duplex();
        let upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n";
        client.write_all(upgrade).await.unwrap();
        client.write_all(b"\x00raw bytes\n").await.unwrap();
        let mut buf = vec![0; upgrade.len()];
        strict.read_exact(&mut buf).await.unwrap();
        let mut more = [0; 16];
        let waiting = tokio::time::timeout(Duration::from_millis(50), strict.read(&mut more)).await;
        assert!(waiting.is_err(), "nothing passes before the verdict");
        shared.upgraded(true);
        let n = strict.read(&mut more).await.unwrap();
        assert_eq!(&more[..n], b"\x00raw bytes\n");

        let (mut client, mut strict, shared) = strict_over_duplex();
        client.write_all(upgrade).await.unwrap();
        client
            .write_all(b"GET / HTTP/1.1\nHost: a\n\n")
            .await
            .unwrap();
        let mut buf = vec![0; upgrade.len()];
        strict.read_exact(&mut buf).await.unwrap();
        shared.upgraded(false);
        let mut rest = Vec::new();
        strict.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        assert!(shared.violation().is_some());
    }
}
