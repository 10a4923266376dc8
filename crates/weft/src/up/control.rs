//! `weft scale` and `weft restart` against a running `weft up`: one line
//! over a Unix socket in the mesh's state directory (only root can reach
//! it), one line back. The reply starts with `ok:` or `error:`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

/// The socket of the mesh whose state is in `state`.
pub fn socket(state: &Path) -> PathBuf {
    state.join("control.sock")
}

/// A request to a running mesh.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Scale { workload: String, replicas: u32 },
    Restart { workload: String },
}

impl Request {
    pub fn parse(line: &str) -> Result<Request, String> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["scale", workload, n] => n
                .parse()
                .map(|replicas| Request::Scale {
                    workload: workload.to_string(),
                    replicas,
                })
                .map_err(|_| format!("{n:?} is not a number of replicas")),
            ["restart", workload] => Ok(Request::Restart {
                workload: workload.to_string(),
            }),
            _ => Err(format!(
                "unknown request {line:?}: use scale WORKLOAD N or restart WORKLOAD"
            )),
        }
    }

    fn line(&self) -> String {
        match self {
            Request::Scale { workload, replicas } => format!("scale {workload} {replicas}\n"),
            Request::Restart { workload } => format!("restart {workload}\n"),
        }
    }
}

#[derive(Args)]
pub struct ScaleArgs {
    /// The Deployment: `deploy/web`, `web`, or `demo/web`.
    workload: String,
    replicas: u32,
    #[command(flatten)]
    namespaces: crate::target::NamespaceArgs,
    #[command(flatten)]
    mesh: crate::mesh::MeshArgs,
}

#[derive(Args)]
pub struct RestartArgs {
    /// The Deployment: `deploy/web`, `web`, or `demo/web`.
    workload: String,
    #[command(flatten)]
    namespaces: crate::target::NamespaceArgs,
    #[command(flatten)]
    mesh: crate::mesh::MeshArgs,
}

/// The one Deployment a request is about, as `name` or `namespace/name`.
fn deployment(workload: &str, namespaces: &crate::target::NamespaceArgs) -> anyhow::Result<String> {
    use crate::target::{Kind, Target};
    let target = Target::parse(workload, None, namespaces).map_err(anyhow::Error::msg)?;
    match (target.kind, target.namespace, target.name) {
        (Kind::Deployment, Some(ns), Some(name)) => Ok(format!("{ns}/{name}")),
        (Kind::Deployment, None, Some(name)) => Ok(name),
        _ => bail!("{workload:?} is not one Deployment (say deploy/NAME)"),
    }
}

fn ask(mesh: &crate::mesh::MeshArgs, request: Request) -> anyhow::Result<()> {
    let path = socket(&mesh.running()?);
    let mut stream = UnixStream::connect(&path).with_context(|| {
        format!(
            "no mesh {:?} is running here (cannot reach {}; is weft up running, and are you root?)",
            mesh.mesh,
            path.display()
        )
    })?;
    // Starting pods takes a moment each.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.write_all(request.line().as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .read_line(&mut reply)
        .context("no answer from weft up")?;
    match reply.trim().strip_prefix("error: ") {
        Some(e) => bail!("{e}"),
        None => {
            outln!("{}", reply.trim().trim_start_matches("ok: "));
            Ok(())
        }
    }
}

pub fn scale(args: ScaleArgs) -> anyhow::Result<()> {
    ask(
        &args.mesh,
        Request::Scale {
            workload: deployment(&args.workload, &args.namespaces)?,
            replicas: args.replicas,
        },
    )
}

pub fn restart(args: RestartArgs) -> anyhow::Result<()> {
    ask(
        &args.mesh,
        Request::Restart {
            workload: deployment(&args.workload, &args.namespaces)?,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_say_what_is_wrong() {
        assert_eq!(
            Request::parse("scale web 3"),
            Ok(Request::Scale {
                workload: "web".into(),
                replicas: 3
            })
        );
        assert_eq!(
            Request::parse("restart demo/web\n"),
            Ok(Request::Restart {
                workload: "demo/web".into()
            })
        );
        assert!(
            Request::parse("scale web lots")
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            Request::parse("delete web")
                .unwrap_err()
                .contains("unknown request")
        );
    }
}
