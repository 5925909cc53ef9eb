{{- define "stt.labels" -}}
app.kubernetes.io/name: stt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "stt.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The transcribers' image: the CUDA build (image.gpuTag) on GPU nodes. */}}
{{- define "stt.transcriberImage" -}}
{{ .Values.image.repository }}:{{ ternary .Values.image.gpuTag .Values.image.tag .Values.gpu.enabled }}
{{- end }}

{{/* The stream a pool's segments wait in: services/keys.py's segment_stream(pool). */}}
{{- define "stt.stream" -}}
{{ .keys.prefix }}:segments:{{ .pool }}
{{- end }}

{{/* A bundled Redis pod's DNS name under the headless Service. */}}
{{- define "stt.redisPod" -}}
{{ .root.Release.Name }}-redis-{{ .n }}.{{ .root.Release.Name }}-redis-headless
{{- end }}

{{- define "stt.sentinelHostList" -}}
{{- $hosts := list -}}
{{- range $n := until (int .Values.redis.bundled.sentinel.count) -}}
{{- $hosts = append $hosts (printf "%s-sentinel-%d.%s-sentinel-headless:26379" $.Release.Name $n $.Release.Name) -}}
{{- end -}}
{{ toJson $hosts }}
{{- end }}

{{/* A URL component: percent-escaped (urlquery writes a space as "+", which a URL's userinfo
     keeps as a plus: redis-py and services/redis_url.py read userinfo with unquote). */}}
{{- define "stt.escape" -}}
{{ urlquery . | replace "+" "%20" }}
{{- end }}

{{/*
The Redis both services and KEDA use, as JSON (include ... | fromJson): from redis.url, or the
bundled one. One parse feeds both consumers, so they cannot disagree:
  sentinel, tls, unsafeSsl   booleans
  addresses                  host:port list (the Sentinels' with sentinel), IPv6 in brackets
  service, db                the Sentinel master name, the database index
  username, password, sentinelUsername, sentinelPassword
  query                      the URL's query, passed on to the services as written
*/}}
{{- define "stt.redis" -}}
{{- $v := .Values.redis -}}
{{- range $key := list "username" "password" "sentinelUsername" "sentinelPassword" -}}
{{- if contains "\n" (toString (index $v $key)) -}}{{- fail (printf "redis.%s must be one line" $key) -}}{{- end -}}
{{- end -}}
{{- $r := dict "sentinel" false "tls" false "unsafeSsl" false "addresses" (list) "service" "" "db" "0" "query" "" -}}
{{- $_ := set $r "username" (toString $v.username) -}}
{{- $_ := set $r "password" (toString $v.password) -}}
{{- $_ := set $r "sentinelUsername" (toString $v.sentinelUsername) -}}
{{- $_ := set $r "sentinelPassword" (toString $v.sentinelPassword) -}}
{{- if $v.url -}}
{{- $url := toString $v.url -}}
{{- $re := `^(rediss?)(\+sentinel)?://(([^@/?#%]*)@)?([^@/?#]+)(/[^?#]*)?(\?([^#]*))?$` -}}
{{- if not (regexMatch $re $url) -}}
{{- fail "redis.url: not redis://, rediss://, redis+sentinel:// or rediss+sentinel://host:port... (credentials that need %-escapes go in redis.username / redis.password)" -}}
{{- end -}}
{{- $_ := set $r "tls" (eq (regexReplaceAll $re $url "${1}") "rediss") -}}
{{- $_ := set $r "sentinel" (ne (regexReplaceAll $re $url "${2}") "") -}}
{{- if ne (regexReplaceAll $re $url "${3}") "" -}}
{{- $userinfo := splitn ":" 2 (regexReplaceAll $re $url "${4}") -}}
{{- if or (and $v.username $userinfo._0) (and $v.password $userinfo._1) -}}
{{- fail "redis.url holds credentials and redis.username / redis.password are set too: give them once" -}}
{{- end -}}
{{- if $userinfo._0 -}}{{- $_ := set $r "username" $userinfo._0 -}}{{- end -}}
{{- if $userinfo._1 -}}{{- $_ := set $r "password" $userinfo._1 -}}{{- end -}}
{{- end -}}
{{- $defaultPort := ternary "26379" "6379" $r.sentinel -}}
{{- $addresses := list -}}
{{- range $hostport := splitList "," (regexReplaceAll $re $url "${5}") -}}
{{- if not (regexMatch `^(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(:[0-9]+)?$` $hostport) -}}
{{- fail "redis.url: each host must be host[:port], an IPv6 address in brackets" -}}
{{- end -}}
{{- $addresses = append $addresses (ternary $hostport (printf "%s:%s" $hostport $defaultPort) (regexMatch `:[0-9]+$` $hostport)) -}}
{{- end -}}
{{- $_ := set $r "addresses" $addresses -}}
{{- $path := regexReplaceAll $re $url "${6}" -}}
{{- if $r.sentinel -}}
{{- if not (regexMatch `^/[^/]+(/[0-9]+)?/?$` $path) -}}
{{- fail "redis.url: a Sentinel URL names its service: redis+sentinel://host:port[,host:port...]/service[/db]" -}}
{{- end -}}
{{- $parts := splitList "/" (trimAll "/" $path) -}}
{{- $_ := set $r "service" (first $parts) -}}
{{- if gt (len $parts) 1 -}}{{- $_ := set $r "db" (last $parts) -}}{{- end -}}
{{- else -}}
{{- if gt (len $addresses) 1 -}}{{- fail "redis.url: one host for redis:// (several Sentinels: redis+sentinel://)" -}}{{- end -}}
{{- if not (regexMatch `^(/([0-9]+)?)?$` $path) -}}{{- fail "redis.url: the path of redis:// is /db" -}}{{- end -}}
{{- if trimPrefix "/" $path -}}{{- $_ := set $r "db" (trimPrefix "/" $path) -}}{{- end -}}
{{- end -}}
{{- $query := regexReplaceAll $re $url "${8}" -}}
{{- range $pair := splitList "&" $query -}}
{{- $kv := splitn "=" 2 $pair -}}
{{- if has $kv._0 (list "sentinel_username" "sentinel_password") -}}
{{- fail (printf "redis.url: %s goes in redis.%s" $kv._0 (ternary "sentinelUsername" "sentinelPassword" (eq $kv._0 "sentinel_username"))) -}}
{{- end -}}
{{- if and (eq $kv._0 "ssl_cert_reqs") (eq (lower (toString $kv._1)) "none") -}}{{- $_ := set $r "unsafeSsl" true -}}{{- end -}}
{{- end -}}
{{- $_ := set $r "query" $query -}}
{{- else -}}
{{- $_ := set $r "sentinel" (and $v.bundled.sentinel.enabled true) -}}
{{- if $r.sentinel -}}
{{- $_ := set $r "addresses" (include "stt.sentinelHostList" . | fromJsonArray) -}}
{{- $_ := set $r "service" $v.bundled.sentinel.service -}}
{{- $_ := set $r "sentinelPassword" (toString $v.password) -}}
{{- else -}}
{{- $_ := set $r "addresses" (list (printf "%s:6379" (include "stt.redisPod" (dict "root" . "n" 0)))) -}}
{{- end -}}
{{- end -}}
{{ toJson $r }}
{{- end }}

