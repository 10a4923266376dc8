//! A running local mesh as other commands see it (`weft stat`, `weft
//! check`): its pods, from the cluster state `weft up` renders, and what
//! their proxies' admin servers say.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// Which mesh a command is about, and where meshes keep their state.
#[derive(clap::Args, Clone, Debug)]
pub struct MeshArgs {
    /// The mesh's name (1-8 lowercase letters or digits): `weft up` names
    /// everything it makes after it, and the other commands find it by it.
    #[arg(long, default_value = "weft")]
    pub mesh: String,
    /// Where meshes keep their state (default: /run/weft for root, else
    /// $XDG_RUNTIME_DIR/weft, else /tmp/weft-<uid>).
    #[arg(long)]
    pub state_root: Option<PathBuf>,
}

impl MeshArgs {
    /// This mesh's state directory.
    pub fn state(&self) -> PathBuf {
        let root = self.state_root.clone().unwrap_or_else(|| {
            // SAFETY: geteuid has no preconditions.
            let uid = unsafe { libc::geteuid() };
            if uid == 0 {
                PathBuf::from("/run/weft")
            } else if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR") {
                PathBuf::from(dir).join("weft")
            } else {
                PathBuf::from(format!("/tmp/weft-{uid}"))
            }
        });
        root.join(&self.mesh)
    }

    /// The state directory of this mesh, which must be running (its control
    /// socket exists). A mesh that root runs is named when another user
    /// looks for it in their own state directory.
    pub fn running(&self) -> anyhow::Result<PathBuf> {
        let state = self.state();
        if crate::up::socket(&state).exists() {
            return Ok(state);
        }
        let roots = PathBuf::from("/run/weft").join(&self.mesh);
        if self.state_root.is_none() && roots != state && crate::up::socket(&roots).exists() {
            bail!(
                "mesh {:?} is run by root (its state is in {}); run this command as root (sudo)",
                self.mesh,
                roots.display()
            );
        }
        bail!(
            "no mesh {:?} is running here (nothing in {}); start one with weft up",
            self.mesh,
            state.display()
        )
    }
}

/// Where a running mesh's control plane listens: the bridge in namespace
/// mode, a loopback address in rootless mode (the `mode` file says which).
pub fn control_ip(state: &Path) -> Ipv4Addr {
    match std::fs::read_to_string(state.join("mode")) {
        Ok(mode) if mode.trim() == "rootless" => crate::plan::ROOTLESS_CONTROL_IP,
        _ => crate::plan::BRIDGE_IP,
    }
}

/// Largest admin reply the CLI reads.
const MAX_ADMIN_REPLY: u64 = 32 << 20;

/// A GET to a proxy's (or control plane's) admin server: status and body.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n\r\n"
    )?;
    // A proxy's whole exposition is well under this; a peer that sends more
    // is not a proxy to trust with the CLI's memory.
    let mut raw = Vec::new();
    (&mut s)
        .take(MAX_ADMIN_REPLY + 1)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading {path} from {addr}"))?;
    if raw.len() as u64 > MAX_ADMIN_REPLY {
        anyhow::bail!(
            "{addr}{path} answered more than {} MiB",
            MAX_ADMIN_REPLY >> 20
        );
    }
    let text = String::from_utf8_lossy(&raw);
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    Ok((code, body.to_string()))
}

/// A pod of the running mesh: its workload, the services selecting it,
/// and its proxy's admin address.
#[derive(Clone)]
pub struct MeshPod {
    pub name: String,
    pub workload: String,
    pub services: Vec<String>,
    pub namespace: String,
    pub ip: IpAddr,
    /// The identity its proxy proves.
    pub identity: Option<String>,
    /// Its program's ports, with their names.
    pub ports: Vec<(Option<String>, u16)>,
    pub admin: SocketAddr,
}

/// The pods of the mesh whose state is in `state`.
pub fn running_pods(state: &Path) -> anyhow::Result<Vec<MeshPod>> {
    let file = state.join("cluster/cluster.yaml");
    let mesh = state
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = std::fs::read_to_string(&file).with_context(|| {
        format!(
            "no mesh {mesh:?} is running here (cannot read {}); start one with weft up",
            file.display()
        )
    })?;
    let (manifests, errors) = weft_api::parse_manifests(&file, &text);
    if let Some(e) = errors.first() {
        bail!("the mesh's cluster state is unreadable: {e}");
    }
    Ok(manifests
        .workloads
        .iter()
        .filter_map(|w| {
            let w = &w.resource;
            let workload = w.metadata.labels.get(crate::up::WORKLOAD_LABEL)?.clone();
            let ip: IpAddr = w.spec.workload_ips.first()?.ip;
            let services = manifests
                .services
                .iter()
                .map(|s| &s.resource)
                .filter(|s| {
                    s.metadata.namespace == w.metadata.namespace
                        && !s.spec.selector.is_empty()
                        && s.spec
                            .selector
                            .iter()
                            .all(|(k, v)| w.metadata.labels.get(k) == Some(v))
                })
                .map(|s| s.metadata.name.clone())
                .collect();
            Some(MeshPod {
                name: w.metadata.name.clone(),
                workload,
                services,
                namespace: w.metadata.namespace.clone(),
                ip,
                identity: w.spec.mesh_tls.as_ref().map(|m| m.identity.clone()),
                ports: w
                    .spec
                    .ports
                    .iter()
                    .map(|p| (p.name.clone(), p.port))
                    .collect(),
                admin: SocketAddr::new(ip, 4191),
            })
        })
        .collect())
}
