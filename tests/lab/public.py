"""The lab's public path, shared by the lab tests: the app names, and a TLS client that plays the internet.

The path is real: the entrance's nginx, the tailnet, Traefik on every k3s node (the lab's Traefik image, configured
by the deploy's HelmChartConfig) and the ``blog`` app's nginx pod, whose first page ``portable_k3s.lab.apps`` put
into its volume. Only the certificate is the lab's: cert-manager does not run in the lab, so the app's Secret holds
a certificate from the lab's CA (the CERTIFICATE STAND-IN of ``portable_k3s/lab/apps.py``).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PUBLIC = "blog.example.org"  # the catalog's hugo blog: nginx serving its volume
PUBLIC_APP = "blog"
PRIVATE = "pass.example.org"
BACKENDS = ("h2", "h3", "h4")  # the k3s nodes, each running Traefik with host ports 80 and 443


def entrance(lab) -> str:
    return next(h.address for h in lab.hosts() if "entrance" in h.groups)


def tls(lab, ca: Path, sni: str | None, request: bytes = b"GET / HTTP/1.0\r\n\r\n") -> tuple[dict, str]:
    context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    context.check_hostname = sni is not None
    if sni is None:
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((entrance(lab), 443), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            cert = tls.getpeercert() or {}
            tls.sendall(request.replace(b"HTTP/1.0\r\n", f"HTTP/1.0\r\nHost: {sni}\r\n".encode(), 1))
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    return cert, data.decode()


def served(body: str, hostname: str = PUBLIC) -> bool:
    """The app's own first page, with 200."""
    return body.startswith("HTTP/1.") and " 200 " in body.splitlines()[0] and f"<h1>{hostname}</h1>" in body


def app_clients(lab, app: str = PUBLIC_APP) -> list[str]:
    """The client addresses the app's nginx logged (X-Forwarded-For, as Traefik passes it on), oldest first."""
    log = lab.ssh("h2", f"k3s kubectl logs -n app-{app} deploy/{app} --tail=-1", timeout=60).stdout
    return [line.rsplit('"', 2)[-2] for line in log.splitlines() if line.count('"') >= 8 and '"GET ' in line]


def hostport_connections(lab, port: int = 443) -> int:
    """New connections the k3s nodes have forwarded to a pod's host port ``port`` (the CNI portmap DNAT rules'
    packet counters: the nat table sees each connection's first packet only)."""
    total = 0
    for name in BACKENDS:
        rules = lab.ssh(name, "iptables -w -t nat -S | grep -o '^-A CNI-DN-[^ ]*' | sort -u", check=False).stdout
        for chain in {line.split()[1] for line in rules.splitlines()}:
            listing = lab.ssh(name, f"iptables -w -t nat -L {chain} -v -x -n", check=False).stdout
            for line in listing.splitlines():
                words = line.split()
                if "DNAT" in words and f"dpt:{port}" in line:
                    total += int(words[0])
    return total


def kubectl_json(lab, args: str) -> dict:
    return json.loads(lab.ssh("h2", f"k3s kubectl {args} -o json", timeout=60).stdout)


def cli(lab_env: dict[str, str], *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``python -m portable_k3s ARGS`` from the repository, against the lab (``lab_env``)."""
    return subprocess.run([sys.executable, "-m", "portable_k3s", *args], cwd=REPO, env=lab_env, capture_output=True,
                          text=True, timeout=timeout)


def backup_now(lab, app: str, name: str) -> float:
    """Run the app's backup CronJob now (as the README says); the seconds it took."""
    started = time.monotonic()
    lab.ssh("h2", f"k3s kubectl -n app-{app} create job --from=cronjob/backup {name}")
    waited = lab.ssh("h2", f"k3s kubectl -n app-{app} wait --for=condition=complete --timeout=300s job/{name}",
                     check=False, timeout=330)
    logs = lab.ssh("h2", f"k3s kubectl -n app-{app} logs job/{name} --all-containers", check=False).stdout
    assert waited.returncode == 0, (waited.stderr, logs[-3000:])
    assert "snapshot " in logs and " saved" in logs, logs[-3000:]
    return time.monotonic() - started


@contextlib.contextmanager
def second_address(lab, offset: int = 8) -> Iterator[str]:
    """A second address of this machine on the cloud bridge, for the hostile clients; removed after."""
    address = str(ipaddress.ip_network(lab.config.cloud_subnet).network_address + offset)
    bridge = lab.config.cloud_bridge
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", bridge], check=True)
    try:
        yield address
    finally:
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", bridge], check=False)
