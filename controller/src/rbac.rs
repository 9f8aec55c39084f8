//! What RBAC the API server asks for a request: the verb, API group and
//! resource it derives from the method and path (as the request-info
//! resolver of k8s.io/apiserver/pkg/endpoints/request does), and whether a
//! ClusterRole's rules allow it. Pure; the tests hold every request the
//! controller makes against the bundle's rules with it.

use serde_json::Value;

/// The attributes RBAC checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// API group (`""` for the core group).
    pub group: String,
    /// Resource, with `/subresource` when there is one.
    pub resource: String,
    /// A discovery request (`/api`, `/apis`, `/apis/<group>[/<version>]`,
    /// `/version`, `/openapi/...`): a non-resource URL every authenticated
    /// identity may read through the default `system:discovery` and
    /// `system:public-info-viewer` ClusterRoles.
    pub discovery: bool,
}

/// The attributes of `method` on `target` (a path, with or without its
/// query string).
pub fn attributes(method: &str, target: &str) -> Attributes {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let seg: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let discovery = match seg.first() {
        Some(&"api") => seg.len() <= 2,
        Some(&"apis") => seg.len() <= 3,
        Some(&"version") | Some(&"openapi") => true,
        _ => false,
    };
    let (group, mut rest) = match seg.first() {
        Some(&"api") => (String::new(), seg.get(2..).unwrap_or(&[])),
        _ => (
            seg.get(1).copied().unwrap_or_default().to_string(),
            seg.get(3..).unwrap_or(&[]),
        ),
    };
    if rest.first() == Some(&"namespaces") && rest.len() > 2 {
        rest = &rest[2..];
    }
    let resource = match rest {
        [r, _, sub, ..] => format!("{r}/{sub}"),
        [r, ..] => r.to_string(),
        [] => String::new(),
    };
    let named = rest.len() > 1;
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match method {
        "GET" if watch => "watch",
        "GET" if named => "get",
        "GET" => "list",
        "POST" => "create",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" if named => "delete",
        "DELETE" => "deletecollection",
        other => other,
    };
    Attributes {
        verb: verb.to_string(),
        group,
        resource,
        discovery,
    }
}

/// Whether `rules` (a ClusterRole's `rules`) allow `a`.
pub fn allows(rules: &Value, a: &Attributes) -> bool {
    if a.discovery {
        return a.verb == "get" || a.verb == "list";
    }
    rules.as_array().into_iter().flatten().any(|r| {
        let has = |k: &str, v: &str| {
            r[k].as_array()
                .into_iter()
                .flatten()
                .any(|x| x == v || x == "*")
        };
        has("apiGroups", &a.group) && has("resources", &a.resource) && has("verbs", &a.verb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_map_to_what_rbac_checks() {
        let a = |m, t| {
            let x = attributes(m, t);
            (x.verb, x.group, x.resource)
        };
        let s = |v: &str, g: &str, r: &str| (v.to_string(), g.to_string(), r.to_string());
        assert_eq!(
            a("GET", "/api/v1/nodes?watch=true&resourceVersion=1"),
            s("watch", "", "nodes")
        );
        assert_eq!(a("GET", "/api/v1/nodes"), s("list", "", "nodes"));
        assert!(attributes("GET", "/apis").discovery);
        assert!(attributes("GET", "/apis/logfleet.dev/v1alpha1").discovery);
        assert!(!attributes("GET", "/apis/apps/v1/daemonsets").discovery);
        assert_eq!(
            a("GET", "/api/v1/namespaces/logfleet"),
            s("get", "", "namespaces")
        );
        assert_eq!(
            a(
                "PATCH",
                "/apis/logfleet.dev/v1alpha1/namespaces/x/logcollectors/l/status"
            ),
            s("patch", "logfleet.dev", "logcollectors/status")
        );
        assert_eq!(
            a(
                "DELETE",
                "/apis/security.openshift.io/v1/securitycontextconstraints/s"
            ),
            s(
                "delete",
                "security.openshift.io",
                "securitycontextconstraints"
            )
        );
        let rules = crate::bundle::controller_rules();
        assert!(allows(
            &rules,
            &attributes("PATCH", "/apis/apps/v1/namespaces/x/daemonsets/d")
        ));
        assert!(!allows(
            &rules,
            &attributes("DELETE", "/apis/apps/v1/namespaces/x/daemonsets/d")
        ));
        // Secrets by name only: it cannot list every Secret of the cluster.
        assert!(allows(
            &rules,
            &attributes("GET", "/api/v1/namespaces/x/secrets/s")
        ));
        assert!(!allows(&rules, &attributes("GET", "/api/v1/secrets")));
        assert!(!allows(
            &rules,
            &attributes("DELETE", "/api/v1/namespaces/x/secrets/s")
        ));
    }
}
