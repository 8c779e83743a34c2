"""Debian package operations that stay quiet when nothing is missing."""

from __future__ import annotations

from pyinfra import host
from pyinfra.operations import apt

from ..facts.packages import InstalledPackages
from .util import host_operation, shared_fact


@host_operation(changes=(InstalledPackages,))
def installed(packages: list[str], cache_time: int = 3600):
    """
    Install the Debian packages that are missing; refresh the apt lists (if older than ``cache_time``) only
    when something is missing, so a converged host reports no change however old its lists are.

    + packages: Debian package names
    + cache_time: refresh the apt lists before installing if they are older than this (seconds)

    **Example:**

    .. code:: python

        packages.installed(name="Base packages", packages=["curl", "jq"])
    """
    present = shared_fact(host, InstalledPackages)  # one package list per host, for every installed() on it
    missing = [name for name in packages if name not in present]
    if not missing:
        host.noop(f"{len(packages)} packages are installed")
        return
    yield from apt.packages._inner(packages=missing, update=True, cache_time=cache_time, no_recommends=True)
