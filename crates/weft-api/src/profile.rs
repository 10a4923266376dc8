//! `ServiceProfile` (linkerd.io/v1alpha2): routes, response classes,
//! timeouts, retries and the retry budget of one service.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::meta::Metadata;

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct ServiceProfile {
    pub metadata: Metadata,
    pub spec: ProfileSpec,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProfileSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opaque_ports: Vec<u16>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub condition: RequestMatchSpec,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_classes: Vec<ResponseClassSpec>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_retryable: bool,
    #[serde(
        default,
        with = "humantime_serde_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<RequestMatchSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<RequestMatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<RequestMatchSpec>>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseClassSpec {
    pub condition: ResponseMatchSpec,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_failure: bool,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResponseMatchSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusRange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub all: Vec<ResponseMatchSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub any: Vec<ResponseMatchSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<ResponseMatchSpec>>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StatusRange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u16>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    pub retry_ratio: f32,
    pub min_retries_per_second: u32,
    #[serde(with = "humantime_serde_opt")]
    pub ttl: Option<Duration>,
}

/// Durations written the Kubernetes way: `300ms`, `10s`, `1m30s`.
mod humantime_serde_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        humantime::parse_duration(&text)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{text:?} is not a duration: {e}")))
    }
}

pub(crate) fn check_profile(p: &ServiceProfile) -> Result<(), String> {
    let name = &p.metadata.name;
    let service = name.split('.').next().unwrap_or_default();
    if !name.contains(".svc.") || service.is_empty() {
        return Err(format!(
            "the name must be the service's FQDN, e.g. web.{}.svc.cluster.local, not {name:?}",
            p.metadata.namespace
        ));
    }
    for route in &p.spec.routes {
        check_request_match(&route.condition)
            .map_err(|e| format!("route {:?}: {e}", route.name))?;
    }
    if let Some(b) = &p.spec.retry_budget
        && !(0.0..=1000.0).contains(&b.retry_ratio)
    {
        return Err(format!(
            "retryBudget.retryRatio {} is outside 0..1000",
            b.retry_ratio
        ));
    }
    Ok(())
}

fn check_request_match(m: &RequestMatchSpec) -> Result<(), String> {
    if let Some(re) = &m.path_regex {
        regex::Regex::new(&format!("^(?:{re})$"))
            .map_err(|e| format!("pathRegex {re:?} does not compile: {e}"))?;
    }
    if let Some(method) = &m.method {
        http_method(method).ok_or(format!("method {method:?} is not an HTTP method"))?;
    }
    for inner in m.all.iter().chain(&m.any).chain(m.not.as_deref()) {
        check_request_match(inner)?;
    }
    Ok(())
}

/// Known HTTP methods, as the proxy API spells them.
pub fn http_method(method: &str) -> Option<http::Method> {
    match method {
        "GET" | "POST" | "PUT" | "DELETE" | "PATCH" | "HEAD" | "OPTIONS" | "CONNECT" | "TRACE" => {
            http::Method::from_bytes(method.as_bytes()).ok()
        }
        _ => None,
    }
}
