# Shared by start-redis.sh and start-sentinel.sh (POSIX sh: the image's busybox or dash).

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }

# The Sentinels' password for redis-cli (an empty REDISCLI_AUTH would still send AUTH "").
if [ -n "${REDIS_PASSWORD:-}" ]; then
  export REDISCLI_AUTH="$REDIS_PASSWORD"
fi

# One line per Sentinel of SENTINELS (space-separated host:port; [v6]:port) that answers, except
# host:port $1 (a Sentinel skips itself): "config-epoch host port live-replicas" of the primary it
# knows as SENTINEL_MASTER. Each question is bounded (2 s); a Sentinel that is down or refuses
# (NOAUTH, no such master) gives no line.
sentinel_views() {
  for sentinel in ${SENTINELS:-}; do
    [ "$sentinel" = "${1:-}" ] && continue
    host=${sentinel%:*}
    port=${sentinel##*:}
    host=${host#\[}
    host=${host%\]}
    master=$(timeout 2 redis-cli -h "$host" -p "$port" --raw SENTINEL master "$SENTINEL_MASTER" 2>/dev/null) || continue
    replicas=$(timeout 2 redis-cli -h "$host" -p "$port" --raw SENTINEL replicas "$SENTINEL_MASTER" 2>/dev/null) || continue
    live=$(printf '%s\n' "$replicas" | awk 'NR % 2 == 1 { key = $0; next }
      key == "flags" && $0 !~ /s_down|o_down|disconnected/ { n++ } END { print n + 0 }')
    printf '%s\n' "$master" | awk -v live="$live" 'NR % 2 == 1 { key = $0; next }
      key == "ip" { ip = $0 } key == "port" { port = $0 } key == "config-epoch" { epoch = $0 }
      END { if (ip != "" && port ~ /^[0-9]+$/ && epoch ~ /^[0-9]+$/) print epoch, ip, port, live }'
  done
}

# The view with the highest config epoch (the newest failover any Sentinel took part in), or "".
current_primary() {
  sentinel_views "${1:-}" | sort -n -r -k 1,1 | head -n 1
}
