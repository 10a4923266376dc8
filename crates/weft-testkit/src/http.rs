//! An HTTP/1.1 + HTTP/2 (prior knowledge) server with one route per
//! behaviour a proxy must carry:
//!
//! | route | answer |
//! | --- | --- |
//! | `/hello` | `hello from weft-testkit` |
//! | `/echo` | the request body, streamed back as it arrives |
//! | `/headers` | the request's version, method, URI and headers, one per line |
//! | `/status/N` | status N |
//! | `/delay/MS` | 200 after MS milliseconds |
//! | `/bytes/N` | N bytes, streamed in 64 KiB chunks, never held in memory |
//! | `/upload` | reads the whole body, answers its length |
//! | `/trailers` | a body followed by the trailer `x-weft-trailer: done` |
//! | `/ws` | WebSocket-style upgrade echo (101, then raw bytes echoed) |

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, hyper::Error>;

fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(text.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r
}

const CHUNK: usize = 64 * 1024;

fn stream_bytes(total: u64) -> Body {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let frames = futures_util::stream::unfold(total, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let n = left.min(CHUNK as u64);
            Some((Ok(Frame::data(chunk.slice(..n as usize))), left - n))
        }
    });
    StreamBody::new(frames).boxed()
}

fn with_trailers() -> Body {
    let mut trailers = HeaderMap::new();
    trailers.insert("x-weft-trailer", HeaderValue::from_static("done"));
    let frames = futures_util::stream::iter([
        Ok::<_, hyper::Error>(Frame::data(Bytes::from_static(b"body before trailers\n"))),
        Ok(Frame::trailers(trailers)),
    ]);
    StreamBody::new(frames).boxed()
}

async fn route(mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let resp = match (parts.next().unwrap_or(""), parts.next()) {
        ("hello", None) => full(StatusCode::OK, "hello from weft-testkit\n"),
        ("echo", None) => Response::new(req.into_body().boxed()),
        ("headers", None) => {
            let mut out = format!(
                "version: {:?}\nmethod: {}\nuri: {}\n",
                req.version(),
                req.method(),
                req.uri()
            );
            for (name, value) in req.headers() {
                out.push_str(&format!(
                    "{name}: {}\n",
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            full(StatusCode::OK, out)
        }
        ("status", Some(code)) => match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => full(status, format!("status {code}\n")),
            None => full(StatusCode::BAD_REQUEST, "bad status\n"),
        },
        ("delay", Some(ms)) => {
            let ms = ms.parse::<u64>().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(StatusCode::OK, format!("slept {ms}ms\n"))
        }
        ("bytes", Some(n)) => match n.parse::<u64>() {
            Ok(n) => Response::new(stream_bytes(n)),
            Err(_) => full(StatusCode::BAD_REQUEST, "bad length\n"),
        },
        ("upload", None) => {
            let mut body = req.into_body();
            let mut total = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => total += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(e) => {
                        return Ok(full(StatusCode::BAD_REQUEST, format!("body error: {e}\n")));
                    }
                }
            }
            full(StatusCode::OK, format!("{total}\n"))
        }
        ("trailers", None) => Response::new(with_trailers()),
        ("ws", None) => {
            let on_upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                if let Ok(upgraded) = on_upgrade.await {
                    let mut io = TokioIo::new(upgraded);
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = io.read(&mut buf).await {
                        if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                }
            });
            let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
            r.headers_mut()
                .insert("connection", HeaderValue::from_static("upgrade"));
            r.headers_mut()
                .insert("upgrade", HeaderValue::from_static("weft-echo"));
            r
        }
        _ => full(StatusCode::NOT_FOUND, format!("no route for {path}\n")),
    };
    Ok(resp)
}

pub async fn serve(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service_fn(route))
                .await;
        });
    }
}
