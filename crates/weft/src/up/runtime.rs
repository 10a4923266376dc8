//! Where a local mesh's pods run. Two runtimes, one interface, so the rest
//! of `weft up` never asks which one it has:
//!
//! - [`Namespaces`] (root): every pod a network namespace on the mesh's
//!   bridge with the proxy's capture rules, every program under its own
//!   uid; the control plane on the bridge.
//! - [`Rootless`]: every program runs as you, on loopback addresses, the
//!   proxies in explicit-proxy mode (`http_proxy`). A development mode, not
//!   isolation.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::bail;
use tracing::{info, warn};

use super::net::Network;
use super::{DESTINATION_PORT, IDENTITY_PORT, PROXY_UID, run_command};
use crate::plan::{BRIDGE_IP, Plan, PlannedService, Pod, ROOTLESS_CONTROL_IP};

/// How one pod's proxy and program are addressed.
pub struct PodAddressing {
    /// The program's `POD_IP`.
    pub app_ip: Ipv4Addr,
    /// The proxy's listeners, when not the defaults of a captured pod.
    pub listeners: Option<weft_api::proxy::Listeners>,
    /// Set in the program's environment, when the proxy is an explicit proxy.
    pub http_proxy: Option<String>,
    /// The addresses that may be meshed endpoints (never dialled in plaintext
    /// unless the destination service says so).
    pub mesh_networks: Vec<String>,
}

/// What tells the runtimes apart, as constants.
pub struct Kind {
    /// `namespaces` or `rootless`: kept in the state directory, read by `weft check`.
    pub mode: &'static str,
    /// Where the control plane listens.
    pub control_ip: Ipv4Addr,
    /// The mode of the state directories: namespaces let proxies (their own
    /// uid) pass through to their token without listing; rootless, every
    /// program is you.
    pub state_dir_mode: u32,
}

pub trait Runtime: Send {
    fn kind(&self) -> &'static Kind;
    /// Gives the plan's pods this runtime's addresses.
    fn place(&self, plan: &mut Plan);
    /// Removes what an earlier run of the mesh left; how many namespaces.
    fn remove_stale(&mut self) -> usize;
    /// Makes the network the control plane listens on, or checks that its
    /// addresses are free.
    fn prepare(&mut self) -> anyhow::Result<()>;
    /// The uid a process meant to run as `uid` gets.
    fn uid(&self, uid: u32) -> u32;
    /// The command prefix that runs a control-plane program as `uid`.
    fn as_user(&self, uid: u32) -> Vec<String>;
    /// The command that runs `program` of pod `pod` as `uid`.
    fn launch(&self, pod: &str, uid: u32, program: &str) -> Vec<String>;
    /// Makes the pod's network: namespace, veth, hosts file, capture rules.
    fn create_pod(
        &mut self,
        pod: &Pod,
        services: &[PlannedService],
        proxy_bin: &str,
    ) -> anyhow::Result<()>;
    fn addressing(&self, pod: &Pod) -> PodAddressing;
    /// Tells running pods about a changed set of services.
    fn services_changed(&self, pods: &[&Pod], services: &[PlannedService]);
    fn delete_pod(&self, pod: &str);
    /// Removes every pod's network at the end; what it removed, in words.
    fn teardown(&mut self, pods: usize) -> String;
}

/// The runtime `rootless` asks for.
pub fn new(mesh: &str, rootless: bool) -> anyhow::Result<Box<dyn Runtime>> {
    Ok(if rootless {
        Box::new(Rootless)
    } else {
        Box::new(Namespaces {
            net: Network::new(mesh)?,
            next_index: 0,
        })
    })
}

pub struct Namespaces {
    net: Network,
    /// veth numbers are never reused within a run.
    next_index: usize,
}

