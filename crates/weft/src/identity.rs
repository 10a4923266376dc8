//! `weft identity ...`: the CA directory (create, rotate), workload tokens,
//! and showing certificates; and the clap form of the identity service's
//! settings (`weft control identity`). The service itself is
//! `weft_control::identity`.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use weft_control::ca_dir;
use weft_identity::Identity;

#[derive(Subcommand)]
pub enum IdentityCmd {
    /// The mesh CA's files.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Mint a token that proves one identity, for a workload's proxy.
    Token(TokenArgs),
    /// Print a certificate (subject, SANs, issuer, validity), from a file or a proxy.
    Show(crate::show::ShowArgs),
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Generate a trust anchor, an issuer signed by it, and a token key (ECDSA P-256).
    Create(CreateArgs),
    /// Replace the issuer with a new one signed by the same trust anchor. A running
    /// identity service picks it up on its next request.
    RotateIssuer(RotateArgs),
    /// Put a new token-signing key in front; the old ones keep verifying the
    /// tokens they signed until retired. A running identity service picks it up.
    RotateTokenKey(RotateTokenKeyArgs),
}

#[derive(Args)]
pub struct RotateTokenKeyArgs {
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    /// Drop every older key: tokens they signed stop working at once.
    #[arg(long)]
    retire: bool,
}

#[derive(Args)]
pub struct RotateArgs {
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    issuer_validity: Duration,
}

#[derive(Args)]
pub struct CreateArgs {
    /// Directory to write the CA's files into.
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    /// Trust domain, the last part of every identity name.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    anchor_validity: Duration,
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    issuer_validity: Duration,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
pub struct TokenArgs {
    #[arg(long, default_value = "weft-ca")]
    dir: PathBuf,
    /// The identity the token proves, e.g. web.demo.serviceaccount.identity.weft.cluster.local
    #[arg(long)]
    identity: String,
    /// How long the token is good for (at most 90 days).
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

pub fn run(cmd: IdentityCmd) -> anyhow::Result<()> {
    match cmd {
        IdentityCmd::Ca(CaCmd::Create(args)) => create(&args),
        IdentityCmd::Ca(CaCmd::RotateIssuer(args)) => rotate_issuer(&args),
        IdentityCmd::Show(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(crate::show::run(args)),
        IdentityCmd::Ca(CaCmd::RotateTokenKey(args)) => {
            let keys = ca_dir::rotate_token_key(&args.dir, args.retire)?;
            outln!(
                "token key {} signs from now on; {} key(s) verify",
                keys.keys()[0].id(),
                keys.keys().len()
            );
            Ok(())
        }
        IdentityCmd::Token(args) => {
            let identity: Identity = args.identity.parse()?;
            let keys = ca_dir::load_token_keys(&args.dir)?;
            outln!("{}", keys.mint(&identity, args.ttl, SystemTime::now())?);
            Ok(())
        }
    }
}

fn create(args: &CreateArgs) -> anyhow::Result<()> {
    ca_dir::create(
        &args.dir,
        &args.trust_domain,
        args.anchor_validity,
        args.issuer_validity,
        args.force,
    )?;
    let days = |d: Duration| d.as_secs() / 86_400;
    outln!(
        "created trust anchor (valid {} days) and issuer (valid {} days) in {}",
        days(args.anchor_validity),
        days(args.issuer_validity),
        args.dir.display()
    );
    Ok(())
}

fn rotate_issuer(args: &RotateArgs) -> anyhow::Result<()> {
    ca_dir::rotate_issuer(&args.dir, &args.trust_domain, args.issuer_validity)?;
    outln!(
        "rotated the issuer in {} (valid {} days)",
        args.dir.display(),
        args.issuer_validity.as_secs() / 86_400
    );
    Ok(())
}
