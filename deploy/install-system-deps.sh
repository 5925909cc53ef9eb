#!/usr/bin/env bash
# Installs the Debian packages the local stack and the tests need, only those missing.
# redis-server: the queue; espeak-ng + sox: test speech; portaudio19-dev: PyAudio for the mic client;
# pulseaudio: the fake microphone the mic-client test records from.
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
[ -e /usr/include/portaudio.h ] || need+=(portaudio19-dev)
command -v pulseaudio >/dev/null || need+=(pulseaudio)
command -v paplay >/dev/null || need+=(pulseaudio-utils)
command -v chromium >/dev/null || need+=(chromium)  # the browser page test (tests/test_web.py)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} (run as root, or: sudo apt-get install -y ${need[*]})" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
