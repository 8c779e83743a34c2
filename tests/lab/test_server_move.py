"""Lab tier: moving the k3s server to another machine (the seed's master became unstable), with the lab's K3S
STAND-IN around real Kubernetes and etcd: `k3s etcd-snapshot save` takes a real etcd snapshot, `k3s server
--cluster-reset --cluster-reset-restore-path` restores it (etcd's own restore; the cluster's CAs come back from the
snapshot's bootstrap data, opened with the token, as in k3s), and objects made before the move are there after it.

The owner takes the old server out of k3s_servers (into a group of its own), lists the new machine first in
k3s_servers with `k3s_move_from` naming the old one, and runs the deploy once: snapshot on the old server, copy,
restore on the new one before its first start, every agent and the entrance pointed at it, k3s taken off the old
one. The public app's data, backed up before the move, comes back after it into a new volume (its local-path volume
may have been on the old server). Runs last: it moves the server every other lab test talks to."""

from __future__ import annotations

import json
import time

import pytest

from .public import PUBLIC, PUBLIC_APP, backup_now, cli, served, tls


def _nodes(lab, server: str) -> dict[str, dict]:
    items = json.loads(lab.ssh(server, "k3s kubectl get nodes -o json").stdout)["items"]
    return {item["metadata"]["name"]: item for item in items}