{{/* The URL both services get (kept in a Secret: it holds the passwords), built from stt.redis
     with every credential escaped; services/redis_url.py defines the forms. */}}
{{- define "stt.redisUrl" -}}
{{- $r := include "stt.redis" . | fromJson -}}
{{- $auth := "" -}}
{{- if or $r.username $r.password -}}
{{- $auth = printf "%s%s@" (include "stt.escape" $r.username) (ternary (printf ":%s" (include "stt.escape" $r.password)) "" (ne $r.password "")) -}}
{{- end -}}
{{- $query := list -}}
{{- if $r.query -}}{{- $query = append $query $r.query -}}{{- end -}}
{{- if $r.sentinelUsername -}}{{- $query = append $query (printf "sentinel_username=%s" (urlquery $r.sentinelUsername)) -}}{{- end -}}
{{- if $r.sentinelPassword -}}{{- $query = append $query (printf "sentinel_password=%s" (urlquery $r.sentinelPassword)) -}}{{- end -}}
{{- $scheme := printf "%s%s" (ternary "rediss" "redis" $r.tls) (ternary "+sentinel" "" $r.sentinel) -}}
{{- $path := ternary (printf "/%s/%s" $r.service $r.db) (printf "/%s" $r.db) $r.sentinel -}}
{{ $scheme }}://{{ $auth }}{{ join "," $r.addresses }}{{ $path }}{{ if $query }}?{{ join "&" $query }}{{ end }}
{{- end }}

{{- define "stt.scrape" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}

{{/* The chart's pool names, comma-separated: the ingest's POOLS. */}}
{{- define "stt.poolNames" -}}
{{- $names := list -}}
{{- range .Values.pools }}{{ $names = append $names .name }}{{ end -}}
{{- join "," $names -}}
{{- end -}}
