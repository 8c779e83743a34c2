package main

// The etcd snapshots' copy to S3, as k3s's pkg/etcd/s3 makes it with minio-go: the etcd-s3-* settings, a client per
// settings (cached while the server runs; its first use checks that the bucket exists), the snapshot uploaded as
// FOLDER/NAME and its extra metadata as FOLDER/.metadata/NAME, with the cluster ID, node name and token hash.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const metadataDir = ".metadata"

var (
	clusterIDKey = textproto.CanonicalMIMEHeaderKey("k3s-cluster-id")
	tokenHashKey = textproto.CanonicalMIMEHeaderKey("k3s-token-hash")
	nodeNameKey  = textproto.CanonicalMIMEHeaderKey("k3s-node-name")
)

// etcdS3 is k3s's config.EtcdS3: the etcd-s3-* settings, as the CLI sends them to the server (JSON).
type etcdS3 struct {
	AccessKey     string          `json:"accessKey,omitempty"`
	Bucket        string          `json:"bucket,omitempty"`
	BucketLookup  string          `json:"bucketLookup,omitempty"`
	ConfigSecret  string          `json:"configSecret,omitempty"`
	Endpoint      string          `json:"endpoint,omitempty"`
	EndpointCA    string          `json:"endpointCA,omitempty"`
	Folder        string          `json:"folder,omitempty"`
	Proxy         string          `json:"proxy,omitempty"`
	Region        string          `json:"region,omitempty"`
	SecretKey     string          `json:"secretKey,omitempty"`
	SessionToken  string          `json:"sessionToken,omitempty"`
	Insecure      bool            `json:"insecure,omitempty"`
	SkipSSLVerify bool            `json:"skipSSLVerify,omitempty"`
	Retention     int             `json:"retention,omitempty"`
	Timeout       metav1.Duration `json:"timeout,omitempty"`
}

var defaultEtcdS3 = etcdS3{Endpoint: "s3.amazonaws.com", Region: "us-east-1", Timeout: metav1.Duration{Duration: 5 * time.Minute}}

// etcdS3FromConfig is the settings of a config with etcd-s3 set, with k3s's defaults (nil without etcd-s3).
func etcdS3FromConfig(cfg config) (*etcdS3, error) {
	if !cfg.flag("etcd-s3") {
		return nil, nil
	}
	s3 := defaultEtcdS3
	for key, field := range map[string]*string{
		"access-key": &s3.AccessKey, "bucket": &s3.Bucket, "bucket-lookup-type": &s3.BucketLookup,
		"config-secret": &s3.ConfigSecret, "endpoint": &s3.Endpoint, "endpoint-ca": &s3.EndpointCA,
		"folder": &s3.Folder, "proxy": &s3.Proxy, "region": &s3.Region, "secret-key": &s3.SecretKey,
		"session-token": &s3.SessionToken,
	} {
		if value := cfg.str("etcd-s3-" + key); value != "" {
			*field = value
		}
	}
	s3.Insecure = cfg.flag("etcd-s3-insecure")
	s3.SkipSSLVerify = cfg.flag("etcd-s3-skip-ssl-verify")
	if value := cfg.str("etcd-s3-timeout"); value != "" {
		timeout, err := time.ParseDuration(value)
		if err != nil {
			return nil, fmt.Errorf("etcd-s3-timeout: %w", err)
		}
		s3.Timeout.Duration = timeout
	}
	return &s3, nil
}

// overlay is k3s's withRequest: the server's settings with the request's non-empty ones (and its flags) on top.
func overlay(server, request *etcdS3) *etcdS3 {
	if request == nil || server == nil {
		if request != nil {
			return request
		}
		return server
	}
	s3 := *server
	for _, pair := range [][2]*string{
		{&s3.Endpoint, &request.Endpoint}, {&s3.Bucket, &request.Bucket}, {&s3.Folder, &request.Folder},
		{&s3.Proxy, &request.Proxy}, {&s3.Region, &request.Region}, {&s3.AccessKey, &request.AccessKey},
		{&s3.SecretKey, &request.SecretKey}, {&s3.ConfigSecret, &request.ConfigSecret},
		{&s3.EndpointCA, &request.EndpointCA},
	} {
		if *pair[1] != "" {
			*pair[0] = *pair[1]
		}
	}
	s3.Insecure, s3.SkipSSLVerify, s3.Retention = request.Insecure, request.SkipSSLVerify, request.Retention
	return &s3
}

