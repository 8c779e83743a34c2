package main

// k3s's deploy controller: every file in server/manifests (not a dotfile; .yaml, .yml or .json) is applied when it
// appears or changes, tracked by an AddOn named after the file up to its first dot (spec.source, spec.checksum);
// objects a changed file no longer lists are pruned; a removed file deletes nothing. k3s's CRDs (AddOn,
// HelmChart, HelmChartConfig) are installed first. The stand-in has no helm-controller: the two charts k3s bundles
// are rendered by its HELM CHART STAND-IN (charts.go), any other HelmChart is stored, not installed.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	manifestsDir      = serverDir + "/manifests"
	fieldManager      = "k3s-deploy"
	appliedAnnotation = "portable-k3s.lab/applied-objects"
)

//go:embed manifests/*.yaml
var bundledManifests embed.FS

// writeBundledManifests writes k3s's own add-ons (CoreDNS, Traefik, local-path's StorageClass) into server/manifests at start, as k3s does; a
// disabled one's file is removed.
func writeBundledManifests(cfg config) error {
	entries, err := bundledManifests.ReadDir("manifests")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(manifestsDir, 0o700); err != nil {
		return err
	}
	for _, entry := range entries {
		path := filepath.Join(manifestsDir, entry.Name())
		if cfg.disabled(strings.TrimSuffix(entry.Name(), ".yaml")) {
			if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
				return err
			}
			continue
		}
		data, err := bundledManifests.ReadFile("manifests/" + entry.Name())
		if err != nil {
			return err
		}
		if err := writeIfChanged(path, data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

var addonGVR = schema.GroupVersionResource{Group: "k3s.cattle.io", Version: "v1", Resource: "addons"}

func crd(group, kind, plural string, namespaced bool) string {
	scope := "Cluster"
	if namespaced {
		scope = "Namespaced"
	}
	return fmt.Sprintf(`apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: %s.%s
spec:
  group: %s
  names: {kind: %s, listKind: %sList, plural: %s, singular: %s}
  scope: %s
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema: {type: object, x-kubernetes-preserve-unknown-fields: true}
    subresources: {status: {}}
`, plural, group, group, kind, kind, plural, strings.ToLower(kind), scope)
}

var k3sCRDs = strings.Join([]string{
	crd("k3s.cattle.io", "AddOn", "addons", true),
	crd("helm.cattle.io", "HelmChart", "helmcharts", true),
	crd("helm.cattle.io", "HelmChartConfig", "helmchartconfigs", true),
}, "---\n")

type deployer struct {
	dyn       dynamic.Interface
	mapper    *restmapper.DeferredDiscoveryRESTMapper
	lastError map[string]string // by file name
}

func deployManifests(ctx context.Context) {
	rc, err := clientcmd.BuildConfigFromFlags("", filepath.Join(serverDir, "cred", "supervisor.kubeconfig"))
	if err != nil {
		logf("deploy: %v", err)
		return
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		logf("deploy: %v", err)
		return
	}
	d := &deployer{dynamic.NewForConfigOrDie(rc), restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(client.Discovery())),
		map[string]string{}}
	if err := os.MkdirAll(manifestsDir, 0o700); err != nil {
		logf("deploy: %v", err)
	}
	for ctx.Err() == nil {
		if _, err := d.apply(ctx, []byte(k3sCRDs), nil); err != nil {
			logf("deploy: k3s's CRDs: %v", err)
		} else {
			d.mapper.Reset()
			d.sync(ctx)
			d.syncCharts(ctx)
		}
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

func (d *deployer) sync(ctx context.Context) {
	entries, err := os.ReadDir(manifestsDir)
	if err != nil {
		return
	}
	for _, entry := range entries {
		name := entry.Name()
		if entry.IsDir() || strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml") || strings.HasSuffix(name, ".json")) {
			continue
		}
		path := filepath.Join(manifestsDir, name)
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		sum := sha256.Sum256(data)
		checksum := hex.EncodeToString(sum[:])
		addonName := strings.SplitN(name, ".", 2)[0]
		addon, err := d.dyn.Resource(addonGVR).Namespace("kube-system").Get(ctx, addonName, metav1.GetOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			continue
		}
		var previous []string
		if addon != nil && err == nil {
			if current, _, _ := unstructured.NestedString(addon.Object, "spec", "checksum"); current == checksum {
				continue
			}
			_ = json.Unmarshal([]byte(addon.GetAnnotations()[appliedAnnotation]), &previous)
		}
		applied, err := d.apply(ctx, data, previous)
		if err != nil {
			if d.lastError[name] != err.Error() { // said once, not at every pass
				logf("deploy: %s: %v (retried every 5 s)", name, err)
				d.lastError[name] = err.Error()
			}
			continue // retried on the next pass: the checksum is recorded only once everything applied
		}
		delete(d.lastError, name)
		refs, _ := json.Marshal(applied)
		obj := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "k3s.cattle.io/v1", "kind": "AddOn",
			"metadata": map[string]any{"name": addonName, "namespace": "kube-system",
				"annotations": map[string]any{appliedAnnotation: string(refs)}},
			"spec": map[string]any{"source": path, "checksum": checksum},
		}}
		body, _ := json.Marshal(obj.Object)
		force := true
		if _, err := d.dyn.Resource(addonGVR).Namespace("kube-system").Patch(ctx, addonName, types.ApplyPatchType, body,
			metav1.PatchOptions{FieldManager: fieldManager, Force: &force}); err != nil {
			logf("deploy: AddOn %s: %v", addonName, err)
		} else {
			logf("deploy: applied %s (%d objects)", name, len(applied))
		}
	}
}

