"""Lab tier: real Kubernetes under the lab's k3s stand-in, over the real tailnet.

The lab's k3s binary is a stand-in for k3s's own supervisor (portable_k3s/lab/k3s_standin), but what it runs is real:
kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and kube-proxy from github.com/k3s-io/kubernetes at
the pinned k3s's version, etcd embedded, flannel's VXLAN backend on tailscale0, Debian's containerd and runc, and
CoreDNS built from its Go module, with images from the lab's airgap bundle (portable_k3s/lab/images.py). These tests
prove what only a real cluster shows: nodes registered by kubelets over the tailnet, pods on two home nodes talking
across it, Services, cluster DNS, and the MTU that leaves room for VXLAN inside WireGuard.
"""

from __future__ import annotations

import json
import time

import pytest

from portable_k3s.lab.images import BUSYBOX_IMAGE
from portable_k3s.versions import VERSIONS

NODES = ("h2", "h3", "h4")
NAMESPACE = "lab-kubernetes-test"


def kubectl(lab, args: str, **kwargs) -> str:
    return lab.ssh("h2", f"k3s kubectl {args}", **kwargs).stdout


def _pods_manifest() -> str:
    """An http server pod on h3 and a client pod on h4 (busybox from the airgap bundle), and a Service."""
    def pod(name: str, node: str, command: str) -> dict:
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0, "containers": [{
                "name": name, "image": BUSYBOX_IMAGE, "imagePullPolicy": "Never",
                "command": ["sh", "-c", command]}]},
        }

    serve = ("mkdir -p /www && echo hello-from-h3 > /www/index.html && head -c 20000000 /dev/urandom > /www/big "
             "&& md5sum /www/big | cut -d' ' -f1 > /www/big.md5 && exec httpd -f -p 8080 -h /www")
    items = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        pod("server", "h3", serve),
        pod("client", "h4", "exec sleep 3600"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
         "spec": {"selector": {"app": "server"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def start_pods(lab) -> dict[str, dict]:
    """Start the server and client pods (and the Service) and wait until they are Ready: {name: pod}."""
    kubectl(lab, "apply -f -", input=_pods_manifest())
    kubectl(lab, f"-n {NAMESPACE} wait --for=condition=Ready pod/server pod/client --timeout=120s", timeout=150)
    # The server pod writes its files before it listens: wait for the checksum file.
    for _ in range(60):
        if lab.ssh("h2", f"k3s kubectl -n {NAMESPACE} exec server -- cat /www/big.md5", check=False).returncode == 0:
            break
        time.sleep(0.5)
    return {name: json.loads(kubectl(lab, f"-n {NAMESPACE} get pod {name} -o json")) for name in ("server", "client")}


def stop_pods(lab) -> None:
    lab.ssh("h2", f"k3s kubectl delete namespace {NAMESPACE} --wait=true --timeout=60s", check=False, timeout=90)


def pod_to_pod(lab, pods: dict[str, dict]) -> str:
    """What the client pod (h4) gets from the server pod (h3) by pod IP."""
    return kubectl(lab, f"-n {NAMESPACE} exec client -- wget -q -O- http://{pods['server']['status']['podIP']}:8080/")


@pytest.fixture(scope="module")
def pods(lab, converged_entrance):
    try:
        yield start_pods(lab)
    finally:
        stop_pods(lab)


def test_every_node_is_ready_in_the_real_api_at_its_tailnet_ip(lab, converged_entrance):
    nodes = {n["metadata"]["name"]: n for n in json.loads(kubectl(lab, "get nodes -o json"))["items"]}
    assert set(nodes) == set(NODES)
    for name, node in nodes.items():
        ipv4 = lab.ssh(name, "tailscale ip -4").stdout.split()[0]
        conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert conditions["Ready"] == "True", (name, conditions)
        internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
        assert internal == [ipv4], (name, node["status"]["addresses"])
        info = node["status"]["nodeInfo"]
        assert info["kubeletVersion"] == VERSIONS["k3s"], info  # real kubelet, built as k3s builds it
        assert info["containerRuntimeVersion"].startswith("containerd://"), info
        assert node["spec"]["podCIDR"].startswith("10.42."), node["spec"]
    assert "node-role.kubernetes.io/control-plane" in nodes["h2"]["metadata"]["labels"]
    version = json.loads(kubectl(lab, "version -o json"))["serverVersion"]
    assert version["gitVersion"] == VERSIONS["k3s"], version


def test_flannel_vxlan_rides_on_tailscale0_with_room_for_wireguard(lab, converged_entrance):
    for name in NODES:
        link = lab.ssh(name, "ip -d link show flannel.1").stdout
        ipv4 = lab.ssh(name, "tailscale ip -4").stdout.split()[0]
        assert f"local {ipv4} dev tailscale0" in link, (name, link)
        mtu = int(lab.ssh(name, "cat /sys/class/net/flannel.1/mtu").stdout)
        assert mtu <= 1230, (name, mtu)  # tailscale0 is 1280; VXLAN takes 50


def test_pods_on_two_home_nodes_reach_each_other_over_the_tailnet(lab, pods):
    assert pods["server"]["spec"]["nodeName"] == "h3" and pods["client"]["spec"]["nodeName"] == "h4"
    assert pod_to_pod(lab, pods).strip() == "hello-from-h3"
    # Count VXLAN packets (udp/8472) leaving h4 by interface while the client talks to the server's pod IP again.
    rule = "OUTPUT -p udp --dport 8472 -m comment --comment lab-vxlan-count"
    for dev in ("tailscale0", "host0"):
        lab.ssh("h4", f"iptables -w -I {rule.replace('OUTPUT', f'OUTPUT -o {dev}')} -j RETURN")
    try:
        assert pod_to_pod(lab, pods).strip() == "hello-from-h3"
        counts = {}
        for dev in ("tailscale0", "host0"):
            listing = lab.ssh("h4", f"iptables -w -v -x -n -L OUTPUT | grep lab-vxlan-count | grep {dev}").stdout
            counts[dev] = int(listing.split()[0])
    finally:
        for dev in ("tailscale0", "host0"):
            lab.ssh("h4", f"iptables -w -D {rule.replace('OUTPUT', f'OUTPUT -o {dev}')} -j RETURN", check=False)
    assert counts["tailscale0"] > 0 and counts["host0"] == 0, counts


def test_a_clusterip_service_and_cluster_dns_answer_across_nodes(lab, pods):
    """CoreDNS (built from its Go module, deployed as k3s deploys it) resolves the Service; kube-proxy's rules
    take the client on h4 to the pod on h3."""
    service_ip = json.loads(kubectl(lab, f"-n {NAMESPACE} get service web -o json"))["spec"]["clusterIP"]
    # busybox's nslookup asks once: a UDP query lost on a fresh VXLAN path is asked again, as a resolver would.
    lookup = kubectl(lab, f"-n {NAMESPACE} exec client -- sh -c 'for i in 1 2 3 4 5; do "
                          f"nslookup web.{NAMESPACE}.svc.cluster.local 10.43.0.10 && exit 0; sleep 2; done; exit 1'")
    assert service_ip in lookup, lookup
    body = kubectl(lab, f"-n {NAMESPACE} exec client -- wget -q -O- http://web.{NAMESPACE}.svc.cluster.local/")
    assert body.strip() == "hello-from-h3"


def test_a_large_transfer_between_nodes_does_not_stall(lab, pods):
    """20 MB pod to pod across the tailnet: with a VXLAN MTU too large for tailscale0 this stalls."""
    server_ip = pods["server"]["status"]["podIP"]
    expected = kubectl(lab, f"-n {NAMESPACE} exec server -- cat /www/big.md5").strip()
    started = time.monotonic()
    got = kubectl(lab, f"-n {NAMESPACE} exec client -- sh -c 'wget -q -O- http://{server_ip}:8080/big | md5sum'",
                  timeout=120)
    assert got.split()[0] == expected
    assert time.monotonic() - started < 90
