package main

// k3s server: embedded etcd, kube-apiserver, kube-controller-manager and kube-scheduler in this process, the
// supervisor on :6443 (k3s's join endpoints, everything else handed to the apiserver), then this node's agent.

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	apiapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	cmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	schedapp "k8s.io/kubernetes/cmd/kube-scheduler/app"
)

type serverPKI struct {
	serverCA, clientCA, requestHeaderCA *keyPair
	caBundle                            []byte // server-ca.crt as served at /cacerts
	clientCABundle                      []byte
}

func tlsPath(name string) string { return filepath.Join(tlsDir, name) }

// ensureServerPKI makes (once) and loads the server's CAs and the control plane's certificates.
func ensureServerPKI(nodeIP string, sans []string) (*serverPKI, error) {
	var p serverPKI
	var err error
	if p.serverCA, err = ensureCA(tlsPath("server-ca"), "k3s-server-ca"); err != nil {
		return nil, err
	}
	if p.clientCA, err = ensureCA(tlsPath("client-ca"), "k3s-client-ca"); err != nil {
		return nil, err
	}
	if p.requestHeaderCA, err = ensureCA(tlsPath("request-header-ca"), "k3s-request-header-ca"); err != nil {
		return nil, err
	}
	if err := ensureServiceKey(tlsPath("service.key")); err != nil {
		return nil, err
	}
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.43.0.1"), net.ParseIP(nodeIP)}
	dns := []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + clusterDomain, "localhost"}
	for _, san := range sans {
		if ip := net.ParseIP(san); ip != nil {
			ips = append(ips, ip)
		} else if san != "" {
			dns = append(dns, san)
		}
	}
	if hostname, _ := os.Hostname(); hostname != "" {
		dns = append(dns, hostname)
	}
	serving := certSpec{CN: "kube-apiserver", Server: true, DNS: dns, IPs: ips}
	if _, err := ensureIssued(tlsPath("serving-kube-apiserver"), p.serverCA, serving); err != nil {
		return nil, err
	}
	clients := map[string]certSpec{
		"client-admin":          {CN: "system:admin", Orgs: []string{"system:masters"}, Client: true},
		"client-controller":     {CN: "system:kube-controller-manager", Client: true},
		"client-scheduler":      {CN: "system:kube-scheduler", Client: true},
		"client-kube-apiserver": {CN: "system:apiserver", Orgs: []string{"system:masters"}, Client: true},
		"client-supervisor":     {CN: "system:k3s-supervisor", Orgs: []string{"system:masters"}, Client: true},
	}
	for name, spec := range clients {
		if _, err := ensureIssued(tlsPath(name), p.clientCA, spec); err != nil {
			return nil, err
		}
	}
	if _, err := ensureIssued(tlsPath("client-auth-proxy"), p.requestHeaderCA, certSpec{CN: "system:auth-proxy", Client: true}); err != nil {
		return nil, err
	}
	p.caBundle = encodeCert(p.serverCA.Cert)
	p.clientCABundle = encodeCert(p.clientCA.Cert)
	local := fmt.Sprintf("https://127.0.0.1:%d", apiserverPort)
	for name, base := range map[string]string{"admin": "client-admin", "controller": "client-controller",
		"scheduler": "client-scheduler", "supervisor": "client-supervisor"} {
		kc := kubeconfig(local, tlsPath("server-ca.crt"), tlsPath(base+".crt"), tlsPath(base+".key"))
		if err := writeFile(filepath.Join(serverDir, "cred", name+".kubeconfig"), kc, 0o600); err != nil {
			return nil, err
		}
	}
	return &p, nil
}

