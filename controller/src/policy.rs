//! What the cluster administrator lets a `LogCollector` ask for, set on the
//! controller, never in the resource: whoever may create a collector would
//! otherwise get root on every node (its image runs as uid 0 with host
//! directories mounted, tolerating every taint). A collector in a namespace
//! not allowed, with an image not allowed, or mounting a host directory
//! outside the log roots and the state directory, is not rolled out: what
//! runs keeps running and the status says `Degraded`/`InvalidSpec` with the
//! reason. Pure.

use crate::crd::LogCollectorSpec;
use crate::validate::Problem;

/// Host directories the agents may mount, whatever a spec says: kubelet's
/// and the runtimes' log directories, and the agents' state directory.
pub const HOST_PATH_PREFIXES: [&str; 4] = [
    "/var/log/",
    "/var/lib/docker/containers",
    "/var/lib/containers/",
    "/var/lib/logfleet-agent",
];

/// The image repository the controller's own releases come from.
pub const OWN_REPOSITORY: &str = "ghcr.io/logfleet/logfleet";

/// The administrator's limits on collectors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Namespaces whose collectors are honoured; `None`: every namespace.
    pub namespaces: Option<Vec<String>>,
    /// Images collectors may run: a repository (any tag or digest of it),
    /// a repository with a tag or digest, or a prefix ending in `/`; empty:
    /// any image.
    pub images: Vec<String>,
}

impl Policy {
    /// The default of a running controller: collectors in its own namespace
    /// only, images of its own repository only.
    pub fn default_for(controller_namespace: &str) -> Self {
        Policy {
            namespaces: Some(vec![controller_namespace.to_owned()]),
            images: vec![OWN_REPOSITORY.to_owned()],
        }
    }

    /// Parses the flags' lists: `*` (or nothing) allows any.
    pub fn from_lists(namespaces: &[String], images: &[String]) -> Self {
        let any = |v: &[String]| v.is_empty() || v.iter().any(|s| s == "*");
        Policy {
            namespaces: (!any(namespaces)).then(|| namespaces.to_vec()),
            images: if any(images) {
                Vec::new()
            } else {
                images.to_vec()
            },
        }
    }

    /// Whether `image` is allowed.
    pub fn image_allowed(&self, image: &str) -> bool {
        self.images.is_empty()
            || self.images.iter().any(|p| {
                image == p
                    || (p.ends_with('/') && image.starts_with(p.as_str()))
                    || image
                        .strip_prefix(p.as_str())
                        .is_some_and(|rest| rest.starts_with(':') || rest.starts_with('@'))
            })
    }

    /// What the policy refuses of a collector in namespace `ns`.
    pub fn check(&self, ns: &str, spec: &LogCollectorSpec) -> Result<(), Vec<Problem>> {
        let mut out = Vec::new();
        if let Some(allowed) = &self.namespaces {
            if !allowed.iter().any(|a| a == ns) {
                out.push(Problem {
                    field: "metadata.namespace".into(),
                    message: format!(
                        "collectors in {ns:?} are not honoured by this controller (allowed: {}; see --collector-namespaces)",
                        allowed.join(", ")
                    ),
                });
            }
        }
        if !self.image_allowed(&spec.image) {
            out.push(Problem {
                field: "spec.image".into(),
                message: format!(
                    "{:?} is not an image this controller runs (allowed: {}; see --allowed-images)",
                    spec.image,
                    self.images.join(", ")
                ),
            });
        }
        let hp = &spec.agent.host_paths;
        for (field, path) in [
            ("podLogs", &hp.pod_logs),
            ("containerLogs", &hp.container_logs),
            ("dockerContainers", &hp.docker_containers),
            ("state", &hp.state),
        ] {
            if !host_path_allowed(path) {
                out.push(Problem {
                    field: format!("spec.agent.hostPaths.{field}"),
                    message: format!(
                        "{path:?} is outside the directories agents may mount ({})",
                        HOST_PATH_PREFIXES.join(", ")
                    ),
                });
            }
        }
        if out.is_empty() {
            Ok(())
        } else {
            Err(out)
        }
    }
}

/// Whether an agent may mount `path`: under one of [`HOST_PATH_PREFIXES`],
/// with no `.`/`..` component that could leave it.
pub fn host_path_allowed(path: &str) -> bool {
    if path.split('/').any(|c| c == ".." || c == ".") {
        return false;
    }
    HOST_PATH_PREFIXES.iter().any(|p| {
        let bare = p.trim_end_matches('/');
        path == bare || path.starts_with(&format!("{bare}/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::LogCollectorSpec;

    #[test]
    fn images_match_by_repository_tag_digest_or_prefix() {
        let p = Policy::from_lists(
            &[],
            &["ghcr.io/logfleet/logfleet".into(), "registry.corp/".into()],
        );
        for ok in [
            "ghcr.io/logfleet/logfleet",
            "ghcr.io/logfleet/logfleet:0.2.0",
            "ghcr.io/logfleet/logfleet@sha256:abc",
            "registry.corp/team/logfleet:1",
        ] {
            assert!(p.image_allowed(ok), "{ok}");
        }
        for no in [
            "ghcr.io/logfleet/logfleet-evil:1",
            "ghcr.io/logfleet/logfleetx",
            "docker.io/library/busybox",
            "registry.corporate/x",
        ] {
            assert!(!p.image_allowed(no), "{no}");
        }
        assert!(Policy::from_lists(&[], &["*".into()]).image_allowed("anything"));
    }

    #[test]
    fn the_default_honours_the_own_namespace_and_image_and_log_paths_only() {
        let p = Policy::default_for("logfleet");
        let spec = LogCollectorSpec::default();
        assert_eq!(p.check("logfleet", &spec), Ok(()));
        let e = p.check("team-a", &spec).unwrap_err();
        assert_eq!(e[0].field, "metadata.namespace");
        let mut bad = spec.clone();
        bad.image = "evil.io/root:1".into();
        bad.agent.host_paths.state = "/etc".into();
        bad.agent.host_paths.pod_logs = "/var/log/../../root".into();
        let fields: Vec<String> = p
            .check("logfleet", &bad)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect();
        assert_eq!(
            fields,
            [
                "spec.image",
                "spec.agent.hostPaths.podLogs",
                "spec.agent.hostPaths.state"
            ]
        );
        assert!(!host_path_allowed("/var/logx"));
        assert!(host_path_allowed("/var/lib/logfleet-agent/other"));
        assert!(!host_path_allowed("/var/lib/logfleet"));
        assert_eq!(
            Policy::from_lists(&["*".into()], &[]).check("any", &spec),
            Ok(())
        );
    }
}
