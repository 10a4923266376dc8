//! `weft-testkit SERVER --listen ADDR`: one of the test servers as a process,
//! for the benchmark and for tests that need a server in another namespace.

use clap::{Parser, ValueEnum};
use tokio::net::TcpListener;

#[derive(Clone, Copy, ValueEnum)]
enum Server {
    Http,
    Grpc,
    Websocket,
    EchoAfterEof,
    Greeter,
}

#[derive(Parser)]
#[command(name = "weft-testkit")]
struct Cli {
    server: Server,
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let listener = TcpListener::bind(cli.listen).await?;
    eprintln!("weft-testkit listening on {}", listener.local_addr()?);
    match cli.server {
        Server::Http => weft_testkit::http::serve(listener).await?,
        Server::Grpc => weft_testkit::grpc::serve(listener).await?,
        Server::Websocket => weft_testkit::tcp::serve_websocket_echo(listener).await?,
        Server::EchoAfterEof => weft_testkit::tcp::serve_echo_after_eof(listener).await?,
        Server::Greeter => weft_testkit::tcp::serve_greeter(listener).await?,
    }
    Ok(())
}
