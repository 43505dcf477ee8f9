{{/*
The namespace of the control-plane objects: `namespace`, else the release's.
*/}}
{{- define "remora.namespace" -}}
{{- .Values.namespace | default .Release.Namespace -}}
{{- end -}}

{{/*
The control plane's name: its Deployment, Service, ServiceAccount, PDB.
*/}}
{{- define "remora.name" -}}
{{- .Values.name -}}
{{- end -}}

{{/*
The image: repository:tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "remora.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/*
Labels of every object the chart makes.
*/}}
{{- define "remora.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: remora
{{- end -}}

{{/*
What selects the control-plane pods (fixed for the life of a Deployment).
*/}}
{{- define "remora.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{/*
Labels of the control-plane objects: the chart's and the selector's.
*/}}
{{- define "remora.controlPlaneLabels" -}}
{{ include "remora.labels" . }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{/*
Where the control plane finds its files.
*/}}
{{- define "remora.meshDir" -}}/etc/remora/mesh{{- end -}}
{{- define "remora.issuerDir" -}}/etc/remora/issuer{{- end -}}
{{- define "remora.tokensDir" -}}/etc/remora/tokens{{- end -}}
{{- define "remora.dataDir" -}}/var/lib/remora{{- end -}}
