//! Label sets every part shares: direction, peer, TLS (Linkerd's `tls`,
//! `client_id`/`server_id`, `no_tls_reason`), a TCP connection's labels, and
//! the destination labels discovery gives an endpoint.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// Which side of the proxy a TCP connection is on: `src` was accepted from a
/// client, `dst` was opened to a server.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Peer {
    Src,
    Dst,
}

impl EncodeLabelValue for Peer {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> fmt::Result {
        let s = match self {
            Peer::Src => "src",
            Peer::Dst => "dst",
        };
        EncodeLabelValue::encode(&s, encoder)
    }
}

/// The TLS state of a connection, as Linkerd labels it: `tls`, and
/// `no_tls_reason`, `client_id` or `server_id` where they apply (absent ones
/// are left out, not written empty).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Tls {
    /// The peer did not offer mesh TLS (inbound plaintext).
    NotProvidedByRemote,
    /// Discovery gave no identity for the endpoint (outbound plaintext).
    NotProvidedByServiceDiscovery,
    /// The application's side of the proxy, which never takes mesh TLS:
    /// its connections out, and the inbound proxy's to it.
    Loopback,
    /// Inbound mesh TLS, with the client's verified identity.
    FromClient(Option<Arc<str>>),
    /// Outbound mesh TLS to an endpoint that proved this identity.
    ToServer(Arc<str>),
}

impl EncodeLabelSet for Tls {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        let (tls, reason, peer) = match self {
            Tls::NotProvidedByRemote => ("no_identity", Some("not_provided_by_remote"), None),
            Tls::NotProvidedByServiceDiscovery => (
                "no_identity",
                Some("not_provided_by_service_discovery"),
                None,
            ),
            Tls::Loopback => ("no_identity", Some("loopback"), None),
            Tls::FromClient(id) => ("true", None, id.as_deref().map(|id| ("client_id", id))),
            Tls::ToServer(id) => ("true", None, Some(("server_id", id.as_ref()))),
        };
        ("tls", tls).encode(encoder.encode_label())?;
        if let Some(reason) = reason {
            ("no_tls_reason", reason).encode(encoder.encode_label())?;
        }
        if let Some(peer) = peer {
            peer.encode(encoder.encode_label())?;
        }
        Ok(())
    }
}

/// A connection's or request's target, as Linkerd labels it:
/// `target_addr`, `target_ip` and `target_port`.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct TargetAddr(pub SocketAddr);

impl EncodeLabelSet for TargetAddr {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        use std::fmt::Write;
        let mut buf = String::with_capacity(48);
        let _ = write!(buf, "{}", self.0);
        ("target_addr", buf.as_str()).encode(encoder.encode_label())?;
        buf.clear();
        let _ = write!(buf, "{}", self.0.ip());
        ("target_ip", buf.as_str()).encode(encoder.encode_label())?;
        ("target_port", self.0.port()).encode(encoder.encode_label())
    }
}

/// The inbound `Server` a connection or request reached (`srv_group`,
/// `srv_kind`, `srv_name`, `srv_port`): from the policy controller, never
/// from the client.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct ServerLabel {
    pub server: weft_policy::Ref,
    pub port: u16,
}

impl EncodeLabelSet for ServerLabel {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        let s = &self.server;
        ("srv_group", &*s.group).encode(encoder.encode_label())?;
        ("srv_kind", &*s.kind).encode(encoder.encode_label())?;
        ("srv_name", &*s.name).encode(encoder.encode_label())?;
        ("srv_port", self.port).encode(encoder.encode_label())
    }
}

/// An optional label set, written only when present.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Maybe<L>(pub Option<L>);

impl<L: EncodeLabelSet> EncodeLabelSet for Maybe<L> {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        match &self.0 {
            Some(labels) => labels.encode(encoder),
            None => Ok(()),
        }
    }
}

/// The `authority` label of an outbound connection or request.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Authority(pub Arc<str>);

impl EncodeLabelSet for Authority {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        ("authority", &*self.0).encode(encoder.encode_label())
    }
}

/// A TCP connection's labels, in Linkerd's order: an outbound connection to
/// an endpoint carries the authority it was resolved for and the endpoint's
/// `dst_*` labels; an inbound one the `Server` it reached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    direction: Direction,
    peer: Peer,
    #[prometheus(flatten)]
    authority: Maybe<Authority>,
    #[prometheus(flatten)]
    target: TargetAddr,
    #[prometheus(flatten)]
    tls: Tls,
    #[prometheus(flatten)]
    server: Maybe<ServerLabel>,
    #[prometheus(flatten)]
    dst: DstLabels,
}

impl TcpLabels {
    pub fn new(direction: Direction, peer: Peer, target: SocketAddr, tls: Tls) -> Self {
        TcpLabels {
            direction,
            peer,
            authority: Maybe(None),
            target: TargetAddr(target),
            tls,
            server: Maybe(None),
            dst: DstLabels::default(),
        }
    }

    /// An inbound connection's labels, with the server it reached.
    pub fn with_server(mut self, server: ServerLabel) -> Self {
        self.server = Maybe(Some(server));
        self
    }

    /// An outbound connection's labels, with what discovery said: the
    /// authority the endpoint was resolved for, and its `dst_*` labels.
    pub fn with_endpoint(mut self, authority: Arc<str>, dst: DstLabels) -> Self {
        self.authority = Maybe(Some(Authority(authority)));
        self.dst = dst;
        self
    }
}

/// What discovery says about an endpoint (`namespace`, `service`,
/// `external_workload`, ...), exported as `dst_<name>` labels, as Linkerd
/// does, so a query can group by service or workload instead of address.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct DstLabels(Option<Arc<[(String, String)]>>);

impl DstLabels {
    /// Label names are made Prometheus-safe (`[a-zA-Z0-9_]`).
    pub fn new<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> Self {
        let labels: Arc<[(String, String)]> = labels
            .into_iter()
            .map(|(name, value)| {
                let name: String = name
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                (format!("dst_{name}"), value.clone())
            })
            .collect();
        DstLabels((!labels.is_empty()).then_some(labels))
    }
}

impl EncodeLabelSet for DstLabels {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelSetEncoder) -> fmt::Result {
        use prometheus_client::encoding::EncodeLabel;
        for (name, value) in self.0.iter().flat_map(|labels| labels.iter()) {
            (name.as_str(), value.as_str()).encode(encoder.encode_label())?;
        }
        Ok(())
    }
}
