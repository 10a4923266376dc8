//! Reading manifests: multi-document YAML where every problem names the
//! file, the line (counted as YAML counts lines) and what is wrong; one
//! broken document does not hide the others. Size and nesting are bounded
//! before the YAML parser sees a document.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::meta::Key;
use crate::{KINDS, Manifests, Resource};

/// `r` as a manifest document, with its `apiVersion` and `kind`.
pub fn to_manifest<T: Resource>(r: &T) -> Result<String, serde_yaml_ng::Error> {
    let mut value = serde_yaml_ng::to_value(r)?;
    if let Some(map) = value.as_mapping_mut() {
        let api_version = T::API_VERSIONS.first().copied().unwrap_or("v1");
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), T::KIND.into());
    }
    serde_yaml_ng::to_string(&value)
}

/// One resource read from a manifest, with where it was found.
#[derive(Clone, Debug, PartialEq)]
pub struct Located<T> {
    /// Shared, so that every snapshot built from the same file reuses it.
    pub resource: std::sync::Arc<T>,
    pub file: std::path::PathBuf,
    pub line: usize,
}

/// What is wrong with a manifest, and where.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {reason}")]
pub struct ManifestError {
    pub file: String,
    pub line: usize,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

/// The lines of `text` as YAML (libyaml) counts them: a line ends at `\n`,
/// `\r\n`, a lone `\r`, NEL (U+0085), LS (U+2028) or PS (U+2029), so line
/// numbers agree with the parser's.
pub fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    const BREAKS: [char; 5] = ['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.char_indices().find(|(_, c)| BREAKS.contains(c)) {
            Some((i, c)) => {
                let skip = if current[i..].starts_with("\r\n") {
                    2
                } else {
                    c.len_utf8()
                };
                rest = Some(&current[i + skip..]).filter(|r| !r.is_empty());
                Some(&current[..i])
            }
            None => {
                rest = None;
                Some(current).filter(|c| !c.is_empty())
            }
        }
    })
}

