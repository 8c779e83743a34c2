"""Facts about k3s: the cluster's nodes as a server sees them."""

from __future__ import annotations

import json
from typing import TypedDict

from pyinfra.api import FactBase, QuoteString, StringCommand


class K3sNodeInfo(TypedDict):
    name: str
    ready: bool
    version: str  # the kubelet version, e.g. v1.35.3+k3s1
    unschedulable: bool
    internal_ip: str | None


def parse_nodes(text: str) -> list[K3sNodeInfo]:
    """``kubectl get nodes -o json`` (a List, or one Node) as a list of ``K3sNodeInfo``; [] for anything else."""
    try:
        document = json.loads(text or "{}")
    except json.JSONDecodeError:
        return []
    items = document.get("items", [document] if document.get("kind") == "Node" else [])
    nodes: list[K3sNodeInfo] = []
    for item in items:
        status = item.get("status") or {}
        conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
        addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
        nodes.append(
            {
                "name": (item.get("metadata") or {}).get("name", ""),
                "ready": conditions.get("Ready") == "True",
                "version": (status.get("nodeInfo") or {}).get("kubeletVersion", ""),
                "unschedulable": bool((item.get("spec") or {}).get("unschedulable")),
                "internal_ip": addresses.get("InternalIP"),
            }
        )
    return nodes


class K3sNodes(FactBase[list[K3sNodeInfo]]):
    """
    The cluster's nodes, read on a k3s server with ``k3s kubectl``; [] when k3s does not answer.

    .. code:: python

        [{"name": "master", "ready": True, "version": "v1.35.3+k3s1", "unschedulable": False,
          "internal_ip": "100.64.0.2"}]
    """

    @staticmethod
    def default() -> list[K3sNodeInfo]:
        return []

    def command(self) -> str:
        return "command -v k3s >/dev/null 2>&1 && k3s kubectl get nodes -o json 2>/dev/null || true"

    def process(self, output: list[str]) -> list[K3sNodeInfo]:
        return parse_nodes("\n".join(output))


# What k3s leaves on a node: the deploy's own files, k3s's data and runtime directories, CNI interfaces.
K3S_FILES = (
    "/etc/systemd/system/k3s.service", "/etc/systemd/system/k3s-agent.service", "/usr/local/bin/k3s",
    "/etc/rancher/k3s/config.yaml", "/etc/rancher/k3s/token", "/etc/rancher/k3s/vpn-auth",
    "/var/lib/portable-k3s/releases/k3s",
)
K3S_DATA = ("/etc/rancher", "/var/lib/rancher", "/var/lib/kubelet", "/run/k3s", "/run/flannel", "/var/lib/cni")
CNI_INTERFACES = ("cni0", "flannel.1", "flannel-v6.1", "flannel-wg", "kube-ipvs0")


class K3sFootprintInfo(TypedDict):
    files: list[str]  # of K3S_FILES, those that exist
    data: list[str]  # of K3S_DATA, those that exist
    interfaces: list[str]  # of CNI_INTERFACES, those that exist
    iptables_rules: int  # rules in chains named KUBE-*, CNI-* or FLANNEL*


class K3sFootprint(FactBase[K3sFootprintInfo]):
    """
    What of k3s is on a host, in one command: the files the deploy manages, k3s's data directories, its CNI
    interfaces and the number of its iptables rules.

    .. code:: python

        {"files": ["/usr/local/bin/k3s", ...], "data": ["/var/lib/rancher"], "interfaces": ["cni0"],
         "iptables_rules": 42}
    """

    @staticmethod
    def default() -> K3sFootprintInfo:
        return {"files": [], "data": [], "interfaces": [], "iptables_rules": 0}

    def command(self) -> StringCommand:
        paths = [QuoteString(p) for p in (*K3S_FILES, *K3S_DATA)]
        interfaces = " ".join(CNI_INTERFACES)
        return StringCommand(
            "for p in", *paths, "; do [ -e \"$p\" ] && echo \"path $p\"; done;",
            f"for i in {interfaces}; do [ -e \"/sys/class/net/$i\" ] && echo \"iface $i\"; done;",
            "echo \"rules $( (iptables-save 2>/dev/null || true) | grep -cE '^-A (KUBE-|CNI-|FLANNEL)')\"",
        )

    def process(self, output: list[str]) -> K3sFootprintInfo:
        info = self.default()
        for line in output:
            kind, _, value = line.strip().partition(" ")
            if kind == "path" and value in K3S_FILES:
                info["files"].append(value)
            elif kind == "path" and value in K3S_DATA:
                info["data"].append(value)
            elif kind == "iface" and value in CNI_INTERFACES:
                info["interfaces"].append(value)
            elif kind == "rules" and value.isdigit():
                info["iptables_rules"] = int(value)
        return info
