//! The voting service: counts votes in memory. Votes for `:doughnut:`
//! always fail, so the mesh has a failing path to show.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::pb::voting_service_server::{VotingService, VotingServiceServer};
use crate::pb::{ResultsReply, ResultsRequest, Tally, VoteReply, VoteRequest};

/// The shortcode whose votes fail.
pub const BROKEN: &str = ":doughnut:";

#[derive(Debug, Default)]
struct Service {
    votes: Mutex<HashMap<String, u64>>,
}

#[tonic::async_trait]
impl VotingService for Service {
    async fn vote(&self, req: Request<VoteRequest>) -> Result<Response<VoteReply>, Status> {
        let shortcode = req.into_inner().shortcode;
        if shortcode == BROKEN {
            warn!(%shortcode, "vote refused: this one is broken on purpose");
            return Err(Status::unknown(format!("{BROKEN} votes are broken")));
        }
        if !shortcode.starts_with(':') || !shortcode.ends_with(':') || shortcode.len() > 64 {
            return Err(Status::invalid_argument(format!(
                "{shortcode:?} is not a shortcode"
            )));
        }
        let mut votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
        let count = votes.entry(shortcode).or_default();
        *count += 1;
        Ok(Response::new(VoteReply { votes: *count }))
    }

    async fn results(&self, _: Request<ResultsRequest>) -> Result<Response<ResultsReply>, Status> {
        let votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
        let mut tallies: Vec<Tally> = votes
            .iter()
            .map(|(shortcode, votes)| Tally {
                shortcode: shortcode.clone(),
                votes: *votes,
            })
            .collect();
        tallies.sort_by(|a, b| b.votes.cmp(&a.votes).then(a.shortcode.cmp(&b.shortcode)));
        Ok(Response::new(ResultsReply { tallies }))
    }
}

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(addr = %listener.local_addr()?, "voting service listening");
    tonic::transport::Server::builder()
        .add_service(VotingServiceServer::new(Service::default()))
        .serve_with_incoming_shutdown(
            crate::net::accepted(listener),
            crate::net::shutdown_signal(),
        )
        .await?;
    Ok(())
}
