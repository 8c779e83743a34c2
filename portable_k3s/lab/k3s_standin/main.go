// k3s-standin: a small stand-in for the k3s binary, used only by the portable-k3s lab.
//
// It is NOT k3s. k3s cannot be downloaded on the machine the lab runs on, and its containers would not run in
// the lab's hosts. This program answers what the deploy logic needs of a k3s binary, so the lab can prove that
// logic against real hosts on a real tailnet:
//
//   k3s --version                 prints the version it was built as, marked as a stand-in
//   k3s server                    reads /etc/rancher/k3s/config.yaml, writes the server token (or uses the
//                                 configured one) and an admin kubeconfig, listens on :6443 and keeps a list of
//                                 nodes; joining servers and agents must present the same token
//   k3s agent                     joins the server named in config.yaml with the configured token, and reports
//                                 its node name, node-ip and version every 2 seconds (a wrong token stops it)
//   vpn-auth-file                 like k3s's tailscale integration: if tailscale is not Running, runs
//                                 tailscale up --authkey <joinKey> --reset --login-server <controlServerURL>;
//                                 the node-ip is then tailscale's IPv4 (no flannel, no routes: a stand-in)
//   k3s kubectl ...               logs the call to /var/lib/rancher/k3s/standin/kubectl.log and answers
//                                 get nodes (-o json), cordon, uncordon, drain and wait --for=condition=Ready;
//                                 delete is logged and does nothing (the stand-in applies no manifest)
//
// Build: go build -ldflags "-X main.version=v1.35.3+k3s1" -o k3s .
package main

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

var version = "v0.0.0+standin"

const (
	configPath   = "/etc/rancher/k3s/config.yaml"
	dataDir      = "/var/lib/rancher/k3s"
	kubeconfig   = "/etc/rancher/k3s/k3s.yaml"
	standinDir   = dataDir + "/standin"
	nodesFile    = standinDir + "/nodes.json"
	kubectlLog   = standinDir + "/kubectl.log"
	serverPort   = "6443"
	readyWithin  = 6 * time.Second
	heartbeatGap = 2 * time.Second
)

type node struct {
	Name          string    `json:"name"`
	NodeIP        string    `json:"node_ip"`
	Version       string    `json:"version"`
	Role          string    `json:"role"`
	Unschedulable bool      `json:"unschedulable"`
	Seen          time.Time `json:"seen"`
}

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		fail("usage: k3s [--version] server|agent|kubectl ...")
	}
	switch args[0] {
	case "--version", "-v", "version":
		fmt.Printf("k3s version %s (portable-k3s lab stand-in, not k3s)\ngo version %s\n", version, runtime.Version())
	case "server":
		server(readConfig())
	case "agent":
		agent(readConfig())
	case "kubectl":
		os.Exit(kubectl(args[1:]))
	case "check-config":
		fmt.Println("portable-k3s lab stand-in: nothing to check")
	default:
		fail("k3s stand-in: unsupported command %q", args[0])
	}
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, format+"\n", a...)
	os.Exit(1)
}

// readConfig reads the subset of YAML the deploy writes: "key: value" and "key:" followed by "- item" lines.
func readConfig() map[string][]string {
	config := map[string][]string{}
	f, err := os.Open(configPath)
	if err != nil {
		fail("k3s stand-in: %v", err)
	}
	defer f.Close()
	scanner := bufio.NewScanner(f)
	last := ""
	for scanner.Scan() {
		line := strings.TrimRight(scanner.Text(), " ")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if strings.HasPrefix(trimmed, "- ") && last != "" {
			config[last] = append(config[last], unquote(strings.TrimPrefix(trimmed, "- ")))
			continue
		}
		key, value, ok := strings.Cut(trimmed, ":")
		if !ok {
			fail("k3s stand-in: %s: cannot read line %q", configPath, line)
		}
		last = strings.TrimSpace(key)
		if value = strings.TrimSpace(value); value != "" {
			config[last] = []string{unquote(value)}
		} else {
			config[last] = nil
		}
	}
	return config
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		return s[1 : len(s)-1]
	}
	return s
}

