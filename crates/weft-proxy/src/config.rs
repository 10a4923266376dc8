//! The proxy's configuration, read from environment variables.
//!
//! Every setting is declared once in [`SETTINGS`], with its `WEFT_PROXY_*` name, the
//! `LINKERD2_PROXY_*` aliases that let weft-proxy stand in for linkerd2-proxy, its
//! default and a one-line description. `docs/proxy-config.md` lists the same table;
//! a unit test keeps the two in step. A value that does not parse stops the proxy
//! with an error naming the variable that was actually set and its value.

use std::net::SocketAddr;
use std::time::Duration;

use weft_identity::certify::CertifyConfig;
use weft_identity::control::ControlAddr;

/// One environment setting: where it is read from and what it defaults to.
#[derive(Debug)]
pub struct Setting {
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// Default as it would be written in the environment; empty means "unset".
    pub default: &'static str,
    pub help: &'static str,
}

macro_rules! settings {
    ($($ident:ident = $name:literal, [$($alias:literal),*], $default:literal, $help:literal;)*) => {
        $(pub const $ident: Setting = Setting {
            name: $name,
            aliases: &[$($alias),*],
            default: $default,
            help: $help,
        };)*
        /// All settings, in the order the docs list them.
        pub const SETTINGS: &[Setting] = &[$($ident),*];
    };
}

