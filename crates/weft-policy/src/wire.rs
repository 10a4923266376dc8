//! Weft's extension of Linkerd's outbound API: the same `OutboundPolicy`
//! message with more fields, at tags Linkerd's proto does not use: the
//! outbound rate limit and per-route circuit breakers.
//!
//! Protobuf readers skip fields they do not know, so linkerd2-proxy reads a
//! Weft controller's answers unchanged, and Weft's proxy reads a Linkerd
//! controller's (the field is then absent: no limit). Only Weft's proxy
//! and controller use these types; everything else speaks
//! `linkerd2_proxy_api::outbound::OutboundPolicy`.

use linkerd2_proxy_api::meta::Metadata;
use linkerd2_proxy_api::outbound as api;

/// `io.linkerd.proxy.outbound.OutboundPolicy`, field for field, plus Weft's.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboundPolicy {
    #[prost(message, optional, tag = "1")]
    pub protocol: Option<api::ProxyProtocol>,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<Metadata>,
    /// At most this many requests a second from each client's proxy. Tag
    /// 1000: far above any Linkerd uses.
    #[prost(message, optional, tag = "1000")]
    pub weft_rate_limit: Option<RateLimit>,
    /// Circuit breakers of single routes (Weft's per-route failure
    /// accrual), by the route's metadata as the policy names it.
    #[prost(message, repeated, tag = "1001")]
    pub weft_route_accruals: Vec<RouteAccrual>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RouteAccrual {
    #[prost(message, optional, tag = "1")]
    pub route: Option<Metadata>,
    #[prost(message, optional, tag = "2")]
    pub accrual: Option<api::FailureAccrual>,
}

#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RateLimit {
    #[prost(uint32, tag = "1")]
    pub requests_per_second: u32,
}

/// `io.linkerd.proxy.outbound.OutboundPolicies/Watch`, read as Weft's
/// message: what the proxy follows and what the CLI shows. Against a
/// Linkerd controller it reads the same answers with no extension.
pub async fn watch(
    channel: tonic::transport::Channel,
    spec: api::TrafficSpec,
) -> Result<tonic::Response<tonic::Streaming<OutboundPolicy>>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(format!("policy service not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<api::TrafficSpec, OutboundPolicy>::default();
    let path =
        http::uri::PathAndQuery::from_static("/io.linkerd.proxy.outbound.OutboundPolicies/Watch");
    grpc.server_streaming(tonic::Request::new(spec), path, codec)
        .await
}

impl OutboundPolicy {
    /// Linkerd's part of it.
    pub fn linkerd(&self) -> api::OutboundPolicy {
        api::OutboundPolicy {
            protocol: self.protocol.clone(),
            metadata: self.metadata.clone(),
        }
    }
}

impl From<api::OutboundPolicy> for OutboundPolicy {
    fn from(p: api::OutboundPolicy) -> Self {
        OutboundPolicy {
            protocol: p.protocol,
            metadata: p.metadata,
            weft_rate_limit: None,
            weft_route_accruals: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn linkerd_readers_skip_the_extension_and_weft_readers_see_it() {
        let ours = OutboundPolicy {
            protocol: None,
            metadata: Some(Metadata {
                kind: Some(linkerd2_proxy_api::meta::metadata::Kind::Default(
                    "http".into(),
                )),
            }),
            weft_rate_limit: Some(RateLimit {
                requests_per_second: 50,
            }),
            weft_route_accruals: vec![RouteAccrual {
                route: None,
                accrual: None,
            }],
        };
        let bytes = ours.encode_to_vec();
        let theirs =
            api::OutboundPolicy::decode(bytes.as_slice()).expect("Linkerd's type reads it");
        assert_eq!(theirs, ours.linkerd());
        let back = OutboundPolicy::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, ours);
        // A Linkerd controller's answer has no limit.
        let plain = OutboundPolicy::decode(theirs.encode_to_vec().as_slice()).unwrap();
        assert_eq!(plain.weft_rate_limit, None);
    }
}