// writeServerToken writes the cluster token's K10 form (with the CA hash) to server/token and server/node-token.
func writeServerToken(pki *serverPKI, pass string) error {
	full := fmt.Sprintf("K10%s::server:%s\n", caHash(pki.caBundle), pass)
	for _, path := range []string{serverTokenPath, filepath.Join(serverDir, "node-token")} {
		if err := writeIfChanged(path, []byte(full), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func startEtcd(ctx context.Context) (*embed.Etcd, error) {
	return startEtcdAt(ctx, filepath.Join(serverDir, "db", "etcd"))
}

// startEtcdAt starts a one-member etcd on dir, for this host only (127.0.0.1:2379, peers 127.0.0.1:2380).
func startEtcdAt(ctx context.Context, dir string) (*embed.Etcd, error) {
	ec := embed.NewConfig()
	ec.Name = "default"
	ec.Dir = dir
	client, _ := url.Parse("http://127.0.0.1:2379")
	peer, _ := url.Parse("http://127.0.0.1:2380")
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	ec.InitialCluster = "default=http://127.0.0.1:2380"
	ec.LogLevel = "error"
	ec.QuotaBackendBytes = 2 * 1024 * 1024 * 1024
	etcd, err := embed.StartEtcd(ec)
	if err != nil {
		return nil, fmt.Errorf("etcd: %w", err)
	}
	select {
	case <-etcd.Server.ReadyNotify():
		return etcd, nil
	case <-time.After(2 * time.Minute):
		etcd.Close()
		return nil, errors.New("etcd did not become ready within 2 minutes")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func apiserverArgs(cfg config, nodeIP string) []string {
	args := []string{
		"--advertise-address=" + nodeIP,
		fmt.Sprintf("--advertise-port=%d", supervisorPort),
		"--allow-privileged=true",
		"--anonymous-auth=false",
		"--api-audiences=https://kubernetes.default.svc." + clusterDomain + ",k3s",
		"--authorization-mode=Node,RBAC",
		"--bind-address=127.0.0.1",
		fmt.Sprintf("--secure-port=%d", apiserverPort),
		"--cert-dir=" + filepath.Join(tlsDir, "temporary-certs"),
		"--client-ca-file=" + tlsPath("client-ca.crt"),
		"--enable-admission-plugins=NodeRestriction",
		"--enable-bootstrap-token-auth=true",
		"--etcd-servers=http://127.0.0.1:2379",
		"--kubelet-client-certificate=" + tlsPath("client-kube-apiserver.crt"),
		"--kubelet-client-key=" + tlsPath("client-kube-apiserver.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
		"--proxy-client-cert-file=" + tlsPath("client-auth-proxy.crt"),
		"--proxy-client-key-file=" + tlsPath("client-auth-proxy.key"),
		"--requestheader-allowed-names=system:auth-proxy",
		"--requestheader-client-ca-file=" + tlsPath("request-header-ca.crt"),
		"--requestheader-extra-headers-prefix=X-Remote-Extra-",
		"--requestheader-group-headers=X-Remote-Group",
		"--requestheader-username-headers=X-Remote-User",
		"--service-account-issuer=https://kubernetes.default.svc." + clusterDomain,
		"--service-account-key-file=" + tlsPath("service.key"),
		"--service-account-signing-key-file=" + tlsPath("service.key"),
		"--service-cluster-ip-range=" + serviceCIDR,
		"--service-node-port-range=30000-32767",
		"--storage-backend=etcd3",
		"--tls-cert-file=" + tlsPath("serving-kube-apiserver.crt"),
		"--tls-private-key-file=" + tlsPath("serving-kube-apiserver.key"),
	}
	return append(args, cfg.extraArgs("kube-apiserver-arg")...)
}

func controllerManagerArgs(cfg config) []string {
	args := []string{
		"--kubeconfig=" + filepath.Join(serverDir, "cred", "controller.kubeconfig"),
		"--authentication-kubeconfig=" + filepath.Join(serverDir, "cred", "controller.kubeconfig"),
		"--authorization-kubeconfig=" + filepath.Join(serverDir, "cred", "controller.kubeconfig"),
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + clusterCIDR,
		"--service-cluster-ip-range=" + serviceCIDR,
		"--node-cidr-mask-size-ipv4=24",
		"--bind-address=127.0.0.1",
		"--secure-port=10257",
		"--cluster-signing-kube-apiserver-client-cert-file=" + tlsPath("client-ca.crt"),
		"--cluster-signing-kube-apiserver-client-key-file=" + tlsPath("client-ca.key"),
		"--cluster-signing-kubelet-client-cert-file=" + tlsPath("client-ca.crt"),
		"--cluster-signing-kubelet-client-key-file=" + tlsPath("client-ca.key"),
		"--cluster-signing-kubelet-serving-cert-file=" + tlsPath("server-ca.crt"),
		"--cluster-signing-kubelet-serving-key-file=" + tlsPath("server-ca.key"),
		"--cluster-signing-legacy-unknown-cert-file=" + tlsPath("server-ca.crt"),
		"--cluster-signing-legacy-unknown-key-file=" + tlsPath("server-ca.key"),
		"--controllers=*,tokencleaner",
		"--root-ca-file=" + tlsPath("server-ca.crt"),
		"--service-account-private-key-file=" + tlsPath("service.key"),
		"--use-service-account-credentials=true",
		"--profiling=false",
		"--leader-elect=false",
	}
	return append(args, cfg.extraArgs("kube-controller-manager-arg")...)
}

func schedulerArgs(cfg config) []string {
	kc := filepath.Join(serverDir, "cred", "scheduler.kubeconfig")
	args := []string{
		"--kubeconfig=" + kc, "--authentication-kubeconfig=" + kc, "--authorization-kubeconfig=" + kc,
		"--bind-address=127.0.0.1", "--secure-port=10259", "--profiling=false", "--leader-elect=false",
	}
	return append(args, cfg.extraArgs("kube-scheduler-arg")...)
}

func runServer(ctx context.Context, cfg config) error {
	if cfg.str("server") != "" {
		return errors.New("joining another server (HA) is not supported by the lab's k3s stand-in yet")
	}
	nodeIP, err := resolveNodeIP(cfg)
	if err != nil {
		return err
	}
	for _, dir := range []string{serverDir, filepath.Join(serverDir, "cred"), tlsDir, filepath.Join(tlsDir, "temporary-certs")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
	}
	for _, ca := range []string{"server-ca", "client-ca", "request-header-ca"} {
		if _, err := ensureCA(tlsPath(ca), "k3s-"+ca); err != nil {
			return fmt.Errorf("certificates: %w", err)
		}
	}
	if err := ensureServiceKey(tlsPath("service.key")); err != nil {
		return err
	}
	tok, err := cfg.token()
	if err != nil {
		return err
	}
	pass := passphrase(tok)
	if pass == "" {
		if data, err := os.ReadFile(serverTokenPath); err == nil {
			pass = passphrase(strings.TrimSpace(string(data)))
		}
	}
	if pass == "" {
		pass = randomHex(16)
	}
	logf("starting etcd")
	etcd, err := startEtcd(ctx)
	if err != nil {
		return err
	}
	defer etcd.Close()
	if err := reconcileBootstrap(ctx, pass); err != nil {
		return fmt.Errorf("bootstrap data: %w", err)
	}
	pki, err := ensureServerPKI(nodeIP, append(cfg.list("tls-san"), cfg.str("advertise-address")))
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	if err := writeServerToken(pki, pass); err != nil {
		return err
	}

	logf("starting kube-apiserver")
	go func() {
		command := apiapp.NewAPIServerCommand(ctx.Done())
		command.SetArgs(apiserverArgs(cfg, nodeIP))
		componentExited(ctx, "kube-apiserver", command.ExecuteContext(ctx))
	}()
	startup := <-apiapp.StartupConfig
	admin, err := clientFor(filepath.Join(serverDir, "cred", "supervisor.kubeconfig"))
	if err != nil {
		return err
	}
	s3, err := etcdS3FromConfig(cfg)
	if err != nil {
		return err
	}
	supervisor := &supervisor{pki: pki, passphrase: pass, api: startup.Handler, client: admin, cfg: cfg, etcdS3: s3}
	if err := supervisor.listen(); err != nil {
		return err
	}
	if err := waitAPIReady(ctx, admin); err != nil {
		return err
	}
	if err := ensureControllerRBAC(ctx, admin); err != nil {
		return err
	}
	logf("kube-apiserver is ready; starting kube-controller-manager and kube-scheduler")
	go func() {
		command := cmapp.NewControllerManagerCommand()
		command.SetArgs(controllerManagerArgs(cfg))
		componentExited(ctx, "kube-controller-manager", command.ExecuteContext(ctx))
	}()
	go func() {
		command := schedapp.NewSchedulerCommand(ctx.Done())
		command.SetArgs(schedulerArgs(cfg))
		componentExited(ctx, "kube-scheduler", command.ExecuteContext(ctx))
	}()
	if err := writeAdminKubeconfig(cfg, pki); err != nil {
		return err
	}
	if err := writeBundledManifests(cfg); err != nil {
		return err
	}
	go deployManifests(ctx)
	if !cfg.disabled("local-storage") {
		go provisionLocalPaths(ctx, admin, cfg)
	}
	go labelServerNode(ctx, admin, cfg.nodeName())
	// The server is an agent too: its kubelet takes its certificates from this server, through the supervisor.
	return runAgent(ctx, cfg, agentJoin{
		serverURL: fmt.Sprintf("https://127.0.0.1:%d", supervisorPort), token: "K10" + caHash(pki.caBundle) + "::server:" + pass,
		nodeIP: nodeIP, server: true,
	})
}

// ensureControllerRBAC lets k3s's own agent controllers (flannel here) read every node and annotate their own, as
// k3s's system:k3s-controller ClusterRole does: the Node authorizer lets a kubelet's credentials read only its node.
func ensureControllerRBAC(ctx context.Context, client *kubernetes.Clientset) error {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "system:k3s-controller"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch", "patch", "update"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch", "update"}},
			{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "system:k3s-controller"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "User", Name: "system:k3s-controller"}},
	}
	roles := client.RbacV1().ClusterRoles()
	if _, err := roles.Update(ctx, role, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		_, err = roles.Create(ctx, role, metav1.CreateOptions{})
		if err != nil {
			return err
		}
	} else if err != nil {
		return err
	}
	bindings := client.RbacV1().ClusterRoleBindings()
	if _, err := bindings.Update(ctx, binding, metav1.UpdateOptions{}); apierrors.IsNotFound(err) {
		_, err = bindings.Create(ctx, binding, metav1.CreateOptions{})
		return err
	} else {
		return err
	}
}

// labelServerNode gives this server's node k3s's role labels once it has registered (the NodeRestriction admission
// plugin keeps a kubelet from setting node-role labels itself).
func labelServerNode(ctx context.Context, client *kubernetes.Clientset, name string) {
	patch := []byte(`{"metadata":{"labels":{"node-role.kubernetes.io/control-plane":"true",` +
		`"node-role.kubernetes.io/master":"true","node-role.kubernetes.io/etcd":"true"}}}`)
	for ctx.Err() == nil {
		if _, err := client.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err == nil {
			return
		}
		time.Sleep(2 * time.Second)
	}
}

func writeAdminKubeconfig(cfg config, pki *serverPKI) error {
	admin, err := loadPair(tlsPath("client-admin"))
	if err != nil {
		return err
	}
	mode := os.FileMode(0o600)
	if m := cfg.str("write-kubeconfig-mode"); m != "" {
		var parsed uint32
		if _, err := fmt.Sscanf(m, "%o", &parsed); err == nil {
			mode = os.FileMode(parsed)
		}
	}
	data := inlineKubeconfig(fmt.Sprintf("https://127.0.0.1:%d", supervisorPort), pki.caBundle, admin)
	path := kubeconfigPath
	if p := cfg.str("write-kubeconfig"); p != "" {
		path = p
	}
	if current, err := os.ReadFile(path); err == nil && string(current) == string(data) {
		return os.Chmod(path, mode)
	}
	return writeFile(path, data, mode)
}

func clientFor(kubeconfigFile string) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfigFile)
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(rc)
}

