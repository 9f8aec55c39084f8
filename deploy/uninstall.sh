#!/usr/bin/env bash
# Removes logfleet from the current kubectl context, in the order that
# leaves nothing behind: the collectors first, while the controller still
# runs (on OpenShift its finalizer deletes the agents' cluster-scoped
# SecurityContextConstraints; elsewhere there is no finalizer and owner
# references take every child), then the bundle (controller, CRD,
# namespace).
set -euo pipefail
cd "$(dirname "$0")/.."
if kubectl get crd logcollectors.logfleet.dev >/dev/null 2>&1; then
  kubectl delete logcollectors --all --all-namespaces --wait=true --timeout=180s
fi
kubectl delete --ignore-not-found -f deploy/logfleet.yaml
