use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use weft_proxy::config::{self, Config, LogFormat};

/// Weft's sidecar proxy. Without a subcommand it runs the proxy, configured by
/// WEFT_PROXY_* environment variables (see docs/proxy-config.md).
#[derive(Parser)]
#[command(name = "weft-proxy", version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install (or with --remove, delete) the iptables rules that send the
    /// namespace's TCP traffic through the proxy.
    Init(weft_proxy::init::InitArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Init(args)) = cli.command {
        return weft_proxy::init::run(&args).context("weft-proxy init");
    }

    let config = Config::from_env()?;
    init_logging(&config)?;
    let runtime = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    }
    .context("starting the async runtime")?;
    runtime.block_on(weft_proxy::proxy::run(config))
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| config::ConfigError {
        var: config::LOG.name,
        value: config.log_filter.clone(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
