"""The lab's S3: an S3-compatible server on the cloud host h1, the "off-site" target of the lab's backups.

It is gofakes3 v1.2.0 (``github.com/johannesboyne/gofakes3``: buckets and objects kept as files of a directory)
behind a check of AWS Signature Version 4 as S3 makes it, which gofakes3 does not make: ``portable_k3s/lab/s3server``,
lab code (the signature check, S3's listing over gofakes3's directory backend, the command). It takes requests
signed in the Authorization header only (payload sha256, UNSIGNED-PAYLOAD, or aws-chunked streaming uploads, whose
chunk signatures it checks) and answers anything else with S3's XML error. Plain http, on h1's cloud address, which
the home hosts and their pods reach through the home site's NAT.

    endpoint = start_s3(lab)          # "http://10.231.1.11:8791", keys from the lab's s3-access-key/s3-secret-key
    s3_objects(lab, "lab-backups")    # {"headscale/headscale-….tar.gz": "<sha256>"}
    stop_s3(lab)
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import gobuild
from .artifacts import _source_hash
from .core import Lab, LabError, go_arch
from .inventory import LAB_S3_HOST, lab_s3_endpoint, lab_secret

S3_SOURCE = Path(__file__).parent / "s3server"
S3_REGION = "lab-1"
S3_BUCKETS = ("lab-backups",)
S3_UNIT = "portable-k3s-lab-s3"
REMOTE_BINARY = "/usr/local/lib/portable-k3s-lab/s3server"
REMOTE_DATA = "/var/lib/portable-k3s-lab/s3"
REMOTE_KEYS = "/etc/portable-k3s-lab/s3-keys"


def build_s3server(cache_dir: str | Path) -> Path:
    """
    Build the lab's S3 server (``portable_k3s/lab/s3server``: gofakes3 v1.2.0 behind the SigV4 check) once per
    source, into ``<cache_dir>/go-bin/s3server-<arch>-<source hash>/s3server`` (CGO off, static, stripped).

    + cache_dir: the lab's cache directory

    **Example:**

    .. code:: python

        binary = build_s3server(lab.config.cache_dir)
    """
    with tempfile.TemporaryDirectory(prefix="portable-k3s-s3server-") as work:
        source = Path(work) / "s3server"
        shutil.copytree(S3_SOURCE, source, ignore=shutil.ignore_patterns("__pycache__", "*_test.go"))
        out = Path(cache_dir) / "go-bin" / f"s3server-{go_arch()}-{_source_hash(source)[:12]}" / "s3server"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-trimpath -mod=readonly", "GOTOOLCHAIN": "local"}
        gobuild.run_step([gobuild.go(), "build", "-ldflags=-s -w", "-o", f"{out}.partial", "."], source, env,
                         "building the lab's S3 server (gofakes3 v1.2.0 behind a SigV4 check; once)")
    os.replace(f"{out}.partial", out)
    return out


def s3_keys(lab: Lab) -> tuple[str, str]:
    """The lab's S3 key pair ``(access_key, secret_key)``: the files the lab inventory's ``s3_access_key`` and
    ``s3_secret_key`` name (made once per lab, 0600)."""
    access = lab_secret(lab.state_dir, "s3-access-key", "LAB").read_text().strip()
    secret = lab_secret(lab.state_dir, "s3-secret-key").read_text().strip()
    return access, secret


def _ssh_bytes(lab: Lab, command: str, data: bytes | None = None, timeout: float = 120) -> bytes:
    """Run ``command`` on the S3 host with ``data`` on its stdin; its stdout."""
    proc = subprocess.run(["ssh", "-F", str(lab.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                           LAB_S3_HOST, command], input=data, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise LabError(f"{LAB_S3_HOST}: {command} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout


def _install(lab: Lab, binary: Path) -> None:
    """Copy the server's binary to the S3 host, unless it has this one."""
    data = binary.read_bytes()
    have = lab.ssh(LAB_S3_HOST, f"sha256sum {REMOTE_BINARY} 2>/dev/null", check=False).stdout.split()[:1]
    if have == [hashlib.sha256(data).hexdigest()]:
        return
    target = shlex.quote(REMOTE_BINARY)
    _ssh_bytes(lab, f"mkdir -p {shlex.quote(os.path.dirname(REMOTE_BINARY))} && cat > {target}.partial && "
                    f"chmod 755 {target}.partial && mv -f {target}.partial {target}", data)


