"""Lab tier: headscale backup and restore with the real headscale. The backup timer's service makes an archive and
copies it to S3 (the S3 STAND-IN of s3_standin.py, which checks AWS Signature V4); the headscale host is destroyed
(a fresh disk at the same address, as a replacement VM behind the same server URL); the deploy restores the archive
there. The other nodes stay joined and keep talking, with no re-join.

Runs after the other lab tests (it rebuilds a lab host), before the move-house test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from portable_k3s.lab.inventory import lab_s3_port, lab_secret

from .public import PUBLIC, served, tls
from .s3_standin import S3Standin

HOME = ("h2", "h3", "h4")


def _registrations(lab) -> dict[str, tuple[int, str]]:
    nodes = json.loads(lab.ssh("h1", "headscale nodes list -o json").stdout)
    return {n["given_name"]: (n["id"], n["node_key"]) for n in nodes}


def _node_key(lab, name: str) -> str:
    return json.loads(lab.ssh(name, "tailscale status --json").stdout)["Self"]["PublicKey"]


@pytest.fixture
def s3(lab) -> Iterator[S3Standin]:
    """The S3 STAND-IN (AWS Signature V4 checked) at the lab's S3 URL, with the lab's key pair."""
    keys = {lab_secret(lab.state_dir, "s3-access-key", "LAB").read_text().strip():
            lab_secret(lab.state_dir, "s3-secret-key").read_text().strip()}
    with S3Standin((lab.gateway("cloud"), lab_s3_port(lab.config)), keys, "lab-1") as server:
        yield server


def test_a_backup_is_copied_to_s3_signed_with_the_key_pair_it_never_shows(lab, converged_entrance, s3):
    keys = dict(s3.keys)
    made = lab.ssh("h1", "systemctl start portable-k3s-headscale-backup.service && "
                         "ls -t /var/backups/headscale | head -n 1")
    name = made.stdout.split()[-1]
    local = lab.ssh("h1", f"sha256sum /var/backups/headscale/{name}").stdout.split()[0]
    assert list(s3.objects) == [f"lab-backups/headscale/{name}"] and not s3.refused, (s3.objects, s3.refused)
    assert hashlib.sha256(s3.objects[f"lab-backups/headscale/{name}"]).hexdigest() == local
    (access, secret), = keys.items()
    unit = lab.ssh("h1", "systemctl cat portable-k3s-headscale-backup.service; "
                         "cat /usr/local/lib/portable-k3s/headscale-backup; "
                         "stat -c %a /etc/portable-k3s/headscale-backup-s3").stdout
    assert secret not in unit and access not in unit and unit.rstrip().endswith("600")
    log = lab.ssh("h1", "journalctl -u portable-k3s-headscale-backup.service --no-pager").stdout
    assert secret not in log and f"copied to http://{lab.gateway('cloud')}" in log

    s3.keys = {access: "not-the-secret"}  # the check can fail: the same request under another secret is refused
    failed = lab.ssh("h1", "systemctl start portable-k3s-headscale-backup.service", check=False)
    assert failed.returncode != 0 and s3.refused and s3.refused[-1].startswith("SignatureDoesNotMatch"), s3.refused
    assert len(s3.objects) == 1


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
