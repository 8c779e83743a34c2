"""Each catalog app's manifest: its namespace, volume, secret, workload, service and ingress (the kinds of app are
in ``portable_k3s.settings.apps``).

An app of the catalog (``apps`` in group_data/all.py) with a ``kind`` (or whose ``name`` is a kind) is deployed by
the cluster add-ons deploy as ``portable-k3s-app-<name>.yaml``; an app without a kind only gets its entrance or
MagicDNS entry (a service you run some other way). Removing the app from the catalog removes its file, and the
deploy deletes its namespace with everything in it, its volume's data included.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..render import render, sha256, to_yaml
from ..settings.apps import KINDS, App, AppKind, kind_of
from ..versions import CHARTS, IMAGES

if TYPE_CHECKING:
    from ..config import AddonsConfig

__all__ = ["KINDS", "AppKind", "SecretReader", "kind_of", "namespace", "render_app"]

# A secret's value for a manifest: (key path in the inventory, secret reference) -> the text to write.
SecretReader = Callable[[str, Any], str]


def namespace(app: App) -> str:
    """The app's own namespace: removing the app deletes it, and everything in it."""
    return f"app-{app.name}"


def _fill(text: str, app: App) -> str:
    return text.replace("{hostname}", app.hostname or "").replace("{url}", f"https://{app.hostname or ''}")


def render_app(app: App, index: int, addons: AddonsConfig, secret: SecretReader) -> str:
    """
    The manifest of one catalog app (``App`` with a kind).

    + index: its position in ``apps`` (secrets are named ``all.apps[INDEX].secrets.NAME`` in errors)
    + addons: the validated add-on settings (storage class, issuers, Traefik ports)
    + secret: reads a secret reference; returns its value (the deploy) or a placeholder (``render``)
    """
    kind = kind_of(app)
    assert kind is not None, f"{app.name} has no kind"
    key = f"all.apps[{index}]"
    if kind.secrets:
        secrets = {
            (env or name): secret(f"{key}.secrets.{name}", app.secrets[name])
            for name, (env, _required) in kind.secrets.items() if name in app.secrets
        }
    else:  # the generic container: its secrets are environment variables by name
        secrets = {name: secret(f"{key}.secrets.{name}", ref) for name, ref in app.secrets.items()}
    cpu = app.resources.get("cpu", kind.cpu)
    memory = app.resources.get("memory", kind.memory)
    storage = app.storage or kind.storage
    issuer = addons.issuer_for(app.public)
    common: dict[str, Any] = {
        "app": app, "namespace": namespace(app), "storage_class": addons.storage_class, "storage": storage,
        "issuer": issuer, "cpu": cpu, "memory": memory, "secrets": secrets,
    }
    if kind.chart:
        repo, version = CHARTS[kind.chart]
        values = _jupyterhub_values(app, addons.storage_class, storage, issuer, cpu, memory, secrets["password"])
        return render("manifests/apps/chart.yaml.j2", **common, chart=kind.chart, repo=repo, version=version,
                      values=to_yaml(values))
    env = {**{name: _fill(value, app) for name, value in kind.env.items()}, **app.env}
    mounts = [("", app.storage_path)] if app.storage_path else list(kind.mounts)
    prometheus = kind is KINDS["prometheus"]
    config = PROMETHEUS_CONFIG if prometheus else ""
    return render(
        "manifests/apps/app.yaml.j2", **common,
        kind_name=app.kind or app.name, image=app.image or IMAGES[kind.image or ""], port=app.port or kind.port,
        env=env, args=[_fill(arg, app) for arg in kind.args], mounts=mounts if storage else [], http=kind.http,
        user=kind.user, group=kind.group, prometheus=prometheus, prometheus_config=config,
        prometheus_sha=sha256(config)[:16], entry_point=tcp_entry_point(app.tcp_port) if app.tcp_port else "",
    )


def tcp_entry_point(port: int) -> str:
    """The name of Traefik's entry point (and service port) for a raw TCP app's ``tcp_port``."""
    return f"tcp{port}"


# Prometheus scrapes itself, the nodes' kubelets (through the API server) and pods that ask for it with the
# prometheus.io/scrape annotation.
PROMETHEUS_CONFIG = """global:
  scrape_interval: 30s
scrape_configs:
  - job_name: prometheus
    static_configs:
      - targets: [localhost:9090]
  - job_name: kubelet
    scheme: https
    authorization:
      credentials_file: /var/run/secrets/kubernetes.io/serviceaccount/token
    tls_config:
      ca_file: /var/run/secrets/kubernetes.io/serviceaccount/ca.crt
    kubernetes_sd_configs:
      - role: node
    relabel_configs:
      - target_label: __address__
        replacement: kubernetes.default.svc:443
      - source_labels: [__meta_kubernetes_node_name]
        target_label: __metrics_path__
        replacement: /api/v1/nodes/$1/proxy/metrics
  - job_name: pods
    kubernetes_sd_configs:
      - role: pod
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        regex: "true"
        action: keep
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod"""


def _jupyterhub_values(
    app: App, storage_class: str | None, storage: str | None, issuer: str, cpu: str, memory: str, password: str
) -> dict[str, Any]:
    """The jupyterhub chart's values: ingress with a certificate, volumes on the cluster's storage class."""
    dynamic: dict[str, Any] = {"storageClass": storage_class} if storage_class else {}
    return {
        "hub": {
            "config": {"JupyterHub": {"authenticator_class": "dummy"},
                       "DummyAuthenticator": {"password": password}, "Authenticator": {"admin_users": ["admin"]}},
            "db": {"pvc": {"storageClassName": storage_class}} if storage_class else {},
        },
        "proxy": {"service": {"type": "ClusterIP"}},
        "ingress": {
            "enabled": True, "hosts": [app.hostname],
            "annotations": {"cert-manager.io/cluster-issuer": issuer,
                            "traefik.ingress.kubernetes.io/router.entrypoints": "websecure"},
            "tls": [{"hosts": [app.hostname], "secretName": f"{app.name}-tls"}],
        },
        "singleuser": {
            "storage": {"capacity": storage, "dynamic": dynamic},
            "cpu": {"guarantee": _cores(cpu)}, "memory": {"guarantee": _bytes(memory), "limit": _bytes(memory)},
        },
    }


def _cores(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> str:
    """A Kubernetes memory quantity as jupyterhub's K/M/G (``512Mi`` -> ``512M``)."""
    return quantity[:-1] if quantity.endswith("i") else quantity
