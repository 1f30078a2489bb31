{{- define "site-cache.labels" -}}
app.kubernetes.io/name: site-cache
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: labfleet
{{- end -}}

{{- define "site-cache.selector" -}}
app.kubernetes.io/name: site-cache
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
