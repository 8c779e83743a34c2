package main

// The cluster's certificates, laid out as k3s lays them out under server/tls and agent/.

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

const certValidity = 365 * 24 * time.Hour

type keyPair struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func encodeCert(cert *x509.Certificate) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
}

func encodeKey(key crypto.Signer) []byte {
	der, err := x509.MarshalECPrivateKey(key.(*ecdsa.PrivateKey))
	if err != nil {
		panic(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
}

func parseCert(data []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM certificate")
	}
	return x509.ParseCertificate(block.Bytes)
}

func parseKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key")
		}
		switch block.Type {
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(block.Bytes)
		case "PRIVATE KEY":
			key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
			if err != nil {
				return nil, err
			}
			return key.(crypto.Signer), nil
		}
	}
}

// loadPair reads <base>.crt and <base>.key.
func loadPair(base string) (*keyPair, error) {
	certPEM, err := os.ReadFile(base + ".crt")
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(base + ".key")
	if err != nil {
		return nil, err
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s.crt: %w", base, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s.key: %w", base, err)
	}
	return &keyPair{cert, key}, nil
}

func savePair(base string, pair *keyPair) error {
	if err := writeFile(base+".key", encodeKey(pair.Key), 0o600); err != nil {
		return err
	}
	return writeFile(base+".crt", encodeCert(pair.Cert), 0o644)
}

// sign makes the certificate of template for key, signed by parent's key (a CA signs itself: template is parent).
func sign(template, parent *x509.Certificate, key, parentKey crypto.Signer) (*keyPair, error) {
	der, err := x509.CreateCertificate(rand.Reader, template, parent, key.Public(), parentKey)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &keyPair{cert, key}, nil
}

// ensureCA loads the CA at base, or makes a new one named cn.
func ensureCA(base, cn string) (*keyPair, error) {
	if pair, err := loadPair(base); err == nil {
		return pair, nil
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: fmt.Sprintf("%s@%d", cn, now.Unix())},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(10 * certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	pair, err := sign(template, template, key, key)
	if err != nil {
		return nil, err
	}
	return pair, savePair(base, pair)
}

type certSpec struct {
	CN     string
	Orgs   []string
	Client bool
	Server bool
	DNS    []string
	IPs    []net.IP
}

// issue signs a new certificate for spec with ca.
func issue(ca *keyPair, spec certSpec) (*keyPair, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	template := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: spec.CN, Organization: spec.Orgs},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		DNSNames:     spec.DNS,
		IPAddresses:  spec.IPs,
	}
	if spec.Client {
		template.ExtKeyUsage = append(template.ExtKeyUsage, x509.ExtKeyUsageClientAuth)
	}
	if spec.Server {
		template.ExtKeyUsage = append(template.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	return sign(template, ca.Cert, key, ca.Key)
}

// ensureIssued keeps the certificate at base while it is signed by ca, names what spec names and is far from
// expiring; else it issues a new one.
func ensureIssued(base string, ca *keyPair, spec certSpec) (*keyPair, error) {
	if pair, err := loadPair(base); err == nil && pair.Cert.CheckSignatureFrom(ca.Cert) == nil &&
		time.Until(pair.Cert.NotAfter) > 30*24*time.Hour && sameNames(pair.Cert, spec) {
		return pair, nil
	}
	pair, err := issue(ca, spec)
	if err != nil {
		return nil, err
	}
	return pair, savePair(base, pair)
}

func sameNames(cert *x509.Certificate, spec certSpec) bool {
	if cert.Subject.CommonName != spec.CN || len(cert.DNSNames) != len(spec.DNS) || len(cert.IPAddresses) != len(spec.IPs) {
		return false
	}
	for i := range spec.DNS {
		if cert.DNSNames[i] != spec.DNS[i] {
			return false
		}
	}
	for i := range spec.IPs {
		if !cert.IPAddresses[i].Equal(spec.IPs[i]) {
			return false
		}
	}
	return true
}

// caHash is the sha256 of the server CA bundle as served at /cacerts: the hash in K10 tokens.
func caHash(bundle []byte) string {
	sum := sha256.Sum256(bundle)
	return hex.EncodeToString(sum[:])
}

func ensureServiceKey(path string) error {
	if _, err := os.Stat(path); err == nil {
		return nil
	}
	key, err := newKey()
	if err != nil {
		return err
	}
	return writeFile(path, encodeKey(key), 0o600)
}

// writeFile writes through a temporary file and a rename, so a reader never sees half of it.
func writeFile(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return err
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// kubeconfig is a kubeconfig for server with the CA at caPath and a client certificate.
func kubeconfig(server, caPath, certPath, keyPath string) []byte {
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- cluster:
    server: %s
    certificate-authority: %s
  name: local
contexts:
- context:
    cluster: local
    user: user
  name: local
current-context: local
users:
- name: user
  user:
    client-certificate: %s
    client-key: %s
`, server, caPath, certPath, keyPath))
}

// inlineKubeconfig is a kubeconfig with the CA, certificate and key inline (k3s.yaml, which users copy away).
func inlineKubeconfig(server string, ca []byte, pair *keyPair) []byte {
	b64 := func(data []byte) string { return base64Std(data) }
	return []byte(fmt.Sprintf(`apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: %s
    server: %s
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
kind: Config
preferences: {}
users:
- name: default
  user:
    client-certificate-data: %s
    client-key-data: %s
`, b64(ca), server, b64(encodeCert(pair.Cert)), b64(encodeKey(pair.Key))))
}
