//! Service profiles as the proxy uses them: routes matched per request, with
//! their timeout, retryability and response classification, and the retry
//! budget. Built once per `GetProfile` update from the proto, so matching a
//! request is a walk over compiled conditions.

use std::time::Duration;

pub use crate::http::retry::RetryBudget;
use linkerd2_proxy_api::destination as api;
use tracing::warn;

/// A profile's routes and budget.
#[derive(Debug)]
pub struct Profile {
    /// The service's name, e.g. `web.demo.svc.cluster.local` (empty if none).
    pub name: String,
    pub opaque: bool,
    pub routes: Vec<Route>,
    pub budget: std::sync::Arc<RetryBudget>,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    /// Resolved on first use (the proxy's registry is not known here).
    pub metrics: std::sync::OnceLock<crate::metrics::RouteMetrics>,
    condition: RequestMatch,
    classes: Vec<ResponseClass>,
    pub retryable: bool,
    pub timeout: Option<Duration>,
}

#[derive(Debug)]
enum RequestMatch {
    All(Vec<RequestMatch>),
    Any(Vec<RequestMatch>),
    Not(Box<RequestMatch>),
    Path(regex_lite::Regex),
    Method(http::Method),
}

#[derive(Debug)]
struct ResponseClass {
    condition: ResponseMatch,
    failure: bool,
}

#[derive(Debug)]
enum ResponseMatch {
    All(Vec<ResponseMatch>),
    Any(Vec<ResponseMatch>),
    Not(Box<ResponseMatch>),
    Status { min: u16, max: u16 },
}

impl Profile {
    /// The profile from a `GetProfile` message; `budget` is reused when its
    /// parameters did not change. Routes that cannot be compiled are skipped
    /// with a warning.
    pub fn from_proto(
        p: api::DestinationProfile,
        previous: Option<std::sync::Arc<RetryBudget>>,
    ) -> Profile {
        let params = p.retry_budget.as_ref().map(|b| {
            (
                b.retry_ratio,
                b.min_retries_per_second,
                b.ttl
                    .and_then(|t| Duration::try_from(t).ok())
                    .unwrap_or(Duration::from_secs(10)),
            )
        });
        let budget = match (params, previous) {
            (Some(params), Some(prev)) if prev.params == params => prev,
            (Some((ratio, min, ttl)), _) => std::sync::Arc::new(RetryBudget::new(ratio, min, ttl)),
            (None, Some(prev)) => prev,
            (None, None) => std::sync::Arc::new(RetryBudget::default()),
        };
        let routes = p
            .routes
            .into_iter()
            .filter_map(|r| {
                let name = r.metrics_labels.get("route").cloned().unwrap_or_default();
                let condition = match r.condition.as_ref().map(request_match) {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        warn!(route = %name, error = %e, "profile route skipped");
                        return None;
                    }
                    None => RequestMatch::All(Vec::new()),
                };
                Some(Route {
                    name,
                    metrics: std::sync::OnceLock::new(),
                    condition,
                    classes: r
                        .response_classes
                        .iter()
                        .filter_map(|c| {
                            Some(ResponseClass {
                                condition: response_match(c.condition.as_ref()?),
                                failure: c.is_failure,
                            })
                        })
                        .collect(),
                    retryable: r.is_retryable,
                    timeout: r
                        .timeout
                        .and_then(|t| Duration::try_from(t).ok())
                        .filter(|t| !t.is_zero()),
                })
            })
            .collect();
        Profile {
            name: p.fully_qualified_name,
            opaque: p.opaque_protocol,
            routes,
            budget,
        }
    }

    /// The first route matching the request.
    pub fn route(&self, method: &http::Method, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.condition.matches(method, path))
    }
}

impl Route {
    /// Whether a response with `status` is a failure by the first matching
    /// response class; `None` when no class matches (then `grpc-status`,
    /// else a 5xx, decides).
    pub fn classify(&self, status: u16) -> Option<bool> {
        self.classes
            .iter()
            .find(|c| c.condition.matches(status))
            .map(|c| c.failure)
    }
}

impl RequestMatch {
    fn matches(&self, method: &http::Method, path: &str) -> bool {
        match self {
            RequestMatch::All(all) => all.iter().all(|m| m.matches(method, path)),
            RequestMatch::Any(any) => any.iter().any(|m| m.matches(method, path)),
            RequestMatch::Not(m) => !m.matches(method, path),
            RequestMatch::Path(re) => re.is_match(path),
            RequestMatch::Method(m) => m == method,
        }
    }
}

impl ResponseMatch {
    fn matches(&self, status: u16) -> bool {
        match self {
            ResponseMatch::All(all) => all.iter().all(|m| m.matches(status)),
            ResponseMatch::Any(any) => any.iter().any(|m| m.matches(status)),
            ResponseMatch::Not(m) => !m.matches(status),
            ResponseMatch::Status { min, max } => *min <= status && status <= *max,
        }
    }
}

