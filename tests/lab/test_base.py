"""Lab tier: the two sites, then the reference deploy twice with the real CLI, then its effects.

Tests in this module run in order and share one lab.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
from pathlib import Path

import paramiko

from portable_k3s.lab.core import LAB_PASSWORD, LAB_PASSWORD_USER
from portable_k3s.lab.gateway import apt_mirror_hosts

from .conftest import REPO


def _auth_methods(address: str) -> list[str]:
    """The authentication methods sshd offers (what a 'none' auth attempt is told)."""
    transport = paramiko.Transport(socket.create_connection((address, 22), timeout=5))
    try:
        transport.start_client(timeout=5)
        try:
            transport.auth_none(LAB_PASSWORD_USER)
        except paramiko.BadAuthenticationType as exc:
            return list(exc.allowed_types)
        return ["none"]
    finally:
        transport.close()


def _password_login(address: str) -> bool:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())  # noqa: S507 - throwaway lab check
    try:
        client.connect(address, username=LAB_PASSWORD_USER, password=LAB_PASSWORD, timeout=5,
                       allow_agent=False, look_for_keys=False)
        return True
    except (paramiko.AuthenticationException, paramiko.SSHException):
        return False
    finally:
        client.close()


def test_home_reaches_cloud_through_nat(lab):
    h1 = next(h for h in lab.hosts() if h.name == "h1")
    listener = subprocess.Popen(
        ["ssh", "-F", str(lab.ssh_config), "h1", "timeout 10 nc -n -v -l -p 9000"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lab.ssh("h1", "for i in $(seq 50); do ss -ltn | grep -q ':9000 ' && exit 0; sleep 0.1; done; exit 1")
        lab.ssh("h2", f"echo hello | nc -w 2 -q 1 {h1.address} 9000")
        out, _ = listener.communicate(timeout=15)
    finally:
        listener.kill()
    # The cloud sees the home host as the NAT address (this machine's address on the cloud bridge).
    assert f"Connection received on {lab.gateway('cloud')}" in out, out
    assert "hello" in out


def test_home_hosts_reach_each_other_on_their_lan(lab):
    """A home LAN: its hosts talk to each other directly (tailscale then finds direct paths between them)."""
    h2 = next(h for h in lab.hosts() if h.name == "h2")
    assert lab.ssh("h3", f"nc -z -w 2 {h2.address} 22", check=False).returncode == 0


def test_cloud_cannot_open_connections_into_home(lab):
    home = [h for h in lab.hosts() if h.site == "home"]
    assert len(home) == 3
    for host in home:
        ssh_open = lab.ssh("h1", f"nc -z -w 2 {host.address} 22", check=False)
        assert ssh_open.returncode != 0, f"h1 reached {host.name}:22"
        ping = lab.ssh("h1", f"ping -c 1 -W 1 {host.address}", check=False)
        assert ping.returncode != 0, f"h1 pinged {host.name}"
        # ...while this machine (the owner's laptop on the home LAN) can.
        assert lab.ssh(host.name, "true").returncode == 0


def test_both_sites_reach_debian_mirror_only_through_the_gateway(lab):
    for name in ("h1", "h2"):
        out = lab.ssh(name, "apt-get update -q 2>&1 | tail -n 1", timeout=180).stdout
        assert "Reading package lists" in out, (name, out)


def test_lab_traffic_stays_on_this_machine(lab):
    """Nothing leaves the lab's bridges but home -> cloud: not a mirror's address directly, not this machine's
    resolver; the gateway proxies only to the mirrors in this machine's apt sources."""
    mirror = sorted(apt_mirror_hosts())[0]
    mirror_ip = socket.getaddrinfo(mirror, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    outside = [mirror_ip, *(ns for ns in _resolvers() if not ipaddress.ip_address(ns).is_loopback)]
    gateway = f"{lab.gateway('cloud')} {lab.config.artifact_port}"
    for name in ("h1", "h2"):
        for address in outside:
            for port in (80, 53):
                reached = lab.ssh(name, f"nc -z -w 2 {address} {port}", check=False)
                assert reached.returncode != 0, f"{name} reached {address}:{port} beyond this machine"
        refused = lab.ssh(name, f"printf 'GET http://example.org/ HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {gateway}").stdout
        assert refused.split()[:2] == ["HTTP/1.1", "403"], refused
        proxied = lab.ssh(name, f"printf 'HEAD http://{mirror}/ HTTP/1.0\\r\\n\\r\\n' | nc -w 10 {gateway}").stdout
        assert proxied.startswith("HTTP/1.") and proxied.split()[1] not in ("403", "502"), proxied  # the mirror's own


def _resolvers() -> list[str]:
    lines = open("/etc/resolv.conf").read().splitlines()
    return [ln.split()[1] for ln in lines if ln.startswith("nameserver") and len(ln.split()) > 1]


def test_password_login_possible_before_deploy(lab):
    """The fresh lab image accepts passwords (like the seed's old cluster), so the next tests mean something."""
    for host in lab.hosts():
        assert "password" in _auth_methods(host.address), host.name
    assert _password_login(lab.hosts()[0].address)


def test_a_dry_run_on_fresh_hosts_plans_every_change_and_makes_none(lab, lab_env):
    """``--dry`` on the fresh lab: pyinfra works out every operation's commands (change detection, without ``-y``)
    on hosts where nothing is installed yet, and changes nothing."""
    proc = subprocess.run([str(Path(sys.executable).with_name("pyinfra")), "inventories/lab.py", "deploy.py", "--dry"],
                          cwd=REPO, env=lab_env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "Detected changes" in output and "Base host | Harden sshd" in output, output[-4000:]
    assert "Error" not in output, output[-4000:]
    for host in lab.hosts():
        assert "password" in _auth_methods(host.address), host.name  # sshd untouched
        assert lab.ssh(host.name, "test ! -e /usr/local/bin/k3s && ! command -v tailscale", check=False).returncode == 0


def test_deploy_converges_then_changes_nothing(pyinfra):
    first = pyinfra()
    assert first.returncode == 0, first.stderr[-4000:]
    assert first.results["totals"]["error"] == 0
    assert first.changed(), "the first run on fresh hosts changed nothing"
    assert {"Base host | Harden sshd", "Base host | Install base packages"} <= set(first.changed())

    second = pyinfra()
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.results["totals"]["error"] == 0
    assert second.changed() == {}, f"second run changed: {second.changed()}"
    assert second.results["totals"]["no_change"] == first.results["totals"]["hosts"]


def test_password_login_refused_after_deploy(lab):
    for host in lab.hosts():
        assert _auth_methods(host.address) == ["publickey"], host.name
        assert not _password_login(host.address), host.name


def test_bad_data_stops_before_any_operation(pyinfra):
    run = pyinfra("--data", "ssh_permit_root_login=maybe")
    output = run.stdout + run.stderr
    assert run.returncode != 0
    assert "ssh_permit_root_login" in output and "prohibit-password" in output, output[-3000:]
    assert "Starting operation" not in output


def test_infra_suite_passes_against_lab(lab_env):
    """The testinfra suite users run against their live hosts, run against the deployed lab."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/infra",
         "--inventory", "inventories/lab.py"],
        cwd=REPO, env={**lab_env, "PYTHONDONTWRITEBYTECODE": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]
    print(proc.stdout.splitlines()[-1])
