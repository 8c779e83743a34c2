"""Lab tier: the apps' backups for real.

restic 0.18.1 (built from its Go module; the lab's image under upstream's name) runs from the backup CronJob the
deploy rendered into the app's manifest, and backs the app's volume up to the lab's S3 server on the cloud host h1
(gofakes3 v1.2.0 behind the lab's AWS Signature V4 check, ``portable_k3s.lab.s3``). The public app's content is
destroyed, restored with ``portable-k3s restore`` and read back byte for byte through the entrance. A SQLite database
whose rows are only in its write-ahead log (a writer holds it open, nothing checkpointed) comes back whole from the
consistent copy the backup's sqlite3 init container took. Then the app leaves the catalog (its namespace and volume
are deleted), comes back with an empty volume and is restored from the repository that outlived it.

The backup's and the restore's times are printed (``pytest -s``) for the README.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import pytest

from portable_k3s.lab.apps import issue_certificates
from portable_k3s.lab.s3 import s3_keys, s3_objects, start_s3

from .public import PUBLIC, PUBLIC_APP, backup_now, cli, served, tls

REPO = Path(__file__).resolve().parents[2]
PROOF = "backup-proof.txt"
SQLITE_APP = "kutt"  # a SQLite kind: its backups take consistent copies first (its own image is not in the lab)


@pytest.fixture(scope="module")
def s3(lab, converged_entrance) -> str:
    """The lab's S3 server on h1 (started with the lab; started again here should a test before have stopped it)."""
    return start_s3(lab)


