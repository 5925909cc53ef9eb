#!/bin/sh
# Starts one bundled Redis (templates/redis.yaml) as the primary or as a replica, so that it never
# comes up as an empty primary over a live one. (A primary without its data that restarts faster
# than the Sentinels' down-after would be named primary again, and its replicas would copy its
# empty data set: Redis's replication docs, "Safety of replication when master has persistence
# turned off".) Every instance keeps an append-only file in DATA_DIR.
#
#   - The Sentinels name another primary: start as its replica.
#   - They name this instance and its append-only file is there: start as the primary (it reloads
#     what it acknowledged).
#   - They name this instance, its data is gone and a replica of it is up: wait, at most
#     FAILOVER_WAIT_S, until they promote a replica (this instance does not listen meanwhile, so
#     they see it down), then start as that one's replica; exit 1 if they do not.
#   - No Sentinel answers (none configured, the first start, all down): pod 0 starts as the
#     primary, the others as its replicas.
#
# Settings, from the environment (tests/test_helm.py runs this file against real redis-server
# and Sentinel processes on loopback):
#   POD_NAME         this pod's name; pod 0 is the one whose name ends in -0
#   SELF_HOST        the name it announces (its DNS name under the headless Service)
#   REDIS_PORT       the port it listens on
#   FIRST_PRIMARY    "host port" of pod 0
#   SENTINELS        "host:port host:port ..." (empty: no Sentinels)
#   SENTINEL_MASTER  the Sentinels' name for the primary
#   REDIS_PASSWORD   the servers' and the Sentinels' password (empty: none)
#   DATA_DIR         where the append-only file is kept (a PersistentVolumeClaim in the chart)
#   FAILOVER_WAIT_S  see above
#   BIND             addresses to listen on (empty: every interface, protected mode off)
set -eu
. "$(dirname "$0")/lib.sh"

set -- redis-server --port "$REDIS_PORT" --dir "$DATA_DIR" --appendonly yes --save "" \
  --replica-announce-ip "$SELF_HOST"
if [ -n "${BIND:-}" ]; then
  # shellcheck disable=SC2086 # several addresses are several words
  set -- "$@" --bind $BIND
else
  set -- "$@" --protected-mode no
fi
if [ -n "${REDIS_PASSWORD:-}" ]; then
  set -- "$@" --requirepass "$REDIS_PASSWORD" --masterauth "$REDIS_PASSWORD"
fi

has_data() {
  [ -n "$(ls -A "$DATA_DIR/appendonlydir" 2>/dev/null)" ] || [ -s "$DATA_DIR/dump.rdb" ]
}

view=$(current_primary)
if [ -z "$view" ]; then
  case "$POD_NAME" in
    *-0)
      log "starting as the primary (pod 0, no Sentinel names a primary)"
      exec "$@"
      ;;
    *)
      read -r primary_host primary_port <<EOT
$FIRST_PRIMARY
EOT
      log "starting as a replica of pod 0, $primary_host:$primary_port (no Sentinel names a primary)"
      exec "$@" --replicaof "$primary_host" "$primary_port"
      ;;
  esac
fi

read -r epoch primary_host primary_port live <<EOT
$view
EOT
if [ "$primary_host" != "$SELF_HOST" ] || [ "$primary_port" != "$REDIS_PORT" ]; then
  log "starting as a replica of $primary_host:$primary_port (the Sentinels' primary, epoch $epoch)"
  exec "$@" --replicaof "$primary_host" "$primary_port"
fi
if has_data || [ "$live" -eq 0 ]; then
  log "starting as the primary (the Sentinels' primary, epoch $epoch; append-only file: $(has_data && echo kept || echo none))"
  exec "$@"
fi

log "the Sentinels name this instance primary but its data is gone and $live replica(s) of it are up:" \
  "waiting up to ${FAILOVER_WAIT_S} s for them to promote one"
deadline=$(($(date +%s) + FAILOVER_WAIT_S))
while [ "$(date +%s)" -lt "$deadline" ]; do
  sleep 1
  view=$(current_primary)
  [ -n "$view" ] || continue
  read -r epoch primary_host primary_port live <<EOT
$view
EOT
  if [ "$primary_host" != "$SELF_HOST" ] || [ "$primary_port" != "$REDIS_PORT" ]; then
    log "starting as a replica of $primary_host:$primary_port (promoted by the Sentinels, epoch $epoch)"
    exec "$@" --replicaof "$primary_host" "$primary_port"
  fi
done
log "no replica was promoted within ${FAILOVER_WAIT_S} s: not starting as an empty primary"
exit 1
