//! The web front end: a page and a small JSON API over the two gRPC
//! services.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /` | the page: every emoji (streamed from the emoji service) and the leaderboard |
//! | `GET /api/list` | the emojis, JSON |
//! | `GET` or `POST /api/vote?choice=:joy:` | one vote; `:doughnut:` fails with 500 |
//! | `GET /api/leaderboard` | the votes, most first, JSON |
//! | `GET /healthz` | 200 when serving |
//!
//! A request's `x-canary` header goes on to the emoji service (a route may
//! send canary calls to another version), and every answer that called it
//! says which version answered (`x-emoji-version`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::json;
use tonic::transport::Channel;
use tracing::{info, warn};

use crate::pb::emoji_service_client::EmojiServiceClient;
use crate::pb::voting_service_client::VotingServiceClient;
use crate::pb::{FindRequest, ListRequest, ResultsRequest, VoteRequest};

struct Backends {
    emoji: EmojiServiceClient<Channel>,
    voting: VotingServiceClient<Channel>,
}

type Body = Full<Bytes>;

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    resp
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    respond(status, "application/json", value.to_string())
}

/// A failed backend call as an HTTP answer that says which backend and why.
fn backend_failed(what: &str, status: &tonic::Status) -> Response<Body> {
    let code = match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => StatusCode::BAD_GATEWAY,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if code.is_server_error() {
        warn!(what, code = ?status.code(), message = status.message(), "backend call failed");
    }
    json(
        code,
        json!({"error": format!("{what} failed: {}", status.message())}),
    )
}

/// The `choice` parameter of a query string, percent-decoded.
fn choice(query: Option<&str>) -> Option<String> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("choice="))?;
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            // A `%` without two characters after it is kept as it is.
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A call to the emoji service carrying the request's `x-canary`, if any
/// (a short visible value; anything else is not passed on).
fn emoji_call<T>(message: T, canary: Option<&http::HeaderValue>) -> tonic::Request<T> {
    let mut call = tonic::Request::new(message);
    if let Some(value) = canary
        .filter(|v| v.len() <= 64)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        call.metadata_mut().insert("x-canary", value);
    }
    call
}

/// Which emoji version answered, to say so on web's own answer.
fn version_of(metadata: &tonic::metadata::MetadataMap) -> Option<http::HeaderValue> {
    metadata
        .get("x-emoji-version")
        .and_then(|v| http::HeaderValue::from_bytes(v.as_bytes()).ok())
}

fn with_version(mut resp: Response<Body>, version: Option<http::HeaderValue>) -> Response<Body> {
    if let Some(v) = version {
        resp.headers_mut().insert("x-emoji-version", v);
    }
    resp
}

async fn route(
    backends: Arc<Backends>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path();
    let canary = req.headers().get("x-canary");
    let resp = match (req.method(), path) {
        (&Method::GET, "/") => page(&backends, canary).await,
        (&Method::GET, "/healthz") => respond(StatusCode::OK, "text/plain", "ok\n"),
        (&Method::GET, "/api/list") => {
            let call = emoji_call(ListRequest {}, canary);
            match backends.emoji.clone().list(call).await {
                Ok(list) => {
                    let version = version_of(list.metadata());
                    let body = json(
                        StatusCode::OK,
                        json!(
                            list.into_inner()
                                .emojis
                                .iter()
                                .map(|e| json!({"shortcode": e.shortcode, "unicode": e.unicode}))
                                .collect::<Vec<_>>()
                        ),
                    );
                    with_version(body, version)
                }
                Err(s) => backend_failed("listing emojis", &s),
            }
        }
        (&Method::GET | &Method::POST, "/api/vote") => match choice(req.uri().query()) {
            Some(shortcode) => vote(&backends, shortcode, canary).await,
            None => json(
                StatusCode::BAD_REQUEST,
                json!({"error": "say what to vote for: /api/vote?choice=:joy:"}),
            ),
        },
        (&Method::GET, "/api/leaderboard") => {
            match backends.voting.clone().results(ResultsRequest {}).await {
                Ok(r) => json(
                    StatusCode::OK,
                    json!(
                        r.into_inner()
                            .tallies
                            .iter()
                            .map(|t| json!({"shortcode": t.shortcode, "votes": t.votes}))
                            .collect::<Vec<_>>()
                    ),
                ),
                Err(s) => backend_failed("reading the results", &s),
            }
        }
        _ => json(
            StatusCode::NOT_FOUND,
            json!({"error": format!("no route for {} {path}", req.method())}),
        ),
    };
    Ok(resp)
}

