//! The response body the proxy returns: the upstream body streamed through
//! untouched, or empty for responses the proxy makes itself.
//!
//! The upstream variant records `response_total` when the stream ends, because
//! only then is a gRPC response's outcome known (its `grpc-status` trailer).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus_client::metrics::counter::Counter;

/// How a response will be classified once it ends.
#[derive(Debug)]
pub struct ResponseEnd {
    pub success: Counter,
    pub failure: Counter,
    /// gRPC responses are classified by `grpc-status`, others by HTTP status.
    pub grpc: bool,
    pub http_failed: bool,
}

impl ResponseEnd {
    /// Records the outcome; `trailers` are the final trailers if any, `clean`
    /// whether the stream ended without error.
    fn record(self, trailers: Option<&HeaderMap>, clean: bool) {
        let failed = !clean
            || if self.grpc {
                trailers.and_then(grpc_status).is_some_and(|code| code != 0)
            } else {
                self.http_failed
            };
        if failed {
            self.failure.inc()
        } else {
            self.success.inc()
        };
    }
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
                    end.record(Some(trailers), true);
                }
            }
            Some(Err(_)) => {
                if let Some(end) = end.take() {
                    end.record(None, false);
                }
            }
            None => {
                if let Some(end) = end.take() {
                    end.record(None, true);
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
    /// (the client went away mid-stream).
    fn drop(&mut self) {
        if let ProxyBody::Upstream { inner, end } = self
            && let Some(end) = end.take()
        {
            end.record(None, inner.is_end_stream());
        }
    }
}

pin_project_lite::pin_project! {
    /// The request body sent upstream: the client's, streamed; or bytes
    /// buffered so that a retryable request can be sent again.
    #[project = RequestBodyProj]
    #[derive(Debug)]
    pub enum RequestBody {
        Streaming { #[pin] body: Incoming },
        Buffered { data: Option<Bytes> },
    }
}

impl RequestBody {
    pub fn streaming(body: Incoming) -> Self {
        RequestBody::Streaming { body }
    }

    pub fn buffered(data: Bytes) -> Self {
        RequestBody::Buffered {
            data: (!data.is_empty()).then_some(data),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.project() {
            RequestBodyProj::Streaming { body } => body.poll_frame(cx),
            RequestBodyProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Streaming { body } => body.is_end_stream(),
            RequestBody::Buffered { data } => data.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Streaming { body } => body.size_hint(),
            RequestBody::Buffered { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}
