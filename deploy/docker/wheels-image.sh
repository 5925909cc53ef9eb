#!/usr/bin/env bash
# Packs local wheels (default /opt/wheels, e.g. the CPU torch wheel where download.pytorch.org is
# unreachable) into an image of files only, which deploy/Dockerfile's WHEELS build arg mounts for pip.
#   deploy/docker/wheels-image.sh [DIR [NAME]]     default /opt/wheels, stt-local/wheels:local
set -euo pipefail
dir="${1:-/opt/wheels}"
name="${2:-stt-local/wheels:local}"
if docker image inspect "$name" >/dev/null 2>&1; then echo "wheels image $name: present"; exit 0; fi
compgen -G "$dir/*.whl" >/dev/null || { echo "no wheels in $dir" >&2; exit 1; }
tar -C "$dir" -c --transform 's,^\./,,' . | docker import - "$name" >/dev/null
echo "wheels image $name: $(ls "$dir"/*.whl | wc -l) wheel(s) from $dir"
