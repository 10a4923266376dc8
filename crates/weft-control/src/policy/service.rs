//! `InboundServerPolicies` (`GetPort`, `WatchPort`) and `OutboundPolicies`
//! (`Get`, `Watch`), each over one shared index per watched key (a workload
//! port; a resolved outbound target), recomputed once per store change, as
//! the destination service's index is.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use linkerd2_proxy_api::inbound as api;
use linkerd2_proxy_api::inbound::inbound_server_policies_server::InboundServerPolicies;
use linkerd2_proxy_api::outbound;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::debug;
use weft_api::Key;
use weft_policy::wire;

use super::{PolicyConfig, inbound, parse_workload};
use crate::destination::{DestinationMetrics, KindLabels, WatcherGuard};
use crate::store::Snapshot;
use crate::watches::{Watches, refresh, subscribe};

const INBOUND_POLICY: KindLabels = KindLabels {
    kind: "inbound_policy",
};
const OUTBOUND_POLICY: KindLabels = KindLabels {
    kind: "outbound_policy",
};

type PortKey = (Key, u16);

/// How an index computes the answer for a key from a snapshot.
type Compute<K, T> = fn(&Snapshot, &PolicyConfig, &K) -> Option<T>;

/// The answer for every watched key: `None` while what it names is not in
/// the store.
pub struct Index<K, T> {
    store: watch::Receiver<Arc<Snapshot>>,
    config: PolicyConfig,
    watched: Watches<K, Option<T>>,
    compute: Compute<K, T>,
    kind: &'static KindLabels,
    metrics: DestinationMetrics,
}

impl<K, T> Index<K, T>
where
    K: Clone + Eq + std::hash::Hash + Send + Sync + 'static,
    T: Clone + PartialEq + Send + Sync + 'static,
{
    /// Starts following the store; the index lives as long as the runtime.
    fn start(
        store: watch::Receiver<Arc<Snapshot>>,
        config: PolicyConfig,
        metrics: DestinationMetrics,
        compute: Compute<K, T>,
        kind: &'static KindLabels,
    ) -> Arc<Self> {
        let index = Arc::new(Index {
            store,
            config,
            watched: Default::default(),
            compute,
            kind,
            metrics,
        });
        crate::watches::follow(&index.store, &index, |index, snapshot| {
            refresh(&index.watched, |key| {
                (index.compute)(snapshot, &index.config, key)
            });
            index
                .metrics
                .targets
                .get_or_create(index.kind)
                .set(index.watched.lock().len() as i64);
        });
        index
    }

    fn now(&self, key: &K) -> Option<T> {
        (self.compute)(&self.store.borrow(), &self.config, key)
    }

    /// The first message is the current answer; then one per change. When
    /// what the key names leaves the store, the stream ends with `gone`:
    /// the proxy asks again.
    fn stream(&self, key: &K, gone: Status) -> Result<WatchStream<T>, Status> {
        let rx = subscribe(&self.watched, key, || self.now(key));
        if rx.borrow().is_none() {
            return Err(gone);
        }
        let guard = WatcherGuard::new(&self.metrics, self.kind);
        let counter = self.metrics.updates.get_or_create(self.kind).clone();
        let state = (rx, true, guard);
        let stream = futures_util::stream::unfold(state, move |(mut rx, first, guard)| {
            let counter = counter.clone();
            let gone = gone.clone();
            async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let current = rx.borrow_and_update().clone();
                match &*current {
                    Some(answer) => {
                        counter.inc();
                        Some((Ok(answer.clone()), (rx, false, guard)))
                    }
                    None => Some((Err(gone), (rx, false, guard))),
                }
            }
        });
        let stream = futures_util::StreamExt::scan(stream, false, |ended, item| {
            // Stops after the first error, which ends the stream for the client.
            if *ended {
                return futures_util::future::ready(None);
            }
            *ended = item.is_err();
            futures_util::future::ready(Some(item))
        });
        Ok(Box::pin(stream))
    }
}

type WatchStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Both policy services' indexes, started together beside Destination.
pub struct PolicyIndexes {
    inbound: Arc<Index<PortKey, api::Server>>,
    outbound: Arc<Index<super::outbound::Target, wire::OutboundPolicy>>,
}

impl PolicyIndexes {
    pub fn start(
        store: watch::Receiver<Arc<Snapshot>>,
        config: PolicyConfig,
        metrics: DestinationMetrics,
    ) -> Self {
        PolicyIndexes {
            inbound: Index::start(
                store.clone(),
                config.clone(),
                metrics.clone(),
                |snapshot, config, (workload, port)| {
                    inbound::server(snapshot, config, workload, *port)
                },
                &INBOUND_POLICY,
            ),
            outbound: Index::start(
                store,
                config,
                metrics,
                super::outbound::answer,
                &OUTBOUND_POLICY,
            ),
        }
    }

    pub fn inbound(&self) -> InboundPolicyService {
        InboundPolicyService {
            index: self.inbound.clone(),
        }
    }

