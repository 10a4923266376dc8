//! The local mesh's network: one bridge on the host, and per pod a network
//! namespace joined to it by a veth pair, with its address, a default route
//! through the bridge (so cluster IPs route before capture redirects them),
//! and `/etc/netns/<pod>/hosts` naming every service, which `ip netns exec`
//! mounts over `/etc/hosts` for the pod's programs.
//!
//! Everything a mesh creates carries its name, so a later start can find
//! and remove what a crashed run left behind.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, bail};

use crate::plan::{BRIDGE_IP, PlannedService};

fn ip(args: &[&str]) -> anyhow::Result<()> {
    ip_output(args).map(drop)
}

/// Runs `ip ARGS`; its standard output.
fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    super::run_command(&[&["ip"], args].concat()).context("ip, from iproute2")
}

/// The mesh's network objects, named after the mesh.
#[derive(Clone, Debug)]
pub struct Network {
    mesh: String,
}

impl Network {
    /// `mesh` is at most 8 lowercase letters or digits: interface names
    /// must fit in 15 bytes.
    pub fn new(mesh: &str) -> anyhow::Result<Network> {
        if mesh.is_empty()
            || mesh.len() > 8
            || !mesh
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            bail!("mesh name {mesh:?}: use 1 to 8 lowercase letters or digits");
        }
        Ok(Network { mesh: mesh.into() })
    }

    pub fn bridge(&self) -> String {
        format!("wb-{}", self.mesh)
    }

    /// The network namespace of pod `pod`.
    pub fn namespace(&self, pod: &str) -> String {
        format!("weft-{}-{pod}", self.mesh)
    }

    fn hosts_dir(&self, pod: &str) -> PathBuf {
        PathBuf::from("/etc/netns").join(self.namespace(pod))
    }

    /// Creates the bridge with the control plane's address.
    pub fn create_bridge(&self) -> anyhow::Result<()> {
        let bridge = self.bridge();
        // Every mesh in namespace mode uses the same subnet: a second one on
        // the host would route pods of both through two bridges. Refuse it.
        let addrs = ip_output(&["-o", "-4", "addr", "show"])?;
        let holder = addrs
            .lines()
            .find(|l| l.contains(&format!(" inet {BRIDGE_IP}/")))
            .and_then(|l| l.split_whitespace().nth(1));
        if let Some(holder) = holder {
            anyhow::bail!(
                "{BRIDGE_IP} is already on {holder}: another mesh runs here in network namespaces \
                 (its bridge is wb-<name>); stop it first (one namespace-mode mesh per host)"
            );
        }
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{BRIDGE_IP}/16"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])
    }

    /// Creates pod `pod`'s namespace (veth `index`) at `addr`, with a hosts
    /// file for `services`.
    pub fn create_pod(
        &self,
        pod: &str,
        index: usize,
        addr: Ipv4Addr,
        namespace: &str,
        services: &[PlannedService],
    ) -> anyhow::Result<()> {
        let ns = self.namespace(pod);
        let (host_end, pod_end) = (
            // The '-' keeps names of meshes that end in a digit apart:
            // mesh "a" pod 12 and mesh "a1" pod 2 would otherwise both be "wa12h".
            format!("w{}-{index}h", self.mesh),
            format!("w{}-{index}p", self.mesh),
        );
        ip(&["netns", "add", &ns])?;
        disable_ipv6(&ns)?;
        ip(&[
            "link", "add", &host_end, "type", "veth", "peer", "name", &pod_end,
        ])?;
        ip(&["link", "set", &host_end, "master", &self.bridge(), "up"])?;
        ip(&["link", "set", &pod_end, "netns", &ns])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{addr}/16"),
            "dev",
            &pod_end,
        ])?;
        ip(&["-n", &ns, "link", "set", &pod_end, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &BRIDGE_IP.to_string(),
        ])?;
        self.write_hosts(pod, addr, namespace, services)
    }

    /// Writes pod `pod`'s hosts file: itself and every service. Written in
    /// place, so programs already running (which see it bind-mounted over
    /// `/etc/hosts`) see new services too.
    pub fn write_hosts(
        &self,
        pod: &str,
        addr: Ipv4Addr,
        namespace: &str,
        services: &[PlannedService],
    ) -> anyhow::Result<()> {
        let dir = self.hosts_dir(pod);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut hosts = format!("127.0.0.1 localhost\n{addr} {pod}\n");
        for svc in services {
            hosts.push_str(&format!(
                "{} {}\n",
                svc.cluster_ip,
                svc.host_names(namespace).join(" ")
            ));
        }
        std::fs::write(dir.join("hosts"), hosts)
            .with_context(|| format!("writing {}/hosts", dir.display()))
    }

    /// Removes pod `pod`'s namespace (its veth goes with it) and hosts file.
    pub fn delete_pod(&self, pod: &str) {
        let _ = ip(&["netns", "del", &self.namespace(pod)]);
        let _ = std::fs::remove_dir_all(self.hosts_dir(pod));
    }

    /// Removes everything this mesh's name marks: namespaces, their hosts
    /// files and the bridge. Used at the end, and at start after a crash.
    /// Returns how many namespaces it removed.
    pub fn delete_all(&self) -> usize {
        let prefix = format!("weft-{}-", self.mesh);
        let mut removed = 0;
        for dir in ["/run/netns", "/etc/netns"] {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pod) = name.strip_prefix(&prefix) {
                    if dir == "/run/netns" {
                        removed += 1;
                    }
                    self.delete_pod(pod);
                }
            }
        }
        // A namespace outlives its name while a process is still inside,
        // and its veth with it: delete the host ends too (each takes its
        // peer along).
        let prefix = format!("w{}-", self.mesh);
        if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let Some(name) = line
                    .split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n))
                else {
                    continue;
                };
                let numbered = name
                    .strip_prefix(&prefix)
                    .and_then(|rest| rest.strip_suffix('h'))
                    .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if numbered {
                    let _ = ip(&["link", "del", name]);
                }
            }
        }
        let _ = ip(&["link", "del", &self.bridge()]);
        removed
    }
}

/// Turns IPv6 off in a pod's namespace before any interface is moved in, so
/// no address (not even a link-local one) exists to reach the program around
/// its proxy. The capture rules cover IPv6 as well, should it come back.
fn disable_ipv6(ns: &str) -> anyhow::Result<()> {
    let script = "for f in all default; do p=/proc/sys/net/ipv6/conf/$f/disable_ipv6; \
                  [ -e $p ] || exit 0; echo 1 > $p || exit 1; done";
    ip(&["netns", "exec", ns, "sh", "-c", script])
        .with_context(|| format!("turning IPv6 off in network namespace {ns}"))
}
