"""Lab tier: the etcd snapshots' copy to S3. The lab inventory sets ``k3s_etcd_s3`` (the lab's S3 server on the cloud
host h1: gofakes3 v1.2.0 behind the lab's AWS Signature V4 check, ``portable_k3s.lab.s3``; plain http), the deploy
writes k3s's ``etcd-s3-*`` settings into the server's 0600 config.yaml, and ``k3s etcd-snapshot save`` on the server
(h2) uploads the snapshot as k3s does (the K3S STAND-IN's server, with minio-go): byte for byte under ``etcd/``,
signed with the lab's key pair, which shows up in no argv, no journal and no file readable beyond its owner. Under
a wrong secret, the upload is refused and the save behaves as k3s's: a cached client's refused upload is logged and
the local snapshot stays; a new client's refused bucket check fails the save, with nothing saved.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator

import pytest
import yaml

from portable_k3s.lab.s3 import s3_keys, s3_log, s3_object, s3_objects, start_s3

SERVER = "h2"
SNAPSHOTS = "/var/lib/rancher/k3s/server/db/snapshots"
SNAPSHOTS_LOG = "/var/lib/rancher/k3s/standin/snapshots.log"
EXTRA_METADATA = "k3s-etcd-snapshot-extra-metadata"
# Where a file holding the secret could be on the server: config, k3s's data, kubelet's volumes, logs, temp files.
SCANNED = "/etc /root /home /tmp /var/tmp /var/log /var/lib/rancher /var/lib/kubelet /run"


@pytest.fixture(scope="module")
def s3(lab, converged_entrance) -> Iterator[str]:
    """The lab's S3 server with the lab's key pair; it runs on with them afterwards, as the other tests expect."""
    endpoint = start_s3(lab)
    try:
        yield endpoint
    finally:
        start_s3(lab)


def _save(lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.ssh(SERVER, " ".join(("k3s etcd-snapshot save", *args)), check=False, timeout=600)


def _newest(lab, prefix: str) -> str:
    """The newest local snapshot whose name starts with ``prefix`` ("" without one)."""
    return lab.ssh(SERVER, f"ls -t {SNAPSHOTS}/{prefix}-* 2>/dev/null | head -n 1", check=False).stdout.strip()


def _holding(lab, secret: str, command: str) -> str:
    """``command`` run by bash on the server, ``{pattern}`` in it a file holding ``secret``: bash reads it from stdin
    and writes it with its builtins, so the secret is in no argv there either."""
    script = "read -r s; " + command.format(pattern='<(printf "%s\\n" "$s")')
    return lab.ssh(SERVER, "bash -c " + shlex.quote(script), input=secret + "\n", check=False, timeout=300).stdout


def test_a_snapshot_is_copied_to_s3_byte_for_byte_with_the_key_pair_it_never_shows(lab, s3) -> None:
    access, secret = s3_keys(lab)
    config = yaml.safe_load(lab.ssh(SERVER, "cat /etc/rancher/k3s/config.yaml").stdout)
    assert {k: v for k, v in config.items() if k.startswith("etcd-s3") and not k.endswith("-key")} == {
        "etcd-s3": True, "etcd-s3-endpoint": s3.removeprefix("http://"), "etcd-s3-bucket": "lab-backups",
        "etcd-s3-folder": "etcd", "etcd-s3-region": "lab-1", "etcd-s3-insecure": True,
    }, config
    assert (config["etcd-s3-access-key"], config["etcd-s3-secret-key"]) == (access, secret)
    assert lab.ssh(SERVER, "stat -c %a /etc/rancher/k3s/config.yaml").stdout.strip() == "600"

    # k3s's extra metadata goes with the snapshot, as FOLDER/.metadata/NAME.
    lab.ssh(SERVER, f"k3s kubectl -n kube-system create configmap {EXTRA_METADATA} --from-literal=lab=etcd-s3")
    sampler = subprocess.Popen(  # every process's argv on the server, while the snapshot is saved and uploaded
        ["ssh", "-F", str(lab.ssh_config), SERVER, "for i in $(seq 1 400); do cat /proc/[0-9]*/cmdline 2>/dev/null "
         "| tr '\\0' ' '; echo; sleep 0.05; done"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1)
        saved = _save(lab, "--name", "lab-s3")
    finally:
        argv = sampler.communicate(timeout=120)[0]
        lab.ssh(SERVER, f"k3s kubectl -n kube-system delete configmap {EXTRA_METADATA}", check=False)
    assert saved.returncode == 0, saved.stderr
    local = _newest(lab, "lab-s3")
    name = local.rsplit("/", 1)[-1]
    assert name.startswith(f"lab-s3-{SERVER}-"), local
    # As k3s's CLI: one line per snapshot made, the local one and its S3 copy.
    assert saved.stdout.splitlines() == [f"Snapshot {name} saved."] * 2, saved.stdout
    digest, mode = lab.ssh(SERVER, f"sha256sum {local} | cut -d' ' -f1; stat -c %a {local}").stdout.split()
    assert mode == "600"
    objects = s3_objects(lab, "lab-backups", "etcd/")
    assert objects[f"etcd/{name}"] == digest, objects  # byte for byte
    assert s3_object(lab, f"etcd/.metadata/{name}") == b'{"lab":"etcd-s3"}'
    log = s3_log(lab)
    assert f"PUT /lab-backups/etcd/{name}" in log and f"refused PUT /lab-backups/etcd/{name}" not in log, log[-3000:]
    assert secret not in log and access not in log
    record = lab.ssh(SERVER, f"tail -n 2 {SNAPSHOTS_LOG}").stdout.splitlines()
    assert record[0].split()[1:] == ["save", local] and record[1].split()[1:] == ["s3", f"lab-backups/etcd/{name}",
                                                                                   local], record

    # The secret key: in no process argv (sampled during the save, and now), in no journal, and in no file but
    # owner-only ones (config.yaml, k3s's manifests and etcd data, the snapshots, kubelet's secret volumes).
    assert "etcd-snapshot save" in argv, "the argv sampler saw nothing of the save"
    assert secret not in argv, "the S3 secret key was in a process argv"
    now = lab.ssh(SERVER, "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' '").stdout
    assert now and secret not in now
    assert _holding(lab, secret, "journalctl --no-pager -o cat | grep -cF -f {pattern}").strip() == "0"
    files = _holding(lab, secret, f"grep -rlsF -D skip -f {{pattern}} {SCANNED} | xargs -r -d '\\n' stat -c '%a %n'")
    held = dict(line.split(" ", 1)[::-1] for line in files.splitlines())
    assert "/etc/rancher/k3s/config.yaml" in held and local in held, held
    assert all(mode in ("600", "400") for mode in held.values()), held


def test_under_a_wrong_secret_the_upload_is_refused_and_the_save_behaves_as_k3s(lab, s3) -> None:
    access, secret = s3_keys(lab)
    warm = _save(lab, "--name", "lab-s3-warm")  # the server's client for these settings, made and checked
    assert warm.returncode == 0 and len(warm.stdout.splitlines()) == 2, warm.stdout + warm.stderr
    before = s3_objects(lab, "lab-backups", "etcd/")
    try:
        start_s3(lab, keys={access: "not-the-secret"})  # the server takes the lab's access key under another secret
        # A client the server has (k3s caches them): the upload is refused, k3s logs it, the local snapshot stays.
        since = lab.ssh(SERVER, "date +%s").stdout.strip()
        refused = _save(lab, "--name", "lab-s3-refused")
        assert refused.returncode == 0, refused.stderr
        local = _newest(lab, "lab-s3-refused")
        name = local.rsplit("/", 1)[-1]
        assert name and refused.stdout.splitlines() == [f"Snapshot {name} saved."], refused.stdout
        refusals = [line for line in s3_log(lab).splitlines() if f"refused PUT /lab-backups/etcd/{name}" in line]
        assert refusals and "SignatureDoesNotMatch" in refusals[-1], refusals
        record = lab.ssh(SERVER, f"tail -n 1 {SNAPSHOTS_LOG}").stdout.split()
        assert record[1:3] == ["s3-failed", f"lab-backups/etcd/{name}"] and record[-1] == "(SignatureDoesNotMatch)"
        journal = lab.ssh(SERVER, f"journalctl -u k3s --no-pager -o cat --since @{since} | grep -F 'S3'").stdout
        assert "Error received during snapshot upload to S3: The request signature we calculated does not match" \
            in journal, journal

        # A client's first use (other settings: here another folder) checks the bucket: refused, the save fails
        # and nothing is saved, as in k3s.
        first = _save(lab, "--name", "lab-s3-first", "--s3-folder", "etcd-first")
        assert first.returncode != 0 and "failed to initialize S3 client" in first.stderr, first.stderr
        assert _newest(lab, "lab-s3-first") == ""
        record = lab.ssh(SERVER, f"tail -n 1 {SNAPSHOTS_LOG}").stdout.split()
        assert record[1:6] == ["s3-failed", "lab-backups/etcd-first", "failed", "to", "initialize"], record
        refusals = [line for line in s3_log(lab).splitlines() if "refused HEAD /lab-backups/" in line]
        assert refusals and "SignatureDoesNotMatch" in refusals[-1], refusals
        assert secret not in first.stdout + first.stderr + refused.stdout + refused.stderr
        assert s3_objects(lab, "lab-backups", "etcd") == before  # nothing refused was stored
    finally:
        start_s3(lab)
    again = _save(lab, "--name", "lab-s3-again")  # the same cached client, the right secret again
    assert again.returncode == 0 and len(again.stdout.splitlines()) == 2, again.stdout + again.stderr