func one(config map[string][]string, key string) string {
	if v := config[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func token(config map[string][]string) string {
	if path := one(config, "token-file"); path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			fail("k3s stand-in: token-file: %v", err)
		}
		return strings.TrimSpace(string(data))
	}
	return one(config, "token")
}

// nodeIP is node-ip from config.yaml or, with vpn-auth-file (k3s's "native" tailscale mode), tailscale's IPv4.
func nodeIP(config map[string][]string) string {
	path := one(config, "vpn-auth-file")
	if path == "" {
		return one(config, "node-ip")
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		fail("k3s stand-in: vpn-auth-file: %v", err)
	}
	auth := map[string]string{}
	for _, pair := range strings.Split(strings.TrimSpace(string(raw)), ",") {
		key, value, _ := strings.Cut(pair, "=")
		auth[key] = value
	}
	if auth["name"] != "tailscale" || auth["joinKey"] == "" {
		fail("k3s stand-in: %s: needs name=tailscale and a joinKey", path)
	}
	status := tailscaleStatus()
	if status.BackendState != "Running" {
		args := []string{"up", "--authkey", auth["joinKey"], "--timeout=30s", "--reset"}
		if url := auth["controlServerURL"]; url != "" {
			args = append(args, "--login-server", url)
		}
		if out, err := exec.Command("tailscale", args...).CombinedOutput(); err != nil {
			fail("k3s stand-in: tailscale up failed: %v: %s", err, out)
		}
		status = tailscaleStatus()
	}
	for _, ip := range status.TailscaleIPs {
		if strings.Contains(ip, ".") {
			return ip
		}
	}
	fail("k3s stand-in: tailscale has no IPv4 (BackendState %s)", status.BackendState)
	return ""
}

type tailscaleInfo struct {
	BackendState string   `json:"BackendState"`
	TailscaleIPs []string `json:"TailscaleIPs"`
}

func tailscaleStatus() tailscaleInfo {
	var info tailscaleInfo
	out, err := exec.Command("tailscale", "status", "--json").Output()
	if err == nil {
		_ = json.Unmarshal(out, &info)
	}
	return info
}

func nodeName(config map[string][]string) string {
	if name := one(config, "node-name"); name != "" {
		return name
	}
	name, _ := os.Hostname()
	return name
}

func writeSecret(path, content string) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		fail("k3s stand-in: %v", err)
	}
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		fail("k3s stand-in: %v", err)
	}
}