def _kubectl(lab, args: str, input: str | None = None, check: bool = True,  # noqa: A002
             timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return lab.ssh("h2", f"k3s kubectl {args}", input=input, check=check, timeout=timeout)


def _get(lab, ca: Path, path: str) -> tuple[str, str]:
    """(status line, body) of ``path`` on the public app, through the entrance."""
    _cert, response = tls(lab, ca, PUBLIC, f"GET {path} HTTP/1.0\r\n\r\n".encode())
    head, _, body = response.partition("\r\n\r\n")
    return head.splitlines()[0], body


def _until(lab, ca: Path, path: str, code: str = "200", within: float = 180) -> tuple[str, str]:
    """(status line, body) once ``path`` answers with ``code`` through the entrance (or the last answer)."""
    deadline = time.monotonic() + within
    while True:
        try:
            status, body = _get(lab, ca, path)
        except OSError as error:
            status, body = f"no answer: {error}", ""
        if f" {code} " in status or time.monotonic() > deadline:
            return status, body
        time.sleep(2)


def _secret_values(lab) -> list[str]:
    password = (lab.state_dir / "app-backup-password").read_text().strip()
    return [password, *s3_keys(lab)]


def _volume(lab, app: str) -> tuple[str, str]:
    """The node and the directory of the app's volume (k3s's local-path: a directory on one node)."""
    claim = json.loads(_kubectl(lab, f"-n app-{app} get pvc {app} -o json").stdout)
    volume = json.loads(_kubectl(lab, f"get pv {claim['spec']['volumeName']} -o json").stdout)["spec"]
    node = volume["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]
    return node, volume["hostPath"]["path"]


def test_the_public_apps_volume_is_backed_up_destroyed_and_restored_byte_for_byte(lab, lab_env, served_apps, s3):
    content = secrets.token_hex(256 * 1024) + "\n"  # 512 KiB that exist nowhere else
    node, directory = _volume(lab, PUBLIC_APP)  # written as its owner uploads a site: into the volume
    lab.ssh(node, f"cat > {directory}/{PROOF}", input=content)
    status, body = _get(lab, served_apps, f"/{PROOF}")
    assert " 200 " in status and body == content

    with _argv_sampler(lab, node) as argv:  # every process's command line on the volume's node meanwhile
        backup_seconds = backup_now(lab, PUBLIC_APP, "backup-lab-1")
    assert "restic backup --host blog" in argv.read(), "the sampler saw nothing of the backup"
    repository = s3_objects(lab, "lab-backups", f"apps/{PUBLIC_APP}/")
    assert f"apps/{PUBLIC_APP}/config" in repository and any(k.startswith(f"apps/{PUBLIC_APP}/data/")
                                                               for k in repository), repository
    # The repository is encrypted: the content is in no object in the clear.
    assert not any(content[:64].encode() in _object(lab, key) for key in repository if "/data/" in key)

    listed = cli(lab_env, "backups", "inventories/lab.py")
    line = next((ln for ln in listed.stdout.splitlines() if f" {PUBLIC_APP}: " in ln), "")
    assert line.startswith("ok") and re.search(r"\d+ snapshots?, newest", line), listed.stdout + listed.stderr
    # The catalog's other apps have no snapshot yet, but their backups began minutes ago: none is late.
    assert listed.returncode == 0 and "no snapshot yet: its backups began" in listed.stdout, listed.stdout

    lab.ssh(node, f"rm -rf {directory}/*")  # the app's data is lost
    assert " 404 " in _get(lab, served_apps, f"/{PROOF}")[0]

    started = time.monotonic()
    restored = cli(lab_env, "restore", "inventories/lab.py", PUBLIC_APP)
    restore_seconds = time.monotonic() - started
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    assert f"restored {PUBLIC_APP} from snapshot latest" in restored.stdout
    status, body = _until(lab, served_apps, f"/{PROOF}")
    assert " 200 " in status and body == content, status
    _cert, page = tls(lab, served_apps, PUBLIC)
    assert served(page), page[:300]
    argv.seek(0)
    seen = argv.read()
    for value in _secret_values(lab):
        assert value not in listed.stdout + listed.stderr + restored.stdout + restored.stderr
        assert value not in seen, "a backup secret was in a process argv"
    # On the hosts: in the 0600 manifest, k3s's datastore (0600) and the pods' secret volumes (0400) only.
    for host in lab.hosts():
        for value in _secret_values(lab)[:1] + [_secret_values(lab)[2]]:
            found = lab.ssh(host.name, f"grep -rlF {value} /etc /root /run /tmp /var/lib 2>/dev/null "
                                       "| xargs -r stat -L -c '%a %n'", check=False, timeout=300).stdout.splitlines()
            loose = [line for line in found if line.split()[0] not in ("600", "400")]
            assert not loose, (host.name, loose)
    size = sum(len(_object(lab, k)) for k in s3_objects(lab, "lab-backups", f"apps/{PUBLIC_APP}/"))
    print(f"\nbackup of {PUBLIC_APP} ({len(content) // 1024} KiB + its page): {backup_seconds:.1f} s "
          f"(job created to complete); restore: {restore_seconds:.1f} s (stop, restore, start); "
          f"repository {size // 1024} KiB")


@contextmanager
def _argv_sampler(lab, node: str) -> Iterator[IO[str]]:
    """The command lines of every process on ``node``, sampled over and over while the block runs (a file)."""
    samples = tempfile.TemporaryFile(mode="w+")
    sampler = subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), node,
         "end=$(($(date +%s)+300)); while [ $(date +%s) -lt $end ] && [ ! -e /tmp/stop-sampler ]; do "
         "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '; echo; done"],
        stdout=samples, stderr=subprocess.DEVNULL, text=True)
    try:
        time.sleep(1)
        yield samples
    finally:
        lab.ssh(node, "touch /tmp/stop-sampler")
        sampler.wait(timeout=60)
        lab.ssh(node, "rm -f /tmp/stop-sampler")
        samples.seek(0)


def _object(lab, key: str) -> bytes:
    from portable_k3s.lab.s3 import s3_object

    return s3_object(lab, key, "lab-backups")


SQLITE_POD = """apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: app-{app}
spec:
  restartPolicy: Never
  containers:
    - name: sqlite
      image: keinos/sqlite3:3.47.2
      command: ["/bin/sh", "-c", {script}]
      volumeMounts:
        - name: data
          mountPath: /data
  volumes:
    - name: data
      persistentVolumeClaim:
        claimName: {app}
"""


def _sqlite_pod(lab, name: str, script: str) -> None:
    """A pod of the lab's sqlite3 image with the SQLite app's volume at /data, running ``script``."""
    manifest = SQLITE_POD.format(name=name, app=SQLITE_APP, script=json.dumps(script))
    _kubectl(lab, "apply -f -", input=manifest)


def _sqlite_pod_output(lab, name: str) -> str:
    _kubectl(lab, f"-n app-{SQLITE_APP} wait --for=jsonpath='{{.status.phase}}'=Succeeded --timeout=120s pod/{name}")
    return _kubectl(lab, f"-n app-{SQLITE_APP} logs {name}").stdout