def start_s3(lab: Lab, keys: Mapping[str, str] | None = None, buckets: Iterable[str] = S3_BUCKETS,
             timeout: float = 30.0) -> str:
    """
    Run the lab's S3 server on h1 as the transient unit ``portable-k3s-lab-s3`` (restarted if it runs), with
    ``keys`` in a 0600 file on h1 (never in argv), and wait until it answers. Returns its endpoint URL.

    + keys: ``{access_key: secret_key}`` it takes (default: the lab's pair, see ``s3_keys``)
    + buckets: buckets to create at start if missing (objects of earlier runs stay)
    + timeout: seconds to wait for it to listen

    **Example:**

    .. code:: python

        endpoint = start_s3(lab)  # "http://10.231.1.11:8791"
        start_s3(lab, keys={access: "not-the-secret"})  # the same access key, another secret
    """
    pairs = dict(keys) if keys is not None else dict([s3_keys(lab)])
    if not pairs or any(":" in access or "\n" in access + secret for access, secret in pairs.items()):
        raise LabError("start_s3: keys must map access keys (no ':') to secrets, one line each")
    _install(lab, build_s3server(lab.config.cache_dir))
    stop_s3(lab)
    keys_file = shlex.quote(REMOTE_KEYS)
    lab.ssh(LAB_S3_HOST, f"umask 077 && mkdir -p {shlex.quote(os.path.dirname(REMOTE_KEYS))} && "
                         f"cat > {keys_file}.tmp && mv -f {keys_file}.tmp {keys_file}",
            input="".join(f"{access}:{secret}\n" for access, secret in pairs.items()))
    endpoint = lab_s3_endpoint(lab)
    command = ["systemd-run", f"--unit={S3_UNIT}", "--collect", "--description=portable-k3s lab S3 (gofakes3)",
               "--", REMOTE_BINARY, "-listen", endpoint, "-data", REMOTE_DATA, "-region", S3_REGION,
               "-keys", REMOTE_KEYS, "-access-log"]
    for bucket in buckets:
        command += ["-bucket", bucket]
    lab.ssh(LAB_S3_HOST, shlex.join(command))
    address, port = endpoint.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, int(port)), timeout=1):
                return f"http://{endpoint}"
        except OSError:
            pass
        state = lab.ssh(LAB_S3_HOST, f"systemctl is-active {S3_UNIT}", check=False).stdout.strip()
        if state not in ("active", "activating") or time.monotonic() > deadline:
            raise LabError(f"the lab's S3 server on {LAB_S3_HOST} does not answer on {endpoint} ({state}):\n"
                           f"{s3_log(lab)[-2000:]}")
        time.sleep(0.2)


def stop_s3(lab: Lab, purge: bool = False) -> None:
    """
    Stop the lab's S3 server on h1; nothing to do when it does not run (or h1 is gone).

    + purge: also remove its buckets and objects (``/var/lib/portable-k3s-lab/s3``) and its keys file

    **Example:**

    .. code:: python

        stop_s3(lab, purge=True)
    """
    command = f"systemctl stop {S3_UNIT} 2>/dev/null; systemctl reset-failed {S3_UNIT} 2>/dev/null"
    if purge:
        command += f"; rm -rf {shlex.quote(REMOTE_DATA)} {shlex.quote(REMOTE_KEYS)}"
    lab.ssh(LAB_S3_HOST, command + "; true", check=False, timeout=60)


def s3_objects(lab: Lab, bucket: str = S3_BUCKETS[0], prefix: str = "") -> dict[str, str]:
    """``{key: sha256}`` of the objects in ``bucket`` whose keys start with ``prefix``, read from the server's
    directory on h1 (each object is the file ``buckets/<bucket>/<key>``)."""
    root = shlex.quote(f"{REMOTE_DATA}/buckets/{bucket}")
    listing = lab.ssh(LAB_S3_HOST, f"cd {root} && find . -type f -print0 | xargs -0 -r sha256sum").stdout
    found = {}
    for line in listing.splitlines():
        digest, _, name = line.partition("  ")
        key = name.removeprefix("./")
        if key.startswith(prefix):
            found[key] = digest
    return dict(sorted(found.items()))


def s3_object(lab: Lab, key: str, bucket: str = S3_BUCKETS[0]) -> bytes:
    """The content of object ``key`` of ``bucket``, read from the server's directory on h1."""
    return _ssh_bytes(lab, f"cat {shlex.quote(f'{REMOTE_DATA}/buckets/{bucket}/{key}')}")


def s3_log(lab: Lab) -> str:
    """The server's journal on h1, of its current run (of all its runs when it is stopped): its start line, each
    request, each refusal and why."""
    return lab.ssh(LAB_S3_HOST, f"run=$(systemctl show -p InvocationID --value {S3_UNIT} 2>/dev/null); "
                                f"if [ -n \"$run\" ]; then journalctl _SYSTEMD_INVOCATION_ID=$run -o cat --no-pager; "
                                f"else journalctl -u {S3_UNIT} -o cat --no-pager; fi", check=False).stdout
