"""The cluster add-ons' and apps' Kubernetes manifests, for k3s's auto-deploy directory on the first server.

Each manifest is one file, ``portable-k3s-<name>.yaml``: k3s applies it (its HelmChart resources through its Helm
controller) when it appears or changes. One module per add-on renders its manifests: ``metallb``, ``traefik``,
``cert_manager``, ``rook_ceph``, ``apps`` for the app catalog and ``backups`` for the apps' backups.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..settings.addons import INTERNAL_ISSUER
from . import apps as apps_manifests
from . import backups, cert_manager, metallb, rook_ceph, traefik
from .apps import SecretReader

if TYPE_CHECKING:
    from ..config import ClusterConfig

MANIFEST_DIR = "/var/lib/rancher/k3s/server/manifests"
PREFIX = "portable-k3s-"  # every file this library writes there starts with it; others are left alone


def file_name(name: str) -> str:
    """The manifest file of ``name``; k3s names its AddOn after the part before the first dot."""
    return f"{PREFIX}{name}.yaml"


def render_manifests(
    cluster: ClusterConfig, entrance_ips: list[str] | None, secret: SecretReader
) -> dict[str, str]:
    """
    Every manifest of the cluster add-ons and the catalog's deployed apps: ``{file name: text}``, in apply order.

    + cluster: the validated inventory (``config.validate_inventory``)
    + entrance_ips: the entrance hosts' tailnet IPv4 addresses, trusted by Traefik; None leaves Traefik's text
      empty (the deploy writes it from the addresses it reads when it runs)
    + secret: reads a secret reference, ``secret(key_path, reference) -> value``
    """
    addons = cluster.addons
    found: dict[str, str] = {}
    if addons.metallb_pools:
        found[file_name("metallb")] = metallb.render_metallb()
        found[file_name("metallb-pools")] = metallb.render_pools(addons.metallb_pools)
    found[file_name("traefik-config")] = (
        "" if entrance_ips is None else traefik.render_traefik(entrance_ips, addons, cluster.apps)
    )
    found[file_name("cert-manager")] = cert_manager.render_cert_manager()
    token = None
    if addons.acme_solver == "dns01":
        server = cluster.hosts_in("k3s_servers")[0]
        token = secret("all.dns01_token", server.secrets.get("dns01_token"))
    found[file_name("cluster-issuers")] = cert_manager.render_issuers(
        addons.acme_email, addons.acme_solver, addons.dns01_provider, token, addons.acme_issuer, INTERNAL_ISSUER,
    )
    if addons.rook_ceph:
        found[file_name("rook-ceph")] = rook_ceph.render_operator()
        found[file_name("ceph-cluster")] = rook_ceph.render_cluster(addons.ceph_nodes, addons.ceph_replicas,
                                                                    addons.ceph_toolbox)
    backup_secret = None
    if addons.backups is not None:
        server = cluster.hosts_in("k3s_servers")[0]
        backup_secret = backups.secret_values(*(
            secret(f"all.{key}", server.secrets.get(key))
            for key in ("app_backup_password", "s3_access_key", "s3_secret_key")))
        found[file_name("backups")] = backups.render_backups_namespace(backup_secret)
    for index, app in enumerate(cluster.apps):
        if app.deployed:
            text = apps_manifests.render_app(app, index, addons, secret)
            if addons.backups is not None and backup_secret and backups.backed_up(app, addons):
                text = text.rstrip("\n") + "\n" + backups.render_app_backup(app, addons.backups, backup_secret)
            found[file_name(f"app-{app.name}")] = text
    return found
