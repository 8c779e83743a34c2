package main

// The cluster's bootstrap data in etcd, encrypted with the token as k3s keeps it, so a snapshot carries the CAs
// with the objects; `k3s etcd-snapshot save`; `k3s server --cluster-reset [--cluster-reset-restore-path]`.

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
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

func etcdSnapshotCommand(ctx context.Context, args []string) int {
	if len(args) == 0 || args[0] != "save" {
		fmt.Fprintln(os.Stderr, "k3s etcd-snapshot: only 'save [--name NAME]' is supported by the lab's stand-in")
		return 1
	}
	fs := flag.NewFlagSet("k3s etcd-snapshot save", flag.ContinueOnError)
	name := fs.String("name", "on-demand", "the snapshot's name prefix")
	if err := fs.Parse(args[1:]); err != nil {
		return 1
	}
	if !snapshotName.MatchString(*name) {
		fmt.Fprintf(os.Stderr, "k3s etcd-snapshot save: invalid --name %q\n", *name)
		return 1
	}
	if _, err := os.Stat(serverTokenPath); err != nil {
		fmt.Fprintf(os.Stderr, "k3s etcd-snapshot save: no k3s server on this host (no %s)\n", serverTokenPath)
		return 1
	}
	cfg, _ := readConfig(nil)
	client, err := localEtcd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "k3s etcd-snapshot save: %v\n", err)
		return 1
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	reader, err := client.Snapshot(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "k3s etcd-snapshot save: is k3s running here? %v\n", err)
		return 1
	}
	defer reader.Close()
	file := filepath.Join(snapshotDir, fmt.Sprintf("%s-%s-%d", *name, cfg.nodeName(), time.Now().Unix()))
	if err := os.MkdirAll(snapshotDir, 0o700); err != nil {
		fmt.Fprintf(os.Stderr, "k3s etcd-snapshot save: %v\n", err)
		return 1
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
		fmt.Fprintf(os.Stderr, "k3s etcd-snapshot save: %v\n", err)
		return 1
	}
	appendLine(snapshotsLog, time.Now().UTC().Format(time.RFC3339)+" save "+file)
	fmt.Printf("Snapshot %s saved.\n", filepath.Base(file))
	return 0
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