// s3Controller is k3s's s3.Controller: the cluster ID and token hash put on every object, and the clients.
type s3Controller struct {
	mu                             sync.Mutex
	clusterID, tokenHash, nodeName string
	clients                        map[etcdS3]*s3Client
	order                          []etcdS3
}

type s3Client struct {
	mc         *minio.Client
	etcdS3     etcdS3
	controller *s3Controller
}

// newS3Controller reads the cluster ID (kube-system's UID) and the server token's hash, as k3s's s3.Start does.
func newS3Controller(ctx context.Context, client *kubernetes.Clientset, pass, nodeName string) (*s3Controller, error) {
	ns, err := client.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("failed to set S3 snapshot cluster ID: %w", err)
	}
	sum := sha256.Sum256([]byte(pass))
	return &s3Controller{
		clusterID: string(ns.UID), tokenHash: hex.EncodeToString(sum[:])[:12], nodeName: nodeName,
		clients: map[etcdS3]*s3Client{},
	}, nil
}

// client returns the cached client for these settings, or makes one and checks that its bucket exists (k3s's
// GetClient: a refusal there fails the whole request). No secret is logged.
func (c *s3Controller) client(ctx context.Context, s3 etcdS3) (*s3Client, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	plain := defaultEtcdS3
	plain.ConfigSecret, plain.Retention = s3.ConfigSecret, s3.Retention
	if s3.ConfigSecret != "" {
		if s3 == plain {
			return nil, fmt.Errorf("etcd-s3-config-secret %q: reading the settings from a Secret is not emulated by "+
				"the lab's k3s stand-in", s3.ConfigSecret)
		}
		logf("Ignoring s3 configuration from etcd-s3-config-secret %q due to existing configuration from CLI or config file", s3.ConfigSecret)
	} else if s3 == plain {
		return nil, errors.New("s3 configuration was not set")
	}
	scheme := "https://"
	if s3.Insecure {
		scheme = "http://"
	}
	if client, ok := c.clients[s3]; ok {
		logf("Reusing cached S3 client for endpoint=%q bucket=%q folder=%q", scheme+s3.Endpoint, s3.Bucket, s3.Folder)
		return client, nil
	}
	logf("Attempting to create new S3 client for endpoint=%q bucket=%q folder=%q", scheme+s3.Endpoint, s3.Bucket, s3.Folder)
	if s3.Bucket == "" {
		return nil, errors.New("s3 bucket name was not set")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableCompression = true
	if s3.SkipSSLVerify {
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true} //nolint:gosec // etcd-s3-skip-ssl-verify
	} else if s3.EndpointCA != "" {
		tlsConfig, err := loadEndpointCAs(s3.EndpointCA)
		if err != nil {
			return nil, err
		}
		tr.TLSClientConfig = tlsConfig
	}
	if s3.Proxy != "" {
		var proxy *url.URL
		if s3.Proxy != "none" {
			var err error
			if proxy, err = url.Parse(s3.Proxy); err != nil {
				return nil, fmt.Errorf("failed to parse etcd-s3-proxy value as URL: %w", err)
			}
			if proxy.Scheme == "" || proxy.Host == "" {
				return nil, errors.New("proxy URL must include scheme and host")
			}
		}
		tr.Proxy = http.ProxyURL(proxy)
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{
		&credentials.Static{Value: credentials.Value{
			AccessKeyID: s3.AccessKey, SecretAccessKey: s3.SecretKey, SessionToken: s3.SessionToken,
			SignerType: credentials.SignatureV4,
		}},
		&credentials.FileAWSCredentials{},
		&credentials.IAM{},
	})
	if _, err := creds.Get(); err != nil {
		return nil, fmt.Errorf("failed to get credentials: %w", err)
	}
	mc, err := minio.New(s3.Endpoint, &minio.Options{
		Creds: creds, Secure: !s3.Insecure, Region: s3.Region, Transport: tr,
		BucketLookup: bucketLookupType(s3.Endpoint, s3.BucketLookup),
	})
	if err != nil {
		return nil, err
	}
	logf("Checking if S3 bucket %s exists", s3.Bucket)
	checkCtx, cancel := context.WithTimeout(ctx, s3.Timeout.Duration)
	defer cancel()
	exists, err := mc.BucketExists(checkCtx, s3.Bucket)
	if err != nil {
		return nil, fmt.Errorf("failed to test for existence of bucket %s: %w", s3.Bucket, err)
	}
	if !exists {
		return nil, fmt.Errorf("bucket %s does not exist", s3.Bucket)
	}
	logf("S3 bucket %s exists", s3.Bucket)
	client := &s3Client{mc: mc, etcdS3: s3, controller: c}
	c.clients[s3] = client
	if c.order = append(c.order, s3); len(c.order) > 5 { // k3s keeps 5
		delete(c.clients, c.order[0])
		c.order = c.order[1:]
	}
	return client, nil
}

