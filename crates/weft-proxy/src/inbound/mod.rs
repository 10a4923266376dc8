//! The inbound side: connections from other workloads (or their proxies)
//! to this proxy's application.
//!
//! ```text
//! accepted ─▶ target (original destination, WEFT_PROXY_INBOUND_FORWARD_ADDR, or only
//!              a transport header, for a connection made to the inbound port itself)
//!          ─▶ opaque port? else detect
//!          ─▶ TLS with SNI = our identity? terminate mesh TLS ─▶ transport header, or detect again
//!          ─▶ identity required on this port? ─▶ [authorization: issue 12]
//!          ─┬▶ HTTP/1, HTTP/2 ─▶ http::serve (inbound::http: orig-proto, l5d-client-id)
//!           ├▶ opaque, TLS    ─▶ copied to the application
//!           └▶ nothing        ─▶ closed (opaque is a port's setting, never a fallback)
//! ```
//!
//! Every decision about who may reach the application is made here, before
//! a byte is passed on: the client identity comes only from a verified
//! certificate, and authorization will sit where the identity check is.

pub mod denials;
pub mod http;
pub mod policy;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, warn};
use weft_identity::Identity;

use crate::detect::{self, PrefixedIo, Protocol};
use crate::drain::Watch;
use crate::http::{HttpConn, Side};
use crate::io::Metered;
use crate::metrics::{Direction, HttpConnMetrics, Peer, ServerLabel, TcpConn, TcpLabels, Tls};
use crate::proxy::{Accepted, ClientIo, Shared, copy_opaque, detect_unless_opaque};
use crate::tls::MeshTlsConfigs;
use crate::transport_header::{SessionProtocol, TransportHeader};

/// Serves one inbound connection to its end.
pub async fn serve(shared: Arc<Shared>, accepted: Accepted, watch: Watch) {
    let config = &shared.config;
    let local = accepted.local;
    let client = accepted.client;
    // A connection that was not redirected came to the proxy's port itself:
    // with a forward address set (rootless), it goes there; otherwise only
    // mesh TLS with a transport header can say where (as a Linkerd proxy
    // sends opaque TCP).
    let target = if accepted.redirected() {
        Some(accepted.orig)
    } else {
        config.inbound_forward_addr
    };
    let labels =
        |target: SocketAddr, tls: Tls| TcpLabels::new(Direction::Inbound, Peer::Src, target, tls);
    let client_conn = shared
        .metrics
        .tcp_accepted(labels(target.unwrap_or(local), Tls::NotProvidedByRemote));
    let mut io = Metered::new(accepted.stream, client_conn.clone());
    let detect_timeout = config.inbound_detect_timeout;
    let Some((protocol, prefix)) = detect_unless_opaque(
        &mut io,
        target,
        &config.inbound_opaque_ports,
        detect_timeout,
    )
    .await
    else {
        return;
    };
    debug!(?target, protocol = protocol.as_str(), "serving");
    if protocol == Protocol::Tls
        && let Some(mesh) = shared.mesh_tls.clone()
        && let Some(local_id) = mesh.local_identity()
        && detect::client_hello_sni(&prefix).as_deref() == Some(local_id.as_str())
    {
        let io = PrefixedIo::new(prefix, io);
        // Boxed, like every stage after detection, so that a connection still
        // being detected (or refused) holds only a small future.
        let to = Destined { target, local };
        let accepted = Box::pin(accept_mesh_tls(&shared, &mesh, io, to, detect_timeout));
        let Some(mesh) = accepted.await else {
            return;
        };
        let tls = Tls::FromClient(mesh.client_id.as_ref().map(|c| c.as_str().into()));
        let conn = Conn {
            target: mesh.target,
            tls,
            client_id: mesh.client_id,
            client,
        };
        let io = PrefixedIo::new(mesh.prefix, mesh.io);
        return Box::pin(conn.serve(shared, io, client_conn, mesh.protocol, watch)).await;
    }
    let Some(target) = target else {
        shared
            .metrics
            .tcp_accept_error(Direction::Inbound, "no_target");
        return info!(
            %local,
            "closed a connection made to the inbound port itself without mesh TLS and a transport header (and WEFT_PROXY_INBOUND_FORWARD_ADDR is unset)"
        );
    };
    let conn = Conn {
        target,
        tls: Tls::NotProvidedByRemote,
        client_id: None,
        client,
    };
    let io = PrefixedIo::new(prefix, io);
    Box::pin(conn.serve(shared, io, client_conn, protocol, watch)).await
}

/// Where an inbound connection goes before mesh TLS says more: its target
/// when it has one (redirected, or the forward address), and the address it
/// reached (whose host a transport header's port is joined to otherwise).
#[derive(Clone, Copy)]
struct Destined {
    target: Option<SocketAddr>,
    local: SocketAddr,
}

type MeshServerIo = tokio_rustls::server::TlsStream<PrefixedIo<ClientIo>>;

