"""Lab tier: the public path for real, entrance → tailnet → Traefik → the app's pod.

This machine plays the internet and connects to the entrance's cloud address. The entrance's nginx forwards by SNI
with the PROXY protocol to every k3s node's tailnet address; Traefik (the lab's build of Traefik 3.6.13, run as k3s
runs it, configured by the deploy's HelmChartConfig) takes the PROXY header from the entrance only, terminates TLS
and routes by the Ingress to the ``blog`` app's nginx pod. The certificate is the lab CA's (see tests/lab/public.py).
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import json
import resource
import runpy
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO
from .public import (
    BACKENDS,
    PRIVATE,
    PUBLIC,
    app_clients,
    entrance,
    hostport_connections,
    kubectl_json,
    second_address,
    served,
    tls,
)

TAILNET = ipaddress.ip_network("100.64.0.0/10")


def _tailnet_ip(lab, name: str) -> str:
    return lab.ssh(name, "tailscale ip -4").stdout.strip()


def test_public_name_passes_through_with_the_clusters_certificate_and_the_real_client(lab, served_apps):
    cert, body = tls(lab, served_apps, PUBLIC)
    issuer = dict(x[0] for x in cert["issuer"])
    assert issuer["commonName"] == "portable-k3s lab CA", cert  # TLS terminated on the cluster, not the entrance
    assert served(body), body
    # The app saw this machine as the client, as the entrance saw it: Traefik trusted the entrance's PROXY header.
    assert app_clients(lab)[-1] == lab.gateway("cloud"), app_clients(lab)[-3:]


@pytest.mark.parametrize("sni", [PRIVATE, "nope.example.org", None], ids=["private", "unknown", "no-sni"])
def test_other_names_are_closed_without_reaching_the_cluster(lab, served_apps, sni):
    before = hostport_connections(lab)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls(lab, served_apps, sni)
    time.sleep(0.5)
    assert hostport_connections(lab) == before


def test_names_match_without_regard_to_case_and_a_trailing_dot_is_closed(lab, served_apps):
    """DNS names are case-insensitive, so an upper-case SNI reaches the app; RFC 6066 says SNI carries the name
    without a trailing dot (browsers and curl strip it before sending), so a name with one is closed at the
    entrance like an unknown name."""
    _, body = tls(lab, served_apps, PUBLIC.upper())
    assert served(body), body[:300]
    before = hostport_connections(lab)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls(lab, served_apps, PUBLIC + ".")
    time.sleep(0.5)
    assert hostport_connections(lab) == before


def test_a_proxy_header_from_another_tailnet_address_is_not_trusted(lab, served_apps):
    """Another tailnet node (h4) connects to a node's port 443 and sends a PROXY header claiming 6.6.6.6: Traefik
    takes PROXY headers only from the entrances' /32s, so it reads and drops this one (go-proxyproto's IGNORE
    policy) and the app sees the real peer, never the forged address. Safe: only an entrance can name the client."""
    target = _tailnet_ip(lab, "h3")
    client = _tailnet_ip(lab, "h4")
    # A local relay on h4 puts the forged header in front of curl's TLS connection (no PROXY-capable client there).
    answer = lab.ssh("h4", (
        "rm -f /tmp/forged; mkfifo /tmp/forged; "
        "(nc -l 127.0.0.1 9443 < /tmp/forged | "
        f"{{ printf 'PROXY TCP4 6.6.6.6 {target} 40000 443\\r\\n'; cat; }} | nc -q 5 {target} 443 > /tmp/forged) & "
        f"sleep 0.5; curl -sk --max-time 10 --resolve {PUBLIC}:9443:127.0.0.1 https://{PUBLIC}:9443/ "
        "-o /dev/null -w '%{http_code}'; rm -f /tmp/forged"
    )).stdout
    assert answer == "200", answer
    assert app_clients(lab)[-1] == client, app_clients(lab)[-3:]


def test_port_80_forwards_acme_challenges_of_public_names_only(lab, served_apps):
    conn = http.client.HTTPConnection(entrance(lab), 80, timeout=10)
    conn.request("GET", "/.well-known/acme-challenge/token123", headers={"Host": PUBLIC})
    response = conn.getresponse()
    response.read()
    # Traefik answered (its web entry point redirects to https, path kept): the challenge reached the cluster.
    assert response.status in (301, 308), response.status
    assert response.getheader("Location") == f"https://{PUBLIC}/.well-known/acme-challenge/token123"
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


@pytest.fixture
def tcp_echo(lab, served_apps):
    """The catalog's raw TCP app (minecraft, tcp_port 25565, no PROXY protocol) with a busybox TCP server in its
    Deployment: minecraft's image cannot be pulled here. Its Service, Traefik's tcp25565 entry point and
    IngressRouteTCP are the deploy's. The deploy's own Deployment comes back afterwards."""
    patch = json.dumps([
        {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": "busybox:portable-k3s-lab"},
        {"op": "add", "path": "/spec/template/spec/containers/0/command",
         "value": ["nc", "-ll", "-p", "25565", "-e", "echo", "echo from the minecraft pod"]},
        {"op": "replace", "path": "/spec/template/spec/containers/0/resources",
         "value": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "16Mi"}}},
    ])
    lab.ssh("h2", f"k3s kubectl -n app-minecraft patch deploy minecraft --type=json -p '{patch}'")
    lab.ssh("h2", "k3s kubectl -n app-minecraft rollout status deploy/minecraft --timeout=120s", timeout=180)
    yield
    lab.ssh("h2", "k3s kubectl delete addon -n kube-system portable-k3s-app-minecraft", check=False)


def test_tcp_app_port_reaches_its_backend(lab, tcp_echo):
    deadline = time.monotonic() + 60
    data = ""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((entrance(lab), 25565), timeout=10) as s:
                data = s.recv(200).decode()
        except OSError:
            data = ""
        if data:
            break
        time.sleep(2)
    assert data == "echo from the minecraft pod\n", data


def test_one_backend_down_requests_still_succeed(lab, served_apps):
    """h2's port 443 drops everything from the tailnet (a node gone, as the entrance sees it): the entrance skips
    it and every request is still served."""
    rule = "-i tailscale0 -p tcp --dport 443 -j DROP"
    lab.ssh("h2", f"iptables -w -t mangle -I PREROUTING {rule}")
    try:
        for _ in range(6):
            _, body = tls(lab, served_apps, PUBLIC)
            assert served(body), body
    finally:
        lab.ssh("h2", f"iptables -w -t mangle -D PREROUTING {rule}")


def test_entrance_uses_tailnet_addresses_and_holds_no_app_key(lab, served_apps):
    config = lab.ssh("h1", "nginx -T 2>/dev/null").stdout
    servers = [line.split()[1] for line in config.splitlines() if line.strip().startswith("server ") and ":" in line]
    addresses = {s.rsplit(":", 1)[0] for s in servers if not s.startswith("unix:")}
    assert addresses == {_tailnet_ip(lab, n) for n in BACKENDS}
    assert all(ipaddress.ip_address(a) in TAILNET for a in addresses)
    secret = kubectl_json(lab, "get secret -n app-blog blog-tls")["data"]
    for field in ("tls.key", "tls.crt"):
        pem = base64.b64decode(secret[field]).decode()
        needle = pem.splitlines()[1]
        found = lab.ssh("h1", f"grep -rlF -- '{needle}' /etc /root /var /tmp /run 2>/dev/null", check=False).stdout
        assert found.strip() == "", found


def test_catalog_change_changes_only_the_entrance_and_reloads_once(lab, served_apps, lab_env, pyinfra):
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
        cert, body = tls(lab, served_apps, PRIVATE)
    finally:
        restored = pyinfra()  # the catalog as committed again
    assert restored.returncode == 0, restored.stderr[-3000:]
    assert run.returncode == 0, run.stderr[-3000:]
    # Through the entrance now, to Traefik and the app's certificate (its pod cannot pull its image here: 503).
    assert ("DNS", PRIVATE) in cert["subjectAltName"] and body.startswith("HTTP/1."), (cert, body[:200])
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


def test_broken_config_is_refused_and_the_old_one_keeps_serving(lab, served_apps, lab_env, tmp_path):
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
    _, body = tls(lab, served_apps, PUBLIC)
    assert served(body), body


def test_second_run_changes_nothing(pyinfra, served_apps):
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


def test_handshake_latency_through_the_entrance_and_direct(lab, served_apps):
    """Measured, not judged: TCP+TLS handshake to a public name through entrance + tailnet, and directly to a
    backend on the home LAN (with the PROXY header the entrance would send), in the same run."""
    backend = next(h.address for h in lab.hosts() if h.name == "h3")
    header = f"PROXY TCP4 {lab.gateway('home')} {backend} 40000 443\r\n".encode()
    via_entrance = [_handshake(entrance(lab), served_apps) for _ in range(15)]
    via_lan = [_handshake(backend, served_apps, header) for _ in range(15)]
    through, direct = sorted(t for t, _ in via_entrance), sorted(t for t, _ in via_lan)
    print(f"\nTLS handshake, median of 15: through entrance+tailnet {through[7] * 1000:.1f} ms, "
          f"direct to a backend {direct[7] * 1000:.1f} ms")
    # The very same certificate both ways: the entrance handed the client the backend's TLS, untouched.
    assert {cert for _, cert in via_entrance} == {cert for _, cert in via_lan} == {via_lan[0][1]}


def test_idle_connections_from_one_address_do_not_starve_other_visitors(lab, served_apps):
    """A scanner (this machine, from a second address on the cloud site) opens 3000 connections that send nothing:
    the entrance keeps at most entrance_connections_per_address of them (closing the rest at once), closes those
    after entrance_preread_timeout, no worker dies or runs out of files, and a visitor from another address (this
    machine's own) gets the public app all along."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    workers = lab.ssh("h1", "ps -o pid= --ppid $(cat /run/nginx.pid) | sort").stdout
    assert workers.split(), "no nginx worker on the entrance"
    lab.ssh("h1", "truncate -s 0 /var/log/nginx/error.log")
    held: list[socket.socket] = []
    with second_address(lab) as scanner:
        try:
            for _ in range(3000):
                try:
                    held.append(socket.create_connection((entrance(lab), 443), timeout=2, source_address=(scanner, 0)))
                except OSError:
                    pass
            time.sleep(1)
            open_now = sum(1 for s in held if _still_open(s))
            assert 0 < open_now <= 64, open_now  # entrance_connections_per_address's default
            started = time.monotonic()
            for _ in range(10):
                _, body = tls(lab, served_apps, PUBLIC)
                assert served(body), body
            print(f"\n3000 idle connections from one address: {open_now} kept open by the entrance; 10 visits from "
                  f"another address served in {time.monotonic() - started:.2f} s")
            time.sleep(5 + 2)  # entrance_preread_timeout's default, and a margin
            assert sum(1 for s in held if _still_open(s)) == 0
        finally:
            for s in held:
                s.close()
    log = lab.ssh("h1", "cat /var/log/nginx/error.log").stdout
    assert "Too many open files" not in log, log[-2000:]  # (refused connections are logged at warn: not kept)
    assert lab.ssh("h1", "ps -o pid= --ppid $(cat /run/nginx.pid) | sort").stdout == workers  # no worker died


def _still_open(sock: socket.socket) -> bool:
    """The peer has not closed it (a read would block rather than return EOF or an error)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
