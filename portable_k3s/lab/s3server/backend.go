package main

import (
	"errors"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3afero"
	"github.com/spf13/afero"
)

// dirBackend is gofakes3's directory backend (s3afero: each object a file under buckets/<bucket>/<key>) with S3's
// listing: s3afero answers a prefix that names no directory with NoSuchBucket, builds wrong common prefixes for a
// prefix that ends inside a name, and does not page. This lists every key of the bucket in order and matches them
// against the prefix and delimiter as S3 does, with max-keys and markers (continuation tokens).
type dirBackend struct {
	*s3afero.MultiBucketBackend
	fs afero.Fs // the backend's root: buckets/ and metadata/
}

func newDirBackend(fs afero.Fs) (*dirBackend, error) {
	backend, err := s3afero.MultiBucket(fs)
	if err != nil {
		return nil, err
	}
	return &dirBackend{MultiBucketBackend: backend, fs: fs}, nil
}

func (b *dirBackend) ListBucket(bucket string, prefix *gofakes3.Prefix,
	page gofakes3.ListBucketPage) (*gofakes3.ObjectList, error) {
	if err := gofakes3.ValidateBucketName(bucket); err != nil {
		return nil, gofakes3.BucketNotFound(bucket)
	}
	if exists, err := b.BucketExists(bucket); err != nil {
		return nil, err
	} else if !exists {
		return nil, gofakes3.BucketNotFound(bucket)
	}
	if prefix == nil {
		prefix = &gofakes3.Prefix{}
	}
	root := path.Join("buckets", bucket)
	files := map[string]os.FileInfo{}
	err := afero.Walk(b.fs, root, func(name string, info os.FileInfo, err error) error {
		if err != nil {
			if errors.Is(err, os.ErrNotExist) { // deleted while listing
				return nil
			}
			return err
		}
		if !info.IsDir() {
			files[strings.TrimPrefix(name, root+"/")] = info
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	keys := make([]string, 0, len(files))
	for key := range files {
		keys = append(keys, key)
	}
	sort.Strings(keys)

	list := gofakes3.NewObjectList()
	var count int64
	var lastPrefix, lastKey string
	for _, key := range keys {
		if page.HasMarker && key <= page.Marker {
			continue
		}
		var match gofakes3.PrefixMatch
		if !prefix.Match(key, &match) {
			continue
		}
		if match.CommonPrefix {
			if match.MatchedPart == lastPrefix {
				lastKey = key
				continue
			}
			if page.MaxKeys > 0 && count >= page.MaxKeys {
				list.IsTruncated, list.NextMarker = true, lastKey
				break
			}
			list.AddPrefix(match.MatchedPart)
			lastPrefix = match.MatchedPart
		} else {
			if page.MaxKeys > 0 && count >= page.MaxKeys {
				list.IsTruncated, list.NextMarker = true, lastKey
				break
			}
			object, err := b.HeadObject(bucket, key)
			if gofakes3.HasErrorCode(err, gofakes3.ErrNoSuchKey) {
				continue // deleted while listing
			} else if err != nil {
				return nil, err
			}
			list.Add(&gofakes3.Content{
				Key:          key,
				LastModified: gofakes3.NewContentTime(files[key].ModTime()),
				ETag:         gofakes3.FormatETag(object.Hash),
				Size:         object.Size,
			})
		}
		lastKey = key
		count++
	}
	return list, nil
}
