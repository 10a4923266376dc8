//! Linkerd's transport header: the first bytes inside a mesh TLS connection
//! negotiated with ALPN `transport.l5d.io/v1`.
//!
//! An outbound proxy that sends opaque TCP to a meshed endpoint dials the
//! endpoint's *proxy* port (its inbound listener) instead of the application
//! port, and says in this header which port the connection was meant for. The
//! inbound side therefore learns the real target even when the connection was
//! not redirected by iptables (or the port is excluded from capture).
//!
//! Wire format: the preface `transport.l5d.io/v1\r\n\r\n`, a big-endian u32
//! length, then a protobuf `transport.l5d.io.Header { int32 port = 1; string
//! name = 2; SessionProtocol session_protocol = 3; }`.

use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol id that announces a transport header.
pub const ALPN: &[u8] = b"transport.l5d.io/v1";
const PREFACE: &[u8] = b"transport.l5d.io/v1\r\n\r\n";
/// A header is a port, a host name and a flag: anything longer is not one.
const MAX_LEN: u32 = 1024;

/// The protocol the sender already knows the connection speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionProtocol {
    Http1,
    Http2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    /// The target port on the receiving workload.
    pub port: u16,
    /// A logical target name, for gateways (which Weft does not implement).
    pub name: Option<String>,
    /// `None`: proxy the connection as opaque TCP.
    pub protocol: Option<SessionProtocol>,
}

#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("connection closed or failed while reading the transport header: {0}")]
    Io(#[from] std::io::Error),
    #[error("the transport header does not start with {PREFACE:?} (got {0:?})")]
    Preface(String),
    #[error("transport header length {0} exceeds the {MAX_LEN}-byte limit")]
    TooLong(u32),
    #[error("transport header is not a valid protobuf message: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("transport header names port {0}, which is not a TCP port")]
    Port(i32),
}

mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Header {
        #[prost(int32, tag = "1")]
        pub port: i32,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, optional, tag = "3")]
        pub session_protocol: Option<SessionProtocol>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SessionProtocol {
        #[prost(oneof = "Kind", tags = "1, 2")]
        pub kind: Option<Kind>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        #[prost(message, tag = "1")]
        Http1(Empty),
        #[prost(message, tag = "2")]
        Http2(Empty),
    }

    #[derive(Clone, Copy, PartialEq, prost::Message)]
    pub struct Empty {}
}

impl TransportHeader {
    pub fn opaque(port: u16) -> Self {
        TransportHeader {
            port,
            name: None,
            protocol: None,
        }
    }

    /// The preface, length and message, ready to be written.
    pub fn encode(&self) -> Vec<u8> {
        let message = proto::Header {
            port: i32::from(self.port),
            name: self.name.clone().unwrap_or_default(),
            session_protocol: self.protocol.map(|p| proto::SessionProtocol {
                kind: Some(match p {
                    SessionProtocol::Http1 => proto::Kind::Http1(proto::Empty {}),
                    SessionProtocol::Http2 => proto::Kind::Http2(proto::Empty {}),
                }),
            }),
        };
        let len = message.encoded_len();
        let mut buf = Vec::with_capacity(PREFACE.len() + 4 + len);
        buf.extend_from_slice(PREFACE);
        // Bounded by MAX_LEN for any header this proxy builds (a port and a DNS name).
        buf.extend_from_slice(&(len as u32).to_be_bytes());
        message.encode_raw(&mut buf);
        buf
    }

    /// Reads exactly one header, leaving whatever follows it in `io`.
    pub async fn read<I: AsyncRead + Unpin>(io: &mut I) -> Result<Self, HeaderError> {
        let mut head = [0u8; PREFACE.len() + 4];
        io.read_exact(&mut head).await?;
        let (preface, len) = head.split_at(PREFACE.len());
        if preface != PREFACE {
            return Err(HeaderError::Preface(
                String::from_utf8_lossy(preface).into_owned(),
            ));
        }
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        if len > MAX_LEN {
            return Err(HeaderError::TooLong(len));
        }
        let mut message = vec![0u8; len as usize];
        io.read_exact(&mut message).await?;
        let header = proto::Header::decode(message.as_slice())?;
        let port = u16::try_from(header.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(HeaderError::Port(header.port))?;
        Ok(TransportHeader {
            port,
            name: Some(header.name).filter(|n| !n.is_empty()),
            protocol: header
                .session_protocol
                .and_then(|p| p.kind)
                .map(|k| match k {
                    proto::Kind::Http1(_) => SessionProtocol::Http1,
                    proto::Kind::Http2(_) => SessionProtocol::Http2,
                }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<TransportHeader, HeaderError>, Vec<u8>) {
        let mut io = bytes;
        let header = TransportHeader::read(&mut io).await;
        (header, io.to_vec())
    }

    #[tokio::test]
    async fn round_trips_and_leaves_the_payload() {
        for header in [
            TransportHeader::opaque(5432),
            TransportHeader {
                port: 8080,
                name: Some("web.demo.svc.cluster.local".into()),
                protocol: Some(SessionProtocol::Http2),
            },
            TransportHeader {
                port: 1,
                name: None,
                protocol: Some(SessionProtocol::Http1),
            },
        ] {
            let mut bytes = header.encode();
            bytes.extend_from_slice(b"payload");
            let (decoded, rest) = read(&bytes).await;
            assert_eq!(decoded.unwrap(), header);
            assert_eq!(rest, b"payload");
        }
    }

    #[tokio::test]
    async fn matches_linkerds_encoding() {
        // port 4040 (field 1, varint) and an empty Http2 session protocol (field 3 { field 2 {} }).
        let header = TransportHeader {
            port: 4040,
            name: None,
            protocol: Some(SessionProtocol::Http2),
        };
        let mut expected = PREFACE.to_vec();
        expected.extend_from_slice(&[0, 0, 0, 7, 0x08, 0xc8, 0x1f, 0x1a, 0x02, 0x12, 0x00]);
        assert_eq!(header.encode(), expected);
    }

    #[tokio::test]
    async fn refuses_bad_headers_with_the_reason() {
        let (e, _) = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
        assert!(matches!(e, Err(HeaderError::Preface(_))), "{e:?}");

        let mut long = PREFACE.to_vec();
        long.extend_from_slice(&u32::MAX.to_be_bytes());
        let (e, _) = read(&long).await;
        assert!(matches!(e, Err(HeaderError::TooLong(u32::MAX))), "{e:?}");

        let mut garbage = PREFACE.to_vec();
        garbage.extend_from_slice(&[0, 0, 0, 2, 0xff, 0xff]);
        let (e, _) = read(&garbage).await;
        assert!(matches!(e, Err(HeaderError::Decode(_))), "{e:?}");

        for port in [0u16, 1] {
            let mut bytes = TransportHeader::opaque(port).encode();
            if port == 1 {
                // Rewrite the varint 1 into 70000 (0xf0 0xa2 0x04): beyond u16.
                bytes.truncate(PREFACE.len());
                bytes.extend_from_slice(&[0, 0, 0, 4, 0x08, 0xf0, 0xa2, 0x04]);
            }
            let (e, _) = read(&bytes).await;
            assert!(matches!(e, Err(HeaderError::Port(_))), "{e:?}");
        }

        let (e, _) = read(&PREFACE[..10]).await;
        assert!(matches!(e, Err(HeaderError::Io(_))), "{e:?}");
    }
}
