package main

// HELM CHART STAND-IN. k3s's helm-controller installs every HelmChart with Helm, in a Job, from the chart tarballs
// k3s bundles (traefik-crd and traefik) or from a chart repository. Neither Helm's chart rendering nor the charts
// can be had here, so the stand-in renders the two charts k3s bundles itself: traefik-crd applies Traefik's own CRD
// definitions (from the Traefik module the lab builds its Traefik image from), traefik turns the chart's values
// (HelmChart.spec.valuesContent and set, then the HelmChartConfig of the same name, as helm-controller merges them)
// into the objects the chart would render: ServiceAccount, ClusterRole and binding, IngressClass, a Deployment or
// DaemonSet running Traefik with the arguments the chart's pod template derives from the values, and the Service.
// Only the values listed in chart_values.txt are understood; any other one stops the release with an error naming
// it (a value the chart would honour is never silently dropped). Other charts are not rendered (logged once).

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/yaml"
)

// chartValuePaths lists the traefik chart values the stand-in translates (one per line; "<name>" is any key, a
// trailing ".*" any content below); tests compare it with the chart's documented values.
//
//go:embed chart_values.txt
var chartValuePaths string

// Traefik's CRD definitions, copied in from the Traefik module by the lab's build (charts/traefik-crd.yaml).
//
//go:embed charts
var chartFiles embed.FS

var (
	helmChartGVR       = schema.GroupVersionResource{Group: "helm.cattle.io", Version: "v1", Resource: "helmcharts"}
	helmChartConfigGVR = schema.GroupVersionResource{Group: "helm.cattle.io", Version: "v1", Resource: "helmchartconfigs"}
)

const (
	chartChecksumAnnotation = "portable-k3s.lab/rendered-checksum"
	chartAppliedAnnotation  = "portable-k3s.lab/rendered-objects"
)

// chartName is the bundled chart a HelmChart's spec.chart names ("traefik", "traefik-crd"), or "".
var bundledChartURL = regexp.MustCompile(`/static/charts/(traefik|traefik-crd)-[0-9][^/]*\.tgz$`)

func chartName(spec string) string {
	if m := bundledChartURL.FindStringSubmatch(spec); m != nil {
		return m[1]
	}
	return ""
}

// syncCharts renders and applies every HelmChart whose chart or values changed since its last render.
func (d *deployer) syncCharts(ctx context.Context) {
	charts, err := d.dyn.Resource(helmChartGVR).Namespace("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for i := range charts.Items {
		chart := &charts.Items[i]
		key := "HelmChart " + chart.GetNamespace() + "/" + chart.GetName()
		rendered, err := d.renderChart(ctx, chart)
		if err != nil {
			d.sayOnce(key, fmt.Sprintf("deploy: %s: %v", key, err))
			continue
		}
		if rendered == nil {
			continue
		}
		sum := sha256.Sum256(rendered)
		checksum := hex.EncodeToString(sum[:])
		annotations := chart.GetAnnotations()
		if annotations[chartChecksumAnnotation] == checksum {
			continue
		}
		var previous []string
		_ = json.Unmarshal([]byte(annotations[chartAppliedAnnotation]), &previous)
		applied, err := d.apply(ctx, rendered, previous)
		if err != nil {
			d.sayOnce(key, fmt.Sprintf("deploy: %s: %v (retried every 5 s)", key, err))
			continue
		}
		delete(d.lastError, key)
		refs, _ := json.Marshal(applied)
		patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]string{
			chartChecksumAnnotation: checksum, chartAppliedAnnotation: string(refs)}}})
		if _, err := d.dyn.Resource(helmChartGVR).Namespace(chart.GetNamespace()).Patch(ctx, chart.GetName(),
			types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
			logf("deploy: %s: %v", key, err)
			continue
		}
		logf("deploy: rendered %s (%d objects)", key, len(applied))
	}
}

func (d *deployer) sayOnce(key, message string) {
	if d.lastError[key] != message {
		logf("%s", message)
		d.lastError[key] = message
	}
}

