//! The proxy's listeners and what happens to each accepted connection.
//!
//! ```text
//! accept ─▶ original destination ─▶ opaque port? ─▶ detect ─┬▶ HTTP/1, HTTP/2 ─▶ http::serve
//!                                                          └▶ opaque ─▶ tcp::copy_bidirectional
//! ```
//!
//! Outbound, a connection that was not redirected (its original destination is
//! the listener itself) is an explicit-proxy client: each HTTP request names its
//! target (absolute URI, CONNECT or Host). Inbound, such a connection goes to
//! `WEFT_PROXY_INBOUND_FORWARD_ADDR` if one is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Config;
use crate::detect::{self, PrefixedIo, Protocol};
use crate::drain::{Drain, ShutdownTrigger, Watch};
use crate::http::{self, HttpConn, client::Clients};
use crate::io::Metered;
use crate::metrics::{Direction, HttpConnMetrics, Metrics, Peer, TcpConn, TcpLabels, Tls};
use crate::transport_header::{SessionProtocol, TransportHeader};
use crate::{admin, orig_dst, tcp};

/// State shared by every connection.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Arc<Metrics>,
    /// Present when identity is on: terminates inbound mesh TLS.
    pub mesh_tls: Option<Arc<crate::tls::MeshTls>>,
    pub clients: Arc<Clients>,
    /// Present when a destination service is configured.
    pub discovery: Option<Arc<crate::discovery::Discovery>>,
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
        (Some(creds), Some(id)) => Some(Arc::new(crate::tls::MeshTls::new(
            creds.clone(),
            id.trust_anchors.clone(),
        ))),
        _ => None,
    };
    let dialer = Arc::new(tcp::Dialer {
        metrics: metrics.clone(),
        inbound_connect_timeout: config.inbound_connect_timeout,
        outbound_connect_timeout: config.outbound_connect_timeout,
        outbound_identities: config.outbound_identities.clone().into(),
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
        )?),
        None => None,
    };
    let shared = Arc::new(Shared {
        discovery,
        clients: Clients::new(dialer, config.http_pool_idle_timeout),
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
                let conn = serve_connection(
                    shared.clone(),
                    direction,
                    stream,
                    listen_addr,
                    watch.clone(),
                );
                tokio::spawn(
                    async move {
                        conn.await;
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

async fn serve_connection(
    shared: Arc<Shared>,
    direction: Direction,
    stream: TcpStream,
    listen_addr: SocketAddr,
    watch: Watch,
) {
    let _ = stream.set_nodelay(true);
    let local = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => return debug!(error = %e, "connection closed before it could be served"),
    };
    let orig = match orig_dst::original_dst(&stream) {
        Ok(a) => a,
        Err(e) => return warn!(error = %e, "cannot read the original destination; closing"),
    };
    let config = &shared.config;
    let target = match direction {
        _ if orig != local => Some(orig),
        Direction::Inbound => match config.inbound_forward_addr {
            Some(addr) => Some(addr),
            None => {
                return warn!(
                    %local,
                    "inbound connection was not redirected and WEFT_PROXY_INBOUND_FORWARD_ADDR is unset; closing"
                );
            }
        },
        Direction::Outbound => None,
    };
    let tls = match direction {
        Direction::Inbound => Tls::NotProvidedByRemote,
        Direction::Outbound => Tls::NotProvidedByServiceDiscovery,
    };
    let labels = |target: Option<SocketAddr>, tls: Tls| {
        let target = target.unwrap_or(local).to_string();
        TcpLabels::new(direction, Peer::Src, target, tls)
    };
    let client_conn = shared.metrics.tcp_accepted(labels(target, tls.clone()));
    let mut io = Metered::new(stream, client_conn.clone());

    let (opaque_ports, detect_timeout) = match direction {
        Direction::Inbound => (&config.inbound_opaque_ports, config.inbound_detect_timeout),
        Direction::Outbound => (
            &config.outbound_opaque_ports,
            config.outbound_detect_timeout,
        ),
    };
    let (protocol, prefix) = match target {
        Some(t) if opaque_ports.contains(t.port()) => (Protocol::Opaque, Bytes::new()),
        _ => match detect::detect(&mut io, detect_timeout).await {
            Ok(detected) => detected,
            Err(e) => return debug!(error = %e, "connection failed during protocol detection"),
        },
    };
    debug!(?target, protocol = protocol.as_str(), "serving");
    if protocol == Protocol::Tls
        && direction == Direction::Inbound
        && let (Some(mesh), Some(target)) = (shared.mesh_tls.clone(), target)
        && let Some(local) = mesh.local_identity()
        && detect::client_hello_sni(&prefix).as_deref() == Some(local.as_str())
    {
        let io = PrefixedIo::new(prefix, io);
        // Boxed, like every stage after detection, so that a connection still
        // being detected (or refused) holds only a small future.
        let accepted = Box::pin(accept_mesh_tls(&shared, &mesh, io, target, detect_timeout));
        let Some(mesh) = accepted.await else {
            return;
        };
        let tls = Tls::FromClient(mesh.client_id.as_ref().map(|c| c.as_str().into()));
        client_conn.label(labels(Some(mesh.target), tls.clone()));
        if mesh.client_id.is_none() && requires_identity(&shared, mesh.target) {
            return refuse_unidentified(&shared, mesh.target);
        }
        let conn = Conn {
            shared,
            direction,
            target: Some(mesh.target),
            listen_addr,
            tls,
            client_id: mesh.client_id,
            watch,
        };
        return Box::pin(conn.serve(
            PrefixedIo::new(mesh.prefix, mesh.io),
            client_conn,
            mesh.protocol,
        ))
        .await;
    }
    client_conn.label(labels(target, tls.clone()));
    if direction == Direction::Inbound
        && let Some(target) = target
        && requires_identity(&shared, target)
    {
        return refuse_unidentified(&shared, target);
    }
    let conn = Conn {
        shared,
        direction,
        target,
        listen_addr,
        tls,
        client_id: None,
        watch,
    };
    Box::pin(conn.serve(PrefixedIo::new(prefix, io), client_conn, protocol)).await
}

/// Whether inbound connections to `target` must carry a verified client identity.
fn requires_identity(shared: &Shared, target: SocketAddr) -> bool {
    shared
        .config
        .inbound_require_identity_ports
        .contains(target.port())
}

fn refuse_unidentified(shared: &Shared, target: SocketAddr) {
    shared
        .metrics
        .tcp_accept_error(Direction::Inbound, "identity_required");
    debug!(%target, "refused a connection without a verified client identity (WEFT_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS)");
}

type MeshServerIo = tokio_rustls::server::TlsStream<PrefixedIo<Metered<TcpStream>>>;

/// An inbound mesh TLS connection, terminated, with what it carries.
struct MeshAccepted {
    io: MeshServerIo,
    client_id: Option<weft_identity::Identity>,
    /// The original target, or the one its transport header names.
    target: SocketAddr,
    protocol: Protocol,
    prefix: Bytes,
}

/// Terminates mesh TLS, then learns what the connection carries: from the
/// transport header if the client negotiated one, else by detection. `None`
/// when the connection was refused (the reason is logged).
async fn accept_mesh_tls(
    shared: &Shared,
    mesh: &crate::tls::MeshTls,
    io: PrefixedIo<Metered<TcpStream>>,
    target: SocketAddr,
    detect_timeout: std::time::Duration,
) -> Option<MeshAccepted> {
    let Some(config) = mesh.server_config() else {
        warn!("mesh TLS requested but no server configuration; closing");
        return None;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let mut tls = match tokio::time::timeout(detect_timeout, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(error = %e, "mesh TLS handshake refused");
            return None;
        }
        Err(_) => {
            info!(?detect_timeout, "mesh TLS handshake timed out");
            return None;
        }
    };
    let client_id = crate::tls::peer_identity(tls.get_ref().1);
    debug!(client_id = ?client_id.as_ref().map(|c| c.as_str()), "mesh TLS established");
    if crate::tls::expects_transport_header(tls.get_ref().1) {
        let header = match tokio::time::timeout(detect_timeout, TransportHeader::read(&mut tls))
            .await
        {
            Ok(Ok(header)) => header,
            Ok(Err(e)) => {
                info!(error = %e, client_id = ?client_id.as_ref().map(|c| c.as_str()), "refused a mesh connection with a bad transport header");
                return None;
            }
            Err(_) => {
                info!(?detect_timeout, "no transport header in time; closing");
                return None;
            }
        };
        let target = match transport_target(&shared.config, target, &header) {
            Ok(target) => target,
            Err(why) => {
                info!(port = header.port, name = ?header.name, "refused a transport header: {why}");
                return None;
            }
        };
        let protocol = match header.protocol {
            None => Protocol::Opaque,
            Some(SessionProtocol::Http1) => Protocol::Http1,
            Some(SessionProtocol::Http2) => Protocol::Http2,
        };
        return Some(MeshAccepted {
            io: tls,
            client_id,
            target,
            protocol,
            prefix: Bytes::new(),
        });
    }
    let (protocol, prefix) = match detect::detect(&mut tls, detect_timeout).await {
        Ok(detected) => detected,
        Err(e) => {
            debug!(error = %e, "mesh TLS connection failed during protocol detection");
            return None;
        }
    };
    Some(MeshAccepted {
        io: tls,
        client_id,
        target,
        protocol,
        prefix,
    })
}

/// Where a transport header sends the connection: the same host as the
/// original target, at the header's port.
fn transport_target(
    config: &Config,
    target: SocketAddr,
    header: &TransportHeader,
) -> Result<SocketAddr, &'static str> {
    if header.name.is_some() {
        return Err("it names a gateway target, and Weft proxies are not gateways");
    }
    if header.port == config.inbound_addr.port() {
        return Err("it names the proxy's own inbound port, which would loop");
    }
    Ok(SocketAddr::new(target.ip(), header.port))
}

/// A connection after detection (and, for mesh TLS, after termination).
struct Conn {
    shared: Arc<Shared>,
    direction: Direction,
    target: Option<SocketAddr>,
    listen_addr: SocketAddr,
    tls: Tls,
    client_id: Option<weft_identity::Identity>,
    watch: Watch,
}

impl Conn {
    async fn serve<I>(self, io: I, client_conn: Arc<TcpConn>, protocol: Protocol)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        match (protocol, self.target) {
            (Protocol::Http1 | Protocol::Http2, _) => {
                let metrics =
                    HttpConnMetrics::new(self.shared.metrics.clone(), self.direction, self.tls);
                let conn = HttpConn::new(
                    self.direction,
                    self.target,
                    protocol == Protocol::Http2,
                    self.listen_addr,
                    self.shared.clone(),
                    metrics,
                    self.client_id,
                    self.watch,
                );
                match http::serve(io, Arc::new(conn)).await {
                    Err(e) if e.is_parse() || e.is_timeout() => {
                        info!(error = %e, "closed HTTP connection: client sent a malformed or incomplete request")
                    }
                    Err(e) => debug!(error = %e, "HTTP connection ended with an error"),
                    Ok(()) => {}
                }
            }
            // Inbound, a client that says nothing is not passed to the
            // application: opaque is a port's configuration, never a fallback
            // (server-speaks-first ports belong in WEFT_PROXY_INBOUND_OPAQUE_PORTS).
            (Protocol::Nothing, _) if self.direction == Direction::Inbound => {
                self.shared
                    .metrics
                    .tcp_accept_error(self.direction, "detect_timeout");
                debug!(
                    "closed: the client sent nothing before the detect timeout and the port is not opaque"
                )
            }
            (Protocol::Tls | Protocol::Opaque | Protocol::Nothing, Some(target)) => {
                forward_opaque(&self.shared, self.direction, io, client_conn, target).await
            }
            (Protocol::Tls | Protocol::Opaque | Protocol::Nothing, None) => {
                info!(
                    "explicit-proxy client did not speak HTTP; closing (set http_proxy only for HTTP clients)"
                )
            }
        }
    }
}

async fn forward_opaque<I>(
    shared: &Shared,
    direction: Direction,
    client: I,
    client_conn: Arc<TcpConn>,
    target: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    // With discovery, each outbound connection is balanced on its own.
    let (target, pick) = match (&shared.discovery, direction) {
        (Some(discovery), Direction::Outbound) => {
            let resolution = discovery.resolve(&target.to_string());
            match http::choose(&resolution, shared.config.discovery_timeout).await {
                Ok(http::Choice::Pick(pick)) => (pick.addr(), Some(pick)),
                Ok(http::Choice::Unknown) => (target, None),
                Ok(http::Choice::NoAnswer) if http::may_guess(&shared.config, target) => {
                    (target, None)
                }
                Ok(http::Choice::NoAnswer) => {
                    return info!(
                        %target,
                        "opaque connection refused: no answer from the destination service, and the target is in WEFT_PROXY_MESH_NETWORKS"
                    );
                }
                Err(e) => return info!(error = %e, "opaque connection refused"),
            }
        }
        _ => (target, None),
    };
    let connected = shared
        .clients
        .dialer
        .connect_opaque(direction, target)
        .await;
    if let Some(pick) = pick {
        pick.done(connected.is_err());
    }
    let server = match connected {
        Ok(s) => s,
        Err(e) => return info!(error = %e, "opaque connection refused: endpoint unreachable"),
    };
    match tcp::copy_bidirectional(client, server, &client_conn, shared.config.tcp_idle_timeout)
        .await
    {
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
