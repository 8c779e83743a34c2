"""The lab's HELM CHART STAND-IN for k3s's bundled traefik chart (portable_k3s/lab/k3s_standin/charts.go) against the
chart's documented values, and against what the deploy's HelmChartConfig sets.

The stand-in refuses any value its ``chart_values.txt`` does not list (the lab tier proves it translates the deploy's
real HelmChartConfig into a running Traefik); these tests keep that list honest: every name in it is a value of the
chart k3s v1.35 bundles, and every value the deploy can write is one the stand-in translates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from portable_k3s.config import AddonsConfig, App
from portable_k3s.manifests.traefik import traefik_values

CHART_VALUES = Path(__file__).resolve().parents[2] / "portable_k3s" / "lab" / "k3s_standin" / "chart_values.txt"

# The values of traefik/traefik-helm-chart's traefik/values.yaml (chart 39, which k3s v1.35 repackages as
# traefik-39.0.x+up39.0.x) that the deploy or the stand-in use, as the chart documents them; "<name>" is a port's
# name (the chart's ports.traefik/web/websecure/metrics and any other). global.systemDefaultRegistry is the value
# k3s's repackaged chart adds (k3s sets it in its traefik.yaml); service.ipFamilyPolicy is documented commented out.
CHART_DOCUMENTED = {
    "image.registry", "image.repository", "image.tag", "image.pullPolicy",
    "global.checkNewVersion", "global.sendAnonymousUsage", "global.systemDefaultRegistry",
    "deployment.enabled", "deployment.kind", "deployment.replicas", "deployment.terminationGracePeriodSeconds",
    "deployment.podAnnotations", "deployment.podLabels",
    "ingressClass.enabled", "ingressClass.isDefaultClass", "ingressClass.name",
    "providers.kubernetesCRD.enabled", "providers.kubernetesIngress.enabled",
    "providers.kubernetesCRD.allowEmptyServices", "providers.kubernetesIngress.allowEmptyServices",
    "providers.kubernetesIngress.publishedService.enabled",
    "api.dashboard", "metrics.prometheus.entryPoint", "logs.general.level", "logs.access.enabled", "rbac.enabled",
    "additionalArguments", "env", "priorityClassName", "tolerations", "nodeSelector",
    "ports.<name>.port", "ports.<name>.hostPort", "ports.<name>.containerPort", "ports.<name>.exposedPort",
    "ports.<name>.protocol", "ports.<name>.expose.default",
    "ports.<name>.redirections.entryPoint.to", "ports.<name>.redirections.entryPoint.scheme",
    "ports.<name>.redirections.entryPoint.permanent",
    "ports.<name>.proxyProtocol.trustedIPs", "ports.<name>.proxyProtocol.insecure",
    "ports.<name>.forwardedHeaders.trustedIPs", "ports.<name>.forwardedHeaders.insecure",
    "ports.<name>.tls.enabled",
    "service.enabled", "service.type", "service.annotations", "service.spec", "service.ipFamilyPolicy",
}


def standin_paths() -> list[str]:
    lines = CHART_VALUES.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _matches(pattern: str, path: list[str]) -> bool:
    parts = pattern.split(".")
    if parts[-1] == "*":
        parts = parts[:-1]
        path = path[:len(parts)]
    return len(parts) == len(path) and all(p in ("<name>", q) for p, q in zip(parts, path, strict=True))


def _leaves(values: Any, prefix: list[str]) -> list[list[str]]:
    if isinstance(values, dict) and values:
        return [leaf for key, value in values.items() for leaf in _leaves(value, [*prefix, key])]
    return [prefix]


def test_every_value_the_standin_translates_is_a_documented_chart_value() -> None:
    found = {path.removesuffix(".*") for path in standin_paths()}
    assert found <= CHART_DOCUMENTED, sorted(found - CHART_DOCUMENTED)


@pytest.mark.parametrize("lb_address", [None, "192.168.1.240"], ids=["nodes", "metallb"])
@pytest.mark.parametrize("proxy_protocol", [True, False], ids=["tcp-proxy-protocol", "tcp-plain"])
def test_every_value_the_deploy_writes_is_translated_by_the_standin(lb_address, proxy_protocol) -> None:
    addons = AddonsConfig(lb_address=lb_address)
    apps = [App(name="minecraft", hostname="mc.example.org", public=True, tcp_port=25565,
                proxy_protocol=proxy_protocol),
            App(name="ssh", kind="container", image="example/ssh:1", port=22, hostname="ssh.example.org",
                public=True, tcp_port=22, proxy_protocol=proxy_protocol)]
    values = traefik_values(["100.64.0.2", "100.64.0.9"], addons, apps)
    patterns = standin_paths()
    untranslated = [".".join(leaf) for leaf in _leaves(values, []) if not any(_matches(p, leaf) for p in patterns)]
    assert untranslated == []
    assert values["ports"]["websecure"]["proxyProtocol"]["trustedIPs"] == ["100.64.0.2/32", "100.64.0.9/32"]
