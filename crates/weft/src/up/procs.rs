//! The local mesh's processes: started with their output in a log file,
//! restarted with back-off when they exit, stopped with SIGTERM (then
//! SIGKILL after a grace period).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use tracing::{info, warn};

const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts again at once.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How to start one process, kept so it can be started again.
#[derive(Clone, Debug)]
pub struct Spec {
    /// What the status table and logs call it.
    pub name: String,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

/// A supervised process.
#[derive(Debug)]
pub struct Supervised {
    pub spec: Spec,
    child: Option<Child>,
    started: Instant,
    pub restarts: u32,
    next_start: Option<Instant>,
    backoff: Duration,
}

fn spawn(spec: &Spec) -> anyhow::Result<Child> {
    let log = weft_control::secure_fs::private_file(&spec.log)?;
    let (program, args) = spec
        .argv
        .split_first()
        .with_context(|| format!("{} has no command", spec.name))?;
    Command::new(program)
        .args(args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {} ({program})", spec.name))
}

impl Supervised {
    pub fn start(spec: Spec) -> anyhow::Result<Supervised> {
        let child = spawn(&spec)?;
        Ok(Supervised {
            spec,
            child: Some(child),
            started: Instant::now(),
            restarts: 0,
            next_start: None,
            backoff: BACKOFF_MIN,
        })
    }

    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Notices an exit and restarts when its back-off has passed; true when
    /// something changed.
    pub fn tend(&mut self) -> bool {
        if let Some(child) = &mut self.child {
            match child.try_wait() {
                Ok(None) => return false,
                Ok(Some(status)) => {
                    let ran = self.started.elapsed();
                    if ran >= HEALTHY_RUN {
                        self.backoff = BACKOFF_MIN;
                    }
                    warn!(process = %self.spec.name, %status, ran = ?ran, restart_in = ?self.backoff, log = %self.spec.log.display(), "process exited");
                    self.child = None;
                    self.next_start = Some(Instant::now() + self.backoff);
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                    return true;
                }
                Err(e) => {
                    warn!(process = %self.spec.name, error = %e, "cannot check the process");
                    return false;
                }
            }
        }
        if self.next_start.is_some_and(|at| Instant::now() >= at) {
            self.next_start = None;
            match spawn(&self.spec) {
                Ok(child) => {
                    self.child = Some(child);
                    self.started = Instant::now();
                    self.restarts += 1;
                    info!(process = %self.spec.name, restarts = self.restarts, "restarted");
                }
                Err(e) => {
                    warn!(process = %self.spec.name, error = format!("{e:#}"), "cannot restart");
                    self.next_start = Some(Instant::now() + self.backoff);
                }
            }
            return true;
        }
        false
    }

    /// Stops the process (SIGTERM, then SIGKILL) and starts it again now:
    /// `weft restart`. Not counted in `restarts` (crashes): the pod counts
    /// it, once for its two processes.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        stop_all(&mut [self]);
        self.child = Some(spawn(&self.spec)?);
        self.started = Instant::now();
        self.backoff = BACKOFF_MIN;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Stops every process: SIGTERM, then SIGKILL for those still running after
/// the grace period.
pub fn stop_all(procs: &mut [&mut Supervised]) {
    for p in procs.iter_mut() {
        p.next_start = None;
        if let Some(pid) = p.pid() {
            // SAFETY: kill(2) with a pid this process started and has not reaped.
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for p in procs.iter_mut() {
        let Some(child) = &mut p.child else { continue };
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        p.child = None;
    }
}

/// A program named in a manifest: a path as given, a bare name from the
/// directory of the `weft` binary first (where `cargo build` puts
/// `weft-proxy` and `weft-demo`), then `PATH`.
pub fn resolve_program(name: &str, manifests: &Path) -> anyhow::Result<PathBuf> {
    if name.contains('/') {
        let path = manifests.join(name);
        anyhow::ensure!(path.exists(), "program {} does not exist", path.display());
        return Ok(path);
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file());
    let on_path = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    };
    beside.or_else(on_path).with_context(|| {
        format!("program {name:?} is neither beside the weft binary nor on PATH (build it: cargo build --workspace --bins)")
    })
}
