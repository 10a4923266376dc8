//! Bodies. The response body the proxy returns: the upstream body streamed
//! through untouched, or empty for responses the proxy makes itself. The
//! request body it sends: the client's, streamed, or a [`Replay`] of it for
//! a request that may be retried.
//!
//! The upstream variant records `response_total` when the stream ends, because
//! only then is a gRPC response's outcome known (its `grpc-status` trailer).

use std::pin::Pin;
use std::sync::Arc;

use parking_lot::Mutex;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::{Class, Eos, RouteEnd, RouteStatus, StatusMetrics};

/// How a response will be counted once it ends: its class, decided from
/// the headers and the trailers, on the connection's series and, for a
/// profile route, the route's.
#[derive(Debug)]
pub struct ResponseEnd {
    pub status: StatusMetrics,
    pub eos: Eos,
    /// A profile route's series, for the response as the client saw it
    /// and for the attempt that produced it. Boxed, like `route`.
    pub profile_route: Option<Box<RouteStatus>>,
    /// A policy-routed request's route and backend, counted at the end too.
    /// Boxed: most responses have none, and bodies stay small.
    pub route: Option<Box<RouteEnd>>,
}

impl ResponseEnd {
    /// Records the outcome: `Ok(trailers)` for a stream that completed,
    /// `Err(reason)` for one that broke.
    fn record(self, end: Result<Option<&HeaderMap>, Option<h2::Reason>>) {
        if let Some(route) = self.route {
            route.finish(end.as_ref().ok().copied().flatten(), end.is_ok());
        }
        let class = match end {
            Ok(trailers) => self.eos.end(trailers),
            Err(reason) => Class::stream(reason),
        };
        self.status.count(class);
        if let Some(route) = self.profile_route {
            route.response.count(class);
            route.actual_response.count(class);
        }
    }
}

/// The HTTP/2 reason a body error carries, if it is an HTTP/2 one.
fn h2_reason(err: &hyper::Error) -> Option<h2::Reason> {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason();
        }
        source = e.source();
    }
    None
}

/// The `grpc-status` in a header block, if any.
pub fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

#[derive(Debug)]
pub enum ProxyBody {
    Upstream {
        inner: Incoming,
        end: Option<ResponseEnd>,
    },
    Empty,
}

impl ProxyBody {
    pub fn empty() -> Self {
        ProxyBody::Empty
    }

    pub fn upstream(inner: Incoming, end: ResponseEnd) -> Self {
        ProxyBody::Upstream {
            inner,
            end: Some(end),
        }
    }

