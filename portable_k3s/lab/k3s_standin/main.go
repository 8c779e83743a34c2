// k3s-standin: a small stand-in for the k3s binary, used only by the portable-k3s lab.
//
// It is NOT k3s. k3s cannot be downloaded on the machine the lab runs on, and its containers would not run in
// the lab's hosts. This program answers what the deploy logic needs of a k3s binary, so the lab can prove that
// logic against real hosts on a real tailnet:
//
//   k3s --version                 prints the version it was built as, marked as a stand-in
//   k3s server                    reads /etc/rancher/k3s/config.yaml, writes the server token (or uses the
//                                 configured one) and an admin kubeconfig, listens on :6443 and keeps a list of
//                                 nodes; joining servers and agents must present the same token; agents may
//                                 instead present a bootstrap token from `k3s token create` (an expired one only
//                                 from a node already listed)
//   k3s server --cluster-reset [--cluster-reset-restore-path=PATH]
//                                 (or cluster-reset: true / cluster-reset-restore-path: PATH in config.yaml) with
//                                 the server stopped: restores the CA hash, node list and token from a snapshot
//                                 saved with the same token, prints k3s's reset message and exits (no path: only
//                                 the message)
//   k3s token create [--ttl 24h] [--description TEXT]
//                                 on a server: prints a bootstrap token K10<ca hash>::<id>.<secret> (ttl 0: never
//                                 expires), kept hashed in /var/lib/rancher/k3s/standin/bootstrap-tokens.json
//   k3s token list [-o json]      on a server: the bootstrap tokens, once the expired ones are dropped
//   k3s etcd-snapshot save [--name on-demand]
//                                 on a server: writes server/db/snapshots/<name>-<node-name>-<unix time>, JSON
//                                 with the node list, the CA hash and the token's sha256 (no etcd: a stand-in)
//   k3s agent                     joins the server named in config.yaml with the configured token, and reports
//                                 its node name, node-ip and version every 2 seconds (a wrong token stops it)
//   vpn-auth-file                 like k3s's tailscale integration: if tailscale is not Running, runs
//                                 tailscale up --authkey <joinKey> --reset --login-server <controlServerURL>;
//                                 the node-ip is then tailscale's IPv4 (no flannel, no routes: a stand-in)
//   k3s kubectl ...               logs the call to /var/lib/rancher/k3s/standin/kubectl.log and answers
//                                 get nodes (-o json), cordon, uncordon, drain, wait --for=condition=Ready and
//                                 delete node NAME... (a node that still runs registers again); any other delete
//                                 is logged and does nothing (the stand-in applies no manifest)
//
// Build: go build -ldflags "-X main.version=v1.35.3+k3s1" -o k3s .
package main

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
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
	caFile       = dataDir + "/server/standin-ca-hash"
	tokenFile    = dataDir + "/server/token"
	snapshotDir  = dataDir + "/server/db/snapshots"
	snapshotsLog = standinDir + "/snapshots.log"
	// Bootstrap tokens by id; expired ones move to expiredFile, where the server still finds them for the nodes
	// that joined with them.
	tokensFile   = standinDir + "/bootstrap-tokens.json"
	expiredFile  = standinDir + "/expired-bootstrap-tokens.json"
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
		fail("usage: k3s [--version] server|agent|kubectl|token|etcd-snapshot ...")
	}
	switch args[0] {
	case "--version", "-v", "version":
		fmt.Printf("k3s version %s (portable-k3s lab stand-in, not k3s)\ngo version %s\n", version, runtime.Version())
	case "server":
		config := readConfig()
		if reset, restore := clusterResetArgs(config, args[1:]); reset || restore != "" {
			clusterReset(config, reset, restore)
			return
		}
		server(config)
	case "agent":
		agent(readConfig())
	case "kubectl":
		os.Exit(kubectl(args[1:]))
	case "token":
		tokenCommand(args[1:])
	case "etcd-snapshot":
		etcdSnapshot(args[1:])
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

func (r *registry) has(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.nodes[name]
	return ok
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
	// accepted: the server token, or (for agents) a bootstrap token (see bootstrapAccepted) presented by nodeName
	// ("" for a joining server: like k3s, servers join with the server token only).
	accepted := func(presented, nodeName string) bool {
		if strings.HasPrefix(presented, "K10") && strings.Contains(presented, "::server:") {
			if strings.TrimPrefix(strings.SplitN(presented, "::", 2)[0], "K10") != ca {
				return false // a token for another cluster's CA
			}
		}
		if passphrase(presented) == tok {
			return true
		}
		return nodeName != "" && bootstrapAccepted(presented, ca, func() bool { return reg.has(nodeName) })
	}
	mux.HandleFunc("/standin/ca", func(w http.ResponseWriter, req *http.Request) {
		if !accepted(req.Header.Get("X-Standin-Token"), "") {
			http.Error(w, "token rejected", http.StatusForbidden)
			return
		}
		fmt.Fprint(w, ca)
	})
	mux.HandleFunc("/standin/heartbeat", func(w http.ResponseWriter, req *http.Request) {
		// The node first: its name decides whether an expired bootstrap token is still accepted.
		var n node
		err := json.NewDecoder(io.LimitReader(req.Body, 1<<16)).Decode(&n)
		name := n.Name
		if err != nil {
			name = ""
		}
		if !accepted(req.Header.Get("X-Standin-Token"), name) {
			http.Error(w, "token rejected", http.StatusForbidden)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		reg.seen(n)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/standin/nodes", func(w http.ResponseWriter, req *http.Request) {
		reg.mu.Lock()
		defer reg.mu.Unlock()
		if req.Method == http.MethodPost { // ?node=NAME&unschedulable=true|false, or ?node=NAME&delete=true
			query := req.URL.Query()
			n, ok := reg.nodes[query.Get("node")]
			if !ok {
				http.Error(w, "not found", http.StatusNotFound)
				return
			}
			if query.Get("delete") == "true" {
				delete(reg.nodes, query.Get("node"))
			} else {
				n.Unschedulable = query.Get("unschedulable") == "true"
			}
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
	nodes, err := apiNodes(nil)
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
		change := url.Values{"node": {words[1]}, "unschedulable": {fmt.Sprint(words[0] != "uncordon")}}
		if _, err := apiNodes(change); err != nil {
			fmt.Fprintf(os.Stderr, "kubectl (stand-in): %v\n", err)
			return 1
		}
		fmt.Printf("node/%s %s\n", words[1], map[string]string{"cordon": "cordoned", "uncordon": "uncordoned", "drain": "drained"}[words[0]])
		return 0
	case "wait":
		return waitReady(args)
	case "delete":
		if names, ok := deleteNodeNames(words[1:], args); ok {
			return deleteNodes(names, contains(args, "--ignore-not-found") || contains(args, "--ignore-not-found=true"))
		}
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

// apiNodes asks the server on this host for its node list; with a change (node=NAME and unschedulable=true|false
// or delete=true), it first applies it to that node.
func apiNodes(change url.Values) (map[string]*node, error) {
	client := http.Client{Timeout: 5 * time.Second}
	endpoint := "http://127.0.0.1:" + serverPort + "/standin/nodes"
	var resp *http.Response
	var err error
	if change != nil {
		resp, err = client.Post(endpoint+"?"+change.Encode(), "text/plain", nil)
	} else {
		resp, err = client.Get(endpoint)
	}
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusNotFound && change != nil {
		return nil, errNodeNotFound
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("server answered %s", resp.Status)
	}
	nodes := map[string]*node{}
	return nodes, json.NewDecoder(resp.Body).Decode(&nodes)
}

var errNodeNotFound = fmt.Errorf("the server has no such node")

// deleteNodeNames reads "delete node|nodes|no NAME..." and "delete node/NAME...": ok is false for other deletes.
func deleteNodeNames(words, args []string) (names []string, ok bool) {
	if len(words) > 0 && (words[0] == "node" || words[0] == "nodes" || words[0] == "no") {
		return words[1:], true
	}
	if len(words) == 0 || contains(args, "-f") || contains(args, "--filename") {
		return nil, false
	}
	for _, w := range words {
		name, found := strings.CutPrefix(w, "node/")
		if !found {
			if name, found = strings.CutPrefix(w, "nodes/"); !found {
				return nil, false
			}
		}
		names = append(names, name)
	}
	return names, true
}

// deleteNodes removes nodes from the server's list, answering like kubectl.
func deleteNodes(names []string, ignoreNotFound bool) int {
	if len(names) == 0 {
		fmt.Fprintln(os.Stderr, "error: resource(s) were provided, but no name was specified")
		return 1
	}
	code := 0
	for _, name := range names {
		_, err := apiNodes(url.Values{"node": {name}, "delete": {"true"}})
		switch {
		case err == errNodeNotFound && ignoreNotFound:
		case err == errNodeNotFound:
			fmt.Fprintf(os.Stderr, "Error from server (NotFound): nodes %q not found\n", name)
			code = 1
		case err != nil:
			fmt.Fprintf(os.Stderr, "kubectl (stand-in): %v\n", err)
			code = 1
		default:
			fmt.Printf("node %q deleted\n", name)
		}
	}
	return code
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
		if nodes, err := apiNodes(nil); err == nil && nodes[name] != nil && isReady(nodes[name]) {
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

// writeAtomic writes a 0600 file through a temporary file and a rename, so a reader never sees half of it.
func writeAtomic(path string, data []byte) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		fail("k3s stand-in: %v", err)
	}
	tmp := path + ".tmp"
	_ = os.Remove(tmp)
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		fail("k3s stand-in: %v", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		fail("k3s stand-in: %v", err)
	}
}

func writeJSON(path string, v any) {
	data, _ := json.MarshalIndent(v, "", "  ")
	writeAtomic(path, append(data, '\n'))
}

func appendLine(path, line string) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		fail("k3s stand-in: %v", err)
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		fail("k3s stand-in: %v", err)
	}
	defer f.Close()
	fmt.Fprintln(f, line)
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// parseFlags reads "--flag VALUE", "--flag=VALUE" (and "-oVALUE") for the flags in takes, which all take a
// value; anything else is an error, as in k3s's CLI.
func parseFlags(command string, args []string, takes ...string) map[string]string {
	values := map[string]string{}
	for i := 0; i < len(args); i++ {
		name, value, hasValue := strings.Cut(args[i], "=")
		if !contains(takes, name) && !strings.HasPrefix(name, "--") && len(name) > 2 && contains(takes, name[:2]) {
			name, value, hasValue = name[:2], args[i][2:], true
		}
		if !contains(takes, name) {
			fail("k3s stand-in: %s: unsupported argument %q", command, args[i])
		}
		if !hasValue {
			if i+1 >= len(args) {
				fail("k3s stand-in: %s: %s needs a value", command, name)
			}
			i++
			value = args[i]
		}
		values[name] = value
	}
	return values
}

// serverCA is this host's cluster CA hash, written by k3s server: the commands that only run on a server need it.
func serverCA(command string) string {
	data, err := os.ReadFile(caFile)
	ca := strings.TrimSpace(string(data))
	if err != nil || ca == "" {
		fail("k3s stand-in: %s: no k3s server on this host (no %s): run it on a server", command, caFile)
	}
	return ca
}

// bootstrapToken is one token of k3s token create, stored by id; its secret only as a sha256.
type bootstrapToken struct {
	SecretSHA256 string `json:"secret_sha256"`
	Expires      string `json:"expires"` // RFC3339 UTC, "" for never
	Description  string `json:"description"`
	Created      string `json:"created"`
}

func (t bootstrapToken) expired(now time.Time) bool {
	if t.Expires == "" {
		return false
	}
	at, err := time.Parse(time.RFC3339, t.Expires)
	return err != nil || !now.Before(at)
}

func readTokens(path string) (map[string]bootstrapToken, error) {
	tokens := map[string]bootstrapToken{}
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return tokens, nil
	}
	if err == nil {
		err = json.Unmarshal(data, &tokens)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	if tokens == nil { // the file held null
		tokens = map[string]bootstrapToken{}
	}
	return tokens, nil
}

// liveTokens reads the bootstrap tokens, first moving the expired ones to expiredFile (k3s's token cleaner
// deletes them; the stand-in's server still finds them there, for the nodes that joined with them).
func liveTokens() map[string]bootstrapToken {
	tokens, err := readTokens(tokensFile)
	if err != nil {
		fail("k3s stand-in: %v", err)
	}
	now := time.Now()
	expired, err := readTokens(expiredFile)
	if err != nil {
		expired = map[string]bootstrapToken{}
	}
	dropped := false
	for id, t := range tokens {
		if t.expired(now) {
			expired[id] = t
			delete(tokens, id)
			dropped = true
		}
	}
	if dropped {
		writeJSON(expiredFile, expired) // first: a token is never in neither file
		writeJSON(tokensFile, tokens)
	}
	return tokens
}

// parseBootstrapToken splits K10<ca hash>::<id>.<secret> or <id>.<secret> (id [a-z0-9]{6}, secret [a-z0-9]{16}).
func parseBootstrapToken(tok string) (ca, id, secret string, ok bool) {
	creds := tok
	if strings.HasPrefix(tok, "K10") {
		if ca, creds, ok = strings.Cut(tok[3:], "::"); !ok {
			return "", "", "", false
		}
	}
	id, secret, ok = strings.Cut(creds, ".")
	if !ok || !tokenChars(id, 6) || !tokenChars(secret, 16) {
		return "", "", "", false
	}
	return ca, id, secret, true
}

func tokenChars(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			return false
		}
	}
	return true
}

// bootstrapAccepted: presented is a bootstrap token of this cluster (its CA hash, when it has one, is ca) that has
// not expired, or has but comes from a node the server already lists (known): in k3s a joined node restarts on its
// kubelet's own credentials, while a new node cannot join with an expired token. The files are re-read each time.
func bootstrapAccepted(presented, ca string, known func() bool) bool {
	tokCA, id, secret, ok := parseBootstrapToken(presented)
	if !ok || (tokCA != "" && tokCA != ca) {
		return false
	}
	t, found := bootstrapToken{}, false
	for _, path := range []string{tokensFile, expiredFile} {
		if tokens, err := readTokens(path); err == nil {
			if t, found = tokens[id]; found {
				break
			}
		}
	}
	if !found || sha256Hex(secret) != t.SecretSHA256 {
		return false
	}
	return !t.expired(time.Now()) || known()
}

// randomToken is n random characters of [a-z0-9], as in bootstrap tokens.
func randomToken(n int) string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	out := make([]byte, 0, n)
	b := make([]byte, 1)
	for len(out) < n {
		_, _ = rand.Read(b)
		if b[0] < 252 { // 252 = 7*36: no bias
			out = append(out, alphabet[b[0]%36])
		}
	}
	return string(out)
}

// shortDuration formats a ttl as kubectl's ShortHumanDuration does (truncated: 59m, 23h, 6d, 2y).
func shortDuration(d time.Duration) string {
	switch seconds := int(d.Seconds()); {
	case seconds < -1:
		return "<invalid>"
	case seconds < 0:
		return "0s"
	case seconds < 60:
		return fmt.Sprintf("%ds", seconds)
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d < 2*365*24*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours())/24)
	}
	return fmt.Sprintf("%dy", int(d.Hours())/24/365)
}

