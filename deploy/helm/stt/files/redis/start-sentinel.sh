#!/bin/sh
# Writes a Sentinel's configuration anew (a Sentinel rewrites its own file, kept in an emptyDir)
# and starts it. It monitors the primary its peers name (the highest config epoch): a Sentinel
# that restarts after a failover must not go back to watching pod 0. With no peer answering it
# monitors pod 0. With REDIS_PASSWORD it requires that password from its clients (the services'
# sentinel_password, KEDA's sentinelPassword) and from its peers, and sends it to the servers.
#
# Settings, from the environment (tests/test_helm.py runs this file on loopback):
#   SELF_HOST, SENTINEL_PORT   the name it announces to its peers, the port it listens on
#   SENTINELS                  every Sentinel, this one included: "host:port host:port ..."
#   SENTINEL_MASTER, QUORUM    the primary's name and the votes that agree it is down
#   FIRST_PRIMARY              "host port" of pod 0
#   DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS
#   REDIS_PASSWORD             the servers' and the Sentinels' password (empty: none)
#   CONF_DIR                   where sentinel.conf is written
#   BIND                       addresses to listen on (empty: every interface)
set -eu
. "$(dirname "$0")/lib.sh"

# A configuration-file string: in double quotes, backslashes and quotes escaped.
quoted() {
  printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"
}

view=$(current_primary "$SELF_HOST:$SENTINEL_PORT")
if [ -n "$view" ]; then
  read -r epoch primary_host primary_port live <<EOT
$view
EOT
  log "monitoring $primary_host:$primary_port (its peers' primary, epoch $epoch)"
else
  read -r primary_host primary_port <<EOT
$FIRST_PRIMARY
EOT
  log "monitoring pod 0, $primary_host:$primary_port (no peer names a primary)"
fi

conf="$CONF_DIR/sentinel.conf"
{
  # printf, not echo: dash's echo would turn a backslash in the password into an escape.
  printf '%s\n' "port $SENTINEL_PORT"
  if [ -n "${BIND:-}" ]; then printf '%s\n' "bind $BIND"; fi
  printf '%s\n' "sentinel resolve-hostnames yes" "sentinel announce-hostnames yes"
  printf '%s\n' "sentinel announce-ip $(quoted "$SELF_HOST")"
  printf '%s\n' "sentinel monitor $SENTINEL_MASTER $primary_host $primary_port $QUORUM"
  printf '%s\n' "sentinel down-after-milliseconds $SENTINEL_MASTER $DOWN_AFTER_MS"
  printf '%s\n' "sentinel failover-timeout $SENTINEL_MASTER $FAILOVER_TIMEOUT_MS"
  if [ -n "${REDIS_PASSWORD:-}" ]; then
    # Written anew at every start: Sentinel 7.0 rewrites auth-pass into this file unquoted.
    printf '%s\n' "sentinel auth-pass $SENTINEL_MASTER $(quoted "$REDIS_PASSWORD")"
    printf '%s\n' "requirepass $(quoted "$REDIS_PASSWORD")"
  fi
} >"$conf"
exec redis-server "$conf" --sentinel