settings! {
    OUTBOUND_LISTEN_ADDR = "WEFT_PROXY_OUTBOUND_LISTEN_ADDR", ["LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR"],
        "127.0.0.1:4140", "Where the outbound listener accepts redirected and explicit-proxy connections.";
    INBOUND_LISTEN_ADDR = "WEFT_PROXY_INBOUND_LISTEN_ADDR", ["LINKERD2_PROXY_INBOUND_LISTEN_ADDR"],
        "0.0.0.0:4143", "Where the inbound listener accepts connections redirected to the workload.";
    ADMIN_LISTEN_ADDR = "WEFT_PROXY_ADMIN_LISTEN_ADDR", ["LINKERD2_PROXY_ADMIN_LISTEN_ADDR"],
        "0.0.0.0:4191", "Admin server: /metrics, /ready, /live, /shutdown.";
    INBOUND_FORWARD_ADDR = "WEFT_PROXY_INBOUND_FORWARD_ADDR", [],
        "", "Where inbound connections that were not redirected (no original destination) go, e.g. 127.0.0.1:8080 in rootless mode. Unset: such connections are refused.";
    INBOUND_OPAQUE_PORTS = "WEFT_PROXY_INBOUND_OPAQUE_PORTS", ["LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"],
        "25,587,3306,4444,5432,6379,9300,11211", "Inbound target ports proxied as opaque TCP without protocol detection (list of ports and ranges, e.g. 25,8000-8010).";
    OUTBOUND_OPAQUE_PORTS = "WEFT_PROXY_OUTBOUND_OPAQUE_PORTS", ["LINKERD2_PROXY_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION"],
        "25,587,3306,4444,5432,6379,9300,11211", "Outbound target ports proxied as opaque TCP without protocol detection.";
    INBOUND_DETECT_TIMEOUT = "WEFT_PROXY_INBOUND_DETECT_TIMEOUT", ["LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT"],
        "1s", "How long inbound protocol detection waits for the client's first bytes. A client that sends nothing by then is closed (list server-speaks-first ports in WEFT_PROXY_INBOUND_OPAQUE_PORTS); bytes that look like HTTP/1 are served as HTTP/1 whether or not the request is complete.";
    OUTBOUND_DETECT_TIMEOUT = "WEFT_PROXY_OUTBOUND_DETECT_TIMEOUT", ["LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT"],
        "1s", "The same for outbound connections, except that a client that sends nothing is proxied as opaque TCP (a server-speaks-first protocol).";
    INBOUND_MAX_CONNECTIONS = "WEFT_PROXY_INBOUND_MAX_CONNECTIONS", [],
        "10000", "Most inbound connections served at once; further ones are closed at accept and counted in inbound_tcp_accept_errors_total{error=\"connection_limit\"}.";
    OUTBOUND_MAX_CONNECTIONS = "WEFT_PROXY_OUTBOUND_MAX_CONNECTIONS", [],
        "10000", "The same for outbound connections.";
    INBOUND_CONNECT_TIMEOUT = "WEFT_PROXY_INBOUND_CONNECT_TIMEOUT", ["LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT"],
        "1s", "Connect timeout towards the local workload.";
    OUTBOUND_CONNECT_TIMEOUT = "WEFT_PROXY_OUTBOUND_CONNECT_TIMEOUT", ["LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT"],
        "1s", "Connect timeout towards remote endpoints.";
    RESPONSE_TIMEOUT = "WEFT_PROXY_RESPONSE_TIMEOUT", [],
        "", "Longest wait for response headers before answering 504 (unset: no limit; per-route timeouts come from the control plane).";
    TCP_IDLE_TIMEOUT = "WEFT_PROXY_TCP_IDLE_TIMEOUT", [],
        "1h", "An opaque TCP connection with no bytes in either direction for this long is closed.";
    HTTP_POOL_IDLE_TIMEOUT = "WEFT_PROXY_HTTP_POOL_IDLE_TIMEOUT", ["LINKERD2_PROXY_OUTBOUND_HTTP1_CONNECTION_POOL_IDLE_TIMEOUT"],
        "10s", "Idle keep-alive connections to an endpoint are closed after this long.";
    HTTP_HEADER_READ_TIMEOUT = "WEFT_PROXY_HTTP_HEADER_READ_TIMEOUT", [],
        "30s", "A client must send a complete HTTP/1 request head within this time of its first byte, or it gets 408 and the connection is closed.";
    HTTP_MAX_HEAD_SIZE = "WEFT_PROXY_HTTP_MAX_HEAD_SIZE", [],
        "16384", "Largest HTTP/1 request head (request line and header fields) or trailer section in bytes, from 1024 to 1048576; a larger one gets 431.";
    SHUTDOWN_ENDPOINT_ENABLED = "WEFT_PROXY_SHUTDOWN_ENDPOINT_ENABLED", ["LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED"],
        "false", "Whether the admin server's POST /shutdown works (from loopback clients only). Off by default: any process in the pod could stop the proxy.";
    SHUTDOWN_GRACE_PERIOD = "WEFT_PROXY_SHUTDOWN_GRACE_PERIOD", ["LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD"],
        "30s", "On SIGTERM or /shutdown, how long in-flight requests and connections may take to finish.";
    WORKER_THREADS = "WEFT_PROXY_WORKER_THREADS", ["LINKERD2_PROXY_CORES"],
        "1", "Runtime worker threads. One avoids cross-core wake-ups; raise it only after measuring.";
    IDENTITY_SVC_ADDR = "WEFT_PROXY_IDENTITY_SVC_ADDR", ["LINKERD2_PROXY_IDENTITY_SVC_ADDR"],
        "", "host:port of the identity service (Identity/Certify). Unset: identity is off and the proxy is plaintext only.";
    IDENTITY_SVC_NAME = "WEFT_PROXY_IDENTITY_SVC_NAME", ["LINKERD2_PROXY_IDENTITY_SVC_NAME"],
        "", "The identity the identity service proves over TLS, e.g. identity.weft.serviceaccount.identity.weft.cluster.local (required with identity: tokens never cross the network in plaintext).";
    IDENTITY_LOCAL_NAME = "WEFT_PROXY_IDENTITY_LOCAL_NAME", ["LINKERD2_PROXY_IDENTITY_LOCAL_NAME"],
        "", "This proxy's identity, e.g. web.demo.serviceaccount.identity.weft.cluster.local (required with identity).";
    IDENTITY_TOKEN_FILE = "WEFT_PROXY_IDENTITY_TOKEN_FILE", ["LINKERD2_PROXY_IDENTITY_TOKEN_FILE"],
        "", "File holding the credential sent with each Certify request; read anew each time, so it may be rotated (required with identity).";
    IDENTITY_TRUST_ANCHORS = "WEFT_PROXY_IDENTITY_TRUST_ANCHORS", ["LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS"],
        "", "PEM text of the trust anchors (one or more roots) that certificates must chain to (required with identity).";
    OUTBOUND_IDENTITIES = "WEFT_PROXY_OUTBOUND_IDENTITIES", [],
        "", "Meshed outbound endpoints, ADDR=IDENTITY[@PORT] separated by commas: they are reached only over mesh TLS proving IDENTITY; with @PORT (the peer proxy's inbound port), opaque TCP goes to that port with Linkerd's transport header. Static until discovery provides them.";
    DESTINATION_SVC_ADDR = "WEFT_PROXY_DESTINATION_SVC_ADDR", ["LINKERD2_PROXY_DESTINATION_SVC_ADDR"],
        "", "host:port of the destination service (Destination/Get). Unset: no discovery; outbound traffic goes to the original destination.";
    DESTINATION_SVC_NAME = "WEFT_PROXY_DESTINATION_SVC_NAME", ["LINKERD2_PROXY_DESTINATION_SVC_NAME"],
        "", "The identity the destination service proves over TLS, e.g. destination.weft.serviceaccount.identity.weft.cluster.local. Required when identity is on (the control plane is never reached in plaintext then); without identity it cannot be set, and discovery is plaintext.";
    POLICY_SVC_ADDR = "WEFT_PROXY_POLICY_SVC_ADDR", ["LINKERD2_PROXY_POLICY_SVC_ADDR"],
        "", "host:port of the policy service (InboundServerPolicies and OutboundPolicies; Weft's destination process serves both). Unset: every inbound port has WEFT_PROXY_INBOUND_DEFAULT_POLICY, and outbound requests follow ServiceProfiles only.";
    POLICY_SVC_NAME = "WEFT_PROXY_POLICY_SVC_NAME", ["LINKERD2_PROXY_POLICY_SVC_NAME"],
        "", "The identity the policy service proves over TLS; required when identity is on, as for the destination service.";
    POLICY_WORKLOAD = "WEFT_PROXY_POLICY_WORKLOAD", ["LINKERD2_PROXY_POLICY_WORKLOAD"],
        "", "This workload as the policy service knows it: {\"ns\":\"demo\",\"pod\":\"web-0\"} (Linkerd's form) or demo:web-0. Required with WEFT_PROXY_POLICY_SVC_ADDR.";
    INBOUND_DEFAULT_POLICY = "WEFT_PROXY_INBOUND_DEFAULT_POLICY", ["LINKERD2_PROXY_INBOUND_DEFAULT_POLICY"],
        "all-unauthenticated", "The inbound policy until the policy service first answers for a port (it waits at most WEFT_PROXY_DISCOVERY_TIMEOUT), and without one: all-unauthenticated, all-authenticated, cluster-unauthenticated, cluster-authenticated, deny or audit.";
    POLICY_CLUSTER_NETWORKS = "WEFT_PROXY_POLICY_CLUSTER_NETWORKS", ["LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS"],
        "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8,198.18.0.0/15,127.0.0.0/8", "The networks the cluster-* default policies admit.";
    DESTINATION_GET_SUFFIXES = "WEFT_PROXY_DESTINATION_GET_SUFFIXES", ["LINKERD2_PROXY_DESTINATION_GET_SUFFIXES"],
        "svc.cluster.local.", "Explicit-proxy host names under these suffixes (comma-separated) are resolved through the destination service; IP targets always are.";
    DESTINATION_CONTEXT = "WEFT_PROXY_DESTINATION_CONTEXT", ["LINKERD2_PROXY_DESTINATION_CONTEXT"],
        "", "Context token sent with every destination lookup (e.g. the workload's namespace).";
    DISCOVERY_TIMEOUT = "WEFT_PROXY_DISCOVERY_TIMEOUT", [],
        "3s", "How long a new target waits for the destination service's first answer; after that an IP target outside WEFT_PROXY_MESH_NETWORKS is forwarded as addressed, and a name or an in-mesh address gets 503.";
    MESH_NETWORKS = "WEFT_PROXY_MESH_NETWORKS", [],
        "", "The mesh's pod and service networks (CIDRs, comma-separated, e.g. 198.18.0.0/15). A target in them is never dialled in plaintext on a guess: without an answer from the destination service it is refused (503) instead of forwarded as addressed.";
    INBOUND_REQUIRE_IDENTITY_PORTS = "WEFT_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS", ["LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY"],
        "", "Inbound target ports that accept only mesh TLS with a verified client identity; other connections are closed and counted in inbound_tcp_accept_errors_total{error=\"identity_required\"}. Needs identity on.";
    INBOUND_METRICS_AUTHORITY_LABELS = "WEFT_PROXY_INBOUND_METRICS_AUTHORITY_LABELS", ["LINKERD2_PROXY_INBOUND_METRICS_AUTHORITY_LABELS"],
        "", "unsafe: label inbound HTTP metrics with the authority the client sent (its Host header). Unset: inbound metrics carry no authority, so clients cannot choose label values.";
    METRICS_MAX_SERIES = "WEFT_PROXY_METRICS_MAX_SERIES", [],
        "2000", "Most label sets one metric family keeps; further ones are counted in one series labelled overflow=\"true\".";
    METRICS_IDLE_TIMEOUT = "WEFT_PROXY_METRICS_IDLE_TIMEOUT", [],
        "10m", "A series that nothing has used for this long is dropped from the exposition (and counts again from zero if it comes back).";
    ACCESS_LOG = "WEFT_PROXY_ACCESS_LOG", ["LINKERD2_PROXY_ACCESS_LOG"],
        "", "apache or json: one line per inbound HTTP request on stderr (Linkerd's fields), written off the request path; lines that would wait are dropped and counted in access_log_dropped_total. Unset: off.";
    LOG = "WEFT_PROXY_LOG", ["LINKERD2_PROXY_LOG"],
        "warn,weft_proxy=info", "Log filter (tracing-subscriber EnvFilter syntax).";
    LOG_FORMAT = "WEFT_PROXY_LOG_FORMAT", ["LINKERD2_PROXY_LOG_FORMAT"],
        "plain", "Log format: plain or json.";
}

