//! The emoji service: what can be voted for. Each answer says which
//! version served it (`x-emoji-version`), so a traffic split shows.

use std::net::SocketAddr;
use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::pb::emoji_service_server::{EmojiService, EmojiServiceServer};
use crate::pb::{Emoji, FindRequest, ListReply, ListRequest};

/// Shortcodes and their characters. `:doughnut:` is on the list; voting for
/// it is what fails.
pub const EMOJIS: &[(&str, &str)] = &[
    (":joy:", "😂"),
    (":sunglasses:", "😎"),
    (":doughnut:", "🍩"),
    (":stuck_out_tongue_winking_eye:", "😜"),
    (":money_mouth_face:", "🤑"),
    (":flushed:", "😳"),
    (":mask:", "😷"),
    (":nerd_face:", "🤓"),
    (":ghost:", "👻"),
    (":skull_and_crossbones:", "☠️"),
    (":heart_eyes_cat:", "😻"),
    (":hear_no_evil:", "🙈"),
    (":see_no_evil:", "🙉"),
    (":speak_no_evil:", "🙊"),
    (":boy:", "👦"),
    (":girl:", "👧"),
    (":man:", "👨"),
    (":woman:", "👩"),
    (":older_man:", "👴"),
    (":policeman:", "👮"),
    (":guardsman:", "💂"),
    (":construction_worker:", "👷"),
    (":pizza:", "🍕"),
    (":taco:", "🌮"),
];

fn emoji(&(shortcode, unicode): &(&str, &str)) -> Emoji {
    Emoji {
        shortcode: shortcode.into(),
        unicode: unicode.into(),
    }
}

#[derive(Debug)]
struct Service {
    version: tonic::metadata::MetadataValue<tonic::metadata::Ascii>,
}

impl Service {
    fn answer<T>(&self, message: T) -> Response<T> {
        let mut resp = Response::new(message);
        resp.metadata_mut()
            .insert("x-emoji-version", self.version.clone());
        resp
    }
}

type EmojiStream = Pin<Box<dyn Stream<Item = Result<Emoji, Status>> + Send>>;

#[tonic::async_trait]
impl EmojiService for Service {
    async fn list(&self, _: Request<ListRequest>) -> Result<Response<ListReply>, Status> {
        Ok(self.answer(ListReply {
            emojis: EMOJIS.iter().map(emoji).collect(),
        }))
    }

    type StreamStream = EmojiStream;

    async fn stream(&self, _: Request<ListRequest>) -> Result<Response<EmojiStream>, Status> {
        let emojis = tokio_stream::iter(EMOJIS.iter().map(|e| Ok(emoji(e))));
        Ok(self.answer(Box::pin(emojis)))
    }

    async fn find(&self, req: Request<FindRequest>) -> Result<Response<Emoji>, Status> {
        let shortcode = req.into_inner().shortcode;
        EMOJIS
            .iter()
            .find(|(s, _)| *s == shortcode)
            .map(|e| self.answer(emoji(e)))
            .ok_or_else(|| Status::not_found(format!("no emoji {shortcode:?}")))
    }
}

pub async fn serve(listen: SocketAddr, version: &str) -> anyhow::Result<()> {
    let version = version
        .parse()
        .map_err(|_| anyhow::anyhow!("version {version:?} is not a header value"))?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    info!(addr = %listener.local_addr()?, ?version, "emoji service listening");
    tonic::transport::Server::builder()
        .add_service(EmojiServiceServer::new(Service { version }))
        .serve_with_incoming_shutdown(
            crate::net::accepted(listener),
            crate::net::shutdown_signal(),
        )
        .await?;
    Ok(())
}
