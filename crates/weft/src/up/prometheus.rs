//! The mesh's Prometheus: Debian's `prometheus`, run as a supervised process
//! of `weft up`, scraping every proxy and the control plane.
//!
//! Targets come from file-based service discovery: `weft up` rewrites
//! `targets/proxies.json` as pods come and go, each target with the labels
//! Linkerd's Kubernetes relabeling gives a proxy (`namespace`, `pod`,
//! `deployment`, `pod_template_hash`, `control_plane_ns`,
//! `container="linkerd-proxy"`) under `job="linkerd-proxy"`, so Linkerd's
//! queries and dashboards find what they expect. The control plane's admin
//! ports are `job="linkerd-controller"` with a `component` label. Storage
//! lives under the mesh's state directory; Prometheus listens on the control
//! address only (the bridge, or loopback when rootless), never on every
//! interface.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Serialize;

use super::procs::Spec;
use crate::plan::Pod;

/// Prometheus's uid in namespace mode: it owns its storage and nothing else.
pub const PROMETHEUS_UID: u32 = 2103;
/// The proxies' admin port, where `/metrics` is.
const PROXY_ADMIN_PORT: u16 = 4191;

#[derive(Args, Clone, Debug)]
pub struct PrometheusArgs {
    /// Run without the mesh's Prometheus (`weft stat` then scrapes the
    /// proxies itself).
    #[arg(long)]
    pub no_prometheus: bool,
    /// How often Prometheus scrapes every proxy and the control plane.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub scrape_interval: Duration,
    /// How long Prometheus keeps samples.
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub prometheus_retention: Duration,
    /// The port Prometheus listens on, at the mesh's control address.
    /// Not 9090, where a system Prometheus (Debian starts one on install) listens.
    #[arg(long, default_value_t = 9095)]
    pub prometheus_port: u16,
}

/// Where a running mesh's Prometheus is: `<state>/prometheus-addr` holds its
/// address while it runs.
pub const ADDR_FILE: &str = "prometheus-addr";

/// One target group of a file_sd file.
#[derive(Serialize, PartialEq, Eq, Debug)]
struct TargetGroup {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// The mesh's Prometheus: its files and how to start it.
pub struct Prometheus {
    pub addr: SocketAddr,
    dir: PathBuf,
    /// The proxies' targets as last written, to skip rewriting the same.
    written: String,
}

impl Prometheus {
    /// Prepares `<state>/prometheus` (config, targets, storage) for a
    /// Prometheus on `control_ip`, owned by `uid`; returns it with the spec
    /// that starts it, or why the mesh runs without one.
    pub fn prepare(
        args: &PrometheusArgs,
        state: &Path,
        control_ip: Ipv4Addr,
        uid: u32,
        control_targets: &[(&str, SocketAddr)],
    ) -> anyhow::Result<Result<(Prometheus, Vec<String>), String>> {
        if args.no_prometheus {
            return Ok(Err("--no-prometheus was given".into()));
        }
        let Some(program) = find_prometheus() else {
            return Ok(Err(
                "prometheus is not installed (apt-get install prometheus)".into(),
            ));
        };
        let dir = state.join("prometheus");
        super::handed_dir(&dir, uid)?;
        for sub in ["targets", "data"] {
            let sub = dir.join(sub);
            weft_control::secure_fs::private_dir(&sub)?;
            std::os::unix::fs::chown(&sub, Some(uid), Some(uid))
                .with_context(|| format!("giving {} to uid {uid}", sub.display()))?;
        }
        let interval = prometheus_duration(args.scrape_interval);
        let config = config(&dir, &interval);
        write_owned(&dir.join("prometheus.yml"), &config, uid)?;
        let control: Vec<TargetGroup> = control_targets
            .iter()
            .map(|(component, addr)| TargetGroup {
                targets: vec![addr.to_string()],
                labels: BTreeMap::from([
                    ("component".into(), component.to_string()),
                    ("namespace".into(), weft_api::CONTROL_NAMESPACE.into()),
                    ("pod".into(), component.to_string()),
                ]),
            })
            .collect();
        write_owned(
            &dir.join("targets/control.json"),
            &serde_json::to_string_pretty(&control)?,
            uid,
        )?;
        let addr = SocketAddr::from((control_ip, args.prometheus_port));
        let argv = vec![
            program.display().to_string(),
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!(
                "--storage.tsdb.retention.time={}",
                prometheus_duration(args.prometheus_retention)
            ),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".into(),
        ];
        let mut prometheus = Prometheus {
            addr,
            dir,
            written: String::new(),
        };
        prometheus.write_targets(&[], uid)?;
        Ok(Ok((prometheus, argv)))
    }

