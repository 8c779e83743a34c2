package main

import (
	"bufio"
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"fmt"
	"hash"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"
)

const (
	algorithm        = "AWS4-HMAC-SHA256"
	chunkAlgorithm   = "AWS4-HMAC-SHA256-PAYLOAD"
	unsignedPayload  = "UNSIGNED-PAYLOAD"
	streamingPayload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
	emptySHA256      = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
	amzDateFormat    = "20060102T150405Z"
	// DefaultMaxSkew is how far a request's x-amz-date may be from the server's clock, as S3 allows.
	DefaultMaxSkew = 15 * time.Minute
	// Bodies up to this size are kept in memory while they are checked; larger ones go to a file.
	memorySpoolLimit = 1 << 20
	maxChunkLine     = 4096
)

// Verifier checks AWS Signature Version 4 as S3 does for requests signed in the Authorization header: the key pair,
// the credential scope (region/s3/aws4_request), the canonical request (method, URI-encoded path, canonical query
// string, the signed headers, which include host, x-amz-date and x-amz-content-sha256), the request time, and the
// payload: UNSIGNED-PAYLOAD, a hex sha256 the body must match, or STREAMING-AWS4-HMAC-SHA256-PAYLOAD, whose chunks
// are each checked against their chained signatures. Anything else is refused with S3's XML error.
//
// A request's body is read and checked in full before the wrapped handler sees it (in memory, or in a file under
// SpoolDir when large), so the storage below only ever gets complete, verified bodies.
type Verifier struct {
	Keys     map[string]string // access key -> secret key
	Region   string
	MaxSkew  time.Duration
	Now      func() time.Time
	SpoolDir string
	Log      *log.Logger
	// AccessLog logs every accepted request too: method, path, query, payload mode and status.
	AccessLog bool
}

// S3Error is an S3 error response: its HTTP status, code, message and extra elements (in order).
type S3Error struct {
	Status  int
	Code    string
	Message string
	Extra   [][2]string
}

func (e *S3Error) Error() string { return e.Code + ": " + e.Message }

func refuse(status int, code, message string, extra ...[2]string) *S3Error {
	return &S3Error{Status: status, Code: code, Message: message, Extra: extra}
}

// authorization is a parsed, checked Authorization header.
type authorization struct {
	signingKey []byte
	scope      string
	stamp      string
	signature  string
}

// Handler wraps next: requests with a valid signature reach it (with their body checked and the signing headers
// removed), every other request gets S3's error.
func (v *Verifier) Handler(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		payloadMode := r.Header.Get("X-Amz-Content-Sha256")
		if isHexSHA256(payloadMode) {
			payloadMode = "sha256"
		}
		cleanup, err := v.Verify(r)
		if cleanup != nil {
			defer cleanup()
		}
		if err != nil {
			if v.Log != nil {
				v.Log.Printf("refused %s %s from %s: %s", r.Method, r.URL.Path, r.RemoteAddr, err)
			}
			writeError(w, r, err)
			return
		}
		if !v.AccessLog || v.Log == nil {
			next.ServeHTTP(w, r)
			return
		}
		recorder := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(recorder, r)
		v.Log.Printf("%s %s?%s (%s, %d bytes): %d", r.Method, r.URL.Path, r.URL.RawQuery, payloadMode,
			r.ContentLength, recorder.status)
	})
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(status int) {
	s.status = status
	s.ResponseWriter.WriteHeader(status)
}

