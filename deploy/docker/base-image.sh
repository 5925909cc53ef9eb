#!/usr/bin/env bash
# Builds a stand-in for python:3.11-slim from Debian's packages, for machines that cannot pull
# from an image registry (air-gapped, or this project's CI): debootstrap a minimal bookworm with
# Python 3.11, put a virtual environment first on PATH (so `python` and `pip` are what they are in
# python:3.11-slim, and pip installs into it, not into Debian's Python), then `docker import`.
# The image is built only when it is missing. Use it with --build-arg BASE=<name> (make images does).
#   deploy/docker/base-image.sh [NAME]        default stt-local/python-debian:3.11-bookworm
# Env: DEBIAN_MIRROR (default: the first URIs of /etc/apt/sources.list.d/debian.sources, else
# deb.debian.org), SUITE (bookworm). Needs root (debootstrap) and a running Docker engine.
set -euo pipefail
name="${1:-stt-local/python-debian:3.11-bookworm}"
if docker image inspect "$name" >/dev/null 2>&1; then
  echo "base image $name: present"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
suite="${SUITE:-bookworm}"
mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list.d/debian.sources ]; then
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"
rootfs="$(mktemp -d /tmp/stt-rootfs.XXXXXX)"
trap 'rm -rf "$rootfs"' EXIT
start=$(date +%s)
echo "debootstrap $suite from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
  "$suite" "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; exit 1; }
rm -f "$rootfs.log"
# Like python:3.11-slim: python/pip on PATH, a writable site-packages for pip, no caches or docs.
chroot "$rootfs" /usr/bin/python3 -m venv /opt/python
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* \
  "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/debconf/*-old "$rootfs"/var/log/*.log
tar -C "$rootfs" -c . | docker import \
  --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["python3"]' \
  - "$name" >/dev/null
echo "base image $name: built in $(( $(date +%s) - start )) s, $(docker image inspect -f '{{.Size}}' "$name" | awk '{printf "%.0f MB", $1/1e6}')"