func tokenCommand(args []string) {
	usage := "usage: k3s token create [--ttl 24h] [--description TEXT] | k3s token list [-o json]"
	if len(args) == 0 {
		fail("%s", usage)
	}
	switch args[0] {
	case "create":
		tokenCreate(parseFlags("token create", args[1:], "--ttl", "--description"))
	case "list":
		tokenList(parseFlags("token list", args[1:], "-o", "--output"))
	default:
		fail("k3s stand-in: token %s is not supported (%s)", args[0], usage)
	}
}

func tokenCreate(flags map[string]string) {
	ttl := 24 * time.Hour
	if value, ok := flags["--ttl"]; ok {
		d, err := time.ParseDuration(value)
		if err != nil || d < 0 {
			fail("k3s stand-in: token create: invalid --ttl %q: a duration like 30s, 2m, 3h (0: never expires)", value)
		}
		ttl = d
	}
	ca := serverCA("token create")
	tokens := liveTokens()
	id := randomToken(6)
	for _, taken := tokens[id]; taken; _, taken = tokens[id] {
		id = randomToken(6)
	}
	secret := randomToken(16)
	now := time.Now().UTC()
	t := bootstrapToken{SecretSHA256: sha256Hex(secret), Description: flags["--description"],
		Created: now.Format(time.RFC3339)}
	if ttl > 0 { // to the second, cut like kubeadm's: a fresh 24h token lists as 23h
		t.Expires = now.Add(ttl).Format(time.RFC3339)
	}
	tokens[id] = t
	writeJSON(tokensFile, tokens)
	fmt.Printf("K10%s::%s.%s\n", ca, id, secret)
}