fn request_match(m: &api::RequestMatch) -> Result<RequestMatch, String> {
    use api::request_match::Match;
    let seq = |s: &api::request_match::Seq| -> Result<Vec<RequestMatch>, String> {
        s.matches.iter().map(request_match).collect()
    };
    Ok(match &m.r#match {
        Some(Match::All(s)) => RequestMatch::All(seq(s)?),
        Some(Match::Any(s)) => RequestMatch::Any(seq(s)?),
        Some(Match::Not(inner)) => RequestMatch::Not(Box::new(request_match(inner)?)),
        Some(Match::Path(p)) => RequestMatch::Path(
            // Linkerd matches the whole path.
            regex_lite::Regex::new(&format!("^(?:{})$", p.regex))
                .map_err(|e| format!("path regex {:?}: {e}", p.regex))?,
        ),
        Some(Match::Method(m)) => RequestMatch::Method(
            http::Method::try_from(m.clone()).map_err(|e| format!("method: {e}"))?,
        ),
        None => RequestMatch::All(Vec::new()),
    })
}

fn response_match(m: &api::ResponseMatch) -> ResponseMatch {
    use api::response_match::Match;
    let seq = |s: &api::response_match::Seq| s.matches.iter().map(response_match).collect();
    match &m.r#match {
        Some(Match::All(s)) => ResponseMatch::All(seq(s)),
        Some(Match::Any(s)) => ResponseMatch::Any(seq(s)),
        Some(Match::Not(inner)) => ResponseMatch::Not(Box::new(response_match(inner))),
        // An unset bound means the range is the single other value.
        Some(Match::Status(r)) => {
            let (min, max) = match (r.min, r.max) {
                (0, 0) => (0, u32::from(u16::MAX)),
                (0, v) | (v, 0) => (v, v),
                (min, max) => (min, max),
            };
            ResponseMatch::Status {
                min: u16::try_from(min).unwrap_or(u16::MAX),
                max: u16::try_from(max).unwrap_or(u16::MAX),
            }
        }
        None => ResponseMatch::All(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        use api::request_match::{Match, Seq};
        let route = |name: &str, matches: Vec<Match>, retryable, classes| api::Route {
            condition: Some(api::RequestMatch {
                r#match: Some(Match::All(Seq {
                    matches: matches
                        .into_iter()
                        .map(|m| api::RequestMatch { r#match: Some(m) })
                        .collect(),
                })),
            }),
            response_classes: classes,
            metrics_labels: [("route".to_string(), name.to_string())].into(),
            is_retryable: retryable,
            timeout: prost_types::Duration::try_from(Duration::from_millis(250)).ok(),
        };
        let failure_on_429 = vec![api::ResponseClass {
            condition: Some(api::ResponseMatch {
                r#match: Some(api::response_match::Match::Status(api::HttpStatusRange {
                    min: 429,
                    max: 0,
                })),
            }),
            is_failure: true,
        }];
        Profile::from_proto(
            api::DestinationProfile {
                fully_qualified_name: "web.demo.svc.cluster.local".into(),
                routes: vec![
                    route(
                        "get-api",
                        vec![
                            Match::Method(http::Method::GET.into()),
                            Match::Path(api::PathMatch {
                                regex: "/api/.*".into(),
                            }),
                        ],
                        true,
                        failure_on_429,
                    ),
                    route(
                        "bad",
                        vec![Match::Path(api::PathMatch { regex: "(".into() })],
                        false,
                        vec![],
                    ),
                    route(
                        "any-post",
                        vec![Match::Method(http::Method::POST.into())],
                        false,
                        vec![],
                    ),
                ],
                ..Default::default()
            },
            None,
        )
    }

    #[test]
    fn routes_match_whole_paths_and_methods_in_order() {
        let p = profile();
        assert_eq!(p.routes.len(), 2, "the route with a bad regex is skipped");
        let get = http::Method::GET;
        assert_eq!(p.route(&get, "/api/users").unwrap().name, "get-api");
        assert!(p.route(&get, "/v2/api/users").is_none(), "anchored");
        assert_eq!(
            p.route(&http::Method::POST, "/api/users").unwrap().name,
            "any-post"
        );
        let r = p.route(&get, "/api/x").unwrap();
        assert!(r.retryable);
        assert_eq!(r.timeout, Some(Duration::from_millis(250)));
        assert_eq!(r.classify(429), Some(true));
        assert_eq!(
            r.classify(503),
            None,
            "no class matched: the status decides"
        );
        assert_eq!(r.classify(404), None);
        let post = p.route(&http::Method::POST, "/").unwrap();
        assert_eq!((post.classify(503), post.classify(404)), (None, None));
    }

    #[test]
    fn budgets_survive_unchanged_profiles_and_bad_values_are_clamped() {
        let b = RetryBudget::new(f32::NAN, u32::MAX, Duration::from_secs(3600));
        assert_eq!(b.params.2, Duration::from_secs(60));
        let b = RetryBudget::new(0.0, 2, Duration::from_secs(1));
        // min_per_sec allows a couple of retries with no deposits at all.
        assert!(b.withdraw());
        let p = Profile::from_proto(
            api::DestinationProfile::default(),
            Some(std::sync::Arc::new(b)),
        );
        assert_eq!(
            p.budget.params.1, 2,
            "no budget in the update: the old one stays"
        );
    }
}
