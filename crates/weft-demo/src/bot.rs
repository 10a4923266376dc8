//! The vote bot: steady traffic through the web front end, forever, so the
//! mesh always has something to show. One vote in ten is for the broken
//! `:doughnut:`; the rest are spread over the other emojis.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use tracing::{info, warn};

use crate::emoji::EMOJIS;
use crate::voting::BROKEN;

/// A small xorshift generator: votes need no cryptographic randomness.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        Rng(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pick(rng: &mut Rng) -> &'static str {
    if rng.next().is_multiple_of(10) {
        return BROKEN;
    }
    let others: Vec<&str> = EMOJIS
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != BROKEN)
        .collect();
    others[(rng.next() % others.len() as u64) as usize]
}

/// Where requests go: the web front end, or the proxy in front of it.
struct Target {
    connect_to: String,
    /// The request target: origin form directly, absolute form via a proxy.
    via_proxy: bool,
    authority: String,
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Empty<Bytes>>> {
    let tcp = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&target.connect_to),
    )
    .await
    .with_context(|| format!("connecting to {} timed out", target.connect_to))?
    .with_context(|| format!("connecting to {}", target.connect_to))?;
    tcp.set_nodelay(true)?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

async fn vote(
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    shortcode: &str,
) -> anyhow::Result<u16> {
    let path = format!("/api/vote?choice={}", shortcode.replace(':', "%3A"));
    let uri = if target.via_proxy {
        format!("http://{}{path}", target.authority)
    } else {
        path
    };
    let req = http::Request::get(uri)
        .header(http::header::HOST, &target.authority)
        .body(Empty::new())?;
    sender.ready().await?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .context("no answer within 10 s")??;
    let status = resp.status().as_u16();
    // Read the body so the connection can carry the next vote.
    resp.into_body().collect().await?;
    Ok(status)
}

pub async fn run(web: &str, rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        rate > 0.0 && rate <= 10_000.0,
        "the rate must be in (0, 10000] per second"
    );
    let target = match crate::net::http_proxy() {
        Some(proxy) => Target {
            connect_to: proxy,
            via_proxy: true,
            authority: web.to_string(),
        },
        None => Target {
            connect_to: web.to_string(),
            via_proxy: false,
            authority: web.to_string(),
        },
    };
    info!(web, via = %target.connect_to, rate, "voting");
    let mut rng = Rng::seeded();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut ok, mut failed, mut since) = (0u64, 0u64, Instant::now());
    let mut sender: Option<SendRequest<Empty<Bytes>>> = None;
    let shutdown = crate::net::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return Ok(()),
        }
        let shortcode = pick(&mut rng);
        let outcome = async {
            let conn = match sender.as_mut().filter(|s| !s.is_closed()) {
                Some(s) => s,
                None => sender.insert(connect(&target).await?),
            };
            vote(conn, &target, shortcode).await
        }
        .await;
        match outcome {
            Ok(200) => ok += 1,
            Ok(status) => {
                failed += 1;
                if shortcode != BROKEN {
                    warn!(shortcode, status, "vote failed");
                }
            }
            Err(e) => {
                failed += 1;
                sender = None;
                warn!(shortcode, error = format!("{e:#}"), "vote failed");
            }
        }
        if since.elapsed() >= Duration::from_secs(10) {
            info!(ok, failed, "votes in the last 10 s");
            (ok, failed, since) = (0, 0, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn about_one_vote_in_ten_is_broken() {
        let mut rng = Rng(42);
        let broken = (0..10_000).filter(|_| pick(&mut rng) == BROKEN).count();
        assert!((700..1300).contains(&broken), "{broken}");
    }
}
