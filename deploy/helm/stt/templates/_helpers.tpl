{{- define "stt.labels" -}}
app.kubernetes.io/name: stt
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "stt.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end }}

{{/* The stream a pool's segments wait in: services/keys.py's segment_stream(pool). */}}
{{- define "stt.stream" -}}
{{ .keys.prefix }}:segments:{{ .pool }}
{{- end }}

{{- define "stt.redisHost" -}}
{{ .Release.Name }}-redis-0.{{ .Release.Name }}-redis-headless:6379
{{- end }}

{{- define "stt.sentinelHosts" -}}
{{- $hosts := list -}}
{{- range $n := until (int .Values.redis.bundled.sentinel.count) -}}
{{- $hosts = append $hosts (printf "%s-sentinel-%d.%s-sentinel-headless:26379" $.Release.Name $n $.Release.Name) -}}
{{- end -}}
{{ join "," $hosts }}
{{- end }}

{{/* The URL both services get (kept in a Secret: it may hold the password). */}}
{{- define "stt.redisUrl" -}}
{{- $auth := ternary "" (printf ":%s@" .Values.redis.password) (empty .Values.redis.password) -}}
{{- if .Values.redis.url -}}
{{ .Values.redis.url }}
{{- else if .Values.redis.bundled.sentinel.enabled -}}
redis+sentinel://{{ $auth }}{{ include "stt.sentinelHosts" . }}/{{ .Values.redis.bundled.sentinel.service }}/0
{{- else -}}
redis://{{ $auth }}{{ include "stt.redisHost" . }}/0
{{- end -}}
{{- end }}

{{- define "stt.scrape" -}}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