/// An environment value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {var}={value:?}: {reason}")]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub reason: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// An IP network (`198.18.0.0/15`); shared with the policy tables.
pub use weft_policy::Cidr;

/// A set of TCP ports, e.g. the ports that skip protocol detection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// Inclusive ranges, in the order given.
    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.0
    }

    /// Parses `25,587,8000-8010`; blanks are ignored.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut ranges = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (lo, hi) = match part.split_once('-') {
                Some((lo, hi)) => (parse_port(lo)?, parse_port(hi)?),
                None => {
                    let p = parse_port(part)?;
                    (p, p)
                }
            };
            if lo > hi {
                return Err(format!("port range {part} is backwards"));
            }
            ranges.push((lo, hi));
        }
        Ok(PortSet(ranges))
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535)")),
        Ok(p) => Ok(p),
    }
}

/// Parses durations the way linkerd2-proxy writes them: `500ms`, `10s`, `2m`, `1h`.
/// A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| "expected a duration like 500ms, 10s, 2m or 1h".to_string())?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("unknown unit {unit:?}; use ms, s, m or h")),
    };
    Ok(d)
}

#[derive(Clone, Debug)]
pub struct Config {
    pub outbound_addr: SocketAddr,
    pub inbound_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub inbound_forward_addr: Option<SocketAddr>,
    pub inbound_opaque_ports: PortSet,
    pub outbound_opaque_ports: PortSet,
    pub inbound_detect_timeout: Duration,
    pub outbound_detect_timeout: Duration,
    pub inbound_max_connections: usize,
    pub outbound_max_connections: usize,
    pub inbound_connect_timeout: Duration,
    pub outbound_connect_timeout: Duration,
    pub response_timeout: Option<Duration>,
    pub tcp_idle_timeout: Duration,
    pub http_pool_idle_timeout: Duration,
    pub http_header_read_timeout: Duration,
    pub http_max_head_size: usize,
    pub shutdown_endpoint_enabled: bool,
    pub shutdown_grace_period: Duration,
    pub worker_threads: usize,
    pub identity: Option<CertifyConfig>,
    pub outbound_identities: std::collections::HashMap<SocketAddr, crate::dial::MeshEndpoint>,
    pub destination: Option<ControlAddr>,
    /// The inbound policy service and this workload's name there.
    pub policy: Option<(ControlAddr, String)>,
    pub inbound_default_policy: String,
    pub policy_cluster_networks: Vec<Cidr>,
    pub destination_suffixes: Vec<String>,
    pub destination_context: String,
    pub discovery_timeout: Duration,
    pub mesh_networks: Vec<Cidr>,
    pub inbound_require_identity_ports: PortSet,
    pub inbound_metrics_authority: bool,
    pub access_log: Option<crate::access_log::Format>,
    pub metrics_max_series: usize,
    pub metrics_idle_timeout: Duration,
    pub log_filter: String,
    pub log_format: LogFormat,
}

