//! Raw TCP servers: an echo that proves half-close, a server-speaks-first
//! greeter, and a WebSocket echo.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// Reads until the client half-closes, then answers `got N bytes\n` followed by
/// the bytes, and closes. A proxy that loses the half-close hangs this server.
pub async fn serve_echo_after_eof(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut data = Vec::new();
            if stream.read_to_end(&mut data).await.is_err() {
                return;
            }
            let _ = stream
                .write_all(format!("got {} bytes\n", data.len()).as_bytes())
                .await;
            let _ = stream.write_all(&data).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Speaks first, like SMTP: sends a greeting on accept, then echoes each line
/// prefixed with `echo: ` until `QUIT`.
pub async fn serve_greeter(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            if write
                .write_all(b"220 weft-testkit greeter ready\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line == "QUIT" {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    return;
                }
                if write
                    .write_all(format!("echo: {line}\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }
}

/// WebSocket echo: every text or binary message comes back unchanged.
pub async fn serve_websocket_echo(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    return;
                }
            }
        });
    }
}
