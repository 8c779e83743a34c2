"""Checks for k3s on the nodes (deploys.k3s): the unit, the tailnet settings, the nodes in the API, flannel's MTU and
the system pods. They hold for a real k3s and for the portable-k3s lab's stand-in, which runs real Kubernetes."""

from __future__ import annotations

import json
import time

import pytest
import yaml

NODE_GROUPS = ("k3s_servers", "k3s_agents")


def _unit(host) -> str:
    return "k3s" if host.file("/etc/systemd/system/k3s.service").exists else "k3s-agent"


def _tailnet_ipv4(host) -> str:
    return host.check_output("tailscale ip -4").splitlines()[0]


@pytest.mark.groups(*NODE_GROUPS)
def test_k3s_runs_enabled(host):
    service = host.service(_unit(host))
    assert service.is_running and service.is_enabled


@pytest.mark.groups(*NODE_GROUPS)
def test_k3s_uses_the_tailnet(host):
    config = yaml.safe_load(host.file("/etc/rancher/k3s/config.yaml").content_string)
    assert config["node-ip"] == _tailnet_ipv4(host)
    assert config["flannel-iface"] == "tailscale0"


@pytest.mark.groups(*NODE_GROUPS)
def test_k3s_secrets_are_0600(host):
    for path in ("/etc/rancher/k3s/config.yaml", "/etc/rancher/k3s/token"):
        secret = host.file(path)
        assert secret.exists and secret.mode == 0o600 and secret.user == "root", path


@pytest.mark.groups("k3s_servers")
def test_every_node_ready_at_its_tailnet_ip(host):
    nodes = json.loads(host.check_output("k3s kubectl get nodes -o json"))["items"]
    assert nodes
    for node in nodes:
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions.get("Ready") == "True", node["metadata"]["name"]
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal and internal[0].startswith("100."), (node["metadata"]["name"], internal)


@pytest.mark.groups(*NODE_GROUPS)
def test_flannel_fits_inside_the_tailnet_mtu(host):
    """flannel's VXLAN device sits on tailscale0 (MTU 1280): its MTU must be 1230 or less."""
    mtu = int(host.check_output("cat /sys/class/net/flannel.1/mtu"))
    assert mtu <= 1230


@pytest.mark.groups("k3s_servers")
def test_system_pods_run(host):
    """Every pod in kube-system runs (or has done its job). Pods just starting, such as the local-path
    provisioner's short-lived helper pods that make a new volume's directory, get up to a minute."""
    deadline = time.monotonic() + 60
    while True:
        pods = json.loads(host.check_output("k3s kubectl get pods -n kube-system -o json"))["items"]
        not_running = [p["metadata"]["name"] for p in pods
                       if p["status"].get("phase") not in ("Running", "Succeeded")]
        if (pods and not not_running) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert pods and not not_running, not_running
