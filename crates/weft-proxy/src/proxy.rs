//! The proxy's process: its listeners, the state every connection shares,
//! readiness, signals and drain. Each accepted connection goes to its side:
//!
//! ```text
//! inbound listener  ─▶ inbound::serve  (mesh TLS, transport header, identity, to the application)
//! outbound listener ─▶ outbound::serve (target, discovery, balancing, to an endpoint)
//! ```
//!
//! Both sides read the original destination and detect the protocol the
//! same way ([`Accepted`], [`detect_unless_opaque`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::config::PortSet;
use crate::detect::{self, Protocol};
use crate::drain::{Drain, ShutdownTrigger, Watch};
use crate::http::pool::Pools;
use crate::io::Metered;
use crate::metrics::{Direction, Metrics, TcpConn};
use crate::{admin, dial, inbound, orig_dst, outbound};

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Present when identity is on: terminates inbound mesh TLS.
    pub mesh_tls: Option<Arc<crate::tls::MeshTlsConfigs>>,
    pub pools: Arc<Pools>,
    /// Present when a destination service is configured.
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
    /// Present when a policy service is configured.
    pub policies: Option<Arc<crate::inbound::policy::Policies>>,
    /// The inbound policy without (or before) the policy service.
    pub default_policy: Arc<weft_policy::PortPolicy>,
    pub denials: crate::inbound::denials::DenialLog,
    /// Present when access logging is on.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
}

impl Shared {
    /// The inbound policy of `port`, as it changes.
    pub async fn inbound_policy(&self, port: u16) -> crate::inbound::policy::PortWatch {
        match &self.policies {
            Some(p) => p.port(port).await,
            None => crate::inbound::policy::PortWatch::fixed(self.default_policy.clone()),
        }
    }
}

/// Whether the proxy should receive traffic (`/ready`): listeners bound, not
/// draining, and (with identity on) holding a certificate.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    serving: Arc<AtomicBool>,
    identity: Option<weft_identity::certify::CredentialsWatch>,
}

impl Readiness {
    pub fn set(&self, serving: bool) {
        self.serving.store(serving, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.serving.load(Ordering::Acquire)
            && self.identity.as_ref().is_none_or(|w| w.borrow().is_some())
    }

    /// Why the proxy is not ready, for `/ready`'s body.
    pub fn reason(&self) -> &'static str {
        if !self.serving.load(Ordering::Acquire) {
            "draining"
        } else if !self.is_ready() {
            "waiting for a certificate from the identity service"
        } else {
            "ready"
        }
    }
}

fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .with_context(|| format!("creating the {what} socket"))?;
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding the {what} listener to {addr}"))?;
    socket
        .listen(1024)
        .with_context(|| format!("listening on {addr} ({what})"))
}

/// Runs the proxy until SIGTERM, SIGINT or `/shutdown`, then drains.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let inbound = bind(config.inbound_addr, "inbound")?;
    let outbound = bind(config.outbound_addr, "outbound")?;
    let admin_listener = bind(config.admin_addr, "admin")?;
    info!(
        inbound = %inbound.local_addr()?,
        outbound = %outbound.local_addr()?,
        admin = %admin_listener.local_addr()?,
        "listening"
    );

    let metrics = Metrics::new(
        crate::metrics::SeriesLimits {
            max_series: config.metrics_max_series,
            idle_timeout: config.metrics_idle_timeout,
        },
        config.inbound_metrics_authority,
    );
    let identity = match config.identity.clone() {
        Some(identity) => {
            let metrics = metrics.clone();
            let on_refresh = Box::new(move |outcome: Option<std::time::SystemTime>| {
                metrics.identity_refreshed(outcome);
            });
            Some(weft_identity::certify::spawn(identity, on_refresh)?)
        }
        None => None,
    };
    let mesh_tls = match (&identity, &config.identity) {
        (Some(creds), Some(id)) => Some(Arc::new(crate::tls::MeshTlsConfigs::new(
            creds.clone(),
            id.trust_anchors.clone(),
        ))),
        _ => None,
    };
    let dialer = Arc::new(dial::Dialer {
        metrics: metrics.clone(),
        inbound_connect_timeout: config.inbound_connect_timeout,
        outbound_connect_timeout: config.outbound_connect_timeout,
        outbound_identities: config.outbound_identities.clone().into(),
        endpoint_labels: Default::default(),
        mesh: mesh_tls.clone(),
    });
    let discovery = match &config.destination {
        Some(destination) => Some(crate::discovery::Discovery::new(
            destination,
            config.identity.as_ref().map(|id| &id.trust_anchors),
            config.destination_context.clone(),
            dialer.clone(),
            metrics.clone(),
            config.outbound_connect_timeout,
            config
                .policy
                .as_ref()
                .map(|(svc, workload)| (svc, workload.as_str())),
        )?),
        None => None,
    };
    let default_policy = Arc::new(weft_policy::PortPolicy::default_policy(
        &config.inbound_default_policy,
        &config.policy_cluster_networks,
        config.inbound_detect_timeout,
    ));
    let policies = match &config.policy {
        Some((svc, workload)) => Some(crate::inbound::policy::Policies::new(
            svc,
            config.identity.as_ref().map(|id| &id.trust_anchors),
            workload.clone(),
            default_policy.clone(),
            config.discovery_timeout,
            metrics.clone(),
            config.outbound_connect_timeout,
        )?),
        None => None,
    };
    let shared = Arc::new(Shared {
        policies,
        default_policy,
        denials: Default::default(),
        access_log: config.access_log.map(|format| {
            crate::access_log::AccessLog::start(
                format,
                std::io::stderr(),
                metrics.access_log_dropped.clone(),
            )
        }),
        discovery,
        pools: Pools::new(dialer, config.http_pool_idle_timeout),
        metrics,
        mesh_tls,
        config,
    });
    let (drain, watch) = Drain::new();
    let (shutdown, mut shutdown_requested) = ShutdownTrigger::new();
    let readiness = Readiness {
        identity,
        ..Readiness::default()
    };

    tokio::spawn(accept_loop(
        shared.clone(),
        Direction::Inbound,
        inbound,
        watch.clone(),
    ));
    tokio::spawn(accept_loop(
        shared.clone(),
        Direction::Outbound,
        outbound,
        watch,
    ));
    tokio::spawn(admin::serve(
        admin_listener,
        shared.metrics.clone(),
        readiness.clone(),
        // The trigger itself stays here: a dropped one would read as a request.
        shared
            .config
            .shutdown_endpoint_enabled
            .then(|| shutdown.clone()),
    ));
    readiness.set(true);

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let _shutdown = shutdown;
    let why = tokio::select! {
        _ = sigterm.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = shutdown_requested.recv() => "/shutdown",
    };
    let grace = shared.config.shutdown_grace_period;
    info!(
        signal = why,
        ?grace,
        "draining: listeners closed, finishing in-flight requests"
    );
    readiness.set(false);
    if drain.drain(grace).await {
        info!("drained");
    } else {
        warn!(
            ?grace,
            "grace period over with connections still open; closing them"
        );
    }
    Ok(())
}

