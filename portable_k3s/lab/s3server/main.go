// Command s3server is the lab's S3-compatible server: gofakes3 (github.com/johannesboyne/gofakes3) storing buckets
// and objects in a directory, behind a check of AWS Signature Version 4 (sigv4.go), which gofakes3 does not do.
//
//	s3server -listen 10.0.0.11:8791 -data /var/lib/s3 -region lab-1 -keys /etc/s3-keys -bucket backups
//
// The keys file (mode 0600; never readable by group or others) holds one ACCESS_KEY:SECRET_KEY pair per line; blank
// lines and lines starting with # are skipped. Secrets are never taken from the command line.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3afero"
)

const gofakes3Module = "github.com/johannesboyne/gofakes3"

type config struct {
	listen  string
	data    string
	region  string
	keys    string
	buckets []string
	access  bool
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("s3server: ")
	if err := run(os.Args[1:]); err != nil {
		log.Fatal(err)
	}
}

func parseFlags(args []string) (*config, error) {
	cfg := &config{}
	flags := flag.NewFlagSet("s3server", flag.ContinueOnError)
	flags.StringVar(&cfg.listen, "listen", "127.0.0.1:9000", "address to listen on (host:port)")
	flags.StringVar(&cfg.data, "data", "", "directory holding the buckets (made 0700 if missing)")
	flags.StringVar(&cfg.region, "region", "us-east-1", "the region requests must be signed for")
	flags.StringVar(&cfg.keys, "keys", "", "file of ACCESS_KEY:SECRET_KEY lines (mode 0600)")
	flags.BoolVar(&cfg.access, "access-log", false, "log every accepted request too (refusals are always logged)")
	flags.Func("bucket", "bucket to create at start, if missing (repeatable)", func(name string) error {
		if err := gofakes3.ValidateBucketName(name); err != nil {
			return fmt.Errorf("bucket %q: %v", name, err)
		}
		cfg.buckets = append(cfg.buckets, name)
		return nil
	})
	if err := flags.Parse(args); err != nil {
		return nil, err
	}
	if cfg.data == "" || cfg.keys == "" {
		return nil, errors.New("-data and -keys are required")
	}
	if flags.NArg() > 0 {
		return nil, fmt.Errorf("unexpected arguments: %s", strings.Join(flags.Args(), " "))
	}
	return cfg, nil
}

// loadKeys reads ACCESS_KEY:SECRET_KEY lines from a file that only its owner may read.
func loadKeys(path string) (map[string]string, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s: mode %04o lets others read the secrets (chmod 600 it)", path, info.Mode().Perm())
	}
	file, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer file.Close()
	keys := map[string]string{}
	scanner := bufio.NewScanner(file)
	for n := 1; scanner.Scan(); n++ {
		line := strings.TrimSpace(scanner.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		access, secret, ok := strings.Cut(line, ":")
		if !ok || access == "" || secret == "" || strings.ContainsAny(access, "/ ") {
			return nil, fmt.Errorf("%s:%d: expected ACCESS_KEY:SECRET_KEY", path, n)
		}
		keys[access] = secret
	}
	if err := scanner.Err(); err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s: no ACCESS_KEY:SECRET_KEY line", path)
	}
	return keys, nil
}

// newHandler is gofakes3 on a directory (objects in <data>/buckets/<bucket>/<key>, their metadata in
// <data>/metadata) behind the signature check; large request bodies are checked in <data>/spool.
func newHandler(cfg *config, keys map[string]string, logger *log.Logger) (http.Handler, error) {
	if err := os.MkdirAll(cfg.data, 0o700); err != nil {
		return nil, err
	}
	spoolDir := filepath.Join(cfg.data, "spool")
	if err := os.RemoveAll(spoolDir); err != nil { // bodies of requests cut short by a stop
		return nil, err
	}
	if err := os.Mkdir(spoolDir, 0o700); err != nil {
		return nil, err
	}
	fs, err := s3afero.FsPath(cfg.data, s3afero.FsPathCreateAll)
	if err != nil {
		return nil, err
	}
	backend, err := newDirBackend(fs)
	if err != nil {
		return nil, err
	}
	for _, bucket := range cfg.buckets {
		if err := backend.CreateBucket(bucket); err != nil && !gofakes3.IsAlreadyExists(err) {
			return nil, fmt.Errorf("bucket %s: %v", bucket, err)
		}
	}
	faker := gofakes3.New(backend,
		gofakes3.WithTimeSkewLimit(0), // the verifier checks the request time
		gofakes3.WithIntegrityCheck(true),
		gofakes3.WithLogger(gofakes3.StdLog(logger, gofakes3.LogErr, gofakes3.LogWarn)),
	)
	verifier := &Verifier{Keys: keys, Region: cfg.region, MaxSkew: DefaultMaxSkew, SpoolDir: spoolDir, Log: logger,
		AccessLog: cfg.access}
	return verifier.Handler(faker.Server()), nil
}

func moduleVersion(path string) string {
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == path {
				return dep.Version
			}
		}
	}
	return "(unknown version)"
}

func run(args []string) error {
	cfg, err := parseFlags(args)
	if err != nil {
		return err
	}
	keys, err := loadKeys(cfg.keys)
	if err != nil {
		return err
	}
	logger := log.Default()
	handler, err := newHandler(cfg, keys, logger)
	if err != nil {
		return err
	}
	listener, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	server := &http.Server{Handler: handler, ReadHeaderTimeout: 30 * time.Second, IdleTimeout: 2 * time.Minute}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = server.Shutdown(shutdown)
	}()
	logger.Printf("gofakes3 %s on %s, listening on %s (region %s, %d key pair(s), AWS Signature V4 checked)",
		moduleVersion(gofakes3Module), cfg.data, listener.Addr(), cfg.region, len(keys))
	if err := server.Serve(listener); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