// apply server-side-applies every object of data (CRDs first) and deletes those of previous it no longer lists;
// it returns the applied objects' references ("group/version/Kind/namespace/name").
func (d *deployer) apply(ctx context.Context, data []byte, previous []string) ([]string, error) {
	var objects []*unstructured.Unstructured
	decoder := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var raw map[string]any
		if err := decoder.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return nil, err
		}
		if len(raw) == 0 {
			continue
		}
		obj := &unstructured.Unstructured{Object: raw}
		if obj.IsList() {
			list, err := obj.ToList()
			if err != nil {
				return nil, err
			}
			for i := range list.Items {
				objects = append(objects, &list.Items[i])
			}
			continue
		}
		objects = append(objects, obj)
	}
	sort.SliceStable(objects, func(i, j int) bool {
		return objects[i].GetKind() == "CustomResourceDefinition" && objects[j].GetKind() != "CustomResourceDefinition"
	})
	var applied []string
	var failed []string
	for _, obj := range objects {
		ref, err := d.applyOne(ctx, obj)
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s %s: %v", obj.GetKind(), obj.GetName(), err))
			if obj.GetKind() == "CustomResourceDefinition" {
				continue
			}
			d.mapper.Reset()
			continue
		}
		if obj.GetKind() == "CustomResourceDefinition" {
			d.mapper.Reset()
		}
		applied = append(applied, ref)
	}
	if len(failed) > 0 {
		return applied, errors.New(strings.Join(failed, "; "))
	}
	keep := map[string]bool{}
	for _, ref := range applied {
		keep[ref] = true
	}
	for _, ref := range previous {
		if !keep[ref] {
			d.deleteRef(ctx, ref)
		}
	}
	return applied, nil
}

func (d *deployer) resource(gvk schema.GroupVersionKind) (*meta.RESTMapping, error) {
	return d.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
}

func (d *deployer) applyOne(ctx context.Context, obj *unstructured.Unstructured) (string, error) {
	gvk := obj.GroupVersionKind()
	mapping, err := d.resource(gvk)
	if err != nil {
		return "", err
	}
	body, err := json.Marshal(obj.Object)
	if err != nil {
		return "", err
	}
	force := true
	ns := obj.GetNamespace()
	var ri dynamic.ResourceInterface = d.dyn.Resource(mapping.Resource)
	if mapping.Scope.Name() == meta.RESTScopeNameNamespace {
		if ns == "" {
			ns = "default"
		}
		ri = d.dyn.Resource(mapping.Resource).Namespace(ns)
	} else {
		ns = ""
	}
	if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, body, metav1.PatchOptions{FieldManager: fieldManager, Force: &force}); err != nil {
		return "", err
	}
	return strings.Join([]string{gvk.Group, gvk.Version, gvk.Kind, ns, obj.GetName()}, "/"), nil
}

func (d *deployer) deleteRef(ctx context.Context, ref string) {
	parts := strings.Split(ref, "/")
	if len(parts) != 5 {
		return
	}
	mapping, err := d.resource(schema.GroupVersionKind{Group: parts[0], Version: parts[1], Kind: parts[2]})
	if err != nil {
		return
	}
	var ri dynamic.ResourceInterface = d.dyn.Resource(mapping.Resource)
	if parts[3] != "" {
		ri = d.dyn.Resource(mapping.Resource).Namespace(parts[3])
	}
	if err := ri.Delete(ctx, parts[4], metav1.DeleteOptions{}); err == nil {
		logf("deploy: pruned %s", ref)
	}
}
