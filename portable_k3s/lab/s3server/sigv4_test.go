package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"hash"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	"github.com/minio/minio-go/v7/pkg/signer"
)

// AWS's published examples (S3 API reference: "Signature Calculations for the Authorization Header"): the key pair,
// the time, and the PUT Object requests with their signatures.
const (
	exampleAccess = "AKIAIOSFODNN7EXAMPLE"
	exampleSecret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
)

var exampleTime = time.Date(2013, 5, 24, 0, 0, 0, 0, time.UTC)

func exampleVerifier(t *testing.T) *Verifier {
	return &Verifier{Keys: map[string]string{exampleAccess: exampleSecret}, Region: "us-east-1",
		Now: func() time.Time { return exampleTime }, SpoolDir: t.TempDir()}
}

func verified(t *testing.T, v *Verifier, r *http.Request) ([]byte, *S3Error) {
	t.Helper()
	cleanup, err := v.Verify(r)
	if cleanup != nil {
		defer cleanup()
	}
	if err != nil {
		return nil, err
	}
	body, rerr := io.ReadAll(r.Body)
	if rerr != nil {
		t.Fatal(rerr)
	}
	return body, nil
}

func TestAWSPublishedPutObjectExample(t *testing.T) {
	request := func(path, body string) *http.Request {
		r := httptest.NewRequest("PUT", path, strings.NewReader(body))
		r.Host = "examplebucket.s3.amazonaws.com"
		r.Header.Set("Date", "Fri, 24 May 2013 00:00:00 GMT")
		r.Header.Set("X-Amz-Date", "20130524T000000Z")
		r.Header.Set("X-Amz-Storage-Class", "REDUCED_REDUNDANCY")
		r.Header.Set("X-Amz-Content-Sha256", "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
		r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"+
			"aws4_request,SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"+
			"Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd")
		return r
	}
	body, err := verified(t, exampleVerifier(t), request("/test%24file.text", "Welcome to Amazon S3."))
	if err != nil || string(body) != "Welcome to Amazon S3." {
		t.Fatalf("AWS's example refused: %v (%q)", err, body)
	}
	if _, err := verified(t, exampleVerifier(t), request("/test%24file.txt", "Welcome to Amazon S3.")); err == nil ||
		err.Code != "SignatureDoesNotMatch" {
		t.Fatalf("another path: %v", err)
	}
	if _, err := verified(t, exampleVerifier(t), request("/test%24file.text", "Welcome to Amazon S4.")); err == nil ||
		err.Code != "XAmzContentSHA256Mismatch" {
		t.Fatalf("another body: %v", err)
	}
}

func chunkedExample(chunk2 string) *http.Request {
	a := func(n int) string { return strings.Repeat("a", n) }
	body := "10000;chunk-signature=ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648\r\n" + a(65536) +
		"\r\n400;chunk-signature=0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497\r\n" + chunk2 +
		"\r\n0;chunk-signature=b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9\r\n\r\n"
	r := httptest.NewRequest("PUT", "/examplebucket/chunkObject.txt", strings.NewReader(body))
	r.Host = "s3.amazonaws.com"
	r.Header.Set("X-Amz-Date", "20130524T000000Z")
	r.Header.Set("X-Amz-Storage-Class", "REDUCED_REDUNDANCY")
	r.Header.Set("X-Amz-Content-Sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
	r.Header.Set("Content-Encoding", "aws-chunked")
	r.Header.Set("X-Amz-Decoded-Content-Length", "66560")
	r.Header.Set("Content-Length", "66824")
	r.Header.Set("Authorization", "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/"+
		"aws4_request,SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"+
		"x-amz-decoded-content-length;x-amz-storage-class,"+
		"Signature=4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9")
	return r
}

func TestAWSPublishedChunkedUploadExample(t *testing.T) {
	r := chunkedExample(strings.Repeat("a", 1024))
	body, err := verified(t, exampleVerifier(t), r)
	if err != nil || string(body) != strings.Repeat("a", 66560) {
		t.Fatalf("AWS's chunked example refused: %v (%d bytes)", err, len(body))
	}
	if r.ContentLength != 66560 || r.Header.Get("Content-Encoding") != "" ||
		r.Header.Get("X-Amz-Decoded-Content-Length") != "" || r.Header.Get("Authorization") != "" {
		t.Fatalf("the storage gets the decoded body's length and no signing headers: %d %v", r.ContentLength, r.Header)
	}
	_, err = verified(t, exampleVerifier(t), chunkedExample(strings.Repeat("a", 1023)+"b"))
	if err == nil || err.Code != "SignatureDoesNotMatch" || !strings.Contains(err.Message, "chunk 2") {
		t.Fatalf("a changed chunk: %v", err)
	}
}

// The lab's key pair and region, and a server that answers 200 with what it got once the verifier lets a request in.
const (
	labAccess = "LABTESTACCESS"
	labSecret = "lab/test+secret"
	labRegion = "lab-1"
)

type received struct {
	method, uri string
	body        []byte
	header      http.Header
}

func labServer(t *testing.T, now func() time.Time) (*httptest.Server, *[]received) {
	var got []received
	verifier := &Verifier{Keys: map[string]string{labAccess: labSecret}, Region: labRegion, Now: now,
		SpoolDir: t.TempDir()}
	server := httptest.NewServer(verifier.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got = append(got, received{r.Method, r.RequestURI, body, r.Header.Clone()})
	})))
	t.Cleanup(server.Close)
	return server, &got
}