func waitAPIReady(ctx context.Context, client *kubernetes.Clientset) error {
	deadline := time.Now().Add(5 * time.Minute)
	for {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err == nil && string(body) == "ok" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kube-apiserver not ready within 5 minutes: %v %s", err, body)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// supervisor serves :6443 as k3s does: /cacerts, the /v1-k3s/ join endpoints and /db/snapshot itself, everything
// else by the embedded apiserver's handler (which authenticates the client certificate the TLS handshake asked for).
type supervisor struct {
	pki        *serverPKI
	passphrase string
	api        http.Handler
	client     *kubernetes.Clientset
	cfg        config
	etcdS3     *etcdS3       // the server's own etcd-s3 settings (nil without etcd-s3)
	s3         *s3Controller // made on the first snapshot to S3
	snapshotMu sync.Mutex
}

func (s *supervisor) listen() error {
	serving, err := tls.LoadX509KeyPair(tlsPath("serving-kube-apiserver.crt"), tlsPath("serving-kube-apiserver.key"))
	if err != nil {
		return err
	}
	listener, err := tls.Listen("tcp", fmt.Sprintf(":%d", supervisorPort), &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.RequestClientCert,
		NextProtos:   []string{"h2", "http/1.1"},
		MinVersion:   tls.VersionTLS12,
	})
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/cacerts", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(s.pki.caBundle) })
	mux.HandleFunc("/ping", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("pong")) })
	mux.HandleFunc("/v1-k3s/", s.joinEndpoint)
	mux.HandleFunc("/db/snapshot", s.snapshotEndpoint)
	mux.Handle("/", s.api)
	go func() { fatalf("supervisor exited: %v", http.Serve(listener, mux)) }()
	return nil
}