func tokenList(flags map[string]string) {
	format := "text"
	for _, flag := range []string{"-o", "--output"} {
		if value, ok := flags[flag]; ok {
			format = value
		}
	}
	if format != "text" && format != "json" {
		fail("k3s stand-in: token list: output format %q is not supported (text or json)", format)
	}
	serverCA("token list")
	tokens := liveTokens()
	ids := []string{}
	for id := range tokens {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	if format == "json" {
		type listed struct {
			ID          string `json:"id"`
			Expires     string `json:"expires"`
			Description string `json:"description"`
		}
		out := []listed{}
		for _, id := range ids {
			out = append(out, listed{id, tokens[id].Expires, tokens[id].Description})
		}
		data, _ := json.MarshalIndent(out, "", "  ")
		fmt.Println(string(data))
		return
	}
	w := tabwriter.NewWriter(os.Stdout, 10, 4, 3, ' ', 0)
	fmt.Fprintln(w, "TOKEN\tTTL\tEXPIRES\tUSAGES\tDESCRIPTION")
	for _, id := range ids {
		t := tokens[id]
		ttl, expires, description := "<forever>", "<never>", t.Description
		if t.Expires != "" {
			at, _ := time.Parse(time.RFC3339, t.Expires)
			ttl, expires = shortDuration(time.Until(at)), t.Expires
		}
		if description == "" {
			description = "<none>"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", id, ttl, expires, "authentication,signing", description)
	}
	_ = w.Flush()
}

// snapshot is the stand-in's etcd snapshot: what a restore gives back (k3s's snapshot holds its bootstrap data
// encrypted with the token, so only the token's hash here, to refuse another token as k3s would).
type snapshot struct {
	StandinSnapshot int              `json:"standin_snapshot"`
	Nodes           map[string]*node `json:"nodes"`
	CA              string           `json:"ca"`
	TokenSHA256     string           `json:"token_sha256"`
}

// serverPassphrase is the passphrase of the token in server/token ("" if there is none).
func serverPassphrase() string {
	data, err := os.ReadFile(tokenFile)
	if err != nil {
		return ""
	}
	return passphrase(strings.TrimSpace(string(data)))
}

func etcdSnapshot(args []string) {
	if len(args) == 0 || args[0] != "save" {
		fail("k3s stand-in: only 'etcd-snapshot save [--name NAME]' is supported")
	}
	flags := parseFlags("etcd-snapshot save", args[1:], "--name")
	name := "on-demand"
	if value, ok := flags["--name"]; ok {
		name = value
	}
	if name == "" || strings.Contains(name, "/") {
		fail("k3s stand-in: etcd-snapshot save: invalid --name %q", name)
	}
	pass := serverPassphrase()
	if pass == "" {
		fail("k3s stand-in: etcd-snapshot save: no k3s server on this host (no %s): run it on a server", tokenFile)
	}
	ca := serverCA("etcd-snapshot save")
	file := fmt.Sprintf("%s-%s-%d", name, nodeName(readConfig()), time.Now().Unix())
	path := snapshotDir + "/" + file
	writeJSON(path, snapshot{StandinSnapshot: 1, Nodes: loadRegistry().nodes, CA: ca, TokenSHA256: sha256Hex(pass)})
	appendLine(snapshotsLog, time.Now().UTC().Format(time.RFC3339)+" save "+path)
	fmt.Printf("Snapshot %s saved.\n", file)
}

// clusterResetArgs reads --cluster-reset and --cluster-reset-restore-path, from the command line or else from
// config.yaml, as k3s does; the server's other arguments stay ignored.
func clusterResetArgs(config map[string][]string, args []string) (reset bool, restore string) {
	reset = strings.EqualFold(one(config, "cluster-reset"), "true")
	restore = one(config, "cluster-reset-restore-path")
	for i := 0; i < len(args); i++ {
		name, value, hasValue := strings.Cut(args[i], "=")
		switch name {
		case "--cluster-reset":
			reset = !hasValue || strings.EqualFold(value, "true")
		case "--cluster-reset-restore-path":
			if !hasValue && i+1 < len(args) {
				i++
				value = args[i]
			}
			restore = value
		}
	}
	return reset, restore
}

// clusterReset restores a snapshot (with restore) while the server is stopped: the CA hash, the node list and the
// token come back, the token having to be the snapshot's cluster's. It never serves.
func clusterReset(config map[string][]string, reset bool, restore string) {
	if !reset {
		fail("k3s stand-in: invalid flag use; --cluster-reset required with --cluster-reset-restore-path")
	}
	done := "Managed etcd cluster membership has been reset, restart without --cluster-reset flag now."
	if restore == "" {
		fmt.Println(done)
		return
	}
	listener, err := net.Listen("tcp", ":"+serverPort)
	if err != nil {
		fail("k3s stand-in: k3s is running: stop it before a cluster reset (:%s: %v)", serverPort, err)
	}
	listener.Close()
	data, err := os.ReadFile(restore)
	if os.IsNotExist(err) {
		fail("k3s stand-in: etcd: snapshot path does not exist: %s", restore)
	} else if err != nil {
		fail("k3s stand-in: etcd: %v", err)
	}
	var snap snapshot
	if err := json.Unmarshal(data, &snap); err != nil || snap.StandinSnapshot != 1 || snap.CA == "" ||
		snap.TokenSHA256 == "" {
		fail("k3s stand-in: %s is not a stand-in etcd snapshot (from k3s etcd-snapshot save)", restore)
	}
	pass := passphrase(token(config))
	if pass == "" {
		pass = serverPassphrase()
	}
	if pass == "" {
		fail("k3s stand-in: a restore needs the token of the cluster the snapshot came from (token-file or token)")
	}
	if sha256Hex(pass) != snap.TokenSHA256 {
		fail("k3s stand-in: bootstrap data in snapshot %s cannot be decrypted with this token: restore with the "+
			"token of the cluster the snapshot came from", restore)
	}
	if snap.Nodes == nil {
		snap.Nodes = map[string]*node{}
	}
	writeAtomic(caFile, []byte(snap.CA+"\n"))
	writeJSON(nodesFile, snap.Nodes)
	full := "K10" + snap.CA + "::server:" + pass
	writeAtomic(tokenFile, []byte(full+"\n"))
	writeAtomic(dataDir+"/server/node-token", []byte(full+"\n"))
	appendLine(snapshotsLog, time.Now().UTC().Format(time.RFC3339)+" restore "+restore)
	fmt.Println(done)
}