/// Reads settings through a lookup function, so tests need not touch the process
/// environment.
struct Reader<F>(F);

impl<F: Fn(&str) -> Option<String>> Reader<F> {
    /// The variable that is set (name first, then aliases) and its value, or the default.
    fn raw(&self, s: &Setting) -> (&'static str, String) {
        std::iter::once(&s.name)
            .chain(s.aliases)
            .find_map(|var| (self.0)(var).map(|v| (*var, v)))
            .unwrap_or((s.name, s.default.to_string()))
    }

    fn parse<T>(
        &self,
        s: &Setting,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let (var, value) = self.raw(s);
        f(&value).map_err(|reason| ConfigError { var, value, reason })
    }

    fn optional<T>(
        &self,
        s: &Setting,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        self.parse(s, |v| match v.trim() {
            "" => Ok(None),
            v => f(v).map(Some),
        })
    }
}

fn parse_connections(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(n) if (1..=1_000_000).contains(&n) => Ok(n),
        _ => Err("expected a number of connections from 1 to 1000000".into()),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim()
        .parse()
        .map_err(|_| "expected an IP:port address such as 127.0.0.1:4140 or [::]:4143".into())
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|var| std::env::var(var).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let r = Reader(lookup);
        let identity = identity_config(&r)?;
        Ok(Config {
            outbound_addr: r.parse(&OUTBOUND_LISTEN_ADDR, parse_addr)?,
            inbound_addr: r.parse(&INBOUND_LISTEN_ADDR, parse_addr)?,
            admin_addr: r.parse(&ADMIN_LISTEN_ADDR, parse_addr)?,
            inbound_forward_addr: r.optional(&INBOUND_FORWARD_ADDR, parse_addr)?,
            inbound_opaque_ports: r.parse(&INBOUND_OPAQUE_PORTS, PortSet::parse)?,
            outbound_opaque_ports: r.parse(&OUTBOUND_OPAQUE_PORTS, PortSet::parse)?,
            inbound_detect_timeout: r.parse(&INBOUND_DETECT_TIMEOUT, parse_duration)?,
            outbound_detect_timeout: r.parse(&OUTBOUND_DETECT_TIMEOUT, parse_duration)?,
            inbound_max_connections: r.parse(&INBOUND_MAX_CONNECTIONS, parse_connections)?,
            outbound_max_connections: r.parse(&OUTBOUND_MAX_CONNECTIONS, parse_connections)?,
            inbound_connect_timeout: r.parse(&INBOUND_CONNECT_TIMEOUT, parse_duration)?,
            outbound_connect_timeout: r.parse(&OUTBOUND_CONNECT_TIMEOUT, parse_duration)?,
            response_timeout: r.optional(&RESPONSE_TIMEOUT, parse_duration)?,
            tcp_idle_timeout: r.parse(&TCP_IDLE_TIMEOUT, parse_duration)?,
            http_pool_idle_timeout: r.parse(&HTTP_POOL_IDLE_TIMEOUT, parse_duration)?,
            http_header_read_timeout: r.parse(&HTTP_HEADER_READ_TIMEOUT, parse_duration)?,
            http_max_head_size: r.parse(&HTTP_MAX_HEAD_SIZE, |v| {
                match v.trim().parse::<usize>() {
                    Ok(n) if (1024..=1 << 20).contains(&n) => Ok(n),
                    _ => Err("expected a number of bytes from 1024 to 1048576".into()),
                }
            })?,
            shutdown_endpoint_enabled: r.parse(&SHUTDOWN_ENDPOINT_ENABLED, parse_bool)?,
            inbound_metrics_authority: r.parse(&INBOUND_METRICS_AUTHORITY_LABELS, |v| {
                match v.trim() {
                    "" => Ok(false),
                    "unsafe" => Ok(true),
                    _ => Err("expected unsafe, or unset".into()),
                }
            })?,
            access_log: r.parse(&ACCESS_LOG, crate::access_log::Format::parse)?,
            metrics_max_series: r.parse(&METRICS_MAX_SERIES, |v| {
                match v.trim().parse::<usize>() {
                    Ok(n) if (10..=1_000_000).contains(&n) => Ok(n),
                    _ => Err("expected a number of series from 10 to 1000000".into()),
                }
            })?,
            metrics_idle_timeout: r.parse(&METRICS_IDLE_TIMEOUT, parse_duration)?,
            shutdown_grace_period: r.parse(&SHUTDOWN_GRACE_PERIOD, parse_duration)?,
            worker_threads: r.parse(&WORKER_THREADS, |v| match v.trim().parse::<usize>() {
                Ok(n) if (1..=64).contains(&n) => Ok(n),
                _ => Err("expected a number of threads from 1 to 64".into()),
            })?,
            identity: identity.clone(),
            outbound_identities: r.parse(&OUTBOUND_IDENTITIES, |v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|pair| {
                        let (addr, endpoint) = pair
                            .split_once('=')
                            .ok_or(format!("{pair:?} is not ADDR=IDENTITY[@PORT]"))?;
                        let addr = parse_addr(addr)?;
                        let (identity, port) = match endpoint.split_once('@') {
                            Some((id, port)) => (id, Some(port)),
                            None => (endpoint, None),
                        };
                        let identity = identity
                            .trim()
                            .parse()
                            .map_err(|e: weft_identity::name::NameError| e.to_string())?;
                        let port = port.map(parse_port).transpose()?;
                        Ok((
                            addr,
                            crate::dial::MeshEndpoint {
                                identity,
                                opaque_transport_port: port,
                                // Only discovery knows the peer's protocols.
                                http2_upgrade: false,
                            },
                        ))
                    })
                    .collect()
            })?,
            destination: control_config(
                &r,
                &DESTINATION_SVC_ADDR,
                &DESTINATION_SVC_NAME,
                identity.is_some(),
            )?,
            policy: match control_config(
                &r,
                &POLICY_SVC_ADDR,
                &POLICY_SVC_NAME,
                identity.is_some(),
            )? {
                None => None,
                Some(svc) => {
                    let workload = r.parse(&POLICY_WORKLOAD, |v| match v.trim() {
                        "" => Err(format!("required when {} is set", POLICY_SVC_ADDR.name)),
                        w => Ok(w.to_string()),
                    })?;
                    Some((svc, workload))
                }
            },
            inbound_default_policy: r.parse(&INBOUND_DEFAULT_POLICY, |v| {
                const POLICIES: [&str; 6] = [
                    "all-unauthenticated",
                    "all-authenticated",
                    "cluster-unauthenticated",
                    "cluster-authenticated",
                    "deny",
                    "audit",
                ];
                let v = v.trim();
                if POLICIES.contains(&v) {
                    Ok(v.to_string())
                } else {
                    Err(format!("expected one of {}", POLICIES.join(", ")))
                }
            })?,
            policy_cluster_networks: r.parse(&POLICY_CLUSTER_NETWORKS, parse_networks)?,
            destination_suffixes: r.parse(&DESTINATION_GET_SUFFIXES, |v| {
                Ok(v.split(',')
                    .map(|s| s.trim().trim_start_matches('.').to_string())
                    .filter(|s| !s.is_empty())
                    .collect())
            })?,
            destination_context: r.raw(&DESTINATION_CONTEXT).1,
            discovery_timeout: r.parse(&DISCOVERY_TIMEOUT, parse_duration)?,
            mesh_networks: r.parse(&MESH_NETWORKS, parse_networks)?,
            inbound_require_identity_ports: {
                let ports = r.parse(&INBOUND_REQUIRE_IDENTITY_PORTS, PortSet::parse)?;
                if !ports.ranges().is_empty() && identity.is_none() {
                    let (var, value) = r.raw(&INBOUND_REQUIRE_IDENTITY_PORTS);
                    return Err(ConfigError {
                        var,
                        value,
                        reason: "requiring client identities needs identity on".into(),
                    });
                }
                ports
            },
            log_filter: r.raw(&LOG).1,
            log_format: r.parse(&LOG_FORMAT, |v| match v.trim() {
                "plain" => Ok(LogFormat::Plain),
                "json" => Ok(LogFormat::Json),
                _ => Err("expected plain or json".into()),
            })?,
        })
    }
}