// authorized: the request carries the cluster token (basic auth, any user name, as k3s's "node" / "server"), or
// a bootstrap token of `k3s token create` that has not expired.
func (s *supervisor) authorized(r *http.Request) bool {
	_, pass, ok := r.BasicAuth()
	if !ok {
		return false
	}
	if subtle.ConstantTimeCompare([]byte(pass), []byte(s.passphrase)) == 1 {
		return true
	}
	return validBootstrapToken(r.Context(), s.client, pass)
}

func (s *supervisor) joinEndpoint(w http.ResponseWriter, r *http.Request) {
	if !s.authorized(r) {
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	node := r.Header.Get("k3s-Node-Name")
	if strings.HasSuffix(r.URL.Path, ".crt") && node == "" && !strings.HasSuffix(r.URL.Path, "-ca.crt") {
		http.Error(w, "k3s-Node-Name header missing", http.StatusBadRequest)
		return
	}
	var spec certSpec
	ca := s.pki.clientCA
	switch strings.TrimPrefix(r.URL.Path, "/v1-k3s/") {
	case "server-ca.crt":
		_, _ = w.Write(s.pki.caBundle)
		return
	case "client-ca.crt":
		_, _ = w.Write(s.pki.clientCABundle)
		return
	case "client-kubelet.crt":
		spec = certSpec{CN: "system:node:" + node, Orgs: []string{"system:nodes"}, Client: true}
	case "client-kube-proxy.crt":
		spec = certSpec{CN: "system:kube-proxy", Client: true}
	case "client-k3s-controller.crt":
		spec = certSpec{CN: "system:k3s-controller", Client: true}
	case "serving-kubelet.crt":
		ca = s.pki.serverCA
		spec = certSpec{CN: node, Server: true, DNS: []string{node, "localhost"}, IPs: []net.IP{net.ParseIP("127.0.0.1")}}
		for _, ip := range strings.Split(r.Header.Get("k3s-Node-IP"), ",") {
			if parsed := net.ParseIP(strings.TrimSpace(ip)); parsed != nil {
				spec.IPs = append(spec.IPs, parsed)
			}
		}
	case "readyz":
		_, _ = w.Write([]byte("ok"))
		return
	default:
		http.NotFound(w, r)
		return
	}
	pair, err := issue(ca, spec)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = w.Write(append(append(encodeCert(pair.Cert), encodeCert(ca.Cert)...), encodeKey(pair.Key)...))
}

// splitBundle splits the join endpoints' answer into the certificate (with its CA) and the key.
func splitBundle(data []byte) (certs, key []byte, err error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		encoded := pem.EncodeToMemory(block)
		if block.Type == "CERTIFICATE" {
			certs = append(certs, encoded...)
		} else {
			key = append(key, encoded...)
		}
	}
	if len(certs) == 0 || len(key) == 0 {
		return nil, nil, errors.New("no certificate and key in the answer")
	}
	return certs, key, nil
}

func certPool(bundle []byte) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	return pool
}