    /// The process's spec.
    pub fn spec(argv: Vec<String>, env: Vec<(String, String)>, logs: &Path) -> Spec {
        Spec {
            name: "viz/prometheus".into(),
            argv,
            env,
            log: logs.join("prometheus.log"),
        }
    }

    /// Rewrites the proxies' targets when the pods changed.
    pub fn write_targets<'a>(
        &mut self,
        pods: impl IntoIterator<Item = &'a Pod>,
        uid: u32,
    ) -> anyhow::Result<()> {
        let groups: Vec<TargetGroup> = pods.into_iter().map(proxy_target).collect();
        let text = serde_json::to_string_pretty(&groups)?;
        if text != self.written {
            write_owned(&self.dir.join("targets/proxies.json"), &text, uid)?;
            self.written = text;
        }
        Ok(())
    }
}

/// A pod's proxy as a target, with Linkerd's relabeled target labels.
fn proxy_target(pod: &Pod) -> TargetGroup {
    TargetGroup {
        targets: vec![SocketAddr::from((pod.ip, PROXY_ADMIN_PORT)).to_string()],
        labels: BTreeMap::from([
            ("namespace".into(), pod.namespace.clone()),
            ("pod".into(), pod.name.clone()),
            ("deployment".into(), pod.deployment.clone()),
            ("pod_template_hash".into(), pod.template_hash.clone()),
            (
                "control_plane_ns".into(),
                weft_api::CONTROL_NAMESPACE.into(),
            ),
            ("container".into(), "linkerd-proxy".into()),
            // Not one of Linkerd's: the metrics API names an edge's client
            // identity from it, as Linkerd's does from the pod's spec.
            (
                "serviceaccount".into(),
                pod.identity.split('.').next().unwrap_or_default().into(),
            ),
        ]),
    }
}

fn config(dir: &Path, interval: &str) -> String {
    let targets = dir.join("targets");
    format!(
        "# Written by weft up; rewritten at every start.\n\
         global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:\n\
         - job_name: linkerd-proxy\n  file_sd_configs:\n  - files: ['{proxies}']\n    refresh_interval: 5s\n\
         - job_name: linkerd-controller\n  file_sd_configs:\n  - files: ['{control}']\n    refresh_interval: 5s\n",
        proxies = targets.join("proxies.json").display(),
        control = targets.join("control.json").display(),
    )
}

/// A duration as Prometheus reads one (whole milliseconds, at least one).
fn prometheus_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// Writes `text` to `path` atomically, readable by `uid` only.
fn write_owned(path: &Path, text: &str, uid: u32) -> anyhow::Result<()> {
    weft_control::secure_fs::write_atomic(path, text.as_bytes(), 0o600)?;
    std::os::unix::fs::chown(path, Some(uid), Some(uid))
        .with_context(|| format!("giving {} to uid {uid}", path.display()))
}

/// Debian's binary, or another on PATH.
fn find_prometheus() -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("prometheus"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_target_has_linkerds_relabeled_labels() {
        let pod = Pod {
            name: "web-0".into(),
            namespace: "demo".into(),
            deployment: "web".into(),
            template_hash: "0badf00d".into(),
            replica: 0,
            ip: Ipv4Addr::new(198, 18, 0, 7),
            identity: "web.demo.serviceaccount.identity.weft.cluster.local".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            argv: Vec::new(),
            env: Vec::new(),
            ports: Vec::new(),
        };
        let json = serde_json::to_value(proxy_target(&pod)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "targets": ["198.18.0.7:4191"],
                "labels": {
                    "namespace": "demo", "pod": "web-0", "deployment": "web",
                    "pod_template_hash": "0badf00d", "control_plane_ns": "weft",
                    "container": "linkerd-proxy", "serviceaccount": "web",
                }
            })
        );
    }

    #[test]
    fn the_config_scrapes_both_jobs_from_files() {
        let text = config(Path::new("/state/prometheus"), "10s");
        for needle in [
            "scrape_interval: 10s",
            "job_name: linkerd-proxy",
            "- files: ['/state/prometheus/targets/proxies.json']",
            "job_name: linkerd-controller",
        ] {
            assert!(text.contains(needle), "{needle}\n{text}");
        }
    }
}
