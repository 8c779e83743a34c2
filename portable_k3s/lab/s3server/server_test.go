package main

import (
	"bytes"
	"context"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// s3Client is restic's S3 client (minio-go) for the server at url, over plain http, as restic sets it up.
func s3Client(t *testing.T, url, secret string) *minio.Client {
	t.Helper()
	client, err := minio.New(strings.TrimPrefix(url, "http://"), &minio.Options{
		Creds: credentials.NewStaticV4(labAccess, secret, ""), Secure: false, Region: labRegion,
		BucketLookup: minio.BucketLookupAuto,
	})
	if err != nil {
		t.Fatal(err)
	}
	return client
}

func startServer(t *testing.T) (string, string) {
	t.Helper()
	data := t.TempDir()
	keys := filepath.Join(data, "..", "keys")
	if err := os.WriteFile(keys, []byte("# lab\n"+labAccess+":"+labSecret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	loaded, err := loadKeys(keys)
	if err != nil || loaded[labAccess] != labSecret {
		t.Fatalf("keys file: %v %v", loaded, err)
	}
	cfg := &config{data: data, region: labRegion, buckets: []string{"lab-backups"}}
	handler, err := newHandler(cfg, loaded, log.New(io.Discard, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	server := httptest.NewServer(handler)
	t.Cleanup(server.Close)
	return server.URL, data
}

func TestResticsS3ClientWorksAgainstTheServer(t *testing.T) {
	url, data := startServer(t)
	ctx := context.Background()
	client := s3Client(t, url, labSecret)

	if found, err := client.BucketExists(ctx, "lab-backups"); err != nil || !found {
		t.Fatalf("the bucket made at start: %v %v", found, err)
	}
	if err := client.MakeBucket(ctx, "restic", minio.MakeBucketOptions{Region: labRegion}); err != nil {
		t.Fatal(err)
	}
	objects := map[string][]byte{
		"repo/config":       []byte("config"),
		"repo/keys/k1":      []byte("key"),
		"repo/data/ab/ab01": bytes.Repeat([]byte("pack one "), 30000),
		"repo/data/ab/ab02": []byte("pack two"),
		"repo/data/cd/cd01": []byte("pack three"),
		"repo/snapshots/s1": []byte("snapshot"),
	}
	for key, body := range objects {
		opts := minio.PutObjectOptions{ContentType: "application/octet-stream", SendContentMd5: true,
			PartSize: 200 * 1024 * 1024}
		info, err := client.PutObject(ctx, "restic", key, bytes.NewReader(body), int64(len(body)), opts)
		if err != nil || info.Size != int64(len(body)) {
			t.Fatalf("put %s: %v (%d)", key, err, info.Size)
		}
	}
	stored, err := os.ReadFile(filepath.Join(data, "buckets", "restic", "repo", "data", "ab", "ab01"))
	if err != nil || !bytes.Equal(stored, objects["repo/data/ab/ab01"]) {
		t.Fatalf("the object is not a file of the data directory: %v", err)
	}

	list := func(prefix string, recursive, v1 bool, maxKeys int) []string {
		var keys []string
		for object := range client.ListObjects(ctx, "restic", minio.ListObjectsOptions{Prefix: prefix,
			Recursive: recursive, UseV1: v1, MaxKeys: maxKeys}) {
			if object.Err != nil {
				t.Fatalf("list %s: %v", prefix, object.Err)
			}
			keys = append(keys, object.Key)
		}
		sort.Strings(keys)
		return keys
	}
	for _, v1 := range []bool{false, true} {
		if keys := list("repo/data/", true, v1, 0); strings.Join(keys, " ") !=
			"repo/data/ab/ab01 repo/data/ab/ab02 repo/data/cd/cd01" {
			t.Fatalf("recursive list (v1 %v): %v", v1, keys)
		}
		if keys := list("repo/data/", true, v1, 1); len(keys) != 3 {
			t.Fatalf("paged list (v1 %v): %v", v1, keys)
		}
		if keys := list("repo/", false, v1, 0); strings.Join(keys, " ") !=
			"repo/config repo/data/ repo/keys/ repo/snapshots/" {
			t.Fatalf("list with delimiter (v1 %v): %v", v1, keys)
		}
		if keys := list("repo/locks/", false, v1, 0); len(keys) != 0 {
			t.Fatalf("a prefix with nothing under it (v1 %v): %v", v1, keys)
		}
		if keys := list("repo/da", false, v1, 0); strings.Join(keys, " ") != "repo/data/" {
			t.Fatalf("a prefix ending inside a name (v1 %v): %v", v1, keys)
		}
	}

	object, err := client.GetObject(ctx, "restic", "repo/data/ab/ab01", minio.GetObjectOptions{})
	if err != nil {
		t.Fatal(err)
	}
	part := make([]byte, 9)
	if _, err := object.ReadAt(part, 9*1000); err != nil || string(part) != "pack one " {
		t.Fatalf("ranged read: %q %v", part, err)
	}
	opts := minio.GetObjectOptions{}
	if err := opts.SetRange(5, 8); err != nil {
		t.Fatal(err)
	}
	ranged, err := client.GetObject(ctx, "restic", "repo/data/ab/ab02", opts)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := io.ReadAll(ranged); err != nil || string(got) != "two" {
		t.Fatalf("range 5-8: %q %v", got, err)
	}
	if info, err := client.StatObject(ctx, "restic", "repo/config", minio.StatObjectOptions{}); err != nil ||
		info.Size != 6 {
		t.Fatalf("head: %+v %v", info, err)
	}
	if err := client.RemoveObject(ctx, "restic", "repo/data/ab/ab02", minio.RemoveObjectOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.StatObject(ctx, "restic", "repo/data/ab/ab02", minio.StatObjectOptions{}); minio.ToErrorResponse(
		err).Code != "NoSuchKey" {
		t.Fatalf("deleted object: %v", err)
	}
	if entries, _ := os.ReadDir(filepath.Join(data, "spool")); len(entries) != 0 {
		t.Fatalf("request bodies left behind: %v", entries)
	}

	wrong := s3Client(t, url, "not-the-secret")
	_, err = wrong.PutObject(ctx, "restic", "repo/keys/k2", bytes.NewReader([]byte("x")), 1, minio.PutObjectOptions{})
	if minio.ToErrorResponse(err).Code != "SignatureDoesNotMatch" {
		t.Fatalf("another secret: %v", err)
	}
	if _, err := os.Stat(filepath.Join(data, "buckets", "restic", "repo", "keys", "k2")); !os.IsNotExist(err) {
		t.Fatalf("a refused upload was stored: %v", err)
	}
}

func TestKeysFileMustBeTheOwnersOnly(t *testing.T) {
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte(labAccess+":"+labSecret+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadKeys(keys); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("a keys file others can read: %v", err)
	}
	if err := os.WriteFile(keys, []byte("no-colon\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(keys, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadKeys(keys); err == nil {
		t.Fatal("a line without ACCESS_KEY:SECRET_KEY is taken")
	}
}
