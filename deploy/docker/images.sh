#!/usr/bin/env bash
# Builds the images the test stack runs (docker-compose.test.yml), only what is missing or stale:
# the local base (deploy/docker/base-image.sh), the slim serving image stt-local/stt:serve and the
# test stand-ins stt-test/redis-debian and stt-test/prometheus-debian. FULL=1 also builds the
# full CPU image stt-local/stt:cpu (torch included) to compare sizes. Prints sizes and times.
#   COMPOSE=<the compose v2 binary> deploy/docker/images.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
compose="${COMPOSE:?COMPOSE must name the Docker Compose v2 binary}"
export COMPOSE_BAKE=false  # build with the engine's BuildKit; no buildx plugin is needed
files=(-f docker-compose.yml -f docker-compose.test.yml)
deploy/install-docker.sh
deploy/docker/base-image.sh "${STT_BASE_IMAGE:-stt-local/python-debian:3.11-bookworm}"
# The build context that .dockerignore lets through (requirements.txt and services/, no caches).
context=$(tar -c --exclude=__pycache__ --exclude='*.pyc' requirements.txt services | wc -c)
echo "build context: $(awk -v b="$context" 'BEGIN {printf "%.1f MB", b/1e6}')"
start=$(date +%s)
"$compose" "${files[@]}" build --quiet redis prometheus ingest
echo "slim image and stand-ins built in $(( $(date +%s) - start )) s"
images=(stt-local/stt:serve stt-test/redis-debian:7.0 stt-test/prometheus-debian:2.42)
if [ "${FULL:-0}" = 1 ]; then
  if [ -z "${TORCH_INDEX+x}" ] && compgen -G "/opt/wheels/torch-*.whl" >/dev/null; then
    deploy/docker/wheels-image.sh /opt/wheels stt-local/wheels:local
    export STT_WHEELS_IMAGE=stt-local/wheels:local TORCH_INDEX=""
  fi
  start=$(date +%s)
  "$compose" "${files[@]}" --profile images build --quiet stt-full
  echo "full image built in $(( $(date +%s) - start )) s"
  images+=(stt-local/stt:cpu)
fi
for image in "${images[@]}"; do
  docker image inspect -f '{{.Size}}' "$image" | awk -v i="$image" '{printf "%-34s %5.0f MB\n", i, $1/1e6}'
done
