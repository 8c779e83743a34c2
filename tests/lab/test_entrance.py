"""Lab tier: the entrance with real nginx, real TLS and the real tailnet.

The cluster ingress does not exist in the lab, so each k3s-role host runs the INGRESS STAND-IN of
tests/lab/standin.py (nginx with ``listen 443 ssl proxy_protocol`` and a test CA's certificate, answering with the
SNI and the PROXY header's client address). This machine plays the internet and connects to the entrance's cloud
address.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import runpy
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .standin import BACKENDS, PRIVATE, PUBLIC, entrance, tls

TAILNET = ipaddress.ip_network("100.64.0.0/10")


def _standin_log_lines(lab) -> int:
    return sum(int(lab.ssh(n, "cat /var/log/nginx/standin.log 2>/dev/null | wc -l").stdout) for n in BACKENDS)


def _tailnet_ip(lab, name: str) -> str:
    return lab.ssh(name, "tailscale ip -4").stdout.strip()


def test_public_name_passes_through_with_the_clusters_certificate_and_the_real_client(lab, standins):
    cert, body = tls(lab, standins, PUBLIC)
    issuer = dict(x[0] for x in cert["issuer"])
    assert issuer["commonName"] == "portable-k3s lab test CA", cert  # TLS terminated on the cluster, not the entrance
    assert f"sni={PUBLIC}" in body
    assert f"client={lab.gateway('cloud')}" in body, body  # this machine as the entrance saw it, not the entrance
    assert f"client={_tailnet_ip(lab, 'h1')}" not in body


@pytest.mark.parametrize("sni", [PRIVATE, "nope.example.org", None], ids=["private", "unknown", "no-sni"])
def test_other_names_are_closed_without_reaching_the_cluster(lab, standins, sni):
    before = _standin_log_lines(lab)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls(lab, standins, sni)
    time.sleep(0.5)
    assert _standin_log_lines(lab) == before


def test_port_80_forwards_acme_challenges_of_public_names_only(lab, standins):
    conn = http.client.HTTPConnection(entrance(lab), 80, timeout=10)
    conn.request("GET", "/.well-known/acme-challenge/token123", headers={"Host": PUBLIC})
    response = conn.getresponse()
    body = response.read().decode()
    assert response.status == 200 and f"acme host={PUBLIC}" in body, body
    assert f"xff={lab.gateway('cloud')}" in body
    conn.close()
    conn = http.client.HTTPConnection(entrance(lab), 80, timeout=10)
    conn.request("GET", "/", headers={"Host": PUBLIC})
    response = conn.getresponse()
    assert response.status == 301 and response.getheader("Location") == f"https://{PUBLIC}/"
    conn.close()
    for host in (PRIVATE, "nope.example.org"):
        conn = http.client.HTTPConnection(entrance(lab), 80, timeout=10)
        conn.request("GET", "/.well-known/acme-challenge/token123", headers={"Host": host})
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
        conn.close()


def test_tcp_app_port_reaches_its_backend(lab, standins):
    with socket.create_connection((entrance(lab), 25565), timeout=10) as s:
        data = s.recv(200).decode()
    assert data.startswith("standin=h") and " tcp from=100." in data, data


def test_one_backend_down_requests_still_succeed(lab, standins):
    lab.ssh("h2", "systemctl stop nginx")
    try:
        for _ in range(6):
            _, body = tls(lab, standins, PUBLIC)
            assert f"sni={PUBLIC}" in body and "standin=h2" not in body
    finally:
        lab.ssh("h2", "systemctl start nginx")


def test_entrance_uses_tailnet_addresses_and_holds_no_app_key(lab, standins):
    config = lab.ssh("h1", "nginx -T 2>/dev/null").stdout
    servers = [line.split()[1] for line in config.splitlines() if line.strip().startswith("server ") and ":" in line]
    addresses = {s.rsplit(":", 1)[0] for s in servers if not s.startswith("unix:")}
    assert addresses == {_tailnet_ip(lab, n) for n in BACKENDS}
    assert all(ipaddress.ip_address(a) in TAILNET for a in addresses)
    key_line = (standins / "key.pem").read_text().splitlines()[1]
    cert_line = (standins / "cert.pem").read_text().splitlines()[1]
    for needle in (key_line, cert_line):
        found = lab.ssh("h1", f"grep -rlF -- '{needle}' /etc /root /var /tmp /run 2>/dev/null", check=False).stdout
        assert found.strip() == "", found
    # ...and the backends saw the entrance's tailnet address as the peer.
    log = "".join(lab.ssh(n, "cat /var/log/nginx/standin.log").stdout for n in BACKENDS)
    peers = {line.split()[0] for line in log.splitlines() if line}
    assert peers and peers <= {_tailnet_ip(lab, "h1")}, peers


def test_catalog_change_changes_only_the_entrance_and_reloads_once(lab, standins, lab_env, pyinfra):
    apps = runpy.run_path(str(REPO / "group_data" / "all.py"))["apps"]
    flipped = [{**a, "public": True} if a.get("hostname") == PRIVATE else a for a in apps]
    extra = {h.name: {"apps": flipped} for h in lab.hosts()}
    env = {**lab_env, "PORTABLE_K3S_TEST_HOST_DATA": json.dumps(extra)}
    reloads = lambda: lab.ssh("h1", "journalctl -u nginx --no-pager -o cat | grep -c 'Reloaded'", check=False)  # noqa: E731
    before = int(reloads().stdout.strip() or 0)
    try:
        run = subprocess.run(
            [str(Path(sys.executable).with_name("pyinfra")), "tests/lab/node_baseline_inventory.py", "deploy.py",
             "-y", "--json"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
        )
        _, body = tls(lab, standins, PRIVATE)
    finally:
        restored = pyinfra()  # the catalog as committed again
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"sni={PRIVATE}" in body
    results = json.loads(run.stdout)["results"]["operations"]
    changed = {op["name"]: op["success"] for op in results if op["success"]}
    assert changed.pop("Entrance | Entrance nginx config") == ["h1"]
    assert changed.pop("Entrance | Reload nginx after a config change") == ["h1"]
    # The name is public now: it is no longer a tailnet-only record, the app's manifest on the first server
    # takes a Let's Encrypt certificate instead of the cluster CA's, and the entrance's downtime alerts probe it
    # too. Nothing else changes.
    app = next(a["name"] for a in apps if a.get("hostname") == PRIVATE)
    allowed = {"MagicDNS records for private apps", f"Cluster add-ons | Manifest portable-k3s-app-{app}.yaml",
               "Downtime alerts | App probe script"}
    assert set(changed) <= allowed, changed
    assert int(reloads().stdout.strip() or 0) == before + 2  # once for the change, once for putting it back


def test_broken_config_is_refused_and_the_old_one_keeps_serving(lab, standins, lab_env, tmp_path):
    """A deploy whose entrance config nginx rejects (injected here) fails, and the entrance keeps serving."""
    before = lab.ssh("h1", "sha256sum /etc/nginx/nginx.conf").stdout.split()[0]
    deploy = tmp_path / "broken_entrance.py"
    deploy.write_text(
        "from pyinfra import host, inventory\n"
        "from portable_k3s.operations import nginx\n"
        "if 'entrance' in host.groups:\n"
        "    nginx.entrance_config(name='Broken entrance config', backends=[], address='100.64.0.9',\n"
        "                          render_config=lambda addresses: 'events {}\\nthis is not nginx;\\n')\n"
    )
    run = subprocess.run(
        [str(Path(sys.executable).with_name("pyinfra")), "inventories/lab.py", str(deploy), "-y"],
        cwd=REPO, env=lab_env, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode != 0
    assert "was refused by: nginx -t" in run.stdout + run.stderr, (run.stdout + run.stderr)[-3000:]
    assert lab.ssh("h1", "sha256sum /etc/nginx/nginx.conf").stdout.split()[0] == before
    _, body = tls(lab, standins, PUBLIC)
    assert f"sni={PUBLIC}" in body


def test_second_run_changes_nothing(pyinfra, standins):
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.changed() == {}, run.changed()


def _handshake(address: str, ca: Path, proxy_header: bytes = b"") -> tuple[float, bytes]:
    """Seconds for TCP connect + TLS handshake, and the certificate the server presented."""
    context = ssl.create_default_context(cafile=str(ca / "ca.pem"))
    started = time.perf_counter()
    with socket.create_connection((address, 443), timeout=10) as raw:
        if proxy_header:
            raw.sendall(proxy_header)
        with context.wrap_socket(raw, server_hostname=PUBLIC) as tls:
            return time.perf_counter() - started, tls.getpeercert(binary_form=True) or b""


def test_handshake_latency_through_the_entrance_and_direct(lab, standins):
    """Measured, not judged: TCP+TLS handshake to a public name through entrance + tailnet, and directly to a
    backend on the home LAN (with the PROXY header the entrance would send), in the same run."""
    backend = next(h.address for h in lab.hosts() if h.name == "h3")
    header = f"PROXY TCP4 {lab.gateway('home')} {backend} 40000 443\r\n".encode()
    via_entrance = [_handshake(entrance(lab), standins) for _ in range(15)]
    via_lan = [_handshake(backend, standins, header) for _ in range(15)]
    through, direct = sorted(t for t, _ in via_entrance), sorted(t for t, _ in via_lan)
    print(f"\nTLS handshake, median of 15: through entrance+tailnet {through[7] * 1000:.1f} ms, "
          f"direct to a backend {direct[7] * 1000:.1f} ms")
    # The very same certificate both ways: the entrance handed the client the backend's TLS, untouched.
    assert {cert for _, cert in via_entrance} == {cert for _, cert in via_lan} == {via_lan[0][1]}
