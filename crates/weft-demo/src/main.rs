//! `weft-demo`: the demo application of the local mesh (`weft up
//! examples/emojivoto`). Five programs in one binary:
//!
//! - `emoji`: a gRPC service listing emojis, unary and server-streaming;
//! - `voting`: a gRPC service counting votes, where votes for `:doughnut:`
//!   always fail, so success rates are worth looking at;
//! - `web`: an HTTP/1.1 front end (a page and a small JSON API) calling both;
//! - `vote-bot`: a traffic generator voting through `web`;
//! - `vote-stuffer`: a workload the policy keeps out, calling `voting`
//!   directly.
//!
//! Services are reached by their Kubernetes names
//! (`emoji-svc.demo.svc.cluster.local:8080`). With `http_proxy` set (the
//! mesh's rootless mode), HTTP/1 requests and gRPC calls go to that proxy
//! and still name the service, which the proxy resolves.

mod bot;
mod emoji;
mod net;
mod stuffer;
mod voting;
mod web;

use std::net::SocketAddr;

use clap::{Parser, Subcommand};

pub mod pb {
    tonic::include_proto!("weft.demo");
}

#[derive(Parser)]
#[command(name = "weft-demo", about = "The demo application of the local mesh")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The emoji gRPC service.
    Emoji {
        #[arg(long, default_value = "0.0.0.0:8080", env = "LISTEN")]
        listen: SocketAddr,
        /// The version it says it is (`x-emoji-version` on every answer).
        #[arg(long, default_value = "v1", env = "EMOJI_VERSION")]
        version: String,
    },
    /// The voting gRPC service.
    Voting {
        #[arg(long, default_value = "0.0.0.0:8080", env = "LISTEN")]
        listen: SocketAddr,
    },
    /// The web front end.
    Web {
        #[arg(long, default_value = "0.0.0.0:8080", env = "LISTEN")]
        listen: SocketAddr,
        /// The emoji service, host:port.
        #[arg(
            long,
            env = "EMOJI_ADDR",
            default_value = "emoji-svc.demo.svc.cluster.local:8080"
        )]
        emoji: String,
        /// The voting service, host:port.
        #[arg(
            long,
            env = "VOTING_ADDR",
            default_value = "voting-svc.demo.svc.cluster.local:8080"
        )]
        voting: String,
    },
    /// Votes through the web front end, forever, at a steady rate.
    VoteBot {
        /// The web front end, host:port.
        #[arg(
            long,
            env = "WEB_ADDR",
            default_value = "web-svc.demo.svc.cluster.local:80"
        )]
        web: String,
        /// Votes per second.
        #[arg(long, env = "RATE", default_value_t = 5.0)]
        rate: f64,
    },
    /// Calls the voting service directly (what the demo's policy refuses).
    VoteStuffer {
        /// The voting service, host:port.
        #[arg(
            long,
            env = "VOTING_ADDR",
            default_value = "voting-svc.demo.svc.cluster.local:8080"
        )]
        voting: String,
        /// Calls per second.
        #[arg(long, env = "RATE", default_value_t = 1.0)]
        rate: f64,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_DEMO_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().cmd {
        Cmd::Emoji { listen, version } => emoji::serve(listen, &version).await,
        Cmd::Voting { listen } => voting::serve(listen).await,
        Cmd::Web {
            listen,
            emoji,
            voting,
        } => web::serve(listen, &emoji, &voting).await,
        Cmd::VoteBot { web, rate } => bot::run(&web, rate).await,
        Cmd::VoteStuffer { voting, rate } => stuffer::run(&voting, rate).await,
    }
}
