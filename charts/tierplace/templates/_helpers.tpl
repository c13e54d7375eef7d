{{/*
Expand the name of the chart.
*/}}
{{- define "tierplace.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "tierplace.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "tierplace.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "tierplace.labels" -}}
helm.sh/chart: {{ include "tierplace.chart" . }}
{{ include "tierplace.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tierplace
{{- end }}

{{/*
Selector labels
*/}}
{{- define "tierplace.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tierplace.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
Labels and selector labels of one component (operator, prometheus, weights).
*/}}
{{- define "tierplace.componentLabels" -}}
{{ include "tierplace.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- define "tierplace.componentSelectorLabels" -}}
{{ include "tierplace.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "tierplace.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tierplace.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The tierplace image (operator and router are one image).
*/}}
{{- define "tierplace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Default images of the tiers and routers the operator creates (TIERPLACE_TRITON_IMAGE,
TIERPLACE_ROUTER_IMAGE); the router's falls back to the tierplace image.
*/}}
{{- define "tierplace.tritonImage" -}}
{{- with .Values.defaultImages.triton }}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) }}
{{- end }}
{{- end }}
{{- define "tierplace.routerImage" -}}
{{- with .Values.defaultImages.router }}
{{- if .repository }}
{{- printf "%s:%s" .repository (default $.Chart.AppVersion .tag) }}
{{- else }}
{{- printf "%s:%s" $.Values.image.repository (default $.Chart.AppVersion (default $.Values.image.tag .tag)) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The webhook Service, and the DNS name its certificate is issued for.
*/}}
{{- define "tierplace.webhookService" -}}
{{- printf "%s-webhook" (include "tierplace.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "tierplace.webhookHost" -}}
{{- printf "%s.%s.svc" (include "tierplace.webhookService" .) .Release.Namespace }}
{{- end }}

{{/*
The Prometheus URL cascades should use: the bundled one, else the external one (may be empty).
*/}}
{{- define "tierplace.prometheusUrl" -}}
{{- if .Values.prometheus.bundled.enabled }}
{{- printf "http://%s-prometheus.%s.svc:%d" (include "tierplace.fullname" .) .Release.Namespace (int .Values.prometheus.bundled.port) }}
{{- else }}
{{- .Values.prometheus.externalUrl }}
{{- end }}
{{- end }}
