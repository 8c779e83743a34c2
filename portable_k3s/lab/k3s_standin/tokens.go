package main

// `k3s token create|list`: bootstrap tokens, kept as Kubernetes keeps them (Secrets bootstrap-token-<id> of type
// bootstrap.kubernetes.io/token in kube-system; the controller-manager's tokencleaner deletes expired ones).

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

const tokenChars = "abcdefghijklmnopqrstuvwxyz0123456789"

func randomToken(n int) string {
	raw := make([]byte, n)
	out := make([]byte, n)
	_, _ = randRead(raw)
	for i, b := range raw {
		out[i] = tokenChars[int(b)%len(tokenChars)]
	}
	return string(out)
}

// parseBootstrapToken splits K10<ca hash>::<id>.<secret> or <id>.<secret>.
func parseBootstrapToken(tok string) (id, secret string, ok bool) {
	if strings.HasPrefix(tok, "K10") {
		_, rest, found := strings.Cut(tok, "::")
		if !found {
			return "", "", false
		}
		tok = rest
	}
	id, secret, ok = strings.Cut(tok, ".")
	if !ok || len(id) != 6 || len(secret) != 16 {
		return "", "", false
	}
	return id, secret, true
}

func validBootstrapToken(ctx context.Context, client *kubernetes.Clientset, presented string) bool {
	id, secret, ok := parseBootstrapToken(presented)
	if !ok {
		return false
	}
	s, err := client.CoreV1().Secrets("kube-system").Get(ctx, "bootstrap-token-"+id, metav1.GetOptions{})
	if err != nil || s.Type != corev1.SecretTypeBootstrapToken {
		return false
	}
	if subtle.ConstantTimeCompare(s.Data["token-secret"], []byte(secret)) != 1 {
		return false
	}
	if exp := string(s.Data["expiration"]); exp != "" {
		if t, err := time.Parse(time.RFC3339, exp); err != nil || time.Now().After(t) {
			return false
		}
	}
	return true
}

func adminClient() (*kubernetes.Clientset, error) {
	if _, err := os.Stat(filepath.Join(serverDir, "cred", "admin.kubeconfig")); err != nil {
		return nil, fmt.Errorf("this is not a k3s server (no %s)", filepath.Join(serverDir, "cred", "admin.kubeconfig"))
	}
	return clientFor(filepath.Join(serverDir, "cred", "admin.kubeconfig"))
}

func tokenCommand(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: k3s token create|list")
		return 1
	}
	fs := flag.NewFlagSet("k3s token "+args[0], flag.ContinueOnError)
	ttl := fs.Duration("ttl", 24*time.Hour, "the token's lifetime (0: never expires)")
	description := fs.String("description", "", "a description")
	output := fs.String("o", "", "output format: json")
	fs.StringVar(output, "output", "", "output format: json")
	if err := fs.Parse(args[1:]); err != nil {
		return 1
	}
	client, err := adminClient()
	if err != nil {
		fmt.Fprintf(os.Stderr, "k3s token: %v\n", err)
		return 1
	}
	switch args[0] {
	case "create":
		return tokenCreate(ctx, client, *ttl, *description)
	case "list":
		return tokenList(ctx, client, *output)
	}
	fmt.Fprintf(os.Stderr, "k3s token: unknown command %q\n", args[0])
	return 1
}

func tokenCreate(ctx context.Context, client *kubernetes.Clientset, ttl time.Duration, description string) int {
	bundle, err := os.ReadFile(tlsPath("server-ca.crt"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "k3s token create: %v\n", err)
		return 1
	}
	id, secret := randomToken(6), randomToken(16)
	data := map[string][]byte{
		"token-id": []byte(id), "token-secret": []byte(secret),
		"usage-bootstrap-authentication": []byte("true"), "usage-bootstrap-signing": []byte("true"),
		"auth-extra-groups": []byte("system:bootstrappers:k3s:default-node-token"),
	}
	if description != "" {
		data["description"] = []byte(description)
	}
	if ttl > 0 {
		data["expiration"] = []byte(time.Now().Add(ttl).UTC().Format(time.RFC3339))
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "bootstrap-token-" + id, Namespace: "kube-system"},
		Type:       corev1.SecretTypeBootstrapToken, Data: data,
	}
	if _, err := client.CoreV1().Secrets("kube-system").Create(ctx, s, metav1.CreateOptions{}); err != nil {
		fmt.Fprintf(os.Stderr, "k3s token create: %v\n", err)
		return 1
	}
	fmt.Printf("K10%s::%s.%s\n", caHash(bundle), id, secret)
	return 0
}

func tokenList(ctx context.Context, client *kubernetes.Clientset, output string) int {
	secrets, err := client.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{FieldSelector: "type=" + string(corev1.SecretTypeBootstrapToken)})
	if err != nil && !apierrors.IsNotFound(err) {
		fmt.Fprintf(os.Stderr, "k3s token list: %v\n", err)
		return 1
	}
	type row struct {
		ID          string `json:"id"`
		TTL         string `json:"-"`
		Expires     string `json:"expires"`
		Description string `json:"description"`
	}
	var rows []row
	for _, s := range secrets.Items {
		exp := string(s.Data["expiration"])
		if exp != "" {
			if t, err := time.Parse(time.RFC3339, exp); err == nil && time.Now().After(t) {
				continue // expired: the tokencleaner deletes it soon
			}
		}
		r := row{ID: string(s.Data["token-id"]), Expires: exp, Description: string(s.Data["description"]), TTL: "<forever>"}
		if exp != "" {
			t, _ := time.Parse(time.RFC3339, exp)
			r.TTL = shortDuration(time.Until(t))
		}
		rows = append(rows, r)
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].ID < rows[j].ID })
	if output == "json" {
		data, _ := json.MarshalIndent(rows, "", "  ")
		fmt.Println(string(data))
		return 0
	}
	w := tabwriter.NewWriter(os.Stdout, 0, 8, 3, ' ', 0)
	fmt.Fprintln(w, "TOKEN\tTTL\tEXPIRES\tUSAGES\tDESCRIPTION")
	for _, r := range rows {
		expires, description := r.Expires, r.Description
		if expires == "" {
			expires = "<never>"
		}
		if description == "" {
			description = "<none>"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.TTL, expires, "authentication,signing", description)
	}
	_ = w.Flush()
	return 0
}

// shortDuration formats a ttl as kubectl's ShortHumanDuration does (truncated: 59m, 23h, 6d, 2y).
func shortDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	case d < 365*24*time.Hour:
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	return fmt.Sprintf("%dy", int(d.Hours()/24/365))
}
