{{- /* The bundled etcd's client URLs, one per member by its stable DNS name (the agents' etcd
     client fails over among them). */ -}}
{{- define "pgquorum.etcdEndpoints" -}}
{{- $ns := .Release.Namespace -}}
{{- $urls := list -}}
{{- range $i := until (int .Values.etcd.replicas) -}}
{{- $urls = append $urls (printf "http://pgquorum-etcd-%d.pgquorum-etcd.%s.svc:2379" $i $ns) -}}
{{- end -}}
{{- join "," $urls -}}
{{- end -}}
{{- define "pgquorum.etcdLabels" -}}
app.kubernetes.io/name: pgquorum-etcd
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
