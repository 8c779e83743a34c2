"""The app catalog's kinds and each app's manifest: its namespace, volume, secret, workload, service and ingress.

An app of the catalog (``apps`` in group_data/all.py) with a ``kind`` (or whose ``name`` is a kind) is deployed by
the cluster add-ons deploy as ``portable-k3s-app-<name>.yaml``; an app without a kind only gets its entrance or
MagicDNS entry (a service you run some other way). Removing the app from the catalog removes its file, and the
deploy deletes its namespace with everything in it, its volume's data included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..render import render, sha256, to_yaml
from ..versions import CHARTS, IMAGES

if TYPE_CHECKING:
    from ..config import AddonsConfig, App

# A secret's value for a manifest: (key path in the inventory, secret reference) -> the text to write.
SecretReader = Callable[[str, Any], str]


@dataclass(frozen=True)
class AppKind:
    """
    What the catalog knows about one kind of app.

    + summary: one line for the README
    + image: the ``IMAGES`` pin, or None when the app gives its own ``image`` (the generic container kind)
    + port: the port the container listens on
    + storage: the default volume size (None: no volume unless the app asks for ``storage``)
    + mounts: ``(subPath, mount path)`` of the volume in the container
    + env: environment; ``{hostname}`` and ``{url}`` stand for the app's
    + secrets: ``{secret name: (environment variable, required)}``
    + args: container arguments
    + http: served through Traefik with a certificate (else a raw TCP app, e.g. minecraft)
    + user, group: ``runAsUser`` and ``fsGroup`` (the volume's group)
    + cpu, memory: default requests (memory is also the limit)
    + chart: installed from this ``CHARTS`` Helm chart instead of a Deployment
    + backup: its volume is backed up unless the app says otherwise (``app_backup_s3``)
    + sqlite: it keeps SQLite databases on its volume: each backup first takes a consistent copy of every one
    """

    summary: str
    image: str | None
    port: int = 80
    storage: str | None = "1Gi"
    mounts: tuple[tuple[str, str], ...] = (("", "/data"),)
    env: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, tuple[str, bool]] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    http: bool = True
    user: int | None = None
    group: int | None = None
    cpu: str = "50m"
    memory: str = "128Mi"
    chart: str | None = None
    backup: bool = True
    sqlite: bool = False


KINDS: dict[str, AppKind] = {
    "container": AppKind(
        "any container image of yours (a random project): image, port, optional volume, env and secrets",
        image=None, storage=None, sqlite=True,
    ),
    "static": AppKind(
        "a static website (e.g. your personal site) served by nginx from its volume",
        image="static", mounts=(("", "/usr/share/nginx/html"),), cpu="20m", memory="32Mi",
    ),
    "hugo": AppKind(
        "a Hugo blog: hugo's public/ output served by nginx from its volume",
        image="static", mounts=(("", "/usr/share/nginx/html"),), cpu="20m", memory="32Mi",
    ),
    "privatebin": AppKind(
        "PrivateBin, a pastebin whose server cannot read the pastes", image="privatebin", port=8080,
        mounts=(("", "/srv/data"),), user=65534, group=82, memory="64Mi",
    ),
    "kutt": AppKind(
        "Kutt, a URL shortener (SQLite on its volume)", image="kutt", port=3000, mounts=(("", "/var/lib/kutt"),),
        env={"DB_FILENAME": "/var/lib/kutt/data.sqlite", "DEFAULT_DOMAIN": "{hostname}", "TRUST_PROXY": "true"},
        secrets={"jwt_secret": ("JWT_SECRET", True)}, memory="192Mi", sqlite=True,
    ),
    "nextcloud": AppKind(
        "Nextcloud, files and calendars (SQLite on its volume)", image="nextcloud", storage="50Gi",
        mounts=(("", "/var/www/html"),),
        env={"NEXTCLOUD_TRUSTED_DOMAINS": "{hostname}", "SQLITE_DATABASE": "nextcloud", "NEXTCLOUD_ADMIN_USER": "admin",
             "OVERWRITEPROTOCOL": "https", "TRUSTED_PROXIES": "10.42.0.0/16"},
        secrets={"admin_password": ("NEXTCLOUD_ADMIN_PASSWORD", True)}, group=33, cpu="100m", memory="512Mi",
        sqlite=True,
    ),
    "gitea": AppKind(
        "Gitea, git hosting (SQLite on its volume)", image="gitea", port=3000, storage="10Gi",
        mounts=(("", "/var/lib/gitea"),),
        env={"GITEA_APP_INI": "/var/lib/gitea/custom/conf/app.ini", "GITEA__server__DOMAIN": "{hostname}",
             "GITEA__server__ROOT_URL": "{url}/", "GITEA__database__DB_TYPE": "sqlite3",
             "GITEA__security__INSTALL_LOCK": "true", "GITEA__service__DISABLE_REGISTRATION": "true"},
        secrets={"secret_key": ("GITEA__security__SECRET_KEY", False)}, user=1000, group=1000, memory="256Mi",
        sqlite=True,
    ),
    "vaultwarden": AppKind(
        "Vaultwarden, a Bitwarden-compatible password manager", image="vaultwarden",
        env={"DOMAIN": "{url}", "SIGNUPS_ALLOWED": "false"}, secrets={"admin_token": ("ADMIN_TOKEN", False)},
        memory="64Mi", sqlite=True,
    ),
    "ntfy": AppKind(
        "ntfy, push notifications to your phone", image="ntfy", mounts=(("", "/var/cache/ntfy"),), args=("serve",),
        env={"NTFY_BASE_URL": "{url}", "NTFY_CACHE_FILE": "/var/cache/ntfy/cache.db", "NTFY_BEHIND_PROXY": "true",
             "NTFY_LISTEN_HTTP": ":80"},
        memory="64Mi", sqlite=True,
    ),
    "prometheus": AppKind(
        "Prometheus, metrics of the cluster's nodes, pods and services", image="prometheus", port=9090,
        storage="10Gi", mounts=(("", "/prometheus"),),
        args=("--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
              "--storage.tsdb.retention.time=15d", "--web.external-url={url}"),
        user=65534, group=65534, cpu="100m", memory="512Mi", backup=False,
    ),
    "jupyterhub": AppKind(
        "JupyterHub (its Helm chart): one notebook server per user, each with a volume", image=None,
        storage="10Gi", secrets={"password": ("", True)}, chart="jupyterhub", cpu="100m", memory="512Mi",
    ),
    "baikal": AppKind(
        "Baïkal, a CalDAV/CardDAV server", image="baikal",
        mounts=(("config", "/var/www/baikal/config"), ("specific", "/var/www/baikal/Specific")), memory="64Mi",
        sqlite=True,
    ),
    "minecraft": AppKind(
        "a Minecraft server (raw TCP: give it tcp_port 25565)", image="minecraft", port=25565, storage="10Gi",
        env={"EULA": "TRUE", "TYPE": "VANILLA", "MEMORY": "2G"}, http=False, cpu="500m", memory="2560Mi",
    ),
}


def kind_of(app: App) -> AppKind | None:
    """The app's kind (``kind``, else its name when that is a kind), or None for an app deployed elsewhere."""
    name = app.kind or (app.name if app.name in KINDS else None)
    return KINDS.get(name) if name else None


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
