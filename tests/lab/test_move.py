"""Lab tier: moving house. The home site shuts down, comes back on a new LAN subnet behind a new NAT address (same
disks), and everything finds its way back by itself: no deploy is needed, and the next one has nothing to change.

Runs after every other lab test (it changes the lab's network). The public path is checked through the entrance,
the tailnet and Traefik to the blog app's pod (tests/lab/public.py).
"""

from __future__ import annotations

import ipaddress
import json
import time

import pytest

from .conftest import MOVED_HOME_PUBLIC_INDEX, MOVED_HOME_SUBNET
from .public import PUBLIC, served, tls
from .test_kubernetes import pod_to_pod, start_pods, stop_pods

HOME = ("h2", "h3", "h4")


@pytest.mark.moves_lab
def test_move_house_needs_no_deploy(lab, pyinfra, served_apps):
    lab.ssh("h3", "echo before-the-move > /root/marker")
    k3s_config = "sha256sum /etc/rancher/k3s/config.yaml"
    k3s_before = {n: lab.ssh(n, k3s_config).stdout for n in HOME}
    old = {h.name: h.address for h in lab.hosts()}
    old_public = lab.home_public_address()
    tls(lab, served_apps, PUBLIC)  # the public path answers before the move

    started = time.monotonic()
    lab.move_home(MOVED_HOME_SUBNET, MOVED_HOME_PUBLIC_INDEX, timeout=240)
    booted = time.monotonic() - started
    new = {h.name: h.address for h in lab.hosts()}
    assert new["h1"] == old["h1"]
    moved = ipaddress.ip_network(MOVED_HOME_SUBNET)
    assert all(ipaddress.ip_address(new[n]) in moved for n in HOME), new
    assert lab.home_public_address() != old_public
    assert lab.ssh("h3", "cat /root/marker").stdout.strip() == "before-the-move"

    # Without any deploy: the public path through the entrance and the tailnet answers again.
    body, error = "", None
    while time.monotonic() - started < 240:
        try:
            _, body = tls(lab, served_apps, PUBLIC)
            if served(body):
                break
        except OSError as exc:  # ssl.SSLError and connection errors while the tailnet path comes back
            error = exc
        time.sleep(0.5)
    answered = time.monotonic() - started
    assert served(body), f"the public path did not answer after the move: {error}\n{body[:300]}\n" + \
        _tailnet_diagnostics(lab, "h2")
    print(f"\nmove house: home site down and booted on {MOVED_HOME_SUBNET} in {booted:.1f} s; the public app "
          f"answered through the entrance {answered:.1f} s after the home site went down")

    # Every home node is back in the tailnet; traffic flows between the cloud and each home node both ways.
    ips = {n["given_name"]: next(a for a in n["ip_addresses"] if ":" not in a)
           for n in json.loads(lab.ssh("h1", "headscale nodes list -o json").stdout)}
    for a, b in [pair for name in HOME for pair in ((name, "h1"), ("h1", name))]:
        pinged = lab.ssh(a, f"for i in $(seq 20); do tailscale ping -c 1 --timeout 3s {ips[b]} && exit 0; "
                            "sleep 1; done; exit 1", check=False)
        assert pinged.returncode == 0, f"{a} -> {b}: {pinged.stdout[-500:]}\n" + _tailnet_diagnostics(lab, a)
    # The cloud now sees the home nodes behind the new NAT address (the move really changed their public face).
    seen = lab.ssh("h1", f"for i in $(seq 60); do tailscale status --json | grep -q '\"{lab.home_public_address()}:'"
                         " && exit 0; sleep 0.5; done; exit 1", check=False)
    assert seen.returncode == 0, _tailnet_diagnostics(lab, "h1")

    # k3s kept its configuration (it binds to tailnet addresses) and the agents rejoined their server.
    assert {n: lab.ssh(n, k3s_config).stdout for n in HOME} == k3s_before
    ready = lab.ssh("h2", "for i in $(seq 360); do [ $(k3s kubectl get nodes | grep -c ' Ready ') = 3 ] && exit 0; "
                          "sleep 0.5; done; k3s kubectl get nodes; exit 1", timeout=240)
    assert ready.returncode == 0
    print(f"move house: every k3s node Ready in the real API {time.monotonic() - started:.1f} s after the home site "
          "went down")
    # Pods on two home nodes talk across the tailnet again, by pod IP and through a Service.
    try:
        pods = start_pods(lab)
        assert pod_to_pod(lab, pods).strip() == "hello-from-h3"
    finally:
        stop_pods(lab)
    again = pyinfra()
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}, f"changed after the move: {again.changed()}"


def _tailnet_diagnostics(lab, name: str) -> str:
    """What a node that is not back in the tailnet sees, and the state of headscale (and its DERP) on h1."""
    node = lab.ssh(name, "tailscale status; tailscale netcheck 2>&1 | tail -n 8; "
                         "journalctl -u tailscaled --no-pager -n 40 -o short-monotonic", check=False)
    server = lab.ssh("h1", "systemctl is-active headscale; ss -lntup | grep -E ':(8080|3478|80|443) '; "
                           "journalctl -u headscale --no-pager -n 30 -o short-monotonic", check=False)
    return f"--- {name}\n{node.stdout}{node.stderr}\n--- h1 (headscale)\n{server.stdout}{server.stderr}"
