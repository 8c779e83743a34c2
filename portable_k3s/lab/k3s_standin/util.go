package main

import (
	"crypto/rand"
	"encoding/base64"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"
)

const kubernetesVersionUnset = "unknown"

// kubernetesVersion is the module version of the Kubernetes fork this program is built from (set by the build).
var kubernetesVersion = kubernetesVersionUnset

func base64Std(data []byte) string { return base64.StdEncoding.EncodeToString(data) }

func randRead(b []byte) (int, error) { return rand.Read(b) }

type zstdFile struct {
	file    *os.File
	decoder *zstd.Decoder
}

func (z *zstdFile) Read(p []byte) (int, error) { return z.decoder.Read(p) }

func (z *zstdFile) Close() error {
	z.decoder.Close()
	return z.file.Close()
}

// zstdReader opens a .zst file for reading its decompressed content.
func zstdReader(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	decoder, err := zstd.NewReader(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &zstdFile{f, decoder}, nil
}
