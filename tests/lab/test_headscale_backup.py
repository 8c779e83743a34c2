"""Lab tier: headscale backup and restore with the real headscale. The backup timer's service makes an archive and
copies it to S3: the lab's S3 server on the cloud host h1 (gofakes3 v1.2.0 behind the lab's AWS Signature V4 check,
``portable_k3s.lab.s3``); the headscale host is destroyed (a fresh disk at the same address, as a replacement VM
behind the same server URL); the deploy restores the archive there. The other nodes stay joined and keep talking,
with no re-join.

Runs after the other lab tests (it rebuilds a lab host), before the move-house test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from portable_k3s.lab.images import BUSYBOX_IMAGE
from portable_k3s.lab.s3 import S3_UNIT, s3_keys, s3_log, s3_object, s3_objects, start_s3, stop_s3

from .public import PUBLIC, served, tls

HOME = ("h2", "h3", "h4")


def _registrations(lab) -> dict[str, tuple[int, str]]:
    nodes = json.loads(lab.ssh("h1", "headscale nodes list -o json").stdout)
    return {n["given_name"]: (n["id"], n["node_key"]) for n in nodes}


def _node_key(lab, name: str) -> str:
    return json.loads(lab.ssh(name, "tailscale status --json").stdout)["Self"]["PublicKey"]


@pytest.fixture
def s3(lab) -> Iterator[str]:
    """The lab's S3 server on h1 with the lab's key pair, empty; its endpoint URL. It runs on afterwards, empty, as
    the lab's other tests expect it."""
    stop_s3(lab, purge=True)
    endpoint = start_s3(lab)
    try:
        yield endpoint
    finally:
        stop_s3(lab, purge=True)
        start_s3(lab)


def test_s3_answers_the_home_hosts_and_their_pods_and_only_signed_requests(lab, converged_entrance, s3):
    """h1's S3 is reachable from home (through the home site's NAT), from a host and from a pod, and refuses an
    unsigned request with S3's error."""
    for name in ("h2", "h4"):
        answer = lab.ssh(name, f"curl -sS {s3}/lab-backups/headscale/").stdout
        assert "<Code>AccessDenied</Code>" in answer, (name, answer)
    pod = lab.ssh("h2", f"k3s kubectl run lab-s3-probe --image={BUSYBOX_IMAGE} --image-pull-policy=Never "
                        "--restart=Never --rm -i --quiet --overrides='{\"spec\": {\"nodeName\": \"h3\"}}' -- "
                        f"wget -S -O- {s3}/lab-backups/", check=False, timeout=180)
    assert "403 Forbidden" in pod.stdout + pod.stderr, pod.stdout + pod.stderr
    log = s3_log(lab)  # both came through the home site's NAT
    nat = lab.home_public_address()
    assert f"refused GET /lab-backups/headscale/ from {nat}:" in log, log  # h2's and h4's curl
    assert f"refused GET /lab-backups/ from {nat}:" in log, log  # the pod's wget


def test_a_backup_is_copied_to_s3_signed_with_the_key_pair_it_never_shows(lab, converged_entrance, s3):
    access, secret = s3_keys(lab)
    made = lab.ssh("h1", "systemctl start portable-k3s-headscale-backup.service && "
                         "ls -t /var/backups/headscale | head -n 1")
    name = made.stdout.split()[-1]
    local = lab.ssh("h1", f"sha256sum /var/backups/headscale/{name}").stdout.split()[0]
    objects = s3_objects(lab, "lab-backups")
    assert objects == {f"headscale/{name}": local}, objects  # the archive, byte for byte, and nothing else
    copy = s3_object(lab, f"headscale/{name}", "lab-backups")
    listing = subprocess.run(["tar", "-tzf", "-"], input=copy, capture_output=True, check=True).stdout.decode()
    assert "./db.sqlite" in listing.split() and "./noise_private.key" in listing.split(), listing
    log = s3_log(lab)
    assert f"PUT /lab-backups/headscale/{name}" in log and "refused" not in log, log[-2000:]
    unit = lab.ssh("h1", "systemctl cat portable-k3s-headscale-backup.service; "
                         "cat /usr/local/lib/portable-k3s/headscale-backup; "
                         "stat -c %a /etc/portable-k3s/headscale-backup-s3").stdout
    assert secret not in unit and access not in unit and unit.rstrip().endswith("600")
    journal = lab.ssh("h1", "journalctl -u portable-k3s-headscale-backup.service --no-pager").stdout
    assert secret not in journal and f"copied to {s3}/lab-backups/headscale/{name}" in journal
    server = lab.ssh("h1", f"systemctl show -p ExecStart {S3_UNIT}; stat -c %a /etc/portable-k3s-lab/s3-keys").stdout
    assert secret not in server + log and access not in server + log and server.rstrip().endswith("600"), server

    start_s3(lab, keys={access: "not-the-secret"})  # the check can fail: the same request under another secret
    failed = lab.ssh("h1", "systemctl start portable-k3s-headscale-backup.service", check=False)
    assert failed.returncode != 0
    refusals = [line for line in s3_log(lab).splitlines() if "refused PUT /lab-backups/headscale/" in line]
    assert refusals and "SignatureDoesNotMatch" in refusals[-1], refusals
    assert list(s3_objects(lab, "lab-backups")) == [f"headscale/{name}"]  # the refused upload was not stored


@pytest.mark.moves_lab
def test_restore_onto_a_fresh_headscale_host_keeps_every_node_joined(lab, pyinfra, served_apps, tmp_path, s3):
    made = lab.ssh("h1", "systemctl start portable-k3s-headscale-backup.service && "
                         "name=$(ls -t /var/backups/headscale | head -n 1) && echo $name && "
                         "stat -c %a /var/backups/headscale/$name")
    archive_name, mode = made.stdout.split()[-2:]
    assert archive_name.startswith("headscale-") and mode == "600", made.stdout
    archive = tmp_path / archive_name
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        copy = subprocess.run(["ssh", "-F", str(lab.ssh_config), "h1", f"cat /var/backups/headscale/{archive_name}"],
                              capture_output=True, check=True, timeout=60)
        out.write(copy.stdout)
    before = _registrations(lab)
    keys = {name: _node_key(lab, name) for name in HOME}

    lab.reset_host("h1")
    assert "headscale" not in lab.ssh("h1", "ls /usr/local/bin").stdout  # a fresh disk, nothing of the old host
    restored = pyinfra("--data", f"headscale_restore={archive}")
    assert restored.returncode == 0, restored.stderr[-4000:]

    after = _registrations(lab)
    for name in HOME:  # the same registrations (id and node key), and the nodes still use them: no re-join
        assert after[name] == before[name], (name, before[name], after[name])
        assert _node_key(lab, name) == keys[name]
    assert "h1" in after and after["h1"] != before["h1"]  # only the rebuilt host joined afresh, under its own name
    ips = {name: lab.ssh(name, "tailscale ip -4").stdout.strip() for name in ("h1", *HOME)}
    for a, b in (("h2", "h3"), ("h4", "h2"), ("h1", "h3"), ("h2", "h1")):
        pinged = lab.ssh(a, f"for i in $(seq 20); do tailscale ping -c 1 --timeout 3s {ips[b]} && exit 0; "
                            "sleep 1; done; exit 1", check=False)
        assert pinged.returncode == 0, f"{a} -> {b}: {pinged.stdout[-500:]}"
    _, body = tls(lab, served_apps, PUBLIC)  # the rebuilt entrance serves the public app again
    assert served(body), body

    again = pyinfra("--data", f"headscale_restore={archive}")  # still set: headscale has a database now
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}, again.changed()
