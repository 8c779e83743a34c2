"""Lab tier: the cluster add-ons' and apps' manifests on the first server, applied to the lab's real Kubernetes.

The manifests land in k3s's auto-deploy directory of the first server (h2) and nowhere else, 0600; the lab's k3s
stand-in applies them to the real API as k3s's deploy controller does (an AddOn per file, with the file's sha256);
Traefik's HelmChartConfig trusts exactly the entrance's real tailnet address, read from tailscale on h1; a second run
changes nothing; an app dropped from the catalog loses its file, its objects and its AddOn. Of the charts, only the
two k3s bundles (traefik-crd, traefik) are rendered, by the stand-in's HELM CHART STAND-IN; the others (cert-manager)
are stored as objects, and most apps' images cannot be pulled in the lab, so their pods do not run here.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = "/var/lib/rancher/k3s/server/manifests"
DROPPED = "ntfy"  # a private app: the catalog without it is the "removed" state


@pytest.fixture(scope="module")
def converged(pyinfra):
    run = pyinfra()
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def _catalog() -> list[dict]:
    return runpy.run_path(str(REPO / "group_data" / "all.py"))["apps"]


def _listing(lab, name: str) -> dict[str, str]:
    """{file name: mode} of the library's manifests on a host."""
    out = lab.ssh(name, f"cd {MANIFESTS} 2>/dev/null && stat -c '%n %a' portable-k3s-*.yaml .portable-k3s-* "
                        "2>/dev/null", check=False).stdout
    return dict(line.split() for line in out.splitlines() if line.strip())


def test_manifests_land_on_the_first_server_only_0600(lab, converged):
    found = _listing(lab, "h2")
    expected = {"portable-k3s-traefik-config.yaml", "portable-k3s-cert-manager.yaml",
                "portable-k3s-cluster-issuers.yaml", "portable-k3s-backups.yaml"}  # the lab backs its apps up
    expected |= {f"portable-k3s-app-{app['name']}.yaml" for app in _catalog()}
    assert set(found) == expected, found  # no rook-ceph (no external_ssd in the lab), no MetalLB (no pools)
    assert set(found.values()) == {"600"}, found
    assert lab.ssh("h2", f"stat -c %U:%G {MANIFESTS}/portable-k3s-cert-manager.yaml").stdout.strip() == "root:root"
    for other in ("h1", "h3", "h4"):
        assert _listing(lab, other) == {}, other


def _addons(lab) -> dict[str, str]:
    """{AddOn name: spec.checksum} in kube-system."""
    items = json.loads(lab.ssh("h2", "k3s kubectl -n kube-system get addons -o json").stdout)["items"]
    return {item["metadata"]["name"]: item["spec"]["checksum"] for item in items}