impl Runtime for Namespaces {
    fn kind(&self) -> &'static Kind {
        &Kind {
            mode: "namespaces",
            control_ip: BRIDGE_IP,
            state_dir_mode: 0o711,
        }
    }

    fn place(&self, _plan: &mut Plan) {}

    fn remove_stale(&mut self) -> usize {
        self.net.delete_all()
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        self.net.create_bridge()?;
        info!(bridge = %self.net.bridge(), addr = %BRIDGE_IP, "network ready");
        Ok(())
    }

    fn uid(&self, uid: u32) -> u32 {
        uid
    }

    fn as_user(&self, uid: u32) -> Vec<String> {
        // Its group too, and no supplementary groups.
        format!("setpriv --reuid {uid} --regid {uid} --clear-groups --")
            .split(' ')
            .map(String::from)
            .collect()
    }

    fn launch(&self, pod: &str, uid: u32, program: &str) -> Vec<String> {
        let mut argv: Vec<String> = ["ip", "netns", "exec", &self.net.namespace(pod)]
            .iter()
            .map(|s| s.to_string())
            .collect();
        argv.extend(self.as_user(uid));
        argv.push(program.to_string());
        argv
    }

    fn create_pod(
        &mut self,
        pod: &Pod,
        services: &[PlannedService],
        proxy_bin: &str,
    ) -> anyhow::Result<()> {
        let index = self.next_index;
        self.next_index += 1;
        self.net
            .create_pod(&pod.name, index, pod.ip, &pod.namespace, services)?;
        run_command(&[
            "ip",
            "netns",
            "exec",
            &self.net.namespace(&pod.name),
            proxy_bin,
            "init",
            "--proxy-uid",
            &PROXY_UID.to_string(),
            "--skip-inbound-ports",
            "4190,4191",
        ])?;
        Ok(())
    }

    fn addressing(&self, pod: &Pod) -> PodAddressing {
        PodAddressing {
            app_ip: pod.ip,
            listeners: None,
            http_proxy: None,
            mesh_networks: vec!["198.18.0.0/15".into()],
        }
    }

    fn services_changed(&self, pods: &[&Pod], services: &[PlannedService]) {
        for pod in pods {
            if let Err(e) = self
                .net
                .write_hosts(&pod.name, pod.ip, &pod.namespace, services)
            {
                warn!(pod = %pod.name, error = format!("{e:#}"), "cannot update the hosts file");
            }
        }
    }

    fn delete_pod(&self, pod: &str) {
        self.net.delete_pod(pod);
    }

    fn teardown(&mut self, _pods: usize) -> String {
        format!("{} pod namespaces removed", self.net.delete_all())
    }
}

pub struct Rootless;

impl Runtime for Rootless {
    fn kind(&self) -> &'static Kind {
        &Kind {
            mode: "rootless",
            control_ip: ROOTLESS_CONTROL_IP,
            state_dir_mode: 0o700,
        }
    }

    fn place(&self, plan: &mut Plan) {
        for pod in &mut plan.pods {
            pod.ip = crate::plan::rootless_addrs(pod.ip).0;
        }
    }

    fn remove_stale(&mut self) -> usize {
        0
    }

    fn prepare(&mut self) -> anyhow::Result<()> {
        // Rootless meshes share the loopback addresses: a second one would
        // fail only in its logs and then report the first one's pods.
        for port in [IDENTITY_PORT, DESTINATION_PORT] {
            let addr = SocketAddr::from((ROOTLESS_CONTROL_IP, port));
            if let Err(e) = std::net::TcpListener::bind(addr) {
                bail!(
                    "{addr} is taken ({e}): another rootless mesh (or program) runs here; \
                     stop it first (one rootless mesh per host)"
                );
            }
        }
        Ok(())
    }

    fn uid(&self, _uid: u32) -> u32 {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() }
    }

    fn as_user(&self, _uid: u32) -> Vec<String> {
        Vec::new()
    }

    fn launch(&self, _pod: &str, _uid: u32, program: &str) -> Vec<String> {
        vec![program.to_string()]
    }

    fn create_pod(&mut self, _: &Pod, _: &[PlannedService], _: &str) -> anyhow::Result<()> {
        Ok(())
    }

    fn addressing(&self, pod: &Pod) -> PodAddressing {
        // Other pods reach this one at pod.ip (its proxy's inbound listener
        // on the first port), which forwards to the program on its own
        // address; the program sends through its proxy.
        let (_, app_ip) = crate::plan::rootless_addrs(pod.ip);
        let port = pod.ports.first().map_or(4143, |(_, p)| *p);
        if pod.ports.len() > 1 {
            warn!(pod = %pod.name, "rootless mode serves only the first port of a pod");
        }
        PodAddressing {
            app_ip,
            listeners: Some(weft_api::proxy::Listeners {
                inbound: SocketAddr::from((pod.ip, port)),
                inbound_forward: SocketAddr::from((app_ip, port)),
                outbound: SocketAddr::from((pod.ip, 4140)),
                admin: SocketAddr::from((pod.ip, 4191)),
            }),
            http_proxy: Some(format!("http://{}:4140", pod.ip)),
            mesh_networks: vec!["198.18.0.0/15".into(), "127.18.0.0/15".into()],
        }
    }

    fn services_changed(&self, _: &[&Pod], _: &[PlannedService]) {}

    fn delete_pod(&self, _pod: &str) {}

    fn teardown(&mut self, pods: usize) -> String {
        format!("{pods} pods")
    }
}
