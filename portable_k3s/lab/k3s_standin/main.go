// The lab's k3s stand-in: a supervisor in the shape of the k3s binary around the real Kubernetes that k3s embeds.
//
// It is NOT k3s: k3s's own source cannot be had where the lab is built. What runs is real: kube-apiserver,
// kube-controller-manager, kube-scheduler, kubelet and kube-proxy from github.com/k3s-io/kubernetes (the fork inside
// the pinned k3s release), etcd embedded from go.etcd.io/etcd/server/v3, flannel's VXLAN backend from
// github.com/flannel-io/flannel, kubectl; containerd, runc and the CNI plugins are Debian's, installed on the lab's
// hosts. What this program emulates is k3s's own part: reading /etc/rancher/k3s/config.yaml, the certificates and
// the join endpoints of its supervisor, the token files, the agent images directory, the deploy controller of
// server/manifests, `k3s token`, `k3s etcd-snapshot` (with its copy to S3, by minio-go as in k3s) and `--cluster-reset`.
//
//	k3s --version | server | agent | kubectl ... | ctr ... | token create|list | etcd-snapshot save | check-config
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/component-base/version"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
)

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		fatalf("usage: k3s --version | server | agent | kubectl | ctr | token | etcd-snapshot | check-config")
	}
	// Only this program says when k3s is up: etcd and kubelet would tell systemd they are ready on their own.
	notifySocket = os.Getenv("NOTIFY_SOCKET")
	_ = os.Unsetenv("NOTIFY_SOCKET")
	// The components embedded here each apply the same logging configuration: as in k3s, only a change is an error.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	switch args[0] {
	case "--version", "-v", "version":
		fmt.Printf("k3s version %s (portable-k3s lab stand-in, not k3s: real Kubernetes %s inside)\ngo version %s\n",
			version.Get().GitVersion, kubernetesVersion, runtime.Version())
	case "server":
		cfg, err := readConfig(args[1:])
		if err != nil {
			fatalf("k3s server: %v", err)
		}
		if reset, restore := cfg.flag("cluster-reset"), cfg.str("cluster-reset-restore-path"); reset || restore != "" {
			if err := clusterReset(ctx, restore); err != nil {
				fatalf("k3s server --cluster-reset: %v", err)
			}
			return
		}
		if err := runServer(ctx, cfg); err != nil {
			fatalf("k3s server: %v", err)
		}
	case "agent":
		cfg, err := readConfig(args[1:])
		if err != nil {
			fatalf("k3s agent: %v", err)
		}
		if err := runAgentCommand(ctx, cfg); err != nil {
			fatalf("k3s agent: %v", err)
		}
	case "kubectl":
		appendLine(kubectlLog, time.Now().UTC().Format(time.RFC3339)+" "+strings.Join(args[1:], " "))
		if os.Getenv("KUBECONFIG") == "" {
			_ = os.Setenv("KUBECONFIG", kubeconfigPath)
		}
		command := kubectlcmd.NewDefaultKubectlCommand()
		command.SetArgs(args[1:])
		if err := command.Execute(); err != nil {
			os.Exit(1)
		}
	case "ctr", "crictl":
		os.Exit(runTool(args[0], args[1:]))
	case "token":
		os.Exit(tokenCommand(ctx, args[1:]))
	case "etcd-snapshot":
		os.Exit(etcdSnapshotCommand(ctx, args[1:]))
	case "check-config":
		fmt.Println("portable-k3s lab stand-in: nothing to check")
	default:
		fatalf("k3s stand-in: unsupported command %q", args[0])
	}
}

// runTool runs Debian's ctr against k3s's containerd socket, as `k3s ctr` does with the bundled one.
func runTool(name string, args []string) int {
	var cmd *exec.Cmd
	if name == "ctr" {
		cmd = exec.Command("ctr", append([]string{"--address", containerdSocket}, args...)...)
	} else {
		cmd = exec.Command("crictl", append([]string{"--runtime-endpoint", "unix://" + containerdSocket}, args...)...)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		if exit, ok := err.(*exec.ExitError); ok {
			return exit.ExitCode()
		}
		fmt.Fprintf(os.Stderr, "k3s %s: %v\n", name, err)
		return 1
	}
	return 0
}

// The stand-in's own records of what it was asked to do (kubectl calls, snapshots saved and restored), for tests.
const (
	standinDir   = dataDir + "/standin"
	kubectlLog   = standinDir + "/kubectl.log"
	snapshotsLog = standinDir + "/snapshots.log"
)

func appendLine(path, line string) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "k3s: "+format+"\n", a...)
}

// componentExited ends the program when an embedded component stops: with its error, or quietly (status 0) when the
// program is stopping anyway (SIGTERM from systemd), so that a stop or restart is not recorded as a failure.
func componentExited(ctx context.Context, name string, err error) {
	if ctx.Err() != nil {
		os.Exit(0)
	}
	fatalf("%s exited: %v", name, err)
}

func fatalf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

var notifySocket string

// notifyReady tells systemd (Type=notify) the unit is up.
func notifyReady() {
	socket := notifySocket
	if socket == "" {
		return
	}
	conn, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: socket, Net: "unixgram"})
	if err != nil {
		return
	}
	defer conn.Close()
	_, _ = conn.Write([]byte("READY=1"))
}

// resolveNodeIP is node-ip, or with vpn-auth-file (k3s's own tailscale integration) tailscale's IPv4 after
// joining with the key in it, or the address of the interface of the default route.
func resolveNodeIP(cfg config) (string, error) {
	if path := cfg.str("vpn-auth-file"); path != "" {
		return tailscaleNodeIP(path)
	}
	if ip := cfg.str("node-ip"); ip != "" {
		return ip, nil
	}
	conn, err := net.Dial("udp", "192.0.2.1:9") // no packet is sent: this only picks the route's source address
	if err != nil {
		return "", fmt.Errorf("no node-ip and no default route: %w", err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

func tailscaleNodeIP(path string) (string, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("vpn-auth-file: %w", err)
	}
	auth := map[string]string{}
	for _, pair := range strings.Split(strings.TrimSpace(string(raw)), ",") {
		key, value, _ := strings.Cut(pair, "=")
		auth[key] = value
	}
	if auth["name"] != "tailscale" || auth["joinKey"] == "" {
		return "", fmt.Errorf("%s: needs name=tailscale and a joinKey", path)
	}
	ip := tailscaleIPv4()
	if ip == "" {
		args := []string{"up", "--authkey", auth["joinKey"], "--timeout=30s", "--reset"}
		if url := auth["controlServerURL"]; url != "" {
			args = append(args, "--login-server", url)
		}
		if out, err := exec.Command("tailscale", args...).CombinedOutput(); err != nil {
			return "", fmt.Errorf("tailscale up failed: %v: %s", err, out)
		}
		for deadline := time.Now().Add(30 * time.Second); ip == "" && time.Now().Before(deadline); time.Sleep(time.Second) {
			ip = tailscaleIPv4()
		}
	}
	if ip == "" {
		return "", fmt.Errorf("tailscale has no IPv4")
	}
	return ip, nil
}

func tailscaleIPv4() string {
	out, err := exec.Command("tailscale", "ip", "-4").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
