#!/usr/bin/env bash
# Removes logfleet from the current kubectl context, in the order that
# leaves nothing behind: the collectors first, while the controller still
# runs (collectors carry no finalizer; owner references take every
# namespaced child), then the agents' ClusterRoles
# and ClusterRoleBindings (cluster-scoped: the controller sweeps those of
# deleted collectors only when it reconciles another one), then the bundle
# (controller, CRD, namespace).
set -euo pipefail
cd "$(dirname "$0")/.."
if kubectl get crd logcollectors.logfleet.dev >/dev/null 2>&1; then
  kubectl delete logcollectors --all --all-namespaces --wait=true --timeout=180s
fi
kubectl delete clusterroles,clusterrolebindings --ignore-not-found \
  -l app.kubernetes.io/managed-by=logfleet-controller,app.kubernetes.io/component=agent
kubectl delete --ignore-not-found -f deploy/logfleet.yaml
# OpenShift: the agents' SCC and the controller's use of it.
if kubectl api-resources --api-group=security.openshift.io -o name 2>/dev/null | grep -q '^securitycontextconstraints'; then
  kubectl delete --ignore-not-found -f deploy/openshift.yaml
fi
