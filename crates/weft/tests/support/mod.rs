//! Helpers for tests that run the real `weft` (and `weft-proxy`) binaries.
#![allow(dead_code)] // each test binary uses a different subset

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

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
}

/// The destination service's own identity (its default).
pub const DESTINATION_SERVICE: &str = "destination.weft.serviceaccount.identity.weft.cluster.local";

impl Destination {
    /// Writes `files` (name, YAML) into a fresh directory and serves it.
    pub fn start(files: &[(&str, &str)]) -> Destination {
        Self::start_with(files, None)
    }

    /// The same, serving TLS with a certificate it gets from the identity
    /// service of `ca` on `identity_port`, with a token for its identity.
    pub fn start_tls(files: &[(&str, &str)], ca: &Ca, identity_port: u16) -> Destination {
        Self::start_with(files, Some((ca.dir.clone(), identity_port)))
    }

    fn start_with(files: &[(&str, &str)], tls: Option<(PathBuf, u16)>) -> Destination {
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
        let child = Self::spawn(&dir, addr, admin, &log, tls.as_ref());
        Destination {
            dir,
            server: Server { child, admin },
            addr,
            log,
            tls,
        }
    }

    fn spawn(
        dir: &std::path::Path,
        addr: SocketAddr,
        admin: SocketAddr,
        log: &std::path::Path,
        tls: Option<&(PathBuf, u16)>,
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
