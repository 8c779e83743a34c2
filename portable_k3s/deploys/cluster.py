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
from ..settings import addons as addon_settings
from ..settings import backups as backup_settings
from ..settings import defaults, resolve_secret
from ..settings.addons import DNS01_PROVIDERS, INTERNAL_ISSUER, ISSUERS  # noqa: F401 - their old home
from ..settings.backups import BACKUP_KEEP  # noqa: F401 - its old home

if TYPE_CHECKING:
    from ..config import ClusterConfig

# portable_k3s.settings.addons and .backups (app_backup_*)
CLUSTER_DEFAULTS: dict[str, Any] = defaults(addon_settings.SETTINGS, backup_settings.SETTINGS)


def read_secret(key_path: str, reference: Any) -> str:
    """A secret's value for a manifest, from its reference in the data (see ``config.resolve_secret``)."""
    return resolve_secret(reference, key_path).unmask()


@deploy("Cluster add-ons", data_defaults=CLUSTER_DEFAULTS)
def cluster_addons(config: ClusterConfig, entrances: list[Host]) -> None:
    """
    On the first k3s server, write every add-on's and deployed app's manifest (0600) into k3s's auto-deploy
    directory, where k3s applies it (HelmCharts through its Helm controller): MetalLB and its pools, Traefik's
    HelmChartConfig trusting the entrances' tailnet addresses, cert-manager and its ClusterIssuers, rook-ceph and
    its CephCluster (and toolbox), and one manifest per app (with its backup CronJob). Manifests this library
    wrote that are no longer rendered (an app removed from the catalog) are removed, with their resources.

    Data keys: ``portable_k3s.settings.addons``, the ``app_backup_*`` ones of ``portable_k3s.settings.backups``;
    each node's ``external_ssd``; the app catalog ``apps``; ``entrance_upstream``.

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
