//! `InboundServerPolicies`: `GetPort` and `WatchPort` over one shared index
//! per (workload, port), recomputed once per store change, as the
//! destination service's index is.

use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use linkerd2_proxy_api::inbound as api;
use linkerd2_proxy_api::inbound::inbound_server_policies_server::InboundServerPolicies;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::debug;
use weft_api::Key;

use super::{PolicyConfig, inbound, parse_workload};
use crate::destination::{DestinationMetrics, KindLabels, WatcherGuard};
use crate::store::Snapshot;
use crate::watches::{Watches, refresh, subscribe};

const INBOUND_POLICY: KindLabels = KindLabels {
    kind: "inbound_policy",
};

type PortKey = (Key, u16);

/// The inbound policy of every watched workload port.
pub struct Index {
    store: watch::Receiver<Arc<Snapshot>>,
    config: PolicyConfig,
    ports: Watches<PortKey, Option<api::Server>>,
    metrics: DestinationMetrics,
}

impl Index {
    /// Starts following the store; the index lives as long as the runtime.
    pub fn start(
        store: watch::Receiver<Arc<Snapshot>>,
        config: PolicyConfig,
        metrics: DestinationMetrics,
    ) -> Arc<Index> {
        let index = Arc::new(Index {
            store,
            config,
            ports: Default::default(),
            metrics,
        });
        crate::watches::follow(&index.store, &index, |index, snapshot| {
            refresh(&index.ports, |(workload, port)| {
                inbound::server(snapshot, &index.config, workload, *port)
            });
            index
                .metrics
                .targets
                .get_or_create(&INBOUND_POLICY)
                .set(index.ports.lock().len() as i64);
        });
        index
    }

    fn watch(&self, key: &PortKey) -> watch::Receiver<Arc<Option<api::Server>>> {
        subscribe(&self.ports, key, || {
            inbound::server(&self.store.borrow(), &self.config, &key.0, key.1)
        })
    }
}

pub struct InboundPolicyService {
    index: Arc<Index>,
}

impl InboundPolicyService {
    pub fn new(index: Arc<Index>) -> Self {
        InboundPolicyService { index }
    }
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

type ServerStream = Pin<Box<dyn Stream<Item = Result<api::Server, Status>> + Send>>;

#[tonic::async_trait]
impl InboundServerPolicies for InboundPolicyService {
    async fn get_port(
        &self,
        request: Request<api::PortSpec>,
    ) -> Result<Response<api::Server>, Status> {
        let key = port_key(request.get_ref())?;
        debug!(workload = %key.0, port = key.1, "GetPort");
        let server = inbound::server(
            &self.index.store.borrow(),
            &self.index.config,
            &key.0,
            key.1,
        );
        server.map(Response::new).ok_or_else(|| unknown(&key))
    }

    type WatchPortStream = ServerStream;

    async fn watch_port(
        &self,
        request: Request<api::PortSpec>,
    ) -> Result<Response<ServerStream>, Status> {
        let key = port_key(request.get_ref())?;
        debug!(workload = %key.0, port = key.1, "WatchPort");
        let rx = self.index.watch(&key);
        if rx.borrow().is_none() {
            return Err(unknown(&key));
        }
        let metrics = self.index.metrics.clone();
        let guard = WatcherGuard::new(&metrics, &INBOUND_POLICY);
        let counter = metrics.updates.get_or_create(&INBOUND_POLICY).clone();
        // The first message is the current policy; then one per change. A
        // workload that leaves the store ends the stream: the proxy asks again.
        let state = (rx, true, guard, key);
        let stream = futures_util::stream::unfold(state, move |(mut rx, first, guard, key)| {
            let counter = counter.clone();
            async move {
                if !first && rx.changed().await.is_err() {
                    return None;
                }
                let current = rx.borrow_and_update().clone();
                match &*current {
                    Some(server) => {
                        counter.inc();
                        Some((Ok(server.clone()), (rx, false, guard, key)))
                    }
                    None => Some((Err(unknown(&key)), (rx, false, guard, key))),
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
        Ok(Response::new(Box::pin(stream)))
    }
}