// Verify checks r's signature and body. On success r carries the verified body (cleanup releases it) and no longer
// carries the headers that only sign it.
func (v *Verifier) Verify(r *http.Request) (cleanup func(), err *S3Error) {
	auth, err := v.authorize(r)
	if err != nil {
		return nil, err
	}
	payload := r.Header.Get("X-Amz-Content-Sha256")
	var body *spool
	switch {
	case payload == "":
		return nil, refuse(http.StatusBadRequest, "InvalidRequest",
			"Missing required header for this request: x-amz-content-sha256")
	case payload == streamingPayload:
		body, err = v.readChunked(r, auth)
	case payload == unsignedPayload || isHexSHA256(payload):
		body, err = v.readPlain(r, payload)
	default:
		return nil, refuse(http.StatusNotImplemented, "NotImplemented",
			fmt.Sprintf("x-amz-content-sha256 %q: this server takes UNSIGNED-PAYLOAD, the payload's sha256 "+
				"or %s", payload, streamingPayload))
	}
	if body != nil {
		cleanup = func() { _ = body.Close() }
	}
	if err != nil {
		return cleanup, err
	}
	r.Body, r.ContentLength = body, body.size
	r.Header.Set("Content-Length", strconv.FormatInt(body.size, 10))
	r.TransferEncoding = nil
	for _, name := range []string{"Authorization", "X-Amz-Date", "X-Amz-Content-Sha256",
		"X-Amz-Decoded-Content-Length"} {
		r.Header.Del(name)
	}
	return cleanup, nil
}

func (v *Verifier) authorize(r *http.Request) (*authorization, *S3Error) {
	if q := r.URL.Query(); q.Has("X-Amz-Signature") || q.Has("X-Amz-Algorithm") || q.Has("Signature") {
		return nil, refuse(http.StatusForbidden, "AccessDenied", "presigned URLs are not accepted here")
	}
	header := r.Header.Get("Authorization")
	if header == "" {
		return nil, refuse(http.StatusForbidden, "AccessDenied", "Anonymous access is forbidden for this operation")
	}
	scheme, rest, _ := strings.Cut(header, " ")
	if scheme != algorithm {
		return nil, refuse(http.StatusForbidden, "AccessDenied",
			fmt.Sprintf("the request is not signed with %s", algorithm))
	}
	fields := map[string]string{}
	for _, part := range strings.Split(rest, ",") {
		name, value, ok := strings.Cut(strings.TrimSpace(part), "=")
		if ok {
			fields[name] = value
		}
	}
	credential := strings.Split(fields["Credential"], "/")
	signature := fields["Signature"]
	if len(credential) != 5 || fields["SignedHeaders"] == "" || !isHex(signature, 64) {
		return nil, refuse(http.StatusBadRequest, "AuthorizationHeaderMalformed",
			"the authorization header is malformed; it needs Credential, SignedHeaders and Signature")
	}
	access, date, region, service, terminal := credential[0], credential[1], credential[2], credential[3], credential[4]
	secret, known := v.Keys[access]
	if !known {
		return nil, refuse(http.StatusForbidden, "InvalidAccessKeyId",
			"The AWS Access Key Id you provided does not exist in our records.", [2]string{"AWSAccessKeyId", access})
	}
	if region != v.Region {
		return nil, refuse(http.StatusBadRequest, "AuthorizationHeaderMalformed",
			fmt.Sprintf("the region '%s' is wrong; expecting '%s'", region, v.Region), [2]string{"Region", v.Region})
	}
	if service != "s3" || terminal != "aws4_request" {
		return nil, refuse(http.StatusBadRequest, "AuthorizationHeaderMalformed",
			fmt.Sprintf("the credential scope ends in %s/%s; expecting s3/aws4_request", service, terminal))
	}
	signed := strings.Split(fields["SignedHeaders"], ";")
	for _, required := range []string{"host", "x-amz-date", "x-amz-content-sha256"} {
		if !contains(signed, required) {
			return nil, refuse(http.StatusForbidden, "AccessDenied",
				fmt.Sprintf("SignedHeaders %s leave out %s", fields["SignedHeaders"], required))
		}
	}
	stamp := r.Header.Get("X-Amz-Date")
	when, perr := time.Parse(amzDateFormat, stamp)
	if perr != nil {
		return nil, refuse(http.StatusForbidden, "AccessDenied", fmt.Sprintf("x-amz-date %q is not a valid date", stamp))
	}
	now := time.Now
	if v.Now != nil {
		now = v.Now
	}
	maxSkew := v.MaxSkew
	if maxSkew == 0 {
		maxSkew = DefaultMaxSkew
	}
	if skew := now().Sub(when); skew > maxSkew || skew < -maxSkew {
		return nil, refuse(http.StatusForbidden, "RequestTimeTooSkewed",
			"The difference between the request time and the current time is too large.",
			[2]string{"RequestTime", stamp}, [2]string{"ServerTime", now().UTC().Format(time.RFC3339)},
			[2]string{"MaxAllowedSkewMilliseconds", strconv.FormatInt(maxSkew.Milliseconds(), 10)})
	}
	if !strings.HasPrefix(stamp, date) || len(date) != 8 {
		return nil, refuse(http.StatusBadRequest, "AuthorizationHeaderMalformed",
			"Invalid credential date. Date is not the same as X-Amz-Date.")
	}
	canonical := strings.Join([]string{
		r.Method, canonicalURI(r), canonicalQuery(r.URL.RawQuery), canonicalHeaders(r, signed),
		strings.Join(signed, ";"), r.Header.Get("X-Amz-Content-Sha256"),
	}, "\n")
	scope := strings.Join([]string{date, region, "s3", "aws4_request"}, "/")
	toSign := strings.Join([]string{algorithm, stamp, scope, hexSHA256([]byte(canonical))}, "\n")
	key := signingKey(secret, date, region)
	if !hmac.Equal([]byte(hex.EncodeToString(hmacSHA256(key, toSign))), []byte(signature)) {
		return nil, refuse(http.StatusForbidden, "SignatureDoesNotMatch",
			"The request signature we calculated does not match the signature you provided. "+
				"Check your key and signing method.",
			[2]string{"AWSAccessKeyId", access}, [2]string{"StringToSign", toSign},
			[2]string{"CanonicalRequest", canonical})
	}
	return &authorization{signingKey: key, scope: scope, stamp: stamp, signature: signature}, nil
}