/// An inbound mesh TLS connection, terminated, with what it carries.
struct MeshAccepted {
    io: MeshServerIo,
    client_id: Option<Identity>,
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
    mesh: &MeshTlsConfigs,
    io: PrefixedIo<ClientIo>,
    to: Destined,
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
        let host = to.target.unwrap_or(to.local);
        let target = match transport_target(shared.config.inbound_addr, host, &header) {
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
    let Some(target) = to.target else {
        info!(
            client_id = ?client_id.as_ref().map(|c| c.as_str()),
            "refused a mesh connection made to the inbound port itself without a transport header"
        );
        return None;
    };
    // A port its Server calls opaque is not detected: a server-speaks-first
    // protocol's client waits for the server, and would wait out the timeout.
    let policy = shared.inbound_policy(target.port()).await;
    let (protocol, prefix) = if policy.current().protocol.is_opaque() {
        (Protocol::Opaque, Bytes::new())
    } else {
        match detect::detect(&mut tls, detect_timeout).await {
            Ok(detected) => detected,
            Err(e) => {
                debug!(error = %e, "mesh TLS connection failed during protocol detection");
                return None;
            }
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

/// Where a transport header sends the connection: the same host as `target`
/// (the original target, or the address the connection reached), at the
/// header's port.
fn transport_target(
    inbound_addr: SocketAddr,
    target: SocketAddr,
    header: &TransportHeader,
) -> Result<SocketAddr, &'static str> {
    if header.name.is_some() {
        return Err("it names a gateway target, and Weft proxies are not gateways");
    }
    if header.port == inbound_addr.port() {
        return Err("it names the proxy's own inbound port, which would loop");
    }
    Ok(SocketAddr::new(target.ip(), header.port))
}

/// An inbound connection after detection (and, for mesh TLS, termination):
/// its target and who the client proved to be.
struct Conn {
    target: SocketAddr,
    tls: Tls,
    client_id: Option<Identity>,
    client: SocketAddr,
}

impl Conn {
    async fn serve<I>(
        self,
        shared: Arc<Shared>,
        io: I,
        client_conn: Arc<TcpConn>,
        protocol: Protocol,
        watch: Watch,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // The connection's labels are known once the port's Server is.
        let labels = TcpLabels::new(Direction::Inbound, Peer::Src, self.target, self.tls.clone());
        if let Err(refused) = self.admit(&shared) {
            client_conn.label(labels);
            shared
                .metrics
                .tcp_accept_error(Direction::Inbound, refused.error);
            return debug!(target = %self.target, "refused: {}", refused.why);
        }
        let policy = shared.inbound_policy(self.target.port()).await;
        let current = policy.current();
        let server_label = ServerLabel {
            server: current.server.clone(),
            port: self.target.port(),
        };
        client_conn.label(labels.with_server(server_label.clone()));
        // The port's policy may say what it speaks, whatever the bytes look like.
        let protocol = if current.protocol.is_opaque() {
            Protocol::Opaque
        } else {
            protocol
        };
        let decision = crate::metrics::Decision {
            target: self.target,
            server: &current.server,
            tls: &self.tls,
        };
        if !matches!(protocol, Protocol::Http1 | Protocol::Http2) {
            // Opaque connections are authorized once, by the server's authorizations.
            let client = weft_policy::Client {
                ip: self.client.ip(),
                tls: matches!(self.tls, Tls::FromClient(_)),
                identity: self.client_id.as_ref().map(|c| c.as_str()),
            };
            match current.permit(&client) {
                Some(permit) => shared.metrics.tcp_authz_allow(&decision, &permit.reference),
                None => {
                    shared.metrics.tcp_authz_deny(&decision);
                    shared.denials.refused(denials::Denial {
                        client: self.client.ip(),
                        identity: client.identity,
                        server: &current.server.name,
                        reason: "unauthorized",
                        route: None,
                    });
                    return debug!(target = %self.target, "connection refused by authorization policy");
                }
            }
        }
        drop(current);
        match protocol {
            Protocol::Http1 | Protocol::Http2 => {
                let metrics = HttpConnMetrics::new(
                    shared.metrics.clone(),
                    Direction::Inbound,
                    self.tls.clone(),
                )
                .with_server(server_label);
                let side = Side::Inbound(http::Conn::new(
                    shared.pools.inbound(self.target),
                    self.client_id,
                    http::Caller {
                        policy,
                        ip: self.client.ip(),
                        addr: self.client,
                        tls: self.tls.clone(),
                        target: self.target,
                    },
                ));
                let conn = HttpConn::new(side, protocol == Protocol::Http2, shared, metrics, watch);
                crate::http::serve_logged(io, conn).await
            }
            // A client that says nothing is not passed to the application:
            // opaque is a port's configuration, never a fallback
            // (server-speaks-first ports belong in WEFT_PROXY_INBOUND_OPAQUE_PORTS).
            Protocol::Nothing => {
                shared
                    .metrics
                    .tcp_accept_error(Direction::Inbound, "detect_timeout");
                debug!(
                    "closed: the client sent nothing before the detect timeout and the port is not opaque"
                )
            }
            Protocol::Tls | Protocol::Opaque => {
                let server = match shared.pools.dialer.connect_local(self.target).await {
                    Ok(s) => s,
                    Err(e) => {
                        return info!(error = %e, "opaque connection refused: endpoint unreachable");
                    }
                };
                copy_opaque(&shared, io, server, &client_conn, self.target).await
            }
        }
    }

    /// Whether this connection may reach the application. Authorization
    /// policy (issue 12) decides here.
    fn admit(&self, shared: &Shared) -> Result<(), Refused> {
        let required = shared
            .config
            .inbound_require_identity_ports
            .contains(self.target.port());
        if required && self.client_id.is_none() {
            return Err(Refused {
                error: "identity_required",
                why: "no verified client identity, and the port is in WEFT_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS",
            });
        }
        Ok(())
    }
}

/// Why a connection may not reach the application.
struct Refused {
    /// The `inbound_tcp_accept_errors_total` error label.
    error: &'static str,
    why: &'static str,
}
