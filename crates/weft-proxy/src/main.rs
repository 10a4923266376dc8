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

/// glibc's malloc keeps freed memory in its heap: after a burst of
/// connections the proxy's RSS would stay at its peak. `malloc_trim` hands
/// free pages back to the system (the top of the heap and whole free pages
/// inside it); once a second it costs microseconds on a sidecar's small heap.
/// bench/memory measures it (docs/benchmarks.md: mimalloc idled 6 MiB higher).
async fn return_freed_memory() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // SAFETY: malloc_trim only releases memory malloc holds free.
        unsafe { libc::malloc_trim(0) };
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Init(args)) = cli.command {
        return weft_proxy::init::run(&args).context("weft-proxy init");
    }

    let config = Config::from_env()?;
    init_logging(&config)?;
    raise_fd_limit();
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
    runtime.block_on(async {
        tokio::spawn(return_freed_memory());
        weft_proxy::proxy::run(config).await
    })
}

/// Lifts the soft limit on open files to the hard one: every proxied
/// connection takes two descriptors, and the connection caps (not a default
/// soft limit of 1,024) should decide when new clients are turned away.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                tracing::warn!("could not raise the open-files limit");
            }
        }
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| config::ConfigError {
        var: config::LOG.name,
        value: config.log_filter.clone(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour only for a person at a terminal, never into log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
