package main

// The cluster's bootstrap data in etcd, encrypted with the token as k3s keeps it, so a snapshot carries the CAs
// with the objects; `k3s etcd-snapshot save` (taken by the server, copied to S3 with etcd-s3: see s3.go);
// `k3s server --cluster-reset [--cluster-reset-restore-path]`.

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const snapshotDir = serverDir + "/db/snapshots"

// Files that make a cluster's identity: restored with a snapshot, shared by every server.
var bootstrapFiles = []string{
	"server-ca.crt", "server-ca.key", "client-ca.crt", "client-ca.key",
	"request-header-ca.crt", "request-header-ca.key", "service.key",
}

func bootstrapKey(pass string) string {
	sum := sha256.Sum256([]byte(pass))
	return "/bootstrap/" + hex.EncodeToString(sum[:])[:12]
}

// bootstrapCipher is AES-GCM under a key derived from the token's passphrase and salt.
func bootstrapCipher(pass string, salt []byte) (cipher.AEAD, error) {
	key, err := pbkdf2.Key(sha256.New, pass, salt, 4096, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func sealBootstrap(pass string, files map[string]string) ([]byte, error) {
	plain, err := json.Marshal(files)
	if err != nil {
		return nil, err
	}
	salt := make([]byte, 8)
	_, _ = rand.Read(salt)
	gcm, err := bootstrapCipher(pass, salt)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, gcm.NonceSize())
	_, _ = rand.Read(nonce)
	return append(append(salt, nonce...), gcm.Seal(nil, nonce, plain, nil)...), nil
}

func openBootstrap(pass string, sealed []byte) (map[string]string, error) {
	if len(sealed) < 8+12 {
		return nil, errors.New("bootstrap data too short")
	}
	gcm, err := bootstrapCipher(pass, sealed[:8])
	if err != nil {
		return nil, err
	}
	plain, err := gcm.Open(nil, sealed[8:8+gcm.NonceSize()], sealed[8+gcm.NonceSize():], nil)
	if err != nil {
		return nil, errors.New("bootstrap data cannot be decrypted with this token")
	}
	files := map[string]string{}
	return files, json.Unmarshal(plain, &files)
}

func localEtcd() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
}

// reconcileBootstrap: with bootstrap data for this token in etcd, the CA files on disk become those (a restored
// or joined cluster); without, this server's files are stored there.
func reconcileBootstrap(ctx context.Context, pass string) error {
	client, err := localEtcd()
	if err != nil {
		return err
	}
	defer client.Close()
	resp, err := client.Get(ctx, bootstrapKey(pass))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	if len(resp.Kvs) > 0 {
		files, err := openBootstrap(pass, resp.Kvs[0].Value)
		if err != nil {
			return err
		}
		for name, content := range files {
			if err := writeIfChanged(tlsPath(name), []byte(content), 0o600); err != nil {
				return err
			}
		}
		return nil
	}
	files := map[string]string{}
	for _, name := range bootstrapFiles {
		data, err := os.ReadFile(tlsPath(name))
		if err != nil {
			return err
		}
		files[name] = string(data)
	}
	sealed, err := sealBootstrap(pass, files)
	if err != nil {
		return err
	}
	_, err = client.Put(ctx, bootstrapKey(pass), string(sealed))
	return err
}

var snapshotName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// snapshotRequest is k3s's etcd.SnapshotRequest, the body of a POST to the server's /db/snapshot; of its
// operations only save is emulated.
type snapshotRequest struct {
	Operation string   `json:"operation"`
	Name      []string `json:"name,omitempty"`
	S3        *etcdS3  `json:"s3,omitempty"`
}

// snapshotResult is k3s's managed.SnapshotResult: the snapshots made (the local one, and again for S3).
type snapshotResult struct {
	Created []string `json:"created,omitempty"`
	Deleted []string `json:"deleted,omitempty"`
}