    /// Counts `route` when the body ends (at once for a body the proxy made).
    pub fn on_route_end(&mut self, route: RouteEnd) {
        match self {
            ProxyBody::Upstream { end: Some(end), .. } => end.route = Some(Box::new(route)),
            _ => route.finish(None, true),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let ProxyBody::Upstream { inner, end } = self.get_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref()
                    && let Some(end) = end.take()
                {
                    end.record(Ok(Some(trailers)));
                }
            }
            Some(Err(e)) => {
                if let Some(end) = end.take() {
                    end.record(Err(h2_reason(e)));
                }
            }
            None => {
                if let Some(end) = end.take() {
                    end.record(Ok(None));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
            ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    /// A body the server never polled to the end: complete if the upstream had
    /// nothing more to send (hyper skips polling empty bodies), failed otherwise
    /// (the client went away mid-stream: cancelled).
    fn drop(&mut self) {
        if let ProxyBody::Upstream { inner, end } = self
            && let Some(end) = end.take()
        {
            end.record(if inner.is_end_stream() {
                Ok(None)
            } else {
                Err(Some(h2::Reason::CANCEL))
            });
        }
    }
}

/// The request body sent upstream: the client's, streamed; or a replayable
/// copy of it, for a request that may be retried.
#[derive(Debug)]
pub enum RequestBody {
    Streaming(Incoming),
    Replay(Replay<Incoming>),
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    /// Empty DATA frames are dropped: they carry nothing, and an HTTP/2
    /// server counts the ones that do not end the stream against the
    /// connection (h2 sends GOAWAY ENHANCE_YOUR_CALM after 100), so passing
    /// on a client's, or the one a stream's end arrives in, would get the
    /// proxy's shared upstream connection closed.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            let frame = ready!(match this {
                RequestBody::Streaming(body) => Pin::new(body).poll_frame(cx),
                RequestBody::Replay(body) => body.poll(cx),
            });
            match frame {
                Some(Ok(f)) if f.data_ref().is_some_and(Bytes::is_empty) => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming(body) => body.is_end_stream(),
            RequestBody::Replay(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming(body) => body.size_hint(),
            RequestBody::Replay(body) => body.size_hint(),
        }
    }
}

/// A request body that can be sent again. Frames go upstream as they
/// arrive, never held back; a copy of the data is kept until it passes the
/// limit. A later attempt reads the copy first, then whatever the client
/// has not sent yet. So a small request is replayable, and a streaming call
/// keeps streaming (it just stops being replayable once it is large).
///
/// Each attempt's reader has a generation; starting a new attempt retires
/// the old reader, so a previous attempt that is still sending cannot take
/// frames the new one has not copied.
#[derive(Debug)]
pub struct Replay<B> {
    state: Arc<Mutex<ReplayState<B>>>,
    generation: u64,
    /// Chunks of the copy this reader has sent.
    position: usize,
    trailers_sent: bool,
}

#[derive(Debug)]
struct ReplayState<B> {
    /// The client's body, until it ends.
    inner: Option<B>,
    hint: SizeHint,
    chunks: Vec<Bytes>,
    copied: usize,
    limit: usize,
    /// Data went past the limit (or the client's body failed): no more replays.
    spent: bool,
    trailers: Option<HeaderMap>,
    generation: u64,
}

impl<B: Body<Data = Bytes> + Unpin> Replay<B> {
    /// Wraps the client's body, keeping up to `limit` bytes for replays.
    /// The result is the first attempt's body.
    pub fn new(body: B, limit: usize) -> Self {
        let ended = body.is_end_stream();
        let state = ReplayState {
            hint: body.size_hint(),
            inner: (!ended).then_some(body),
            chunks: Vec::new(),
            copied: 0,
            limit,
            spent: false,
            trailers: None,
            generation: 1,
        };
        Replay {
            state: Arc::new(Mutex::new(state)),
            generation: 1,
            position: 0,
            trailers_sent: false,
        }
    }

    /// A handle for making later attempts' bodies; it reads nothing itself.
    pub fn handle(&self) -> Replay<B> {
        Replay {
            state: self.state.clone(),
            generation: 0,
            position: 0,
            trailers_sent: true,
        }
    }

