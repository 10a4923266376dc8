//! `weft`: the control plane (`weft control ...`) and the operator's CLI.

/// `println!` for a command's output: when the reader has gone (`weft stat
/// -o json | head`), the command ends quietly, as Unix tools do, instead of
/// panicking. (SIGPIPE stays ignored: the CLI's own sockets report a closed
/// peer as an error.)
macro_rules! outln {
    () => { $crate::output::write_out(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::write_out(format_args!($($arg)*), true) };
}

/// `print!` likewise.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_out(format_args!($($arg)*), false) };
}

mod check;
mod control;
mod diagnostics;
mod identity;
mod mesh;
mod output;
mod plan;
mod policy;
mod routes;
mod show;
mod stat;
mod target;
mod traffic;
mod up;
mod viz;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "weft",
    version,
    about = "Weft service mesh: control plane and CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Mesh identity: the CA and workload credentials.
    #[command(subcommand)]
    Identity(identity::IdentityCmd),
    /// Check the mesh: CA files (trust anchors, issuer); one line per check.
    Check(check::CheckArgs),
    /// Run a control-plane service.
    #[command(subcommand)]
    Control(control::ControlCmd),
    /// Ask the control plane what it tells proxies.
    #[command(subcommand)]
    Diagnostics(diagnostics::DiagnosticsCmd),
    /// Run a whole mesh on this machine from a directory of manifests: the
    /// control plane, and every Deployment replica as a pod with its proxy.
    Up(up::UpArgs),
    /// Per workload of a running local mesh: success rate, requests per
    /// second, latency, connections and the share of mTLS, from its proxies.
    Stat(stat::StatArgs),
    /// Per route a workload's proxies send on (or every client's, to a
    /// Service): success rate, requests per second, latency, retries, and
    /// the backends with the split they received.
    Routes(routes::RoutesArgs),
    /// Change a running mesh's replicas of a workload (a Deployment).
    Scale(up::ScaleArgs),
    /// Restart every pod of a workload in a running mesh.
    Restart(up::RestartArgs),
    /// The servers, routes, authorizations and rate limits that apply to
    /// each port of a workload, as the policy controller serves them now.
    Authz(policy::AuthzArgs),
    /// Authorization policy: why a request is admitted or refused.
    #[command(subcommand)]
    Policy(policy::PolicyCmd),
    /// Linkerd's viz views of a running mesh, from its Prometheus.
    #[command(subcommand)]
    Viz(viz::VizCmd),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Cmd::Identity(cmd) => identity::run(cmd),
        Cmd::Check(args) => {
            if !check::run(&args)? {
                std::process::exit(1);
            }
            Ok(())
        }
        Cmd::Control(cmd) => runtime()?.block_on(control::run(cmd)),
        Cmd::Diagnostics(cmd) => runtime()?.block_on(diagnostics::run(cmd)),
        Cmd::Up(args) => up::run(args),
        Cmd::Stat(args) => stat::run(args),
        Cmd::Routes(args) => routes::run(args),
        Cmd::Scale(args) => up::scale(args),
        Cmd::Restart(args) => up::restart(args),
        Cmd::Authz(args) => runtime()?.block_on(policy::authz(args)),
        Cmd::Policy(policy::PolicyCmd::Explain(args)) => runtime()?.block_on(policy::explain(args)),
        Cmd::Viz(cmd) => viz::run(cmd),
    }
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}