def test_every_manifest_is_applied_as_an_addon_with_its_checksum(lab, converged):
    texts = {name: lab.ssh("h2", f"cat {MANIFESTS}/{name}").stdout for name in _listing(lab, "h2")}
    # cert-manager's ClusterIssuers wait for its CRDs, as they would in k3s until its chart is installed: the lab's
    # k3s renders only the charts k3s bundles (Traefik's CRDs are there: minecraft's IngressRouteTCP applies).
    needs_charts = {name.split(".", 1)[0] for name, text in texts.items() if "apiVersion: cert-manager.io/" in text}
    assert needs_charts == {"portable-k3s-cluster-issuers"}, needs_charts
    wanted = {name.split(".", 1)[0]: hashlib.sha256(text.encode()).hexdigest() for name, text in texts.items()
              if name.split(".", 1)[0] not in needs_charts}
    deadline = time.monotonic() + 120
    while True:
        addons = _addons(lab)
        if all(addons.get(name) == sha for name, sha in wanted.items()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {name: addons.get(name) for name in wanted} == wanted
    assert not needs_charts & set(addons), addons
    # The objects are real: an app's namespace and Deployment, Traefik's HelmChartConfig and its running DaemonSet,
    # the raw TCP app's IngressRouteTCP.
    assert lab.ssh("h2", "k3s kubectl -n app-blog get deployment blog -o name").stdout.strip() == "deployment.apps/blog"
    assert lab.ssh("h2", "k3s kubectl -n kube-system get helmchartconfig traefik -o name").stdout.strip()
    assert "addon" in lab.ssh("h2", "k3s kubectl api-resources --api-group=k3s.cattle.io -o name").stdout
    assert lab.ssh("h2", "k3s kubectl -n app-minecraft get ingressroutetcp minecraft -o name").stdout.strip()
    args = json.loads(lab.ssh("h2", "k3s kubectl -n kube-system get daemonset traefik -o json").stdout)[
        "spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--entryPoints.tcp25565.address=:25565/tcp" in args and "--entryPoints.websecure.http.tls=true" in args


def test_traefik_trusts_the_entrances_real_tailnet_ip(lab, converged):
    entrance_ip = lab.ssh("h1", "tailscale ip -4").stdout.strip().splitlines()[0]
    assert entrance_ip.startswith("100.")
    config = yaml.safe_load(lab.ssh("h2", f"cat {MANIFESTS}/portable-k3s-traefik-config.yaml").stdout)
    assert (config["kind"], config["metadata"]["name"], config["metadata"]["namespace"]) == (
        "HelmChartConfig", "traefik", "kube-system")
    values = yaml.safe_load(config["spec"]["valuesContent"])
    for port in ("web", "websecure"):
        assert values["ports"][port]["proxyProtocol"]["trustedIPs"] == [f"{entrance_ip}/32"], values
        assert values["ports"][port]["forwardedHeaders"]["trustedIPs"] == [f"{entrance_ip}/32"], values
    assert "100.64.0.0/10" not in config["spec"]["valuesContent"]


def test_app_secrets_are_in_no_output(lab, pyinfra, converged):
    secret = lab.ssh("h2", f"grep -h 'NEXTCLOUD_ADMIN_PASSWORD:' {MANIFESTS}/portable-k3s-app-nextcloud.yaml"
                     ).stdout.split(":", 1)[1].strip().strip('"')
    assert secret.startswith("lab-")  # the lab's throwaway value (portable_k3s/lab/inventory.py)
    lab.ssh("h2", f"rm {MANIFESTS}/portable-k3s-app-nextcloud.yaml")
    run = pyinfra("-vvv", "--diff")
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.changed() == {"Cluster add-ons | Manifest portable-k3s-app-nextcloud.yaml": ["h2"]}, run.changed()
    assert secret not in run.stdout + run.stderr


def test_a_second_run_changes_nothing(pyinfra, converged):
    again = pyinfra()
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.changed() == {}, again.changed()


def test_removing_an_app_removes_its_manifest_and_deletes_its_objects(lab, pyinfra, converged):
    test_every_manifest_is_applied_as_an_addon_with_its_checksum(lab, converged)  # applied before it is removed
    assert lab.ssh("h2", f"k3s kubectl get namespace app-{DROPPED} -o name").stdout.strip()
    lab.ssh("h2", "rm -f /var/lib/rancher/k3s/standin/kubectl.log")
    without = [app for app in _catalog() if app["name"] != DROPPED]
    run = pyinfra("--data", "apps=" + json.dumps(without))
    assert run.returncode == 0, run.stderr[-4000:]
    changed = run.changed()
    assert changed.get("Cluster add-ons | Remove manifests no longer in the catalog, with their resources") == ["h2"]
    assert f"portable-k3s-app-{DROPPED}.yaml" not in _listing(lab, "h2")
    assert not any(name.startswith(".") for name in _listing(lab, "h2"))  # the removal finished
    calls = lab.ssh("h2", "cat /var/lib/rancher/k3s/standin/kubectl.log").stdout
    assert f"delete --ignore-not-found --wait=false -f {MANIFESTS}/.portable-k3s-app-{DROPPED}.removing.yaml" in calls
    assert f"portable-k3s-app-{DROPPED}" not in _addons(lab)
    phase = lab.ssh("h2", f"k3s kubectl get namespace app-{DROPPED} -o jsonpath='{{.status.phase}}'",
                    check=False).stdout
    assert phase in ("", "Terminating"), phase  # its objects go with it
    same = pyinfra("--data", "apps=" + json.dumps(without))
    assert same.returncode == 0 and same.changed() == {}, same.changed()
    back = pyinfra()  # the catalog as it is: the app's manifest comes back
    assert back.returncode == 0, back.stderr[-4000:]
    assert f"portable-k3s-app-{DROPPED}.yaml" in _listing(lab, "h2")
