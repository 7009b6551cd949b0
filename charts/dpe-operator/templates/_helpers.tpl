{{/* Names, labels and the few values several templates derive the same way. */}}

{{- define "dpe-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "dpe-operator.fullname" -}}
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

{{- define "dpe-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dpe-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "dpe-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "dpe-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dpe
{{- end -}}

{{- define "dpe-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "dpe-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dpe-operator.metricsServiceName" -}}
{{- printf "%s-metrics" (include "dpe-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* An image reference: repository@digest when a digest is set, else repository:tag (tag defaults to appVersion). */}}
{{- define "dpe-operator.imageRef" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces served, as a JSON list (empty when cluster-wide). */}}
{{- define "dpe-operator.watchNamespaces" -}}
{{- if .Values.watch.clusterWide -}}
[]
{{- else if .Values.watch.namespaces -}}
{{- uniq .Values.watch.namespaces | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* Where the workload ServiceAccount is created, as a JSON list. */}}
{{- define "dpe-operator.workloadNamespaces" -}}
{{- $served := include "dpe-operator.watchNamespaces" . | fromJsonArray -}}
{{- concat $served .Values.workload.serviceAccount.namespaces | uniq | toJson -}}
{{- end -}}

{{/*
NetworkPolicy peers: any address but the link-local ranges, where cloud metadata services answer.
*/}}
{{- define "dpe-operator.anyButLinkLocal" -}}
- ipBlock:
    cidr: 0.0.0.0/0
    except:
      - 169.254.0.0/16
- ipBlock:
    cidr: ::/0
    except:
      - fe80::/10
{{- end }}

{{/* Namespaces other than the release's that the chart puts objects in, as a JSON list. */}}
{{- define "dpe-operator.neededNamespaces" -}}
{{- $needed := include "dpe-operator.workloadNamespaces" . | fromJsonArray -}}
{{- if and .Values.dashboard.enabled .Values.dashboard.namespace -}}
{{- $needed = append $needed .Values.dashboard.namespace -}}
{{- end -}}
{{- without (uniq $needed) .Release.Namespace | toJson -}}
{{- end -}}