func notifyReady() {
	socket := os.Getenv("NOTIFY_SOCKET")
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

type registry struct {
	mu    sync.Mutex
	nodes map[string]*node
}

func loadRegistry() *registry {
	r := &registry{nodes: map[string]*node{}}
	if data, err := os.ReadFile(nodesFile); err == nil {
		_ = json.Unmarshal(data, &r.nodes)
	}
	return r
}

func (r *registry) saveLocked() {
	data, _ := json.MarshalIndent(r.nodes, "", "  ")
	tmp := nodesFile + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err == nil {
		_ = os.Rename(tmp, nodesFile)
	}
}

func (r *registry) seen(n node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	old, ok := r.nodes[n.Name]
	if ok {
		n.Unschedulable = old.Unschedulable
	}
	n.Seen = time.Now().UTC()
	r.nodes[n.Name] = &n
	r.saveLocked()
}

func server(config map[string][]string) {
	if err := os.MkdirAll(standinDir, 0o700); err != nil {
		fail("k3s stand-in: %v", err)
	}
	tok := passphrase(token(config))
	tokenPath := dataDir + "/server/token"
	if tok == "" {
		if data, err := os.ReadFile(tokenPath); err == nil {
			tok = passphrase(strings.TrimSpace(string(data)))
		}
	}
	join := one(config, "server")
	if tok == "" && join != "" {
		fail("k3s stand-in: a joining server needs the cluster token (token-file or token)")
	}
	if tok == "" {
		tok = randomHex(16)
	}
	// The cluster CA's hash, as in k3s's K10<hash>::server:<passphrase> tokens: made by the first server,
	// fetched from it by joining servers (the stand-in has no real CA: a random value plays its part).
	caPath := dataDir + "/server/standin-ca-hash"
	ca := ""
	if data, err := os.ReadFile(caPath); err == nil {
		ca = strings.TrimSpace(string(data))
	}
	if ca == "" && join != "" {
		for ca == "" {
			var err error
			if ca, err = fetchCA(join, tok); err != nil {
				fmt.Fprintf(os.Stderr, "k3s stand-in: joining %s: %v\n", join, err)
				if err == errTokenRejected {
					os.Exit(1)
				}
				time.Sleep(heartbeatGap)
			}
		}
	}
	if ca == "" {
		ca = randomHex(32)
	}
	writeSecret(caPath, ca+"\n")
	full := "K10" + ca + "::server:" + tok
	writeSecret(tokenPath, full+"\n")
	writeSecret(dataDir+"/server/node-token", full+"\n")
	writeSecret(kubeconfig, "# portable-k3s lab stand-in: not a usable kubeconfig\napiVersion: v1\nkind: Config\n"+
		"clusters:\n- cluster:\n    server: https://127.0.0.1:6443\n  name: default\n"+
		"contexts:\n- context:\n    cluster: default\n    user: default\n  name: default\ncurrent-context: default\n"+
		"users:\n- name: default\n  user:\n    token: standin\n")

	reg := loadRegistry()
	self := node{Name: nodeName(config), NodeIP: nodeIP(config), Version: version, Role: "server"}
	mux := http.NewServeMux()
	accepted := func(presented string) bool {
		if strings.HasPrefix(presented, "K10") && strings.Contains(presented, "::server:") {
			if strings.TrimPrefix(strings.SplitN(presented, "::", 2)[0], "K10") != ca {
				return false // a token for another cluster's CA
			}
		}
		return passphrase(presented) == tok
	}
	mux.HandleFunc("/standin/ca", func(w http.ResponseWriter, req *http.Request) {
		if !accepted(req.Header.Get("X-Standin-Token")) {
			http.Error(w, "token rejected", http.StatusForbidden)
			return
		}
		fmt.Fprint(w, ca)
	})
	mux.HandleFunc("/standin/heartbeat", func(w http.ResponseWriter, req *http.Request) {
		if !accepted(req.Header.Get("X-Standin-Token")) {
			http.Error(w, "token rejected", http.StatusForbidden)
			return
		}
		var n node
		if err := json.NewDecoder(io.LimitReader(req.Body, 1<<16)).Decode(&n); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		reg.seen(n)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/standin/nodes", func(w http.ResponseWriter, req *http.Request) {
		reg.mu.Lock()
		defer reg.mu.Unlock()
		if req.Method == http.MethodPost { // ?node=NAME&unschedulable=true|false
			n, ok := reg.nodes[req.URL.Query().Get("node")]
			if !ok {
				http.Error(w, "not found", http.StatusNotFound)
				return
			}
			n.Unschedulable = req.URL.Query().Get("unschedulable") == "true"
			reg.saveLocked()
		}
		_ = json.NewEncoder(w).Encode(reg.nodes)
	})
	listener, err := net.Listen("tcp", ":"+serverPort)
	if err != nil {
		fail("k3s stand-in: %v", err)
	}
	go func() { fail("k3s stand-in: %v", http.Serve(listener, mux)) }()
	go func() {
		for {
			reg.seen(self)
			if join != "" {
				if err := heartbeat(join, tok, self); err != nil {
					fmt.Fprintf(os.Stderr, "k3s stand-in: joining %s: %v\n", join, err)
				}
			}
			time.Sleep(heartbeatGap)
		}
	}()
	fmt.Printf("k3s stand-in %s: server %s (node-ip %s) listening on :%s\n", version, self.Name, self.NodeIP, serverPort)
	notifyReady()
	select {}
}

func heartbeat(serverURL, tok string, n node) error {
	url := strings.TrimRight(serverURL, "/") + "/standin/heartbeat"
	url = strings.Replace(url, "https://", "http://", 1) // the stand-in speaks plain HTTP
	body, _ := json.Marshal(n)
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(string(body)))
	req.Header.Set("X-Standin-Token", tok)
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusForbidden {
		return errTokenRejected
	}
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("server answered %s", resp.Status)
	}
	return nil
}