def test_a_sqlite_database_with_rows_only_in_its_wal_comes_back_whole(lab, lab_env, served_apps, s3):
    # A writer holds the database open in WAL mode with automatic checkpoints off: the rows are in data.sqlite-wal
    # only, which the backup leaves out (a copy of a live database file and its WAL is not a consistent backup).
    writer = ("cd /data && (echo 'PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0; "
              "CREATE TABLE IF NOT EXISTS t(x INTEGER); "
              "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i<5000) "
              "INSERT INTO t SELECT i FROM n;'; echo 'SELECT count(*) FROM t;'; sleep 600) | sqlite3 data.sqlite")
    _sqlite_pod(lab, "writer", writer)
    _kubectl(lab, f"-n app-{SQLITE_APP} wait --for=condition=Ready --timeout=120s pod/writer")
    deadline = time.monotonic() + 60
    while "5000" not in _kubectl(lab, f"-n app-{SQLITE_APP} logs writer", check=False).stdout:
        assert time.monotonic() < deadline, "the writer did not write"
        time.sleep(1)
    sizes = _kubectl(lab, f"-n app-{SQLITE_APP} exec writer -- sh -c 'stat -c \"%n %s\" /data/data.sqlite*'").stdout
    assert "data.sqlite-wal" in sizes, sizes

    backup_now(lab, SQLITE_APP, "backup-lab-sqlite")
    logs = _kubectl(lab, f"-n app-{SQLITE_APP} logs job/backup-lab-sqlite -c sqlite-copies").stdout
    assert "consistent copy of /data/data.sqlite" in logs, logs

    _kubectl(lab, f"-n app-{SQLITE_APP} delete pod writer --wait=true --grace-period=1")
    _sqlite_pod(lab, "wipe", "rm -f /data/data.sqlite /data/data.sqlite-wal /data/data.sqlite-shm; echo wiped")
    assert "wiped" in _sqlite_pod_output(lab, "wipe")
    _kubectl(lab, f"-n app-{SQLITE_APP} delete pod wipe")

    restored = cli(lab_env, "restore", "inventories/lab.py", SQLITE_APP)
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    _sqlite_pod(lab, "reader", "cd /data && ls -a && sqlite3 data.sqlite "
                               "'PRAGMA integrity_check; SELECT count(*), sum(x) FROM t;'")
    out = _sqlite_pod_output(lab, "reader")
    _kubectl(lab, f"-n app-{SQLITE_APP} delete pod reader")
    assert "ok\n5000|12502500" in out, out
    assert "data.sqlite-wal" not in out.split(), out  # the copy is a whole database of its own


def test_a_removed_app_comes_back_empty_and_is_restored_from_its_repository(lab, lab_env, pyinfra, served_apps, s3):
    catalog = json.loads(subprocess.run(
        [sys.executable, "-c", "import json, runpy; print(json.dumps(runpy.run_path('group_data/all.py')['apps']))"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout)
    without = [app for app in catalog if app["name"] != PUBLIC_APP]
    removed = pyinfra("--data", f"apps={json.dumps(without)}")
    assert removed.returncode == 0, removed.stderr[-4000:]
    deadline = time.monotonic() + 180  # the namespace goes with its volume (the provisioner removes its data)
    while "NotFound" not in (gone := _kubectl(lab, f"get namespace app-{PUBLIC_APP}", check=False)).stderr:
        assert time.monotonic() < deadline, gone.stdout
        time.sleep(2)
    assert s3_objects(lab, "lab-backups", f"apps/{PUBLIC_APP}/"), "the repository went with the app"

    back = pyinfra()
    assert back.returncode == 0, back.stderr[-4000:]
    deadline = time.monotonic() + 180
    while _kubectl(lab, f"-n app-{PUBLIC_APP} get ingress {PUBLIC_APP}", check=False).returncode != 0:
        assert time.monotonic() < deadline, "the app did not come back"
        time.sleep(2)
    issue_certificates(lab)  # its TLS Secret went with its namespace (the lab's CERTIFICATE STAND-IN issues it)
    status, _body = _until(lab, served_apps, f"/{PROOF}", code="404")
    assert " 404 " in status, status  # served again, from an empty volume

    restored = cli(lab_env, "restore", "inventories/lab.py", PUBLIC_APP)
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    status, body = _until(lab, served_apps, f"/{PROOF}")
    assert " 200 " in status and len(body) == 512 * 1024 + 1, status
    _cert, page = tls(lab, served_apps, PUBLIC)
    assert served(page), page[:300]