async fn vote(
    backends: &Backends,
    shortcode: String,
    canary: Option<&http::HeaderValue>,
) -> Response<Body> {
    let find = FindRequest {
        shortcode: shortcode.clone(),
    };
    let version = match backends.emoji.clone().find(emoji_call(find, canary)).await {
        Ok(found) => version_of(found.metadata()),
        Err(s) => return backend_failed("finding the emoji", &s),
    };
    let resp = match backends
        .voting
        .clone()
        .vote(VoteRequest {
            shortcode: shortcode.clone(),
        })
        .await
    {
        Ok(r) => json(
            StatusCode::OK,
            json!({"shortcode": shortcode, "votes": r.into_inner().votes}),
        ),
        Err(s) => backend_failed("voting", &s),
    };
    with_version(resp, version)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page: emojis as they stream from the emoji service, then the
/// leaderboard.
async fn page(backends: &Backends, canary: Option<&http::HeaderValue>) -> Response<Body> {
    let call = emoji_call(ListRequest {}, canary);
    let (version, mut stream) = match backends.emoji.clone().stream(call).await {
        Ok(s) => (version_of(s.metadata()), s.into_inner()),
        Err(s) => return backend_failed("streaming emojis", &s),
    };
    let mut grid = String::new();
    loop {
        match stream.message().await {
            Ok(Some(e)) => grid.push_str(&format!(
                "<a class=\"emoji\" href=\"/api/vote?choice={code}\" title=\"{code}\">{char}</a>\n",
                code = escape(&e.shortcode),
                char = escape(&e.unicode)
            )),
            Ok(None) => break,
            Err(s) => return backend_failed("streaming emojis", &s),
        }
    }
    let board = match backends.voting.clone().results(ResultsRequest {}).await {
        Ok(r) => r
            .into_inner()
            .tallies
            .iter()
            .take(10)
            .map(|t| format!("<li>{} — {}</li>", escape(&t.shortcode), t.votes))
            .collect::<String>(),
        Err(s) => return backend_failed("reading the results", &s),
    };
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Weft demo: emoji vote</title>\n\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}\
         .emoji{{font-size:2em;text-decoration:none;margin:.2em}}</style></head>\n\
         <body><h1>Vote for your favourite emoji</h1>\n<p id=\"emojis\">\n{grid}</p>\n\
         <h2>Leaderboard</h2>\n<ol id=\"leaderboard\">{board}</ol>\n\
         <p>Votes for 🍩 always fail: that is the demo's broken path.</p></body></html>\n"
    );
    with_version(
        respond(StatusCode::OK, "text/html; charset=utf-8", html),
        version,
    )
}

pub async fn serve(listen: SocketAddr, emoji: &str, voting: &str) -> anyhow::Result<()> {
    let backends = Arc::new(Backends {
        emoji: EmojiServiceClient::new(crate::net::grpc_channel(emoji)?),
        voting: VotingServiceClient::new(crate::net::grpc_channel(voting)?),
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(addr = %listener.local_addr()?, emoji, voting, "web front end listening");
    let shutdown = crate::net::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut shutdown => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let backends = backends.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| route(backends.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::choice;

    #[test]
    fn the_choice_is_percent_decoded() {
        assert_eq!(choice(Some("choice=%3Ajoy%3A")).as_deref(), Some(":joy:"));
        assert_eq!(choice(Some("a=1&choice=:taco:")).as_deref(), Some(":taco:"));
        assert_eq!(choice(Some("choice=%3")).as_deref(), Some("%3"));
        assert_eq!(choice(Some("choice=%zz%3A")), None);
        assert_eq!(choice(Some("other=1")), None);
        assert_eq!(choice(None), None);
    }
}