var errTokenRejected = fmt.Errorf("the server rejected this node's token")

// passphrase is the secret part of a token: all of a plain token, the part after "::server:" of a K10 one.
func passphrase(tok string) string {
	if i := strings.Index(tok, "::server:"); strings.HasPrefix(tok, "K10") && i >= 0 {
		return tok[i+len("::server:"):]
	}
	return tok
}

func randomHex(n int) string {
	random := make([]byte, n)
	_, _ = rand.Read(random)
	return hex.EncodeToString(random)
}

func fetchCA(serverURL, tok string) (string, error) {
	url := strings.Replace(strings.TrimRight(serverURL, "/"), "https://", "http://", 1) + "/standin/ca"
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("X-Standin-Token", tok)
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusForbidden {
		return "", errTokenRejected
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 256))
	return strings.TrimSpace(string(body)), err
}

func agent(config map[string][]string) {
	join := one(config, "server")
	tok := token(config)
	if join == "" || tok == "" {
		fail("k3s stand-in: an agent needs server and token-file (or token) in %s", configPath)
	}
	self := node{Name: nodeName(config), NodeIP: nodeIP(config), Version: version, Role: "agent"}
	ready := false
	for {
		err := heartbeat(join, tok, self)
		if err == errTokenRejected {
			fail("k3s stand-in: %s: %v", join, err)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "k3s stand-in: joining %s: %v\n", join, err)
		} else if !ready {
			fmt.Printf("k3s stand-in %s: agent %s (node-ip %s) joined %s\n", version, self.Name, self.NodeIP, join)
			notifyReady()
			ready = true
		}
		time.Sleep(heartbeatGap)
	}
}

func kubectl(args []string) int {
	_ = os.MkdirAll(standinDir, 0o700)
	if f, err := os.OpenFile(kubectlLog, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600); err == nil {
		fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), strings.Join(args, " "))
		f.Close()
	}
	// Positional words only: flags, and the values of the flags that take a separate one (-o json), dropped.
	words := []string{}
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-o" || a == "--output" || a == "-n" || a == "--namespace" || a == "-l" || a == "--selector" ||
			a == "--timeout" || a == "--for":
			i++
		case !strings.HasPrefix(a, "-"):
			words = append(words, a)
		}
	}
	if len(words) == 0 {
		fmt.Fprintln(os.Stderr, "kubectl (stand-in): no command")
		return 1
	}
	nodes, err := apiNodes("", "")
	if err != nil {
		fmt.Fprintf(os.Stderr, "kubectl (stand-in): the server on this host does not answer: %v\n", err)
		return 1
	}
	switch words[0] {
	case "get":
		if len(words) < 2 || (words[1] != "nodes" && words[1] != "node") {
			fmt.Fprintf(os.Stderr, "kubectl (stand-in): only 'get nodes' is answered, not %q\n", words)
			return 1
		}
		return getNodes(nodes, words[2:], hasArg(args, "json"))
	case "cordon", "uncordon", "drain":
		if len(words) != 2 {
			fmt.Fprintf(os.Stderr, "kubectl (stand-in): %s takes one node\n", words[0])
			return 1
		}
		if _, ok := nodes[words[1]]; !ok {
			fmt.Fprintf(os.Stderr, "Error from server (NotFound): nodes %q not found\n", words[1])
			return 1
		}
		if _, err := apiNodes(words[1], fmt.Sprint(words[0] != "uncordon")); err != nil {
			fmt.Fprintf(os.Stderr, "kubectl (stand-in): %v\n", err)
			return 1
		}
		fmt.Printf("node/%s %s\n", words[1], map[string]string{"cordon": "cordoned", "uncordon": "uncordoned", "drain": "drained"}[words[0]])
		return 0
	case "wait":
		return waitReady(args)
	case "delete":
		// The stand-in applies no manifest, so there is nothing to delete: the call is logged (the lab checks that
		// a removed manifest's objects and AddOn were deleted) and answered like --ignore-not-found would.
		fmt.Printf("(stand-in) nothing to delete for %s\n", strings.Join(words[1:], " "))
		return 0
	}
	fmt.Fprintf(os.Stderr, "kubectl (stand-in): %q is not answered\n", words[0])
	return 1
}