// renderChart is the manifest of one HelmChart's release, or nil for a chart the stand-in does not render.
func (d *deployer) renderChart(ctx context.Context, chart *unstructured.Unstructured) ([]byte, error) {
	spec, _, _ := unstructured.NestedString(chart.Object, "spec", "chart")
	name := chartName(spec)
	if name == "" {
		return nil, fmt.Errorf("chart %q is not rendered: the lab's k3s has no helm-controller, only the bundled "+
			"traefik and traefik-crd charts are rendered by the stand-in", spec)
	}
	if name == "traefik-crd" {
		return chartFiles.ReadFile("charts/traefik-crd.yaml")
	}
	values, err := chartValues(ctx, d, chart)
	if err != nil {
		return nil, err
	}
	namespace, _, _ := unstructured.NestedString(chart.Object, "spec", "targetNamespace")
	if namespace == "" {
		namespace = chart.GetNamespace()
	}
	return renderTraefik(values, chart.GetName(), namespace)
}

// chartValues merges a HelmChart's values as helm-controller passes them to Helm: the chart's defaults, then
// spec.valuesContent, spec.set, and the valuesContent of the HelmChartConfig of the same name and namespace.
func chartValues(ctx context.Context, d *deployer, chart *unstructured.Unstructured) (map[string]any, error) {
	values := traefikDefaults()
	content, _, _ := unstructured.NestedString(chart.Object, "spec", "valuesContent")
	if err := mergeYAML(values, content, "HelmChart valuesContent"); err != nil {
		return nil, err
	}
	set, _, _ := unstructured.NestedMap(chart.Object, "spec", "set")
	for key, value := range set {
		parts := strings.Split(key, ".")
		if err := unstructured.SetNestedField(values, value, parts...); err != nil {
			return nil, fmt.Errorf("spec.set %s: %w", key, err)
		}
	}
	config, err := d.dyn.Resource(helmChartConfigGVR).Namespace(chart.GetNamespace()).Get(ctx, chart.GetName(), metav1.GetOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, err
	}
	if err == nil {
		content, _, _ := unstructured.NestedString(config.Object, "spec", "valuesContent")
		if err := mergeYAML(values, content, "HelmChartConfig valuesContent"); err != nil {
			return nil, err
		}
	}
	return values, checkValuePaths(values)
}

func mergeYAML(into map[string]any, content, what string) error {
	var overlay map[string]any
	if err := yaml.Unmarshal([]byte(content), &overlay); err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	deepMerge(into, overlay)
	return nil
}

// deepMerge merges overlay into base as Helm merges values files: maps key by key, anything else replaced; null
// deletes the key.
func deepMerge(base, overlay map[string]any) {
	for key, value := range overlay {
		if value == nil {
			delete(base, key)
			continue
		}
		if sub, ok := value.(map[string]any); ok {
			if current, ok := base[key].(map[string]any); ok {
				deepMerge(current, sub)
				continue
			}
		}
		base[key] = value
	}
}

// checkValuePaths refuses any value (leaf) that chart_values.txt does not list.
func checkValuePaths(values map[string]any) error {
	var patterns [][]string
	for _, line := range strings.Split(chartValuePaths, "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			patterns = append(patterns, strings.Split(line, "."))
		}
	}
	var unknown []string
	var walk func(prefix []string, value any)
	walk = func(prefix []string, value any) {
		if known(patterns, prefix, true) {
			return
		}
		sub, ok := value.(map[string]any)
		if !ok || len(sub) == 0 {
			if !known(patterns, prefix, false) {
				unknown = append(unknown, strings.Join(prefix, "."))
			}
			return
		}
		for key, v := range sub {
			walk(append(append([]string{}, prefix...), key), v)
		}
	}
	for key, value := range values {
		walk([]string{key}, value)
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return fmt.Errorf("values the lab's chart stand-in does not translate (see chart_values.txt): %s",
			strings.Join(unknown, ", "))
	}
	return nil
}

