"""Lab tier: downtime alerts from the entrance to ntfy.

NTFY STAND-IN: the real ntfy server cannot be built here (the Go module proxy refuses heckel.io/ntfy/v2), so an
HTTP receiver in this test process, on the cloud gateway where the lab inventory's ``alerts_ntfy_url`` points,
records each POST the way ntfy would receive it (topic path, Title/Tags/Authorization headers, body). The probes
reach the apps through the entrance, the tailnet and Traefik on the nodes (tests/lab/public.py). The lab's timer
waits a day (``alerts_interval``), so probes run when these tests start the probe service, never in the middle of
another test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from portable_k3s.lab.inventory import lab_ntfy_port

from .public import BACKENDS, PUBLIC

PROBE = "systemctl start portable-k3s-app-probe.service"


class NtfyStandin(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int]) -> None:
        self.received: list[dict] = []
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: NtfyStandin

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        self.server.received.append({"path": self.path, "body": body, **{
            k: self.headers.get(k) for k in ("Title", "Tags", "Authorization")}})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"event":"message"}\n')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def ntfy(lab) -> Iterator[NtfyStandin]:
    server = NtfyStandin((lab.gateway("cloud"), lab_ntfy_port(lab.config)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# Every node's port 443 refuses new connections from the tailnet, as when Traefik is down: the host port's DNAT is
# skipped, and nothing on the node itself listens there.
INGRESS_DOWN = "PREROUTING -i tailscale0 -p tcp --dport 443 -j RETURN"


def _ingress(lab, verb: str) -> None:
    for name in BACKENDS:
        if verb == "stop":
            lab.ssh(name, f"iptables -w -t nat -I {INGRESS_DOWN}")
        else:
            lab.ssh(name, f"while iptables -w -t nat -D {INGRESS_DOWN} 2>/dev/null; do :; done")


def _baseline(lab, ntfy: NtfyStandin) -> set[str]:
    """Probe once, so that the apps that are down anyway are reported and remembered: most of the catalog's images
    cannot be pulled in the lab (Traefik answers 503 for them). Returns those apps' names."""
    lab.ssh("h1", PROBE)
    down = {name for m in ntfy.received if m["body"].startswith("down:") for name in m["body"].split()[1:]}
    ntfy.received.clear()
    assert PUBLIC not in down, down
    return down


def _probe_until(lab, ntfy: NtfyStandin, count: int, within: float = 40) -> None:
    """Probe until ``count`` messages arrived: after every backend failed, the entrance's nginx skips them for
    ``entrance_fail_timeout`` (passive health check), so the apps come back a few seconds after the ingress does."""
    deadline = time.monotonic() + within
    while len(ntfy.received) < count and time.monotonic() < deadline:
        lab.ssh("h1", PROBE)
        time.sleep(1)


def _token(lab) -> str:
    return (lab.state_dir / "ntfy-token").read_text().strip()


def test_the_probe_timer_runs_and_holds_the_token_as_a_credential(lab, served_apps):
    assert lab.ssh("h1", "systemctl is-active portable-k3s-app-probe.timer").stdout.strip() == "active"
    assert lab.ssh("h1", "stat -c %a /etc/portable-k3s/ntfy-auth").stdout.strip() == "600"
    unit = lab.ssh("h1", "systemctl cat portable-k3s-app-probe.service; systemctl show -p ExecStart "
                         "portable-k3s-app-probe.service; cat /usr/local/lib/portable-k3s/app-probe").stdout
    assert "LoadCredential=ntfy-auth:/etc/portable-k3s/ntfy-auth" in unit
    assert _token(lab) not in unit


def test_exactly_one_down_then_one_up_message(lab, served_apps, ntfy):
    always_down = _baseline(lab, ntfy)
    lab.ssh("h1", PROBE)
    assert ntfy.received == []  # nothing changed since: nothing to say
    _ingress(lab, "stop")
    try:
        lab.ssh("h1", PROBE)
        lab.ssh("h1", PROBE)
    finally:
        _ingress(lab, "start")
    assert len(ntfy.received) == 1, ntfy.received
    down = ntfy.received[0]
    assert down["path"] == "/lab-alerts" and down["body"].startswith("down: ") and PUBLIC in down["body"].split()
    assert not always_down & set(down["body"].split()[1:]), down  # said once, not again
    assert down["Authorization"] == f"Bearer {_token(lab)}" and down["Tags"] == "rotating_light"
    _probe_until(lab, ntfy, 2)
    lab.ssh("h1", PROBE)
    assert len(ntfy.received) == 2, ntfy.received
    up = ntfy.received[1]
    assert up["body"].startswith("back up: ") and set(up["body"].split()[2:]) == set(down["body"].split()[1:])


def test_an_alert_ntfy_did_not_get_is_sent_at_the_next_probe(lab, served_apps, ntfy):
    _baseline(lab, ntfy)
    ntfy.shutdown()  # ntfy unreachable while the apps go down
    ntfy.server_close()
    _ingress(lab, "stop")
    try:
        failed = lab.ssh("h1", PROBE, check=False)
        assert failed.returncode != 0  # the run fails (and says so in its journal) instead of forgetting
        assert "could not reach ntfy" in lab.ssh("h1", "journalctl -u portable-k3s-app-probe -n 5").stdout
        again = NtfyStandin((lab.gateway("cloud"), lab_ntfy_port(lab.config)))
        threading.Thread(target=again.serve_forever, daemon=True).start()
        try:
            lab.ssh("h1", PROBE)
            lab.ssh("h1", PROBE)
            assert [m["body"].split(":")[0] for m in again.received] == ["down"]
        finally:
            _ingress(lab, "start")
            _probe_until(lab, again, 2)
            again.shutdown()
            again.server_close()
        assert [m["body"].split(":")[0] for m in again.received] == ["down", "back up"]
    finally:
        _ingress(lab, "start")


def test_the_token_is_never_printed(lab, pyinfra, served_apps):
    lab.ssh("h1", "rm /etc/portable-k3s/ntfy-auth")  # so the deploy writes it again
    run = pyinfra("-vvv", "--diff")
    assert run.returncode == 0, run.stderr[-3000:]
    assert _token(lab) not in run.stdout + run.stderr
    assert "ntfy token" in run.stdout + run.stderr  # the -vvv output is really there
    assert lab.ssh("h1", "stat -c %a /etc/portable-k3s/ntfy-auth").stdout.strip() == "600"
    assert pyinfra().changed() == {}