/// Comma-separated CIDRs.
fn parse_networks(v: &str) -> Result<Vec<Cidr>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(Cidr::parse)
        .collect()
}

fn parse_identity(v: &str) -> Result<weft_identity::Identity, String> {
    v.trim()
        .parse()
        .map_err(|e: weft_identity::name::NameError| e.to_string())
}

/// A control-plane service (destination, policy), over TLS when its name is
/// given (which needs the trust anchors of the identity settings).
fn control_config<F: Fn(&str) -> Option<String>>(
    r: &Reader<F>,
    addr_setting: &Setting,
    name_setting: &Setting,
    identity_on: bool,
) -> Result<Option<ControlAddr>, ConfigError> {
    let Some(addr) = r.optional(addr_setting, |v| Ok(v.to_string()))? else {
        return Ok(None);
    };
    let identity = r.optional(name_setting, parse_identity)?;
    let refuse = |reason: String| {
        let (var, value) = r.raw(name_setting);
        Err(ConfigError { var, value, reason })
    };
    if identity.is_some() && !identity_on {
        return refuse("TLS to the control plane needs identity on (its trust anchors)".into());
    }
    if identity.is_none() && identity_on {
        return refuse(format!(
            "required when identity is on and {} is set: the control plane must prove its identity over TLS",
            addr_setting.name
        ));
    }
    Ok(Some(ControlAddr { addr, identity }))
}

