#!/usr/bin/env bash
# The same as kind.sh on k3d: three nodes, image imported, bundle applied,
# wait for Available. Needs docker, k3d and kubectl.
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-logfleet}
image=ghcr.io/logfleet/logfleet:0.1.0

k3d cluster list "$name" >/dev/null 2>&1 || k3d cluster create "$name" --agents 2
docker build -f deploy/Dockerfile -t "$image" .
k3d image import "$image" --cluster "$name"
deploy/install.sh
