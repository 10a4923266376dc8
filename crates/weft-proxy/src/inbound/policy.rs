//! The inbound policy client: one `WatchPort` stream per inbound port the
//! proxy has served, followed with back-off for as long as the proxy runs.
//! The last policy keeps serving while the controller is away; until the
//! first answer a connection waits at most the discovery timeout, then the
//! configured default policy applies.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use linkerd2_proxy_api::inbound as api;
use linkerd2_proxy_api::inbound::inbound_server_policies_client::InboundServerPoliciesClient;
use parking_lot::Mutex;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::{info, warn};
use weft_identity::control::ControlAddr;
use weft_identity::verify::TrustAnchors;

use crate::discovery::{BACKOFF_MAX, BACKOFF_MIN};
use crate::metrics::Metrics;
use weft_policy::PortPolicy;

/// Ports watched at once. Clients choose the port a connection targets;
/// beyond this many, a port is served by the default policy (as ports no
/// Server names are), so no client can make the proxy open streams without end.
const MAX_WATCHED_PORTS: usize = 64;

type PolicyRx = watch::Receiver<Option<Arc<PortPolicy>>>;

/// A port's policy as it changes.
#[derive(Clone, Debug)]
pub struct PortWatch {
    rx: Option<PolicyRx>,
    fallback: Arc<PortPolicy>,
}

impl PortWatch {
    /// A port that has only the default policy.
    pub fn fixed(policy: Arc<PortPolicy>) -> Self {
        PortWatch {
            rx: None,
            fallback: policy,
        }
    }

    /// The policy now: the controller's last answer, else the default.
    pub fn current(&self) -> Arc<PortPolicy> {
        self.rx
            .as_ref()
            .and_then(|rx| rx.borrow().clone())
            .unwrap_or_else(|| self.fallback.clone())
    }

    /// Waits up to `timeout` for a first answer.
    async fn ready(&mut self, timeout: Duration) {
        if let Some(rx) = &mut self.rx {
            let _ = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        }
    }
}

#[derive(Debug)]
pub struct Policies {
    client: InboundServerPoliciesClient<Channel>,
    addr: String,
    workload: String,
    fallback: Arc<PortPolicy>,
    timeout: Duration,
    ports: Mutex<HashMap<u16, PolicyRx>>,
    metrics: Arc<Metrics>,
}

impl Policies {
    pub fn new(
        service: &ControlAddr,
        anchors: Option<&TrustAnchors>,
        workload: String,
        fallback: Arc<PortPolicy>,
        timeout: Duration,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
    ) -> anyhow::Result<Arc<Policies>> {
        let channel = weft_identity::control::channel(service, anchors, connect_timeout)?;
        Ok(Arc::new(Policies {
            client: InboundServerPoliciesClient::new(channel),
            addr: service.addr.clone(),
            workload,
            fallback,
            timeout,
            ports: Mutex::new(HashMap::new()),
            metrics,
        }))
    }

    /// The policy of `port`, once it has one or the wait is over.
    pub async fn port(self: &Arc<Self>, port: u16) -> PortWatch {
        let rx = {
            let mut ports = self.ports.lock();
            match ports.get(&port) {
                Some(rx) => Some(rx.clone()),
                None if ports.len() >= MAX_WATCHED_PORTS => None,
                None => {
                    let (tx, rx) = watch::channel(None);
                    tokio::spawn(follow(self.clone(), port, tx));
                    ports.insert(port, rx.clone());
                    Some(rx)
                }
            }
        };
        let mut watch = PortWatch {
            rx,
            fallback: self.fallback.clone(),
        };
        watch.ready(self.timeout).await;
        watch
    }
}

/// Keeps `WatchPort` open for `port`, publishing each compiled policy.
async fn follow(policies: Arc<Policies>, port: u16, tx: watch::Sender<Option<Arc<PortPolicy>>>) {
    let metrics = &policies.metrics;
    let addr = &policies.addr;
    let mut backoff = BACKOFF_MIN;
    loop {
        let spec = api::PortSpec {
            workload: policies.workload.clone(),
            port: u32::from(port),
        };
        metrics.control_request(addr);
        let ended = match policies.client.clone().watch_port(spec).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                let _active = metrics.control_stream_active(addr);
                loop {
                    match stream.message().await {
                        Ok(Some(server)) => {
                            metrics.control_update(addr);
                            backoff = BACKOFF_MIN;
                            match PortPolicy::from_proto(server) {
                                Ok(policy) => {
                                    tx.send_replace(Some(Arc::new(policy)));
                                }
                                Err(reason) => {
                                    warn!(port, %reason, "the policy controller sent a policy that cannot be used; keeping the last one")
                                }
                            }
                        }
                        Ok(None) => break tonic::Status::unavailable("stream ended"),
                        Err(status) => break status,
                    }
                }
            }
        };
        metrics.control_failure(addr);
        let reason = weft_identity::control::status_reason(&ended);
        if tx.borrow().is_some() {
            info!(
                port,
                error = reason,
                ?backoff,
                "policy stream lost; the last policy keeps serving"
            );
        } else {
            warn!(
                port,
                error = reason,
                ?backoff,
                "no policy from the policy controller yet; the default policy applies"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
