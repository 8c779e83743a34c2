"""The cluster add-ons' manifests in k3s's auto-deploy directory: written 0600, and removed with their resources.

k3s's deploy controller applies a file of ``/var/lib/rancher/k3s/server/manifests`` when it appears or changes
(tracked as an AddOn named after the file), and prunes objects that a changed file no longer lists; but deleting a
file deletes nothing from the cluster (k3s docs, "Auto-Deploying Manifests"; k3s-io/k3s#1971, #2939). So a manifest
is removed here in three steps, resumable if one fails: the file is renamed to a dotfile (the controller skips
dotfiles, so it is never applied again), its objects are deleted with ``kubectl delete -f`` on that file, then its
AddOn is deleted and the file removed.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable

from pyinfra import host
from pyinfra.api import Host, OperationError, QuoteString, StringCommand

from ..adapter import executing
from ..facts.cluster import REMOVING, ManifestFiles
from ..facts.tailscale import Tailscale
from ..manifests import MANIFEST_DIR, PREFIX
from . import files
from .util import host_operation, shared_fact

KUBECTL = "k3s kubectl"
# Removed before the others: objects of kinds that other manifests define (apps and pools first, operators last).
_REMOVE_FIRST = ("app-", "metallb-pools", "ceph-cluster", "cluster-issuers")


def entrance_addresses(entrances: list[Host]) -> tuple[list[str], list[str]]:
    """The entrance hosts' tailnet IPv4s (sorted) and the names of those without one, read from tailscale there."""
    found = {entrance.name: shared_fact(entrance, Tailscale)["ipv4"] for entrance in entrances}
    return sorted(ip for ip in found.values() if ip), [name for name, ip in found.items() if not ip]


@host_operation()
def traefik_config(
    render_config: Callable[[list[str]], str],
    entrances: list[Host],
    path: str = f"{MANIFEST_DIR}/{PREFIX}traefik-config.yaml",
    batch: tuple[str, ...] | None = None,
):
    """
    Write Traefik's HelmChartConfig (0600) trusting the PROXY protocol from the entrance hosts' real tailnet
    addresses, read from tailscale on each entrance when this runs (a re-joined entrance is followed).

    + render_config: builds the manifest from the entrance addresses
    + entrances: the inventory hosts of the ``entrance`` group
    + path: the manifest file
    + batch: all manifest paths, read in one remote command (see ``files.content``)

    **Example:**

    .. code:: python

        cluster.traefik_config(name="Traefik config", render_config=render, entrances=inventory.get_group("entrance"))
    """
    addresses, missing = entrance_addresses(entrances)
    if missing or not entrances:
        if not executing(host.state):  # planned before the tailnet is up (--dry): written when it is
            host.noop(f"{path}: written once {', '.join(missing) or 'an entrance'} has a tailnet address")
            return
        raise OperationError(f"{', '.join(missing) or 'no entrance'} has no tailnet IPv4: Traefik would trust no "
                             "entrance; join the tailnet first")
    yield from files.content._inner(path=path, text=render_config(addresses), mode="0600", batch=batch)


def _removal_order(name: str) -> tuple[int, str]:
    stem = name.removeprefix(PREFIX)
    rank = next((i for i, first in enumerate(_REMOVE_FIRST) if stem.startswith(first)), len(_REMOVE_FIRST))
    return rank, name


@host_operation()
def pruned(keep: list[str], directory: str = MANIFEST_DIR, prefix: str = PREFIX):
    """
    Remove the manifests with ``prefix`` that are not in ``keep``, and their resources from the cluster (see the
    module's docstring for why deleting the file is not enough). Files without ``prefix`` are never touched.

    + keep: the file names (``portable-k3s-….yaml``) the deploy writes in this run
    + directory: k3s's auto-deploy directory on this server
    + prefix: the names this library owns

    **Example:**

    .. code:: python

        cluster.pruned(name="Remove dropped manifests", keep=["portable-k3s-cert-manager.yaml"])
    """
    # Read once (maybe before this run wrote its manifests: those are all in keep).
    found = shared_fact(host, ManifestFiles, directory=directory, prefix=prefix)
    stale = sorted({*(name for name in found["files"] if name not in keep), *found["removing"]}, key=_removal_order)
    if not stale:
        host.noop(f"no {prefix}* manifest to remove")
        return
    for name in stale:
        addon = name.split(".", 1)[0]  # k3s names the AddOn after the file's name up to its first dot
        path, hidden = posixpath.join(directory, name), posixpath.join(directory, f".{addon}{REMOVING}")
        yield StringCommand(
            "if [ -e", QuoteString(path), "]; then mv -f", QuoteString(path), QuoteString(hidden), "; fi &&",
            KUBECTL, "delete --ignore-not-found --wait=false -f", QuoteString(hidden), "&&",
            KUBECTL, "delete --ignore-not-found --wait=false -n kube-system addon", QuoteString(addon), "&& rm -f",
            QuoteString(hidden),
        )
