//! `weft identity show`: a workload's certificate, from a file or fetched
//! live from a proxy's mesh listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use weft_identity::Identity;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

#[derive(Args)]
pub struct ShowArgs {
    /// A PEM file with the certificate (and optionally its chain).
    #[arg(long, conflicts_with = "proxy")]
    cert: Option<PathBuf>,
    /// A proxy's inbound address: its current certificate is fetched from its mesh listener.
    #[arg(long, requires = "identity")]
    proxy: Option<SocketAddr>,
    /// The proxy's identity (the TLS server name its mesh listener answers to).
    #[arg(long)]
    identity: Option<String>,
    /// A CA directory whose trust anchors the certificate is checked against.
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    #[command(flatten)]
    output: crate::output::OutputArgs,
}

#[derive(serde::Serialize)]
struct Shown {
    subject: String,
    identity: Option<String>,
    sans: Vec<String>,
    issuer: String,
    not_before: String,
    not_after: String,
    remaining_seconds: i64,
    key: String,
    serial: String,
    verified: String,
}

pub async fn run(args: ShowArgs) -> anyhow::Result<()> {
    let chain = match (&args.cert, args.proxy, &args.identity) {
        (Some(path), _, _) => {
            let pem = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            weft_identity::ca::pem_certificates(&pem, "certificate")?
        }
        (None, Some(addr), Some(identity)) => fetch(addr, identity.parse()?).await?,
        _ => bail!("give --cert FILE, or --proxy ADDR with --identity NAME"),
    };
    let (_, cert) =
        X509Certificate::from_der(&chain[0]).context("the certificate is not valid DER")?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .map(|n| match n {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::URI(u) => format!("URI:{u}"),
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let identity = weft_identity::verify::identity_of(&chain[0]);
    let now = SystemTime::now();
    let verified = match (&args.ca_dir, &identity) {
        (None, _) => "not checked (give --ca-dir)".to_string(),
        (Some(_), None) => "NO: the certificate names no identity".to_string(),
        (Some(dir), Some(id)) => {
            let anchors = std::fs::read_to_string(dir.join("ca.crt"))
                .with_context(|| format!("reading {}/ca.crt", dir.display()))?;
            match weft_identity::verify::TrustAnchors::from_pem(&anchors)?.verify(
                &chain[0],
                &chain[1..],
                id,
                now,
            ) {
                Ok(_) => format!("yes: chains to the trust anchors in {}", dir.display()),
                Err(e) => format!("NO: {e}"),
            }
        }
    };
    let not_after = cert.validity().not_after.timestamp();
    let now_secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let shown = Shown {
        subject: cert.subject().to_string(),
        identity: identity.map(|i| i.to_string()),
        sans,
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        remaining_seconds: not_after - now_secs,
        key: key_description(&cert),
        serial: cert.raw_serial_as_string(),
        verified,
    };
    if !args.output.data(&shown)? {
        let remaining = Duration::from_secs(shown.remaining_seconds.max(0) as u64);
        let rows = [
            ("subject", shown.subject.clone()),
            (
                "identity",
                shown.identity.clone().unwrap_or_else(|| "—".into()),
            ),
            ("SANs", shown.sans.join(", ")),
            ("issuer", shown.issuer.clone()),
            ("valid from", shown.not_before.clone()),
            (
                "valid until",
                format!(
                    "{} ({} left)",
                    shown.not_after,
                    humantime::format_duration(remaining)
                ),
            ),
            ("key", shown.key.clone()),
            ("serial", shown.serial.clone()),
            ("verified", shown.verified.clone()),
        ];
        for (name, value) in rows {
            outln!("{name:<12} {value}");
        }
    }
    Ok(())
}

fn key_description(cert: &X509Certificate<'_>) -> String {
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    let alg = &cert.public_key().algorithm;
    let curve = alg.parameters.as_ref().and_then(|p| p.as_oid().ok());
    if alg.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY && curve.as_ref() == Some(&OID_EC_P256) {
        "ECDSA P-256".into()
    } else {
        format!("other ({})", alg.algorithm)
    }
}

/// Records the chain a server presents and accepts it, so the handshake gets
/// that far (whether the chain is trusted is reported separately, from the
/// trust anchors). The handshake signature is still checked, so the server
/// proved it holds the certificate's key.
#[derive(Debug)]
struct Recorder {
    chain: Mutex<Vec<Vec<u8>>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.to_vec())
            .collect();
        *self.chain.lock().unwrap_or_else(|e| e.into_inner()) = chain;
        Ok(ServerCertVerified::assertion())
    }

    weft_identity::handshake_signatures!();
}

/// The certificate chain a proxy's mesh listener presents for `identity`.
async fn fetch(addr: SocketAddr, identity: Identity) -> anyhow::Result<Vec<Vec<u8>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        chain: Mutex::default(),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    let tcp = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .with_context(|| format!("connecting to {addr} timed out"))?
        .with_context(|| format!("connecting to {addr}"))?;
    let name = ServerName::try_from(identity.to_string())?;
    // Without a client certificate the proxy ends the handshake; the server's
    // certificate has been seen by then.
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await;
    let chain = std::mem::take(&mut *recorder.chain.lock().unwrap_or_else(|e| e.into_inner()));
    if chain.is_empty() {
        bail!(
            "{addr} presented no certificate for {identity} (is identity on, and is that its name?)"
        );
    }
    Ok(chain)
}
