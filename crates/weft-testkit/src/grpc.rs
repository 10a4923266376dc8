//! The Echo gRPC service (unary and bidirectional streaming).

use std::pin::Pin;

use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt, wrappers::TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

use crate::pb::echo_server::{Echo, EchoServer};
use crate::pb::{EchoReply, EchoRequest};

#[derive(Debug, Default)]
pub struct EchoService;

fn client_id<T>(req: &Request<T>) -> String {
    req.metadata()
        .get("l5d-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

fn reply(req: EchoRequest, client_id: String) -> Result<EchoReply, Status> {
    if req.fail_with_code != 0 {
        return Err(Status::new(
            tonic::Code::from_i32(req.fail_with_code as i32),
            format!("failure requested: {}", req.message),
        ));
    }
    Ok(EchoReply {
        message: req.message,
        client_id,
        payload: req.payload,
    })
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, req: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let id = client_id(&req);
        reply(req.into_inner(), id).map(Response::new)
    }

    type ChatStream = ReplyStream;

    async fn chat(
        &self,
        req: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let id = client_id(&req);
        let replies = req.into_inner().map(move |msg| reply(msg?, id.clone()));
        Ok(Response::new(Box::pin(replies)))
    }
}

pub async fn serve(listener: TcpListener) -> Result<(), tonic::transport::Error> {
    // tonic sets TCP_NODELAY only on sockets it accepts itself; without it small
    // responses wait on Nagle and delayed ACKs (40 ms tails).
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    tonic::transport::Server::builder()
        .add_service(EchoServer::new(EchoService))
        .serve_with_incoming(incoming)
        .await
}
