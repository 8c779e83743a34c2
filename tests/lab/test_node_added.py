"""Lab tier: adding a node in one command. A fresh machine appears at home (h5); `pyinfra inventories/lab.py
deploy.py --limit h5` makes it a tailnet node and k3s agent with a fresh single-use key, and points the entrance at
it; nothing else changes. Runs last (it grows the lab)."""

from __future__ import annotations

import json
import time

import pytest

from .public import PUBLIC, served, tls


@pytest.mark.moves_lab
def test_a_new_node_joins_with_one_limited_run(lab, pyinfra, served_apps):
    lab.up(len(lab.hosts()) + 1, timeout=120)
    new = lab.hosts()[-1].name
    assert "k3s_agents" in lab.hosts()[-1].groups
    run = pyinfra("--limit", new)
    assert run.returncode == 0, run.stderr[-4000:]
    changed = run.changed()
    assert changed and all(hosts == [new] for hosts in changed.values()), changed
    assert changed.pop("Point the entrance h1 at this node too") == [new]  # the one change outside the new node

    ipv4 = lab.ssh(new, "tailscale ip -4").stdout.strip()
    assert f"server {ipv4}:443" in lab.ssh("h1", "nginx -T 2>/dev/null").stdout
    keys = json.loads(lab.ssh("h1", "headscale preauthkeys list -o json").stdout or "[]")
    newest = max(keys, key=lambda k: int(k["id"]))
    assert newest["used"] and not newest.get("reusable"), newest  # a fresh single-use key, used by the new node
    server = next(h.name for h in lab.hosts() if "k3s_servers" in h.groups)
    lab.ssh(server, f"for i in $(seq 60); do k3s kubectl get nodes | grep -q '^{new} .* Ready ' && exit 0; sleep 0.5; "
                  "done; k3s kubectl get nodes; exit 1")
    # Traefik's DaemonSet comes to the new node (its image from the airgap bundle): the entrance's new upstream
    # serves as the others do (each request goes to the next node).
    lab.ssh(server, "for i in $(seq 120); do k3s kubectl -n kube-system get pods -l app.kubernetes.io/name=traefik "
                  f"-o wide --no-headers | grep -q ' Running .* {new} ' && exit 0; sleep 1; done; exit 1", timeout=180)
    time.sleep(3)  # readiness
    for _ in range(len(lab.hosts())):
        _, body = tls(lab, served_apps, PUBLIC)
        assert served(body), body

    again = pyinfra()  # the whole inventory now: everything already is as it should be
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}, again.changed()