// readPlain reads the body; with a hex sha256 as payload it must match.
func (v *Verifier) readPlain(r *http.Request, payload string) (*spool, *S3Error) {
	body, digest := &spool{dir: v.SpoolDir}, sha256.New()
	if _, err := io.Copy(io.MultiWriter(body, digest), r.Body); err != nil {
		return body, refuse(http.StatusBadRequest, "IncompleteBody", "the request body could not be read: "+err.Error())
	}
	if payload != unsignedPayload {
		if computed := hex.EncodeToString(digest.Sum(nil)); computed != payload {
			return body, refuse(http.StatusBadRequest, "XAmzContentSHA256Mismatch",
				"The provided 'x-amz-content-sha256' header does not match what was computed.",
				[2]string{"ClientComputedContentSHA256", payload}, [2]string{"S3ComputedContentSHA256", computed})
		}
	}
	return body, body.rewind()
}

// readChunked decodes an aws-chunked body, checking each chunk's signature, chained from the request's.
func (v *Verifier) readChunked(r *http.Request, auth *authorization) (*spool, *S3Error) {
	decoded, err := strconv.ParseInt(r.Header.Get("X-Amz-Decoded-Content-Length"), 10, 64)
	if err != nil || decoded < 0 {
		return nil, refuse(http.StatusLengthRequired, "MissingContentLength",
			"a streaming upload needs x-amz-decoded-content-length")
	}
	body := &spool{dir: v.SpoolDir}
	in := bufio.NewReaderSize(r.Body, 64<<10)
	previous, total := auth.signature, int64(0)
	for n := 1; ; n++ {
		size, signature, err := readChunkHeader(in)
		if err != nil {
			return body, refuse(http.StatusBadRequest, "IncompleteBody", fmt.Sprintf("chunk %d: %v", n, err))
		}
		if total+size > decoded {
			return body, refuse(http.StatusBadRequest, "IncompleteBody",
				fmt.Sprintf("the chunks hold more than x-amz-decoded-content-length (%d bytes)", decoded))
		}
		digest := sha256.New()
		if _, err := io.CopyN(io.MultiWriter(body, digest), in, size); err != nil {
			return body, refuse(http.StatusBadRequest, "IncompleteBody", fmt.Sprintf("chunk %d: %v", n, err))
		}
		if crlf, err := readCRLF(in); err != nil || !crlf {
			return body, refuse(http.StatusBadRequest, "IncompleteBody", fmt.Sprintf("chunk %d: no CRLF after its data", n))
		}
		if expected := chunkSignature(auth, previous, digest); !hmac.Equal([]byte(expected), []byte(signature)) {
			return body, refuse(http.StatusForbidden, "SignatureDoesNotMatch",
				fmt.Sprintf("The chunk signature of chunk %d does not match the signature we calculated.", n))
		}
		previous, total = signature, total+size
		if size == 0 {
			break
		}
	}
	if total != decoded {
		return body, refuse(http.StatusBadRequest, "IncompleteBody",
			fmt.Sprintf("the chunks hold %d bytes, x-amz-decoded-content-length says %d", total, decoded))
	}
	encodings := []string{}
	for _, encoding := range strings.Split(r.Header.Get("Content-Encoding"), ",") {
		if encoding = strings.TrimSpace(encoding); encoding != "" && encoding != "aws-chunked" {
			encodings = append(encodings, encoding)
		}
	}
	if len(encodings) > 0 {
		r.Header.Set("Content-Encoding", strings.Join(encodings, ","))
	} else {
		r.Header.Del("Content-Encoding")
	}
	return body, body.rewind()
}

