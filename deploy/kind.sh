#!/usr/bin/env bash
# Creates a three-node kind cluster, builds and loads the image, installs
# the bundle and waits until every node has a ready agent.
# Needs docker, kind and kubectl. Usage: deploy/kind.sh [cluster-name]
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-logfleet}
image=ghcr.io/logfleet/logfleet:0.1.0

if ! kind get clusters | grep -qx "$name"; then
  kind create cluster --name "$name" --config - <<'KIND'
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
nodes:
  - role: control-plane
  - role: worker
  - role: worker
KIND
fi
docker build -f deploy/Dockerfile -t "$image" .
kind load docker-image "$image" --name "$name"

deploy/install.sh
