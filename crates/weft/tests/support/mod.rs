//! Helpers for tests that run the real `weft` (and `weft-proxy`) binaries.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant, SystemTime};

/// The identity service's own identity (its default).
pub const IDENTITY_SERVICE: &str = "identity.weft.serviceaccount.identity.weft.cluster.local";
pub const WEB: &str = "web.demo.serviceaccount.identity.weft.cluster.local";

pub fn weft(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .output()
        .expect("running weft")
}

pub struct Server {
    child: Child,
    pub admin: SocketAddr,
}

impl Server {
    /// A counter from the admin server's /metrics.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        admin_metric(self.admin, name, labels)
    }
}

/// The sum of a metric's series matching `labels`, scraped from an admin
/// server (a proxy's or the control plane's); 0 if it cannot be reached.
pub fn admin_metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = weft_testkit::scrape::http_get(admin, "/metrics")
        .map(|r| r.1)
        .unwrap_or_default();
    weft_testkit::scrape::metric_sum(&text, name, labels)
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub use weft_testkit::ports::free_port;

pub struct Ca {
    pub dir: std::path::PathBuf,
}

impl Ca {
    pub fn create() -> Ca {
        let dir = std::env::temp_dir().join(format!(
            "weft-ca-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        let out = weft(&["identity", "ca", "create", "--dir", dir.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ca { dir }
    }

    pub fn token(&self, identity: &str, ttl: &str) -> Vec<u8> {
        mint_token(&self.dir, identity, ttl)
    }

    /// Starts `weft control identity` on `port`, signing leaves for
    /// `leaf_lifetime`, with its admin server on a free port; gives its
    /// address.
    pub fn serve(&self, port: u16, leaf_lifetime: &str) -> (Server, String) {
        let listen = format!("127.0.0.1:{port}");
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "control",
                "identity",
                "--dir",
                self.dir.to_str().unwrap(),
                "--listen",
                &listen,
            ])
            .args([
                "--admin-listen",
                &admin.to_string(),
                "--leaf-lifetime",
                leaf_lifetime,
            ])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&listen).is_err() {
            assert!(Instant::now() < deadline, "identity service did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        (Server { child, admin }, listen)
    }

    /// A Certify client for the service at `addr`, over TLS, checking the
    /// service's identity against this CA's anchors (as a proxy does).
    pub async fn client(
        &self,
        addr: &str,
    ) -> linkerd2_proxy_api::identity::identity_client::IdentityClient<tonic::transport::Channel>
    {
        let pem = std::fs::read_to_string(self.dir.join("ca.crt")).unwrap();
        let anchors = weft_identity::verify::TrustAnchors::from_pem(&pem).unwrap();
        let service = weft_identity::control::ControlAddr {
            addr: addr.into(),
            identity: Some(IDENTITY_SERVICE.parse().unwrap()),
        };
        let channel =
            weft_identity::control::connect(&service, Some(&anchors), Duration::from_secs(5))
                .await
                .unwrap();
        linkerd2_proxy_api::identity::identity_client::IdentityClient::new(channel)
    }
}

/// A token from the CA in `dir` (`weft identity token`).
pub fn mint_token(dir: &std::path::Path, identity: &str, ttl: &str) -> Vec<u8> {
    let out = weft(&[
        "identity",
        "token",
        "--dir",
        dir.to_str().unwrap(),
        "--identity",
        identity,
        "--ttl",
        ttl,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .as_bytes()
        .to_vec()
}

impl Drop for Ca {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The weft-proxy binary, built beside weft (scripts/test builds every binary).
pub fn proxy_bin() -> PathBuf {
    workspace_bin("weft-proxy")
}

/// A binary of another workspace crate, built next to `weft`.
pub fn workspace_bin(name: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_BIN_EXE_weft")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A temporary directory of manifests served by `weft control destination`.
pub struct Destination {
    pub dir: PathBuf,
    pub server: Server,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// With a CA directory and its identity service's port, the service gets
    /// a certificate through Certify and serves TLS as `destination.weft...`.
    tls: Option<(PathBuf, u16)>,
    /// More arguments (`--cluster-networks ...`), kept for restarts.
    args: Vec<String>,
}

/// The destination service's own identity (its default).
pub const DESTINATION_SERVICE: &str = "destination.weft.serviceaccount.identity.weft.cluster.local";

impl Destination {
    /// Writes `files` (name, YAML) into a fresh directory and serves it.
    pub fn start(files: &[(&str, &str)]) -> Destination {
        Self::start_with(files, None, &[])
    }

    /// The same, with more command-line arguments.
    pub fn start_args(files: &[(&str, &str)], args: &[&str]) -> Destination {
        Self::start_with(files, None, args)
    }

    /// The same, serving TLS with a certificate it gets from the identity
    /// service of `ca` on `identity_port`, with a token for its identity.
    pub fn start_tls(files: &[(&str, &str)], ca: &Ca, identity_port: u16) -> Destination {
        Self::start_tls_args(files, ca, identity_port, &[])
    }

    /// [`Destination::start_tls`] with more command-line arguments.
    pub fn start_tls_args(
        files: &[(&str, &str)],
        ca: &Ca,
        identity_port: u16,
        args: &[&str],
    ) -> Destination {
        Self::start_with(files, Some((ca.dir.clone(), identity_port)), args)
    }

    fn start_with(
        files: &[(&str, &str)],
        tls: Option<(PathBuf, u16)>,
        args: &[&str],
    ) -> Destination {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let dir = std::env::temp_dir().join(format!(
            "weft-manifests-test-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.with_extension("log");
        let child = Self::spawn(&dir, addr, admin, &log, tls.as_ref(), &args);
        Destination {
            dir,
            server: Server { child, admin },
            addr,
            log,
            tls,
            args,
        }
    }

    fn spawn(
        dir: &std::path::Path,
        addr: SocketAddr,
        admin: SocketAddr,
        log: &std::path::Path,
        tls: Option<&(PathBuf, u16)>,
        args: &[String],
    ) -> Child {
        let tls_args: Vec<String> = match tls {
            Some((ca_dir, identity_port)) => {
                let token = dir.with_extension("token");
                std::fs::write(&token, mint_token(ca_dir, DESTINATION_SERVICE, "1h")).unwrap();
                vec![
                    "--identity-addr".into(),
                    format!("127.0.0.1:{identity_port}"),
                    "--token-file".into(),
                    token.display().to_string(),
                    "--trust-anchors".into(),
                    ca_dir.join("ca.crt").display().to_string(),
                ]
            }
            None => Vec::new(),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_weft"))
            .args([
                "control",
                "destination",
                "--manifests",
                dir.to_str().unwrap(),
            ])
            .args(&tls_args)
            .args(args)
            .args(["--listen", &addr.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .env("WEFT_LOG", "info")
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "destination service did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    /// Kills the service (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.server.child.kill();
        let _ = self.server.child.wait();
    }

    /// Starts it again on the same address and manifests.
    pub fn restart(&mut self) {
        self.kill();
        self.server.child = Self::spawn(
            &self.dir,
            self.addr,
            self.server.admin,
            &self.log,
            self.tls.as_ref(),
            &self.args,
        );
    }

    pub fn write(&self, name: &str, text: &str) {
        // Write-then-rename, as editors and ConfigMap updates do.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.join(name)).unwrap();
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.dir.join(name)).unwrap();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// An ExternalWorkload manifest: `name` in namespace demo with label app=`app`.
pub fn workload_yaml(name: &str, app: &str, ip: &str, port: u16) -> String {
    format!(
        "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {{name: {name}, namespace: demo, labels: {{app: {app}}}}}\nspec:\n  meshTLS: {{identity: {app}.demo.serviceaccount.identity.weft.cluster.local}}\n  ports: [{{name: http, port: {port}}}]\n  workloadIPs: [{{ip: {ip}}}]\n"
    )
}

/// A Service manifest selecting app=`name`, port 80 to the workloads' `http` port.
pub fn service_yaml(name: &str, cluster_ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: {cluster_ip}\n  selector: {{app: {name}}}\n  ports: [{{port: 80, targetPort: http}}]\n"
    )
}

/// A client TLS config trusting `anchors_pem`, presenting a certificate for
/// `client` (signed by that CA's issuer) when given: a real mesh client.
pub fn client_config(
    anchors_pem: &str,
    client: Option<(&Ca, &str)>,
) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut roots = rustls::RootCertStore::empty();
    for der in weft_identity::ca::pem_certificates(anchors_pem, "anchors").unwrap() {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some((ca, name)) => {
            let issuer = weft_identity::ca::CertAndKey {
                cert_pem: std::fs::read_to_string(ca.dir.join("issuer.crt")).unwrap(),
                key_pem: std::fs::read_to_string(ca.dir.join("issuer.key")).unwrap(),
            };
            let anchors = std::fs::read_to_string(ca.dir.join("ca.crt")).unwrap();
            let signer =
                weft_identity::ca::Ca::new(&issuer, &anchors, Duration::from_secs(3600)).unwrap();
            let id = name.parse().unwrap();
            let (key, csr) = weft_identity::csr::new_key_and_csr(&id).unwrap();
            let leaf = signer.sign(&csr, &id, SystemTime::now()).unwrap();
            let chain = std::iter::once(leaf.cert_der)
                .chain(leaf.chain)
                .map(CertificateDer::from)
                .collect();
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    };
    std::sync::Arc::new(config)
}

/// Sends one HTTP/1.1 request over mesh TLS (SNI = the server's identity) and
/// returns whatever came back, or the error.
pub async fn mesh_request(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    request: &str,
) -> Result<String, std::io::Error> {
    mesh_request_in_parts(config, addr, &[request], Duration::ZERO).await
}

/// Like [`mesh_request`], writing `parts` with `pause` between them.
pub async fn mesh_request_in_parts(
    config: std::sync::Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    parts: &[&str],
    pause: Duration,
) -> Result<String, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(WEB.to_string()).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(pause).await;
        }
        tls.write_all(part.as_bytes()).await?;
        tls.flush().await?;
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), tls.read_to_string(&mut out))
        .await
        .map_err(|_| std::io::Error::other("no answer in 10 s"))??;
    Ok(out)
}
