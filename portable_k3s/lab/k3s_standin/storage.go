package main

// LOCAL-PATH PROVISIONER STAND-IN. k3s deploys rancher's local-path-provisioner (manifests/local-storage.yaml) for
// its default StorageClass "local-path"; that provisioner's module is not served here, so the server runs this loop
// in its place, doing what the provisioner does with k3s's configuration: a claim of the class, once the scheduler
// has picked its pod's node (WaitForFirstConsumer), gets a hostPath PersistentVolume bound to it at
// <storage>/pvc-<uid>_<namespace>_<name> on that node, the directory made 0777 by a helper pod (busybox, as the
// provisioner's setup script); a released volume's directory is removed by a helper pod and the volume deleted.

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const (
	localPathProvisioner = "rancher.io/local-path"
	localPathClass       = "local-path"
	defaultStorageDir    = dataDir + "/storage"
	provisionedBy        = "pv.kubernetes.io/provisioned-by"
	selectedNode         = "volume.kubernetes.io/selected-node"
	helperImage          = "docker.io/library/busybox:portable-k3s-lab" // the lab's busybox (images.py)
)

func provisionLocalPaths(ctx context.Context, client *kubernetes.Clientset, cfg config) {
	dir := cfg.str("default-local-storage-path")
	if dir == "" {
		dir = defaultStorageDir
	}
	said := map[string]string{}
	sayOnce := func(key string, err error) {
		if err != nil && said[key] != err.Error() {
			logf("local-path: %s: %v", key, err)
			said[key] = err.Error()
		}
	}
	for ctx.Err() == nil {
		claims, err := client.CoreV1().PersistentVolumeClaims("").List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range claims.Items {
				claim := &claims.Items[i]
				if claim.Spec.VolumeName != "" || claim.Annotations[selectedNode] == "" || claim.Spec.StorageClassName == nil ||
					*claim.Spec.StorageClassName != localPathClass || claim.DeletionTimestamp != nil {
					continue
				}
				key := claim.Namespace + "/" + claim.Name
				sayOnce(key, provisionClaim(ctx, client, claim, dir))
			}
		}
		volumes, err := client.CoreV1().PersistentVolumes().List(ctx, metav1.ListOptions{})
		if err == nil {
			for i := range volumes.Items {
				volume := &volumes.Items[i]
				if volume.Annotations[provisionedBy] != localPathProvisioner || volume.Status.Phase != corev1.VolumeReleased ||
					volume.Spec.PersistentVolumeReclaimPolicy != corev1.PersistentVolumeReclaimDelete {
					continue
				}
				sayOnce(volume.Name, deleteVolume(ctx, client, volume))
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

func provisionClaim(ctx context.Context, client *kubernetes.Clientset, claim *corev1.PersistentVolumeClaim, dir string) error {
	node := claim.Annotations[selectedNode]
	name := "pvc-" + string(claim.UID)
	path := filepath.Join(dir, fmt.Sprintf("%s_%s_%s", name, claim.Namespace, claim.Name))
	if err := runHelper(ctx, client, node, "create-"+name, path, `mkdir -m 0777 -p "$VOL_DIR" && chmod 700 "$VOL_DIR/.."`); err != nil {
		return err
	}
	size := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	directory := corev1.HostPathDirectoryOrCreate
	volume := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{provisionedBy: localPathProvisioner}},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:                      corev1.ResourceList{corev1.ResourceStorage: size},
			AccessModes:                   claim.Spec.AccessModes,
			PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimDelete,
			StorageClassName:              localPathClass,
			ClaimRef: &corev1.ObjectReference{Kind: "PersistentVolumeClaim", APIVersion: "v1", Namespace: claim.Namespace,
				Name: claim.Name, UID: claim.UID},
			PersistentVolumeSource: corev1.PersistentVolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: path, Type: &directory}},
			NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
				MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname",
					Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
			}}}},
		},
	}
	if size.IsZero() {
		volume.Spec.Capacity[corev1.ResourceStorage] = resource.MustParse("1Gi")
	}
	if _, err := client.CoreV1().PersistentVolumes().Create(ctx, volume, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	logf("local-path: %s/%s: volume %s at %s on %s", claim.Namespace, claim.Name, name, path, node)
	return nil
}

func deleteVolume(ctx context.Context, client *kubernetes.Clientset, volume *corev1.PersistentVolume) error {
	if volume.Spec.HostPath != nil && volume.Spec.NodeAffinity != nil && volume.Spec.NodeAffinity.Required != nil {
		node := volume.Spec.NodeAffinity.Required.NodeSelectorTerms[0].MatchExpressions[0].Values[0]
		if err := runHelper(ctx, client, node, "delete-"+volume.Name, volume.Spec.HostPath.Path, `rm -rf "$VOL_DIR"`); err != nil {
			return err
		}
	}
	if err := client.CoreV1().PersistentVolumes().Delete(ctx, volume.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	logf("local-path: deleted volume %s and its directory", volume.Name)
	return nil
}

// runHelper runs script with VOL_DIR=path in a pod on node (the storage directory mounted at the same path) and
// waits for it to succeed, as the provisioner's helper pods do.
func runHelper(ctx context.Context, client *kubernetes.Clientset, node, name, path, script string) error {
	pods := client.CoreV1().Pods("kube-system")
	parent := filepath.Dir(path)
	directory := corev1.HostPathDirectoryOrCreate
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "helper-pod-" + name}, // the provisioner's own naming
		Spec: corev1.PodSpec{
			NodeName:      node,
			RestartPolicy: corev1.RestartPolicyNever,
			Tolerations:   []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: "helper", Image: helperImage, ImagePullPolicy: corev1.PullIfNotPresent,
				Command: []string{"sh", "-c", script}, Env: []corev1.EnvVar{{Name: "VOL_DIR", Value: path}},
				VolumeMounts: []corev1.VolumeMount{{Name: "data", MountPath: parent}},
			}},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				HostPath: &corev1.HostPathVolumeSource{Path: parent, Type: &directory}}}},
		},
	}
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return err
	}
	defer pods.Delete(context.Background(), pod.Name, metav1.DeleteOptions{})
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		current, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err == nil {
			switch current.Status.Phase {
			case corev1.PodSucceeded:
				return nil
			case corev1.PodFailed:
				return fmt.Errorf("helper pod %s failed on %s", pod.Name, node)
			}
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("helper pod %s did not finish on %s within 2 minutes", pod.Name, node)
}
