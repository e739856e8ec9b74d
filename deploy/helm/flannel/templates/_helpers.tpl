{{/* Labels of every object (upstream's manifest labels, plus Helm's). */}}
{{- define "flannel.labels" -}}
tier: node
app: flannel
k8s-app: flannel
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The DaemonSet's selector: upstream's, so that the chart can take over pods of the manifest. */}}
{{- define "flannel.selectorLabels" -}}
app: flannel
{{- end }}

{{/* The pods' labels. */}}
{{- define "flannel.podLabels" -}}
tier: node
app: flannel
{{- end }}

{{/*
net-conf.json, built as a dict and written with toPrettyJson so that it is always valid JSON (upstream's
template writes the wireguard Mode unquoted). The keys per backend are upstream's.
*/}}
{{- define "flannel.netConf" -}}
{{- $f := .Values.flannel -}}
{{- $conf := dict -}}
{{- if .Values.podCidr -}}
{{- $_ := set $conf "Network" .Values.podCidr -}}
{{- else -}}
{{- $_ := set $conf "EnableIPv4" false -}}
{{- end -}}
{{- if .Values.podCidrv6 -}}
{{- $_ := set $conf "IPv6Network" .Values.podCidrv6 -}}
{{- $_ := set $conf "EnableIPv6" true -}}
{{- end -}}
{{- $_ := set $conf "EnableNFTables" ($f.enableNFTables | default false) -}}
{{- $backend := dict -}}
{{- $keys := dict -}}
{{- if eq $f.backend "vxlan" -}}
{{- $keys = dict "backendPort" "Port" "vni" "VNI" "GBP" "GBP" "directRouting" "DirectRouting" "mtu" "MTU" "macPrefix" "MacPrefix" -}}
{{- else if eq $f.backend "wireguard" -}}
{{- $keys = dict "backendPort" "ListenPort" "backendPortv6" "ListenPortV6" "psk" "PSK" "mtu" "MTU" "tunnelMode" "Mode" "keepaliveInterval" "PersistentKeepaliveInterval" -}}
{{- else if eq $f.backend "udp" -}}
{{- $keys = dict "backendPort" "Port" -}}
{{- end -}}
{{- range $valueName, $jsonKey := $keys -}}
{{- if index $f $valueName -}}
{{- $_ := set $backend $jsonKey (index $f $valueName) -}}
{{- end -}}
{{- end -}}
{{- $_ := set $backend "Type" $f.backend -}}
{{- $_ := set $conf "Backend" $backend -}}
{{- toPrettyJson $conf -}}
{{- end }}

{{/*
Values kept from upstream's chart (`helm upgrade --reuse-values` from chart/kube-flannel, or its values file)
name upstream's images. Upstream's flanneld image would run Go flannel under this chart's templates: refused
here, with what to change. Upstream's CNI plugin image is accepted: see "flannel.upstreamPlugin".
*/}}
{{- define "flannel.checkValues" -}}
{{- $image := .Values.flannel.image -}}
{{- if regexMatch "^(.*/)?flannel-io/flannel$|^(docker\\.io/)?flannel/flannel$" $image.repository -}}
{{- fail (printf "flannel.image is upstream's Go flanneld image (%s:%s), kept from upstream's kube-flannel chart (helm upgrade --reuse-values, or upstream's values file). This chart runs the Python flanneld: set flannel.image.repository and flannel.image.tag to its image (docs/kubernetes.md), e.g. --set flannel.image.repository=REGISTRY/flanneld,flannel.image.tag=%s, or upgrade with --reset-then-reuse-values instead of --reuse-values to start from this chart's defaults." $image.repository (toString $image.tag) .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/*
"true" when flannel_cni.image is upstream's CNI plugin image (ghcr.io/flannel-io/flannel-cni-plugin, or a
mirror whose name ends the same), kept from upstream's chart. It has no install-cni-plugin; it holds upstream's
static Go plugin at /flannel, which works with this flanneld (the same subnet.env), so it is installed the way
upstream's chart does it.
*/}}
{{- define "flannel.upstreamPlugin" -}}
{{- if regexMatch "flannel-cni-plugin$" .Values.flannel.flannel_cni.image.repository -}}true{{- end -}}
{{- end }}
