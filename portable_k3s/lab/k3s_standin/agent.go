package main

// k3s agent (also run by every server for its own node): certificates from the server's supervisor, containerd,
// the agent images, flannel's VXLAN backend on flannel-iface, the CNI config, kubelet and kube-proxy.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"
)

const (
	containerdSocket = "/run/k3s/containerd/containerd.sock"
	containerdRoot   = agentDir + "/containerd"
	imagesDir        = agentDir + "/images"
	cniConfDir       = agentDir + "/etc/cni/net.d"
	labContainerdDir = "/var/lib/portable-k3s-lab/containerd" // a directory of the lab machine, bound in by the lab
	flannelNetConf   = agentDir + "/etc/flannel/net-conf.json"
	flannelSubnetEnv = "/run/flannel/subnet.env"
	pauseImage       = "docker.io/rancher/mirrored-pause:3.6"
)

type agentJoin struct {
	serverURL string
	token     string
	nodeIP    string
	server    bool
}

func agentPath(name string) string { return filepath.Join(agentDir, name) }

func runAgentCommand(ctx context.Context, cfg config) error {
	serverURL := cfg.str("server")
	if serverURL == "" {
		return errors.New("an agent needs server (the URL of a k3s server) in " + configPath)
	}
	tok, err := cfg.token()
	if err != nil {
		return err
	}
	if tok == "" {
		return errors.New("an agent needs the cluster token (token-file or token)")
	}
	nodeIP, err := resolveNodeIP(cfg)
	if err != nil {
		return err
	}
	return runAgent(ctx, cfg, agentJoin{serverURL: strings.TrimRight(serverURL, "/"), token: tok, nodeIP: nodeIP})
}

// fetch GETs path from the server with the token's passphrase; the server's CA is pinned by pool (nil: only
// the CA hash check of /cacerts protects the answer).
func fetch(join agentJoin, pool *tls.Config, path string, headers map[string]string) ([]byte, error) {
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: pool}}
	req, err := http.NewRequest(http.MethodGet, join.serverURL+path, nil)
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth("node", passphrase(join.token))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s%s: %s: %s", join.serverURL, path, resp.Status, strings.TrimSpace(string(body)))
	}
	return body, nil
}

// bootstrapAgent fetches the server CA (checked against the token's hash) and, unless this node holds valid ones
// from the same CAs for the same name and address, its certificates; then it writes the kubeconfigs.
func bootstrapAgent(join agentJoin, node string) error {
	insecure := &tls.Config{InsecureSkipVerify: true} //nolint:gosec // the CA is checked against the token's hash
	ca, err := fetch(join, insecure, "/cacerts", nil)
	if err != nil {
		return fmt.Errorf("fetching the server CA: %w", err)
	}
	if want := tokenCAHash(join.token); want != "" && want != caHash(ca) {
		return fmt.Errorf("the server's CA (hash %s) is not the one the token names (%s)", caHash(ca), want)
	}
	pinned := &tls.Config{RootCAs: certPool(ca), MinVersion: tls.VersionTLS12}
	clientCA, err := fetch(join, pinned, "/v1-k3s/client-ca.crt", nil)
	if err != nil {
		return fmt.Errorf("joining %s: %w", join.serverURL, err)
	}
	if err := writeIfChanged(agentPath("server-ca.crt"), ca, 0o644); err != nil {
		return err
	}
	if err := writeIfChanged(agentPath("client-ca.crt"), clientCA, 0o644); err != nil {
		return err
	}
	headers := map[string]string{"k3s-Node-Name": node, "k3s-Node-IP": join.nodeIP}
	clientPool := certPool(clientCA)
	serverPool := certPool(ca)
	wanted := []struct {
		name string
		pool *tlsPool
	}{
		{"client-kubelet", &tlsPool{clientPool, "system:node:" + node, ""}},
		{"client-kube-proxy", &tlsPool{clientPool, "system:kube-proxy", ""}},
		{"client-k3s-controller", &tlsPool{clientPool, "system:k3s-controller", ""}},
		{"serving-kubelet", &tlsPool{serverPool, node, join.nodeIP}},
	}
	for _, w := range wanted {
		if w.pool.holds(agentPath(w.name)) {
			continue
		}
		body, err := fetch(join, pinned, "/v1-k3s/"+w.name+".crt", headers)
		if err != nil {
			return fmt.Errorf("joining %s: %w", join.serverURL, err)
		}
		certs, key, err := splitBundle(body)
		if err != nil {
			return err
		}
		if err := writeFile(agentPath(w.name+".key"), key, 0o600); err != nil {
			return err
		}
		if err := writeFile(agentPath(w.name+".crt"), certs, 0o644); err != nil {
			return err
		}
	}
	for name, cert := range map[string]string{"kubelet": "client-kubelet", "kubeproxy": "client-kube-proxy",
		"k3scontroller": "client-k3s-controller"} {
		kc := kubeconfig(join.serverURL, agentPath("server-ca.crt"), agentPath(cert+".crt"), agentPath(cert+".key"))
		if err := writeIfChanged(agentPath(name+".kubeconfig"), kc, 0o600); err != nil {
			return err
		}
	}
	return nil
}