func readChunkHeader(in *bufio.Reader) (size int64, signature string, err error) {
	line, err := in.ReadSlice('\n')
	if err != nil {
		return 0, "", fmt.Errorf("no chunk header: %w", err)
	}
	if len(line) > maxChunkLine || !bytes.HasSuffix(line, []byte("\r\n")) {
		return 0, "", errors.New("malformed chunk header")
	}
	hexSize, extension, _ := strings.Cut(string(line[:len(line)-2]), ";")
	size, err = strconv.ParseInt(hexSize, 16, 64)
	name, signature, _ := strings.Cut(extension, "=")
	if err != nil || size < 0 || name != "chunk-signature" || !isHex(signature, 64) {
		return 0, "", fmt.Errorf("malformed chunk header %q", strings.TrimSpace(string(line)))
	}
	return size, signature, nil
}

func readCRLF(in *bufio.Reader) (bool, error) {
	crlf := make([]byte, 2)
	if _, err := io.ReadFull(in, crlf); err != nil {
		return false, err
	}
	return string(crlf) == "\r\n", nil
}

func chunkSignature(auth *authorization, previous string, digest hash.Hash) string {
	toSign := strings.Join([]string{chunkAlgorithm, auth.stamp, auth.scope, previous, emptySHA256,
		hex.EncodeToString(digest.Sum(nil))}, "\n")
	return hex.EncodeToString(hmacSHA256(auth.signingKey, toSign))
}

// canonicalURI is the request's path, each segment decoded and encoded again as S3 encodes it.
func canonicalURI(r *http.Request) string {
	raw := r.URL.EscapedPath()
	if strings.HasPrefix(r.RequestURI, "/") {
		raw, _, _ = strings.Cut(r.RequestURI, "?")
	}
	if raw == "" {
		return "/"
	}
	segments := strings.Split(raw, "/")
	for i, segment := range segments {
		if decoded, err := url.PathUnescape(segment); err == nil {
			segment = decoded
		}
		segments[i] = uriEncode(segment, true)
	}
	return strings.Join(segments, "/")
}

// canonicalQuery is the query string's parameters, encoded as S3 encodes them and sorted.
func canonicalQuery(raw string) string {
	var params []string
	for _, param := range strings.Split(raw, "&") {
		if param == "" {
			continue
		}
		name, value, _ := strings.Cut(param, "=")
		params = append(params, uriEncode(unescape(name), true)+"="+uriEncode(unescape(value), true))
	}
	sort.Strings(params)
	return strings.Join(params, "&")
}

func unescape(s string) string {
	if decoded, err := url.QueryUnescape(s); err == nil {
		return decoded
	}
	return s
}

