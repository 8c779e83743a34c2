"""The cluster add-ons and the app catalog, as manifests in k3s's auto-deploy directory on the first server."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from pyinfra.api import Host, deploy

from ..connection import ssh_tcp_options
from ..facts.cluster import ManifestFiles
from ..facts.files import FileStates
from ..manifests import MANIFEST_DIR, PREFIX, file_name, render_manifests
from ..manifests.traefik import render_traefik
from ..operations import cluster, files, prefetch

if TYPE_CHECKING:
    from ..config import ClusterConfig

CLUSTER_DEFAULTS: dict[str, Any] = {
    # MetalLB's address pools on the LAN: "192.168.1.240/28" or "192.168.1.240-192.168.1.250"; []: no MetalLB
    "metallb_pools": [],
    "acme_email": None,  # Let's Encrypt's contact for expiring certificates
    "acme_issuer": "letsencrypt-production",  # or "letsencrypt-staging" while trying things out (rate limits)
    "acme_solver": "http01",  # "http01" through the entrance and Traefik; "dns01" through dns01_provider's API
    "dns01_provider": None,  # with "dns01": "cloudflare" or "digitalocean", and the token in dns01_token
    "rook_ceph": None,  # None: on when every k3s node has an external_ssd; True; False (apps use k3s's local-path)
    "rook_ceph_replicas": None,  # None: one per k3s node, at most 3
    "rook_ceph_toolbox": True,  # rook's toolbox Deployment (ceph, rados, rbd) with rook-ceph
    # Off-site backups of every deployed app's volume with restic (encrypted with app_backup_password, S3 keys in
    # s3_access_key / s3_secret_key): {"endpoint": "s3.example.org", "bucket": …, "region": …, "folder": …,
    # "insecure": False}; None: no app backups
    "app_backup_s3": None,
    "app_backup_schedule": "30 3 * * *",  # cron, in the k3s server's time zone; an app's backup_schedule overrides
    "app_backup_keep": {"daily": 7, "weekly": 4, "monthly": 6},  # snapshots kept (restic forget --keep-*)
}
BACKUP_KEEP = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
ISSUERS = ("letsencrypt-production", "letsencrypt-staging")
INTERNAL_ISSUER = "portable-k3s-internal-ca"  # private apps' certificates under HTTP-01 (Let's Encrypt can't reach)
DNS01_PROVIDERS = ("cloudflare", "digitalocean")


def read_secret(key_path: str, reference: Any) -> str:
    """A secret's value for a manifest, from its reference in the data (see ``config.resolve_secret``)."""
    from ..config import resolve_secret  # noqa: PLC0415 - config imports this module's defaults

    return resolve_secret(reference, key_path).unmask()


@deploy("Cluster add-ons", data_defaults=CLUSTER_DEFAULTS)
def cluster_addons(config: ClusterConfig, entrances: list[Host]) -> None:
    """
    On the first k3s server, write every add-on's and deployed app's manifest (0600) into k3s's auto-deploy
    directory, where k3s applies it (HelmCharts through its Helm controller): MetalLB and its pools, Traefik's
    HelmChartConfig trusting the entrances' tailnet addresses, cert-manager and its ClusterIssuers, rook-ceph and
    its CephCluster (and toolbox), and one manifest per app (with its backup CronJob). Manifests this library
    wrote that are no longer rendered (an app removed from the catalog) are removed, with their resources.

    Data keys (defaults in ``CLUSTER_DEFAULTS``): ``metallb_pools``, ``acme_email``, ``acme_issuer``,
    ``acme_solver``, ``dns01_provider`` (+ ``dns01_token``), ``rook_ceph``, ``rook_ceph_replicas``,
    ``rook_ceph_toolbox``, ``app_backup_s3`` (+ ``app_backup_password``, ``s3_access_key``, ``s3_secret_key``),
    ``app_backup_schedule``, ``app_backup_keep``; each node's ``external_ssd``; the app catalog ``apps``;
    ``entrance_upstream``.

    + config: the validated inventory (``config.validate_state(state)``)
    + entrances: the inventory hosts of the ``entrance`` group (Traefik trusts their tailnet addresses)

    .. code:: python

        if host.name == inventory.get_group("k3s_servers")[0].name:
            cluster_addons(config=cluster, entrances=inventory.get_group("entrance"))
    """
    ssh_tcp_options()  # SSH without Nagle's delay, a lost host noticed: see portable_k3s.connection
    manifests = render_manifests(config, None, read_secret)
    traefik = file_name("traefik-config")
    names = list(manifests)
    paths = tuple(f"{MANIFEST_DIR}/{name}" for name in names)
    # Early: only these operations change the manifests (k3s's own start writes none of this library's).
    prefetch.facts(
        name="Read the manifests' state in one command", early=True,
        reads=[(FileStates, {"paths": paths}), (ManifestFiles, {"directory": MANIFEST_DIR, "prefix": PREFIX})],
    )
    for name, text in manifests.items():
        if name == traefik:
            cluster.traefik_config(
                name="Traefik config: PROXY protocol from the entrances only",
                render_config=partial(render_traefik, addons=config.addons, apps=config.apps),
                entrances=entrances, path=f"{MANIFEST_DIR}/{name}", batch=paths,
            )
        else:
            files.content(name=f"Manifest {name}", path=f"{MANIFEST_DIR}/{name}", text=text, mode="0600", batch=paths)
    cluster.pruned(name="Remove manifests no longer in the catalog, with their resources", keep=names)