type tlsPool struct {
	roots *x509.CertPool
	cn    string
	ip    string
}

// holds: the certificate at base exists, is signed by one of the pool's CAs, names cn (and ip), and is far from
// expiring. A node that joined keeps its own credentials, as a k3s node does after its first join.
func (p *tlsPool) holds(base string) bool {
	pair, err := loadPair(base)
	if err != nil || pair.Cert.Subject.CommonName != p.cn || time.Until(pair.Cert.NotAfter) < 30*24*time.Hour {
		return false
	}
	if _, err := pair.Cert.Verify(x509.VerifyOptions{Roots: p.roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return false
	}
	if p.ip != "" {
		for _, ip := range pair.Cert.IPAddresses {
			if ip.Equal(net.ParseIP(p.ip)) {
				return true
			}
		}
		return false
	}
	return true
}

func writeIfChanged(path string, data []byte, mode os.FileMode) error {
	if current, err := os.ReadFile(path); err == nil && bytes.Equal(current, data) {
		return nil
	}
	return writeFile(path, data, mode)
}

func runAgent(ctx context.Context, cfg config, join agentJoin) error {
	node := cfg.nodeName()
	for _, dir := range []string{agentDir, imagesDir, cniConfDir, filepath.Dir(flannelNetConf)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	logf("joining %s as %s (%s)", join.serverURL, node, join.nodeIP)
	deadline := time.Now().Add(10 * time.Minute)
	for {
		err := bootstrapAgent(join, node)
		if err == nil {
			break
		}
		if time.Now().After(deadline) || strings.Contains(err.Error(), "is not the one the token names") ||
			strings.Contains(err.Error(), "401 Unauthorized") {
			return err
		}
		logf("waiting for the server: %v", err)
		time.Sleep(2 * time.Second)
	}
	containerd, err := startContainerd(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = containerd.Process.Kill() }()
	importImages(ctx)
	resolvConf, err := kubeletResolvConf(cfg)
	if err != nil {
		return err
	}
	if err := writeKubeletConfig(cfg, resolvConf); err != nil {
		return err
	}
	logf("starting kubelet and kube-proxy")
	go func() {
		command := kubeletapp.NewKubeletCommand(ctx)
		command.SetArgs(kubeletArgs(cfg, node, join.nodeIP))
		componentExited(ctx, "kubelet", command.ExecuteContext(ctx))
	}()
	go func() {
		command := proxyapp.NewProxyCommand()
		command.SetArgs(kubeProxyArgs(cfg, node))
		componentExited(ctx, "kube-proxy", command.ExecuteContext(ctx))
	}()
	if !cfg.flag("flannel-backend-none") && cfg.str("flannel-backend") != "none" {
		go func() {
			if err := runFlannel(ctx, cfg, node); err != nil {
				componentExited(ctx, "flannel", err)
			}
		}()
	}
	notifyReady()
	go func() {
		if err := containerd.Wait(); err != nil && ctx.Err() == nil {
			fatalf("containerd exited: %v", err)
		}
	}()
	<-ctx.Done()
	return nil
}

// userspaceDir lays out, as k3s extracts its bundled userspace to data/<hash>/bin (and points data/current at it),
// links to the hosts' own containerd, shim, runc and CNI plugins (Debian's, in the lab): containerd runs the shims
// from there, so they show k3s's paths (k3s's uninstall finds them by it).
func userspaceDir() (string, error) {
	bin := filepath.Join(dataDir, "data", "portable-k3s-lab-"+kubernetesVersion, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return "", err
	}
	links := map[string]string{}
	for _, name := range []string{"containerd", "containerd-shim-runc-v2", "ctr", "runc"} {
		if path, err := exec.LookPath(name); err == nil {
			links[name] = path
		}
	}
	plugins, _ := filepath.Glob("/usr/lib/cni/*")
	for _, path := range plugins {
		links[filepath.Base(path)] = path
	}
	for name, target := range links {
		link := filepath.Join(bin, name)
		if current, err := os.Readlink(link); err == nil && current == target {
			continue
		}
		_ = os.Remove(link)
		if err := os.Symlink(target, link); err != nil {
			return "", err
		}
	}
	current := filepath.Join(dataDir, "data", "current")
	if target, err := os.Readlink(current); err != nil || target != filepath.Dir(bin) {
		_ = os.Remove(current)
		if err := os.Symlink(filepath.Dir(bin), current); err != nil {
			return "", err
		}
	}
	return bin, nil
}

// ensureContainerdRoot: in a lab host, containerd's root is a directory of the lab machine (overlay snapshots
// cannot sit on the host's own overlay root), linked where k3s keeps it; a fresh install (no link yet) starts
// from an empty directory, as after k3s's uninstall.
func ensureContainerdRoot() error {
	if _, err := os.Stat(labContainerdDir); err != nil {
		return os.MkdirAll(containerdRoot, 0o700)
	}
	if target, err := os.Readlink(containerdRoot); err == nil && target == labContainerdDir {
		return nil
	}
	entries, _ := os.ReadDir(labContainerdDir)
	for _, entry := range entries {
		if err := os.RemoveAll(filepath.Join(labContainerdDir, entry.Name())); err != nil {
			return err
		}
	}
	_ = os.RemoveAll(containerdRoot)
	return os.Symlink(labContainerdDir, containerdRoot)
}

func startContainerd(ctx context.Context) (*exec.Cmd, error) {
	if err := ensureContainerdRoot(); err != nil {
		return nil, fmt.Errorf("containerd's root: %w", err)
	}
	bin, err := userspaceDir()
	if err != nil {
		return nil, err
	}
	conf := fmt.Sprintf(`# Written by the lab's k3s stand-in at each start, like k3s's own containerd config.
version = 2
root = %q
state = "/run/k3s/containerd"

[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  restrict_oom_score_adj = true
  enable_selinux = false
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  disable_snapshot_annotations = true

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %q
  conf_dir = %q

[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = %q
`, containerdRoot, containerdSocket, pauseImage, bin, cniConfDir, agentPath("etc/containerd/certs.d"))
	confPath := agentPath("etc/containerd/config.toml")
	if err := writeIfChanged(confPath, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(containerdSocket), 0o711); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(agentPath("containerd/containerd.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(filepath.Join(bin, "containerd"), "-c", confPath, "-a", containerdSocket, "--state", "/run/k3s/containerd", "--root", containerdRoot)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
	// containerd goes with this process (the containers' shims stay, as with k3s's KillMode=process).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("containerd: %w (the lab's hosts have Debian's containerd)", err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		if conn, err := net.Dial("unix", containerdSocket); err == nil {
			conn.Close()
			return cmd, nil
		}
		if time.Now().After(deadline) {
			return nil, errors.New("containerd did not open its socket within a minute; see " + agentPath("containerd/containerd.log"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// importImages imports every tarball in agent/images (.tar, .tar.zst) into containerd's k8s.io namespace, as k3s
// does at start; the images are pinned, so the kubelet's image GC keeps them.
func importImages(ctx context.Context) {
	entries, err := os.ReadDir(imagesDir)
	if err != nil {
		return
	}
	for _, entry := range entries {
		name := entry.Name()
		path := filepath.Join(imagesDir, name)
		var input io.Reader
		switch {
		case strings.HasSuffix(name, ".tar"):
			f, err := os.Open(path)
			if err != nil {
				logf("images: %v", err)
				continue
			}
			defer f.Close()
			input = f
		case strings.HasSuffix(name, ".tar.zst"):
			r, err := zstdReader(path)
			if err != nil {
				logf("images: %s: %v", name, err)
				continue
			}
			defer r.Close()
			input = r
		default:
			continue
		}
		started := time.Now()
		cmd := exec.CommandContext(ctx, "ctr", "--address", containerdSocket, "--namespace", "k8s.io", "images", "import",
			"--all-platforms", "-")
		cmd.Stdin = input
		out, err := cmd.CombinedOutput()
		if err != nil {
			logf("images: importing %s failed: %v: %s", name, err, out)
			continue
		}
		for _, line := range strings.Split(string(out), "\n") {
			// "unpacking docker.io/x/y:tag (sha256:...)...done" or "docker.io/x/y:tag saved"
			fields := strings.Fields(line)
			if len(fields) >= 2 && fields[0] == "unpacking" {
				_ = exec.CommandContext(ctx, "ctr", "--address", containerdSocket, "--namespace", "k8s.io", "images", "label",
					fields[1], "io.cri-containerd.pinned=pinned").Run()
			}
		}
		logf("images: imported %s in %.1fs", name, time.Since(started).Seconds())
	}
}

// kubeletResolvConf is resolv-conf if set, else the host's resolv.conf when it names a nameserver, else (as k3s
// does) a file of k3s's own naming a public resolver, so that pods with dnsPolicy Default (CoreDNS) have one.
func kubeletResolvConf(cfg config) (string, error) {
	if path := cfg.str("resolv-conf"); path != "" {
		return path, nil
	}
	for _, path := range []string{"/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"} {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			fields := strings.Fields(line)
			if len(fields) >= 2 && fields[0] == "nameserver" {
				if ip := net.ParseIP(fields[1]); ip != nil && !ip.IsLoopback() {
					return path, nil
				}
			}
		}
	}
	path := agentPath("etc/resolv.conf")
	logf("no usable nameserver in /etc/resolv.conf: kubelet gets %s (nameserver 8.8.8.8), as k3s does", path)
	return path, writeIfChanged(path, []byte("nameserver 8.8.8.8\n"), 0o644)
}

// writeKubeletConfig writes the kubelet's configuration as k3s does (its eviction thresholds), with one lab-only
// difference: image garbage collection is off. k3s pins the images it imports (the airgap bundle, the pause image)
// and its containerd 2 reports the pin, so the kubelet never collects them; the lab's containerd (Debian's 1.6)
// does not report pins, and on a machine whose disk looks over 85 % full the kubelet would delete the lab's
// images, which no registry can give back.
func writeKubeletConfig(cfg config, resolvConf string) error {
	conf := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
cgroupDriver: cgroupfs
clusterDNS: [%s]
clusterDomain: %s
containerRuntimeEndpoint: unix://%s
evictionHard:
  imagefs.available: 5%%
  nodefs.available: 5%%
evictionMinimumReclaim:
  imagefs.available: 10%%
  nodefs.available: 10%%
failCgroupV1: false
failSwapOn: false
healthzBindAddress: 127.0.0.1
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: %s
serializeImagePulls: false
tlsCertFile: %s
tlsPrivateKeyFile: %s
`, agentPath("client-ca.crt"), clusterDNS, clusterDomain, containerdSocket, resolvConf, agentPath("serving-kubelet.crt"),
		agentPath("serving-kubelet.key"))
	return writeIfChanged(agentPath("etc/kubelet.yaml"), []byte(conf), 0o600)
}

func kubeletArgs(cfg config, node, nodeIP string) []string {
	args := []string{
		"--config=" + agentPath("etc/kubelet.yaml"),
		"--kubeconfig=" + agentPath("kubelet.kubeconfig"),
		"--hostname-override=" + node,
		"--node-ip=" + nodeIP,
		"--read-only-port=0",
	}
	if labels := cfg.list("node-label"); len(labels) > 0 {
		args = append(args, "--node-labels="+strings.Join(labels, ","))
	}
	if taints := cfg.list("node-taint"); len(taints) > 0 {
		args = append(args, "--register-with-taints="+strings.Join(taints, ","))
	}
	return append(args, cfg.extraArgs("kubelet-arg")...)
}

func kubeProxyArgs(cfg config, node string) []string {
	args := []string{
		"--proxy-mode=iptables",
		"--healthz-bind-address=127.0.0.1",
		"--metrics-bind-address=127.0.0.1:10249",
		"--kubeconfig=" + agentPath("kubeproxy.kubeconfig"),
		"--cluster-cidr=" + clusterCIDR,
		"--conntrack-max-per-core=0",
		"--conntrack-min=0",
		"--conntrack-tcp-timeout-established=0s",
		"--conntrack-tcp-timeout-close-wait=0s",
		"--hostname-override=" + node,
	}
	return append(args, cfg.extraArgs("kube-proxy-arg")...)
}
