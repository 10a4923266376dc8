//! The vote stuffer: a workload that should not be there. It calls the
//! voting service directly, skipping `web`, once a second. The demo's
//! policy lets only `web` vote, so every call should come back
//! PERMISSION_DENIED from voting's proxy; it logs what it gets, so a policy
//! that lets it through shows up at once.

use std::time::Duration;

use tracing::{info, warn};

use crate::pb::VoteRequest;
use crate::pb::voting_service_client::VotingServiceClient;

pub async fn run(voting: &str, rate: f64) -> anyhow::Result<()> {
    anyhow::ensure!(
        rate > 0.0 && rate <= 1_000.0,
        "the rate must be in (0, 1000] per second"
    );
    let mut client = VotingServiceClient::new(crate::net::grpc_channel(voting)?);
    info!(voting, rate, "stuffing the ballot box directly");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let shutdown = crate::net::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut shutdown => return Ok(()),
        }
        let vote = VoteRequest {
            shortcode: ":ghost:".into(),
        };
        match client.vote(vote).await {
            Ok(reply) => warn!(
                votes = reply.into_inner().votes,
                "a stuffed vote was counted: the policy let it through"
            ),
            Err(status) if status.code() == tonic::Code::PermissionDenied => {
                info!(reason = status.message(), "refused, as the policy says")
            }
            Err(status) => warn!(code = ?status.code(), reason = status.message(), "vote failed"),
        }
    }
}
