package main

// /etc/rancher/k3s/config.yaml, read as k3s reads it: keys are the long flag names, values a scalar or a list.

import (
	"fmt"
	"os"
	"strings"

	"sigs.k8s.io/yaml"
)

const (
	configPath      = "/etc/rancher/k3s/config.yaml"
	dataDir         = "/var/lib/rancher/k3s"
	serverDir       = dataDir + "/server"
	agentDir        = dataDir + "/agent"
	tlsDir          = serverDir + "/tls"
	kubeconfigPath  = "/etc/rancher/k3s/k3s.yaml"
	serverTokenPath = serverDir + "/token"

	clusterCIDR    = "10.42.0.0/16"
	serviceCIDR    = "10.43.0.0/16"
	clusterDNS     = "10.43.0.10"
	clusterDomain  = "cluster.local"
	supervisorPort = 6443
	apiserverPort  = 6444
)

type config map[string]any

func readConfig(args []string) (config, error) {
	cfg := config{}
	data, err := os.ReadFile(configPath)
	if err != nil && !os.IsNotExist(err) {
		return nil, err
	}
	if err == nil {
		if err := yaml.Unmarshal(data, &cfg); err != nil {
			return nil, fmt.Errorf("%s: %w", configPath, err)
		}
	}
	// Command-line flags win over the file, as in k3s: --key=value, --key value, --flag.
	for i := 0; i < len(args); i++ {
		arg := args[i]
		if !strings.HasPrefix(arg, "--") {
			return nil, fmt.Errorf("unexpected argument %q", arg)
		}
		key, value, hasValue := strings.Cut(strings.TrimPrefix(arg, "--"), "=")
		if !hasValue {
			if boolFlags[key] {
				value = "true"
			} else if i+1 < len(args) {
				i++
				value = args[i]
			} else {
				return nil, fmt.Errorf("flag --%s needs a value", key)
			}
		}
		cfg[key] = value
	}
	return cfg, nil
}

var boolFlags = map[string]bool{
	"cluster-init": true, "cluster-reset": true, "disable-network-policy": true, "debug": true,
	"etcd-s3": true, "etcd-s3-insecure": true, "etcd-s3-skip-ssl-verify": true,
}

func (c config) str(key string) string {
	switch v := c[key].(type) {
	case nil:
		return ""
	case string:
		return v
	case []any:
		if len(v) > 0 {
			return fmt.Sprint(v[0])
		}
		return ""
	default:
		return fmt.Sprint(v)
	}
}

func (c config) list(key string) []string {
	switch v := c[key].(type) {
	case nil:
		return nil
	case []any:
		out := make([]string, 0, len(v))
		for _, item := range v {
			out = append(out, fmt.Sprint(item))
		}
		return out
	case string:
		// A string may hold a comma-separated list, as the flag does (not node labels: their values may not).
		return strings.Split(v, ",")
	default:
		return []string{fmt.Sprint(v)}
	}
}

func (c config) flag(key string) bool {
	switch v := c[key].(type) {
	case bool:
		return v
	case string:
		return v == "true"
	}
	return false
}

// token is the cluster token: token-file's content, or token.
func (c config) token() (string, error) {
	if path := c.str("token-file"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return "", fmt.Errorf("token-file: %w", err)
		}
		return strings.TrimSpace(string(data)), nil
	}
	return c.str("token"), nil
}

func (c config) nodeName() string {
	if name := c.str("node-name"); name != "" {
		return name
	}
	name, _ := os.Hostname()
	return name
}

func (c config) disabled(component string) bool {
	for _, item := range c.list("disable") {
		if strings.TrimSpace(item) == component {
			return true
		}
	}
	return false
}

// extraArgs turns kubelet-arg / kube-apiserver-arg ... ("key=value" items) into flags for that component.
func (c config) extraArgs(key string) []string {
	var out []string
	for _, item := range c.list(key) {
		out = append(out, "--"+strings.TrimPrefix(item, "--"))
	}
	return out
}

// passphrase is the secret part of a token: all of a plain token, the part after "::server:" (or "::node:") of
// a K10 one.
func passphrase(tok string) string {
	if !strings.HasPrefix(tok, "K10") {
		return tok
	}
	_, rest, ok := strings.Cut(tok, "::")
	if !ok {
		return tok
	}
	if _, p, ok := strings.Cut(rest, ":"); ok {
		return p
	}
	return rest
}

// tokenCAHash is the CA hash a K10 token pins ("" for a plain token).
func tokenCAHash(tok string) string {
	if !strings.HasPrefix(tok, "K10") {
		return ""
	}
	hash, _, _ := strings.Cut(strings.TrimPrefix(tok, "K10"), "::")
	return hash
}