// known: path matches a pattern (subtree: only patterns ending in "*" count, which take everything below them).
func known(patterns [][]string, path []string, subtree bool) bool {
	for _, pattern := range patterns {
		wild := pattern[len(pattern)-1] == "*"
		if subtree != wild {
			continue
		}
		fixed := pattern
		if wild {
			fixed = pattern[:len(pattern)-1]
		}
		if len(fixed) != len(path) {
			continue
		}
		match := true
		for i, part := range fixed {
			if part != "<name>" && part != path[i] {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// traefikDefaults are the chart's defaults for the values the stand-in translates (chart 39's values.yaml).
func traefikDefaults() map[string]any {
	var values map[string]any
	_ = yaml.Unmarshal([]byte(`
image: {registry: docker.io, repository: traefik, tag: "", pullPolicy: IfNotPresent}
global: {checkNewVersion: true, sendAnonymousUsage: false}
deployment: {enabled: true, kind: Deployment, replicas: 1, terminationGracePeriodSeconds: 60}
ingressClass: {enabled: true, isDefaultClass: true, name: ""}
providers:
  kubernetesCRD: {enabled: true, allowEmptyServices: true}
  kubernetesIngress: {enabled: true, allowEmptyServices: true, publishedService: {enabled: true}}
api: {dashboard: true}
metrics: {prometheus: {entryPoint: metrics}}
logs: {general: {level: INFO}, access: {enabled: false}}
rbac: {enabled: true}
ports:
  traefik: {port: 8080, expose: {default: false}, exposedPort: 8080, protocol: TCP}
  web: {port: 8000, expose: {default: true}, exposedPort: 80, protocol: TCP}
  websecure: {port: 8443, expose: {default: true}, exposedPort: 443, protocol: TCP, tls: {enabled: true}}
  metrics: {port: 9100, expose: {default: false}, exposedPort: 9100, protocol: TCP}
service: {enabled: true, type: LoadBalancer}
`), &values)
	return values
}

func str(values map[string]any, path ...string) string {
	v, found, _ := unstructured.NestedFieldNoCopy(values, path...)
	if !found || v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func boolean(values map[string]any, path ...string) bool {
	v, _, _ := unstructured.NestedFieldNoCopy(values, path...)
	b, ok := v.(bool)
	return ok && b
}

func number(values map[string]any, path ...string) int64 {
	v, _, _ := unstructured.NestedFieldNoCopy(values, path...)
	switch n := v.(type) {
	case int64:
		return n
	case float64:
		return int64(n)
	case string:
		i, _ := strconv.ParseInt(n, 10, 64)
		return i
	}
	return 0
}

func stringList(values map[string]any, path ...string) []string {
	v, _, _ := unstructured.NestedFieldNoCopy(values, path...)
	list, _ := v.([]any)
	var out []string
	for _, item := range list {
		out = append(out, fmt.Sprint(item))
	}
	return out
}

func field(values map[string]any, path ...string) any {
	v, _, _ := unstructured.NestedFieldNoCopy(values, path...)
	return v
}

// traefikArgs are the arguments the chart's pod template gives Traefik for these values.
func traefikArgs(values map[string]any, namespace, service string) ([]string, []string) {
	ports, _ := values["ports"].(map[string]any)
	names := make([]string, 0, len(ports))
	for name, port := range ports {
		if port != nil {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var args []string
	for _, name := range names {
		port, _ := ports[name].(map[string]any)
		protocol := strings.ToLower(str(port, "protocol"))
		if protocol == "" {
			protocol = "tcp"
		}
		args = append(args, fmt.Sprintf("--entryPoints.%s.address=:%d/%s", name, number(port, "port"), protocol))
	}
	args = append(args, "--api.dashboard="+strconv.FormatBool(boolean(values, "api", "dashboard")), "--ping=true")
	if entry := str(values, "metrics", "prometheus", "entryPoint"); entry != "" {
		args = append(args, "--metrics.prometheus=true", "--metrics.prometheus.entrypoint="+entry)
	}
	if boolean(values, "providers", "kubernetesCRD", "enabled") {
		args = append(args, "--providers.kubernetescrd")
		if boolean(values, "providers", "kubernetesCRD", "allowEmptyServices") {
			args = append(args, "--providers.kubernetescrd.allowEmptyServices=true")
		}
	}
	if boolean(values, "providers", "kubernetesIngress", "enabled") {
		args = append(args, "--providers.kubernetesingress")
		if boolean(values, "providers", "kubernetesIngress", "allowEmptyServices") {
			args = append(args, "--providers.kubernetesingress.allowEmptyServices=true")
		}
		if boolean(values, "providers", "kubernetesIngress", "publishedService", "enabled") {
			args = append(args, "--providers.kubernetesingress.ingressendpoint.publishedservice="+namespace+"/"+service)
		}
	}
	for _, name := range names {
		port, _ := ports[name].(map[string]any)
		if to := str(port, "redirections", "entryPoint", "to"); to != "" {
			target := to
			if other, ok := ports[to].(map[string]any); ok { // a port's name: its exposed port, as the chart does
				target = fmt.Sprintf(":%d", number(other, "exposedPort"))
			}
			args = append(args, fmt.Sprintf("--entryPoints.%s.http.redirections.entryPoint.to=%s", name, target))
			if scheme := str(port, "redirections", "entryPoint", "scheme"); scheme != "" {
				args = append(args, fmt.Sprintf("--entryPoints.%s.http.redirections.entryPoint.scheme=%s", name, scheme))
			}
			if field(port, "redirections", "entryPoint", "permanent") != nil {
				args = append(args, fmt.Sprintf("--entryPoints.%s.http.redirections.entryPoint.permanent=%t", name,
					boolean(port, "redirections", "entryPoint", "permanent")))
			}
		}
		for _, trust := range []string{"proxyProtocol", "forwardedHeaders"} {
			if ips := stringList(port, trust, "trustedIPs"); len(ips) > 0 {
				args = append(args, fmt.Sprintf("--entryPoints.%s.%s.trustedIPs=%s", name, trust, strings.Join(ips, ",")))
			}
			if boolean(port, trust, "insecure") {
				args = append(args, fmt.Sprintf("--entryPoints.%s.%s.insecure", name, trust))
			}
		}
		if boolean(port, "tls", "enabled") {
			args = append(args, fmt.Sprintf("--entryPoints.%s.http.tls=true", name))
		}
	}
	if level := str(values, "logs", "general", "level"); level != "" {
		args = append(args, "--log.level="+level)
	}
	if boolean(values, "logs", "access", "enabled") {
		args = append(args, "--accesslog=true")
	}
	if boolean(values, "global", "checkNewVersion") {
		args = append(args, "--global.checknewversion")
	}
	if boolean(values, "global", "sendAnonymousUsage") {
		args = append(args, "--global.sendanonymoususage")
	}
	args = append(args, stringList(values, "additionalArguments")...)
	return args, names
}

// renderTraefik renders the traefik chart's objects for these values (release name and namespace as Helm's).
func renderTraefik(values map[string]any, release, namespace string) ([]byte, error) {
	if !boolean(values, "deployment", "enabled") {
		return []byte{}, nil
	}
	name := release
	instance := release + "-" + namespace
	labels := map[string]any{"app.kubernetes.io/name": "traefik", "app.kubernetes.io/instance": instance}
	meta := func(kind, apiVersion, objName string, namespaced bool) map[string]any {
		m := map[string]any{"name": objName, "labels": labels, "annotations": map[string]any{
			"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": namespace}}
		if namespaced {
			m["namespace"] = namespace
		}
		return map[string]any{"apiVersion": apiVersion, "kind": kind, "metadata": m}
	}
	args, portNames := traefikArgs(values, namespace, name)
	ports, _ := values["ports"].(map[string]any)
	var containerPorts, servicePorts []any
	for _, portName := range portNames {
		port, _ := ports[portName].(map[string]any)
		protocol := str(port, "protocol")
		if protocol == "" {
			protocol = "TCP"
		}
		inside := number(port, "port")
		if c := number(port, "containerPort"); c != 0 {
			inside = c
		}
		cp := map[string]any{"name": portName, "containerPort": inside, "protocol": protocol}
		if host := number(port, "hostPort"); host != 0 {
			cp["hostPort"] = host
		}
		containerPorts = append(containerPorts, cp)
		if boolean(port, "expose", "default") {
			servicePorts = append(servicePorts, map[string]any{"name": portName, "port": number(port, "exposedPort"),
				"targetPort": portName, "protocol": protocol})
		}
	}
	image := strings.TrimSuffix(str(values, "image", "registry"), "/")
	if registry := str(values, "global", "systemDefaultRegistry"); registry != "" {
		image = registry
	}
	image += "/" + str(values, "image", "repository") + ":" + str(values, "image", "tag")
	pingPort := int64(8080)
	if traefik, ok := ports["traefik"].(map[string]any); ok {
		pingPort = number(traefik, "port")
	}
	probe := func(threshold int64) map[string]any {
		return map[string]any{"httpGet": map[string]any{"path": "/ping", "port": pingPort,
			"scheme": "HTTP"}, "failureThreshold": threshold, "initialDelaySeconds": 2, "periodSeconds": 10,
			"successThreshold": 1, "timeoutSeconds": 2}
	}
	var env []any
	env = append(env, map[string]any{"name": "POD_NAME", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.name"}}},
		map[string]any{"name": "POD_NAMESPACE", "valueFrom": map[string]any{"fieldRef": map[string]any{"fieldPath": "metadata.namespace"}}})
	if extra, ok := field(values, "env").([]any); ok {
		env = append(env, extra...)
	}
	podMeta := map[string]any{"labels": labels}
	if annotations := field(values, "deployment", "podAnnotations"); annotations != nil {
		podMeta["annotations"] = annotations
	}
	if podLabels, ok := field(values, "deployment", "podLabels").(map[string]any); ok {
		merged := map[string]any{}
		for k, v := range podLabels {
			merged[k] = v
		}
		for k, v := range labels {
			merged[k] = v
		}
		podMeta["labels"] = merged
	}
	podSpec := map[string]any{
		"serviceAccountName":            name,
		"automountServiceAccountToken":  true,
		"terminationGracePeriodSeconds": number(values, "deployment", "terminationGracePeriodSeconds"),
		"securityContext": map[string]any{"runAsGroup": 65532, "runAsNonRoot": true, "runAsUser": 65532},
		"containers": []any{map[string]any{
			"name": "traefik", "image": image, "imagePullPolicy": str(values, "image", "pullPolicy"),
			"args": args, "env": env, "ports": containerPorts,
			"readinessProbe": probe(1), "livenessProbe": probe(3),
			"securityContext": map[string]any{"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
				"capabilities": map[string]any{"drop": []any{"ALL"}}},
			"volumeMounts": []any{map[string]any{"name": "data", "mountPath": "/data"},
				map[string]any{"name": "tmp", "mountPath": "/tmp"}},
		}},
		"volumes": []any{map[string]any{"name": "data", "emptyDir": map[string]any{}},
			map[string]any{"name": "tmp", "emptyDir": map[string]any{}}},
	}
	for _, key := range []string{"priorityClassName", "tolerations", "nodeSelector"} {
		if v := field(values, key); v != nil {
			podSpec[key] = v
		}
	}
	selector := map[string]any{"matchLabels": labels}
	template := map[string]any{"metadata": podMeta, "spec": podSpec}
	var workload map[string]any
	switch kind := str(values, "deployment", "kind"); kind {
	case "DaemonSet":
		workload = meta("DaemonSet", "apps/v1", name, true)
		workload["spec"] = map[string]any{"selector": selector, "template": template, "minReadySeconds": 0,
			"updateStrategy": map[string]any{"type": "RollingUpdate",
				"rollingUpdate": map[string]any{"maxUnavailable": 1, "maxSurge": 0}}}
	case "Deployment":
		workload = meta("Deployment", "apps/v1", name, true)
		workload["spec"] = map[string]any{"selector": selector, "template": template,
			"replicas": number(values, "deployment", "replicas")}
	default:
		return nil, fmt.Errorf("deployment.kind %q: the chart takes Deployment or DaemonSet", kind)
	}
	objects := []map[string]any{meta("ServiceAccount", "v1", name, true)}
	if boolean(values, "rbac", "enabled") {
		role := meta("ClusterRole", "rbac.authorization.k8s.io/v1", instance, false)
		role["rules"] = traefikRules()
		binding := meta("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", instance, false)
		binding["roleRef"] = map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": instance}
		binding["subjects"] = []any{map[string]any{"kind": "ServiceAccount", "name": name, "namespace": namespace}}
		objects = append(objects, role, binding)
	}
	if boolean(values, "ingressClass", "enabled") {
		className := str(values, "ingressClass", "name")
		if className == "" {
			className = name
		}
		class := meta("IngressClass", "networking.k8s.io/v1", className, false)
		class["metadata"].(map[string]any)["annotations"].(map[string]any)["ingressclass.kubernetes.io/is-default-class"] =
			strconv.FormatBool(boolean(values, "ingressClass", "isDefaultClass"))
		class["spec"] = map[string]any{"controller": "traefik.io/ingress-controller"}
		objects = append(objects, class)
	}
	objects = append(objects, workload)
	if boolean(values, "service", "enabled") && len(servicePorts) > 0 {
		service := meta("Service", "v1", name, true)
		if annotations, ok := field(values, "service", "annotations").(map[string]any); ok {
			for k, v := range annotations {
				service["metadata"].(map[string]any)["annotations"].(map[string]any)[k] = v
			}
		}
		spec := map[string]any{"type": str(values, "service", "type"), "selector": labels, "ports": servicePorts}
		if policy := str(values, "service", "ipFamilyPolicy"); policy != "" {
			spec["ipFamilyPolicy"] = policy
		}
		if extra, ok := field(values, "service", "spec").(map[string]any); ok {
			for k, v := range extra {
				spec[k] = v
			}
		}
		service["spec"] = spec
		objects = append(objects, service)
	}
	var out []byte
	for _, object := range objects {
		data, err := yaml.Marshal(object)
		if err != nil {
			return nil, err
		}
		out = append(append(out, "---\n"...), data...)
	}
	return out, nil
}

// traefikRules are Traefik's RBAC rules for its Kubernetes providers (Traefik's kubernetes-crd-rbac.yml, which the
// chart's ClusterRole carries too).
func traefikRules() []any {
	rule := func(groups, resources, verbs []string) map[string]any {
		return map[string]any{"apiGroups": groups, "resources": resources, "verbs": verbs}
	}
	read := []string{"get", "list", "watch"}
	return []any{
		rule([]string{""}, []string{"services", "secrets", "nodes", "configmaps"}, read),
		rule([]string{""}, []string{"pods"}, []string{"get"}),
		rule([]string{"discovery.k8s.io"}, []string{"endpointslices"}, []string{"list", "watch"}),
		rule([]string{"extensions", "networking.k8s.io"}, []string{"ingresses", "ingressclasses"}, read),
		rule([]string{"extensions", "networking.k8s.io"}, []string{"ingresses/status"}, []string{"update"}),
		rule([]string{"traefik.io"}, []string{"middlewares", "middlewaretcps", "ingressroutes", "traefikservices",
			"ingressroutetcps", "ingressrouteudps", "tlsoptions", "tlsstores", "serverstransports", "serverstransporttcps"}, read),
	}
}
