//! What OpenShift needs beyond the plain bundle: one SecurityContextConstraints
//! for every collector's agents, shipped in `deploy/openshift.yaml`, and the
//! RBAC rules that let an agent use it.
//!
//! The SCC is static, so the controller never needs rights over SCCs (with
//! create or patch on them it could grant anyone `privileged`): it holds
//! `use` of this one SCC alone, which RBAC requires of whoever grants it, and
//! grants that to each collector's agents in their ClusterRole. Nothing is
//! cluster-scoped per collector any more, so no finalizer is needed and an
//! uninstall cannot hang on one.
//!
//! An SCC cannot restrict which host paths a pod mounts (its schema has no
//! such field): what limits the agents' host access is who may run pods as
//! their ServiceAccount (whoever may create pods in the collector's
//! namespace) and the fixed paths the controller renders.

use serde_json::{json, Value};

/// Name of the agents' SecurityContextConstraints.
pub const AGENT_SCC: &str = "logfleet-agent";

/// The SELinux type of the agent on OpenShift: "super privileged
/// container", which may read host files such as /var/log/pods; nothing
/// else of privileged mode comes with it. OpenShift's own log collector
/// runs with it too.
pub const SELINUX_TYPE: &str = "spc_t";

/// The agents' SCC: host directories and uid 0 for reading root-owned
/// logs; not privileged, no capabilities, no host network, PIDs, IPC or
/// ports, read-only root file system.
///
/// SELinux is `RunAsAny`, as in OpenShift's own `logging-scc`: under
/// `MustRunAs` admission fills the namespace's level only into containers
/// that set no SELinux options, so a container asking for `spc_t` would be
/// refused for its empty level. `allowedCapabilities`,
/// `defaultAddCapabilities` and `priority` are required by the SCC's schema
/// (openshift/api security/v1), hence present though empty.
pub fn agent_scc() -> Value {
    json!({
        "apiVersion": "security.openshift.io/v1",
        "kind": "SecurityContextConstraints",
        "metadata": {"name": AGENT_SCC, "labels": {
            "app.kubernetes.io/name": "logfleet",
            "app.kubernetes.io/component": "agent",
            "app.kubernetes.io/part-of": "logfleet",
        }},
        "allowHostDirVolumePlugin": true,
        "allowHostIPC": false,
        "allowHostNetwork": false,
        "allowHostPID": false,
        "allowHostPorts": false,
        "allowPrivilegeEscalation": false,
        "allowPrivilegedContainer": false,
        "allowedCapabilities": [],
        "defaultAddCapabilities": [],
        "requiredDropCapabilities": ["ALL"],
        "priority": 0,
        "readOnlyRootFilesystem": true,
        "runAsUser": {"type": "RunAsAny"},
        "seLinuxContext": {"type": "RunAsAny"},
        "fsGroup": {"type": "RunAsAny"},
        "supplementalGroups": {"type": "RunAsAny"},
        "seccompProfiles": ["runtime/default"],
        "volumes": ["hostPath", "configMap", "secret", "projected", "emptyDir"],
    })
}

/// The RBAC rule that lets a ServiceAccount's pods be admitted by
/// [`AGENT_SCC`]: the controller holds it and grants it to the agents.
pub fn agent_scc_use_rule() -> Value {
    json!({"apiGroups": ["security.openshift.io"], "resources": ["securitycontextconstraints"],
           "resourceNames": [AGENT_SCC], "verbs": ["use"]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scc_grants_nobody_by_itself() {
        let scc = agent_scc();
        // Granted through RBAC only, to each collector's agents.
        assert!(scc.get("users").is_none() && scc.get("groups").is_none());
        assert_eq!(scc["allowPrivilegedContainer"], false);
        assert_eq!(agent_scc_use_rule()["resourceNames"], json!([AGENT_SCC]));
    }
}