/// At most one warning per listener this often while it refuses connections.
const LIMIT_WARNING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

async fn accept_loop(
    shared: Arc<Shared>,
    direction: Direction,
    listener: TcpListener,
    watch: Watch,
) {
    let listen_addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return warn!(%direction, error = %e, "listener has no address"),
    };
    let max = match direction {
        Direction::Inbound => shared.config.inbound_max_connections,
        Direction::Outbound => shared.config.outbound_max_connections,
    };
    // A connection holds a permit for its whole life: memory and file
    // descriptors stay bounded however many clients arrive.
    let permits = Arc::new(tokio::sync::Semaphore::new(max));
    let mut last_warned: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = watch.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, client)) => {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    shared
                        .metrics
                        .tcp_accept_error(direction, "connection_limit");
                    if last_warned.is_none_or(|t| t.elapsed() >= LIMIT_WARNING_INTERVAL) {
                        last_warned = Some(std::time::Instant::now());
                        warn!(%direction, max, %client, "connection limit reached; closing new connections (see WEFT_PROXY_INBOUND_MAX_CONNECTIONS and WEFT_PROXY_OUTBOUND_MAX_CONNECTIONS)");
                    }
                    drop(stream);
                    continue;
                };
                let span = info_span!("conn", dir = %direction, %client);
                let (shared, watch) = (shared.clone(), watch.clone());
                tokio::spawn(
                    async move {
                        let Some(accepted) = Accepted::new(stream, client, listen_addr) else {
                            return;
                        };
                        match direction {
                            Direction::Inbound => inbound::serve(shared, accepted, watch).await,
                            Direction::Outbound => outbound::serve(shared, accepted, watch).await,
                        }
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                // Typically EMFILE: back off instead of spinning.
                warn!(%direction, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// An accepted connection, with the addresses its side decides by.
pub struct Accepted {
    pub stream: TcpStream,
    /// The address the client connected to (the listener, unless redirected).
    pub local: SocketAddr,
    /// The original destination; `local` when the connection was not redirected.
    pub orig: SocketAddr,
    /// The listener's own address, to refuse requests that would loop.
    pub listen_addr: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
}

impl Accepted {
    /// `None` (logged) when the connection cannot be served.
    fn new(stream: TcpStream, client: SocketAddr, listen_addr: SocketAddr) -> Option<Self> {
        // Small writes (request heads, gRPC frames) must not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let local = match stream.local_addr() {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "connection closed before it could be served");
                return None;
            }
        };
        let orig = match orig_dst::original_dst(&stream) {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "cannot read the original destination; closing");
                return None;
            }
        };
        Some(Accepted {
            stream,
            local,
            orig,
            listen_addr,
            client,
        })
    }

    /// Whether iptables (or a test) redirected the connection here.
    pub fn redirected(&self) -> bool {
        self.orig != self.local
    }
}

/// The connection's protocol: opaque without looking when its target port
/// is configured so, else detected from its first bytes. `None` (logged)
/// when the connection failed during detection.
pub async fn detect_unless_opaque<I: AsyncRead + Unpin>(
    io: &mut I,
    target: Option<SocketAddr>,
    opaque_ports: &PortSet,
    timeout: std::time::Duration,
) -> Option<(Protocol, Bytes)> {
    match target {
        Some(t) if opaque_ports.contains(t.port()) => Some((Protocol::Opaque, Bytes::new())),
        _ => match detect::detect(io, timeout).await {
            Ok(detected) => Some(detected),
            Err(e) => {
                debug!(error = %e, "connection failed during protocol detection");
                None
            }
        },
    }
}

/// Copies an opaque connection to its server until either ends.
pub async fn copy_opaque<C, S>(
    shared: &Shared,
    client: C,
    server: S,
    client_conn: &Arc<TcpConn>,
    target: SocketAddr,
) where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let idle = shared.config.tcp_idle_timeout;
    match crate::io::copy_bidirectional(client, server, client_conn, idle).await {
        Ok((sent, received)) => debug!(%target, sent, received, "opaque connection closed"),
        Err(e) => {
            client_conn.set_error(&e);
            debug!(
                %target,
                sent = client_conn.bytes_read(),
                received = client_conn.bytes_written(),
                error = %e,
                "opaque connection ended"
            )
        }
    }
}

/// A client connection, metered from its first byte.
pub type ClientIo = Metered<TcpStream>;
