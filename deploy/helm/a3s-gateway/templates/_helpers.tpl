{{/*
Names and labels shared by the templates.
*/}}

{{/* The chart name, or nameOverride; at most 63 characters (a DNS label). */}}
{{- define "a3s-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The name of the release's objects: fullnameOverride, else "<release>-<chart name>", shortened to the release name
when that already contains the chart name. At most 63 characters.
*/}}
{{- define "a3s-gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The admin Service: "<fullname>-admin" within 63 characters. */}}
{{- define "a3s-gateway.adminServiceName" -}}
{{- printf "%s-admin" (include "a3s-gateway.fullname" . | trunc 57 | trimSuffix "-") -}}
{{- end -}}

{{/* "<chart>-<version>" for the helm.sh/chart label. */}}
{{- define "a3s-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels a Service or a Deployment selects pods by: they never change across upgrades. */}}
{{- define "a3s-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "a3s-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every object's labels. */}}
{{- define "a3s-gateway.labels" -}}
helm.sh/chart: {{ include "a3s-gateway.chart" . }}
{{ include "a3s-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The ServiceAccount the pods run as. */}}
{{- define "a3s-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "a3s-gateway.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Whether the pods talk to the Kubernetes API (the ServiceAccount token is mounted then). */}}
{{- define "a3s-gateway.kubeApi" -}}
{{- if or .Values.serviceAccount.automount .Values.providers.kubernetes.enabled .Values.rbac.scaleDeployments -}}
true
{{- else -}}
false
{{- end -}}
{{- end -}}

{{/*
The gateway configuration: `config`, plus a `providers` block made from .Values.providers unless `config` has its
own (then the kubernetes provider cannot be switched on here: the chart will not edit the user's block).
*/}}
{{- define "a3s-gateway.config" -}}
{{- $own := regexMatch "(?m)^\\s*providers\\s*\\{" .Values.config -}}
{{- $k8s := .Values.providers.kubernetes -}}
{{- if and $own $k8s.enabled -}}
{{- fail "providers.kubernetes.enabled: `config` has its own providers block; remove it (the chart writes it) or add the kubernetes block to it and leave providers.kubernetes.enabled false" -}}
{{- end -}}
{{- .Values.config -}}
{{- if not $own }}

# written by the chart from .Values.providers
providers {
  file {
    watch = {{ .Values.providers.file.watch }}
  }
  {{- if $k8s.enabled }}
  kubernetes {
    ingress_class     = {{ $k8s.ingressClass.name | quote }}
    ingress_route_crd = {{ $k8s.ingressRouteCRD }}
    {{- if $k8s.namespace }}
    namespace         = {{ $k8s.namespace | quote }}
    {{- end }}
    {{- if $k8s.labelSelector }}
    label_selector    = {{ $k8s.labelSelector | quote }}
    {{- end }}
    {{- if $k8s.publishService }}
    publish_service   = {{ $k8s.publishService | quote }}
    {{- end }}
  }
  {{- end }}
}
{{- end }}
{{- end -}}