func canonicalHeaders(r *http.Request, signed []string) string {
	var out strings.Builder
	for _, name := range signed {
		var values []string
		switch name {
		case "host":
			values = []string{r.Host}
		case "transfer-encoding":
			values = r.TransferEncoding
		default:
			values = r.Header.Values(name)
		}
		trimmed := make([]string, len(values))
		for i, value := range values {
			trimmed[i] = strings.Join(strings.Fields(value), " ")
		}
		out.WriteString(name + ":" + strings.Join(trimmed, ",") + "\n")
	}
	return out.String()
}

// uriEncode encodes every byte but the unreserved characters (and '/' unless encodeSlash), as S3's UriEncode.
func uriEncode(s string, encodeSlash bool) string {
	var out strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.', c == '~':
			out.WriteByte(c)
		case c == '/' && !encodeSlash:
			out.WriteByte(c)
		default:
			fmt.Fprintf(&out, "%%%02X", c)
		}
	}
	return out.String()
}

func signingKey(secret, date, region string) []byte {
	key := hmacSHA256([]byte("AWS4"+secret), date)
	key = hmacSHA256(key, region)
	key = hmacSHA256(key, "s3")
	return hmacSHA256(key, "aws4_request")
}

func hmacSHA256(key []byte, data string) []byte {
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(data))
	return mac.Sum(nil)
}

func hexSHA256(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

func isHex(s string, length int) bool {
	if len(s) != length {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func isHexSHA256(s string) bool { return isHex(s, 64) }

func contains(list []string, item string) bool {
	for _, x := range list {
		if x == item {
			return true
		}
	}
	return false
}

// spool holds a request body while it is checked: in memory, or in a file once it is larger than memorySpoolLimit.
type spool struct {
	dir    string
	memory bytes.Buffer
	file   *os.File
	reader io.Reader
	size   int64
}

func (s *spool) Write(p []byte) (int, error) {
	if s.file == nil && int64(s.memory.Len()+len(p)) > memorySpoolLimit {
		file, err := os.CreateTemp(s.dir, "body-")
		if err != nil {
			return 0, err
		}
		s.file = file
		if _, err := file.Write(s.memory.Bytes()); err != nil {
			return 0, err
		}
		s.memory = bytes.Buffer{}
	}
	s.size += int64(len(p))
	if s.file != nil {
		return s.file.Write(p)
	}
	return s.memory.Write(p)
}

func (s *spool) rewind() *S3Error {
	s.reader = &s.memory
	if s.file != nil {
		if _, err := s.file.Seek(0, io.SeekStart); err != nil {
			return refuse(http.StatusInternalServerError, "InternalError", "the request body could not be kept")
		}
		s.reader = s.file
	}
	return nil
}

func (s *spool) Read(p []byte) (int, error) { return s.reader.Read(p) }

// Close removes the spool's file; the wrapped handler may close the body too.
func (s *spool) Close() error {
	if s.file != nil {
		s.file.Close()
		os.Remove(s.file.Name())
		s.file = nil
		s.reader = bytes.NewReader(nil)
	}
	return nil
}

func writeError(w http.ResponseWriter, r *http.Request, e *S3Error) {
	w.Header().Set("Content-Type", "application/xml")
	w.Header().Set("Connection", "close")
	w.WriteHeader(e.Status)
	if r.Method == http.MethodHead {
		return
	}
	var out strings.Builder
	out.WriteString(`<?xml version="1.0" encoding="UTF-8"?>` + "\n<Error>")
	for _, element := range append([][2]string{{"Code", e.Code}, {"Message", e.Message}}, e.Extra...) {
		out.WriteString("<" + element[0] + ">")
		_ = xml.EscapeText(&out, []byte(element[1]))
		out.WriteString("</" + element[0] + ">")
	}
	out.WriteString("<Resource>")
	_ = xml.EscapeText(&out, []byte(r.URL.Path))
	out.WriteString("</Resource></Error>")
	_, _ = io.WriteString(w, out.String())
}
