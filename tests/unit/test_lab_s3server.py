"""The lab's S3 server (portable_k3s/lab/s3server: gofakes3 v1.2.0 behind the lab's AWS Signature V4 check) passes its
Go tests: AWS's published signature examples (a PUT Object, a chunked upload), requests signed by aws-sdk-go-v2's and
minio-go's signers, one change at a time refused (secret, body, chunk, path, query, header, clock, access key, region,
unsigned headers, presigned URLs), and restic's S3 client (minio-go) against the whole server: buckets, streaming
uploads, listings v1 and v2 with prefixes, delimiters and pages, ranged reads, deletes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from portable_k3s.lab.s3 import S3_SOURCE


def _go() -> str:
    found = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)
    if found is None:
        pytest.skip("the Go toolchain is missing: the lab's S3 server is a Go program")
    return found


def _offline_env() -> dict[str, str]:
    return {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "-mod=readonly", "GOPROXY": "off", "CGO_ENABLED": "0"}


@pytest.fixture(scope="module")
def go_modules() -> str:
    """The Go toolchain, once the s3server module's dependencies are in the Go module cache (no network here)."""
    go = _go()
    proc = subprocess.run([go, "list", "-deps", "-test", "./..."], cwd=S3_SOURCE, env=_offline_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["go list failed"])[-1]
        pytest.skip(f"the lab's S3 server's Go modules (gofakes3 v1.2.0, minio-go, aws-sdk-go-v2) are not in the Go "
                    f"module cache (cd {S3_SOURCE} && go mod download): {reason}")
    return go


def test_the_server_is_built_on_gofakes3_v1_2_0() -> None:
    go_mod = (S3_SOURCE / "go.mod").read_text()
    assert re.search(r"^\s*(require\s+)?github\.com/johannesboyne/gofakes3 v1\.2\.0$", go_mod, re.M), go_mod


def test_the_go_tests_pass(go_modules: str) -> None:
    proc = subprocess.run([go_modules, "test", "-count=1", "-v", "./..."], cwd=S3_SOURCE, env=_offline_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    passed = set(re.findall(r"^--- PASS: (\w+)", proc.stdout, re.M))
    assert {"TestAWSPublishedPutObjectExample", "TestAWSPublishedChunkedUploadExample",
            "TestRequestsSignedByTheAWSSDKPass", "TestStreamingUploadSignedByMinioGoPasses", "TestOneChangeIsRefused",
            "TestResticsS3ClientWorksAgainstTheServer"} <= passed, proc.stdout[-4000:]