func hasArg(args []string, value string) bool {
	for i, a := range args {
		if a == "-o"+value || a == "--output="+value || a == "-o="+value || (a == "-o" && i+1 < len(args) && args[i+1] == value) {
			return true
		}
	}
	return false
}

func isReady(n *node) bool { return time.Since(n.Seen) < readyWithin }

func nodeJSON(n *node) map[string]any {
	status := "False"
	if isReady(n) {
		status = "True"
	}
	return map[string]any{
		"apiVersion": "v1", "kind": "Node",
		"metadata": map[string]any{"name": n.Name, "labels": map[string]string{"portable-k3s/standin-role": n.Role}},
		"spec":     map[string]any{"unschedulable": n.Unschedulable},
		"status": map[string]any{
			"conditions": []map[string]string{{"type": "Ready", "status": status}},
			"addresses":  []map[string]string{{"type": "InternalIP", "address": n.NodeIP}},
			"nodeInfo":   map[string]string{"kubeletVersion": n.Version},
		},
	}
}

// apiNodes asks the server on this host for its node list; with a node name, it first sets that node's
// unschedulable flag.
func apiNodes(name, unschedulable string) (map[string]*node, error) {
	client := http.Client{Timeout: 5 * time.Second}
	url := "http://127.0.0.1:" + serverPort + "/standin/nodes"
	var resp *http.Response
	var err error
	if name != "" {
		resp, err = client.Post(url+"?node="+name+"&unschedulable="+unschedulable, "text/plain", nil)
	} else {
		resp, err = client.Get(url)
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("server answered %s", resp.Status)
	}
	nodes := map[string]*node{}
	return nodes, json.NewDecoder(resp.Body).Decode(&nodes)
}

func getNodes(nodes map[string]*node, names []string, asJSON bool) int {
	sorted := []*node{}
	for _, n := range nodes {
		if len(names) == 0 || contains(names, n.Name) {
			sorted = append(sorted, n)
		}
	}
	if len(names) > 0 && len(sorted) != len(names) {
		fmt.Fprintf(os.Stderr, "Error from server (NotFound): nodes %q not found\n", names)
		return 1
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	if asJSON {
		items := []map[string]any{}
		for _, n := range sorted {
			items = append(items, nodeJSON(n))
		}
		var out any = map[string]any{"apiVersion": "v1", "kind": "List", "items": items}
		if len(names) == 1 {
			out = items[0]
		}
		data, _ := json.MarshalIndent(out, "", "  ")
		fmt.Println(string(data))
		return 0
	}
	fmt.Printf("%-20s %-28s %-10s %s\n", "NAME", "STATUS", "ROLES", "VERSION")
	for _, n := range sorted {
		status := "NotReady"
		if isReady(n) {
			status = "Ready"
		}
		if n.Unschedulable {
			status += ",SchedulingDisabled"
		}
		fmt.Printf("%-20s %-28s %-10s %s\n", n.Name, status, n.Role, n.Version)
	}
	return 0
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func waitReady(args []string) int {
	name, timeout := "", 60*time.Second
	for _, a := range args {
		if strings.HasPrefix(a, "node/") {
			name = strings.TrimPrefix(a, "node/")
		}
		if strings.HasPrefix(a, "--timeout=") {
			if d, err := time.ParseDuration(strings.TrimPrefix(a, "--timeout=")); err == nil {
				timeout = d
			}
		}
	}
	if name == "" || !contains(args, "--for=condition=Ready") {
		fmt.Fprintln(os.Stderr, "kubectl (stand-in): only 'wait --for=condition=Ready node/NAME' is answered")
		return 1
	}
	deadline := time.Now().Add(timeout)
	for {
		if nodes, err := apiNodes("", ""); err == nil && nodes[name] != nil && isReady(nodes[name]) {
			fmt.Printf("node/%s condition met\n", name)
			return 0
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "error: timed out waiting for the condition on nodes/%s\n", name)
			return 1
		}
		time.Sleep(500 * time.Millisecond)
	}
}