// etcdSnapshotCommand is `k3s etcd-snapshot save [--name NAME] [--s3 ... | --etcd-s3-... flags]`: as in k3s, the
// running server takes the snapshot (POST /db/snapshot with the server token), with the S3 settings of this
// command's config.yaml and flags in the request body, never in argv. Save never prunes, as in k3s.
func etcdSnapshotCommand(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] != "save" {
		fmt.Fprintln(os.Stderr, "k3s etcd-snapshot: only 'save [--name NAME] [--etcd-s3-... flags]' is supported by the lab's stand-in")
		return 1
	}
	result, err := saveCommand(ctx, args[1:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "k3s etcd-snapshot save: %v\n", err)
		return 1
	}
	for _, created := range result.Created {
		fmt.Printf("Snapshot %s saved.\n", created)
	}
	return 0
}

func saveCommand(ctx context.Context, args []string) (*snapshotResult, error) {
	name, overrides, err := saveArgs(args)
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(serverTokenPath)
	if err != nil {
		return nil, fmt.Errorf("no k3s server on this host (no %s)", serverTokenPath)
	}
	cfg, err := readConfig(overrides)
	if err != nil {
		return nil, err
	}
	s3, err := etcdS3FromConfig(cfg)
	if err != nil {
		return nil, err
	}
	return requestSnapshot(ctx, strings.TrimSpace(string(token)), snapshotRequest{
		Operation: "save", Name: []string{name}, S3: s3,
	})
}

// saveArgs reads --name and the S3 flags (--s3-X is k3s's alias of --etcd-s3-X), which override config.yaml.
func saveArgs(args []string) (string, []string, error) {
	name := "on-demand"
	var overrides []string
	for i := 0; i < len(args); i++ {
		key, value, hasValue := strings.Cut(strings.TrimPrefix(args[i], "--"), "=")
		if strings.HasPrefix(key, "s3") {
			key = "etcd-" + key
		}
		if !strings.HasPrefix(args[i], "--") || (key != "name" && key != "etcd-s3" && !strings.HasPrefix(key, "etcd-s3-")) {
			return "", nil, fmt.Errorf("unsupported argument %s (the lab's stand-in takes --name and the S3 flags)", args[i])
		}
		if !hasValue && !boolFlags[key] {
			if i+1 == len(args) {
				return "", nil, fmt.Errorf("flag --%s needs a value", key)
			}
			i++
			value, hasValue = args[i], true
		}
		switch {
		case key == "name":
			name = value
		case hasValue:
			overrides = append(overrides, "--"+key+"="+value)
		default:
			overrides = append(overrides, "--"+key)
		}
	}
	if !snapshotName.MatchString(name) {
		return "", nil, fmt.Errorf("invalid --name %q", name)
	}
	return name, overrides, nil
}

// requestSnapshot POSTs the request to this host's server, whose CA (server-ca.crt) is pinned.
func requestSnapshot(ctx context.Context, token string, request snapshotRequest) (*snapshotResult, error) {
	ca, err := os.ReadFile(tlsPath("server-ca.crt"))
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(request)
	if err != nil {
		return nil, err
	}
	timeout := 2 * time.Minute
	if request.S3 != nil {
		timeout += request.S3.Timeout.Duration // room for the upload, as in k3s
	}
	client := &http.Client{Timeout: timeout, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: certPool(ca), MinVersion: tls.VersionTLS12},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost,
		fmt.Sprintf("https://127.0.0.1:%d/db/snapshot", supervisorPort), bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth("server", passphrase(token))
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("is k3s running here? %w", err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("see server log for details: %s: %s", resp.Status, strings.TrimSpace(string(answer)))
	}
	result := &snapshotResult{}
	return result, json.Unmarshal(answer, result)
}

