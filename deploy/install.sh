#!/usr/bin/env bash
# Applies the bundle to the current kubectl context and waits until every
# node has a ready agent. Used by kind.sh and k3d.sh; works on any cluster
# that can pull (or already has) the image.
set -euo pipefail
cd "$(dirname "$0")/.."
# The CRD must be established before the LogCollector of the same bundle
# can be applied; a second apply after the wait takes it.
kubectl apply --server-side -f deploy/logfleet.yaml || true
kubectl wait --for=condition=Established --timeout=60s crd/logcollectors.logfleet.dev
kubectl apply --server-side -f deploy/logfleet.yaml
kubectl -n logfleet rollout status deployment/logfleet-controller --timeout=180s
kubectl -n logfleet wait --for=condition=Available --timeout=300s logcollector/logfleet
kubectl -n logfleet get logcollector logfleet