func sha256Hex(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// sdkSigned is a request signed by aws-sdk-go-v2's SigV4 signer as its S3 client signs it (payload hash in
// x-amz-content-sha256, the path not escaped twice).
func sdkSigned(t *testing.T, method, url string, body []byte, secret string, when time.Time) *http.Request {
	t.Helper()
	r, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	payload := sha256Hex(body)
	r.Header.Set("X-Amz-Content-Sha256", payload)
	r.Header.Set("Content-Type", "application/octet-stream")
	signer := v4.NewSigner(func(o *v4.SignerOptions) { o.DisableURIPathEscaping = true })
	creds := aws.Credentials{AccessKeyID: labAccess, SecretAccessKey: secret}
	if err := signer.SignHTTP(context.Background(), creds, r, payload, "s3", labRegion, when); err != nil {
		t.Fatal(err)
	}
	return r
}

func send(t *testing.T, r *http.Request) (int, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	text, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	var e struct{ Code string }
	if err := xml.Unmarshal(text, &e); err != nil {
		t.Fatalf("%d without S3's XML error: %q", resp.StatusCode, text)
	}
	return resp.StatusCode, e.Code
}

func TestRequestsSignedByTheAWSSDKPass(t *testing.T) {
	server, got := labServer(t, nil)
	body := []byte("an archive")
	put := sdkSigned(t, "PUT", server.URL+"/lab-backups/headscale/a%20b%2Bc%24.tar.gz", body, labSecret, time.Now())
	if status, code := send(t, put); status != 200 {
		t.Fatalf("signed PUT refused: %d %s", status, code)
	}
	list := sdkSigned(t, "GET", server.URL+"/lab-backups?list-type=2&prefix=headscale%2Fa%20b&max-keys=10", nil,
		labSecret, time.Now())
	if status, code := send(t, list); status != 200 {
		t.Fatalf("signed list refused: %d %s", status, code)
	}
	if len(*got) != 2 || !bytes.Equal((*got)[0].body, body) || (*got)[0].header.Get("Authorization") != "" ||
		(*got)[0].header.Get("X-Amz-Content-Sha256") != "" {
		t.Fatalf("the handler did not get the requests as checked: %+v", *got)
	}
}

// sha256Hasher is the hasher minio-go's streaming signer takes (its client passes its own pooled one).
type sha256Hasher struct{ hash.Hash }

func (sha256Hasher) Close() {}

func TestStreamingUploadSignedByMinioGoPasses(t *testing.T) {
	server, got := labServer(t, nil)
	body := bytes.Repeat([]byte("restic pack "), 20000) // 240 000 bytes: four chunks of minio-go's 64 KiB
	r, err := http.NewRequest("PUT", server.URL+"/lab-backups/restic/data/ab/abcdef", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r.Header.Set("Content-Type", "application/octet-stream")
	r = signer.StreamingSignV4(r, labAccess, labSecret, "", labRegion, int64(len(body)), time.Now().UTC(),
		sha256Hasher{sha256.New()})
	if status, code := send(t, r); status != 200 {
		t.Fatalf("minio-go's streaming upload refused: %d %s", status, code)
	}
	if len(*got) != 1 || !bytes.Equal((*got)[0].body, body) {
		t.Fatalf("the handler did not get the decoded body")
	}
}

func TestOneChangeIsRefused(t *testing.T) {
	server, got := labServer(t, nil)
	url := server.URL + "/lab-backups/headscale/archive.tar.gz?x-id=PutObject"
	body := []byte("an archive")
	valid := func() *http.Request { return sdkSigned(t, "PUT", url, body, labSecret, time.Now()) }
	cases := []struct {
		name   string
		make   func() *http.Request
		status int
		code   string
	}{
		{"secret", func() *http.Request { return sdkSigned(t, "PUT", url, body, "another", time.Now()) },
			403, "SignatureDoesNotMatch"},
		{"body", func() *http.Request {
			r := valid()
			r.Body = io.NopCloser(bytes.NewReader([]byte("an archivE")))
			return r
		}, 400, "XAmzContentSHA256Mismatch"},
		{"path", func() *http.Request {
			r := valid()
			r.URL.Path = "/lab-backups/headscale/other.tar.gz"
			return r
		}, 403, "SignatureDoesNotMatch"},
		{"query", func() *http.Request {
			r := valid()
			r.URL.RawQuery = "x-id=DeleteObject"
			return r
		}, 403, "SignatureDoesNotMatch"},
		{"signed header", func() *http.Request {
			r := valid()
			r.Header.Set("Content-Type", "text/plain")
			return r
		}, 403, "SignatureDoesNotMatch"},
		{"clock", func() *http.Request {
			return sdkSigned(t, "PUT", url, body, labSecret, time.Now().Add(-16*time.Minute))
		}, 403, "RequestTimeTooSkewed"},
		{"access key", func() *http.Request {
			r := valid()
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), labAccess, "OTHER", 1))
			return r
		}, 403, "InvalidAccessKeyId"},
		{"region", func() *http.Request {
			r := valid()
			r.Header.Set("Authorization", strings.Replace(r.Header.Get("Authorization"), "/lab-1/", "/us-east-1/", 1))
			return r
		}, 400, "AuthorizationHeaderMalformed"},
		{"no authorization", func() *http.Request {
			r := valid()
			r.Header.Del("Authorization")
			return r
		}, 403, "AccessDenied"},
		{"not sigv4", func() *http.Request {
			r := valid()
			r.Header.Set("Authorization", "AWS "+labAccess+":c2lnbmF0dXJl")
			return r
		}, 403, "AccessDenied"},
		{"payload hash not signed", func() *http.Request {
			r := valid()
			auth := strings.Replace(r.Header.Get("Authorization"), ";x-amz-content-sha256", "", 1)
			r.Header.Set("Authorization", auth)
			return r
		}, 403, "AccessDenied"},
		{"presigned", func() *http.Request {
			r := valid()
			r.Header.Del("Authorization")
			r.URL.RawQuery = "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=00"
			return r
		}, 403, "AccessDenied"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if status, code := send(t, c.make()); status != c.status || code != c.code {
				t.Fatalf("got %d %s, want %d %s", status, code, c.status, c.code)
			}
		})
	}
	if len(*got) != 0 {
		t.Fatalf("a refused request reached the storage: %+v", *got)
	}
	if status, code := send(t, valid()); status != 200 {
		t.Fatalf("the unchanged request is refused: %d %s", status, code)
	}
}

func TestStreamingUploadWithAChangedChunkIsRefused(t *testing.T) {
	server, got := labServer(t, nil)
	body := bytes.Repeat([]byte("x"), 100000)
	r, err := http.NewRequest("PUT", server.URL+"/lab-backups/restic/data/cd/cdef", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	r = signer.StreamingSignV4(r, labAccess, labSecret, "", labRegion, int64(len(body)), time.Now().UTC(),
		sha256Hasher{sha256.New()})
	signed, _ := io.ReadAll(r.Body)
	at := bytes.LastIndex(signed, []byte("xxxx"))
	signed[at] = 'y'
	r.Body = io.NopCloser(bytes.NewReader(signed))
	if status, code := send(t, r); status != 403 || code != "SignatureDoesNotMatch" {
		t.Fatalf("got %d %s, want 403 SignatureDoesNotMatch", status, code)
	}
	if len(*got) != 0 {
		t.Fatalf("a refused upload reached the storage")
	}
}