// upload puts the snapshot at FOLDER/NAME and its metadata file, if there is one, at FOLDER/.metadata/NAME; the
// snapshot's object key (a metadata failure is only logged, as in k3s).
func (c *s3Client) upload(ctx context.Context, snapshotPath string) (string, error) {
	base := filepath.Base(snapshotPath)
	key := path.Join(c.etcdS3.Folder, base)
	logf("Uploading snapshot to s3://%s/%s", c.etcdS3.Bucket, key)
	contentType := "application/octet-stream"
	if strings.HasSuffix(key, ".zip") {
		contentType = "application/zip"
	}
	if _, err := c.put(ctx, key, snapshotPath, contentType); err != nil {
		return key, err
	}
	metadata := filepath.Join(filepath.Dir(snapshotPath), "..", metadataDir, base)
	if _, err := os.Stat(metadata); err == nil {
		metadataKey := path.Join(c.etcdS3.Folder, metadataDir, base)
		if _, err := c.put(ctx, metadataKey, metadata, "application/json"); err != nil {
			logf("Failed to upload snapshot metadata to S3: %v", err)
		} else {
			logf("Uploaded snapshot metadata s3://%s/%s", c.etcdS3.Bucket, metadataKey)
		}
	}
	return key, nil
}

func (c *s3Client) put(ctx context.Context, key, file, contentType string) (minio.UploadInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, c.etcdS3.Timeout.Duration)
	defer cancel()
	return c.mc.FPutObject(ctx, c.etcdS3.Bucket, key, file, minio.PutObjectOptions{
		NumThreads: 2, ContentType: contentType,
		UserMetadata: map[string]string{
			clusterIDKey: c.controller.clusterID, nodeNameKey: c.controller.nodeName, tokenHashKey: c.controller.tokenHash,
		},
	})
}

// s3ErrorText is err on one line, with the S3 error's code (minio-go's message leaves it out).
func s3ErrorText(err error) string {
	text := strings.Join(strings.Fields(err.Error()), " ")
	var resp minio.ErrorResponse
	if errors.As(err, &resp) && resp.Code != "" && !strings.Contains(text, resp.Code) {
		text += " (" + resp.Code + ")"
	}
	return text
}

// loadEndpointCAs reads etcd-s3-endpoint-ca: space-separated base64 PEM data or file paths.
func loadEndpointCAs(value string) (*tls.Config, error) {
	pool := x509.NewCertPool()
	loaded := false
	for _, ca := range strings.Split(value, " ") {
		data, err := base64.StdEncoding.DecodeString(ca)
		if err != nil {
			data, err = os.ReadFile(ca)
		}
		if err != nil {
			return nil, err
		}
		if pool.AppendCertsFromPEM(data) {
			loaded = true
		}
	}
	if !loaded {
		return nil, errors.New("no certificates loaded from etcd-s3-endpoint-ca")
	}
	return &tls.Config{RootCAs: pool}, nil
}

func bucketLookupType(endpoint, lookup string) minio.BucketLookupType {
	switch strings.ToLower(lookup) {
	case "dns":
		return minio.BucketLookupDNS
	case "path":
		return minio.BucketLookupPath
	}
	if strings.Contains(endpoint, "aliyun") {
		return minio.BucketLookupDNS
	}
	return minio.BucketLookupAuto
}