/// Splits YAML text into documents at `---` lines, with each document's
/// first line number (1-based), so errors point into the file.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = vec![(1, String::new())];
    for (i, line) in yaml_lines(text).enumerate() {
        let is_separator = line.starts_with("---")
            && line[3..]
                .chars()
                .next()
                .is_none_or(|c| c.is_whitespace() || c == '#');
        if is_separator {
            docs.push((i + 2, String::new()));
        } else if let Some((_, doc)) = docs.last_mut() {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.retain(|(_, doc)| {
        doc.lines()
            .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
    });
    docs
}

/// The largest manifest file read; a larger one is reported, not parsed.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The deepest bracket nesting (`[`, `{`) a document may have. No manifest
/// needs more, and deep nesting makes YAML parsers slow. Brackets count
/// wherever they are, in quotes and comments too: a scan that tracked quotes
/// could be fooled into not counting.
const MAX_NESTING: usize = 64;

/// The line (0-based in the document) where bracket nesting first goes
/// deeper than [`MAX_NESTING`].
fn too_deep(doc: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 0usize);
    for b in doc.bytes() {
        match b {
            b'\n' => line += 1,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Some(line);
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Parses one manifest file's text: every resource it holds and every problem.
pub fn parse_manifests(file: &Path, text: &str) -> (Manifests, Vec<ManifestError>) {
    let mut out = Manifests::default();
    let mut errors = Vec::new();
    let name = file.display().to_string();
    for (start, doc) in documents(text) {
        let error = |line: usize, reason: String| ManifestError {
            file: name.clone(),
            line,
            reason,
        };
        if let Some(line) = too_deep(&doc) {
            errors.push(error(
                start + line,
                format!("brackets nested deeper than {MAX_NESTING} levels"),
            ));
            continue;
        }
        let at = |e: &serde_yaml_ng::Error| start + e.location().map_or(0, |l| l.line() - 1);
        let header: Header = match serde_yaml_ng::from_str(&doc) {
            Ok(h) => h,
            Err(e) => {
                errors.push(error(
                    at(&e),
                    format!("not a YAML mapping: {}", strip_location(&e)),
                ));
                continue;
            }
        };
        let (Some(kind), Some(api_version)) = (header.kind, header.api_version) else {
            errors.push(error(start, "a resource needs apiVersion and kind".into()));
            continue;
        };
        let Some((_, versions)) = KINDS.iter().find(|(k, _)| *k == kind) else {
            let known: Vec<_> = KINDS.iter().map(|(k, _)| *k).collect();
            errors.push(error(
                start,
                format!("unknown kind {kind:?} (known: {})", known.join(", ")),
            ));
            continue;
        };
        if !versions.contains(&api_version.as_str()) {
            errors.push(error(
                start,
                format!(
                    "{kind} has apiVersion {}, not {api_version:?}",
                    versions.join(" or ")
                ),
            ));
            continue;
        }
        // The kind was found in KINDS, so `read` knows it.
        let Some(result) = out.read(&kind, &doc, file, start) else {
            continue;
        };
        if let Err(e) = result {
            errors.push(error(
                at(&e),
                format!("invalid {kind}: {}", strip_location(&e)),
            ));
        }
    }
    let checked = out.checked(&mut errors);
    (checked, errors)
}

/// Parses one document as a `T` into `into`.
pub(crate) fn read_into<T: Resource>(
    doc: &str,
    file: &Path,
    line: usize,
    into: &mut Vec<Located<T>>,
) -> Result<(), serde_yaml_ng::Error> {
    let resource = Arc::new(serde_yaml_ng::from_str::<T>(doc)?);
    into.push(Located {
        resource,
        file: file.to_path_buf(),
        line,
    });
    Ok(())
}

/// serde_yaml_ng says "at line N column M" relative to the document, once or
/// more ("..., while parsing a flow mapping at line 3 column 5"); the error
/// carries the line relative to the file instead, so those are dropped.
fn strip_location(e: &serde_yaml_ng::Error) -> String {
    let mut text = e.to_string();
    while let Some(start) = text.find(" at line ") {
        let tail = &text[start + " at line ".len()..];
        let digits = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let line_len = digits(tail);
        let Some(after) = tail[line_len..].strip_prefix(" column ") else {
            break;
        };
        let end = start + " at line ".len() + line_len + " column ".len() + digits(after);
        text.replace_range(start..end, "");
    }
    text
}

/// The resources that pass [`Resource::check`] (names, selectors, regexes,
/// budgets: what types alone cannot check); each that fails is an error.
pub(crate) fn checked<T: Resource>(
    items: Vec<Located<T>>,
    errors: &mut Vec<ManifestError>,
) -> Vec<Located<T>> {
    items
        .into_iter()
        .filter(|item| match item.resource.check() {
            Ok(()) => true,
            Err(reason) => {
                errors.push(ManifestError {
                    file: item.file.display().to_string(),
                    line: item.line,
                    reason: format!("{} {}: {reason}", T::KIND, item.resource.metadata().key()),
                });
                false
            }
        })
        .collect()
}

/// (kind, key) → the file whose definition is served.
pub type Origins = HashMap<(&'static str, Key), PathBuf>;

/// Resources by key; `keep` says whether a definition is the one kept (the
/// first of its kind and key; later ones are reported by the caller).
/// Definitions from the file that served a key before come first, so a
/// duplicate added elsewhere never takes over.
pub(crate) fn first_of_each<T: Resource>(
    mut items: Vec<Located<T>>,
    served: &Origins,
    keep: &mut impl FnMut(&'static str, Key, &Path, usize) -> bool,
) -> BTreeMap<Key, Arc<T>> {
    // A stable sort keeps file order among the rest.
    items.sort_by_key(|item| {
        let key = (T::KIND, item.resource.metadata().key());
        served.get(&key) != Some(&item.file)
    });
    items
        .into_iter()
        .filter_map(
            |Located {
                 resource,
                 file,
                 line,
             }| {
                let key = resource.metadata().key();
                keep(T::KIND, key.clone(), &file, line).then_some((key, resource))
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use std::time::Duration;

    const GOOD: &str = r#"# the web service
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: demo
  annotations:
    config.linkerd.io/opaque-ports: "5432"
spec:
  clusterIP: 198.18.100.1
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http}
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata: {name: web-0, namespace: demo, labels: {app: web}}
spec:
  meshTLS: {identity: web.demo.serviceaccount.identity.weft.cluster.local}
  ports: [{name: http, port: 8080}]
  workloadIPs: [{ip: 198.18.1.2}]
status:
  conditions: [{type: Ready, status: "False"}]
---
apiVersion: linkerd.io/v1alpha2
kind: ServiceProfile
metadata: {name: web.demo.svc.cluster.local, namespace: demo}
spec:
  routes:
  - name: GET /api
    condition: {method: GET, pathRegex: "/api/.*"}
    isRetryable: true
    timeout: 300ms
    responseClasses:
    - condition: {status: {min: 500, max: 599}}
      isFailure: true
  retryBudget: {retryRatio: 0.2, minRetriesPerSecond: 10, ttl: 10s}
"#;

    #[test]
    fn reads_every_kind_with_its_line() {
        let (m, errors) = parse_manifests(Path::new("demo.yaml"), GOOD);
        assert_eq!(errors, vec![]);
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.services[0].line, 1);
        let svc = &m.services[0].resource;
        assert_eq!(svc.spec.cluster_ip, Some("198.18.100.1".parse().unwrap()));
        assert_eq!(
            svc.spec.ports[0].target_port,
            Some(PortRef::Name("http".into()))
        );
        assert_eq!(opaque_ports(&svc.metadata).unwrap(), vec![(5432, 5432)]);
        assert_eq!(m.workloads[0].line, 15);
        assert!(!m.workloads[0].resource.is_ready());
        assert_eq!(m.workloads[0].resource.proxy_inbound_port(), 4143);
        let route = &m.profiles[0].resource.spec.routes[0];
        assert_eq!(route.timeout, Some(Duration::from_millis(300)));
        assert!(route.is_retryable);
    }

    #[test]
    fn line_numbers_count_line_ends_as_yaml_does() {
        // Found by the manifests fuzz target: a lone CR ends a line for the
        // YAML parser, so it must for the document split too.
        let text = "apiVersion: v1\rkind: Service\r\nmetadata: {name: web}\n---\rapiVersion: v1\nkind: Service\nmetadata: {name: [}\n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("m.yaml:1: "), "{errors:?}");
        assert!(
            errors[1].starts_with("m.yaml:7: not a YAML mapping: "),
            "{errors:?}"
        );
        // Locations inside the document are gone: the prefix is the file's.
        assert!(!errors[1].contains(" at line "), "{errors:?}");
        assert_eq!(
            yaml_lines("a\rb\r\nc\n").collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
        assert_eq!(yaml_lines("").count(), 0);
        assert_eq!(yaml_lines("\n\n").count(), 2);
    }

    fn errors_of(text: &str) -> Vec<String> {
        parse_manifests(Path::new("m.yaml"), text)
            .1
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn problems_name_file_line_and_reason() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n  - port: http\n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("m.yaml:6: invalid Service"),
            "{errors:?}"
        );

        let errors = errors_of(&format!("{GOOD}---\nkind: Gateway\napiVersion: v1\n"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("m.yaml:39: unknown kind \"Gateway\""),
            "{errors:?}"
        );

        for (text, want) in [
            ("a: [b\n", "m.yaml:"),
            ("kind: Service\n", "needs apiVersion and kind"),
            (
                "apiVersion: v2\nkind: Service\nmetadata: {name: a}\nspec: {}\n",
                "has apiVersion v1",
            ),
            (
                "apiVersion: v1\nkind: Service\nmetadata: {name: Web}\nspec: {}\n",
                "is not a DNS label",
            ),
            (
                "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: a}\nspec: {workloadIPs: [], portz: []}\n",
                "unknown field `portz`",
            ),
            (
                "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: a}\nspec: {workloadIPs: [{ip: 198.18.0.1}], meshTLS: {identity: nope}}\n",
                "spec.meshTLS.identity",
            ),
            (
                "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.demo.svc.cluster.local}\nspec:\n  routes:\n  - name: bad\n    condition: {pathRegex: \"(\"}\n",
                "does not compile",
            ),
            (
                "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web}\nspec: {}\n",
                "must be the service's FQDN",
            ),
            (
                "apiVersion: linkerd.io/v1alpha2\nkind: ServiceProfile\nmetadata: {name: web.demo.svc.cluster.local}\nspec:\n  routes:\n  - name: t\n    condition: {method: GET}\n    timeout: soon\n",
                "is not a duration",
            ),
            (
                "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: destination, namespace: weft}\nspec:\n  selector: {matchLabels: {app: d}}\n  template:\n    metadata: {labels: {app: d}}\n    spec:\n      serviceAccountName: destination\n      containers: [{name: d, command: [sleep]}]\n",
                "namespace weft is reserved for the control plane",
            ),
        ] {
            let errors = errors_of(text);
            assert!(
                errors.len() == 1 && errors[0].contains(want),
                "{text}: {errors:?}"
            );
        }
    }

    const DEPLOYMENT: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: emoji, namespace: demo}
spec:
  replicas: 2
  selector: {matchLabels: {app: emoji-svc}}
  template:
    metadata: {labels: {app: emoji-svc, version: v1}}
    spec:
      serviceAccountName: emoji
      terminationGracePeriodSeconds: 5
      containers:
      - name: emoji
        image: example/emoji:v1
        command: [weft-demo, emoji]
        env: [{name: LISTEN, value: "0.0.0.0:8080"}]
        ports: [{name: grpc, containerPort: 8080}]
"#;

    #[test]
    fn deployments_read_the_part_the_local_mesh_runs() {
        let (m, errors) = parse_manifests(Path::new("emoji.yaml"), DEPLOYMENT);
        assert_eq!(errors, vec![]);
        let d = &m.deployments[0].resource;
        assert_eq!(d.spec.replicas, 2);
        let pod = &d.spec.template.spec;
        assert_eq!(pod.service_account_name.as_deref(), Some("emoji"));
        assert_eq!(pod.containers[0].command, ["weft-demo", "emoji"]);
        assert_eq!(pod.containers[0].env[0].value, "0.0.0.0:8080");
        assert_eq!(pod.containers[0].ports[0].container_port, 8080);

        for (from, to, want) in [
            (
                "replicas: 2",
                "replicas: 99",
                "more than the local mesh runs (32)",
            ),
            (
                "matchLabels: {app: emoji-svc}",
                "matchLabels: {app: other}",
                "matchLabels app=other is not among spec.template.metadata.labels",
            ),
            ("command: [weft-demo, emoji]", "args: [x]", "has no command"),
            (
                "serviceAccountName: emoji",
                "serviceAccountName: Emoji",
                "serviceAccountName",
            ),
            ("containerPort: 8080", "containerPort: 0", "containerPort 0"),
            (
                "containerPort: 8080",
                "containerPort: http",
                "invalid Deployment",
            ),
        ] {
            let errors = errors_of(&DEPLOYMENT.replace(from, to));
            assert!(
                errors.len() == 1 && errors[0].contains(want),
                "{to}: {errors:?}"
            );
        }
        let two = DEPLOYMENT.replace(
            "      containers:\n",
            "      containers:\n      - {name: sidecar, command: [x]}\n",
        );
        let errors = errors_of(&two);
        assert!(
            errors[0].contains("one container per pod, not 2"),
            "{errors:?}"
        );
    }

    /// Every kind written back out reads the same: what `weft up` renders
    /// for the destination service is what a user could have written.
    #[test]
    fn resources_round_trip_through_yaml() {
        fn again<T: Resource + Clone>(r: &T, pick: fn(Manifests) -> Vec<Located<T>>) -> T {
            let text = to_manifest(r).unwrap();
            let (m, errors) = parse_manifests(Path::new("rendered.yaml"), &text);
            assert_eq!(errors, vec![], "{text}");
            (*pick(m).remove(0).resource).clone()
        }
        let (m, _) = parse_manifests(Path::new("demo.yaml"), GOOD);
        let svc = &*m.services[0].resource;
        assert_eq!(&again(svc, |m| m.services), svc);
        let w = &*m.workloads[0].resource;
        assert_eq!(&again(w, |m| m.workloads), w);
        let p = &*m.profiles[0].resource;
        assert_eq!(&again(p, |m| m.profiles), p);
        let (d, _) = parse_manifests(Path::new("d.yaml"), DEPLOYMENT);
        let d = &*d.deployments[0].resource;
        assert_eq!(&again(d, |m| m.deployments), d);
    }

    /// The demo mesh's manifests (`weft up examples/emojivoto`) load cleanly.
    #[test]
    fn the_demo_manifests_load_without_problems() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/emojivoto");
        let (mut deployments, mut servers, mut grpc_routes) = (0, 0, 0);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let (m, errors) = parse_manifests(&path, &std::fs::read_to_string(&path).unwrap());
            assert_eq!(errors, vec![], "{}", path.display());
            deployments += m.deployments.len();
            servers += m.servers.len();
            grpc_routes += m.grpc_routes.len();
        }
        assert_eq!((deployments, servers, grpc_routes), (6, 3, 2));
    }

    #[test]
    fn a_broken_document_does_not_hide_the_others() {
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: x}}\nspec: {{ports: [{{port: 0}}]}}\n---\n{GOOD}"
        );
        let (m, errors) = parse_manifests(Path::new("m.yaml"), &text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(m.services.len(), 1);
        assert_eq!(m.workloads.len(), 1);
        assert_eq!(m.profiles.len(), 1);
    }
}
