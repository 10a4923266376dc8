//! Label sets every part shares: direction, peer, TLS (Linkerd's `tls`,
//! `client_id`/`server_id`, `no_tls_reason`), a TCP connection's labels, and
//! the destination labels discovery gives an endpoint.

use std::fmt;
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    direction: Direction,
    peer: Peer,
    target_addr: String,
    #[prometheus(flatten)]
    tls: Tls,
}

impl TcpLabels {
    pub fn new(direction: Direction, peer: Peer, target_addr: String, tls: Tls) -> Self {
        TcpLabels {
            direction,
            peer,
            target_addr,
            tls,
        }
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