    pub fn outbound(&self) -> OutboundPoliciesServer {
        OutboundPoliciesServer {
            service: Arc::new(OutboundPolicyService {
                index: self.outbound.clone(),
            }),
        }
    }
}

pub struct InboundPolicyService {
    index: Arc<Index<PortKey, api::Server>>,
}

fn port_key(spec: &api::PortSpec) -> Result<PortKey, Status> {
    let workload = parse_workload(&spec.workload).map_err(Status::invalid_argument)?;
    let port = u16::try_from(spec.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Status::invalid_argument(format!("{} is not a port", spec.port)))?;
    Ok((workload, port))
}

fn unknown(key: &PortKey) -> Status {
    Status::not_found(format!("no workload {} in the store", key.0))
}

#[tonic::async_trait]
impl InboundServerPolicies for InboundPolicyService {
    async fn get_port(
        &self,
        request: Request<api::PortSpec>,
    ) -> Result<Response<api::Server>, Status> {
        let key = port_key(request.get_ref())?;
        debug!(workload = %key.0, port = key.1, "GetPort");
        self.index
            .now(&key)
            .map(Response::new)
            .ok_or_else(|| unknown(&key))
    }

    type WatchPortStream = WatchStream<api::Server>;

    async fn watch_port(
        &self,
        request: Request<api::PortSpec>,
    ) -> Result<Response<Self::WatchPortStream>, Status> {
        let key = port_key(request.get_ref())?;
        debug!(workload = %key.0, port = key.1, "WatchPort");
        self.index.stream(&key, unknown(&key)).map(Response::new)
    }
}

pub struct OutboundPolicyService {
    index: Arc<Index<super::outbound::Target, wire::OutboundPolicy>>,
}

impl OutboundPolicyService {
    fn target(&self, spec: &outbound::TrafficSpec) -> Result<super::outbound::Target, Status> {
        use super::outbound::Refusal;
        super::outbound::target(&self.index.store.borrow(), &self.index.config, spec).map_err(
            |refusal| match refusal {
                Refusal::Invalid(why) => Status::invalid_argument(why),
                Refusal::NotFound(why) => Status::not_found(why),
            },
        )
    }

    async fn get(
        &self,
        request: Request<outbound::TrafficSpec>,
    ) -> Result<Response<wire::OutboundPolicy>, Status> {
        let target = self.target(request.get_ref())?;
        debug!(?target, "outbound Get");
        self.index
            .now(&target)
            .map(Response::new)
            .ok_or_else(|| no_service(&target))
    }

    async fn watch(
        &self,
        request: Request<outbound::TrafficSpec>,
    ) -> Result<Response<WatchStream<wire::OutboundPolicy>>, Status> {
        let target = self.target(request.get_ref())?;
        debug!(?target, "outbound Watch");
        self.index
            .stream(&target, no_service(&target))
            .map(Response::new)
    }
}

fn no_service(target: &super::outbound::Target) -> Status {
    Status::not_found(format!("{target:?} is no longer in the store"))
}

/// `io.linkerd.proxy.outbound.OutboundPolicies`, served by hand rather than
/// through linkerd2-proxy-api's generated server, because its answers are
/// Weft's [`wire::OutboundPolicy`]: Linkerd's message with Weft's extension,
/// which linkerd2-proxy reads as Linkerd's.
#[derive(Clone)]
pub struct OutboundPoliciesServer {
    service: Arc<OutboundPolicyService>,
}

impl tonic::server::NamedService for OutboundPoliciesServer {
    const NAME: &'static str = "io.linkerd.proxy.outbound.OutboundPolicies";
}

type Codec = tonic_prost::ProstCodec<wire::OutboundPolicy, outbound::TrafficSpec>;
type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

struct GetMethod(Arc<OutboundPolicyService>);

impl tonic::server::UnaryService<outbound::TrafficSpec> for GetMethod {
    type Response = wire::OutboundPolicy;
    type Future = BoxFuture<Result<Response<wire::OutboundPolicy>, Status>>;

    fn call(&mut self, request: Request<outbound::TrafficSpec>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.get(request).await })
    }
}

struct WatchMethod(Arc<OutboundPolicyService>);

impl tonic::server::ServerStreamingService<outbound::TrafficSpec> for WatchMethod {
    type Response = wire::OutboundPolicy;
    type ResponseStream = WatchStream<wire::OutboundPolicy>;
    type Future = BoxFuture<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<outbound::TrafficSpec>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.watch(request).await })
    }
}

impl<B> tower::Service<http::Request<B>> for OutboundPoliciesServer
where
    B: http_body::Body + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let service = self.service.clone();
        match req.uri().path() {
            "/io.linkerd.proxy.outbound.OutboundPolicies/Get" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(Codec::default());
                Ok(grpc.unary(GetMethod(service), req).await)
            }),
            "/io.linkerd.proxy.outbound.OutboundPolicies/Watch" => Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(Codec::default());
                Ok(grpc.server_streaming(WatchMethod(service), req).await)
            }),
            _ => Box::pin(async move {
                Ok(Status::unimplemented("no such method of OutboundPolicies").into_http())
            }),
        }
    }
}
