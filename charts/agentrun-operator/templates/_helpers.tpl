{{/*
Names. Every helper here cuts to 63 characters and trims a trailing "-": Kubernetes
names that end up in labels or DNS (Services, label values) must be DNS-1123 labels,
at most 63 characters, and a cut may leave a "-" at the end, which is not allowed.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "agentrun-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name of every object: fullnameOverride, else the release name when it already
says what the chart is ("agentrun-operator", "my-agentrun-operator"), else the chart's
name when the release name is its first word ("agentrun" gives "agentrun-operator", not
"agentrun-agentrun-operator"), else "<release>-<chart>".
*/}}
{{- define "agentrun-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else if hasPrefix (printf "%s-" .Release.Name) $name }}
{{- $name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"<fullname>-<suffix>" for the chart's other objects, cut so that the suffix survives:
the base is shortened, not the part that tells the objects apart.
*/}}
{{- define "agentrun-operator.suffixed" -}}
{{- $suffix := index . 1 }}
{{- $base := include "agentrun-operator.fullname" (index . 0) | trunc (int (sub 62 (len $suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base $suffix }}
{{- end }}

{{/* Chart name and version, as the helm.sh/chart label wants them (a label value: 63). */}}
{{- define "agentrun-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object of the chart carries. */}}
{{- define "agentrun-operator.labels" -}}
helm.sh/chart: {{ include "agentrun-operator.chart" . }}
{{ include "agentrun-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentrun
{{- end }}

{{/* The labels the Deployment selects its pods by, and the Service its endpoints by. */}}
{{- define "agentrun-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentrun-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The ServiceAccount the operator runs as. */}}
{{- define "agentrun-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentrun-operator.fullname" .) .Values.serviceAccount.name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's image: repository and tag, the tag defaulting to the chart's appVersion. */}}
{{- define "agentrun-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The runners' image: runner.image, else the operator's (one image holds both programs). */}}
{{- define "agentrun-operator.runnerImage" -}}
{{- default (include "agentrun-operator.image" .) .Values.runner.image }}
{{- end }}

{{/* Whether the operator watches every namespace (no watchNamespaces listed). */}}
{{- define "agentrun-operator.clusterWide" -}}
{{- if not .Values.watchNamespaces }}true{{ end }}
{{- end }}

{{/*
Refuse combinations the schema cannot express, with a message that says what to do.
Called by the Deployment, so that `helm template` and `helm install` both stop.
*/}}
{{- define "agentrun-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.peering.enabled) }}
{{- fail "replicaCount > 1 needs peering.enabled=true: replicas without peering would all act on the same runs at once." }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.metrics.enabled) }}
{{- fail "serviceMonitor.enabled=true needs metrics.enabled=true: the ServiceMonitor scrapes the metrics Service." }}
{{- end }}
{{- if and .Values.runner.defaultApiKeySecret.name (not .Values.runner.defaultApiKeySecret.key) }}
{{- fail "runner.defaultApiKeySecret.key must name the key of the Secret that holds the API key." }}
{{- end }}
{{- if eq (int .Values.metrics.port) (int .Values.health.port) }}
{{- fail "metrics.port and health.port must differ: the operator serves each on its own port." }}
{{- end }}
{{- end }}

{{/*
The operator's rules on the objects of the namespaces it serves: a ClusterRole's rules
when it watches every namespace, a Role's in each listed namespace otherwise.
The operator grants each run's Role (agentruns get, configmaps get/update/patch/create),
so it must hold those verbs itself: Kubernetes refuses to let anyone grant what they do
not hold (RBAC escalation prevention).
*/}}
{{- define "agentrun-operator.namespacedRules" -}}
# The runs: kopf lists and watches them, patches annotations and finalizers (progress,
# daemon cleanup); the operator reads each run before it reconciles.
- apiGroups: ["agentrun.dev"]
  resources: ["agentruns"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["agentrun.dev"]
  resources: ["agentruns/status"]
  verbs: ["get", "patch", "update"]
# Owner references with blockOwnerDeletion need update on the owner's finalizers
# where the OwnerReferencesPermissionEnforcement admission plugin is on.
- apiGroups: ["agentrun.dev"]
  resources: ["agentruns/finalizers"]
  verbs: ["update"]
# One Job per attempt; a suspended run's Job is deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "get", "list", "watch", "delete"]
# A run's pods, read to say why one cannot start (a missing Secret, an image pull).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
# The checkpoint: the operator claims it for each attempt (fencing) and reads it.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get", "update", "patch"]
# Each run's own identity: ServiceAccount, Role and RoleBinding, owned by the run.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "get"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["create", "get"]
# Events on runs, for every transition (core/v1 Events; kopf's own posting is off).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- if and .Values.peering.enabled (not (include "agentrun-operator.clusterWide" .)) }}
# Peering of replicas limited to namespaces: a KopfPeering in each namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/*
What kopf needs cluster-wide whatever the operator watches: it watches CRDs to notice
resources appearing and going; limited to namespaces, it also lists and watches
namespaces to notice them appearing and going. Neither reaches any namespaced object.
*/}}
{{- define "agentrun-operator.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if not (include "agentrun-operator.clusterWide" .) }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- if and .Values.peering.enabled (include "agentrun-operator.clusterWide" .) }}
# Peering of cluster-wide replicas: one ClusterKopfPeering.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}