// snapshotEndpoint is k3s's /db/snapshot on the supervisor, for the server token only: save a snapshot with the
// request's S3 settings over the server's own.
func (s *supervisor) snapshotEndpoint(w http.ResponseWriter, r *http.Request) {
	if _, pass, ok := r.BasicAuth(); !ok || subtle.ConstantTimeCompare([]byte(pass), []byte(s.passphrase)) != 1 {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	if r.Method != http.MethodPost {
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	var request snapshotRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&request); err != nil {
		http.Error(w, "invalid snapshot request", http.StatusBadRequest)
		return
	}
	if request.Operation != "save" {
		http.Error(w, "invalid snapshot operation (the lab's k3s stand-in emulates save only)", http.StatusBadRequest)
		return
	}
	name := "on-demand"
	if len(request.Name) > 0 {
		name = request.Name[0]
	}
	if !snapshotName.MatchString(name) {
		http.Error(w, fmt.Sprintf("invalid snapshot name %q", name), http.StatusBadRequest)
		return
	}
	result, status, err := s.saveSnapshot(r.Context(), name, overlay(s.etcdS3, request.S3))
	if err != nil {
		logf("Error in etcd-snapshot handler: %v", err)
		http.Error(w, err.Error(), status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(result)
}

// saveSnapshot is k3s's handleSave and Snapshot: with S3 settings, the S3 client first (made and its bucket checked
// on first use: a refusal fails the save, nothing is saved); the snapshot saved locally (with the extra metadata
// ConfigMap's data beside it, if there is one); then uploaded. A failed upload is logged, the local snapshot stays
// and the save succeeds, as in k3s. Every outcome goes to the stand-in's snapshots log.
func (s *supervisor) saveSnapshot(ctx context.Context, name string, s3 *etcdS3) (*snapshotResult, int, error) {
	if !s.snapshotMu.TryLock() {
		return nil, http.StatusInternalServerError, errors.New("snapshot save already in progress")
	}
	defer s.snapshotMu.Unlock()
	stamp := func() string { return time.Now().UTC().Format(time.RFC3339) }
	var client *s3Client
	if s3 != nil {
		var err error
		if s.s3 == nil {
			s.s3, err = newS3Controller(ctx, s.client, s.passphrase, s.cfg.nodeName())
		}
		if err == nil {
			client, err = s.s3.client(ctx, *s3)
		}
		if err != nil {
			err = fmt.Errorf("failed to initialize S3 client: %w", err)
			appendLine(snapshotsLog, fmt.Sprintf("%s s3-failed %s %s", stamp(), path.Join(s3.Bucket, s3.Folder), s3ErrorText(err)))
			return nil, http.StatusBadRequest, err
		}
	}
	extra := extraMetadata(ctx, s.client)
	now := time.Now().Round(time.Second)
	file := filepath.Join(snapshotDir, fmt.Sprintf("%s-%s-%d", name, s.cfg.nodeName(), now.Unix()))
	logf("Saving etcd snapshot to %s", file)
	if err := saveLocalSnapshot(ctx, file); err != nil {
		logf("Failed to take etcd snapshot: %v", err)
		return nil, http.StatusInternalServerError, err
	}
	if err := saveSnapshotMetadata(file, extra); err != nil {
		logf("Failed to save local snapshot metadata: %v", err)
	}
	appendLine(snapshotsLog, stamp()+" save "+file)
	result := &snapshotResult{Created: []string{filepath.Base(file)}}
	if client != nil {
		logf("Saving etcd snapshot %s to S3", filepath.Base(file))
		key, err := client.upload(ctx, file)
		target := path.Join(client.etcdS3.Bucket, key)
		if err != nil {
			logf("Error received during snapshot upload to S3: %v", err)
			appendLine(snapshotsLog, fmt.Sprintf("%s s3-failed %s %s", stamp(), target, s3ErrorText(err)))
		} else {
			logf("S3 upload complete for %s", filepath.Base(file))
			appendLine(snapshotsLog, fmt.Sprintf("%s s3 %s %s", stamp(), target, file))
			result.Created = append(result.Created, filepath.Base(file))
		}
	}
	return result, http.StatusOK, nil
}

// saveLocalSnapshot streams a snapshot of the local etcd to file (0600, through file.part).
func saveLocalSnapshot(ctx context.Context, file string) error {
	client, err := localEtcd()
	if err != nil {
		return err
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	reader, err := client.Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("failed to check etcd status for snapshot: %w", err)
	}
	defer reader.Close()
	if err := os.MkdirAll(snapshotDir, 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(file+".part", os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err == nil {
		_, err = io.Copy(out, reader)
		if closeErr := out.Close(); err == nil {
			err = closeErr
		}
	}
	if err == nil {
		err = os.Rename(file+".part", file)
	}
	if err != nil {
		_ = os.Remove(file + ".part")
	}
	return err
}

// extraMetadata is the data of the k3s-etcd-snapshot-extra-metadata ConfigMap in kube-system (nil without it).
func extraMetadata(ctx context.Context, client *kubernetes.Clientset) map[string]string {
	cm, err := client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "k3s-etcd-snapshot-extra-metadata", metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return cm.Data
}

// saveSnapshotMetadata writes the extra metadata as JSON to db/.metadata/NAME, beside the snapshots' directory.
func saveSnapshotMetadata(file string, data map[string]string) error {
	if len(data) == 0 {
		return nil
	}
	dir := filepath.Join(filepath.Dir(file), "..", metadataDir)
	encoded, err := json.Marshal(data)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, filepath.Base(file)), encoded, 0o600)
}

const resetDone = "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now. " +
	"Backup and delete ${datadir}/server/db on each peer etcd server and rejoin the nodes"

// clusterReset restores a snapshot (with restore) into a fresh etcd data dir while k3s is stopped; the snapshot's
// bootstrap data must open with this server's token. Without restore there is one member already: only the message.
func clusterReset(ctx context.Context, restore string) error {
	if restore == "" {
		fmt.Println(resetDone)
		return nil
	}
	if conn, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", supervisorPort), time.Second); err == nil {
		conn.Close()
		return errors.New("k3s is running: stop it before a cluster reset")
	}
	if _, err := os.Stat(restore); err != nil {
		return fmt.Errorf("etcd: snapshot path does not exist: %s", restore)
	}
	cfg, err := readConfig(nil)
	if err != nil {
		return err
	}
	tok, err := cfg.token()
	if err != nil {
		return err
	}
	if passphrase(tok) == "" {
		return errors.New("a restore needs the token of the cluster the snapshot came from (token-file or token)")
	}
	dataDir := filepath.Join(serverDir, "db", "etcd")
	staging := dataDir + "-restore"
	_ = os.RemoveAll(staging)
	manager := snapshot.NewV3(zap.NewNop())
	if err := manager.Restore(snapshot.RestoreConfig{
		SnapshotPath: restore, Name: "default", OutputDataDir: staging,
		PeerURLs: []string{"http://127.0.0.1:2380"}, InitialCluster: "default=http://127.0.0.1:2380",
		InitialClusterToken: "etcd-cluster", SkipHashCheck: false,
	}); err != nil {
		return fmt.Errorf("etcd: restoring %s: %w", restore, err)
	}
	// Check the token against the snapshot's bootstrap data before anything of this server is replaced.
	if err := checkRestoredBootstrap(ctx, staging, passphrase(tok)); err != nil {
		_ = os.RemoveAll(staging)
		return err
	}
	old := dataDir + fmt.Sprintf("-old-%d", time.Now().Unix())
	if _, err := os.Stat(dataDir); err == nil {
		if err := os.Rename(dataDir, old); err != nil {
			return err
		}
	}
	if err := os.Rename(staging, dataDir); err != nil {
		return err
	}
	appendLine(snapshotsLog, time.Now().UTC().Format(time.RFC3339)+" restore "+restore)
	fmt.Println(resetDone)
	return nil
}

// checkRestoredBootstrap starts etcd on the restored data dir (k3s is stopped), reads the bootstrap
// data with the token and writes the CA files from it.
func checkRestoredBootstrap(ctx context.Context, dir, pass string) error {
	etcd, err := startEtcdAt(ctx, dir)
	if err != nil {
		return err
	}
	defer etcd.Close()
	client, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://127.0.0.1:2379"}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer client.Close()
	resp, err := client.Get(ctx, bootstrapKey(pass))
	if err != nil {
		return err
	}
	if len(resp.Kvs) == 0 {
		return errors.New("bootstrap data in the snapshot cannot be decrypted with this token: restore with the " +
			"token of the cluster the snapshot came from")
	}
	files, err := openBootstrap(pass, resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	for name, content := range files {
		if err := writeFile(tlsPath(name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}