fn identity_config<F: Fn(&str) -> Option<String>>(
    r: &Reader<F>,
) -> Result<Option<CertifyConfig>, ConfigError> {
    let Some(svc_addr) = r.optional(&IDENTITY_SVC_ADDR, |v| Ok(v.to_string()))? else {
        return Ok(None);
    };
    let required = |s: &Setting| {
        let (var, value) = r.raw(s);
        if value.trim().is_empty() {
            Err(ConfigError {
                var,
                value,
                reason: format!("required when {} is set", IDENTITY_SVC_ADDR.name),
            })
        } else {
            Ok(())
        }
    };
    required(&IDENTITY_SVC_NAME)?;
    required(&IDENTITY_LOCAL_NAME)?;
    required(&IDENTITY_TOKEN_FILE)?;
    required(&IDENTITY_TRUST_ANCHORS)?;
    Ok(Some(CertifyConfig {
        svc: ControlAddr {
            addr: svc_addr,
            identity: Some(r.parse(&IDENTITY_SVC_NAME, parse_identity)?),
        },
        local_name: r.parse(&IDENTITY_LOCAL_NAME, parse_identity)?,
        token_file: r.parse(&IDENTITY_TOKEN_FILE, |v| Ok(v.trim().into()))?,
        trust_anchors: r.parse(&IDENTITY_TRUST_ANCHORS, |v| {
            weft_identity::verify::TrustAnchors::from_pem(v).map_err(|e| e.to_string())
        })?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `weft up` and the injector write `ProxySpec::env()`: every name in it
    /// must be one of this proxy's settings, and the whole of it must load.
    #[test]
    fn the_spec_the_control_plane_writes_uses_these_settings() {
        let env = weft_api::proxy::ProxySpec::example().env();
        for (name, _) in &env {
            assert!(
                SETTINGS.iter().any(|s| s.name == name),
                "{name} is not a weft-proxy setting"
            );
        }
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        match config(&vars) {
            Ok(_) => {}
            // The example's trust anchors are not PEM; everything before them loaded.
            Err(e) => assert_eq!(e.var, IDENTITY_TRUST_ANCHORS.name, "{e}"),
        }
    }

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_linkerds_ports() {
        let c = config(&[]).expect("defaults parse");
        assert_eq!(c.outbound_addr.port(), 4140);
        assert_eq!(c.inbound_addr.port(), 4143);
        assert_eq!(c.admin_addr.port(), 4191);
        assert!(c.inbound_opaque_ports.contains(3306));
        assert!(!c.inbound_opaque_ports.contains(80));
        assert_eq!(c.response_timeout, None);
        assert_eq!(c.worker_threads, 1);
    }

    #[test]
    fn linkerd_aliases_are_honoured_and_weft_names_win() {
        let c = config(&[("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:5143")]).unwrap();
        assert_eq!(c.inbound_addr, "127.0.0.1:5143".parse().unwrap());
        let c = config(&[
            ("LINKERD2_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:5143"),
            ("WEFT_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:6143"),
        ])
        .unwrap();
        assert_eq!(c.inbound_addr.port(), 6143);
    }

    #[test]
    fn errors_name_the_variable_that_was_set() {
        let err = config(&[("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT", "soon")]).unwrap_err();
        assert_eq!(err.var, "LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT");
        let msg = err.to_string();
        assert!(
            msg.contains("LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT=\"soon\""),
            "{msg}"
        );

        let err = config(&[("WEFT_PROXY_OUTBOUND_OPAQUE_PORTS", "25,70000")]).unwrap_err();
        assert!(err.to_string().contains("70000"), "{err}");
        let err = config(&[("WEFT_PROXY_ADMIN_LISTEN_ADDR", "localhost")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_ADMIN_LISTEN_ADDR");
        let err = config(&[("WEFT_PROXY_WORKER_THREADS", "0")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_WORKER_THREADS");
    }

    #[test]
    fn outbound_identities_take_an_optional_proxy_port() {
        let c = config(&[(
            "WEFT_PROXY_OUTBOUND_IDENTITIES",
            "198.18.0.2:8080=web.demo.serviceaccount.identity.weft.cluster.local, 198.18.0.3:5432=db.demo.serviceaccount.identity.weft.cluster.local@4143",
        )])
        .unwrap();
        let web = &c.outbound_identities[&"198.18.0.2:8080".parse().unwrap()];
        assert_eq!(web.opaque_transport_port, None);
        let db = &c.outbound_identities[&"198.18.0.3:5432".parse().unwrap()];
        assert_eq!(
            db.identity.as_str(),
            "db.demo.serviceaccount.identity.weft.cluster.local"
        );
        assert_eq!(db.opaque_transport_port, Some(4143));
        for (bad, why) in [
            ("198.18.0.2:8080", "is not ADDR=IDENTITY[@PORT]"),
            ("198.18.0.2:8080=web.demo", "is not of the form"),
            (
                "198.18.0.2:8080=web.demo.serviceaccount.identity.weft.cluster.local@0",
                "is not a port",
            ),
            (
                "198.18.0.2:8080=web.demo.serviceaccount.identity.weft.cluster.local@http",
                "is not a port",
            ),
            ("web:8080=web.demo", "IP:port"),
        ] {
            let err = config(&[("WEFT_PROXY_OUTBOUND_IDENTITIES", bad)]).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
    }

    const IDENTITY_SERVICE: &str = "identity.weft.serviceaccount.identity.weft.cluster.local";

    #[test]
    fn tls_to_the_destination_service_needs_identity() {
        let plain = config(&[("WEFT_PROXY_DESTINATION_SVC_ADDR", "127.0.0.1:8086")]).unwrap();
        assert!(plain.destination.unwrap().identity.is_none());
        let err = config(&[
            ("WEFT_PROXY_DESTINATION_SVC_ADDR", "127.0.0.1:8086"),
            (
                "LINKERD2_PROXY_DESTINATION_SVC_NAME",
                "destination.weft.serviceaccount.identity.weft.cluster.local",
            ),
        ])
        .unwrap_err();
        assert_eq!(err.var, "LINKERD2_PROXY_DESTINATION_SVC_NAME");
        assert!(err.to_string().contains("needs identity on"), "{err}");
    }

    #[test]
    fn networks_parse_and_contain() {
        let net = Cidr::parse("198.18.0.0/15").unwrap();
        assert!(net.contains("198.19.255.1".parse().unwrap()));
        assert!(net.contains("::ffff:198.18.0.7".parse().unwrap()));
        assert!(!net.contains("198.20.0.1".parse().unwrap()));
        assert!(
            Cidr::parse("0.0.0.0/0")
                .unwrap()
                .contains("127.0.0.1".parse().unwrap())
        );
        assert!(
            Cidr::parse("fd00::/8")
                .unwrap()
                .contains("fd12::1".parse().unwrap())
        );
        for bad in ["198.18.0.0", "198.18.0.0/33", "x/8"] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
        let err = config(&[("WEFT_PROXY_INBOUND_REQUIRE_IDENTITY_PORTS", "8080")]).unwrap_err();
        assert!(err.to_string().contains("needs identity on"), "{err}");
    }

    #[test]
    fn identity_needs_all_its_settings() {
        assert!(config(&[]).unwrap().identity.is_none());
        let err = config(&[("LINKERD2_PROXY_IDENTITY_SVC_ADDR", "127.0.0.1:8080")]).unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_IDENTITY_SVC_NAME");
        assert!(
            err.to_string()
                .contains("required when WEFT_PROXY_IDENTITY_SVC_ADDR is set")
        );
        let err = config(&[
            ("WEFT_PROXY_IDENTITY_SVC_ADDR", "127.0.0.1:8080"),
            ("WEFT_PROXY_IDENTITY_SVC_NAME", IDENTITY_SERVICE),
        ])
        .unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_IDENTITY_LOCAL_NAME");
        let err = config(&[
            ("WEFT_PROXY_IDENTITY_SVC_ADDR", "127.0.0.1:8080"),
            ("WEFT_PROXY_IDENTITY_SVC_NAME", IDENTITY_SERVICE),
            ("WEFT_PROXY_IDENTITY_LOCAL_NAME", "web"),
            ("WEFT_PROXY_IDENTITY_TOKEN_FILE", "/t"),
            ("WEFT_PROXY_IDENTITY_TRUST_ANCHORS", "not pem"),
        ])
        .unwrap_err();
        assert_eq!(err.var, "WEFT_PROXY_IDENTITY_LOCAL_NAME");
    }

    #[test]
    fn durations_and_port_sets_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration("").is_err());
        let p = PortSet::parse("25, 8000-8010").unwrap();
        assert!(p.contains(25) && p.contains(8005) && !p.contains(8011));
        assert!(PortSet::parse("10-5").is_err());
        assert_eq!(PortSet::parse("").unwrap(), PortSet::default());
    }

    /// The documentation lists every setting with its aliases and default.
    #[test]
    fn docs_list_every_setting() {
        let doc = include_str!("../../../docs/proxy-config.md");
        for s in SETTINGS {
            let row = doc
                .lines()
                .find(|l| l.contains(&format!("`{}`", s.name)))
                .unwrap_or_else(|| panic!("docs/proxy-config.md lacks {}", s.name));
            for alias in s.aliases {
                assert!(
                    row.contains(alias),
                    "row for {} lacks alias {alias}",
                    s.name
                );
            }
            if !s.default.is_empty() {
                assert!(
                    row.contains(&format!("`{}`", s.default)),
                    "row for {} lacks default",
                    s.name
                );
            }
        }
    }
}
