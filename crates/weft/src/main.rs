//! `weft`: the control plane (`weft control ...`) and the operator's CLI.

mod admin;
mod check;
mod identity;
mod show;

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
    Control(ControlCmd),
}

#[derive(Subcommand)]
enum ControlCmd {
    /// The identity service (io.linkerd.proxy.identity.Identity/Certify): the mesh CA.
    Identity(identity::ServeArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
        Cmd::Control(ControlCmd::Identity(args)) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            runtime.block_on(identity::serve(args))
        }
    }
}