def _ready(node: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


def _started(lab, name: str, unit: str) -> int:
    """When ``unit`` last became active on ``name``, in µs of the kernel's monotonic clock (the lab's hosts share
    the kernel, so it compares across hosts; ``--timestamp=unix`` has whole seconds only), 0 if it is not active."""
    out = lab.ssh(name, f"systemctl show -p ActiveState -p ActiveEnterTimestampMonotonic {unit}").stdout
    fields = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if fields.get("ActiveState") != "active":
        return 0
    return int(fields["ActiveEnterTimestampMonotonic"])


@pytest.mark.moves_lab
def test_the_k3s_server_moves_to_a_new_machine_in_one_run(lab, lab_env, pyinfra, served_apps):
    lab.up(len(lab.hosts()) + 1, timeout=120)
    new = lab.hosts()[-1].name
    old = next(h.name for h in lab.hosts() if "k3s_servers" in h.groups)
    agents = [h.name for h in lab.hosts() if "k3s_agents" in h.groups and h.name != new]
    before = _nodes(lab, old)
    assert set(agents) <= set(before)
    # The public app's volume is a local-path one: on the node its pod first ran on, and lost with that node.
    claim = json.loads(lab.ssh(old, f"k3s kubectl -n app-{PUBLIC_APP} get pvc {PUBLIC_APP} -o json").stdout)
    volume = json.loads(lab.ssh(old, f"k3s kubectl get pv {claim['spec']['volumeName']} -o json").stdout)
    volume_node = volume["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0]
    backup_now(lab, PUBLIC_APP, "backup-before-the-move")  # the app's data off-site (the lab's S3 on h1)
    lab.ssh(old, f"k3s kubectl cordon {agents[0]}")  # cluster state that only the snapshot can carry over
    lab.ssh(old, "k3s kubectl -n default create configmap made-before-the-move --from-literal=marker=moved")
    token = lab.ssh(old, "cat /var/lib/rancher/k3s/server/token").stdout
    agent_tokens = {a: lab.ssh(a, "sha256sum /etc/rancher/k3s/token").stdout.split()[0] for a in agents}

    lab.assign(old, ["retired"])
    lab.assign(new, ["k3s_servers"], {"k3s_move_from": old})
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-4000:]
    changed = {name.rsplit(" | ", 1)[-1]: hosts for name, hosts in run.changed().items()}  # without the deploy
    order = [op["name"].rsplit(" | ", 1)[-1] for op in run.results["operations"] if op["success"]]
    steps = [f"Server: take over the cluster of {old}", f"Server: restore {old}'s snapshot before the first start",
             "Server: restart after a config, token or unit change", "Agent config",
             "Agent: restart after a config, token or unit change",
             f"Retire the old k3s server (its cluster moved to {new})"]
    assert [order.index(step) for step in steps] == sorted(order.index(step) for step in steps), order
    assert changed[steps[0]] == [new] and changed[steps[1]] == [new] and changed[steps[5]] == [old]
    assert sorted(changed["Agent config"]) == sorted(agents)
    assert "Agent cluster token" not in changed  # the restored cluster has the old CA and token

    # Files: the snapshot the old server saved is the one restored; the cluster token came with it.
    saved = lab.ssh(old, "grep ' save ' /var/lib/rancher/k3s/standin/snapshots.log | tail -n 1").stdout.split()
    restored = lab.ssh(new, "grep ' restore ' /var/lib/rancher/k3s/standin/snapshots.log | tail -n 1").stdout.split()
    assert lab.ssh(old, f"sha256sum {saved[2]}").stdout.split()[0] == \
        lab.ssh(new, f"sha256sum {restored[2]}").stdout.split()[0]
    assert lab.ssh(new, f"stat -c %a {restored[2]} /etc/rancher/k3s/token").stdout.split() == ["600", "600"]
    assert lab.ssh(new, "cat /var/lib/rancher/k3s/server/token").stdout == token
    assert {a: lab.ssh(a, "sha256sum /etc/rancher/k3s/token").stdout.split()[0] for a in agents} == agent_tokens
    # Order on the hosts themselves: restored before the new server started, agents restarted after it.
    server_start = _started(lab, new, "k3s.service")
    assert server_start > 0
    assert all(_started(lab, a, "k3s-agent.service") > server_start for a in agents)

    new_ip = lab.ssh(new, "tailscale ip -4").stdout.strip()
    for agent in agents:
        config = lab.ssh(agent, "cat /etc/rancher/k3s/config.yaml").stdout
        assert f"server: https://{new_ip}:6443" in config, config
    lab.ssh(new, "for i in $(seq 60); do k3s kubectl get nodes | grep -q ' Ready ' && exit 0; sleep 0.5; done; exit 1")
    after = _nodes(lab, new)
    assert old not in after and new in after and set(agents) <= set(after)  # the old node is deleted
    assert after[agents[0]]["spec"].get("unschedulable") is True  # the cordon came through the snapshot
    marker = lab.ssh(new, "k3s kubectl -n default get configmap made-before-the-move -o jsonpath={.data.marker}")
    assert marker.stdout == "moved"
    # The agents' kubelets kept their credentials: the restored cluster has the same CAs.
    deadline = time.monotonic() + 180
    while not all(_ready(after[a]) for a in agents) and time.monotonic() < deadline:
        time.sleep(2)
        after = _nodes(lab, new)
    assert all(_ready(after[a]) for a in agents), {a: after[a]["status"]["conditions"] for a in agents}
    assert lab.ssh(old, "systemctl is-active k3s.service", check=False).stdout.strip() != "active"
    assert lab.ssh(old, "test -e /usr/local/bin/k3s", check=False).returncode != 0
    nginx = lab.ssh("h1", "nginx -T 2>/dev/null").stdout
    old_ip = lab.ssh(old, "tailscale ip -4").stdout.strip()
    assert f"server {new_ip}:443" in nginx and f"server {old_ip}:443" not in nginx
    # Still routed, by the agents' Traefik, with the app's certificate. Its pod answers again once Kubernetes has
    # caught up (a pod of the deleted node leaves the Service's endpoints when it is collected); if its local-path
    # volume was on the old server, the pod cannot run elsewhere (rook-ceph's volumes could) and Traefik says 503.
    deadline, body, cert, error = time.monotonic() + 180, "", {}, None
    while time.monotonic() < deadline:
        try:
            cert, body = tls(lab, served_apps, PUBLIC)
        except OSError as exc:
            error = exc
        else:
            if served(body) or (volume_node == old and " 503 " in body.splitlines()[0]):
                break
        time.sleep(3)
    assert ("DNS", PUBLIC) in cert.get("subjectAltName", ()), (cert, error)
    if volume_node != old:
        assert served(body), (body[:300], error)
    else:
        assert body.startswith("HTTP/1.") and " 503 " in body.splitlines()[0], (body[:300], error)
    lab.ssh(new, f"k3s kubectl uncordon {agents[0]}")
    # Its data comes back from its backup into a new volume on the moved cluster, whichever node the old one was on.
    restored = cli(lab_env, "restore", "inventories/lab.py", PUBLIC_APP, "--new-volume")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-3000:]
    claim = json.loads(lab.ssh(new, f"k3s kubectl -n app-{PUBLIC_APP} get pvc {PUBLIC_APP} -o json").stdout)
    assert claim["spec"]["volumeName"] != volume["metadata"]["name"]  # a new volume
    deadline = time.monotonic() + 180
    while not served(body) and time.monotonic() < deadline:
        time.sleep(3)
        try:
            _cert, body = tls(lab, served_apps, PUBLIC)
        except OSError:
            continue
    assert served(body), body[:300]

    again = pyinfra()
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}, again.changed()