    /// The body for another attempt, from the start; `None` once the body
    /// is too big to replay. Retires every earlier reader.
    pub fn again(&self) -> Option<Replay<B>> {
        let mut state = self.state.lock();
        if state.spent {
            return None;
        }
        state.generation += 1;
        Some(Replay {
            state: self.state.clone(),
            generation: state.generation,
            position: 0,
            trailers_sent: false,
        })
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut state = self.state.lock();
        if state.generation != self.generation {
            // Superseded by a newer attempt: this one is over.
            return Poll::Ready(None);
        }
        if let Some(chunk) = state.chunks.get(self.position) {
            self.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
        }
        let Some(inner) = state.inner.as_mut() else {
            let trailers = (!self.trailers_sent)
                .then(|| state.trailers.clone())
                .flatten();
            self.trailers_sent = true;
            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
        };
        match ready!(Pin::new(inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    if !state.spent && state.copied + data.len() <= state.limit {
                        state.copied += data.len();
                        state.chunks.push(data.clone());
                        self.position += 1;
                    } else {
                        state.spent = true;
                    }
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        state.trailers = Some(trailers.clone());
                        self.trailers_sent = true;
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
            },
            Some(Err(e)) => {
                state.spent = true;
                Poll::Ready(Some(Err(e)))
            }
            None => {
                state.inner = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        let state = self.state.lock();
        // The client's body may be known to be over before it is polled
        // to its end; saying so lets the last frame carry END_STREAM.
        state.generation != self.generation
            || (state.inner.as_ref().is_none_or(Body::is_end_stream)
                && self.position >= state.chunks.len()
                && (self.trailers_sent || state.trailers.is_none()))
    }

    fn size_hint(&self) -> SizeHint {
        self.state.lock().hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    type Item = Result<Frame<Bytes>, Infallible>;
    type Frames = Pin<Box<dyn futures_util::Stream<Item = Item> + Send>>;
    type Client = tokio::sync::mpsc::Sender<Item>;

    /// A client body whose frames the test sends one at a time.
    fn client() -> (Client, Replay<http_body_util::StreamBody<Frames>>) {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        let frames: Frames = Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
        (tx, Replay::new(http_body_util::StreamBody::new(frames), 10))
    }

    async fn next<B: Body<Data = Bytes> + Unpin>(r: &mut Replay<B>) -> Option<Frame<Bytes>>
    where
        B::Error: std::fmt::Debug,
    {
        std::future::poll_fn(|cx| r.poll(cx))
            .await
            .map(|f| f.unwrap())
    }

    fn data(s: &'static str) -> Result<Frame<Bytes>, Infallible> {
        Ok(Frame::data(Bytes::from_static(s.as_bytes())))
    }

    #[tokio::test]
    async fn frames_pass_through_at_once_and_replay_with_trailers() {
        let (tx, mut first) = client();
        tx.send(data("ab")).await.unwrap();
        // Passed on before the body ends: nothing is held back.
        assert_eq!(next(&mut first).await.unwrap().into_data().unwrap(), "ab");
        tx.send(data("cd")).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        tx.send(Ok(Frame::trailers(trailers))).await.unwrap();
        drop(tx);
        assert_eq!(next(&mut first).await.unwrap().into_data().unwrap(), "cd");
        assert!(next(&mut first).await.unwrap().is_trailers());
        assert!(next(&mut first).await.is_none());
        assert!(first.is_end_stream());

        // The second attempt gets the same frames; the first is retired.
        let mut second = first.again().expect("4 bytes are replayable");
        assert!(next(&mut first).await.is_none(), "superseded");
        assert_eq!(next(&mut second).await.unwrap().into_data().unwrap(), "ab");
        assert_eq!(next(&mut second).await.unwrap().into_data().unwrap(), "cd");
        let t = next(&mut second).await.unwrap().into_trailers().unwrap();
        assert_eq!(t["grpc-status"], "0");
        assert!(next(&mut second).await.is_none());
    }

    #[tokio::test]
    async fn an_attempt_that_failed_early_leaves_the_rest_to_the_next() {
        let (tx, mut first) = client();
        tx.send(data("ab")).await.unwrap();
        assert_eq!(next(&mut first).await.unwrap().into_data().unwrap(), "ab");
        // The first attempt fails before the client sent the rest.
        let mut second = first.again().unwrap();
        drop(first);
        tx.send(data("cd")).await.unwrap();
        drop(tx);
        assert_eq!(next(&mut second).await.unwrap().into_data().unwrap(), "ab");
        assert_eq!(next(&mut second).await.unwrap().into_data().unwrap(), "cd");
        assert!(next(&mut second).await.is_none());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_streams_on_but_is_not_replayed() {
        let (tx, mut first) = client();
        tx.send(data("0123456789")).await.unwrap();
        tx.send(data("more")).await.unwrap();
        drop(tx);
        assert_eq!(
            next(&mut first).await.unwrap().into_data().unwrap().len(),
            10
        );
        assert_eq!(next(&mut first).await.unwrap().into_data().unwrap(), "more");
        assert!(next(&mut first).await.is_none());
        assert!(first.again().is_none());
    }
}
